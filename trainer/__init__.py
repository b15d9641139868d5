"""rnnx trainer: fit recurrent language models in PyTorch and save them as safetensors + JSON."""

"""rnnx runtime: run an exported rnnx `.onnx` model with numpy and onnxruntime only (no torch).

from rnnx.runtime import Model, SamplingConfig

model = Model("model.onnx")
print(model.generate("ROMEO:", sampling=SamplingConfig(temperature=0.8, max_new_tokens=200, rng_seed=1)))
"""

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.generator import Generator
from rnnx.runtime.model import Model
from rnnx.runtime.sampling import SamplingConfig

__version__ = "0.1.0"  # the rnnx-runtime distribution (runtime/pyproject.toml) carries the same number

__all__ = ["Generator", "Model", "ModelFileError", "RnnxError", "SamplingConfig", "UsageError", "__version__"]

"""rnnx runtime: run an exported rnnx `.onnx` model with numpy and onnxruntime only (no torch)."""

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.model import Model
from rnnx.runtime.sampling import SamplingConfig

__all__ = ["Model", "ModelFileError", "RnnxError", "SamplingConfig", "UsageError"]

"""rnnx export: turn a trained model directory into one verified, self-describing `.onnx` step graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rnnx.export.graph import build_step_graph
from rnnx.export.verify import verify_step_graph
from rnnx.runtime.contract import DEFAULT_OPSET, check_opset
from rnnx.runtime.errors import UsageError
from rnnx.trainer.checkpoint import load_model, write_atomic

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_logit_diff: float
    size_bytes: int


def export_model(model_dir: Path, output: Path | None = None, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Build, check and verify the step graph of the model in `model_dir`, then write it atomically."""
    check_opset(opset)
    output = output or model_dir / ONNX_NAME
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory: give a file path such as {output / ONNX_NAME}")
    model, tokenizer, _ = load_model(model_dir)
    proto = build_step_graph(model, tokenizer, opset)
    worst = verify_step_graph(proto, model)
    data = proto.SerializeToString()
    write_atomic(output, data)
    log.info("wrote %s (%d bytes), max |Δlogit| vs torch %.2e", output, len(data), worst)
    return ExportResult(output, worst, len(data))


__all__ = ["ExportResult", "export_model"]

"""rnnx export: turn a trained model directory into one verified, self-describing `.onnx` step graph."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rnnx.export.graph import DEFAULT_FORM, FORMS, build_step_graph
from rnnx.export.matmul_graph import add_prompt_path
from rnnx.export.quantize import int8_weight_count, quantize_int8
from rnnx.export.verify import (
    check_graph,
    int8_divergence,
    steps_reference,
    torch_reference,
    verify_prompt_path,
    verify_step_graph,
)
from rnnx.runtime import contract
from rnnx.runtime.contract import DEFAULT_OPSET, WEIGHT_FORMATS, ModelInfo, check_opset
from rnnx.runtime.errors import ExportCheckError, ModelFileError, UsageError
from rnnx.runtime.onnxfile import read_metadata, read_model_bytes
from rnnx.trainer.checkpoint import WEIGHTS, load_model, write_atomic

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_logit_diff: float  # fp32 graph vs torch, over the parity run
    size_bytes: int
    weights: str = "fp32"
    int8_kl: float | None = None  # int8 only: mean KL(fp32 ‖ int8), nats/token (see verify.int8_divergence)
    int8_tensors: int = 0  # int8 only: how many weight matrices are stored as int8
    prompt_diff: float | None = None  # the prompt path vs torch (fp32) or vs the file's step path (int8)


def _check_options(output: Path, opset: int, quantize: str | None, form: str) -> str:
    check_opset(opset)
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory: give a file path such as {output / ONNX_NAME}")
    if output.exists() and not _is_rnnx_export(output):
        raise UsageError(
            f"--output {output} exists and is not an rnnx .onnx file: refusing to overwrite it; give a new path"
        )
    weights = quantize or "fp32"
    if weights not in WEIGHT_FORMATS:
        raise UsageError(f"unknown quantization {quantize!r}: choose one of none, {', '.join(WEIGHT_FORMATS[1:])}")
    if form not in FORMS:
        raise UsageError(f"unknown graph form {form!r}: choose one of {', '.join(FORMS)}")
    if weights == "int8" and form != "matmul":
        raise UsageError("int8 quantization needs the matmul graph form: drop --form op")
    return weights


def _is_rnnx_export(path: Path) -> bool:
    """Whether `path` is a file rnn-export wrote (an ONNX model with rnnx metadata): the only kind it replaces."""
    try:
        return path.is_file() and contract.META_FORMAT in read_metadata(read_model_bytes(path), str(path))
    except (ModelFileError, OSError):
        return False


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def export_model(
    model_dir: Path,
    output: Path | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    form: str = DEFAULT_FORM,
) -> ExportResult:
    """Build, check and verify the graph of the model in `model_dir`, then write it atomically.

    The step path is verified against torch; in the matmul form the prompt path is added and verified too.
    `quantize="int8"` stores the recurrent weights as int8 (CPU speed); the fp32 step path is verified against
    torch first, then the int8 one against fp32 (verify.int8_divergence), and the int8 prompt path against the
    int8 step path. A failed check writes nothing.
    """
    output = output or model_dir / ONNX_NAME
    weights = _check_options(output, opset, quantize, form)
    source = _identity(model_dir / WEIGHTS)
    model, tokenizer, document = load_model(model_dir)
    generation = contract.check_generation(document.get("generation", {}), str(model_dir / WEIGHTS))
    cell = model.config.cell
    proto = build_step_graph(model, tokenizer, opset, form)
    worst = verify_step_graph(proto, model)
    kl, int8_tensors = None, 0
    reference = torch_reference(model)
    if weights == "int8":
        meta = {p.key: p.value for p in proto.metadata_props}
        info = dataclasses.replace(ModelInfo.from_metadata(meta, str(output)), weights="int8")
        fp32 = proto
        proto = quantize_int8(fp32, info)
        kl = int8_divergence(proto, fp32, cell)
        int8_tensors = int8_weight_count(proto)
    prompt_diff = None
    if form == "matmul":
        proto = add_prompt_path(proto, cell, model.config.layers)
        check_graph(proto)
        if weights == "int8":
            reference = steps_reference(proto, cell)
        prompt_diff = verify_prompt_path(proto, reference, cell, model.config.vocab_size)
    if generation:  # the model's default sampling settings, for rnn-run (contract.META_GENERATION)
        proto.metadata_props.add(key=contract.META_GENERATION, value=json.dumps(generation))
    data = proto.SerializeToString()
    if _identity(model_dir / WEIGHTS) != source:  # a training run saved a new model (and removed old exports)
        raise ExportCheckError(
            f"{model_dir / WEIGHTS} changed while it was being exported: run rnn-export again; nothing was written"
        )
    write_atomic(output, data)
    log.info("wrote %s (%d bytes, %s), max |Δlogit| vs torch %.2e", output, len(data), weights, worst)
    return ExportResult(output, worst, len(data), weights, kl, int8_tensors, prompt_diff)


__all__ = ["ExportResult", "export_model"]

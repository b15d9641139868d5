"""Model directories: `model.safetensors` (weights) beside `model.json` (architecture, vocabulary, training),
and `checkpoint.safetensors`, the state to resume training from (weights, optimizer, step, random state) with
its JSON in the safetensors header, so one atomic rename replaces all of it at once.

Every file is written to a temporary name, flushed, fsynced and renamed, so a crash never leaves a
half-written file where a good one stood. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rnnx.runtime.errors import ModelFileError
from rnnx.runtime.tokenizer import Tokenizer, tokenizer_from_dict
from rnnx.trainer.model import RNNLM, ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = "rnnx-model"
FORMAT_VERSION = 1
TRAIN_STATE = "checkpoint.safetensors"
TRAIN_STATE_FORMAT = "rnnx-train-state"
_HEADER_KEY = "rnnx"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private; a model file is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU float32 copies; tied weights become separate tensors (safetensors refuses shared storage)."""
    return {name: t.detach().to("cpu", torch.float32).clone().contiguous() for name, t in state.items()}


def save_model(directory: Path, model: RNNLM, tokenizer: Tokenizer, extra: dict[str, Any]) -> None:
    """Write the model's weights, then its JSON (the JSON last: it marks the directory complete)."""
    tensors = plain_tensors(model.state_dict())
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        **extra,
    }
    write_atomic(directory / WEIGHTS, save_safetensors(tensors))
    write_atomic(directory / CONFIG, json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8"))


def read_model_json(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelFileError(f"model directory {directory} not found: train one with rnn-train --out {directory}")
    path = directory / CONFIG
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise ModelFileError(f"{directory} holds no trained model ({CONFIG} and {WEIGHTS}): run rnn-train first")
    try:
        document = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({exc}): re-train the model") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an rnnx model file")
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer rnnx: upgrade rnnx")
    return document


def load_model(directory: Path) -> tuple[RNNLM, Tokenizer, dict[str, Any]]:
    """Rebuild the model from its JSON, load its weights, and return it in eval mode."""
    document = read_model_json(directory)
    known = {f.name for f in fields(ModelConfig)}
    try:
        config = ModelConfig(**{k: v for k, v in document["model"].items() if k in known})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{directory / CONFIG} has no valid model section ({exc}): re-train it") from None
    tokenizer = tokenizer_from_dict(document.get("tokenizer", {}))
    if len(tokenizer.vocab) != config.vocab_size:
        raise ModelFileError(f"{directory}: vocabulary and model sizes disagree: re-train it")
    model = RNNLM(config)
    try:
        tensors = load_safetensors((directory / WEIGHTS).read_bytes())
        model.load_state_dict(tensors)
    except (SafetensorError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{directory / WEIGHTS} is corrupt or does not fit {CONFIG} ({first})") from None
    return model.eval(), tokenizer, document


def save_train_state(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the resumable training state: tensors as safetensors, everything else as JSON in its header."""
    header = json.dumps({"format": TRAIN_STATE_FORMAT, **meta}, ensure_ascii=False)
    cpu = {name: t.detach().to("cpu").clone().contiguous() for name, t in tensors.items()}
    write_atomic(directory / TRAIN_STATE, save_safetensors(cpu, metadata={_HEADER_KEY: header}))


def describe_error(exc: BaseException) -> str:
    """`KeyError: 'progress'`: the exception's type and the first line of its message, kept short."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def load_train_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON of `directory/checkpoint.safetensors`, or a ModelFileError saying what is wrong."""
    path = directory / TRAIN_STATE
    if not path.is_file():
        raise ModelFileError(f"no checkpoint to resume from at {path}: start the run without --resume")
    raw = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size].decode("utf-8"))
        meta = json.loads(header["__metadata__"][_HEADER_KEY])
        tensors = load_safetensors(raw)
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as exc:
        raise ModelFileError(f"checkpoint {path} is corrupt ({describe_error(exc)}): start a fresh run") from None
    if not isinstance(meta, dict) or meta.get("format") != TRAIN_STATE_FORMAT:
        raise ModelFileError(f"{path} is not an rnnx training checkpoint: start a fresh run")
    return tensors, meta

"""Model directories: `model.safetensors` (weights, with the model's JSON document in its header) beside
`model.json` (the same document as a plain file for people and other tools), and `checkpoint.safetensors`, the
state to resume training from (weights, optimizer, step, random state), its JSON in the safetensors header too.

One file is one unit: each is written to a temporary name, flushed, fsynced and renamed, so a crash never leaves a
half-written file where a good one stood. `model.safetensors` is the model: its rename replaces weights and
document at once, and readers take the document from it. `model.json` is copied after it, so a crash between the
two renames leaves a stale copy that no reader uses (directories written before the document moved into the
header are still read from `model.json`). Replacing a model removes the `.onnx` files exported from the old one.
Every file read is untrusted: sizes, JSON nesting, types and ranges are checked before anything is allocated.
No pickle anywhere.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rnnx.runtime.contract import META_FORMAT
from rnnx.runtime.errors import ModelFileError, RnnxError
from rnnx.runtime.tokenizer import Tokenizer, tokenizer_from_dict
from rnnx.trainer.limits import available_memory, gib, shortfall
from rnnx.trainer.model import RNNLM, ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = "rnnx-model"
FORMAT_VERSION = 1
TRAIN_STATE = "checkpoint.safetensors"
TRAIN_STATE_FORMAT = "rnnx-train-state"
_HEADER_KEY = "rnnx"
MAX_JSON_BYTES = 100_000_000  # safetensors' own limit on a header; a 1M-word vocabulary takes about 20 MB


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


def temporary_files(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """The temporaries `write_atomic` leaves for `names` when its process dies before the rename."""
    return [p for name in names for p in directory.glob(f".{name}.*.tmp") if p.is_file()]


def parse_json(data: bytes, what: str) -> Any:
    """JSON from an untrusted file: bounded in size, in nesting and in number length; ModelFileError otherwise."""
    if len(data) > MAX_JSON_BYTES:
        raise ModelFileError(f"{what} holds {len(data):,} bytes of JSON, more than rnnx ever writes: it is not ours")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ModelFileError(f"{what} is nested too deeply to be an rnnx file") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and numbers too long to convert
        raise ModelFileError(f"{what} is corrupt ({describe_error(exc)})") from None


def _read_header(f: IO[bytes], what: str) -> tuple[int, dict[str, Any]]:
    """The safetensors header of an open file: its length in bytes and the parsed JSON."""
    start = f.read(8)
    if len(start) < 8:
        raise ModelFileError(f"{what} is cut short (no safetensors header)")
    (length,) = struct.unpack("<Q", start)
    if length > MAX_JSON_BYTES:
        raise ModelFileError(f"{what} claims a {length:,}-byte header: it is corrupt")
    header = parse_json(f.read(length), f"the header of {what}")
    if not isinstance(header, dict):
        raise ModelFileError(f"{what} is corrupt (its header is not a JSON object)")
    return length, header


def _embedded(header: dict[str, Any], what: str) -> dict[str, Any] | None:
    """The rnnx JSON document kept in a safetensors header, or None where there is none (an older file)."""
    metadata = header.get("__metadata__")
    text = metadata.get(_HEADER_KEY) if isinstance(metadata, dict) else None
    if text is None:
        return None
    document = parse_json(text.encode("utf-8") if isinstance(text, str) else b"", f"the JSON inside {what}")
    if not isinstance(document, dict):
        raise ModelFileError(f"{what} is corrupt (its rnnx document is not a JSON object)")
    return document


def _check_document(document: Any, path: Path) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an rnnx model file")
    version = document.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelFileError(f"{path} is corrupt: format_version must be a whole number, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer rnnx (format {version}): upgrade rnnx")
    return document


def model_config_from_json(section: Any, what: str) -> ModelConfig:
    """A `ModelConfig` from the `model` section of a model file or checkpoint, every field checked."""
    if not isinstance(section, dict):
        raise ModelFileError(f"{what} has no valid model section: re-train it")
    known = {f.name for f in fields(ModelConfig)}
    try:
        return ModelConfig(**{k: v for k, v in section.items() if k in known})
    except (RnnxError, TypeError) as exc:
        raise ModelFileError(f"{what} has an invalid model section ({exc}): re-train it") from None


def exports(directory: Path) -> list[Path]:
    """The `.onnx` files in `directory` that rnn-export wrote (they carry rnnx metadata), derived from its model."""
    found = []
    for path in sorted(directory.glob("*.onnx")):
        try:
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data.find(META_FORMAT.encode()) >= 0:
                    found.append(path)
        except (OSError, ValueError):  # unreadable, or empty (mmap refuses size 0): not an export of ours
            continue
    return found


def save_model(directory: Path, model: RNNLM, tokenizer: Tokenizer, extra: dict[str, Any]) -> None:
    """Commit weights and document in one rename of `model.safetensors`; then copy the document to `model.json`
    and remove the exports of the model just replaced."""
    tensors = plain_tensors(model.state_dict())
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        **extra,
    }
    text = json.dumps(document, indent=2, ensure_ascii=False)
    write_atomic(directory / WEIGHTS, save_safetensors(tensors, metadata={_HEADER_KEY: text}))
    write_atomic(directory / CONFIG, text.encode("utf-8"))
    for path in exports(directory):
        path.unlink(missing_ok=True)


def _model_paths(directory: Path) -> Path:
    if not directory.is_dir():
        raise ModelFileError(f"model directory {directory} not found: train one with rnn-train --out {directory}")
    if not (directory / WEIGHTS).is_file():
        raise ModelFileError(f"{directory} holds no trained model ({WEIGHTS} and {CONFIG}): run rnn-train first")
    return directory / WEIGHTS


def _legacy_document(directory: Path) -> dict[str, Any]:
    """The document of a directory written before it moved into the weights' header: `model.json`."""
    path = directory / CONFIG
    if not path.is_file():
        raise ModelFileError(f"{directory} holds no trained model ({WEIGHTS} and {CONFIG}): run rnn-train first")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelFileError(f"{path} is {gib(path.stat().st_size)}, far more than any rnnx model.json: not ours")
    return _check_document(parse_json(path.read_bytes(), str(path)), path)


def _open_model(f: IO[bytes], directory: Path) -> tuple[int, dict[str, Any]]:
    """Header length and the model's document, from the open weights file (or, for old directories, model.json)."""
    path = directory / WEIGHTS
    length, header = _read_header(f, str(path))
    document = _embedded(header, str(path))
    return length, (_check_document(document, path) if document is not None else _legacy_document(directory))


def read_model_json(directory: Path) -> dict[str, Any]:
    """The model's document (architecture, vocabulary, training): the one committed with its weights."""
    with _model_paths(directory).open("rb") as f:
        return _open_model(f, directory)[1]


def load_model(directory: Path) -> tuple[RNNLM, Tokenizer, dict[str, Any]]:
    """Rebuild the model from its document, load its weights, and return it in eval mode.

    Weights and document come from one open file, so a model replaced meanwhile is never read half old, half new;
    sizes are checked against memory and against the file before anything large is read or allocated.
    """
    path = _model_paths(directory)
    with path.open("rb") as f:
        length, document = _open_model(f, directory)
        config = model_config_from_json(document.get("model"), str(path))
        tokenizer = tokenizer_from_dict(document.get("tokenizer", {}))
        if len(tokenizer.vocab) != config.vocab_size:
            raise ModelFileError(f"{directory}: vocabulary and model sizes disagree: re-train it")
        weights = 4 * config.weight_count
        short = shortfall(2 * weights, f"the model in {directory} ({config.weight_count:,} weights)")
        if short:
            raise ModelFileError(f"{short}: load it on a larger machine")
        if os.fstat(f.fileno()).st_size != 8 + length + weights:
            raise ModelFileError(f"{path} is corrupt or does not fit its model description (wrong size)")
        f.seek(0)
        raw = f.read()
    model = RNNLM(config)
    try:
        model.load_state_dict(load_safetensors(raw))
    except (SafetensorError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path} is corrupt or does not fit its model description ({first})") from None
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
    size, available = path.stat().st_size, available_memory()
    if available is not None and size > available:
        raise ModelFileError(f"checkpoint {path} is {gib(size)}, more than the {gib(available)} of memory available")
    raw = path.read_bytes()
    try:
        _, header = _read_header(io.BytesIO(raw), f"checkpoint {path}")
        meta = _embedded(header, f"checkpoint {path}")
        tensors = load_safetensors(raw)
    except (ModelFileError, SafetensorError) as exc:
        text = str(exc) if isinstance(exc, ModelFileError) else f"checkpoint {path} is corrupt ({describe_error(exc)})"
        raise ModelFileError(f"{text}: start a fresh run") from None
    if meta is None or meta.get("format") != TRAIN_STATE_FORMAT:
        raise ModelFileError(f"{path} is not an rnnx training checkpoint: start a fresh run")
    return tensors, meta

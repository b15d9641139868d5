"""The ONNX contract shared by rnnx.export (which writes it) and rnnx.runtime (which reads it).

One graph, two paths that read the same state inputs. The step path, one token per call:

    tokens  int64   [batch]                    ->  logits  float32 [batch, vocab]
    h       float32 [layers, batch, hidden]    ->  h_next  float32 [layers, batch, hidden]
    c       float32 [layers, batch, hidden]    ->  c_next  float32 [layers, batch, hidden]   (LSTM only)

The prompt path (format version 2), a whole sequence per call, for prompts and scoring-free prefill:

    prompt  int64   [batch, length]            ->  prompt_logits  float32 [batch, vocab]   (after the last token)
    h, c    as above                           ->  prompt_h_next, prompt_c_next  as h_next, c_next

`batch` and `length` are dynamic axes; `length` is at least 1 (onnxruntime's Scan refuses empty sequences).
onnxruntime runs every node of a graph whatever outputs are asked for, so the runtime
opens each path as a session of its own (`onnxfile.extract`). A file without the prompt outputs (format
version 1, or a graph in the op form) runs prompts step by step. Everything needed to run the file alone
travels in `metadata_props` under the keys below; nothing else spells these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rnnx.runtime.errors import ModelFileError, UsageError

FORMAT_VERSION = 2  # 1: the step path only; 2: may carry the prompt path
# Every op we emit (LSTM/GRU/RNN-14, Gather/Gemm/Concat-13, Squeeze/Unsqueeze/Split-13+) exists from
# opset 14; 23 is the newest onnxruntime 1.20+ runs for all of them.
OPSET_MIN, OPSET_MAX = 14, 23
DEFAULT_OPSET = 17

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # gate blocks per cell: a layer's recurrent matrix is hidden × gates·hidden

TOKENS = "tokens"
H, C = "h", "c"
LOGITS = "logits"
H_NEXT, C_NEXT = "h_next", "c_next"
PROMPT = "prompt"
PROMPT_LOGITS = "prompt_logits"
PROMPT_H_NEXT, PROMPT_C_NEXT = "prompt_h_next", "prompt_c_next"
BATCH_AXIS = "batch"
LENGTH_AXIS = "length"

META_FORMAT = "rnnx.format_version"
META_CELL = "rnnx.cell"
META_LAYERS = "rnnx.layers"
META_HIDDEN = "rnnx.hidden"
META_VOCAB_SIZE = "rnnx.vocab_size"
META_TOKENIZER = "rnnx.tokenizer"  # JSON: kind, vocabulary, unknown-token id, rules
META_PRODUCER = "rnnx.producer"
META_KEYS = frozenset(
    {META_FORMAT, META_CELL, META_LAYERS, META_HIDDEN, META_VOCAB_SIZE, META_TOKENIZER, META_PRODUCER}
)
# Keys a file may lack (files exported before they existed); ModelInfo's defaults stand in for them.
META_WEIGHTS = "rnnx.weights"  # how the weights are stored: one of WEIGHT_FORMATS
META_GENERATION = "rnnx.generation"  # JSON: sampling settings rnn-run uses unless told otherwise
META_OPTIONAL_KEYS = frozenset({META_WEIGHTS, META_GENERATION})
GENERATION_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")  # what a file may set of SamplingConfig
MAX_GENERATION_CHARS = 1000  # the JSON of four numbers; a 10 MB key or a 4000-digit top-k is not a setting

# "int8": onnxruntime dynamic quantization (int8 weights, activations quantized per call); CPU only.
WEIGHT_FORMATS = ("fp32", "int8")


def state_inputs(cell: str) -> tuple[str, ...]:
    return (H, C) if cell == "lstm" else (H,)


def state_outputs(cell: str) -> tuple[str, ...]:
    return (H_NEXT, C_NEXT) if cell == "lstm" else (H_NEXT,)


def prompt_state_outputs(cell: str) -> tuple[str, ...]:
    return (PROMPT_H_NEXT, PROMPT_C_NEXT) if cell == "lstm" else (PROMPT_H_NEXT,)


def step_outputs(cell: str) -> tuple[str, ...]:
    return (LOGITS, *state_outputs(cell))


def prompt_outputs(cell: str) -> tuple[str, ...]:
    return (PROMPT_LOGITS, *prompt_state_outputs(cell))


def check_opset(opset: int) -> int:
    from rnnx.runtime.errors import UsageError

    if not OPSET_MIN <= opset <= OPSET_MAX:
        raise UsageError(f"opset {opset} is not supported: choose one from {OPSET_MIN} to {OPSET_MAX}")
    return opset


@dataclass(frozen=True)
class ModelInfo:
    """What the metadata of an rnnx `.onnx` file says about the model inside it."""

    cell: str
    layers: int
    hidden: int
    vocab_size: int
    tokenizer: dict[str, Any]
    producer: str = "rnnx"
    weights: str = "fp32"  # one of WEIGHT_FORMATS
    format_version: int = FORMAT_VERSION
    generation: dict[str, Any] = field(default_factory=dict)  # default sampling settings (GENERATION_KEYS)

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return state_inputs(self.cell)

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return state_outputs(self.cell)

    def to_metadata(self) -> dict[str, str]:
        return {
            META_FORMAT: str(FORMAT_VERSION),
            META_CELL: self.cell,
            META_LAYERS: str(self.layers),
            META_HIDDEN: str(self.hidden),
            META_VOCAB_SIZE: str(self.vocab_size),
            META_TOKENIZER: json.dumps(self.tokenizer, ensure_ascii=False, separators=(",", ":")),
            META_PRODUCER: self.producer,
            META_WEIGHTS: self.weights,
            **({META_GENERATION: json.dumps(self.generation)} if self.generation else {}),
        }

    @property
    def state_bytes(self) -> int:
        """Bytes of one row's recurrent state."""
        return len(self.state_inputs) * self.layers * self.hidden * 4

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str, file_bytes: int | None = None) -> ModelInfo:
        """Read and check the metadata; `file_bytes` (the file's size) bounds every size it claims."""
        if META_FORMAT not in meta:
            raise ModelFileError(f"{source} has no rnnx metadata: export it with rnn-export")
        try:
            version = _size(meta[META_FORMAT])
        except ValueError:
            raise ModelFileError(f"{source}: unreadable {META_FORMAT} {_short(meta[META_FORMAT])}") from None
        if version < 1:
            raise ModelFileError(f"{source}: unreadable {META_FORMAT} {_short(meta[META_FORMAT])}")
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{source} has rnnx format version {version}, newer than this runtime reads "
                f"({FORMAT_VERSION}): upgrade rnnx"
            )
        unknown = sorted(set(meta) - META_KEYS - META_OPTIONAL_KEYS)
        if unknown:
            names = ", ".join(_short(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise ModelFileError(f"{source} carries metadata rnnx did not write ({names}): refusing it")
        missing = sorted(META_KEYS - set(meta))
        if missing:
            raise ModelFileError(f"{source} lacks rnnx metadata {', '.join(missing)}: re-export it")
        try:
            info = cls(
                cell=meta[META_CELL],
                layers=_size(meta[META_LAYERS]),
                hidden=_size(meta[META_HIDDEN]),
                vocab_size=_size(meta[META_VOCAB_SIZE]),
                tokenizer=_json(meta[META_TOKENIZER]),
                producer=meta[META_PRODUCER],
                weights=meta.get(META_WEIGHTS, "fp32"),
                format_version=version,
                generation=_generation(meta.get(META_GENERATION, "{}"), source),
            )
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{source} has malformed rnnx metadata ({exc}): re-export it") from None
        except RecursionError:
            raise ModelFileError(f"{source}: the tokenizer metadata is nested too deeply: re-export it") from None
        if info.weights not in WEIGHT_FORMATS:
            raise ModelFileError(
                f"{source} stores its weights as {_short(info.weights)}, which this runtime does not know "
                f"({', '.join(WEIGHT_FORMATS)}): upgrade rnnx"
            )
        if info.cell not in CELLS or min(info.layers, info.hidden, info.vocab_size) < 1:
            raise ModelFileError(f"{source} has inconsistent rnnx metadata: re-export it")
        # Every layer stores at least a hidden x hidden recurrent matrix (1 byte a weight at int8), and every
        # vocabulary entry at least a byte of metadata: sizes the file cannot hold are lies, refused before
        # anything is allocated from them.
        if file_bytes is not None and (
            info.layers * info.hidden * info.hidden > file_bytes or info.vocab_size > file_bytes
        ):
            raise ModelFileError(
                f"{source} claims {info.layers} layers of {info.hidden} units and {info.vocab_size} tokens, "
                f"more than its {file_bytes} bytes can hold: refusing it"
            )
        return info


def _generation(text: str, source: str) -> dict[str, Any]:
    """The `rnnx.generation` metadata, bounded before it is parsed: four numbers never need more."""
    if len(text) > MAX_GENERATION_CHARS:
        raise ModelFileError(
            f"{source}: its generation settings take {len(text):,} characters, more than rnnx ever writes "
            f"({MAX_GENERATION_CHARS}): re-export it"
        )
    return check_generation(_json(text), source)


def check_generation(settings: Any, source: str) -> dict[str, Any]:
    """Default sampling settings from a model file: a JSON object of GENERATION_KEYS with values that
    SamplingConfig accepts; ModelFileError otherwise."""
    from rnnx.runtime.sampling import SamplingConfig  # sampling does not import the contract: no cycle

    if not isinstance(settings, dict) or not set(settings) <= set(GENERATION_KEYS):
        raise ModelFileError(f"{source}: its generation settings are not {', '.join(GENERATION_KEYS)}: re-export it")
    if len(json.dumps(settings)) > MAX_GENERATION_CHARS:  # what rnn-export would write must load again
        raise ModelFileError(f"{source}: its generation settings are too long to be numbers rnnx wrote: re-export it")
    try:
        SamplingConfig(**settings)
    except UsageError as exc:
        raise ModelFileError(f"{source}: bad generation setting ({exc}): re-export it") from None
    return settings


def _json(text: str) -> Any:
    """JSON from a model file; a whole number longer than any rnnx writes is malformed (Python's own refusal of
    a 4,300-digit one would tell the user to raise `sys.set_int_max_str_digits`)."""
    return json.loads(text, parse_int=_json_int)


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 20:
        raise ValueError(f"a number of {len(digits):,} digits")
    return int(digits)


def _short(text: str, most: int = 40) -> str:
    """`text` for an error line: quoted, and cut to `most` characters (metadata values can be megabytes)."""
    return repr(text) if len(text) <= most else repr(text[:most]) + f"... ({len(text)} characters)"


def _size(text: str) -> int:
    """A positive decimal size as the exporter writes it ("256"), nothing else ("2.5e3", "0x10", " 7")."""
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise ValueError(f"{text[:20]!r} is not a size")
    return int(text)

"""Tokenizers: text <-> token ids. They travel as JSON in the model directory and in the `.onnx` metadata.

Id 0 is always the unknown token: text outside the vocabulary maps to it, and generation never emits it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from rnnx.runtime.errors import ModelFileError

UNK = "<unk>"
UNK_ID = 0


class Tokenizer(Protocol):
    kind: str
    vocab: tuple[str, ...]

    @property
    def unk_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def piece(self, prev_id: int | None, token_id: int) -> str:
        """The text that `token_id` adds after `prev_id` (None at the start of a text)."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CharTokenizer:
    """One token per character."""

    vocab: tuple[str, ...]
    kind: str = "char"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(self.vocab)})

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @classmethod
    def build(cls, text: str) -> CharTokenizer:
        return cls((UNK, *sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(ch, UNK_ID) for ch in text]

    def piece(self, prev_id: int | None, token_id: int) -> str:
        return "" if token_id == UNK_ID else self.vocab[token_id]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i != UNK_ID)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab)}


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind") if isinstance(data, dict) else None
    vocab = data.get("vocab") if isinstance(data, dict) else None
    if not isinstance(vocab, list) or not vocab or vocab[UNK_ID] != UNK:
        raise ModelFileError("the tokenizer's vocabulary is missing or malformed: re-train or re-export the model")
    if kind == "char":
        return CharTokenizer(tuple(vocab))
    raise ModelFileError(f"unknown tokenizer kind {kind!r}: this rnnx reads 'char'")

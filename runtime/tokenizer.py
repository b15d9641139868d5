"""Tokenizers: text <-> token ids. They travel as JSON in the model directory and in the `.onnx` metadata.

Id 0 is always the unknown token: text outside the vocabulary maps to it, and generation never emits it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
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


# Word rules. A word is a run of letters or digits, with inner apostrophes or hyphens ("don't", "well-known");
# every other visible character is a token of its own. Straight double quotes become an opening or a closing
# quote by context when encoding, so that `piece` can space them without remembering earlier tokens.
WORD_PATTERN = r"[^\W_]+(?:['\-][^\W_]+)*|[^\w\s]|_"
OPEN_QUOTE, CLOSE_QUOTE = "\u201c", "\u201d"
NO_SPACE_BEFORE = (".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "'", CLOSE_QUOTE, "\u2026")
NO_SPACE_AFTER = ("(", "[", "{", "$", "#", OPEN_QUOTE)
CAPITALIZE_AFTER = (".", "!", "?", OPEN_QUOTE)  # sentence ends, and speech opening
_QUOTE_MAP = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


@dataclass(frozen=True)
class WordTokenizer:
    """One token per word or punctuation mark; lower-cased, spaced and capitalised again by `piece`.

    Everything `piece` and `encode` need is in `to_dict()`, so the runtime detokenizes exactly as trained.
    """

    vocab: tuple[str, ...]
    lowercase: bool = True
    pattern: str = WORD_PATTERN
    no_space_before: frozenset[str] = field(default=frozenset(NO_SPACE_BEFORE))
    no_space_after: frozenset[str] = field(default=frozenset(NO_SPACE_AFTER))
    capitalize_after: frozenset[str] = field(default=frozenset(CAPITALIZE_AFTER))
    kind: str = "word"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(self.vocab)})
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @classmethod
    def build(cls, text: str, max_vocab: int = 0, min_freq: int = 1) -> WordTokenizer:
        """The most frequent words (at least `min_freq` uses, at most `max_vocab` entries with `<unk>`; 0: no cap)."""
        counts = Counter(cls(vocab=(UNK,)).split(text))
        ranked = sorted((tok for tok, n in counts.items() if n >= min_freq), key=lambda tok: (-counts[tok], tok))
        if max_vocab:
            ranked = ranked[: max(max_vocab - 1, 0)]
        return cls(vocab=(UNK, *ranked))

    def split(self, text: str) -> list[str]:
        """The token strings of `text`, before they are looked up in the vocabulary."""
        text = text.translate(_QUOTE_MAP)
        tokens = []
        for match in self._regex.finditer(text.lower() if self.lowercase else text):  # type: ignore[attr-defined]
            tok = match.group()
            if tok == '"':
                before = text[match.start() - 1] if match.start() else " "
                tok = OPEN_QUOTE if before.isspace() or before in "([{" else CLOSE_QUOTE
            tokens.append(tok)
        return tokens

    def encode(self, text: str) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(tok, UNK_ID) for tok in self.split(text)]

    def piece(self, prev_id: int | None, token_id: int) -> str:
        if token_id == UNK_ID:
            return ""
        tok = self.vocab[token_id]
        # an unknown previous token (a seed word outside the vocabulary) is spaced like an ordinary word
        prev = None if prev_id is None else "" if prev_id == UNK_ID else self.vocab[prev_id]
        if self.lowercase and (prev is None or prev in self.capitalize_after or tok == "i" or tok.startswith("i'")):
            tok = tok[:1].upper() + tok[1:]
        if prev is None or tok in self.no_space_before or prev in self.no_space_after:
            return tok
        return " " + tok

    def decode(self, ids: Iterable[int]) -> str:
        pieces, prev = [], None
        for i in ids:
            if i != UNK_ID:
                pieces.append(self.piece(prev, i))
                prev = i
        return "".join(pieces)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab": list(self.vocab),
            "unk_id": UNK_ID,
            "lowercase": self.lowercase,
            "pattern": self.pattern,
            "no_space_before": sorted(self.no_space_before),
            "no_space_after": sorted(self.no_space_after),
            "capitalize_after": sorted(self.capitalize_after),
        }


def _word_from_dict(data: dict[str, Any]) -> WordTokenizer:
    rules = {k: data.get(k) for k in ("no_space_before", "no_space_after", "capitalize_after")}
    if not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in rules.values()):
        raise ModelFileError("the word tokenizer's spacing rules are malformed: re-train or re-export the model")
    if not isinstance(data.get("lowercase"), bool) or not isinstance(data.get("pattern"), str):
        raise ModelFileError("the word tokenizer's rules are malformed: re-train or re-export the model")
    try:
        re.compile(data["pattern"])
    except re.error as exc:
        raise ModelFileError(f"the word tokenizer's pattern does not compile ({exc}): re-export the model") from None
    return WordTokenizer(
        vocab=tuple(data["vocab"]),
        lowercase=data["lowercase"],
        pattern=data["pattern"],
        **{k: frozenset(v) for k, v in rules.items()},
    )


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind") if isinstance(data, dict) else None
    vocab = data.get("vocab") if isinstance(data, dict) else None
    if not isinstance(vocab, list) or not vocab or vocab[UNK_ID] != UNK:
        raise ModelFileError("the tokenizer's vocabulary is missing or malformed: re-train or re-export the model")
    if not all(isinstance(tok, str) for tok in vocab) or len(set(vocab)) != len(vocab):
        raise ModelFileError("the tokenizer's vocabulary holds non-text or repeated entries: re-train the model")
    if kind == "char":
        return CharTokenizer(tuple(vocab))
    if kind == "word":
        return _word_from_dict(data)
    raise ModelFileError(f"unknown tokenizer kind {kind!r}: this rnnx reads 'char' and 'word'")

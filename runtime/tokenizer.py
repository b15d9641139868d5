"""Tokenizers: text <-> token ids. They travel as JSON in the model directory and in the `.onnx` metadata.

Id 0 is always the unknown token: text outside the vocabulary maps to it, and generation never emits it.

What a file says about a tokenizer is data, never code: the word tokenizer's splitting rules are named by a
version string (`"rules": "words-1"`) that this module maps to rules it owns; a file cannot bring its own
regular expression. Everything else read from a file (vocabulary, spacing sets) is checked and bounded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rnnx.runtime.errors import ModelFileError, UsageError

UNK = "<unk>"
UNK_ID = 0

MAX_WORD_CHARS = 100  # a longer word is left out of a word vocabulary (it reads as <unk>)
MAX_RULE_ENTRIES = 256  # entries in each spacing set of a word tokenizer
MAX_RULE_CHARS = 16  # characters in one entry of a spacing set
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON can spell lone surrogates; they cannot be printed


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

    def is_word(self, token_id: int) -> bool:
        """Whether `token_id` counts towards a text's length (`--len`): every character; words, not punctuation."""
        ...

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

    def is_word(self, token_id: int) -> bool:
        """Every character counts, an unknown one too."""
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab)}


# Word rules, version "words-1". A word is a run of letters or digits, with inner apostrophes or hyphens
# ("don't", "well-known"); every other visible character is a token of its own. Straight double quotes become
# an opening or a closing quote by context when encoding, so that `piece` can space them without remembering
# earlier tokens. A new rule set gets a new name; a name, once released, keeps its rules.
WORDS_V1 = "words-1"
WORD_PATTERN = r"[^\W_]+(?:['\-][^\W_]+)*|[^\w\s]|_"
_WORD_RULES = {WORDS_V1: re.compile(WORD_PATTERN)}
# rnnx 0.1.0 wrote the expression itself (`pattern`); exactly that text still reads as its rules
_LEGACY_PATTERNS = {WORD_PATTERN: WORDS_V1}
_PATTERN_OF_RULES = {rules: pattern for pattern, rules in _LEGACY_PATTERNS.items()}
OPEN_QUOTE, CLOSE_QUOTE = "\u201c", "\u201d"
NO_SPACE_BEFORE = (".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "'", CLOSE_QUOTE, "\u2026")
NO_SPACE_AFTER = ("(", "[", "{", "$", "#", OPEN_QUOTE)
CAPITALIZE_AFTER = (".", "!", "?", OPEN_QUOTE)  # sentence ends, and speech opening
_SPACING_SETS = ("no_space_before", "no_space_after", "capitalize_after")
_QUOTE_MAP = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


@dataclass(frozen=True)
class WordTokenizer:
    """One token per word or punctuation mark; lower-cased, spaced and capitalised again by `piece`.

    Everything `piece` and `encode` need is in `to_dict()`, so the runtime detokenizes exactly as trained.
    """

    vocab: tuple[str, ...]
    lowercase: bool = True
    rules: str = WORDS_V1  # the name of the splitting rules (see `_WORD_RULES`)
    no_space_before: frozenset[str] = field(default=frozenset(NO_SPACE_BEFORE))
    no_space_after: frozenset[str] = field(default=frozenset(NO_SPACE_AFTER))
    capitalize_after: frozenset[str] = field(default=frozenset(CAPITALIZE_AFTER))
    kind: str = "word"

    def __post_init__(self) -> None:
        if self.rules not in _WORD_RULES:
            raise UsageError(f"unknown word rules {self.rules!r}: this rnnx knows {', '.join(_WORD_RULES)}")
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(self.vocab)})
        object.__setattr__(self, "_regex", _WORD_RULES[self.rules])
        words = tuple(i == UNK_ID or _has_letter_or_digit(tok) for i, tok in enumerate(self.vocab))
        object.__setattr__(self, "_words", words)

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @classmethod
    def build(cls, text: str, max_vocab: int = 0, min_freq: int = 1) -> WordTokenizer:
        """The most frequent words (at least `min_freq` uses, at most `max_vocab` entries with `<unk>`; 0: no cap).

        Words longer than `MAX_WORD_CHARS` are left out: they read as `<unk>`.
        """
        counts = Counter(cls(vocab=(UNK,)).split(text))
        kept = (tok for tok, n in counts.items() if n >= min_freq and len(tok) <= MAX_WORD_CHARS)
        ranked = sorted(kept, key=lambda tok: (-counts[tok], tok))
        if max_vocab:
            ranked = ranked[: max(max_vocab - 1, 0)]
        return cls(vocab=(UNK, *ranked))

    def split(self, text: str) -> list[str]:
        """The token strings of `text`, before they are looked up in the vocabulary."""
        # lower-case first: the quote rule below reads the text the expression matched (`"İ".lower()` is longer)
        text = text.translate(_QUOTE_MAP)
        if self.lowercase:
            text = text.lower()
        tokens = []
        for match in self._regex.finditer(text):  # type: ignore[attr-defined]
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

    def is_word(self, token_id: int) -> bool:
        """True for a word (a token with a letter or digit), False for punctuation.

        The unknown token counts as a word: in a seed it is mostly one, and `piece` spaces it like one.
        """
        return self._words[token_id]  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab": list(self.vocab),
            "unk_id": UNK_ID,
            "lowercase": self.lowercase,
            "rules": self.rules,
            "pattern": _PATTERN_OF_RULES[self.rules],  # for rnnx 0.1.0, which compiled it; now only compared
            "no_space_before": sorted(self.no_space_before),
            "no_space_after": sorted(self.no_space_after),
            "capitalize_after": sorted(self.capitalize_after),
        }


def _has_letter_or_digit(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def _word_rules_name(data: dict[str, Any]) -> str:
    """The rule set a word tokenizer's dict names: `rules`, or for a 0.1.0 file, its `pattern` (that exact text)."""
    rules, pattern = data.get("rules"), data.get("pattern")
    if pattern is not None and not (isinstance(pattern, str) and pattern in _LEGACY_PATTERNS):
        raise ModelFileError(
            "the word tokenizer's pattern is not the one rnnx wrote (a model file cannot bring its own splitting "
            "rules): re-train the model"
        )
    if rules is None and pattern is not None:
        return _LEGACY_PATTERNS[pattern]
    if rules is None:
        raise ModelFileError("the word tokenizer names no splitting rules: re-train or re-export the model")
    if not isinstance(rules, str) or rules not in _WORD_RULES:
        raise ModelFileError(
            f"unknown word tokenizer rules {repr(rules)[:40]}: this rnnx knows {', '.join(_WORD_RULES)}; "
            "a newer rnnx may read the model"
        )
    if pattern is not None and _LEGACY_PATTERNS[pattern] != rules:
        raise ModelFileError(f"the word tokenizer's pattern contradicts its rules {rules!r}: re-export the model")
    return rules


def _spacing_set(data: dict[str, Any], name: str) -> frozenset[str]:
    entries = data.get(name)
    if not isinstance(entries, list) or not all(isinstance(t, str) for t in entries):
        raise ModelFileError("the word tokenizer's spacing rules are malformed: re-train or re-export the model")
    if len(entries) > MAX_RULE_ENTRIES or not all(0 < len(t) <= MAX_RULE_CHARS for t in entries):
        raise ModelFileError(
            f"the word tokenizer's {name} set holds more than {MAX_RULE_ENTRIES} entries, or an empty one or one "
            f"longer than {MAX_RULE_CHARS} characters: re-train or re-export the model"
        )
    return frozenset(entries)


def _word_from_dict(data: dict[str, Any]) -> WordTokenizer:
    spacing = {name: _spacing_set(data, name) for name in _SPACING_SETS}
    if not isinstance(data.get("lowercase"), bool):
        raise ModelFileError("the word tokenizer's rules are malformed: re-train or re-export the model")
    return WordTokenizer(
        vocab=tuple(data["vocab"]), lowercase=data["lowercase"], rules=_word_rules_name(data), **spacing
    )


def _check_vocab(vocab: object, kind: str) -> list[str]:
    if not isinstance(vocab, list) or not vocab or vocab[UNK_ID] != UNK:
        raise ModelFileError("the tokenizer's vocabulary is missing or malformed: re-train or re-export the model")
    if not all(isinstance(tok, str) for tok in vocab) or len(set(vocab)) != len(vocab):
        raise ModelFileError("the tokenizer's vocabulary holds non-text or repeated entries: re-train the model")
    longest = 1 if kind == "char" else MAX_WORD_CHARS
    if not all(0 < len(tok) <= longest for tok in vocab[UNK_ID + 1 :]):
        raise ModelFileError(
            f"the {kind} tokenizer's vocabulary holds an empty entry or one longer than {longest} characters: "
            "re-train the model"
        )
    if any(_SURROGATE.search(tok) for tok in vocab):
        raise ModelFileError("the tokenizer's vocabulary holds text that is not valid Unicode: re-train the model")
    return vocab


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    if not isinstance(data, dict):
        raise ModelFileError("the tokenizer description is malformed: re-train or re-export the model")
    kind = data.get("kind")
    if kind not in ("char", "word"):
        raise ModelFileError(f"unknown tokenizer kind {repr(kind)[:40]}: this rnnx reads 'char' and 'word'")
    vocab = _check_vocab(data.get("vocab"), kind)
    unk_id = data.get("unk_id", UNK_ID)
    if type(unk_id) is not int or unk_id != UNK_ID:  # id 0 is the unknown token; this rnnx knows no other
        raise ModelFileError(
            f"the tokenizer names {repr(unk_id)[:40]} as its unknown token, not {UNK_ID}: "
            "a newer rnnx may read the model"
        )
    if kind == "char":
        return CharTokenizer(tuple(vocab))
    return _word_from_dict(data)

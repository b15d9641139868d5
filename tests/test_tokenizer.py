"""Tokenizers: exact ids and strings, rules that travel in to_dict(), malformed dicts refused."""

from __future__ import annotations

import pytest

from rnnx.runtime.errors import ModelFileError
from rnnx.runtime.tokenizer import (
    MAX_RULE_CHARS,
    MAX_RULE_ENTRIES,
    MAX_WORD_CHARS,
    UNK,
    UNK_ID,
    WORD_PATTERN,
    CharTokenizer,
    WordTokenizer,
    tokenizer_from_dict,
)

STORY = '"Well," said Holmes, "I don\'t know (yet)." The well-known man\'s hat! Who is it?'


def test_char_round_trip_and_unknown() -> None:
    tok = CharTokenizer.build("abca")
    assert tok.vocab == (UNK, "a", "b", "c")
    assert tok.encode("abz") == [1, 2, UNK_ID]
    assert tok.decode(tok.encode("cab")) == "cab"
    assert tokenizer_from_dict(tok.to_dict()) == tok


def test_word_split_rules() -> None:
    tok = WordTokenizer.build(STORY)
    assert tok.split(STORY) == [
        "\u201c", "well", ",", "\u201d", "said", "holmes", ",", "\u201c", "i", "don't", "know", "(", "yet", ")",
        ".", "\u201d", "the", "well-known", "man's", "hat", "!", "who", "is", "it", "?",
    ]  # fmt: skip


def test_word_decode_spacing_and_capitals() -> None:
    tok = WordTokenizer.build(STORY)
    assert tok.decode(tok.encode(STORY)) == (
        "\u201cWell,\u201d said holmes, \u201cI don't know (yet).\u201d the well-known man's hat! Who is it?"
    )


def test_word_piece_matches_decode() -> None:
    tok = WordTokenizer.build(STORY)
    ids = tok.encode(STORY)
    pieces = [tok.piece(None, ids[0])] + [tok.piece(prev, cur) for prev, cur in zip(ids, ids[1:])]
    assert "".join(pieces) == tok.decode(ids)


def test_word_vocab_limits() -> None:
    text = "a a a b b c"
    assert WordTokenizer.build(text).vocab == (UNK, "a", "b", "c")
    assert WordTokenizer.build(text, min_freq=2).vocab == (UNK, "a", "b")
    assert WordTokenizer.build(text, max_vocab=2).vocab == (UNK, "a")
    assert WordTokenizer.build(text, max_vocab=2).encode("a c") == [1, UNK_ID]


def test_word_rules_travel_in_dict() -> None:
    tok = WordTokenizer.build(STORY)
    data = tok.to_dict()
    assert data["kind"] == "word" and data["unk_id"] == UNK_ID and data["lowercase"] is True
    assert data["rules"] == "words-1" and data["pattern"] == WORD_PATTERN  # the pattern is for rnnx 0.1.0 readers
    again = tokenizer_from_dict(data)
    assert again == tok
    assert again.decode(again.encode(STORY)) == tok.decode(tok.encode(STORY))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"pattern": "("}, "pattern"),
        ({"pattern": "(a+)+$"}, "pattern"),  # catastrophic backtracking: never compiled
        ({"rules": "words-1", "pattern": "(a+)+$"}, "pattern"),
        ({"pattern": ["x"]}, "pattern"),
        ({"rules": "words-2", "pattern": None}, "words-2"),
        ({"rules": 7, "pattern": None}, "rules"),
        ({"rules": None, "pattern": None}, "no splitting rules"),
        ({"no_space_before": "abc"}, "spacing"),
        ({"no_space_before": [""]}, "no_space_before"),
        ({"no_space_after": ["x" * (MAX_RULE_CHARS + 1)]}, "no_space_after"),
        ({"capitalize_after": [str(i) for i in range(MAX_RULE_ENTRIES + 1)]}, "capitalize_after"),
        ({"lowercase": "yes"}, "malformed"),
        ({"vocab": ["<unk>", "a", "a"]}, "repeated"),
        ({"vocab": ["<unk>", "a", ""]}, "empty entry"),
        ({"vocab": ["<unk>", "a", "b" * (MAX_WORD_CHARS + 1)]}, "longer than 100"),
        ({"vocab": ["<unk>", "a", "\ud800"]}, "not valid unicode"),
        ({"vocab": ["a", "<unk>"]}, "vocabulary"),
        ({"kind": "bpe"}, "bpe"),
        ({"kind": "x" * 10_000}, "unknown tokenizer kind"),
        ({"unk_id": 5}, "names 5 as its unknown token"),  # id 0 is the unknown token: another id is not ignored
        ({"unk_id": False}, "names False as its unknown token"),
    ],
)
def test_malformed_word_dict_refused(change: dict, words: str) -> None:
    data = {**WordTokenizer.build("a b").to_dict(), **change}
    data = {key: value for key, value in data.items() if value is not None}
    with pytest.raises(ModelFileError, match=f"(?i){words}") as caught:
        tokenizer_from_dict(data)
    assert len(str(caught.value)) < 200 and "\n" not in str(caught.value)


@pytest.mark.parametrize("vocab", [["<unk>", "ab"], ["<unk>", ""]], ids=["two-chars", "empty"])
def test_char_vocab_entries_are_single_characters(vocab: list[str]) -> None:
    with pytest.raises(ModelFileError, match="char tokenizer's vocabulary"):
        tokenizer_from_dict({"kind": "char", "vocab": vocab})


@pytest.mark.parametrize("data", [None, [], "word"])
def test_a_tokenizer_that_is_not_a_dict_is_refused(data: object) -> None:
    with pytest.raises(ModelFileError, match="malformed"):
        tokenizer_from_dict(data)  # type: ignore[arg-type]


def test_files_written_by_rnnx_0_1_0_name_their_rules_by_the_pattern() -> None:
    tok = WordTokenizer.build(STORY)
    old = {key: value for key, value in tok.to_dict().items() if key != "rules"}  # what 0.1.0 wrote
    assert old["pattern"] == WORD_PATTERN
    again = tokenizer_from_dict(old)
    assert again == tok and again.rules == "words-1"
    assert tokenizer_from_dict({**old, "rules": "words-1"}) == tok


def test_a_file_without_the_legacy_pattern_reads_by_its_rules_name() -> None:
    tok = WordTokenizer.build(STORY)
    data = {key: value for key, value in tok.to_dict().items() if key != "pattern"}
    assert tokenizer_from_dict(data) == tok


def test_unknown_rules_are_refused_when_made_in_code_too() -> None:
    with pytest.raises(ValueError, match="words-9"):
        WordTokenizer(vocab=(UNK,), rules="words-9")


def test_build_leaves_words_longer_than_the_bound_out() -> None:
    long_word, longest = "a" * (MAX_WORD_CHARS + 1), "b" * MAX_WORD_CHARS
    tok = WordTokenizer.build(f"{long_word} {longest} c")
    assert tok.vocab == (UNK, longest, "c")
    assert tok.encode(long_word) == [UNK_ID]
    assert tokenizer_from_dict(tok.to_dict()) == tok


def test_lowercase_of_another_length_keeps_quotes_and_words_in_place() -> None:
    # "İ".lower() is two characters ("i" and a combining dot): offsets of the lowered text are not the original's
    tok = WordTokenizer(vocab=(UNK,))
    assert tok.split('İİİİ"') == ["i", "\u0307"] * 4 + ["\u201d"]  # was an IndexError
    assert tok.split('İİ "x"') == ["i", "\u0307", "i", "\u0307", "\u201c", "x", "\u201d"]  # was an IndexError
    assert tok.split('İ "go" İ') == ["i", "\u0307", "\u201c", "go", "\u201d", "i", "\u0307"]  # was two closing


def test_is_word_for_words_punctuation_and_the_unknown_token() -> None:
    tok = WordTokenizer.build('"Don\'t go," she said -- 42 times_ 3.5 \u2026 caf\u00e9')
    by_token = {t: tok.is_word(i) for i, t in enumerate(tok.vocab)}
    assert by_token == {
        UNK: True,  # an unknown seed token is most likely a word, and is spaced like one
        "\u201c": False, "don't": True, "go": True, ",": False, "\u201d": False, "she": True, "said": True,
        "-": False, "42": True, "times": True, "_": False, "3": True, ".": False, "5": True, "\u2026": False,
        "caf\u00e9": True,
    }  # fmt: skip
    assert sum(tok.is_word(i) for i in tok.encode("she said, 42 times.")) == 4


def test_is_word_is_true_for_every_character() -> None:
    tok = CharTokenizer.build("a b.")
    assert [tok.is_word(i) for i in range(len(tok.vocab))] == [True] * len(tok.vocab)


def test_word_after_an_unknown_seed_word_is_spaced_and_not_capitalised() -> None:
    tokenizer = WordTokenizer.build("the cat sat. the dog ran.")
    unknown, cat = tokenizer.encode("zebra cat")
    assert unknown == UNK_ID
    assert tokenizer.piece(unknown, cat) == " cat"

"""Tokenizers: exact ids and strings, rules that travel in to_dict(), malformed dicts refused."""

from __future__ import annotations

import pytest

from rnnx.runtime.errors import ModelFileError
from rnnx.runtime.tokenizer import UNK, UNK_ID, CharTokenizer, WordTokenizer, tokenizer_from_dict

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
    again = tokenizer_from_dict(data)
    assert again == tok
    assert again.decode(again.encode(STORY)) == tok.decode(tok.encode(STORY))


@pytest.mark.parametrize(
    "change",
    [
        {"pattern": "("},
        {"no_space_before": "abc"},
        {"lowercase": "yes"},
        {"vocab": ["<unk>", "a", "a"]},
        {"kind": "bpe"},
    ],
)
def test_malformed_word_dict_refused(change: dict) -> None:
    data = {**WordTokenizer.build("a b").to_dict(), **change}
    with pytest.raises(ModelFileError):
        tokenizer_from_dict(data)


def test_word_after_an_unknown_seed_word_is_spaced_and_not_capitalised() -> None:
    tokenizer = WordTokenizer.build("the cat sat. the dog ran.")
    unknown, cat = tokenizer.encode("zebra cat")
    assert unknown == UNK_ID
    assert tokenizer.piece(unknown, cat) == " cat"

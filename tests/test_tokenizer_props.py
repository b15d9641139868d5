"""Tokenizers on arbitrary Unicode (hypothesis): encode, decode, piece and is_word never raise, and round-trip.

Examples are drawn deterministically (`derandomize`), with no deadline and no example database, so a run is
exactly repeatable and never timed.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from rnnx.runtime.tokenizer import UNK_ID, CharTokenizer, WordTokenizer, tokenizer_from_dict

settings.register_profile("rnnx", deadline=None, derandomize=True, database=None, max_examples=150)
settings.load_profile("rnnx")

# characters the rules treat specially: "İ" is the one whose lower case is longer, ß and the ligature upper-case
# longer, ı and ſ upper-case to a letter that lower-cases to another; quotes, apostrophes, hyphens, brackets
TRICKY = "\u0130\u0307\u00df\ufb03\u0131\u017f\"'\u201c\u201d\u201e\u2018\u2019-_ ([{$#.!?"
# every code point, lone surrogates included (a str can hold them even where a file cannot), often a tricky one
any_text = st.one_of(
    st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from(TRICKY)), max_size=40),
    st.text(st.sampled_from(TRICKY + "ab"), max_size=20),  # dense in tricky characters
    st.text(st.sampled_from('\u0130" a('), max_size=12),  # "İİ \"a\"" made an IndexError (offsets of the lowered text)
)
file_text = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY)), max_size=40)  # no lone surrogates
# text whose words and punctuation survive decode -> encode unchanged: ASCII case maps back, and no straight
# double quotes or `$`/`#` (an opening quote glued to one of those reads as a closing quote again)
plain_text = st.text(st.sampled_from(string.ascii_letters + string.digits + " \n.,;:!?()[]'-_%"), max_size=60)


def all_pieces(tok: CharTokenizer | WordTokenizer, ids: list[int]) -> str:
    pieces, prev = [], None
    for i in ids:
        pieces.append(tok.piece(prev, i))
        prev = i if i != UNK_ID else prev  # decode skips unknown ids; so does the spacing context here
    return "".join(pieces)


@given(train=any_text, text=any_text)
def test_char_tokenizer_never_raises_and_keeps_known_characters(train: str, text: str) -> None:
    tok = CharTokenizer.build(train)
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < len(tok.vocab) for i in ids)
    assert tok.decode(ids) == "".join(ch for ch in text if ch in set(train))
    assert all_pieces(tok, ids) == tok.decode(ids)
    assert all(tok.is_word(i) for i in ids)
    assert tok.decode(tok.encode(train)) == train


@given(train=any_text, text=any_text)
def test_word_tokenizer_never_raises_on_any_text(train: str, text: str) -> None:
    tok = WordTokenizer.build(train)
    ids = tok.encode(text)
    assert len(ids) == len(tok.split(text)) and all(0 <= i < len(tok.vocab) for i in ids)
    decoded = tok.decode(ids)
    assert isinstance(decoded, str) and all_pieces(tok, ids) == decoded
    assert tok.encode(decoded) is not None
    for i in ids:
        assert tok.is_word(i) == (i == UNK_ID or any(ch.isalnum() for ch in tok.vocab[i]))


@given(text=any_text, prev=st.integers(0, 30), cur=st.integers(1, 30))
def test_word_piece_never_raises_for_any_pair_of_ids(text: str, prev: int, cur: int) -> None:
    tok = WordTokenizer.build(text + " a b c")
    prev, cur = prev % len(tok.vocab), cur % len(tok.vocab)
    assert isinstance(tok.piece(prev, cur), str) and isinstance(tok.piece(None, cur), str)


@given(train=file_text)
def test_built_tokenizers_travel_through_their_dict(train: str) -> None:
    for tok in (CharTokenizer.build(train), WordTokenizer.build(train)):
        assert tokenizer_from_dict(tok.to_dict()) == tok


@given(text=plain_text)
def test_word_encode_of_decode_round_trips(text: str) -> None:
    tok = WordTokenizer.build(text)
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert tok.encode(tok.decode(ids)) == ids


@given(text=any_text)
def test_word_split_of_lowered_text_is_the_split_of_the_text(text: str) -> None:
    tok = WordTokenizer.build("")
    assert tok.split(text) == tok.split(text.lower())  # offsets into the lowered text stay in it

"""Training data: corpus reading, vocabulary guard, the 90/10 split and contiguous TBPTT batches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rnnx.runtime.errors import RnnxError
from rnnx.trainer.data import LineBatches, StreamBatches, build_tokenizer, read_corpus, split_ids


def test_directory_of_txt_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "skip.md").write_text("not me\n")
    assert read_corpus(tmp_path) == "first\n\nsecond\n"


def test_byte_order_mark_and_line_endings_are_normalized(tmp_path: Path) -> None:
    (tmp_path / "windows.txt").write_bytes("\ufeffhey how\r\nare you\r\n".encode())
    (tmp_path / "mac.txt").write_bytes(b"good i\ram fine\r")
    assert read_corpus(tmp_path / "windows.txt") == "hey how\nare you\n"
    assert read_corpus(tmp_path) == "good i\nam fine\n\nhey how\nare you\n"
    assert build_tokenizer(read_corpus(tmp_path), "char").vocab == ("<unk>", "\n", " ", *"adefghimnoruwy")


def test_directory_without_txt_refused(tmp_path: Path) -> None:
    with pytest.raises(RnnxError, match="no .txt files"):
        read_corpus(tmp_path)


def test_binary_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.txt"
    path.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(RnnxError, match="binary"):
        read_corpus(path)


def test_exploding_word_vocabulary_refused() -> None:
    rng = random.Random(0)
    text = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(3000))
    with pytest.raises(RnnxError, match="vocabulary would explode"):
        build_tokenizer(text, "word")
    assert len(build_tokenizer(text, "char").vocab) == 28  # <unk>, space and 26 letters: characters are fine


def test_split_is_contiguous_last_tenth() -> None:
    train, val = split_ids(torch.arange(100))
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_stream_batches_continue_row_by_row() -> None:
    ids = torch.arange(1000)
    batches = StreamBatches(ids, batch_size=4, seq_len=10, seed=0)
    first, second = batches.get(0, 0), batches.get(0, 1)
    assert not first.stateful and second.stateful
    assert torch.equal(first.targets[:, :-1], first.inputs[:, 1:])
    assert torch.equal(second.inputs[:, 0], first.targets[:, -1])  # each row picks up where it stopped
    assert torch.equal(second.inputs[:, 0] - first.inputs[:, 0], torch.full((4,), 10))
    assert batches.get(0, 3).inputs.shape == (4, 10)


def test_stream_batches_offsets_change_by_epoch_deterministically() -> None:
    a = StreamBatches(torch.arange(5000), batch_size=4, seq_len=50, seed=1)
    b = StreamBatches(torch.arange(5000), batch_size=4, seq_len=50, seed=1)
    starts = {int(a.get(epoch, 0).inputs[0, 0]) for epoch in range(8)}
    assert len(starts) > 1 and all(0 <= s < 50 for s in starts)
    assert torch.equal(a.get(5, 2).inputs, b.get(5, 2).inputs)


def test_corpus_shorter_than_one_batch_refused() -> None:
    with pytest.raises(RnnxError, match="fewer than one batch"):
        StreamBatches(torch.arange(500), batch_size=8, seq_len=64, seed=0)


def test_line_batches_restart_state() -> None:
    examples = torch.arange(30).view(3, 10)
    batch = LineBatches(examples, batch_size=64, seed=0).get(0, 0)
    assert not batch.stateful and batch.inputs.shape == (3, 9)
    assert sorted(batch.inputs[:, 0].tolist()) == [0, 10, 20]


def test_word_vocabulary_counts_the_training_part_only() -> None:
    from rnnx.trainer.data import fit_tokenizer

    text = "the cat sat on the mat . " * 30 + "zebra " * 10  # 190 words: the last 19 are validation
    tokenizer = fit_tokenizer(text, "word")
    assert "zebra" not in tokenizer.vocab and set(tokenizer.vocab) == {"<unk>", "the", "cat", "sat", "on", "mat", "."}
    _, val_ids = split_ids(torch.tensor(tokenizer.encode(text)))
    assert val_ids[-10:].tolist() == [tokenizer.unk_id] * 10
    assert fit_tokenizer(text, "word", max_vocab=3).vocab == ("<unk>", "the", "cat")  # 25 cats, 24 "." in the part
    assert "z" in fit_tokenizer(text, "char").vocab  # characters: the whole text, as before

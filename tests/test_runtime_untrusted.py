"""Untrusted input to the embedding API: odd arguments, runs too big to hold, crafted snapshots, scoring inputs.

Each case is one `UsageError` or `ModelFileError` line, raised before anything large is allocated; never a raw
Python or numpy exception, and never a blob quietly made to fit.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnx.export.graph import build_model_graph
from rnnx.runtime import Model, ModelFileError, RnnxError, SamplingConfig, UsageError
from rnnx.runtime import model as models
from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("abcdefgh .")  # 11 tokens: the seen bits leave 5 padding bits
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=4, hidden=8, layers=2)).eval()
    out = tmp_path_factory.mktemp("untrusted") / "m.onnx"
    out.write_bytes(build_model_graph(model, tokenizer, 17, "matmul").SerializeToString())
    return out


@pytest.fixture(scope="module")
def model(path: Path) -> Model:
    return Model(path, provider="cpu")


SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=4, rng_seed=3, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def blob(model: Model) -> bytes:
    with model.generator(["abc"], SAMPLED) as run:
        while not run.done:
            run.step()
        return run.snapshot(0)


def with_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def with_head(blob: bytes, **changes: object) -> bytes:
    names = "magic version fingerprint cell tensors layers hidden vocab last_id pcg_state pcg_inc has_uint32 uinteger"
    fields = dict(zip(names.split(), snapshots._HEAD.unpack_from(blob)))
    fields.update(changes)
    return with_crc(snapshots._HEAD.pack(*fields.values()) + blob[snapshots._HEAD.size :])


# -- Model(...) --------------------------------------------------------------------------------------------------


def test_an_unreadable_path_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="could not be read .*check the path") as caught:  # was a raw OSError
        Model(tmp_path / ("a" * 5000 + ".onnx"))
    assert len(str(caught.value)) < 400


def test_max_bytes_past_the_format_limit_means_the_limit(path: Path) -> None:
    assert Model(path, provider="cpu", max_bytes=10**30).info.vocab_size == 11  # was an OverflowError


@pytest.mark.parametrize("kwargs", [{"spin": "no"}, {"spin": None}, {"cuda_graph": "yes"}, {"cuda_graph": 1}])
def test_flags_must_be_booleans(path: Path, kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(UsageError, match=f"{name} must be True or False"):  # "no" was taken as true
        Model(path, provider="cpu", **kwargs)


@pytest.mark.parametrize("threads", [True, -1, 1.5, "2"])
def test_threads_must_be_a_count(path: Path, threads: object) -> None:
    with pytest.raises(UsageError, match="threads"):
        Model(path, provider="cpu", threads=threads)


def test_threads_may_be_a_numpy_integer(path: Path) -> None:
    assert Model(path, provider="cpu", threads=np.int64(1)).device == "cpu"


def test_new_tokens_for_length_takes_words_as_a_flag(model: Model) -> None:
    with pytest.raises(UsageError, match="words must be True or False"):  # "no" counted words
        model.new_tokens_for_length("abc", 5, words="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"prompts": [""]}, {"prompts": ["a", 5]}, {"prompts": ["a"], "max_new_words": -1}],
    ids=["empty-seed", "not-text", "negative-words"],
)
def test_a_run_that_cannot_start_gives_its_buffers_back_at_once(
    model: Model, monkeypatch: pytest.MonkeyPatch, kwargs: dict
) -> None:
    """Pooled CUDA-graph buffers stayed lent while the exception (and so the half-made run) was alive."""
    closed = []
    real = model.open_steps

    def counted(batch: int):
        steps = real(batch)
        monkeypatch.setattr(steps, "close", lambda: closed.append(batch), raising=False)
        return steps

    monkeypatch.setattr(model, "open_steps", counted)
    with pytest.raises(UsageError) as caught:
        model.generator(kwargs.pop("prompts"), **kwargs)
    assert caught.traceback and len(closed) == 1  # closed while the traceback still holds the half-made run


# -- runs too big to hold ------------------------------------------------------------------------------------------


def test_a_million_rows_are_refused_at_once(model: Model) -> None:
    start = time.perf_counter()
    with pytest.raises(UsageError, match="split the prompts"):  # was 18 s and 2.3 GB of memory, then a run
        model.generator(["a"] * 10**6, resume=[b"not decoded"] * 10**6)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(UsageError, match="split the prompts"):
        model.initial_state(models.MAX_BATCH + 1)


def test_resume_of_another_length_is_refused_before_any_blob_is_decoded(
    model: Model, blob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = []
    monkeypatch.setattr(snapshots, "decode", lambda *args: decoded.append(1))
    with pytest.raises(UsageError, match="1000 for 1 prompts"):
        model.generator([""], resume=[blob] * 1000)
    assert not decoded


def test_a_run_is_bounded_by_the_memory_its_rows_hold(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    per_row = models.row_bytes(model.info)
    assert per_row == 3 * 2 * 2 * 8 * 4 + 4 * 4 * 11 + models.ROW_BYTES
    monkeypatch.setattr(models, "MAX_RUN_BYTES", 10 * per_row)
    with model.generator(["a"] * 10, SamplingConfig(max_new_tokens=1)) as run:
        run.step()
    for call in (lambda: model.generator(["a"] * 11), lambda: model.open_steps(11)):
        with pytest.raises(UsageError, match="11 rows of this model would hold .* 10 rows\\): split the prompts"):
            call()


# -- snapshots -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"pcg_inc": b"\x00" * 16}, "random generator"),  # numpy's increment is odd; `| 1` made it fit
        ({"has_uint32": 2}, "random generator"),  # a flag; `& 1` made it fit
        ({"has_uint32": 255}, "random generator"),
    ],
)
def test_a_random_generator_state_numpy_never_writes_is_refused(
    model: Model, blob: bytes, change: dict, words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        model.generator([""], SAMPLED, resume=[with_head(blob, **change)])


def test_seen_bits_past_the_vocabulary_are_refused(model: Model, blob: bytes) -> None:
    bad = bytearray(blob)
    bad[-5] |= 0x80  # the last seen byte holds tokens 8 to 10 and five zero padding bits
    with pytest.raises(UsageError, match="past the vocabulary"):
        model.generator([""], SAMPLED, resume=[with_crc(bytes(bad))])


def test_a_blob_longer_than_a_snapshot_is_refused_before_it_is_copied_or_summed(
    model: Model, blob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    summed = []
    monkeypatch.setattr(snapshots.zlib, "crc32", lambda data: summed.append(len(data)) or 0)
    huge = bytearray(blob[:10]) + bytearray(64 << 20)  # the magic and version, then 64 MiB
    for bad in (huge, memoryview(huge), blob + b"\0"):  # a gigabyte took 3.3 s: copied, then checksummed
        with pytest.raises(UsageError, match="more than a snapshot of this model takes \\(279\\)"):
            model.generator([""], resume=[bad])
    assert not summed


@settings(max_examples=300, deadline=None)
@given(bit=st.integers(0, 8 * 275 - 1))
def test_a_blob_with_any_bit_flipped_is_refused_or_reads_back_exactly(model: Model, blob: bytes, bit: int) -> None:
    """Any one bit of a snapshot flipped (the checksum made to match): a clear error, or a snapshot that
    encodes back to the very same bytes (nothing quietly fixed up, so the run is the blob's run)."""
    assert len(blob) == 279
    flipped = bytearray(blob)
    flipped[bit // 8] ^= 1 << bit % 8
    flipped = with_crc(bytes(flipped))
    try:
        snap = snapshots.decode(flipped, model.info, model.fingerprint)
    except RnnxError:
        return
    again = snapshots.encode(
        model.info, model.fingerprint, snap.state, snap.logits, snap.last_id, snap.rng_state, snap.seen
    )
    assert again == flipped


# -- scoring ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, 5, b"abc abc", bytearray(b"abc")], ids=["none", "int", "bytes", "bytearray"])
def test_score_refuses_what_is_not_text(model: Model, text: object) -> None:
    with pytest.raises(UsageError, match=f"string or chunks of one, got {type(text).__name__}"):
        model.score(text)  # type: ignore[arg-type]


def test_score_refuses_a_progress_that_cannot_be_called_before_scoring(model: Model) -> None:
    from rnnx.runtime.scoring import score

    with pytest.raises(UsageError, match="progress must be a function"):
        score(model, "abc " * 1000, progress=5)  # type: ignore[arg-type]


def test_score_takes_numpy_stream_counts_like_the_other_counts(model: Model) -> None:
    assert model.score("abc abc abc", streams=np.int64(2)) == model.score("abc abc abc", streams=2)

"""Runs that go on: the prompt path, `append`, finished rows continued, snapshots resumed in a fresh Model."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rnnx.export import export_model
from rnnx.export.graph import build_model_graph, build_step_graph
from rnnx.runtime import Model, ModelFileError, SamplingConfig, UsageError, contract
from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.onnxfile import extract
from rnnx.runtime.tokenizer import CharTokenizer, WordTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!"
WORDS = "The cat sat. The dog ran, and the cat ran too! Did the dog sit? No, the dog ran."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torch_model(cell: str, layers: int = 2, tokenizer=None, seed: int = 0) -> tuple[RNNLM, CharTokenizer]:
    torch.manual_seed(seed)
    tokenizer = tokenizer or CharTokenizer.build(TEXT)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=8, hidden=24, layers=layers))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier than the default init: varied tokens, not one character forever
    return model.eval(), tokenizer


def write(path: Path, model: RNNLM, tokenizer, prompt_path: bool = True) -> Path:
    build = build_model_graph if prompt_path else build_step_graph
    path.write_bytes(build(model, tokenizer, 17, "matmul").SerializeToString())
    return path


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Model]:
    """The same weights twice: with the prompt path, and step by step only."""
    model, tokenizer = torch_model(request.param)
    where = tmp_path_factory.mktemp(request.param)
    fast = Model(write(where / "v2.onnx", model, tokenizer), provider="cpu")
    slow = Model(write(where / "steps.onnx", model, tokenizer, prompt_path=False), provider="cpu")
    return fast, slow


@pytest.fixture(scope="module")
def model(pair: tuple[Model, Model]) -> Model:
    return pair[0]


def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = ort.InferenceSession.run

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    return calls


def test_prompt_path_reads_like_the_step_path(pair: tuple[Model, Model]) -> None:
    fast, slow = pair
    assert fast.has_prompt_path and not slow.has_prompt_path
    tokens = np.random.default_rng(0).integers(1, fast.info.vocab_size, (3, 90), dtype=np.int64)
    got_logits, got_state = fast.read(tokens, fast.initial_state(3))
    want_logits, want_state = slow.read(tokens, slow.initial_state(3))
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
    for got, want in zip(got_state, want_state):
        np.testing.assert_allclose(got, want, atol=1e-5)
    prompts = ["t", "the quick brown", "jumps over", "a"]
    assert fast.generate_batch(prompts, 25) == slow.generate_batch(prompts, 25)


def test_a_long_prompt_is_one_graph_call(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_runs(monkeypatch)
    with model.generator([TEXT * 3], SamplingConfig(max_new_tokens=0)) as run:
        assert run.done
    assert calls[0] == 1
    calls[0] = 0
    with model.generator(["ab", "cd", "the quick"], SamplingConfig(max_new_tokens=0)):
        pass
    assert calls[0] == 2  # one call per prompt length


def test_long_prompts_are_read_in_pieces(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = model.generate(TEXT * 4, 20)
    monkeypatch.setattr("rnnx.runtime.steps.PROMPT_CHUNK_BYTES", 1)  # one token per call
    calls = count_runs(monkeypatch)
    assert model.generate(TEXT * 4, 20) == whole
    assert calls[0] == len(TEXT * 4)  # generated tokens go through IOBinding, not session.run


def test_append_continues_a_finished_run(model: Model) -> None:
    with model.generator(["the"], SamplingConfig(max_new_tokens=10)) as run:
        first = "".join(run.step()[0] for _ in range(10))
        assert run.done
        run.append([" fox "])
        assert not run.done
        second = "".join(run.step()[0] for _ in range(10))
        assert run.done
    assert "the" + first + " fox " + second == model.generate("the" + first + " fox ", 10)


def test_rows_left_alone_keep_their_exact_state(model: Model) -> None:
    """Row 1 finishes, rides along while row 0 generates more, then continues as if it had never waited."""
    with model.generator(["over the", "a"], SamplingConfig(max_new_tokens=5)) as run:
        texts = ["over the", "a"]
        while not run.done:
            texts = [t + p for t, p in zip(texts, run.step())]
        before = texts[0] + " lazy"
        run.append([" lazy", ""])
        assert run.finished == (False, True)
        texts[0] = before + "".join(run.step()[0] for _ in range(5))
        assert run.done
        run.append(["", "b"])
        assert run.finished == (True, False)
        tail = "".join(run.step()[1] for _ in range(5))
    assert texts[0] == model.generate(before, 5)
    assert texts[1] + "b" + tail == model.generate(texts[1] + "b", 5)


def test_append_releases_text_held_back_for_a_stop_string(model: Model) -> None:
    """Generated text held back because it might begin a stop string is not lost when text is appended."""
    full = model.generate("the fox", 12)[len("the fox") :]
    stop = full[8:10] + "\x00"  # starts like the text at 8, never completes: pieces 8-9 are held back
    with model.generator(["the fox"], SamplingConfig(max_new_tokens=30, stop=(stop,))) as run:
        shown = "".join(run.step()[0] for _ in range(10))
        released = run.append([" dog"])
    assert shown == full[:8] and released == [full[8:10]]
    assert shown + released[0] == full[:10]


def test_append_checks_its_argument(model: Model) -> None:
    with model.generator(["the", "a"]) as run:
        with pytest.raises(UsageError, match="2 strings"):
            run.append(["x"])
        with pytest.raises(UsageError, match="list of strings"):
            run.append("xy")
    with pytest.raises(UsageError, match="closed"):
        run.append(["x", "y"])


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(max_new_tokens=20, rng_seed=3),
        SamplingConfig(temperature=1.0, top_k=8, rng_seed=7, max_new_tokens=20),
    ],
    ids=["greedy", "sampled"],
)
def test_snapshot_resumes_exactly_in_a_fresh_model(model: Model, sampling: SamplingConfig) -> None:
    """40 tokens straight = 20, snapshot, a new Model from the same file, 20 more: same text, same state."""
    straight = model.generator(["the fox"], dataclasses.replace(sampling, max_new_tokens=40))
    want = "".join(straight.step()[0] for _ in range(40))
    with model.generator(["the fox"], sampling) as run:
        first = "".join(run.step()[0] for _ in range(20))
        blob = run.snapshot(0)
    fresh = Model(model.path, provider="cpu")
    with fresh.generator([""], sampling, resume=[blob]) as resumed:
        second = "".join(resumed.step()[0] for _ in range(20))
        assert first + second == want
        # identical bytes: the same state, the same logits, the same random stream
        assert resumed.snapshot(0) == straight.snapshot(0)
    straight.close()
    assert len(blob) == snapshots.expected_size(model.info)


def test_resumed_row_reads_its_prompt_after_the_snapshot(model: Model) -> None:
    """Prefix reuse: prime a shared prompt once, start many runs from its snapshot."""
    shared = "pack my box with five dozen "
    with model.generator([shared], SamplingConfig(max_new_tokens=0)) as run:
        blob = run.snapshot(0)
    endings = ["liquor", "jugs", "fox"]
    resumed = model.generate_batch  # the reference: each whole text read from the start
    with model.generator(endings, SamplingConfig(max_new_tokens=12), resume=[blob] * 3) as run:
        got = ["".join(parts) for parts in zip(*(run.step() for _ in range(12)))]
    assert [shared + e + g for e, g in zip(endings, got)] == resumed([shared + e for e in endings], 12)


def test_snapshot_of_a_row_that_finished_with_the_batch(model: Model) -> None:
    with model.generator(["the", "dog"], SamplingConfig(max_new_tokens=6)) as run:
        texts = ["the", "dog"]
        while not run.done:
            texts = [t + p for t, p in zip(texts, run.step())]
        blob = run.snapshot(1)
    with model.generator([""], SamplingConfig(max_new_tokens=6), resume=[blob]) as resumed:
        more = "".join(resumed.step()[0] for _ in range(6))
    assert texts[1] + more == model.generate(texts[1], 6)


@pytest.fixture(scope="module")
def blob(model: Model) -> bytes:
    with model.generator(["the"], SamplingConfig(max_new_tokens=3)) as run:
        run.step()
        return run.snapshot(0)


def with_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def test_snapshots_from_elsewhere_are_refused(model: Model, blob: bytes, tmp_path: Path) -> None:
    other_weights, tokenizer = torch_model(model.info.cell, seed=1)
    other = Model(write(tmp_path / "other.onnx", other_weights, tokenizer), provider="cpu")
    with pytest.raises(ModelFileError, match="another model"):
        other.generator([""], resume=[blob])
    nan = bytearray(blob)
    nan[snapshots._HEAD.size : snapshots._HEAD.size + 4] = struct.pack("<f", float("nan"))
    cases = {
        "not an rnnx snapshot": b"hello" * 40,
        "damaged or truncated": blob[:-9] + blob[-4:],
        "checksum": blob[:200] + bytes([blob[200] ^ 1]) + blob[201:],
        "non-finite": with_crc(bytes(nan)),
        "bytes from Generator.snapshot": "text",
    }
    for words, bad in cases.items():
        with pytest.raises(UsageError, match=words):
            model.generator([""], resume=[bad])
    with pytest.raises(UsageError, match="empty"):
        model.generator([""], resume=[None])
    with pytest.raises(UsageError, match="one snapshot"):
        model.generator(["a", "b"], resume=[blob])


def test_int8_prompt_path_matches_its_steps(tmp_path: Path) -> None:
    weights, tokenizer = torch_model("lstm")
    save_model(tmp_path, weights, tokenizer, {})
    path = export_model(tmp_path, tmp_path / "int8.onnx", quantize="int8").path
    fast = Model(path, provider="cpu")
    steps_only = extract(path.read_bytes(), contract.step_outputs("lstm"), "int8")  # the same graph, no prompt path
    (tmp_path / "steps.onnx").write_bytes(steps_only)
    assert len(onnx.load(str(tmp_path / "steps.onnx")).graph.node) < len(onnx.load(str(path)).graph.node)
    slow = Model(tmp_path / "steps.onnx", provider="cpu")
    assert fast.has_prompt_path and not slow.has_prompt_path
    assert fast.generate_batch(["the quick", "a"], 30) == slow.generate_batch(["the quick", "a"], 30)


def test_version_1_files_still_run(tmp_path: Path) -> None:
    weights, tokenizer = torch_model("gru")
    proto = build_step_graph(weights, tokenizer, 17, "matmul")
    for prop in proto.metadata_props:
        if prop.key == contract.META_FORMAT:
            prop.value = "1"
    (tmp_path / "v1.onnx").write_bytes(proto.SerializeToString())
    old = Model(tmp_path / "v1.onnx", provider="cpu")
    assert old.info.format_version == 1 and not old.has_prompt_path
    new = Model(write(tmp_path / "v2.onnx", weights, tokenizer), provider="cpu")
    assert old.generate("the lazy", 30) == new.generate("the lazy", 30)


def test_word_budget_counts_words_not_punctuation(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build(WORDS)
    weights, _ = torch_model("lstm", tokenizer=tokenizer)
    model = Model(write(tmp_path / "w.onnx", weights, tokenizer), provider="cpu")
    assert model.new_tokens_for_length("the cat, the dog", 5, words=True) == 1
    with pytest.raises(UsageError, match="shorter than the seed"):
        model.new_tokens_for_length("the cat, the dog", 3, words=True)
    text = "".join(model.stream("the cat", max_new_words=10))
    ids = model.tokenizer.encode(text)
    assert sum(map(model.tokenizer.is_word, ids)) == 10


def test_read_checks_its_tokens(model: Model) -> None:
    state = model.initial_state(1)
    for bad in (np.zeros((1, 0), np.int64), np.zeros(3, np.int64), np.zeros((1, 3), np.int32)):
        with pytest.raises(UsageError, match="int64"):
            model.read(bad, state)

"""The runtime API on tiny random models: generate, stream, batches, stop strings, and the step loop itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnx.export.graph import build_step_graph
from rnnx.runtime import Model, SamplingConfig, UsageError
from rnnx.runtime.generator import StopText
from rnnx.runtime.tokenizer import UNK_ID, CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!"


def write_model(path: Path, cell: str = "lstm", layers: int = 2, hidden: int = 24, unk_bias: float = 0.0) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(TEXT)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=8, hidden=hidden, layers=layers))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier than the default init: varied tokens, not one character forever
        model.head.bias[UNK_ID] += unk_bias
    path.write_bytes(build_step_graph(model.eval(), tokenizer, 17).SerializeToString())
    return path


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    return Model(write_model(tmp_path_factory.mktemp(request.param) / "m.onnx", request.param), provider="cpu")


def greedy_by_hand(model: Model, prompt: str, n: int) -> str:
    """The plain loop over Model.step: what the IOBinding hot loop must reproduce exactly."""
    state, logits = model.initial_state(1), None
    for token_id in model.tokenizer.encode(prompt):
        logits, state = model.step(np.array([token_id], np.int64), state)
    out = []
    for _ in range(n):
        logits[0, UNK_ID] = -np.inf
        token_id = int(logits[0].argmax())
        out.append(model.tokenizer.vocab[token_id])
        logits, state = model.step(np.array([token_id], np.int64), state)
    return prompt + "".join(out)


def test_generate_equals_the_plain_step_loop(model: Model) -> None:
    text = model.generate("the fox", 40)
    assert text == greedy_by_hand(model, "the fox", 40)
    assert len(text) == len("the fox") + 40


def test_stream_pieces_join_to_generate(model: Model) -> None:
    sampling = SamplingConfig(temperature=1.0, top_k=10, top_p=0.95, rng_seed=5, max_new_tokens=30)
    pieces = list(model.stream("lazy", sampling=sampling))
    assert len(pieces) == 30 and all(pieces)
    assert "lazy" + "".join(pieces) == model.generate("lazy", sampling=sampling)


def test_max_new_tokens_argument_overrides_the_config(model: Model) -> None:
    sampling = SamplingConfig(max_new_tokens=3)
    assert len(model.generate("dog", sampling=sampling)) == 6
    assert len(model.generate("dog", 7, sampling)) == 10
    assert model.generate("dog", 0) == "dog"


def test_batch_rows_equal_single_runs_whatever_the_prompt_lengths(model: Model) -> None:
    prompts = ["t", "the quick brown", "jumps over", "a"]
    greedy = model.generate_batch(prompts, 25)
    assert greedy == [model.generate(p, 25) for p in prompts]


def test_batch_prompts_read_each_row_exactly(model: Model) -> None:
    """Rows with prompts of different lengths end in the state and logits each would reach alone."""
    prompts = ["ab", "the quick", "x", "cd"]
    with model.generator(prompts, SamplingConfig(max_new_tokens=1)) as run:
        state, logits = run._steps.state(), run._logits.copy()
    for row, prompt in enumerate(prompts):
        ids = np.array([model.tokenizer.encode(prompt)], np.int64)
        one_logits, one_state = model.read(ids, model.initial_state(1))
        np.testing.assert_allclose(logits[row], one_logits[0], atol=1e-5)
        for got, want in zip(state, one_state):
            np.testing.assert_allclose(got[:, row], want[:, 0], atol=1e-5)


def test_sampled_batch_is_repeatable_with_a_seed(model: Model) -> None:
    sampling = SamplingConfig(temperature=1.2, rng_seed=11, max_new_tokens=20)
    first = model.generate_batch(["the", "over the"], sampling=sampling)
    assert first == model.generate_batch(["the", "over the"], sampling=sampling)
    assert first != model.generate_batch(["the", "over the"], sampling=SamplingConfig(temperature=1.2, rng_seed=12))


def test_stop_string_ends_generation_before_it(model: Model) -> None:
    full = model.generate("the fox", 40)[len("the fox") :]
    stop = full[10:13]  # a stop string the greedy text is known to reach
    cut = full[: full.index(stop)]
    sampling = SamplingConfig(stop=(stop, "never-seen"), max_new_tokens=40)
    assert model.generate("the fox", sampling=sampling) == "the fox" + cut
    assert "".join(model.stream("the fox", sampling=sampling)) == cut


def test_unknown_token_is_never_emitted_even_when_most_likely(tmp_path: Path) -> None:
    loaded = Model(write_model(tmp_path / "unk.onnx", unk_bias=100.0), provider="cpu")
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0, rng_seed=0)):
        pieces = list(loaded.stream("the", 50, sampling))
        assert len(pieces) == 50 and all(pieces)


def test_repetition_penalty_changes_greedy_text(model: Model) -> None:
    plain = model.generate("the", 40)
    penalized = model.generate("the", 40, SamplingConfig(repetition_penalty=3.0))
    assert penalized != plain
    assert len(set(penalized[3:])) >= len(set(plain[3:]))


def test_generator_lifecycle(model: Model) -> None:
    with model.generator(["the", "dog"], SamplingConfig(max_new_tokens=2)) as run:
        assert not run.done
        assert all(len(p) == 1 for p in run.step())
        assert run.finished == (False, False)
        run.step()
        assert run.done and run.step() == ["", ""]


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: m.generate("", 5), "empty"),
        (lambda m: m.generate("the", -1), "max_new_tokens"),
        (lambda m: m.generate("the", 5, {"temperature": 1}), "SamplingConfig"),
        (lambda m: m.generate_batch([], 5), "prompts"),
        (lambda m: m.generate_batch("the", 5), "prompts"),
        (lambda m: m.step(np.array([1], np.int32), m.initial_state(1)), "int64"),
        (lambda m: m.step(np.array([-1]), m.initial_state(1)), "token ids"),
        (lambda m: m.step(np.array([10**6]), m.initial_state(1)), "token ids"),
        (lambda m: m.step(np.array([1, 2]), m.initial_state(1)), "state must be"),
        (lambda m: m.read(np.array([[1]]), (np.zeros((1, 1, 1)),)), "state must be"),
        (lambda m: m.initial_state(-1), "batch"),
        (lambda m: m.initial_state(10**12), "batch"),
        (lambda m: m.open_steps(10**9), "batch"),
        (lambda m: m.new_tokens_for_length("the", "10"), "length"),
        (lambda m: m.new_tokens_for_length(None, 10), "prompt"),
        (lambda m: Model(3), "path"),
    ],
    ids=[
        "empty-prompt",
        "negative-length",
        "dict-config",
        "no-prompts",
        "string-not-list",
        "int32-tokens",
        "negative-id",
        "id-past-vocab",
        "state-batch",
        "float64-state",
        "negative-batch",
        "huge-batch",
        "huge-steps",
        "length-text",
        "prompt-none",
        "path-int",
    ],
)
def test_bad_calls_are_usage_errors(model: Model, call, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        call(model)


@pytest.mark.parametrize(
    "pieces, stops, emitted, stopped",
    [
        (["a", "b", "c"], ("xyz",), ["a", "b", "c"], False),
        (["a", "x", "y", "z", "q"], ("xyz",), ["a", "", "", ""], True),
        (["a", "x", "y", "b"], ("xyz",), ["a", "", "", "xyb"], False),
        (["ab", "cxy", "zd"], ("xyz", "cx"), ["ab", ""], True),
        (["hello wor", "ld!"], ("world",), ["hello ", ""], True),
    ],
)
def test_stop_text_holds_back_only_possible_starts(pieces, stops, emitted, stopped) -> None:
    matcher, got, hit = StopText(stops), [], False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        got.append(text)
        if hit:
            break
    assert got == emitted and hit == stopped

"""SamplingConfig checks and the Sampler's choices: exact ids where a rule decides, frequencies where chance does."""

from __future__ import annotations

import numpy as np
import pytest

from rnnx.runtime.errors import UsageError
from rnnx.runtime.sampling import Sampler, SamplingConfig

VOCAB = 8


def logits_row(*values: float) -> np.ndarray:
    return np.array([values], np.float32)  # (1, V)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top-k"),
        ({"top_k": 2.5}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"repetition_penalty": 0.9}, "repetition penalty"),
        ({"repetition_penalty": float("inf")}, "repetition penalty"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"rng_seed": -3}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop": (3,)}, "stop"),
    ],
)
def test_bad_sampling_values_are_usage_errors(kwargs: dict, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        SamplingConfig(**kwargs)


def test_stop_accepts_one_string_or_a_list_and_keeps_a_tuple() -> None:
    assert SamplingConfig(stop="\n").stop == ("\n",)
    assert SamplingConfig(stop=["a", "bc"]).stop == ("a", "bc")


def test_greedy_picks_the_largest_logit_per_row_but_never_unknown() -> None:
    logits = np.array([[9.0, 1.0, 3.0, 2.0], [9.0, 5.0, 4.0, 6.0]], np.float32)  # id 0 is <unk>
    ids = Sampler(SamplingConfig(), batch=2, vocab=4).choose(logits)
    assert ids.tolist() == [2, 3]


def test_sampling_never_returns_unknown_even_when_it_dominates() -> None:
    sampler = Sampler(SamplingConfig(temperature=1.0, rng_seed=0), batch=1, vocab=VOCAB)
    for _ in range(300):
        assert sampler.choose(logits_row(50.0, 0, 0, 0, 0, 0, 0, 0))[0] != 0


def test_top_k_samples_only_among_the_k_best() -> None:
    sampler = Sampler(SamplingConfig(temperature=5.0, top_k=2, rng_seed=1), batch=1, vocab=VOCAB)
    seen = {int(sampler.choose(logits_row(0, 1.0, 3.0, 2.9, 0.5, 0.2, 0.1, 0.0))[0]) for _ in range(400)}
    assert seen == {2, 3}


def test_top_p_keeps_the_smallest_set_that_reaches_p() -> None:
    # probabilities of ids 1..3: 0.5, 0.3, 0.2 (id 0 <unk> and the rest are impossible)
    probs = np.array([0, 0.5, 0.3, 0.2], np.float64)
    row = np.log(np.where(probs > 0, probs, 1e-30)).astype(np.float32)[None]
    sampler = Sampler(SamplingConfig(temperature=1.0, top_p=0.75, rng_seed=2), batch=1, vocab=4)
    counts = np.bincount([int(sampler.choose(row.copy())[0]) for _ in range(4000)], minlength=4)
    assert counts[0] == 0 and counts[3] == 0  # 0.5 + 0.3 reaches 0.75: id 3 is cut
    assert abs(counts[1] / counts[1:].sum() - 0.5 / 0.8) < 0.03  # the kept mass is renormalized


def test_top_p_and_top_k_together_take_the_tighter_cut() -> None:
    sampler = Sampler(SamplingConfig(temperature=1.0, top_k=3, top_p=0.999, rng_seed=3), batch=1, vocab=VOCAB)
    seen = {int(sampler.choose(logits_row(0, 4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4))[0]) for _ in range(400)}
    assert seen == {1, 2, 3}


def test_plain_temperature_sampling_follows_the_softmax() -> None:
    row = logits_row(0, np.log(0.6), np.log(0.3), np.log(0.1))
    sampler = Sampler(SamplingConfig(temperature=1.0, rng_seed=4), batch=1, vocab=4)
    counts = np.bincount([int(sampler.choose(row.copy())[0]) for _ in range(5000)], minlength=4)
    np.testing.assert_allclose(counts[1:] / 5000, [0.6, 0.3, 0.1], atol=0.025)
    assert counts[0] == 0


def test_same_seed_same_choices_and_rows_draw_independently() -> None:
    row = np.tile(logits_row(0, 1, 1, 1, 1, 1, 1, 1), (3, 1))
    first = [Sampler(SamplingConfig(temperature=1.0, rng_seed=7), 3, VOCAB) for _ in range(2)]
    picks = [[s.choose(row.copy()).tolist() for _ in range(20)] for s in first]
    assert picks[0] == picks[1]
    assert len({tuple(p) for p in picks[0]}) > 1 and any(len(set(p)) > 1 for p in picks[0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=2.0), batch=1, vocab=4, history=[[1, 3]])
    logits = logits_row(0, 3.0, 2.0, -1.0)
    assert sampler.choose(logits).tolist() == [2]  # 3.0 -> 1.5 for the seen id 1; 2.0 stays
    np.testing.assert_allclose(logits[0, 1:], [1.5, 2.0, -2.0])


def test_repetition_penalty_remembers_what_it_chose() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=10.0), batch=1, vocab=4)
    picks = [int(sampler.choose(logits_row(0, 3.0, 2.0, 1.0))[0]) for _ in range(3)]
    assert picks == [1, 2, 3]  # each pick is penalized below the next best afterwards

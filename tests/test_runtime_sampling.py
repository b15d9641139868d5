"""SamplingConfig checks and the Sampler's choices: exact ids where a rule decides, frequencies where chance does."""

from __future__ import annotations

import numpy as np
import pytest

from rnnx.runtime import sampling
from rnnx.runtime.errors import ModelFileError, UsageError
from rnnx.runtime.sampling import MAX_SEED, Sampler, SamplingConfig

VOCAB = 8


def logits_row(*values: float) -> np.ndarray:
    return np.array([values], np.float32)  # (1, V)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1.0001e30}, "at most 1e\\+30"),
        ({"temperature": 1e50}, "temperature"),
        ({"temperature": np.float64("nan")}, "temperature"),
        ({"top_k": -1}, "top-k"),
        ({"top_k": 2.5}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"repetition_penalty": 0.9}, "repetition penalty"),
        ({"repetition_penalty": float("inf")}, "repetition penalty"),
        ({"repetition_penalty": float("nan")}, "repetition penalty"),
        ({"repetition_penalty": 1e308}, "at most 1e\\+30"),
        ({"top_p": float("nan")}, "top-p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"rng_seed": -3}, "seed"),
        ({"rng_seed": 2**64}, "2\\*\\*64-1"),
        ({"rng_seed": 2**70}, "2\\*\\*64-1"),
        ({"rng_seed": 1.0}, "seed"),
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


# -- extreme values: each boundary on both sides --------------------------------------------------------------


def test_the_largest_values_are_accepted() -> None:
    config = SamplingConfig(temperature=1e30, repetition_penalty=1e30, rng_seed=MAX_SEED)
    assert config.rng_seed == 2**64 - 1 and not config.greedy


@pytest.mark.parametrize("temperature", [0.0, 1e-40, 5e-324, 9.99e-31])
def test_a_temperature_below_1e_30_is_greedy(temperature: float) -> None:
    assert SamplingConfig(temperature=temperature).greedy
    sampler = Sampler(SamplingConfig(temperature=temperature, rng_seed=0), batch=2, vocab=4)
    logits = np.array([[9.0, 1.0, 3.0, 2.0], [9.0, 3.0, 3.0, 2.0]], np.float32)
    assert sampler.choose(logits).tolist() == [2, 1]  # argmax; the first of two equal logits


def test_temperature_1e_30_samples_and_is_as_good_as_greedy_without_ties() -> None:
    sampler = Sampler(SamplingConfig(temperature=1e-30, rng_seed=0), batch=1, vocab=VOCAB)
    assert not sampler.config.greedy
    picks = {int(sampler.choose(logits_row(50, 1.0, 3.0, 2.9999998, 0, 0, 0, -1e30))[0]) for _ in range(50)}
    assert picks == {2}
    tied = {int(sampler.choose(logits_row(50, 1.0, 3.0, 3.0, 0, 0, 0, 0))[0]) for _ in range(50)}
    assert tied == {2, 3}  # equal logits stay equally likely


def test_temperature_1e30_is_uniform_over_every_token_but_unknown() -> None:
    sampler = Sampler(SamplingConfig(temperature=1e30, rng_seed=0), batch=1, vocab=VOCAB)
    row = logits_row(1e6, -1e6, 3e5, 0, 1, -3e4, 2, 5)
    counts = np.bincount([int(sampler.choose(row.copy())[0]) for _ in range(1400)], minlength=VOCAB)
    assert counts[0] == 0 and counts[1:].min() > 140  # about 200 each


@pytest.mark.parametrize("temperature", [1e-30, 1.0, 1e30])
def test_logits_at_the_float32_limits_still_give_a_token(temperature: float) -> None:
    # gaps of 1e38 overflow float32 when subtracted: such tokens are impossible, which they are at any T <= 1e30
    sampler = Sampler(SamplingConfig(temperature=temperature, top_p=0.5, rng_seed=0), batch=1, vocab=VOCAB)
    row = logits_row(3e38, -3e38, 3.4e38, 0, 1, -3.4e38, 2, 3.4e38)
    assert {int(sampler.choose(row.copy())[0]) for _ in range(50)} == {2, 7}


def test_the_largest_repetition_penalty_rules_out_seen_tokens_with_negative_logits() -> None:
    sampler = Sampler(SamplingConfig(temperature=1.0, repetition_penalty=1e30, rng_seed=0), 1, 5, [[1, 2, 3]])
    picks = [int(sampler.choose(logits_row(0, 5.0, -1.0, 0.0, -30.0))[0]) for _ in range(200)]
    assert set(picks) <= {1, 3, 4} and 0 not in picks  # 5 -> 5e-30, 0 stays 0, -1 -> -1e30


def test_the_largest_repetition_penalty_greedy_never_picks_unknown() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=1e30), batch=1, vocab=4, history=[[1, 2, 3]])
    logits = logits_row(100.0, -3.0, -2.0, -1.0)
    assert sampler.choose(logits).tolist() == [3]
    np.testing.assert_allclose(logits[0], [-np.inf, -3e30, -2e30, -1e30], rtol=1e-6)


# -- logits that are not finite -------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_are_never_chosen(temperature: float) -> None:
    sampler = Sampler(SamplingConfig(temperature=temperature, rng_seed=0), batch=2, vocab=5)
    for _ in range(100):
        logits = np.array([[NAN, NAN, 1.0, NAN, 0.5], [5.0, 2.0, NAN, 1.0, NAN]], np.float32)
        ids = sampler.choose(logits)
        assert ids[0] in (2, 4) and ids[1] in (1, 3)


def test_greedy_with_nan_takes_the_largest_number() -> None:
    logits = np.array([[0.0, NAN, 1.0, 3.0, NAN]], np.float32)
    assert Sampler(SamplingConfig(), 1, 5).choose(logits).tolist() == [3]


def test_inf_logits_are_drawn_among_themselves_and_greedy_takes_the_first() -> None:
    row = logits_row(INF, 1.0, INF, 3e38, NAN, INF, 0.0, -INF)
    sampler = Sampler(SamplingConfig(temperature=0.5, top_k=3, top_p=0.9, rng_seed=0), batch=1, vocab=VOCAB)
    assert {int(sampler.choose(row.copy())[0]) for _ in range(100)} == {2, 5}
    assert Sampler(SamplingConfig(), 1, VOCAB).choose(row.copy()).tolist() == [2]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("bad", [NAN, -INF])
def test_a_row_with_nothing_to_choose_is_an_error_never_the_unknown_token(temperature: float, bad: float) -> None:
    logits = np.array([[1.0, 2.0, 3.0], [9.0, bad, bad]], np.float32)  # row 1: only <unk> is a number
    with pytest.raises(ModelFileError, match="no usable logits for row 1"):
        Sampler(SamplingConfig(temperature=temperature, top_k=2, rng_seed=0), 2, 3).choose(logits)


# -- the same choices as a straightforward reference ----------------------------------------------------------


def reference_choose(logits: np.ndarray, config: SamplingConfig, u: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The sampler as first written: float64, whole rows, a full sort for top-p; `seen` marks penalized tokens."""
    p = logits.astype(np.float64)
    p[:, 0] = -np.inf
    r = config.repetition_penalty
    p = np.where(seen, np.where(p > 0, p / r, p * r), p)
    if config.greedy:
        return p.argmax(axis=1)
    p = p / config.temperature
    if config.top_k and config.top_k < p.shape[1]:
        kth = np.sort(p, axis=1)[:, -config.top_k, None]
        p = np.where(p < kth, -np.inf, p)
    w = np.exp(p - p.max(axis=1, keepdims=True))
    if config.top_p < 1:
        order = np.argsort(-w, axis=1, kind="stable")
        ordered = np.take_along_axis(w, order, axis=1)
        cum = np.cumsum(ordered, axis=1)
        drop = (cum - ordered) >= config.top_p * cum[:, -1:]
        np.put_along_axis(w, order, np.where(drop, 0.0, ordered), axis=1)
    cum = np.cumsum(w, axis=1)
    return (cum <= (u * cum[:, -1])[:, None]).sum(axis=1)


CONFIGS = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.6, "top_k": 5},
    {"temperature": 1.4, "top_p": 0.8},
    {"temperature": 0.9, "top_k": 20, "top_p": 0.7},
    {"temperature": 1.0, "top_p": 0.999},
    {"temperature": 0.8, "repetition_penalty": 1.5, "top_k": 30},
    {"repetition_penalty": 3.0},
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("small_blocks", [False, True], ids=["one-block", "small-blocks"])
def test_choices_match_the_reference(kwargs: dict, small_blocks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if small_blocks:  # several row blocks, many draw chunks, and top-p widening its candidates row by row
        monkeypatch.setattr(sampling, "_BLOCK", 200)
        monkeypatch.setattr(sampling, "_DIRECT_DRAW", 8)
        monkeypatch.setattr(sampling, "_TOP_P_FIRST", 2)
    batch, vocab = 5, 70
    config = SamplingConfig(rng_seed=3, **kwargs)
    history = [[1, 2, 2], [], [5], [69, 0], [3, 4]]
    sampler = Sampler(config, batch, vocab, history)
    children = [np.random.SeedSequence(3, spawn_key=(row,)) for row in range(1, batch)]
    draws = [np.random.default_rng(3)] + [np.random.default_rng(seq) for seq in children]  # row r: child r
    seen = np.zeros((batch, vocab), bool)
    for row, ids in enumerate(history):
        seen[row, ids] = True
    rng = np.random.default_rng(0)
    for _ in range(60):
        logits = (rng.standard_normal((batch, vocab)) * rng.uniform(0.5, 4)).astype(np.float32)
        u = np.zeros(batch) if config.greedy else np.array([rng.random() for rng in draws])  # each row its own
        want = reference_choose(logits, config, u, seen if config.repetition_penalty != 1 else seen & False)
        got = sampler.choose(logits.copy())
        assert got.tolist() == want.tolist()
        seen[np.arange(batch), want] = True


# -- rows on their own: active rows, remembered text, saved and restored state --------------------------------


def test_a_row_draws_the_same_whatever_rows_are_beside_it() -> None:
    row = logits_row(0, 1, 1, 1, 1, 1, 1, 1)
    alone = Sampler(SamplingConfig(temperature=1.0, rng_seed=9), 1, VOCAB)
    crowd = Sampler(SamplingConfig(temperature=1.0, rng_seed=9), 4, VOCAB)
    first = [int(alone.choose(row.copy())[0]) for _ in range(30)]
    assert first == [int(crowd.choose(np.tile(row, (4, 1)))[0]) for _ in range(30)]


def test_inactive_rows_get_minus_one_and_keep_logits_generator_and_seen_tokens() -> None:
    sampler = Sampler(SamplingConfig(temperature=1.0, repetition_penalty=2.0, rng_seed=1), 3, 4, [[1], [2], [3]])
    before = [sampler.row_state(row) for row in range(3)]
    logits = np.array([[0, 1, 2, 3], [0, NAN, NAN, NAN], [0, 3, 2, 1]], np.float32)  # row 1 would be an error
    kept = logits.copy()
    ids = sampler.choose(logits, np.array([True, False, True]))
    assert ids[1] == -1 and ids[0] > 0 and ids[2] > 0
    np.testing.assert_array_equal(logits, kept)  # a subset of rows is worked on in a copy
    after = sampler.row_state(1)
    assert after[0] == before[1][0] and (after[1] == before[1][1]).all()
    assert sampler.row_state(0)[0] != before[0][0] and sampler.row_state(0)[1][ids[0]]
    assert sampler.choose(logits.copy(), np.zeros(3, bool)).tolist() == [-1, -1, -1]


def test_a_restored_row_goes_on_exactly() -> None:
    config = SamplingConfig(temperature=1.0, top_k=5, repetition_penalty=1.3, rng_seed=4)
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((2, 12)).astype(np.float32) for _ in range(16)]
    straight = Sampler(config, 2, 12, [[1, 2], [3]])
    picks = [straight.choose(step.copy())[1] for step in logits]
    first = Sampler(config, 2, 12, [[1, 2], [3]])
    for step in logits[:8]:
        first.choose(step.copy())
    resumed = Sampler(config, 1, 12)
    resumed.restore_row(0, *first.row_state(1))
    assert [resumed.choose(step[1:].copy())[0] for step in logits[8:]] == picks[8:]


def test_remember_counts_for_the_penalty() -> None:
    sampler = Sampler(SamplingConfig(repetition_penalty=4.0), batch=2, vocab=4)
    sampler.remember(1, [3, 3])
    assert sampler.choose(np.array([[0, 1, 2, 3], [0, 1, 2, 3]], np.float32)).tolist() == [3, 2]
    assert sampler.row_state(1)[1].tolist() == [False, False, True, True]


# -- the fast ways give what the general ones give ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 1.0}, {"temperature": 0.8, "top_k": 40}, {"temperature": 3.0, "top_k": 1}]
)
def test_a_single_row_draws_what_the_same_row_draws_in_a_batch(kwargs: dict) -> None:
    config = SamplingConfig(**kwargs)
    rng = np.random.default_rng(5)
    draws = [0.0, 1.0 - 2**-53, *rng.random(300)]  # both ends of [0, 1), then anywhere
    for u in draws:
        row = (rng.standard_normal(65) * rng.uniform(0.5, 6)).astype(np.float32)
        row[rng.integers(65)] = row.max()  # a tie at the top now and then
        alone = sampling._sample(config, row[None].copy(), np.array([u]), np.array([0]))  # the one-row path
        pair = sampling._sample(config, np.stack([row, row]), np.array([u, u]), np.array([0, 1]))  # the block path
        assert alone.tolist() == pair[:1].tolist()


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("budget", [sampling._AHEAD_BYTES, 16], ids=["64-ahead", "8-ahead"])
def test_uniforms_drawn_ahead_are_single_draws_and_leave_their_state(
    count: int, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sampling, "_AHEAD_BYTES", budget)  # 16 bytes for 2 rows: the least, 8 ahead
    seeds = np.random.SeedSequence(11)
    ahead = sampling._Uniforms(seeds, [0, 3])
    one_by_one = [np.random.default_rng(seeds), np.random.default_rng(np.random.SeedSequence(11, spawn_key=(3,)))]
    for step in range(count):
        rows = np.array([0, 1]) if step % 3 else np.array([1])  # row 0 skips every third step
        got = ahead.draw(rows).tolist()
        assert got == [one_by_one[row].random() for row in rows.tolist()]
    for row in (0, 1):
        assert ahead.state(row) == one_by_one[row].bit_generator.state
    assert ahead._block.shape[1] == (64 if budget > 16 else 8)
    moved = sampling._Uniforms(np.random.SeedSequence(99), [0])  # another seed, then row 1's stream
    moved.restore(0, ahead.state(1))
    assert [moved.draw_one(0) for _ in range(70)] == [one_by_one[1].random() for _ in range(70)]

"""Choosing the next token from logits: greedy, temperature, top-k, top-p and a repetition penalty.

`SamplingConfig` says what to do; a `Sampler` does it for one generation stream, a whole batch per call. The
work per call is linear in batch × vocab with a small constant, and its temporary memory is bounded: rows go
through in blocks of about a million logits, top-k and top-p select candidates with `np.partition` (top-p sorts
only the few most likely tokens, more only for rows whose cut lies further down), and the draw finds its chunk
of about √V tokens first, then the token inside it. A single row of a small vocabulary without top-p (one
stream's step) takes a shorter path with the same arithmetic, and each row's uniform numbers are drawn 64 at a
time (`_Uniforms`): 64 rows of 65 tokens, T 0.8, top-k 40 took 174 µs a step before these two, 78 after (dev
machine). The unknown token is never chosen.

Extreme values, defined (`tests/test_runtime_sampling.py` checks each boundary):
- a temperature below `GREEDY_BELOW` (1e-30) is greedy, as 0 is; above `MAX_TEMPERATURE` (1e30) it is refused;
- a repetition penalty above `MAX_REPETITION_PENALTY` (1e30) is refused;
- NaN logits are never chosen; a row with +inf logits draws among those tokens only (greedy takes the first);
- a row with no choosable token (every logit but `<unk>`'s is -inf or NaN) raises `ModelFileError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rnnx.runtime.errors import ModelFileError, UsageError
from rnnx.runtime.tokenizer import UNK_ID

MAX_SEED = 2**64 - 1  # a 64-bit seed: one any other runtime can take and repeat
GREEDY_BELOW = 1e-30  # a smaller temperature is greedy, as 0 is: 1/T nears float32's limit (greedy but for ties)
MAX_TEMPERATURE = 1e30  # 1/T must stay a normal float32; long before this, every kept token is equally likely
MAX_REPETITION_PENALTY = 1e30  # a float32 penalty must be finite (a zero logit times inf would be NaN)
_BLOCK = 1 << 20  # logits per block of rows: temporaries stay a few MB whatever batch × vocab is
_TOP_P_FIRST = 256  # top-p sorts this many candidates first, 8 times more for rows whose cut lies further down
_BELOW_ONE = 1.0 - 2.0**-52  # see _draw_in
_DIRECT_DRAW = 1024  # up to this vocabulary the draw takes one cumulative sum per row; above, two short ones
_AHEAD = 64  # uniform numbers drawn per row at a time (see _Uniforms), fewer for a large batch:
_AHEAD_BYTES = 1 << 20  # the blocks of a whole batch stay within about this (8 per row at least)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy: always the most likely token (below 1e-30 too)
    top_k: int = 0  # keep only the k most likely tokens (and any tied with the k-th); 0 keeps all
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches p (ties kept)
    # > 1 makes tokens already in the text (prompt included) less likely: a positive logit is divided by it,
    # a negative one multiplied (the CTRL paper's rule); 1 is off
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends before the first of these in the new text; it is not emitted
    max_new_tokens: int = 100  # the most tokens generated after the prompt
    rng_seed: int | None = None  # None draws a fresh seed; an int (0 to 2**64-1) makes sampling repeatable

    def __post_init__(self) -> None:
        if not (_is_real(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise UsageError(
                f"temperature must be 0 (greedy) or positive, at most {MAX_TEMPERATURE:g}, got {self.temperature!r}"
            )
        if not is_int(self.top_k) or self.top_k < 0:
            raise UsageError(f"top-k must be 0 (off) or positive, got {self.top_k!r}")
        if not (_is_real(self.top_p) and 0 < self.top_p <= 1):
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p!r}")
        if not (_is_real(self.repetition_penalty) and 1 <= self.repetition_penalty <= MAX_REPETITION_PENALTY):
            raise UsageError(
                f"repetition penalty must be 1 (off) or more, at most {MAX_REPETITION_PENALTY:g}, "
                f"got {self.repetition_penalty!r}"
            )
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise UsageError(f"max_new_tokens must be 0 or more, got {self.max_new_tokens!r}")
        if self.rng_seed is not None and (not is_int(self.rng_seed) or not 0 <= self.rng_seed <= MAX_SEED):
            raise UsageError(f"the random seed must be a whole number from 0 to 2**64-1, got {self.rng_seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop  # one string is one stop string
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise UsageError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def is_int(value: object) -> bool:
    """A whole number (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """A number that compares as itself: NaN fails every range check after this one."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) and value == value


class Sampler:
    """Picks one token per row from logits [batch, vocab], for one stream; not shared between threads.

    Each row draws from its own random generator, so a row's text does not depend on the rows beside it and
    one row's state can be saved and restored (`row_state`, `restore_row`): row 0 from
    `default_rng(rng_seed)` (a single prompt samples as it always did), row r from the seed's child r.
    """

    def __init__(self, config: SamplingConfig, batch: int, vocab: int, history: Sequence[Sequence[int]] = ()) -> None:
        self.config = config
        self._uniforms = _Uniforms(np.random.SeedSequence(config.rng_seed), range(batch))  # entropy drawn now
        self._rows = np.arange(batch)
        self._seen = np.zeros((batch, vocab), bool)  # with a penalty: which tokens each row's text holds so far
        self._penalized = config.repetition_penalty != 1
        self._plain_greedy = config.greedy and not self._penalized
        self._hits = np.empty((2, max(batch, 16)), np.int64)  # with a penalty: the seen (row, token) pairs,
        self._count = 0  # the first _count of them, so that a step's penalty costs the text's length only
        for row, ids in enumerate(history):
            self.remember(row, ids)

    # -- one row's state -----------------------------------------------------------------------------------------

    def remember(self, row: int, ids: Sequence[int]) -> None:
        """Row `row`'s text now holds `ids` too (a prompt, appended text): the repetition penalty counts them."""
        if not self._penalized:
            return
        unique = np.unique(np.asarray(ids, np.int64))
        self._mark(np.full(len(unique), row), unique)

    def row_state(self, row: int) -> tuple[dict, np.ndarray]:
        """Row `row`'s random generator state (numpy's PCG64 dict) and the tokens its text holds, (vocab,) bool
        (kept only by a run with a repetition penalty; all False otherwise)."""
        return self._uniforms.state(row), self._seen[row].copy()

    def restore_row(self, row: int, rng_state: dict, seen: np.ndarray) -> None:
        """Row `row` goes on from a `row_state`."""
        self._uniforms.restore(row, rng_state)
        self._seen[row] = seen
        if self._penalized:
            rows, ids = np.nonzero(self._seen)
            self._count = 0
            self._hits = np.empty((2, max(len(rows), 16)), np.int64)
            self._add_hits(rows, ids)

    # -- choosing ------------------------------------------------------------------------------------------------

    def choose(self, logits: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Token ids [batch] int64 for `logits` [batch, vocab] float32, never the unknown token.

        Where `active` (batch,) bool is False (a finished row riding along) nothing is drawn: that row gets -1,
        and its logits, random generator and seen tokens stay as they were. Active rows' logits are modified
        in place when every row is active.
        """
        if active is None and self._plain_greedy:  # the hot path of greedy generation, inlined
            logits[:, UNK_ID] = -np.inf
            ids = logits.argmax(axis=1)
            if len(ids) == 1:
                if logits.item(0, int(ids[0])) > -math.inf:  # False for NaN too
                    return ids
            elif logits[self._rows, ids].min() > -np.inf:
                return ids
            return self._greedy(logits, self._rows)  # NaN or nothing to choose somewhere: the careful way
        if active is None or active.all():
            return self._choose(logits, self._rows)
        rows = np.flatnonzero(active)
        ids = np.full(len(logits), -1, np.int64)
        if rows.size:
            ids[rows] = self._choose(logits[rows], rows)
        return ids

    def _choose(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Choices for `logits` (n, V), the logits of batch rows `rows` (n,)."""
        logits[:, UNK_ID] = -np.inf
        if self._penalized:
            self._penalize(logits, rows)
        ids = self._greedy(logits, rows) if self.config.greedy else self._sample(logits, rows)
        self._mark(rows, ids)
        return ids

    def _mark(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Record (row, id) pairs, no pair twice in one call; only a run with a repetition penalty keeps them
        (a step costs the small RNN ~20 µs: a microsecond of bookkeeping nobody reads would be 5%)."""
        if self._penalized:
            fresh = ~self._seen[rows, ids]
            self._add_hits(rows[fresh], ids[fresh])
            self._seen[rows, ids] = True

    def _add_hits(self, rows: np.ndarray, ids: np.ndarray) -> None:
        end = self._count + len(rows)
        if end > self._hits.shape[1]:
            self._hits = np.concatenate([self._hits, np.empty((2, end + self._hits.shape[1]), np.int64)], axis=1)
        self._hits[:, self._count : end] = rows, ids
        self._count = end

    def _penalize(self, logits: np.ndarray, rows: np.ndarray) -> None:
        """Only the seen tokens' logits change: the work follows the text's length, not batch × vocab."""
        hit_rows, ids = self._hits[:, : self._count]
        if len(rows) < len(self._rows):  # some rows only: their positions in `logits`
            where = np.full(len(self._rows), -1)
            where[rows] = np.arange(len(rows))
            hit_rows = where[hit_rows]
            ids = ids[hit_rows >= 0]
            hit_rows = hit_rows[hit_rows >= 0]
        logits[hit_rows, ids] = _penalized(logits[hit_rows, ids], self.config.repetition_penalty)

    def _greedy(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _greedy(logits, rows, self._rows if len(logits) == len(self._rows) else None)

    def _sample(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _sample(self.config, logits, self._uniforms.draw(rows), rows)


def _penalized(values: np.ndarray, penalty: float) -> np.ndarray:
    """Seen tokens' logits under the repetition penalty: positive ones divided, the others multiplied."""
    penalty = values.dtype.type(penalty)
    with np.errstate(over="ignore", invalid="ignore"):  # a huge logit times the penalty is -inf: impossible
        return np.where(values > 0, values / penalty, values * penalty)


def _row_generator(seeds: np.random.SeedSequence, row: int) -> np.random.Generator:
    """Row `row`'s random generator: row 0 from the seed itself, row r from the seed's child r."""
    return np.random.default_rng(seeds if row == 0 else np.random.SeedSequence(seeds.entropy, spawn_key=(row,)))


class _Uniforms:
    """Uniform numbers in [0, 1) for a set of rows, each row from its own generator (`_row_generator` of the
    row's number in `children`), made at the row's first draw (greedy runs never make one).

    A row's numbers are drawn `_AHEAD` at a time (down to 8 in a batch of over 2,048 rows: `_AHEAD_BYTES`), so a
    step's draws for a whole batch are one gather instead of a generator call per row (64 rows: 2 µs instead of
    50 on the dev machine). What a row hands out is exactly the
    sequence of one-at-a-time `random()` calls, and `state` is the generator's state as if it had been called
    that way: the state before the block, advanced (PCG64 `advance`: one step per float64) by the count handed
    out. Snapshots and `restore` therefore see what they always saw.
    """

    def __init__(self, seeds: np.random.SeedSequence, children: Sequence[int]) -> None:
        self._seeds = seeds
        self._children = list(children)
        self._made: list[np.random.Generator | None] = [None] * len(self._children)
        self._before: list[dict | None] = [None] * len(self._children)  # each row's state before its block
        self._ahead = ahead = max(8, min(_AHEAD, _AHEAD_BYTES // (8 * max(1, len(self._children)))))
        self._block = np.zeros((len(self._children), ahead))
        self._used = np.full(len(self._children), ahead)  # numbers of the block handed out: all, none left

    def _generator(self, row: int) -> np.random.Generator:
        rng = self._made[row]
        if rng is None:
            rng = self._made[row] = _row_generator(self._seeds, self._children[row])
        return rng

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """One number for each of `rows` (distinct row numbers), (len(rows),) float64."""
        if len(rows) == 1:
            return np.array([self.draw_one(int(rows[0]))])
        used = self._used[rows]
        if used.max() == self._ahead:
            for row in rows[used == self._ahead].tolist():
                self._refill(row)
            used = np.where(used == self._ahead, 0, used)
        self._used[rows] = used + 1
        return self._block[rows, used]

    def draw_one(self, row: int) -> float:
        """`draw` for one row, as a float (a server's rows each draw alone)."""
        used = int(self._used[row])
        if used == self._ahead:
            self._refill(row)
            used = 0
        self._used[row] = used + 1
        return float(self._block[row, used])

    def _refill(self, row: int) -> None:
        rng = self._generator(row)
        self._before[row] = rng.bit_generator.state
        self._block[row] = rng.random(self._ahead)  # the same numbers as that many calls of random(), in order

    def state(self, row: int) -> dict:
        """Row `row`'s generator state (numpy's PCG64 dict) as if each number had been drawn alone."""
        rng = self._generator(row)
        used = int(self._used[row])
        if used == self._ahead:  # nothing drawn ahead is left: the generator is where the row is
            return rng.bit_generator.state
        before = self._before[row]
        replay = np.random.PCG64()
        replay.state = before
        replay.advance(used)  # advance also drops a buffered 32-bit half, which a float64 draw leaves alone
        state = replay.state
        state["has_uint32"], state["uinteger"] = before["has_uint32"], before["uinteger"]
        return state

    def restore(self, row: int, state: dict) -> None:
        """Row `row` goes on from `state` (a `state` dict)."""
        self._generator(row).bit_generator.state = state
        self._used[row] = self._ahead


class RowSampler:
    """One row's choices in a batch whose rows come and go (a server's continuous batch): its own settings,
    random generator, seen tokens and logit bias. `choose_rows` picks for many at once.

    A `RowSampler(config, vocab, row=r)` draws exactly what row r of a `Sampler(config, ...)` draws, so a
    row's text equals `Model.generate`'s (row 0) or `generate_batch`'s (row r) for the same seed, whoever
    shares its batch. `bias`: token id -> a number added to its logit before every choice.
    """

    def __init__(self, config: SamplingConfig, vocab: int, row: int = 0, bias: dict[int, float] | None = None):
        self.config = config
        self._uniforms = _Uniforms(np.random.SeedSequence(config.rng_seed), [row])  # made at the first draw
        self.penalized = config.repetition_penalty != 1
        self.seen = np.zeros(vocab, bool)
        self.bias = None
        if bias:
            ids = np.fromiter(bias, np.int64, len(bias))
            self.bias = (ids, np.array([bias[i] for i in ids.tolist()], np.float32))
        # rows with equal keys are chosen for in one batched call
        self.key = (config.temperature, config.top_k, config.top_p) if not config.greedy else ("greedy",)

    def uniform(self) -> float:
        """The row's next uniform number in [0, 1)."""
        return self._uniforms.draw_one(0)

    def remember(self, ids: Sequence[int]) -> None:
        """The row's text now holds `ids` too (its prompt): the repetition penalty counts them."""
        if self.penalized and len(ids):
            self.seen[np.asarray(ids, np.int64)] = True

    def state(self) -> tuple[dict, np.ndarray]:
        """The random generator's state and the seen tokens, as `Sampler.row_state` gives them (snapshots)."""
        return self._uniforms.state(0), self.seen.copy()

    def restore(self, rng_state: dict | None, seen: np.ndarray) -> None:
        """Go on from a `state()`; with `rng_state` None, keep this sampler's own random stream."""
        if rng_state is not None:
            self._uniforms.restore(0, rng_state)
        self.seen[:] = seen

    def _adjust(self, logits: np.ndarray) -> None:
        """Bias and penalty on this row's logits (V,), in place: the penalty as `Sampler._penalize` applies it."""
        if self.bias is not None:
            logits[self.bias[0]] += self.bias[1]
        if self.penalized:
            logits[self.seen] = _penalized(logits[self.seen], self.config.repetition_penalty)


def choose_rows(logits: np.ndarray, samplers: Sequence[RowSampler]) -> np.ndarray:
    """Token ids [n] int64 for `logits` [n, vocab] float32 (changed in place), row i chosen by `samplers[i]`.

    Rows with the same settings are chosen for together (one batched pass each); nothing mixes rows, so each
    row's token depends only on its logits and its sampler. Never the unknown token.
    """
    logits[:, UNK_ID] = -np.inf
    for i, sampler in enumerate(samplers):
        if sampler.bias is not None or sampler.penalized:
            sampler._adjust(logits[i])
    groups: dict[tuple, list[int]] = {}
    for i, sampler in enumerate(samplers):
        groups.setdefault(sampler.key, []).append(i)
    ids = np.empty(len(samplers), np.int64)
    for members in groups.values():
        rows = np.array(members, np.int64)
        block = logits if len(members) == len(samplers) else logits[rows]
        first = samplers[members[0]]
        if first.config.greedy:
            ids[rows] = _greedy(block, rows)
        else:
            u = np.array([samplers[i].uniform() for i in members])
            ids[rows] = _sample(first.config, block, u, rows)
    for sampler, token in zip(samplers, ids.tolist()):
        if sampler.penalized:
            sampler.seen[token] = True
    return ids


def _greedy(logits: np.ndarray, rows: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """The most likely token of each row of `logits` (n, V), batch rows `rows`; `index` is arange(n) if at hand."""
    ids = logits.argmax(axis=1)
    if len(ids) == 1:  # the common single stream: a scalar check costs a tenth of the general one
        if logits.item(0, int(ids[0])) > -math.inf:  # False for NaN too
            return ids
        best = logits[0, ids]
    else:
        best = logits[np.arange(len(logits)) if index is None else index, ids]
        if best.min() > -np.inf:
            return ids
    for i in np.flatnonzero(np.isnan(best)):  # argmax points at a NaN: choose among the numbers
        values = logits[i]
        values[np.isnan(values)] = -np.inf
        ids[i] = values.argmax()
        best[i] = values[ids[i]]
    if (best == -np.inf).any():
        raise _nothing_to_choose(int(rows[np.argmax(best == -np.inf)]))
    return ids


def _sample(config: SamplingConfig, logits: np.ndarray, u: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw from softmax(logits / T), cut to the top-k and top-p tokens, one draw per row: row i's uniform
    number is u[i]. Rows go through in blocks, and nothing mixes rows: a row's token does not depend on the
    others."""
    count, vocab = logits.shape
    if count == 1 and config.top_p == 1 and vocab <= _DIRECT_DRAW:
        one = _sample_one(config, logits[0], float(u[0]))
        if one is not None:
            return np.array([one])
    ids = np.empty(count, np.int64)
    size = max(1, _BLOCK // vocab)
    with np.errstate(over="ignore", invalid="ignore"):  # extreme logits overflow to -inf: weight 0
        for start in range(0, count, size):
            block = slice(start, start + size)
            ids[block] = _sample_block(config, logits[block], u[block], rows[block])
    return ids


def _sample_one(config: SamplingConfig, w: np.ndarray, u: float) -> int | None:
    """`_sample` of one row of a small vocabulary without top-p (a single stream's step), in a third of the
    calls: the same arithmetic, so the same token. None, with `w` untouched, when the row is not plain finite
    numbers (NaN or ±inf): the general path handles those."""
    top = w.max()
    if not math.isfinite(top):
        return None
    vocab = w.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        if 0 < config.top_k < vocab:
            np.putmask(w, w < np.partition(w, vocab - config.top_k)[vocab - config.top_k], -np.inf)
        w -= top
        inverse = w.dtype.type(1.0 / config.temperature)
        if inverse != 1:
            w *= inverse
        np.exp(w, out=w)
    cum = np.cumsum(w, dtype=np.float64)
    return int(cum.searchsorted(u * _BELOW_ONE * cum[-1], "right"))  # as _draw_in: the count of cum <= target


def _sample_block(config: SamplingConfig, w: np.ndarray, u: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Turns the logits block `w` (b, V) of batch rows `rows` into weights in place, cuts them, draws."""
    vocab = w.shape[1]
    top = _finite_max(w, rows)  # (b,)
    best = _keep_top_k(w, config.top_k) if 0 < config.top_k < vocab else None  # (b, k) logits or None
    inverse = w.dtype.type(1.0 / config.temperature)
    _to_weights(w, top, inverse)  # (b, V) in [0, 1]: the most likely token's is 1, cut tokens' 0
    if config.top_p < 1:
        _keep_top_p(w, config.top_p, None if best is None else _to_weights(best, top, inverse))
    return _draw(w, u)


def _nothing_to_choose(row: int) -> ModelFileError:
    return ModelFileError(
        f"the model gave no usable logits for row {row} (all -inf or NaN besides <unk>'s): the model file is "
        "broken; re-export or re-train it"
    )


def _finite_max(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's largest logit, after NaN logits become -inf and a row with +inf logits keeps only those."""
    top = w.max(axis=1)
    if math.isfinite(top.sum()):  # the common case, checked in one step (a sum that overflows only looks closer)
        return top
    for row in np.flatnonzero(np.isnan(top)):
        values = w[row]
        values[np.isnan(values)] = -np.inf
        top[row] = values.max()
    for row in np.flatnonzero(top == np.inf):
        w[row] = np.where(w[row] == np.inf, 0.0, -np.inf)  # infinitely more likely than any finite logit
        top[row] = 0.0
    if (top == -np.inf).any():
        raise _nothing_to_choose(int(rows[np.argmax(top == -np.inf)]))
    return top


def _to_weights(w: np.ndarray, top: np.ndarray, inverse: np.floating) -> np.ndarray:
    """exp((w - top) / T) in place, in w's float type; candidates and their rows get identical weights."""
    w -= top[:, None]
    if inverse != 1:
        w *= inverse
    return np.exp(w, out=w)


def _keep_top_k(w: np.ndarray, k: int) -> np.ndarray:
    """Logits below each row's k-th largest become -inf (ties with the k-th stay); the k largest, (b, k)."""
    vocab = w.shape[1]
    best = np.partition(w, vocab - k, axis=1)[:, vocab - k :]  # a copy of w, then its k largest
    np.putmask(w, w < best[:, :1], -np.inf)  # the partition puts the k-th largest first among them
    return np.ascontiguousarray(best)


def _keep_top_p(w: np.ndarray, p: float, candidates: np.ndarray | None) -> None:
    """Weights below each row's top-p cut become 0: the smallest most-likely set with mass >= p (ties kept).

    The cut lies among `candidates` (b, k), top-k's weights, where given; otherwise only the largest few weights
    are sorted, and rows whose cut lies further down sort 8 times more, and so on.
    """
    batch, vocab = w.shape
    target = p * w.sum(axis=1).astype(np.float64)  # (b,): float32's pairwise sum is exact enough, and fast
    if candidates is not None:  # past them, only ties with the k-th are left: the cut is the k-th
        np.putmask(w, w < _cut(candidates, target, always=True)[:, None], 0.0)
        return
    cut = np.empty(batch, w.dtype)
    todo, size = np.arange(batch), min(vocab, _TOP_P_FIRST)
    while todo.size:
        rows = w if todo.size == batch else w[todo]
        if size < vocab:
            rows = np.partition(rows, vocab - size, axis=1)[:, vocab - size :]  # (r, size), the largest
        found = _cut(rows, target[todo], always=size == vocab)
        done = ~np.isnan(found)
        cut[todo[done]] = found[done]
        todo, size = todo[~done], min(vocab, size * 8)
    np.putmask(w, w < cut[:, None], 0.0)


def _cut(weights: np.ndarray, target: np.ndarray, always: bool) -> np.ndarray:
    """Per row, the weight at which the mass of `weights` (the row's largest), most likely first, reaches
    `target`; NaN where it does not, unless `always`: then the smallest weight."""
    best = np.sort(weights, axis=1)[:, ::-1]  # (r, n), most likely first
    mass = np.cumsum(best, axis=1, dtype=np.float64)
    first = (mass < target[:, None]).sum(axis=1)
    found = best[np.arange(len(best)), np.minimum(first, best.shape[1] - 1)]
    return found if always else np.where(first < best.shape[1], found, np.nan)


def _draw(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF per row: the first token whose cumulative weight exceeds u × the row's total weight.

    A cumulative sum is numpy's slowest pass (it cannot be vectorized), so over `_DIRECT_DRAW` tokens a row is
    cut into chunks of about √V tokens: their sums (float32, pairwise, one fast pass), the cumulative sum of
    those sums, then of the one chunk the draw falls in: 2√V numbers per row instead of V.
    """
    batch, vocab = w.shape
    if vocab <= _DIRECT_DRAW:
        return _draw_in(w, u)
    width = 1 << round(math.log2(math.sqrt(vocab)))  # a power of two near √V
    full = vocab - vocab % width
    blocks = w[:, :full].reshape(batch, full // width, width)  # (b, n, width), a view of w
    mass = blocks.sum(axis=2)  # (b, n)
    if full < vocab:  # the last, shorter chunk
        mass = np.concatenate([mass, w[:, full:].sum(axis=1, keepdims=True)], axis=1)
    mass = mass.astype(np.float64)
    chunk = _draw_in(mass, u)  # (b,): a chunk of positive mass
    rows = np.arange(batch)
    cum = np.cumsum(mass, axis=1)  # as _draw_in summed it
    before = np.where(chunk > 0, cum[rows, np.maximum(chunk - 1, 0)], 0.0)
    inner = np.clip((u * _BELOW_ONE * cum[:, -1] - before) / mass[rows, chunk], 0.0, 1.0)  # where in the chunk
    inside = np.zeros((batch, width), w.dtype)  # (b, width): each row's chunk, the short one padded with 0
    whole = chunk < blocks.shape[1]
    inside[whole] = blocks[rows[whole], chunk[whole]]
    if not whole.all():
        inside[~whole, : vocab - full] = w[~whole, full:]
    return chunk * width + _draw_in(inside, inner)


def _draw_in(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first index whose cumulative weight (float64) exceeds u × the total: never a weight of 0.

    u < 1 is scaled by 1 - 2**-52, so that u × total stays below the total whatever the rounding.
    """
    cum = np.cumsum(weights, axis=1, dtype=np.float64)
    target = u * _BELOW_ONE * cum[:, -1]
    return (cum > target[:, None]).argmax(axis=1)  # cum never falls and its last exceeds target: the count below

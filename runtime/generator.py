"""One generation run: rows of text in, one token per row per step out, more text in at any time.

The lifecycle follows onnxruntime-genai's (`append_tokens` / `generate_next_token`), typed:

    with model.generator(["ROMEO:", "JULIET:"], SamplingConfig(max_new_tokens=50)) as run:
        while not run.done:
            for row, piece in enumerate(run.step()):
                ...
        run.append(["\\nJULIET:", ""])        # more text for row 0, nothing for row 1; row 0 goes on
        blob = run.snapshot(0)                 # row 0's state as bytes; model.generator([""], resume=[blob])

`append` reads text into rows (prompts at the start are appended the same way), through the prompt path in
one graph call per piece of equal length; `step` chooses a token for every unfinished row, feeds it, and
returns the text each row gained. Both go through the run's one `Steps` object.

A `Generator` owns all the state of its run (recurrent state, random generators, stop-string buffers), so any
number of them can run at once, each in its own thread, on one shared `Model`; a single generator is not meant
to be stepped from two threads.

How the state of finished rows is kept exact: a row that finishes while others go on keeps riding along in the
batched step (its output ignored), so its state is saved, on the host, right after its last token is fed; a
row that finishes together with all others has its last token fed only when the run is continued or
snapshotted (no graph call is spent on logits nobody may read).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.errors import UsageError
from rnnx.runtime.sampling import Sampler, SamplingConfig, is_int
from rnnx.runtime.steps import State, Steps

if TYPE_CHECKING:
    from rnnx.runtime.model import Model

WORD_TOKEN_CAP = 10  # with max_new_words, a row also stops after this many tokens per word asked for


class StopText:
    """Holds back new text that could still grow into a stop string, so that no stop string is emitted."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to emit after `piece`, and whether a stop string has been reached."""
        text = self.pending + piece
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.pending = ""
            return text[: min(found)], True
        hold = max(_overlap(text, stop) for stop in self.stops)
        self.pending = text[len(text) - hold :]
        return text[: len(text) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is the start of `stop` (shorter than all of it)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def _texts(texts: Sequence[str], batch: int | None, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise UsageError(f"{what} must be a list of strings, one per row")
    if not texts or (batch is not None and len(texts) != batch):
        size = "at least one" if batch is None else str(batch)
        raise UsageError(f"{what} must hold {size} strings, one per row; got {len(texts)}")
    return list(texts)


class Generator:
    """A run over a batch of rows, each with its own state; see the module docstring. Made by
    `Model.generator`, which opens its `Steps` and checks the snapshots it resumes from."""

    def __init__(
        self,
        model: Model,
        steps: Steps,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        resume: Sequence[snapshots.Snapshot | None] | None = None,
        max_new_words: int | None = None,
    ) -> None:
        self._closer = weakref.finalize(self, steps.close)  # buffers go back even if never closed
        self._steps: Steps | None = steps
        try:
            self._start(model, steps, prompts, sampling, resume, max_new_words)
        except BaseException:  # a run that never started gives its (maybe pooled) buffers back now
            self._closer()
            self._steps = None
            raise

    def _start(
        self,
        model: Model,
        steps: Steps,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        resume: Sequence[snapshots.Snapshot | None] | None,
        max_new_words: int | None,
    ) -> None:
        prompts = _texts(prompts, None, "prompts")
        batch = len(prompts)
        resume = list(resume) if resume is not None else [None] * batch
        if len(resume) != batch:
            raise UsageError(f"resume must hold one snapshot (or None) per prompt: {len(resume)} for {batch} prompts")
        if max_new_words is not None and (not is_int(max_new_words) or max_new_words < 0):
            raise UsageError(f"max_new_words must be 0 or more, got {max_new_words!r}")
        self._model = model
        self._tokenizer = model.tokenizer
        self._config = sampling
        self._max_words = max_new_words
        self._budget = sampling.max_new_tokens if max_new_words is None else max_new_words
        self._sampler = Sampler(sampling, batch, model.info.vocab_size)
        self._prev: list[int | None] = [None] * batch  # the last token read, for spacing rules
        self._left = [0] * batch
        self._tokens_left = [0] * batch  # with max_new_words: the safety cap on tokens
        self._stops: list[StopText | None] = [None] * batch
        self._finished = [True] * batch
        self._saved: dict[int, tuple[State, np.ndarray]] = {}  # finished rows: exact state and logits
        self._unfed: dict[int, int] = {}  # finished rows whose last token is not fed yet
        self._logits = np.zeros((batch, model.info.vocab_size), np.float32)
        self._hot = (  # what `step` reads per row, in one tuple (the lists are only ever changed in place)
            self._tokenizer.piece,
            self._tokenizer.is_word,
            self._prev,
            self._left,
            self._tokens_left,
            self._stops,
            max_new_words is not None,
            bool(sampling.stop),
        )
        state = model.initial_state(batch)
        for row, snap in enumerate(resume):
            if snap is not None:
                for whole, part in zip(state, snap.state):
                    whole[:, row] = part
                self._logits[row] = snap.logits
                self._prev[row] = snap.last_id
                self._sampler.restore_row(row, snap.rng_state, snap.seen)
        encoded = [self._tokenizer.encode(p) for p in prompts]
        if any(snap is None and not ids for snap, ids in zip(resume, encoded)):
            raise UsageError("the seed text is empty: give at least one token to start from")
        steps.load(state)
        self._read({row: ids for row, ids in enumerate(encoded) if ids})
        for row, snap in enumerate(resume):
            if snap is not None and not encoded[row]:
                self._open(row)  # resumed with no new text: it goes on from the snapshot

    # -- text in -------------------------------------------------------------------------------------------------

    def append(self, texts: Sequence[str]) -> list[str]:
        """Read `texts[row]` into each row ("" for a row that gets nothing), after whatever it read or generated.

        A row that gets text is open again: it may generate up to the run's budget (max_new_tokens, or
        max_new_words) anew, whether it had finished or not. Rows of equal length are read together, one
        prompt-path call per piece. Returns, per row, generated text that was held back because it might
        have begun a stop string and that the row now releases: it comes before the appended text ("" mostly).
        """
        self._live()
        texts = _texts(texts, len(self._finished), "texts")
        return self._read({row: ids for row, ids in enumerate(map(self._tokenizer.encode, texts)) if ids})

    def _read(self, encoded: dict[int, list[int]]) -> list[str]:
        """Feed each row its token ids (rows absent get nothing), grouped by length, and open those rows;
        the held-back text each row releases."""
        released = [""] * len(self._finished)
        if not encoded:
            return released
        steps = self._live()
        self._settle()
        by_length: dict[int, list[int]] = {}
        for row, ids in encoded.items():
            by_length.setdefault(len(ids), []).append(row)
        for rows in by_length.values():
            saved = [self._saved.get(row) for row in rows]
            start = None
            if any(s is not None for s in saved):  # a finished row's buffer has drifted: start from its save
                current = steps.state()
                start = tuple(
                    np.stack([s[0][i] if s is not None else current[i][:, row] for s, row in zip(saved, rows)], axis=1)
                    for i in range(len(current))
                )
            tokens = np.array([encoded[row] for row in rows], np.int64)  # (n, T)
            self._logits[rows] = steps.feed(rows, tokens, start)
        for row, ids in encoded.items():
            stops = self._stops[row]
            if stops is not None:
                released[row] = stops.flush()
            self._prev[row] = ids[-1]
            self._sampler.remember(row, ids)
            self._open(row)
        return released

    def _open(self, row: int) -> None:
        self._saved.pop(row, None)  # the buffers hold its exact state from here on
        self._left[row] = self._budget
        self._tokens_left[row] = self._budget * WORD_TOKEN_CAP  # only read with max_new_words
        self._stops[row] = StopText(self._config.stop) if self._config.stop else None
        self._finished[row] = self._budget == 0

    def _settle(self) -> None:
        """Feed the last tokens of rows that finished with the whole batch, and save their exact state."""
        if not self._unfed:
            return
        steps = self._live()
        ids = np.array([self._unfed.get(row, prev or 0) for row, prev in enumerate(self._prev)], np.int64)
        logits = steps.run(ids)  # every row rides along; only the unfed rows' results are kept
        state = steps.state()
        for row in self._unfed:
            self._saved[row] = (tuple(s[:, row].copy() for s in state), logits[row].copy())
        self._unfed.clear()

    # -- text out ------------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(self._finished)

    @property
    def finished(self) -> tuple[bool, ...]:
        """Per row: no more text will come (until `append` gives it more)."""
        return tuple(self._finished)

    def step(self) -> list[str]:
        """Choose and feed one token per unfinished row; the text each row gained ("" for finished rows)."""
        finished, steps = self._finished, self._steps
        if all(finished) or steps is None:
            return [""] * len(finished)
        active = np.logical_not(finished) if any(finished) else None  # None: every row, the fast way
        ids = self._sampler.choose(self._logits, active)
        # the per-row loop runs once per generated token: locals, and no stop-string work without stop strings
        piece_of, is_word, prev, left, tokens_left, stops_of, words_only, has_stops = self._hot
        pieces, finishing = [], []
        for row, token_id in enumerate(ids.tolist()):
            if finished[row]:
                ids[row] = prev[row] or 0  # rides along; its saved state is what counts
                pieces.append("")
                continue
            piece = piece_of(prev[row], token_id)
            prev[row] = token_id
            if words_only:
                tokens_left[row] -= 1
                left[row] -= is_word(token_id)
                spent = not left[row] or not tokens_left[row]
            else:
                left[row] -= 1
                spent = not left[row]
            stopped = False
            if has_stops:
                stops = stops_of[row]
                piece, stopped = stops.feed(piece)
                if spent and not stopped:
                    piece += stops.flush()
            if stopped or spent:
                finished[row] = True
                finishing.append(row)
            pieces.append(piece)
        if all(finished):
            self._unfed.update((row, int(ids[row])) for row in finishing)
        else:
            self._logits = steps.run(ids)
            if finishing:
                state = steps.state()
                for row in finishing:
                    self._saved[row] = (tuple(s[:, row].copy() for s in state), self._logits[row].copy())
        return pieces

    # -- state out -----------------------------------------------------------------------------------------------

    def snapshot(self, row: int) -> bytes:
        """Row `row`'s state as bytes (see `rnnx.runtime.snapshot`): everything it read and generated so far,
        to resume with `model.generator([...], resume=[blob])` here or anywhere the same model file runs.

        Text held back because it might begin a stop string is not in it: snapshot a row between steps once
        its text is out, typically when it has finished.
        """
        steps = self._live()
        if not is_int(row) or not 0 <= row < len(self._finished):
            raise UsageError(f"row must be 0 to {len(self._finished) - 1}, got {row!r}")
        row = int(row)
        self._settle()
        if row in self._saved:
            state, logits = self._saved[row]
        else:
            state = tuple(s[:, row] for s in steps.state())
            logits = self._logits[row]
        rng_state, seen = self._sampler.row_state(row)
        model = self._model
        return snapshots.encode(model.info, model.fingerprint, state, logits, self._prev[row], rng_state, seen)

    # -- end -------------------------------------------------------------------------------------------------------

    def _live(self) -> Steps:
        if self._steps is None:
            raise UsageError("this run is closed: start a new one with model.generator (or resume a snapshot)")
        return self._steps

    def close(self) -> None:
        """Give back the run's buffers (pooled device buffers under CUDA graphs); the run ends."""
        self._finished = [True] * len(self._finished)
        if self._steps is not None:
            self._closer()
            self._steps = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(generator: Generator) -> list[str]:
    """Run `generator` to the end; the new text of each row."""
    with generator:
        parts: list[list[str]] = [[] for _ in generator.finished]
        while not generator.done:
            for row, piece in enumerate(generator.step()):
                parts[row].append(piece)
    return ["".join(p) for p in parts]


__all__ = ["Generator", "StopText", "collect"]

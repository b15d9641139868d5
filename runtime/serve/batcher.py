"""Continuous batching: one thread steps every active row of every request as one batch per graph call.

    queue --(prompt read in pieces, grouped by length)--> batch --(one token per row per step)--> rows' events

A row joins the batch at the step after its prompt is read (through the prompt path, rows of equal length
together) and leaves it the moment it finishes, is cancelled or its client goes away. A prompt is read a piece
per step, at most `prompt_tokens_per_step` token positions (rows of equal length side by side) between two
steps of the batch, the
state carried from piece to piece, so a long prompt never stalls the rows already running: it costs them a
few steps' time per token until it is read, and its own text is the same as if it were read at once. The
batch's state is
kept compact on the host, (layers, rows, hidden), so a step costs what the rows in it cost. Each row chooses
its tokens with its own `RowSampler` (settings, random generator), so its text does not depend on the rows
beside it. A row that asked for its state back rides along one more step, so that its snapshot holds the
state after its last token, exactly as `Generator.snapshot` does.

The event loop never waits on this thread: each row's text goes into a deque, and one callback per step wakes
the requests whose rows gained something. Graph calls release the GIL, so HTTP work overlaps them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.generator import StopText
from rnnx.runtime.model import Model
from rnnx.runtime.sampling import RowSampler, choose_rows
from rnnx.runtime.serve.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every place in the batch and the queue is taken: the request should come back later (429)."""


class ShuttingDown(Exception):
    """The server is draining or stopped: it takes no new rows; the client should go elsewhere (503)."""


@dataclass(frozen=True)
class End:
    """A row's last event: why it ended ("stop", "length", "cancelled") and, if asked for, its snapshot."""

    reason: str
    state: bytes | None = None


@dataclass(frozen=True)
class Failure:
    """The graph failed while this row was in the batch (a broken model file): the message says why."""

    message: str


class Row:
    """One choice of one request: what it asked for, and where it stands."""

    def __init__(
        self,
        ids: list[int],
        sampler: RowSampler,
        budget: int,
        stop: tuple[str, ...],
        start: snapshots.Snapshot | None,
        want_state: bool,
    ) -> None:
        self.ids = ids  # prompt token ids (may be empty when resuming)
        self.sampler = sampler
        self.left = budget
        self.stops = StopText(stop) if stop else None
        self.start = start
        self.want_state = want_state
        self.events: collections.deque = collections.deque()  # str pieces, then End or Failure
        self.job: Job | None = None
        self.prev = start.last_id if start is not None and not ids else (ids[-1] if ids else None)
        self.tokens = 0
        self.ending: str | None = None  # finished, riding along one more step for its snapshot
        self.cancelled = False


class Job:
    """One request: its rows, and the event that wakes its handler when any of them gained something."""

    def __init__(self, rows: list[Row], loop: asyncio.AbstractEventLoop) -> None:
        self.rows = rows
        self.loop = loop
        self.wake = asyncio.Event()
        self.arrived = time.monotonic()
        self.on_cancel = None  # the scheduler's: a cancelled row still waiting must leave the queue now
        for row in rows:
            row.job = self

    def cancel(self) -> None:
        for row in self.rows:
            row.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()


class Reading:
    """Rows of equal prompt length whose prompts are being read, a piece per loop, and their state so far."""

    def __init__(self, rows: list[Row], state: tuple[np.ndarray, ...]) -> None:
        self.rows = rows
        self.tokens = np.array([row.ids for row in rows], np.int64)  # (rows, length)
        self.state = state  # each (layers, rows, hidden): after the first `done` tokens
        self.done = 0

    def keep(self, keep: list[int]) -> None:
        """Only the rows at positions `keep` go on reading."""
        index = np.array(keep, np.int64)
        self.rows = [self.rows[i] for i in keep]
        self.tokens = self.tokens[index]
        self.state = tuple(s[:, index] for s in self.state)


class Scheduler:
    """Owns the batch; `submit` from the event loop, everything else on its own thread.

    prompt_tokens_per_step: prompt token positions read between two steps of the batch (rows of equal length
        read side by side count once).
    """

    def __init__(
        self, model: Model, max_batch: int, max_queue: int, metrics: Metrics, prompt_tokens_per_step: int = 32
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.prompt_tokens_per_step = prompt_tokens_per_step
        self.capacity = max_batch + max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._queue: collections.deque[Row] = collections.deque()
        self._load = 0  # rows queued or in the batch (under _cond)
        self._stopping = False
        self._draining = False  # no new rows; those in flight finish (set from the event loop)
        self._purge = False  # a queued row was cancelled: sweep the queue at the next step (set from any thread)
        self._rows: list[Row] = []  # the batch, in state order (this thread only)
        self._reading: list[Reading] = []  # rows whose prompts are being read, oldest first (this thread only)
        self._state: tuple[np.ndarray, ...] | None = None  # each (layers, rows, hidden); set at the first join
        self._logits: np.ndarray | None = None
        self._touched: set[Job] = set()  # requests that gained events this step (this thread only)
        self._wake_lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, set[Job]] = {}  # to wake, per loop, callback scheduled
        self._last_step = 0.0
        self._thread = threading.Thread(target=self._run, name="rnnx-scheduler", daemon=True)

    # -- the event loop's side -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: list[Row]) -> Job:
        """Queue a request's rows; QueueFull when they do not fit, ShuttingDown once `drain` was called."""
        job = Job(rows, asyncio.get_running_loop())
        job.on_cancel = self._queued_cancelled
        with self._cond:
            if self._stopping or self._draining:
                raise ShuttingDown
            if self._load + len(rows) > self.capacity:
                raise QueueFull
            self._load += len(rows)
            self._queue.extend(rows)
            self.metrics.queued_rows = len(self._queue)
            self._cond.notify()
        return job

    def drain(self) -> None:
        """Take no new rows (`submit` raises ShuttingDown); the rows running or waiting go on to their end."""
        with self._cond:
            self._draining = True

    def cancel_all(self) -> None:
        """Stop taking rows and end every row, running or waiting, with finish_reason "cancelled" (any thread):
        their requests still get a proper ending (a last chunk and [DONE]) rather than a dropped connection."""
        with self._cond:
            self._stopping = True
            for row in self._queue:
                row.cancelled = True
            self._purge = True  # the scheduler thread cancels the rows running or being read (its own lists)
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking rows; cancel what is left; wait for the thread."""
        self.cancel_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def load(self) -> int:
        return self._load

    # -- the scheduler thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            joining = self._take()
            if joining is None:
                return
            try:
                self._drop_cancelled()
                if joining:
                    self._join(joining)
                if self._reading:
                    self._read()
                if self._rows:
                    self._step()
            except Exception as exc:  # a graph that fails at run time (ModelFileError) or a bug: rows end, we go on
                log.exception("generation failed; the rows in the batch end with an error")
                self._fail_all(joining, str(exc) or type(exc).__name__)
            self._wake()

    def _take(self) -> list[Row] | None:
        """Rows that may join now (cancelled ones dropped); None when stopping with nothing left."""
        with self._cond:
            while not self._queue and not self._rows and not self._reading:
                if self._stopping:
                    return None
                self._cond.wait()
            if self._purge:
                self._sweep()
            if self._stopping:
                for row in [*self._rows, *(row for group in self._reading for row in group.rows)]:
                    row.cancelled = True
            joining = []
            places = self.max_batch - len(self._rows) - sum(len(group.rows) for group in self._reading)
            while self._queue and len(joining) < places:
                row = self._queue.popleft()
                if row.cancelled:
                    self._load -= 1
                    self._emit(row, End("cancelled"))
                else:
                    joining.append(row)
            self.metrics.queued_rows = len(self._queue)
            return joining

    def _queued_cancelled(self) -> None:
        self._purge = True

    def _sweep(self) -> None:
        """Cancelled rows leave the queue at once, even while the batch is full (under _cond)."""
        self._purge = False
        kept: collections.deque[Row] = collections.deque()
        for row in self._queue:
            if row.cancelled:
                self._load -= 1
                self._emit(row, End("cancelled"))
            else:
                kept.append(row)
        self._queue = kept

    def _leave(self, rows: list[Row]) -> None:
        with self._cond:
            self._load -= len(rows)

    def _emit(self, row: Row, event: object) -> None:
        row.events.append(event)
        self._touched.add(row.job)

    def _wake(self) -> None:
        """Wake every request that gained something: at most one callback waits in each event loop, however many
        steps run before it does (a busy loop then drains several tokens per write, not one write per token)."""
        if not self._touched:
            return
        schedule = []
        with self._wake_lock:
            for job in self._touched:
                if job.loop not in self._pending:
                    self._pending[job.loop] = set()
                    schedule.append(job.loop)
                self._pending[job.loop].add(job)
        self._touched = set()
        for loop in schedule:
            try:
                loop.call_soon_threadsafe(self._deliver, loop)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._wake_lock:
                    self._pending.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the event loop: set the wake event of every request touched since the last delivery."""
        with self._wake_lock:
            jobs = self._pending.pop(loop, ())
        for job in jobs:
            job.wake.set()

    def _drop_cancelled(self) -> None:
        for group in self._reading:
            gone = [row for row in group.rows if row.cancelled]
            if gone:
                for row in gone:
                    self._emit(row, End("cancelled"))
                self._leave(gone)
                self.metrics.reading_rows -= len(gone)
                group.keep([i for i, row in enumerate(group.rows) if not row.cancelled])
        self._reading = [group for group in self._reading if group.rows]
        gone = [i for i, row in enumerate(self._rows) if row.cancelled]
        if not gone:
            return
        for i in gone:
            self._emit(self._rows[i], End("cancelled"))
        self._leave([self._rows[i] for i in gone])
        self._keep([i for i, row in enumerate(self._rows) if not row.cancelled])

    def _keep(self, keep: list[int]) -> None:
        """Only the rows at positions `keep` stay in the batch (state, logits and rows compacted)."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if self._rows:
            index = np.array(keep, np.int64)
            self._state = tuple(s[:, index] for s in self._state)
            self._logits = self._logits[index]
        self.metrics.active_rows = len(self._rows)

    def _join(self, joining: list[Row]) -> None:
        """Start reading the joining rows' prompts (equal lengths together); a row resumed with no new text joins
        the batch at once, going on from its snapshot's logits."""
        info = self.model.info
        by_length: dict[int, list[Row]] = {}
        for row in joining:
            by_length.setdefault(len(row.ids), []).append(row)
        for length, group in by_length.items():
            starts = [row.start.state if row.start is not None else None for row in group]
            state = tuple(
                np.stack(
                    [s[k] if s is not None else np.zeros((info.layers, info.hidden), np.float32) for s in starts], 1
                )
                for k in range(len(info.state_inputs))
            )  # each (layers, g, hidden)
            if length:
                self._reading.append(Reading(group, state))
                self.metrics.reading_rows += len(group)
            else:
                self._enter(group, state, np.stack([row.start.logits for row in group]))

    def _read(self) -> None:
        """The next piece of the waiting prompts, oldest first: at most `prompt_tokens_per_step` token positions
        in all, a group's rows read side by side (a position of g rows costs about one step of g rows, far less
        than g steps of one); the groups read to their end join the batch."""
        budget = self.prompt_tokens_per_step
        for group in list(self._reading):
            if budget <= 0:
                break
            piece = min(group.tokens.shape[1] - group.done, budget)
            tokens = group.tokens[:, group.done : group.done + piece]
            logits, group.state = self.model.read(np.ascontiguousarray(tokens), group.state)
            group.done += piece
            budget -= piece
            rows = len(group.rows)
            self.metrics.prompt_tokens += piece * rows
            if group.done == group.tokens.shape[1]:
                self._reading.remove(group)
                self.metrics.reading_rows -= rows
                self._enter(group.rows, group.state, logits)

    def _enter(self, rows: list[Row], state: tuple[np.ndarray, ...], logits: np.ndarray) -> None:
        """Rows whose prompts are read join the batch (max_tokens 0: they end at once, nothing to generate)."""
        for row in rows:
            row.sampler.remember(row.ids)
        self._add(rows, tuple(state), np.asarray(logits, np.float32))
        done = [i for i, row in enumerate(self._rows) if row.left <= 0]
        if done:
            self._finish(done, "length")

    def _add(self, rows: list[Row], state: tuple[np.ndarray, ...], logits: np.ndarray) -> None:
        if not self._rows:
            self._rows, self._state, self._logits = list(rows), tuple(s.copy() for s in state), logits.copy()
        else:
            self._rows += rows
            self._state = tuple(np.concatenate([a, b], axis=1) for a, b in zip(self._state, state))
            self._logits = np.concatenate([self._logits, logits])
        self.metrics.active_rows = len(self._rows)

    def _finish(self, positions: list[int], reason: str) -> None:
        """End the rows at `positions` now, with their current state and logits as their snapshots."""
        model = self.model
        ended = []
        for i in positions:
            row = self._rows[i]
            blob = None
            if row.want_state:
                rng_state, seen = row.sampler.state()
                state = tuple(s[:, i] for s in self._state)
                blob = snapshots.encode(
                    model.info, model.fingerprint, state, self._logits[i], row.prev or 0, rng_state, seen
                )
            self._emit(row, End(row.ending or reason, blob))
            ended.append(row)
        self._leave(ended)
        gone = set(positions)
        self._keep([i for i in range(len(self._rows)) if i not in gone])

    def _step(self) -> None:
        """Choose one token per row, hand out the text, feed the tokens of the rows that go on."""
        rows, metrics = self._rows, self.metrics
        ids = choose_rows(self._logits, [row.sampler for row in rows])
        now = time.monotonic()
        follow = sum(1 for row in rows if row.tokens)
        if follow:
            metrics.itl.observe(now - self._last_step, follow)
        self._last_step = now
        metrics.batch_size.observe(len(rows))
        metrics.tokens_generated += len(rows)
        piece_of = self.model.tokenizer.piece
        ending = []
        for i, (row, token) in enumerate(zip(rows, ids.tolist())):
            if not row.tokens:
                metrics.ttft.observe(now - row.job.arrived)
            row.tokens += 1
            piece = piece_of(row.prev, token)
            row.prev = token
            row.left -= 1
            stopped = False
            if row.stops is not None:
                piece, stopped = row.stops.feed(piece)
                if not row.left and not stopped:
                    piece += row.stops.flush()
            if piece:
                self._emit(row, piece)
            if stopped or not row.left:
                row.ending = "stop" if stopped else "length"
                ending.append(i)
        # rows that end without wanting their state leave before the graph call: nobody reads their next logits
        quiet = [i for i in ending if not rows[i].want_state]
        if quiet:
            for i in quiet:
                self._emit(rows[i], End(rows[i].ending))
            self._leave([rows[i] for i in quiet])
            gone = set(quiet)
            keep = [i for i in range(len(rows)) if i not in gone]
            ids = ids[keep]
            self._keep(keep)
        if not self._rows:
            return
        self._logits, self._state = self.model.step(ids, self._state)
        finished = [i for i, row in enumerate(self._rows) if row.ending]
        if finished:
            self._finish(finished, "length")

    def _fail_all(self, joining: list[Row], message: str) -> None:
        rows = [*self._rows, *(row for group in self._reading for row in group.rows)]
        rows += [row for row in joining if row not in rows]  # identity: a Row has no __eq__
        for row in rows:
            self._emit(row, Failure(message))
        self._leave(rows)
        self._rows, self._state, self._logits, self._reading = [], None, None, []
        self.metrics.active_rows = self.metrics.reading_rows = 0

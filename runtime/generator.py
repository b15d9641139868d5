"""One generation run: prompts in, one token per row per step out, until each row stops.

The lifecycle follows onnxruntime-genai's: the model ingests the prompts, then each `step()` chooses a token
for every unfinished row, feeds it, and returns the text each row gained. A `Generator` owns all the state of
its run (recurrent state, random generator, stop-string buffers), so any number of them can run at once, each
in its own thread, on one shared `Model`; a single generator is not meant to be stepped from two threads.

    with model.generator(["ROMEO:", "JULIET:"], SamplingConfig(max_new_tokens=50)) as run:
        while not run.done:
            for row, piece in enumerate(run.step()):
                ...
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rnnx.runtime.errors import UsageError
from rnnx.runtime.sampling import Sampler, SamplingConfig

if TYPE_CHECKING:
    from rnnx.runtime.model import Model


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


class Generator:
    """A run over one batch of prompts, each row with its own state; see the module docstring."""

    def __init__(self, model: Model, prompts: Sequence[str], sampling: SamplingConfig) -> None:
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise UsageError("prompts must be a non-empty list of strings")
        if not isinstance(sampling, SamplingConfig):
            raise UsageError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        encoded = [model.tokenizer.encode(prompt) for prompt in prompts]
        if not all(encoded):
            raise UsageError("the seed text is empty: give at least one token to start from")
        batch = len(prompts)
        self._tokenizer = model.tokenizer
        self._sampler = Sampler(sampling, batch, model.info.vocab_size, encoded)
        self._prev = [ids[-1] for ids in encoded]  # the token before the next one, for spacing rules
        self._left = [sampling.max_new_tokens] * batch
        self._stops = [StopText(sampling.stop) for _ in prompts] if sampling.stop else None
        self._finished = [sampling.max_new_tokens == 0] * batch
        self._logits = None
        self._steps = None
        if not self.done:
            self._logits, state = model._ingest(encoded)
            self._steps = model._open_steps(batch)
            self._closer = weakref.finalize(self, self._steps.close)  # buffers go back even if never closed
            self._steps.load(state)

    @property
    def done(self) -> bool:
        return all(self._finished)

    @property
    def finished(self) -> tuple[bool, ...]:
        """Per row: no more text will come."""
        return tuple(self._finished)

    def step(self) -> list[str]:
        """Choose and feed one token per unfinished row; the text each row gained ("" for finished rows)."""
        if self.done:
            return [""] * len(self._finished)
        ids = self._sampler.choose(self._logits)
        pieces = []
        for row, token_id in enumerate(ids.tolist()):
            if self._finished[row]:
                pieces.append("")
                continue
            piece = self._tokenizer.piece(self._prev[row], token_id)
            self._prev[row] = token_id
            self._left[row] -= 1
            stopped = False
            if self._stops is not None:
                piece, stopped = self._stops[row].feed(piece)
            if stopped or not self._left[row]:
                self._finished[row] = True
                if self._stops is not None and not stopped:
                    piece += self._stops[row].flush()
            pieces.append(piece)
        if self.done:
            self.close()  # the last tokens' logits would go unused: no graph call
        else:
            self._logits = self._steps.run(ids)  # finished rows ride along; their output is ignored
        return pieces

    def close(self) -> None:
        """Give back the run's buffers (pooled device buffers under CUDA graphs); stepping ends."""
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

"""What ends a run early without losing it: a stop request (SIGINT or SIGTERM), honoured between two steps so that
the final checkpoint holds a whole step, and divergence, caught before a broken state is ever saved."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DIVERGED_FACTOR = 10  # a mean loss this many times a uniform guess's (ln V nats) means the run has diverged
DIVERGED_FLOOR = 20.0  # ...and at least this many nats/token, for tiny vocabularies


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM ended a run between two steps, after its checkpoint was written."""

    def __init__(self, signum: int, step: int, out: Path) -> None:
        self.signum, self.step, self.out = signum, step, out
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}, checkpoint saved: rnn-train --out {out} --resume continues the run"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequests:
    """While active (in the main thread), the first SIGINT or SIGTERM only sets `signum`, which the loop reads
    after the step in hand; a second one raises KeyboardInterrupt at once. The previous handlers come back after."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


def diverged(loss: float, vocab_size: int) -> bool:
    """A mean training loss that is not finite, or over ten times a uniform guess's (and over 20 nats/token)."""
    return not math.isfinite(loss) or loss > max(DIVERGED_FLOOR, DIVERGED_FACTOR * math.log(vocab_size))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point tensor holds only finite numbers (one read from each device in all)."""
    checks: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point():
            checks.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(found).all()) for found in checks.values())


class LossMeter:
    """Sums training losses where they are computed and reads them only when asked: a read waits for the device,
    so the loop reads at its logging points, not at every step. Sums in float64, as Python floats would."""

    def __init__(self, device: torch.device, total: Callable[[list[float]], list[float]] | None = None) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self._sum_over_processes = total  # under torchrun: the mean is over every process's losses

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.count += 1

    def mean(self) -> float:
        total, count = float(self.total), self.count
        if self._sum_over_processes is not None:
            total, count = self._sum_over_processes([total, count])
        return total / count

    def reset(self) -> None:
        self.total.zero_()
        self.count = 0

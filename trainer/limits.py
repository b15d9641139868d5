"""What the trainer accepts: value types and ranges for settings read from flags or files, and the memory a model
or a corpus needs against what the machine has, so that impossible requests fail at once with numbers instead of
running out of memory minutes later.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rnnx.runtime.contract import GATES
from rnnx.runtime.errors import UsageError

MAX_RNG_SEED = 2**64 - 1  # torch's range, and the runtime's (rnn-run --rng-seed): one seed for both
MAX_COUNT = 2**53  # steps, epochs, tokens of one run: 285 years at a million steps a second; floats stay exact
MAX_SECONDS = 1e10  # a run's seconds: more than 300 years
MAX_LAYERS = 64  # a recurrent stack deeper than a few layers rarely trains better; 100000 took minutes to build
DATA_BYTES_PER_MEMORY = 32  # reading, tokenizing and holding a corpus took 16-18 bytes of memory per byte of text
_MEMINFO = Path("/proc/meminfo")


def whole(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` if it is an int in [low, high]; a UsageError naming the setting otherwise (True is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise UsageError(f"{name} must be {span}, got {value}")
    return value


def number(name: str, value: Any) -> float:
    """`value` if it is a finite int or float; a UsageError naming the setting otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def text(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return value


def available_memory() -> int | None:
    """Bytes a new allocation can get: MemAvailable on Linux, free physical pages elsewhere; None if unknown."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    """Bytes for people: `3.2 GiB`, `3,725.3 TiB`."""
    return f"{n / 2**30:.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def weight_count(cell: str, vocab: int, embed: int, hidden: int, layers: int) -> int:
    """Numbers in the saved weights (tied weights count twice: the model directory holds two copies)."""
    gates = GATES[cell] * hidden
    first = embed or vocab
    rnn = gates * (first + hidden + 2) + (layers - 1) * gates * (2 * hidden + 2)
    return vocab * embed + rnn + hidden * vocab + vocab


def shortfall(need: int, what: str, available: int | None = None) -> str | None:
    """`what needs at least N GiB of memory, more than the M GiB available` when it does not fit, else None.
    `available` defaults to the machine's memory (give a GPU's free memory for a GPU)."""
    available = available_memory() if available is None else available
    if available is None or need <= available:
        return None
    return f"{what} needs at least {gib(need)} of memory, more than the {gib(available)} available"


def data_limit(max_data_mb: float) -> int | None:
    """Largest corpus in bytes: `max_data_mb` if given, else 1/32 of the memory available (None: unknown)."""
    if max_data_mb:
        return int(max_data_mb * 2**20)
    available = available_memory()
    return available // DATA_BYTES_PER_MEMORY if available is not None else None

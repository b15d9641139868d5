"""A run's output directory is one unit: one `rnn-train` at a time writes it (an exclusive lock held for the whole
run), a fresh run never lands on top of another one unless asked (`--overwrite`), and the temporaries of a killed
run are cleared when the next one starts.

The lock is `fcntl.flock` on `OUT/.rnn-train.lock`: the kernel drops it when its process ends, however it ends,
so a lock never outlives a crash, and whoever holds it knows that every trainer temporary in the directory is an
orphan. The lock file itself stays (removing it would let two processes lock two different files).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from rnnx.runtime.errors import RnnxError
from rnnx.trainer.checkpoint import CONFIG, TRAIN_STATE, WEIGHTS, exports, temporary_files
from rnnx.trainer.report import METRICS, PLOT

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected from each other there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK = ".rnn-train.lock"
RUN_FILES = (WEIGHTS, CONFIG, TRAIN_STATE, METRICS)  # a directory holding any of these holds a run
WRITTEN = (WEIGHTS, CONFIG, TRAIN_STATE, METRICS, PLOT)  # every file a run writes


def _holder(fd: int) -> str:
    """` (process 1234)`: who holds the lock, as it wrote into the lock file; empty if unknown."""
    pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f" (process {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Hold `out` for one run: create it, lock it (an error at once if another process holds it), and remove
    the temporaries that killed runs left. The lock goes when the block ends or the process dies."""
    if out.exists() and not out.is_dir():
        raise RnnxError(f"--out {out} is a file, not a directory: give a directory for the model")
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no lock to tell orphaned temporaries from a live run's: leave them
        yield
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RnnxError(
                f"another rnn-train is writing to {out}{_holder(fd)}: wait for it to finish, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for path in temporary_files(out, WRITTEN):
            log.info("removing %s, left by a run that was killed", path)
            path.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def held_run(out: Path) -> list[str]:
    """The files of a run that `out` holds (empty for a new or unrelated directory)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def start_fresh(out: Path, overwrite: bool) -> None:
    """Before a fresh run (with `out` claimed): refuse to replace an existing run unless `overwrite`, and then
    remove all of it, the model's exports included, so that nothing of the old run is mistaken for the new one's."""
    held = held_run(out)
    if not held:
        return
    if not overwrite:
        resumable = (out / TRAIN_STATE).exists()
        raise RnnxError(
            f"{out} already holds a run ({', '.join(held)}): pass --overwrite to replace it, "
            + ("--resume to continue it, " if resumable else "")
            + "or another --out"
        )
    for path in [out / TRAIN_STATE, *exports(out), out / WEIGHTS, out / CONFIG, out / METRICS, out / PLOT]:
        path.unlink(missing_ok=True)
    log.info("removed the previous run in %s (--overwrite)", out)

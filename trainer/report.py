"""What a run leaves beside its model: `metrics.jsonl` (one JSON record per line) and `loss.png`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from rnnx.trainer.checkpoint import write_atomic

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class MetricsLog:
    """Appends records to `metrics.jsonl`, flushed at once so a killed run keeps what it logged."""

    def __init__(self, directory: Path, resume_step: int | None) -> None:
        self.path = directory / METRICS
        kept = []
        if resume_step is not None and self.path.is_file():  # drop what the interrupted run logged after its checkpoint
            lines = self.path.read_text("utf-8", errors="replace").splitlines()
            kept = [line for line, record in zip(lines, _records(lines)) if record["step"] <= resume_step]
        write_atomic(self.path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _record(line: str) -> dict[str, Any] | None:
    """One record of metrics.jsonl, or None for a line that is not one (cut short by a kill, or not ours)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    fields = ("step", "tokens", "loss", "val_loss")
    numbers = all(isinstance(record.get(k, 0), (int, float)) for k in fields) if isinstance(record, dict) else False
    return record if numbers else None


def _records(lines: list[str]) -> list[dict[str, Any]]:
    """The records up to the first line that is not one (everything before it is good)."""
    records = []
    for line in lines:
        record = _record(line)
        if record is None:
            break
        records.append({"step": 0, **record})
    return records


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return _records(path.read_text("utf-8", errors="replace").splitlines())


def write_loss_plot(directory: Path, unit: str) -> Path | None:
    """Training and validation loss against tokens seen, as `loss.png`; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s written (pip install matplotlib)", PLOT)
        return None
    records = read_metrics(directory / METRICS)
    train = [(r.get("tokens", 0), r["loss"]) for r in records if r.get("event") == "train" and "loss" in r]
    val = [(r.get("tokens", 0), r["val_loss"]) for r in records if r.get("event") == "val" and "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for points, label, style in ((train, "training", "-"), (val, "validation", "o-")):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(f"loss (nats/{unit})")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    path = directory / PLOT
    write_atomic(path, buffer.getvalue())
    return path

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
            for line in self.path.read_text("utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except (json.JSONDecodeError, AttributeError):
                    break  # a line cut short by the kill: everything before it is good
        write_atomic(self.path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


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
    train = [(r["tokens"], r["loss"]) for r in records if r.get("event") == "train"]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("event") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for points, label, style in ((train, "training", "-"), (val, "validation", "o-")):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(f"loss (nats/{unit})")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    path = directory / PLOT
    write_atomic(path, buffer.getvalue())
    return path

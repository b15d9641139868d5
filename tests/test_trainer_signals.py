"""A running rnn-train holds its directory: a second one on it fails at once; SIGTERM and Ctrl-C stop it between two
steps with a checkpoint of the last one, one line saying so and the shell's exit code (143, 130), and --resume goes
on from there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnx.cli.train import app
from rnnx.trainer.checkpoint import load_train_state
from rnnx.trainer.report import METRICS

runner = CliRunner()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rnnx.cli.train import app; app()", *args]


def _steps_logged(out: Path) -> int:
    path = out / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    return max((json.loads(line)["step"] for line in lines[:-1]), default=0)  # the last line may be cut short


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_a_signal_stops_the_run_with_a_checkpoint(tmp_path: Path, signum: int, code: int) -> None:
    data, out = tmp_path / "text.txt", tmp_path / "run"
    data.write_text("the cat sat on the mat. a dog ran by the red door. " * 300, encoding="utf-8")
    args = ["--data", str(data), "--out", str(out), "--cell", "gru", "--hidden", "16", "--embed", "8"]
    args += ["--batch-size", "4", "--seq-len", "16", "--steps", "1000000", "--eval-every", "1000000"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _steps_logged(out) < 30:  # well into training, with no checkpoint written yet
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
            assert time.monotonic() < deadline, "no 30 steps logged within 120 s"
            time.sleep(0.05)
        second = runner.invoke(app, ["--data", str(data), "--out", str(out), "--steps", "5", "--overwrite"])
        assert second.exit_code == 1
        assert f"another rnn-train is writing to {out} (process {proc.pid})" in second.output
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"stopped by {name} at step ")
    assert lines[0].endswith(f", checkpoint saved: rnn-train --out {out} --resume continues the run")
    step = int(lines[0].split(" at step ")[1].split(",")[0])
    assert step >= 30 and load_train_state(out)[1]["progress"]["step"] == step
    done = runner.invoke(app, ["--out", str(out), "--resume", "--steps", str(step + 5)])
    assert done.exit_code == 0, done.output
    assert load_train_state(out)[1]["progress"]["step"] == step + 5

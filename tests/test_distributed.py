"""torchrun: two processes (gloo on CPU) train what one process trains with the same global batch; a run resumes
on another number of processes (2 -> 1, 1 -> 2) with the result of a run that was never stopped, and on the same
number exactly (each process's random state is in the checkpoint). Each launch has a timeout: a hang fails."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnx.runtime.errors import UsageError
from rnnx.trainer.checkpoint import load_train_state
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.state import TrainState
from rnnx.trainer.train import TrainConfig, resume, train

MODEL = ModelConfig(cell="lstm", embed=8, hidden=16)
FLAGS = ["--cell", "lstm", "--embed", "8", "--hidden", "16", "--seq-len", "16", "--eval-every", "4"]
TIMEOUT = 120  # seconds: a process that hangs in a collective fails the test instead of blocking CI


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "rnn_train.py"
    script.write_text("from rnnx.cli.train import app\napp()\n", encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _vals(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in records if r["event"] == "val"]


def _same_state(a: Path, b: Path) -> None:
    """Weights, AdamW moments and the carried state of every stream agree within float tolerance."""
    ta, tb = load_train_state(a)[0], load_train_state(b)[0]
    names = [n for n in ta if n.startswith(("model.", "optim.", "carry."))]
    assert names and set(names) <= set(tb)
    for name in names:
        torch.testing.assert_close(ta[name], tb[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, global batch 8, 24 steps (validated every 4), and the same run stopped at 12."""
    root = tmp_path_factory.mktemp("single")
    data = root / "text.txt"
    data.write_text("the cat sat on the mat. a dog ran by the red door and then it saw what the cat did. " * 150)
    base = TrainConfig(data=data, batch_size=8, seq_len=16, eval_every=4)
    train(MODEL, TrainConfig(**{**base.__dict__, "out": root / "24", "steps": 24}), progress=False)
    train(MODEL, TrainConfig(**{**base.__dict__, "out": root / "12", "steps": 12}), progress=False)
    return root


def test_two_processes_train_what_one_trains_and_resume_on_one(
    single: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "two"
    data = single / "text.txt"
    done = _torchrun(tmp_path, "--data", str(data), "--out", str(out), "--batch-size", "4", "--steps", "12", *FLAGS)
    assert done.stdout.count("trained -> ") == 1  # only the first process reports
    assert load_train_state(out)[1]["world_size"] == 2
    _same_state(out, single / "12")
    ours, theirs = _vals(out), _vals(single / "12")
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [4, 8, 12]
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)

    with caplog.at_level(logging.WARNING, logger="rnnx"):
        result = resume(out, {"steps": 24}, progress=False)  # this process alone: 8 streams, as before on two
    assert result.steps == 24
    assert "resuming a run of 2 process(es) on 1: each reads 8 streams instead of 4" in caplog.text
    _same_state(out, single / "24")  # no dropout, no resets: the same run as one never stopped
    assert _vals(out)[-1][1] == pytest.approx(_vals(single / "24")[-1][1], rel=1e-5)


def test_one_process_run_resumes_on_two(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    out.mkdir()
    for path in (single / "12").iterdir():
        if path.is_file() and not path.name.startswith("."):
            (out / path.name).write_bytes(path.read_bytes())
    done = _torchrun(tmp_path, "--out", str(out), "--resume", "--steps", "24")
    assert "resuming a run of 1 process(es) on 2: each reads 4 streams instead of 8" in done.stderr
    assert load_train_state(out)[1]["progress"]["step"] == 24
    _same_state(out, single / "24")


def test_an_odd_global_batch_cannot_be_shared(single: Path) -> None:
    saved = TrainState.read(single / "12", {})
    assert saved.world == 1 and saved.config.batch_size == 8
    assert saved.for_processes(4).config.batch_size == 2
    with pytest.raises(UsageError, match="global batch of 8 streams cannot be shared by 3 processes"):
        saved.for_processes(3)


def test_a_same_size_resume_is_exact(tmp_path: Path, single: Path) -> None:
    """Dropout and stream resets draw from each process's random state: 12 + 12 steps on two processes give
    bit-identical weights, moments, carried and random states to 24 straight ones."""
    flags = ["--data", str(single / "text.txt"), "--batch-size", "4", *FLAGS, "--dropout", "0.2"]
    flags += ["--state-reset", "0.3"]
    _torchrun(tmp_path, *flags, "--out", str(tmp_path / "straight"), "--steps", "24")
    _torchrun(tmp_path, *flags, "--out", str(tmp_path / "halves"), "--steps", "12")
    _torchrun(tmp_path, "--out", str(tmp_path / "halves"), "--resume", "--steps", "24")
    a, b = load_train_state(tmp_path / "straight")[0], load_train_state(tmp_path / "halves")[0]
    assert a.keys() == b.keys() and {"rng.cpu", "rng.cpu.1"} <= set(a)
    assert not torch.equal(a["rng.cpu"], a["rng.cpu.1"])  # each process draws its own masks
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "error: WORLD_SIZE='abc' is not a number of processes: launch rnn-train with torchrun"),
        ({"WORLD_SIZE": "-3"}, "error: WORLD_SIZE='-3' is not a number of processes"),
        ({"WORLD_SIZE": "2"}, "could not meet (Error initializing torch.distributed using env:// rendezvous"),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "notaport"},
            "could not meet (invalid literal for int() with base 10: 'notaport'): start rnn-train with torchrun",
        ),
    ],
)
def test_a_bad_torchrun_environment_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """rnn-train started by hand with torchrun's variables half set: one line, not torch's traceback."""
    from typer.testing import CliRunner

    from rnnx.cli import train as train_cli

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 100, encoding="utf-8")
    args = ["--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "run"), "--steps", "2", *FLAGS]
    result = CliRunner().invoke(train_cli.app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run").exists()

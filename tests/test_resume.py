"""Checkpoints: a SIGKILLed run resumes and finishes, its last checkpoint intact; resuming is exact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnx.trainer.checkpoint import TRAIN_STATE, load_model, load_train_state
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.train import TrainConfig, resume, train

WORDS = "the cat sat on a mat and then it ran to see what the dog was doing by the old red door".split()


def make_text(path: Path, chars: int = 30_000) -> Path:
    rng = random.Random(0)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words += rng.sample(WORDS, 6) + ["."]
    path.write_text(" ".join(words) + "\n", encoding="utf-8")
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rnnx.cli.train import app; app()", *args]


def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    data, out = make_text(tmp_path / "text.txt"), tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--cell", "lstm", "--hidden", "24", "--embed", "8"]
    args += ["--batch-size", "8", "--seq-len", "16", "--steps", "100000", "--lr", "0.003", "--checkpoint-every", "5"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        step = 0
        while step < 40:  # several checkpoints have been replaced by the time it is killed
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
            assert time.monotonic() < deadline, "no checkpoint past step 40 within 120 s"
            time.sleep(0.05)
            if (out / TRAIN_STATE).is_file():
                step = load_train_state(out)[1]["progress"]["step"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    tensors, meta = load_train_state(out)  # the last checkpoint survived the kill whole
    killed_at = meta["progress"]["step"]
    assert killed_at >= 40 and killed_at % 5 == 0
    assert {"model.rnn.weight_hh_l0", "rng.cpu", "carry.0", "carry.1"} <= set(tensors)

    finish = killed_at + 20
    done = subprocess.run(
        _cli("--out", str(out), "--resume", "--steps", str(finish)), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert load_train_state(out)[1]["progress"]["step"] == finish
    model, tokenizer, document = load_model(out)
    assert model.config.cell == "lstm" and tokenizer.kind == "char" and document["val_loss"] > 0
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == finish  # the killed run's records past its checkpoint are gone
    assert not list(out.glob(".*.tmp"))  # whatever temporaries the kill left were removed by the resumed run


@pytest.mark.parametrize(("cell", "ema", "state_reset"), [("lstm", 0.99, 0.3), ("gru", 0.0, 0.0)])
def test_resume_continues_exactly(tmp_path: Path, cell: str, ema: float, state_reset: float) -> None:
    data = make_text(tmp_path / "text.txt", 12_000)
    model_config = ModelConfig(cell=cell, embed=8, hidden=16, dropout=0.2, weight_drop=0.2, embed_dropout=0.1)
    base = dict(
        data=data,
        batch_size=4,
        seq_len=16,
        lr=0.003,
        clip=1.0,
        weight_decay=0.01,
        eval_every=7,
        ema=ema,
        state_reset=state_reset,
    )
    straight = train(model_config, TrainConfig(out=tmp_path / "a", steps=40, **base), progress=False)
    train(model_config, TrainConfig(out=tmp_path / "b", steps=20, **base), progress=False)
    resumed = resume(tmp_path / "b", {"steps": 40}, progress=False)
    assert straight.steps == resumed.steps == 40
    a, b = load_train_state(tmp_path / "a")[0], load_train_state(tmp_path / "b")[0]
    assert ("ema.0" in a) == bool(ema) and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_word_run_started_with_a_whole_text_vocabulary_resumes(tmp_path: Path, monkeypatch) -> None:
    """Runs started before the vocabulary counted the training part only keep the vocabulary they started with."""
    import rnnx.trainer.train as training
    from rnnx.trainer.data import build_tokenizer

    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat . " * 200 + "zebra " * 60, encoding="utf-8")
    config = TrainConfig(data=data, out=tmp_path / "run", tokenizer="word", steps=2, batch_size=4, seq_len=8)
    with monkeypatch.context() as patch:
        patch.setattr(training, "fit_tokenizer", build_tokenizer)  # the trainer as it was
        train(ModelConfig(cell="gru", embed=8, hidden=8), config, progress=False)
    assert "zebra" in load_model(tmp_path / "run")[1].vocab
    assert resume(tmp_path / "run", {"steps": 4}, progress=False).steps == 4


def test_a_run_on_the_built_in_sentences_resumes(tmp_path: Path) -> None:
    """No --data: each step starts cold on the three sentences, so the carried state saved (three streams, not
    --batch-size) is not read back; resuming such a run used to fail as a checkpoint that does not fit."""
    config = TrainConfig(out=tmp_path / "run", epochs=2)
    train(ModelConfig(cell="lstm", embed=8, hidden=8), config, progress=False)
    assert resume(tmp_path / "run", {"epochs": 4}, progress=False).epochs == 4


def _started_in(tmp_path: Path, data: str) -> Path:
    """A short run started in tmp_path/start with --data given as `data` (relative there); returns its --out."""
    start = tmp_path / "start"
    start.mkdir()
    make_text(start / "text.txt", 4_000)
    args = ["--data", data, "--out", "run", "--hidden", "8", "--batch-size", "4", "--seq-len", "8", "--steps", "2"]
    done = subprocess.run(_cli(*args), cwd=start, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return start / "run"


def _resume_from(where: Path, out: Path, steps: int) -> subprocess.CompletedProcess:
    where.mkdir(exist_ok=True)
    args = _cli("--out", str(out), "--resume", "--steps", str(steps))
    return subprocess.run(args, cwd=where, capture_output=True, text=True, timeout=120)


def test_a_run_with_relative_data_resumes_from_another_directory(tmp_path: Path) -> None:
    out = _started_in(tmp_path, "text.txt")
    done = _resume_from(tmp_path / "elsewhere", out, 4)
    assert done.returncode == 0, done.stderr
    assert load_train_state(out)[1]["progress"]["step"] == 4


def test_resume_without_its_data_is_one_line_naming_the_path(tmp_path: Path) -> None:
    out = _started_in(tmp_path, "./text.txt")
    (out.parent / "text.txt").unlink()
    done = _resume_from(tmp_path / "elsewhere", out, 4)
    gone = f"{out.parent / 'text.txt'} (recorded in {out / TRAIN_STATE}) is not there"
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and gone in done.stderr, done.stderr
    assert "put the same text back at that path" in done.stderr


def test_an_older_checkpoint_with_relative_data_says_where_to_resume_from(tmp_path: Path) -> None:
    """Checkpoints written before the path was recorded absolute hold it as given: it is read from the current
    directory, and elsewhere the error says to resume from where the run began."""
    from rnnx.trainer.checkpoint import save_train_state

    out = _started_in(tmp_path, "text.txt")
    tensors, meta = load_train_state(out)
    meta["training"]["data"] = "text.txt"
    save_train_state(out, tensors, {k: v for k, v in meta.items() if k != "format"})
    elsewhere = _resume_from(tmp_path / "elsewhere", out, 4)
    assert elsewhere.returncode == 1 and elsewhere.stderr.count("\n") == 1, elsewhere.stderr
    assert f"is not in {tmp_path / 'elsewhere'}: resume from the directory the run began in" in elsewhere.stderr
    assert _resume_from(out.parent, out, 4).returncode == 0

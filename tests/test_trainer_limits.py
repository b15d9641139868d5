"""Odd values end at once in one clear error with the limit in it, and a diverged run stops with an error and keeps
its last good checkpoint and model instead of exiting 0 with a broken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnx.cli.train import app
from rnnx.runtime.errors import RnnxError
from rnnx.trainer import limits
from rnnx.trainer.checkpoint import TRAIN_STATE, WEIGHTS, load_model, load_train_state
from rnnx.trainer.loop import Run
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.train import TrainConfig, train

runner = CliRunner()


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def eight_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 8 * 2**30)


@pytest.mark.usefixtures("eight_gib")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rng-seed", str(2**70)], f"--rng-seed) must be from 0 to {2**64 - 1}, got {2**70}"),
        (["--rng-seed", str(2**64)], f"--rng-seed) must be from 0 to {2**64 - 1}, got {2**64}"),
        (["--layers", "100000"], "layers must be from 1 to 64, got 100000"),
        (
            ["--hidden", "1000000"],
            "training this RNN (1 x 1000000 units, 1,000,036,000,306 weights, 18 tokens) needs at least 14.6 TiB of "
            "memory, more than the 8.0 GiB available: lower --hidden, --layers or --embed",
        ),
        (["--embed", "100000000", "--cell", "lstm"], "more than the 8.0 GiB available"),
        (["--batch-size", "0"], "batch-size must be 1 or more, got 0"),
    ],
)
def test_odd_values_fail_at_once_with_the_limit(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["--out", str(out), *args])
    assert result.exit_code == 2 and message in one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("seed", [2**32 - 1, 2**32, 2**64 - 1])
def test_the_largest_seed_trains(tmp_path: Path, seed: int) -> None:
    """rnn-run takes seeds up to 2**64 - 1; so does rnn-train, for the built-in sentences and for text."""
    result = runner.invoke(app, ["--out", str(tmp_path / "lines"), "--rng-seed", str(seed), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat. a dog ran by. " * 100, encoding="utf-8")
    args = ["--data", str(data), "--out", str(tmp_path / "text"), "--rng-seed", str(seed), "--hidden", "8"]
    result = runner.invoke(app, [*args, "--batch-size", "4", "--seq-len", "16", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert load_train_state(tmp_path / "text")[1]["training"]["rng_seed"] == seed


def test_seeds_below_2_to_the_32_order_batches_as_before() -> None:
    """Widening the seed's range wraps the derived seeds into 64 bits, which leaves every earlier run's unchanged."""
    from rnnx.trainer.data import seed_for

    for seed, epoch in ((0, 0), (7, 3), (2**32 - 1, 10**6)):
        assert seed_for(seed, epoch, 1_000_003) == seed * 1_000_003 + epoch and seed_for(seed, epoch, 1) == seed + epoch


def test_a_run_blown_up_by_its_learning_rate_fails_and_saves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["--out", str(out), "--lr", "1e30"])
    line = one_error_line(result)
    assert result.exit_code == 1
    assert "training diverged by step 2 (mean training loss" in line and "lower --lr (it is 1e+30)" in line
    assert "no checkpoint or model of this run was saved" in line
    assert not (out / WEIGHTS).exists() and not (out / TRAIN_STATE).exists()


def test_divergence_keeps_the_last_good_checkpoint_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights turn to NaN after step 29: the checkpoint of step 20 and the best model stay as they were."""
    step = Run._step

    def poisoned(self: Run, batch, carry: tuple):
        loss, carry = step(self, batch, carry)
        if self.optimizer.state_dict()["state"][0]["step"] >= 29:
            with torch.no_grad():
                self.model.head.bias.fill_(float("nan"))
        return loss, carry

    monkeypatch.setattr(Run, "_step", poisoned)
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat. a dog ran by. " * 300, encoding="utf-8")
    config = TrainConfig(data=data, out=tmp_path / "run", steps=60, batch_size=4, seq_len=16, eval_every=10)
    with pytest.raises(RnnxError) as caught:
        train(ModelConfig(cell="gru", embed=8, hidden=16), config, progress=False)
    message = str(caught.value)
    assert message.startswith("training diverged by step 30 (mean training loss nan nats/token)")
    assert message.endswith("the checkpoint of step 20 and the best model are kept")
    tensors, meta = load_train_state(config.out)
    assert meta["progress"]["step"] == 20 and all(
        torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()
    )
    model, _, document = load_model(config.out)
    assert document["step"] == meta["progress"]["best_step"] and all(
        torch.isfinite(p).all() for p in model.parameters()
    )
    records = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "val"] == [10, 20]

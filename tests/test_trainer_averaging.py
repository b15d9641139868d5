"""Weight averaging (--ema): the running average, swapping it in for validation, and what the model holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnx.runtime.errors import UsageError
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import load_model, load_train_state
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.train import TrainConfig, train


def _model() -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(cell="lstm", vocab_size=7, embed=4, hidden=5))


def test_update_follows_the_warm_decay() -> None:
    model = _model()
    average = WeightAverage(model, decay=0.99)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(0)  # d = min(0.99, 1/10): the average moves 90% of the way
    for a, s in zip(average.average, start):
        torch.testing.assert_close(a, s + 0.9)
    average.update(10_000)  # d = 0.99 by now
    for a, s in zip(average.average, start):
        torch.testing.assert_close(a, s + 0.9 + 0.1 * 0.01)


def test_applied_swaps_in_the_average_and_restores_the_weights() -> None:
    model = _model()
    average = WeightAverage(model, decay=0.5)
    own = [p.detach().clone() for p in model.parameters()]
    average.average = [torch.full_like(p, 3.0) for p in own]
    with average.applied():
        assert all(torch.all(p == 3.0) for p in model.parameters())
    for p, o in zip(model.parameters(), own):
        assert torch.equal(p, o)


def test_model_directory_holds_the_average(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 300, encoding="utf-8")
    config = TrainConfig(
        data=data, out=tmp_path / "m", steps=12, batch_size=4, seq_len=16, lr=0.01, ema=0.9, eval_every=12
    )
    train(ModelConfig(cell="gru", embed=8, hidden=16), config, progress=False)
    tensors = load_train_state(tmp_path / "m")[0]
    saved, _, _ = load_model(tmp_path / "m")
    names = [n for n, _ in saved.named_parameters()]
    trained = [tensors[f"model.{n}"] for n in names]
    for i, name in enumerate(names):
        torch.testing.assert_close(saved.state_dict()[name], tensors[f"ema.{i}"])  # the average was kept...
    assert any(not torch.equal(saved.state_dict()[n], t) for n, t in zip(names, trained))  # ...not the weights


@pytest.mark.parametrize("ema", [1.0, -0.1, float("nan")])
def test_bad_ema_refused(ema: float) -> None:
    with pytest.raises(UsageError, match="ema"):
        TrainConfig(ema=ema)

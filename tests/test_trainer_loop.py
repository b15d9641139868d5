"""The training loop's stream resets (--state-reset): which streams start cold, and that a run uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnx.runtime.errors import UsageError
from rnnx.trainer.checkpoint import load_train_state
from rnnx.trainer.loop import reset_streams
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.train import TrainConfig, train


def _state(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.arange(1.0, 2 * batch * 3 + 1).view(2, batch, 3)  # (layers, B, H), no zeros
    return h, -h


def test_reset_streams_zeroes_whole_streams_at_the_asked_rate() -> None:
    torch.manual_seed(0)
    state = _state(4000)
    h, c = reset_streams(state, 0.25)
    cold = (h == 0).all(dim=2).all(dim=0)  # (B,) streams reset in every layer
    partly = (h == 0).any(dim=2).any(dim=0)
    assert torch.equal(cold, partly)  # a stream is reset whole or not at all
    assert torch.equal(cold, (c == 0).all(dim=2).all(dim=0))  # h and c of a stream go together
    assert torch.equal(h[:, ~cold], state[0][:, ~cold]) and torch.equal(c[:, ~cold], state[1][:, ~cold])
    assert 900 < int(cold.sum()) < 1100  # 25% of 4000 streams, within 3.7 standard deviations


def test_reset_streams_at_the_ends_of_the_range() -> None:
    state = _state(64)
    assert all(torch.equal(a, b) for a, b in zip(reset_streams(state, 0.0), state))
    assert all(torch.count_nonzero(s) == 0 for s in reset_streams(state, 1.0))


def test_state_reset_reaches_training(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 300, encoding="utf-8")
    model = ModelConfig(cell="lstm", embed=8, hidden=16)
    base = dict(data=data, batch_size=4, seq_len=16, lr=0.01, eval_every=10)

    def weights(out: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in load_train_state(tmp_path / out)[0].items() if k.startswith("model.")}

    train(model, TrainConfig(out=tmp_path / "carried", steps=20, **base), progress=False)
    train(model, TrainConfig(out=tmp_path / "reset", steps=20, state_reset=0.5, **base), progress=False)
    carried, reset = weights("carried"), weights("reset")
    assert any(not torch.equal(carried[k], reset[k]) for k in carried)  # the resets reached the model


@pytest.mark.parametrize("chance", [-0.1, 1.5, float("nan")])
def test_bad_state_reset_refused(chance: float) -> None:
    with pytest.raises(UsageError, match="state-reset"):
        TrainConfig(state_reset=chance)

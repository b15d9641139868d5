"""The training loop's stream resets (--state-reset): which streams start cold, and that a run uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rnnx.trainer.loop
from rnnx.runtime.errors import UsageError
from rnnx.trainer.loop import reset_streams
from rnnx.trainer.model import RNNLM, ModelConfig
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
    nan = (torch.full((1, 2, 3), float("nan")),)
    assert torch.count_nonzero(reset_streams(nan, 1.0)[0]) == 0  # a reset stream is zero whatever it held


def _states_seen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_reset: float) -> list[float]:
    """Train 20 steps and return the size of the state each training step started from."""
    seen: list[float] = []
    forward = RNNLM.forward

    def spy(self: RNNLM, tokens: torch.Tensor, state: tuple) -> tuple:
        if self.training:
            seen.append(sum(float(s.abs().sum()) for s in state))
        return forward(self, tokens, state)

    monkeypatch.setattr(RNNLM, "forward", spy)
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 300, encoding="utf-8")
    config = TrainConfig(
        data=data, out=tmp_path / str(state_reset), steps=20, batch_size=4, seq_len=16, state_reset=state_reset
    )
    train(ModelConfig(cell="lstm", embed=8, hidden=16), config, progress=False)
    return seen


def test_state_reset_one_starts_every_step_cold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _states_seen(monkeypatch, tmp_path, 1.0)
    assert len(seen) == 20 and all(size == 0 for size in seen)


def test_no_state_reset_carries_and_draws_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("reset_streams was called with --state-reset 0")

    monkeypatch.setattr(rnnx.trainer.loop, "reset_streams", refuse)
    seen = _states_seen(monkeypatch, tmp_path, 0.0)
    assert len(seen) == 20 and seen[0] == 0 and all(size > 0 for size in seen[1:])  # one epoch: carried after step 0


@pytest.mark.parametrize("chance", [-0.1, 1.5, float("nan")])
def test_bad_state_reset_refused(chance: float) -> None:
    with pytest.raises(UsageError, match="state-reset"):
        TrainConfig(state_reset=chance)


def _cpu_checks(monkeypatch: pytest.MonkeyPatch, amx: object, avx512_bf16: object) -> None:
    """Stand-ins for torch's private CPU feature checks: a bool, an exception to raise, or None for a torch
    that lacks the check."""
    for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        elif isinstance(value, BaseException):
            monkeypatch.setattr(torch.cpu, name, lambda error=value: (_ for _ in ()).throw(error))
        else:
            monkeypatch.setattr(torch.cpu, name, lambda answer=value: answer)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "bf16"),
    [
        (True, False, True),
        (False, True, True),  # AMD EPYC Zen 4: AVX512-BF16 without AMX
        (False, False, False),
        (None, None, False),  # a torch without the checks
        (RuntimeError("cpuinfo failed"), True, True),  # one check failing does not hide the other
        (OSError("no /proc"), RuntimeError("cpuinfo failed"), False),
    ],
)
def test_precision_auto_picks_bf16_only_on_native_bf16_cpus(
    monkeypatch: pytest.MonkeyPatch, amx: object, avx512_bf16: object, bf16: bool
) -> None:
    from rnnx.trainer.loop import use_bf16

    _cpu_checks(monkeypatch, amx, avx512_bf16)
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) is bf16
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True  # an explicit choice stands


def test_adamw_is_fused_on_cpu_and_not_where_torch_has_no_fused_kernel() -> None:
    from rnnx.trainer.state import make_optimizer

    config = TrainConfig(steps=1)
    assert make_optimizer(RNNLM(ModelConfig(vocab_size=5, embed=4, hidden=4)), config).defaults["fused"] is True
    meta = RNNLM(ModelConfig(vocab_size=5, embed=4, hidden=4)).to("meta")
    assert not make_optimizer(meta, config).defaults["fused"]

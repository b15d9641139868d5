"""The model's training-only regularisers: locked dropout keeps one mask per sequence; eval mode is plain."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rnnx.trainer.model import RNNLM, ModelConfig


def test_locked_dropout_one_mask_per_sequence() -> None:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=5, embed=4, hidden=8, dropout=0.5)).train()
    out = model.locked_dropout(torch.ones(3, 10, 200))  # (B, T, F)
    assert torch.equal(out, out[:, :1].expand_as(out))  # every time step has its sequence's mask
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1 / (1 - p)
    assert not torch.equal(out[0], out[1])  # each sequence draws its own
    assert 0.35 < float((out == 0).float().mean()) < 0.65


def test_eval_mode_is_deterministic() -> None:
    torch.manual_seed(0)
    config = ModelConfig(cell="gru", vocab_size=5, embed=4, hidden=8, dropout=0.5, weight_drop=0.5, embed_dropout=0.5)
    model = RNNLM(config).eval()
    tokens = torch.randint(5, (2, 7))
    first, _ = model(tokens, model.init_state(2))
    second, _ = model(tokens, model.init_state(2))
    assert torch.equal(first, second)
    assert torch.equal(model.locked_dropout(torch.ones(2, 3, 4)), torch.ones(2, 3, 4))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_by_layer_training_path_equals_the_whole_module(cell: str) -> None:
    """With regularisers that drop nothing, training layer by layer computes exactly what self.rnn does."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=9, embed=6, hidden=10, layers=3)).train()
    tokens = torch.randint(9, (4, 7))
    state = tuple(torch.randn_like(s) for s in model.init_state(4))
    whole, whole_state = model(tokens, state)
    model.config = replace(model.config, weight_drop=1e-12)  # takes the layer-by-layer path, scales by ~1
    by_layer, layer_state = model(tokens, state)
    torch.testing.assert_close(by_layer, whole, rtol=0, atol=1e-6)
    for a, b in zip(layer_state, whole_state):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    by_layer.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

"""Validation memory is bounded by a setting (`logits_mb`), not by vocabulary x window x streams, and the pieces
give the same figures as computing every logit at once."""

from __future__ import annotations

import pytest
import torch

from rnnx.trainer.evaluate import LOGITS_MB, stateful_loss, windowed_loss
from rnnx.trainer.model import RNNLM, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(cell: str, vocab: int) -> tuple[RNNLM, torch.Tensor]:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=vocab, embed=8, hidden=16, layers=2))
    return model, torch.randint(vocab, (3000,))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_pieces_give_the_same_loss_as_all_logits_at_once(cell: str) -> None:
    model, ids = small(cell, 50)
    at_once = stateful_loss(model, ids, streams=32, logits_mb=1e6)
    two_rows = 2 * 4 * 50 / 2**20  # MiB of two rows of 50 float32 logits
    assert stateful_loss(model, ids, streams=32, logits_mb=two_rows) == at_once
    assert stateful_loss(model, ids, streams=32, logits_mb=1e-9) == pytest.approx(at_once, rel=1e-8)  # one row
    assert windowed_loss(model, ids, logits_mb=two_rows) == windowed_loss(model, ids, logits_mb=1e6)


def test_logits_never_exceed_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 streams x 256 tokens x 20k tokens of vocabulary would be 625 MiB of logits at once; at most 64 MiB are."""
    vocab = 20_000
    model, _ = small("gru", vocab)
    ids = torch.randint(vocab, (32 * 256 + 1,))
    rows: list[int] = []
    head = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda x: rows.append(len(x)) or head(x))
    loss = stateful_loss(model, ids, streams=32, chunk=256)
    assert max(rows) * vocab * 4 <= LOGITS_MB * 2**20 and sum(rows) == 32 * 256
    assert max(rows) == LOGITS_MB * 2**20 // (4 * vocab)
    assert 9.8 < loss < 10.0  # ln(20000) = 9.90: an untrained model guesses uniformly

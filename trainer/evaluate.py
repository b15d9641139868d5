"""Validation loss in nats per token, by the two protocols the benchmarks quote.

stateful: the validation text read in order with the state carried (how the model is used). With `streams`
          > 1 the text is cut into that many contiguous pieces read side by side, which is much faster and
          differs only in the few tokens each extra piece starts from a zero state.
windowed: independent windows (256 tokens by default) each read from a zero state, the protocol of the
          best-known transformer baseline on tiny-shakespeare.
Both run in fp32 whatever precision trained the model: they score the weights that get exported. The output layer
runs on at most `logits_mb` MiB of logits at a time, so memory does not grow with vocabulary x window x streams
(32 streams x 256 tokens x a 200k-word vocabulary would be 6.5 GB of logits at once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnx.trainer.model import RNNLM

LOGITS_MB = 64  # logits computed at once during validation, in MiB (cross-entropy holds about twice that)


def _loss_sum(model: RNNLM, features: torch.Tensor, targets: torch.Tensor, logits_mb: float) -> torch.Tensor:
    """Summed cross-entropy (float64) of the output layer over features (N, H) and targets (N,), piece by piece."""
    rows = max(1, int(logits_mb * 2**20) // (4 * model.config.vocab_size))
    total = features.new_zeros((), dtype=torch.float64)
    for first in range(0, len(features), rows):
        logits = model.head(features[first : first + rows])  # (rows, V)
        losses = nn.functional.cross_entropy(logits, targets[first : first + rows], reduction="none")  # (rows,)
        total += losses.double().sum()
    return total


def stateful_loss(
    model: RNNLM, ids: torch.Tensor, streams: int = 1, chunk: int = 256, logits_mb: float = LOGITS_MB
) -> float:
    """Mean next-token cross-entropy over `ids` (1-D), reading `streams` contiguous pieces in parallel."""
    total, count = stateful_sums(model, ids, streams, chunk, logits_mb=logits_mb)
    return total / count


@torch.no_grad()
def stateful_sums(
    model: RNNLM,
    ids: torch.Tensor,
    streams: int,
    chunk: int = 256,
    part: tuple[int, int] = (0, 1),
    logits_mb: float = LOGITS_MB,
) -> tuple[float, int]:
    """Summed cross-entropy and token count of the streams of part `part = (k, n)` (the k-th of n shares, for
    the processes of a torchrun run, whose sums add up to those of all streams)."""
    was_training = model.training
    model.eval()
    streams = max(1, min(streams, (len(ids) - 1) // 2))
    length = (len(ids) - 1) // streams
    k, n = part
    rows = slice(k * streams // n, (k + 1) * streams // n)
    x = ids[: streams * length].view(streams, length)[rows]  # (S, N)
    y = ids[1 : streams * length + 1].view(streams, length)[rows]  # (S, N)
    total = 0.0
    if len(x):
        state = model.init_state(len(x))
        for start in range(0, length, chunk):
            features, state = model.features(x[:, start : start + chunk], state)  # (S, c, H)
            total += float(_loss_sum(model, features.flatten(0, 1), y[:, start : start + chunk].flatten(), logits_mb))
    model.train(was_training)
    return total, len(x) * length


@torch.no_grad()
def windowed_loss(
    model: RNNLM, ids: torch.Tensor, window: int = 256, batch: int = 64, logits_mb: float = LOGITS_MB
) -> float:
    """Mean next-token cross-entropy over non-overlapping `window`-token windows, each from a zero state."""
    was_training = model.training
    model.eval()
    count = (len(ids) - 1) // window
    x = ids[: count * window].view(count, window)  # (W, window)
    y = ids[1 : count * window + 1].view(count, window)  # (W, window)
    total = 0.0
    for first in range(0, count, batch):
        xb, yb = x[first : first + batch], y[first : first + batch]
        features, _ = model.features(xb, model.init_state(len(xb)))  # (b, window, H)
        total += float(_loss_sum(model, features.flatten(0, 1), yb.flatten(), logits_mb))
    model.train(was_training)
    return total / (count * window)


def describe_loss(nats: float, kind: str) -> str:
    """`1.4000 nats/char (2.020 bits/char)` for characters, `3.2 nats/word (ppl 24.5)` for words."""
    if kind == "char":
        return f"{nats:.4f} nats/char ({nats / math.log(2):.3f} bits/char)"
    return f"{nats:.4f} nats/word (perplexity {math.exp(min(nats, 50)):.1f})"

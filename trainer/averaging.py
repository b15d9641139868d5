"""Weight averaging: an exponential moving average (EMA) of the weights along the training run.

With `--ema D` the trainer keeps, next to the weights it optimises, an average updated after every step:
average <- d * average + (1 - d) * weights, where d grows from 0.9 towards D as the run starts
(d = min(D, (1 + step) / (10 + step))) so the first noisy weights do not linger. Validation scores the
average, and the model directory (what `rnn-export` reads) holds the average. The average lives in fp32
beside the weights and costs one lerp per parameter per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.params = list(model.parameters())  # tied weights appear once
        self.average = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimisation step `step` (counted from 0)."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for average, param in zip(self.average, self.params):
            average.lerp_(param.detach(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own weights come back afterwards."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, average in zip(self.params, self.average):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, own in zip(self.params, saved):
                    param.copy_(own)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{i}": a for i, a in enumerate(self.average)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from a checkpoint's `ema.*` tensors; KeyError or RuntimeError if they do not fit."""
        with torch.no_grad():
            for i, average in enumerate(self.average):
                average.copy_(tensors[f"ema.{i}"])

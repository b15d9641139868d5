"""Choosing the next token from a row of logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rnnx.runtime.errors import UsageError
from rnnx.runtime.tokenizer import UNK_ID


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy: always the most likely token
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p
    rng_seed: int | None = None  # None draws a fresh seed; an int makes sampling repeatable

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def choose(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> int:
    """Pick one token id from `logits` [vocab] (modified in place). The unknown token is never chosen."""
    logits[UNK_ID] = -np.inf
    if config.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / config.temperature
    if 0 < config.top_k < z.size:
        kth = np.partition(z, -config.top_k)[-config.top_k]
        z[z < kth] = -np.inf
    p = np.exp(z - z.max())
    if config.top_p < 1:
        order = np.argsort(-p)
        sorted_p = p[order]
        cum = np.cumsum(sorted_p)
        # keep a token while the mass before it is still short of top_p; the most likely always stays
        drop = (cum - sorted_p) >= config.top_p * cum[-1]
        p[order[drop]] = 0.0
    cum = np.cumsum(p)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), p.size - 1))

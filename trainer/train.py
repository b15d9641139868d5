"""Training: `rnn-train` with no arguments fits the built-in three-sentence vanilla RNN in seconds."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rnnx.runtime.errors import RnnxError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.data import DEFAULT_LINES, line_examples, read_text, text_windows
from rnnx.trainer.model import RNNLM, ModelConfig

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts/default")


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None = None  # None trains on the built-in three sentences
    out: Path = DEFAULT_OUT
    epochs: int = 200
    batch_size: int = 64
    seq_len: int = 100  # window length for continuous text
    lr: float = 0.01
    rng_seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.seq_len < 1:
            raise UsageError("epochs, batch size and sequence length must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"learning rate must be positive, got {self.lr}")


@dataclass(frozen=True)
class TrainResult:
    out: Path
    final_loss: float
    epochs: int
    seconds: float


def train(model_config: ModelConfig, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model on `config.data` and write it to `config.out`; returns the final loss."""
    torch.manual_seed(config.rng_seed)
    if config.data is None:
        tokenizer = CharTokenizer.build("".join(DEFAULT_LINES))
        examples = line_examples(DEFAULT_LINES, tokenizer)
    else:
        text = read_text(config.data)
        tokenizer = CharTokenizer.build(text)
        examples = text_windows(text, tokenizer, config.seq_len)
    model_config = replace(model_config, vocab_size=len(tokenizer.vocab))
    model = RNNLM(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.rng_seed)

    start = time.monotonic()
    bar = tqdm(range(config.epochs), desc="training", unit="epoch", disable=None if progress else True, leave=False)
    epoch_loss = float("nan")
    for _ in bar:
        total, batches = 0.0, 0
        order = torch.randperm(len(examples), generator=generator)
        for first in range(0, len(examples), config.batch_size):
            batch = examples[order[first : first + config.batch_size]]  # (B, L+1)
            inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, L) each
            logits, _ = model(inputs, model.init_state(len(batch)))  # (B, L, V)
            loss = loss_fn(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        epoch_loss = total / batches
        if not math.isfinite(epoch_loss):
            raise RnnxError("training diverged (the loss is not finite): lower --lr; nothing was written")
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
    bar.close()
    seconds = time.monotonic() - start

    training = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    save_model(config.out, model, tokenizer, {"training": training, "final_loss": epoch_loss})
    log.info("trained %s for %d epochs in %.1fs, loss %.4f", model_config.cell, config.epochs, seconds, epoch_loss)
    return TrainResult(config.out, epoch_loss, config.epochs, seconds)

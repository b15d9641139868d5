"""The recurrent language model: token ids in, raw logits and the new state out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnx.runtime.contract import CELLS
from rnnx.runtime.errors import UsageError

State = tuple[torch.Tensor, ...]

_CELL_MODULES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "rnn"
    vocab_size: int = 0  # set from the tokenizer
    embed: int = 16  # embedding width; 0 feeds one-hot vectors instead (the classic tutorial's input)
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0  # between stacked layers, and before the output layer

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise UsageError(f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        if self.layers < 1 or self.hidden < 1 or self.embed < 0:
            raise UsageError("layers and hidden must be positive and embed 0 or more")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def input_size(self) -> int:
        return self.embed or self.vocab_size


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed) if config.embed else None
        self.rnn = _CELL_MODULES[config.cell](
            config.input_size,
            config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def init_state(self, batch: int) -> State:
        weight = self.head.weight
        shape = (self.config.layers, batch, self.config.hidden)
        return tuple(weight.new_zeros(shape) for _ in range(2 if self.config.cell == "lstm" else 1))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return nn.functional.one_hot(tokens, self.config.vocab_size).to(self.head.weight.dtype)
        return self.embedding(tokens)

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B, T) int64 -> logits (B, T, V) and the state after the last step."""
        x = self.embed(tokens)  # (B, T, E)
        out, new = self.rnn(x, state if self.config.cell == "lstm" else state[0])  # out: (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, (new if isinstance(new, tuple) else (new,))

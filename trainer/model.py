"""The recurrent language model: token ids in, raw logits and the new state out.

Regularisers that only act while training (dropout with one mask per sequence, embedding dropout, DropConnect on
the recurrent weights, for which training runs the layers one at a time) leave the module layout and the saved
weights exactly as a plain model's, so export and inference never see them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from rnnx.runtime.contract import CELLS
from rnnx.runtime.errors import UsageError
from rnnx.trainer.limits import MAX_LAYERS, number, text, weight_count, whole

State = tuple[torch.Tensor, ...]

_CELL_MODULES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# cuDNN warns when the weights it is given are not its one flat buffer; dropped-out weights are new tensors
# every step by design, so that copy is expected.
_NOT_CONTIGUOUS = ".*not part of single contiguous chunk of memory.*"


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "rnn"
    vocab_size: int = 0  # set from the tokenizer
    embed: int = 16  # embedding width; 0 feeds one-hot vectors instead (the classic tutorial's input)
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0  # on the embeddings, between layers and before the output layer; one mask per sequence
    embed_dropout: float = 0.0  # training only: drops whole vocabulary rows, so a token vanishes from a batch
    weight_drop: float = 0.0  # training only: DropConnect on the recurrent weights W_hh (AWD-LSTM)
    tie: bool = False  # the output layer reuses the embedding matrix; needs embed == hidden

    def __post_init__(self) -> None:
        """Types and ranges, so that a hand-edited model.json fails here with a message, not deep inside torch."""
        text("cell", self.cell, CELLS)
        whole("vocab size", self.vocab_size, 0)
        whole("embed", self.embed, 0)
        whole("hidden", self.hidden, 1)
        whole("layers", self.layers, 1, MAX_LAYERS)
        for name in ("dropout", "embed_dropout", "weight_drop"):
            value = number(name.replace("_", "-"), getattr(self, name))
            if not 0 <= value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be in [0, 1), got {value}")
        if not isinstance(self.tie, bool):
            raise UsageError(f"tie must be true or false, got {self.tie!r}")
        if self.tie and self.embed != self.hidden:
            raise UsageError(f"tied embeddings need --embed equal to --hidden (got {self.embed} and {self.hidden})")

    @property
    def weight_count(self) -> int:
        """Numbers in the saved weights (tied weights twice: the model directory holds two copies)."""
        return weight_count(self.cell, self.vocab_size, self.embed, self.hidden, self.layers)

    @property
    def input_size(self) -> int:
        return self.embed or self.vocab_size


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed) if config.embed else None
        cell = _CELL_MODULES[config.cell]
        self.rnn = cell(config.input_size, config.hidden, num_layers=config.layers, batch_first=True)
        # Training with dropout between layers or on W_hh runs the layers one at a time through these weightless
        # one-layer shapes (the weights come from self.rnn by functional_call); inference runs self.rnn whole.
        self._one_layer = tuple(
            cell(size, config.hidden, batch_first=True, device="meta") for size in (config.input_size, config.hidden)
        )
        self.head = nn.Linear(config.hidden, config.vocab_size)
        if config.tie:
            self.head.weight = self.embedding.weight  # type: ignore[union-attr]

    def init_state(self, batch: int) -> State:
        weight = self.head.weight
        shape = (self.config.layers, batch, self.config.hidden)
        return tuple(weight.new_zeros(shape) for _ in range(2 if self.config.cell == "lstm" else 1))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return nn.functional.one_hot(tokens, self.config.vocab_size).to(self.head.weight.dtype)
        weight = self.embedding.weight
        p = self.config.embed_dropout
        if self.training and p > 0:
            keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
            weight = weight * keep
        return self.locked_dropout(nn.functional.embedding(tokens, weight))

    def locked_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout with one mask per sequence, shared by all time steps of x (B, T, F): variational dropout.

        Recurrent nets regularise better when a dropped unit stays dropped along the sequence (AWD-LSTM), and
        a (B, 1, F) mask is T times cheaper to draw than a full one (bernoulli_ was 20% of a CPU step).
        """
        p = self.config.dropout
        if not (self.training and p > 0):
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p).div_(1 - p)  # (B, 1, F)
        return x * mask

    def recur(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, T, input) and the state (layers, B, H) each -> the last layer's outputs (B, T, H), new state."""
        config = self.config
        between = config.dropout > 0 and config.layers > 1
        if not (self.training and (between or config.weight_drop > 0)):
            out, new = self.rnn(x, state if config.cell == "lstm" else state[0])
            return out, (new if isinstance(new, tuple) else (new,))
        params = dict(self.rnn.named_parameters())
        layer_states = []
        for k in range(config.layers):
            if k:
                x = self.locked_dropout(x)  # between layers: one mask per sequence, as on the input and output
            weights = {
                f"{name}_l0": params[f"{name}_l{k}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            }
            if config.weight_drop > 0:
                weights["weight_hh_l0"] = nn.functional.dropout(weights["weight_hh_l0"], config.weight_drop)
            hx = tuple(s[k : k + 1] for s in state)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NOT_CONTIGUOUS)
                x, new = functional_call(
                    self._one_layer[min(k, 1)], weights, (x, hx if config.cell == "lstm" else hx[0])
                )
            layer_states.append(new if isinstance(new, tuple) else (new,))
        return x, tuple(torch.cat(parts) for parts in zip(*layer_states))

    def features(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B, T) int64 -> what the output layer reads (B, T, H) and the state after the last step."""
        x = self.embed(tokens)  # (B, T, E)
        out, new = self.recur(x, state)  # out: (B, T, H)
        return self.locked_dropout(out), new

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B, T) int64 -> logits (B, T, V) and the state after the last step."""
        out, new = self.features(tokens, state)  # (B, T, H)
        return self.head(out), new  # logits (B, T, V)

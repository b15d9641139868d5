"""Training settings (`TrainConfig`, one frozen dataclass with a comment on each non-obvious default) and the
summary a finished run returns (`TrainResult`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rnnx.runtime.errors import UsageError
from rnnx.trainer.data import TOKENIZERS
from rnnx.trainer.evaluate import describe_loss
from rnnx.trainer.limits import MAX_RNG_SEED, number, text, whole

DEFAULT_OUT = Path("artifacts/default")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
LIMIT_FIELDS = ("epochs", "steps", "minutes", "device", "precision", "max_data_mb")  # what a resume may change


# The sampling settings a model's file carries for rnn-run (rnnx.runtime.contract.GENERATION_KEYS), by tokenizer.
# Greedy text from a small word model loops ("I had the of the which I had the of the which"); a repetition
# penalty breaks the loops (see docs/training.md for samples). Characters repeat by nature: no default.
GENERATION: dict[str, dict[str, float]] = {"word": {"repetition_penalty": 1.3}, "char": {}}

MAX_LR = 1e30  # float32 optimizer arithmetic overflows past ~3e38; far below that, training diverges anyway


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None = None  # a text file or a folder of .txt files; None trains on the built-in three sentences
    out: Path = DEFAULT_OUT
    tokenizer: str = "char"  # char or word
    max_vocab: int = 0  # word tokenizer: keep at most this many entries, <unk> included (0: no cap)
    min_freq: int = 1  # word tokenizer: rarer words become <unk>
    epochs: int = 200  # limits: whichever of epochs, steps and minutes comes first ends the run
    steps: int = 0  # 0: no step limit
    minutes: float = 0.0  # 0: no time limit; counts the whole run, resumed parts included
    batch_size: int = 64
    seq_len: int = 100  # tokens per stream per step (truncated BPTT length)
    state_reset: float = 0.0  # chance that a stream starts a step from a zero state, not the carried one
    lr: float = 0.01
    weight_decay: float = 0.0  # AdamW's, on weight matrices only
    ema: float = 0.0  # decay of the weight average that validation scores and the model holds; 0 is off
    clip: float = 0.0  # maximum gradient norm; 0 is off
    schedule: str = "constant"  # cosine: warm-up, then cosine decay to min_lr at the end of the first limit
    warmup: int = 0  # steps of linear warm-up
    min_lr: float = 0.0  # the cosine schedule's last learning rate, as a fraction of lr
    eval_every: int = 0  # validate every this many steps; 0: at each epoch's end
    eval_seconds: float = 60.0  # ...and at least this often (on a GPU epochs end in seconds)
    patience: int = 0  # stop after this many validations without a new best; 0: never stop early
    checkpoint_every: int = 0  # write checkpoint.safetensors every this many steps; 0: at each validation
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    precision: str = "fp32"  # auto: bf16 autocast where the hardware is fast at it (CUDA, CPUs with AMX)
    rng_seed: int = 0  # 0 to 2**64 - 1, as torch.manual_seed and rnn-run take
    max_data_mb: float = 0.0  # refuse a corpus larger than this; 0: 1/32 of the memory available (limits.data_limit)

    def __post_init__(self) -> None:
        """Types and ranges, for flags and for the settings a checkpoint brings back alike."""
        if not (self.data is None or isinstance(self.data, Path)) or not isinstance(self.out, Path):
            raise UsageError(f"data and out must be paths, got {self.data!r} and {self.out!r}")
        for name in ("steps", "warmup", "eval_every", "patience", "checkpoint_every", "max_vocab"):
            whole(name.replace("_", "-"), getattr(self, name), 0)
        for name in ("epochs", "batch_size", "seq_len", "min_freq"):
            whole(name.replace("_", "-"), getattr(self, name), 1)
        whole("the random seed (--rng-seed)", self.rng_seed, 0, MAX_RNG_SEED)
        for name in ("minutes", "state_reset", "lr", "weight_decay", "ema", "clip", "min_lr", "eval_seconds"):
            number(name.replace("_", "-"), getattr(self, name))
        if number("max-data-mb", self.max_data_mb) < 0:
            raise UsageError(f"max-data-mb must be 0 (automatic) or more, got {self.max_data_mb}")
        if self.minutes < 0:
            raise UsageError(f"minutes must be 0 or more, got {self.minutes}")
        if not 0 < self.lr <= MAX_LR:
            raise UsageError(f"learning rate must be positive, at most {MAX_LR:g}, got {self.lr}")
        if not 0 <= self.state_reset <= 1:
            raise UsageError(f"state-reset is a probability in [0, 1] (0 is off), got {self.state_reset}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema must be in [0, 1) (0 is off; 0.999 a typical decay), got {self.ema}")
        if self.weight_decay < 0 or self.clip < 0 or not 0 <= self.min_lr <= 1 or self.eval_seconds <= 0:
            raise UsageError("weight decay and clip must be 0 or more, min-lr in [0, 1], eval-seconds positive")
        text("tokenizer", self.tokenizer, TOKENIZERS)
        text("schedule", self.schedule, SCHEDULES)
        text("precision", self.precision, PRECISIONS)
        text("device", self.device, DEVICES)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON; the data path absolute, so that `--resume` finds it from any directory."""
        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        if self.data is not None:
            values["data"] = os.path.abspath(self.data)
        return values

    @classmethod
    def from_json(cls, data: dict[str, Any], out: Path) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        data = values.get("data")
        if not (data is None or isinstance(data, str)):
            raise UsageError(f"the data path must be text, got {data!r}")
        values["data"] = Path(data) if data else None
        return cls(**{**values, "out": out})


@dataclass(frozen=True)
class TrainResult:
    out: Path
    final_loss: float  # mean training loss over the last logged steps
    epochs: int  # epochs started
    seconds: float
    steps: int = 0
    tokens: int = 0
    tokens_per_second: float = 0.0  # training steps only, validation and checkpoints excluded
    best_val_loss: float | None = None  # nats/token; None without validation text (the built-in sentences)
    best_step: int = 0
    unit: str = "char"

    def summary(self) -> str:
        val = (
            f"best val {describe_loss(self.best_val_loss, self.unit)} at step {self.best_step}; "
            if (self.best_val_loss is not None)
            else ""
        )
        return (
            f"{val}train loss {self.final_loss:.4f} after {self.steps} steps ({self.epochs} epochs), "
            f"{self.tokens / 1e6:.2f}M tokens at {self.tokens_per_second / 1000:.1f}k tokens/s in {self.seconds:.0f}s"
        )

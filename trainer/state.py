"""A run's state, with one owner: `TrainState` holds the model, optimizer, weight average, progress, carried TBPTT
state, tokenizer and settings, and is the only code that writes it to `checkpoint.safetensors` or reads it back.

    state = TrainState.fresh(model_config, config, tokenizer, digest, device)   # rnn-train
    state = TrainState.read(out, limits).build(device, ranks)                   # rnn-train --resume
    state.save(out, ranks)                                                      # every checkpoint

The file holds tensors named `model.*` (weights), `ema.*` (weight average), `optim.<i>.*` (AdamW's moments),
`rng.cpu` and `rng.cuda` (and `rng.cpu.<rank>`, `rng.cuda.<rank>` for the other processes of a torchrun run) and
`carry.<i>` (the carried state of every stream of the global batch), and as JSON in its header: progress, both
configs, tokenizer, the data's digest, AdamW's settings (a record for people; a resume takes them from the run's
settings) and the number of processes. A checkpoint is a file from outside: every setting, counter, shape, type
and number is checked before a run continues from it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.tokenizer import Tokenizer, tokenizer_from_dict
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import (
    describe_error,
    load_train_state,
    model_config_from_json,
    plain_tensors,
    save_train_state,
)
from rnnx.trainer.config import LIMIT_FIELDS, TrainConfig
from rnnx.trainer.distributed import Ranks
from rnnx.trainer.guards import all_finite
from rnnx.trainer.limits import MAX_COUNT, MAX_SECONDS, number, whole
from rnnx.trainer.model import RNNLM, ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; exactly what a checkpoint restores."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next batch within the epoch
    tokens: int = 0  # of all processes together
    elapsed: float = 0.0  # seconds of the run so far, across resumes
    train_seconds: float = 0.0  # seconds spent in training steps
    best_val: float | None = None
    best_step: int = 0
    evals_since_best: int = 0

    def __post_init__(self) -> None:
        """Types, ranges and the counters' agreement: a checkpoint is a file from outside, and neither `"step":
        "abc"` nor `"epoch": 10**20` (which overflowed a torch seed as the run resumed) must reach the loop."""
        for name in ("step", "epoch", "index", "tokens", "best_step", "evals_since_best"):
            whole(f"progress {name}", getattr(self, name), 0, MAX_COUNT)
        for name in ("elapsed", "train_seconds"):
            if not 0 <= number(f"progress {name}", getattr(self, name)) <= MAX_SECONDS:
                raise UsageError(
                    f"progress {name} must be from 0 to {MAX_SECONDS:g} seconds, got {getattr(self, name)}"
                )
        if self.best_val is not None and number("progress best_val", self.best_val) < 0:
            raise UsageError(f"progress best_val is a loss, 0 or more, got {self.best_val}")
        for name in ("epoch", "index", "best_step"):  # each epoch, batch and best model took a step at least
            if getattr(self, name) > self.step:
                raise UsageError(f"progress {name} {getattr(self, name)} is past step {self.step}")
        if self.evals_since_best > 2 * self.step:  # one validation per step, and one more as each run ends
            raise UsageError(f"progress evals_since_best {self.evals_since_best} is more than step {self.step} allows")

    def check_position(self, steps_per_epoch: int, tokens_per_step: int) -> None:
        """The counters agree with the batches the data gives: `step` steps are `epoch` whole epochs and `index`
        batches, of `tokens_per_step` tokens each (UsageError naming the counter that does not)."""
        if self.index >= steps_per_epoch:
            raise UsageError(f"batch {self.index} of an epoch of {steps_per_epoch}")
        if self.step != self.epoch * steps_per_epoch + self.index:
            raise UsageError(
                f"step {self.step} is not epoch {self.epoch} x {steps_per_epoch} steps + batch {self.index}"
            )
        if self.tokens > self.step * tokens_per_step:
            raise UsageError(f"{self.tokens} tokens in {self.step} steps of {tokens_per_step}")


def make_optimizer(model: RNNLM, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases); fused (one kernel for all weights, no
    per-tensor loop on the host) where torch has it for the device."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


@dataclass
class TrainState:
    """Everything a run is, in memory. Under torchrun each process holds the same weights, optimizer and progress,
    and its own part of the carried state (its streams) and its own random state."""

    model: RNNLM
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    progress: Progress
    carry: tuple[torch.Tensor, ...] | None  # this process's carried state (layers, B, H); None before step one
    tokenizer: Tokenizer
    config: TrainConfig  # batch_size is per process
    data_sha256: str

    @classmethod
    def fresh(
        cls, model_config: ModelConfig, config: TrainConfig, tokenizer: Tokenizer, digest: str, device: torch.device
    ) -> TrainState:
        model = RNNLM(model_config).to(device)
        average = WeightAverage(model, config.ema) if config.ema else None
        return cls(model, make_optimizer(model, config), average, Progress(), None, tokenizer, config, digest)

    @staticmethod
    def read(directory: Path, limits: dict[str, Any]) -> SavedState:
        """The checked contents of `directory/checkpoint.safetensors`; `limits` may change LIMIT_FIELDS."""
        tensors, meta = load_train_state(directory)
        model_config, saved, tokenizer, progress = _saved_run(directory, meta)
        world = meta.get("world_size", 1)
        try:
            whole("world_size", world, 1)
            if saved.data is not None:  # the built-in sentences start every step cold: nothing carried
                _check_streams(tensors, saved.batch_size * world)
        except UsageError as exc:
            raise ModelFileError(f"checkpoint in {directory} is corrupt ({exc}): start a fresh run") from None
        config = replace(saved, **{k: v for k, v in limits.items() if k in LIMIT_FIELDS and v is not None})
        digest = str(meta.get("data_sha256"))
        return SavedState(model_config, config, tokenizer, progress, digest, world, tensors)

    def save(self, directory: Path, ranks: Ranks) -> bool:
        """Write the checkpoint (the first process writes; every process takes part). False, and nothing written,
        when a weight, moment or carried state is not finite: a good checkpoint is never replaced by a broken one."""
        tensors = self._tensors(ranks)
        if ranks.agree([not all_finite(list(tensors.values()))])[0]:
            return False
        if ranks.main:
            save_train_state(directory, tensors, self._meta(ranks.world))
        return True

    def _meta(self, world: int) -> dict[str, Any]:
        return {
            "progress": asdict(self.progress),
            "model": asdict(self.model.config),
            "training": self.config.to_json(),
            "tokenizer": self.tokenizer.to_dict(),
            "data_sha256": self.data_sha256,
            "optimizer_groups": [dict(g) for g in self.optimizer.state_dict()["param_groups"]],
            "world_size": world,
        }

    def _tensors(self, ranks: Ranks) -> dict[str, torch.Tensor]:
        """Weights, weight average, AdamW moments, random states and every stream's carried state, by name."""
        tensors = {f"model.{k}": v for k, v in plain_tensors(self.model.state_dict()).items()}
        if self.average is not None:
            tensors.update(self.average.tensors())
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value
        for rank, rng in enumerate(ranks.gather(torch.get_rng_state())):
            tensors["rng.cpu" if rank == 0 else f"rng.cpu.{rank}"] = rng
        if self.model.head.weight.is_cuda:  # dropout masks on a GPU draw from its own generator
            for rank, rng in enumerate(ranks.gather(torch.cuda.get_rng_state())):
                tensors["rng.cuda" if rank == 0 else f"rng.cuda.{rank}"] = rng
        carry = self.carry if self.carry is not None else self.model.init_state(self.config.batch_size)
        for i, s in enumerate(carry):
            tensors[f"carry.{i}"] = torch.cat(ranks.gather(s.float().cpu()), dim=1)  # (layers, B x world, H)
        return tensors


@dataclass
class SavedState:
    """A checkpoint read and checked, not yet turned into a model on a device."""

    model_config: ModelConfig
    config: TrainConfig
    tokenizer: Tokenizer
    progress: Progress
    data_sha256: str
    world: int  # processes that wrote it
    tensors: dict[str, torch.Tensor]

    def for_processes(self, world: int) -> SavedState:
        """The same run for `world` processes: the global batch stays, each process takes its share of it."""
        if world == self.world:
            return self
        streams = self.config.batch_size * self.world
        if streams % world:
            raise UsageError(
                f"the run's global batch of {streams} streams cannot be shared by {world} processes: resume it with "
                f"a number of processes that divides {streams}"
            )
        log.warning(
            "resuming a run of %d process(es) on %d: each reads %d streams instead of %d (global batch %d, data "
            "position and weights unchanged); the random state of processes the run did not have is seeded afresh, "
            "so dropout masks differ from an uninterrupted run",
            self.world,
            world,
            streams // world,
            self.config.batch_size,
            streams,
        )
        return replace(self, config=replace(self.config, batch_size=streams // world))

    def build(self, device: torch.device, ranks: Ranks) -> TrainState:
        """The model, optimizer and weight average on `device`, with every tensor checked and loaded."""
        state = TrainState.fresh(self.model_config, self.config, self.tokenizer, self.data_sha256, device)
        state.progress = self.progress
        try:
            state.carry = self._restore(state, ranks)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(
                f"the checkpoint does not fit its own settings ({describe_error(exc)}): start a fresh run"
            ) from None
        return state

    def _restore(self, state: TrainState, ranks: Ranks) -> tuple[torch.Tensor, ...]:
        """Load weights, average, optimizer and random state; returns this process's carried state.

        The optimizer's settings come from the run's settings (they were saved from them), only its state from
        the file."""
        tensors, model, optimizer = self.tensors, state.model, state.optimizer
        bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ModelFileError(f"the checkpoint holds numbers that are not finite ({bad[0]}): start a fresh run")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if state.average is not None:
            state.average.load(tensors)
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                moments.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
        _check_optimizer_state(optimizer)
        self._restore_random(tensors, ranks, model.head.weight.device)
        if self.config.data is None:  # the built-in sentences: each step starts cold, the file's carry is unused
            return model.init_state(self.config.batch_size)
        count = sum(1 for k in tensors if k.startswith("carry."))
        streams = self.config.batch_size
        carry = tuple(tensors[f"carry.{i}"][:, ranks.rank * streams : (ranks.rank + 1) * streams] for i in range(count))
        _check_carry(model, carry, streams)
        return tuple(s.to(model.head.weight.device, torch.float32) for s in carry)

    def _restore_random(self, tensors: dict[str, torch.Tensor], ranks: Ranks, device: torch.device) -> None:
        """Each process's own random state where the checkpoint has it; a fresh seed of its own where not."""
        suffix = "" if ranks.rank == 0 else f".{ranks.rank}"
        if self.world == ranks.world or ranks.rank == 0:
            torch.set_rng_state(tensors[f"rng.cpu{suffix}"])
        else:
            torch.manual_seed(ranks.seed(self.config.rng_seed, self.progress.step))  # seeds the GPUs too
        if device.type == "cuda" and f"rng.cuda{suffix}" in tensors and (self.world == ranks.world or not suffix):
            torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"])


def _check_streams(tensors: dict[str, torch.Tensor], streams: int) -> None:
    """The carried states hold one row per stream of the global batch the header claims (batch x world size):
    checked before a resume on another number of processes shares them out."""
    for name, value in sorted(tensors.items()):
        if name.startswith("carry.") and (value.dim() != 3 or value.size(1) != streams):
            raise UsageError(f"{name} of shape {tuple(value.shape)} for a global batch of {streams} streams")


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every moment the checkpoint brought back is a float tensor of its weight's shape, every step count one
    number, 0 or more (AdamW would fail mid-step, or divide by zero, otherwise)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key == "step" and (value.numel() != 1 or float(value) < 0 or float(value) != int(value)):
                    raise ValueError(f"optimizer step of shape {tuple(value.shape)} (one whole number 0 or more)")
                if key != "step" and (value.shape != param.shape or not value.is_floating_point()):
                    shapes = f"{tuple(value.shape)} {value.dtype} for a weight of {tuple(param.shape)}"
                    raise ValueError(f"optimizer {key} of shape {shapes}")


def _check_carry(model: RNNLM, carry: tuple[torch.Tensor, ...], streams: int) -> None:
    config = model.config
    if len(carry) != (2 if config.cell == "lstm" else 1):
        raise ValueError(f"{len(carry)} carried states for an {config.cell.upper()}")
    for s in carry:
        if not s.is_floating_point():
            raise ValueError(f"a carried state of {s.dtype} (floating point expected)")
        if s.dim() != 3 or s.size(0) != config.layers or s.size(2) != config.hidden or s.size(1) != streams:
            raise ValueError(
                f"a carried state of shape {tuple(s.shape)} for {config.layers} x {streams} streams x {config.hidden}"
            )


def _saved_run(out: Path, meta: dict[str, Any]) -> tuple[ModelConfig, TrainConfig, Tokenizer, Progress]:
    """The settings, vocabulary and progress a checkpoint's JSON holds, each checked."""
    where = f"checkpoint in {out}"
    model_config = model_config_from_json(meta.get("model"), where)
    try:
        if not isinstance(meta.get("training"), dict) or not isinstance(meta.get("progress"), dict):
            raise KeyError("training or progress")
        saved = TrainConfig.from_json(meta["training"], out)
        progress = Progress(**meta["progress"])
    except (RnnxError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where} is corrupt ({describe_error(exc)}): start a fresh run") from None
    try:
        tokenizer = tokenizer_from_dict(meta.get("tokenizer"))
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    if len(tokenizer.vocab) != model_config.vocab_size:
        raise ModelFileError(
            f"{where} is corrupt: its vocabulary has {len(tokenizer.vocab)} tokens and its model "
            f"{model_config.vocab_size}: start a fresh run"
        )
    return model_config, saved, tokenizer, progress

"""Training: `rnn-train` with no arguments fits the built-in three-sentence vanilla RNN in seconds;
`rnn-train --preset shakespeare-lstm --data text.txt --minutes 10` trains a character LSTM on real text.

Everything that can be wrong with the input (data, vocabulary, sizes, checkpoint to resume) is checked before
the output directory is touched. The run then writes, atomically each time: the best model so far
(`model.safetensors` + `model.json`), `checkpoint.safetensors` to resume from, `metrics.jsonl` and `loss.png`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import describe_error, load_train_state, plain_tensors, save_model, save_train_state
from rnnx.trainer.data import (
    DEFAULT_LINES,
    TOKENIZERS,
    LineBatches,
    StreamBatches,
    build_tokenizer,
    line_examples,
    read_corpus,
    split_ids,
)
from rnnx.trainer.evaluate import describe_loss, stateful_loss
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.report import MetricsLog, write_loss_plot

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts/default")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
VAL_STREAMS = 32  # validation reads the held-out text as this many contiguous pieces side by side
LIMIT_FIELDS = ("epochs", "steps", "minutes", "device", "precision")  # what a resumed run may change


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
    rng_seed: int = 0

    def __post_init__(self) -> None:
        numbers = (self.minutes, self.lr, self.weight_decay, self.clip, self.min_lr, self.eval_seconds, self.ema)
        if not all(math.isfinite(x) for x in numbers):
            raise UsageError("minutes, lr, weight decay, ema, clip, min-lr and eval-seconds must be finite numbers")
        if self.rng_seed < 0:
            raise UsageError(f"the random seed must be 0 or more, got {self.rng_seed}")
        if self.epochs < 1 or self.batch_size < 1 or self.seq_len < 1:
            raise UsageError("epochs, batch size and sequence length must be positive")
        if min(self.steps, self.minutes, self.warmup, self.eval_every, self.checkpoint_every, self.patience) < 0:
            raise UsageError("steps, minutes, warmup, eval-every, checkpoint-every and patience must be 0 or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema must be in [0, 1) (0 is off; 0.999 a typical decay), got {self.ema}")
        if self.weight_decay < 0 or self.clip < 0 or not 0 <= self.min_lr <= 1 or self.eval_seconds <= 0:
            raise UsageError("weight decay and clip must be 0 or more, min-lr in [0, 1], eval-seconds positive")
        if self.tokenizer not in TOKENIZERS:
            raise UsageError(f"unknown tokenizer {self.tokenizer!r}: choose one of {', '.join(TOKENIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.max_vocab < 0 or self.min_freq < 1:
            raise UsageError("max-vocab must be 0 (no cap) or more, and min-freq 1 or more")

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], out: Path) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["data"] = Path(values["data"]) if values.get("data") else None
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


@dataclass
class Progress:
    """Where a run stands; exactly what a checkpoint restores."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next batch within the epoch
    tokens: int = 0
    elapsed: float = 0.0  # seconds of the run so far, across resumes
    train_seconds: float = 0.0  # seconds spent in training steps
    best_val: float | None = None
    best_step: int = 0
    evals_since_best: int = 0


@dataclass
class Setup:
    tokenizer: Tokenizer
    batches: LineBatches | StreamBatches
    val_ids: torch.Tensor | None
    data_sha256: str


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise RnnxError("--device cuda was asked for, but torch sees no GPU here: use --device cpu or auto")
    return torch.device("cpu")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast (weights, optimizer and validation stay fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # oneDNN runs bf16 LSTMs ~2.6x faster on AMX
    return bool(amx and amx())


def prepare(config: TrainConfig, device: torch.device, tokenizer: Tokenizer | None = None) -> Setup:
    """Read and check the data, fit the tokenizer (unless given) and cut the batches; writes nothing."""
    if config.data is None:
        tokenizer = tokenizer or CharTokenizer.build("".join(DEFAULT_LINES))
        examples = line_examples(DEFAULT_LINES, tokenizer).to(device)
        digest = hashlib.sha256("\n".join(DEFAULT_LINES).encode()).hexdigest()
        return Setup(tokenizer, LineBatches(examples, config.batch_size, config.rng_seed), None, digest)
    text = read_corpus(config.data)
    tokenizer = tokenizer or build_tokenizer(text, config.tokenizer, config.max_vocab, config.min_freq)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids)
    if len(val_ids) < 2:
        raise RnnxError(f"{config.data} is too short to hold out validation text: give it more text")
    batches = StreamBatches(train_ids.to(device), config.batch_size, config.seq_len, config.rng_seed)
    return Setup(tokenizer, batches, val_ids.to(device), hashlib.sha256(text.encode()).hexdigest())


def make_optimizer(model: RNNLM, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def learning_rate(config: TrainConfig, step: int, fraction_done: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_lr * lr` at the run's end."""
    warm = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    if config.schedule == "constant":
        return config.lr * warm
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(fraction_done, 0.0), 1.0)))
    return config.lr * warm * (config.min_lr + (1 - config.min_lr) * cosine)


def fraction_done(config: TrainConfig, progress: Progress, steps_per_epoch: int) -> float:
    """How far the run is towards whichever limit it reaches first (0 to 1)."""
    parts = [progress.step / (config.epochs * steps_per_epoch)]
    if config.steps:
        parts.append(progress.step / config.steps)
    if config.minutes:
        parts.append(progress.elapsed / (config.minutes * 60))
    return max(parts)


def _train_state_tensors(
    model: RNNLM, optimizer: torch.optim.Optimizer, carry: tuple, average: WeightAverage | None
) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in plain_tensors(model.state_dict()).items()}
    if average is not None:
        tensors.update(average.tensors())
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and model.head.weight.is_cuda:
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for i, s in enumerate(carry):
        tensors[f"carry.{i}"] = s.float()
    return tensors


def _restore(
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    average: WeightAverage | None,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> tuple:
    """Load weights, weight average, optimizer and random state from a checkpoint; returns the TBPTT state."""
    device = model.head.weight.device
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if average is not None:
            average.load(tensors)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"the checkpoint does not fit its own settings ({describe_error(exc)}): start a fresh run"
        ) from None
    count = sum(1 for k in tensors if k.startswith("carry."))
    return tuple(tensors[f"carry.{i}"].to(device) for i in range(count))


def _train_record(progress: Progress, loss: float, lr: float | None = None) -> dict[str, Any]:
    """One `train` line of metrics.jsonl: where the run is and its mean loss since the last line."""
    record = {
        "event": "train",
        "step": progress.step,
        "epoch": progress.epoch,
        "tokens": progress.tokens,
        "seconds": progress.elapsed,
    }
    return {**record, "lr": lr, "loss": loss} if lr is not None else {**record, "loss": loss}


class _Run:
    """One training run from `progress` on: the loop, validation, checkpoints and reports."""

    def __init__(
        self, model, optimizer, average: WeightAverage | None, setup: Setup, config: TrainConfig, device, show: bool
    ) -> None:
        self.model, self.optimizer, self.setup, self.config, self.device = model, optimizer, setup, config, device
        self.average = average
        self.show = show
        self.unit = "char" if setup.tokenizer.kind == "char" else "word"
        bf16 = use_bf16(config.precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def document(self, progress: Progress) -> dict[str, Any]:
        return {
            "training": self.config.to_json(),
            "data_sha256": self.setup.data_sha256,
            "step": progress.step,
            "val_loss": progress.best_val,
            "val_protocol": f"stateful, {VAL_STREAMS} streams" if progress.best_val is not None else None,
        }

    def checkpoint(self, progress: Progress, carry: tuple) -> None:
        groups = [dict(g) for g in self.optimizer.state_dict()["param_groups"]]
        meta = {
            "progress": asdict(progress),
            "model": asdict(self.model.config),
            "training": self.config.to_json(),
            "tokenizer": self.setup.tokenizer.to_dict(),
            "data_sha256": self.setup.data_sha256,
            "optimizer_groups": groups,
        }
        tensors = _train_state_tensors(self.model, self.optimizer, carry, self.average)
        save_train_state(self.config.out, tensors, meta)

    def averaged(self) -> contextlib.AbstractContextManager:
        """The weights to score and keep: the running average with --ema, else the trained ones."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def validate(self, progress: Progress, metrics: MetricsLog) -> bool:
        """Validate, keep the model if it is the best so far; True when early stopping says stop."""
        with self.averaged():
            return self._validate(progress, metrics)

    def _validate(self, progress: Progress, metrics: MetricsLog) -> bool:
        val = stateful_loss(self.model, self.setup.val_ids, streams=VAL_STREAMS, chunk=256)
        record = {"event": "val", "step": progress.step, "tokens": progress.tokens, "seconds": progress.elapsed}
        record["val_loss"] = val
        record["val_bpc" if self.unit == "char" else "val_ppl"] = (
            val / math.log(2) if self.unit == "char" else math.exp(min(val, 50))
        )
        metrics.write(record)
        if progress.best_val is None or val < progress.best_val:
            progress.best_val, progress.best_step, progress.evals_since_best = val, progress.step, 0
            save_model(self.config.out, self.model, self.setup.tokenizer, self.document(progress))
        else:
            progress.evals_since_best += 1
        return bool(self.config.patience) and progress.evals_since_best >= self.config.patience

    def run(self, progress: Progress, carry: tuple | None) -> TrainResult:
        config, model, batches = self.config, self.model, self.setup.batches
        config.out.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(config.out, progress.step if carry is not None else None)
        carry = carry if carry else model.init_state(config.batch_size)
        bar = tqdm(
            total=1000,
            desc="training",
            disable=None if self.show else True,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        )
        start = time.monotonic() - progress.elapsed
        last_eval = last_log = time.monotonic()
        log_step, loss_sum, loss_count, val_text = progress.step, 0.0, 0, "-"
        final_loss = float("nan")
        model.train()
        try:
            while True:
                done = fraction_done(config, progress, batches.steps_per_epoch)
                if done >= 1:
                    break
                lr = learning_rate(config, progress.step, done)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.monotonic()
                loss, carry = self._step(batches.get(progress.epoch, progress.index), carry)
                if self.average is not None:
                    self.average.update(progress.step)
                progress.train_seconds += time.monotonic() - t0
                if not math.isfinite(loss):
                    raise RnnxError("training diverged (the loss is not finite): lower --lr or set --clip")
                loss_sum, loss_count = loss_sum + loss, loss_count + 1
                progress.step += 1
                progress.tokens += batches.tokens_per_step
                progress.index += 1
                epoch_end = progress.index == batches.steps_per_epoch
                if epoch_end:
                    progress.epoch, progress.index = progress.epoch + 1, 0
                now = time.monotonic()
                progress.elapsed = now - start
                if progress.step - log_step >= 10 and now - last_log >= 0.2 or epoch_end and loss_count:
                    final_loss = loss_sum / loss_count
                    metrics.write(_train_record(progress, final_loss, lr))
                    log_step, last_log, loss_sum, loss_count = progress.step, now, 0.0, 0
                stop = False
                due = (
                    config.eval_every
                    and progress.step % config.eval_every == 0
                    or (not config.eval_every and epoch_end)
                    or now - last_eval >= config.eval_seconds
                )
                if self.setup.val_ids is not None and due:
                    stop = self.validate(progress, metrics)
                    val_text = f"{progress.best_val:.4f}"
                    last_eval = time.monotonic()
                    if not config.checkpoint_every:
                        self.checkpoint(progress, carry)
                if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                    self.checkpoint(progress, carry)
                self._show(bar, progress, final_loss, val_text)
                if stop:
                    log.info("no better validation loss for %d evaluations: stopping early", config.patience)
                    break
            if loss_count:
                final_loss = loss_sum / loss_count
                metrics.write(_train_record(progress, final_loss))
            if self.setup.val_ids is None:
                with self.averaged():
                    extra = {**self.document(progress), "final_loss": final_loss}
                    save_model(config.out, model, self.setup.tokenizer, extra)
            elif progress.best_step != progress.step:
                self.validate(progress, metrics)
            self.checkpoint(progress, carry)
        except KeyboardInterrupt:
            self.checkpoint(progress, carry)  # Ctrl-C loses nothing: --resume continues from here
            raise
        finally:
            bar.close()
            metrics.close()
            write_loss_plot(config.out, self.unit)
        return TrainResult(
            out=config.out,
            final_loss=final_loss,
            epochs=progress.epoch + (progress.index > 0),
            seconds=progress.elapsed,
            steps=progress.step,
            tokens=progress.tokens,
            tokens_per_second=progress.tokens / max(progress.train_seconds, 1e-9),
            best_val_loss=progress.best_val,
            best_step=progress.best_step,
            unit=self.unit,
        )

    def _step(self, batch, carry: tuple) -> tuple[float, tuple]:
        model = self.model
        if not batch.stateful:
            carry = model.init_state(batch.inputs.size(0))
        with self.autocast:
            logits, new = model(batch.inputs, carry)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.config.clip)
        self.optimizer.step()
        return float(loss.detach()), tuple(s.detach().float() for s in new)

    def _show(self, bar: tqdm, progress: Progress, loss: float, val: str) -> None:
        if bar.disable:
            return
        done = fraction_done(self.config, progress, self.setup.batches.steps_per_epoch)
        left = progress.elapsed / done * (1 - done) if done > 0 else 0.0
        speed = progress.tokens / max(progress.train_seconds, 1e-9)
        bar.n = int(1000 * min(done, 1.0))
        bar.set_postfix_str(
            f"loss {loss:.4f} val {val} {speed / 1000:.1f}k tok/s left {int(left // 60)}:{int(left % 60):02d}",
            refresh=False,
        )
        bar.update(0)


def train(model_config: ModelConfig, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model on `config.data` and write it to `config.out`."""
    torch.manual_seed(config.rng_seed)
    device = resolve_device(config.device)
    setup = prepare(config, device)
    model_config = replace(model_config, vocab_size=len(setup.tokenizer.vocab))
    model = RNNLM(model_config).to(device)
    average = WeightAverage(model, config.ema) if config.ema else None
    run = _Run(model, make_optimizer(model, config), average, setup, config, device, progress)
    result = run.run(Progress(), None)
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result


def resume(out: Path, limits: dict[str, Any], progress: bool = True) -> TrainResult:
    """Continue the run whose checkpoint is in `out`; `limits` may change epochs, steps, minutes and device."""
    tensors, meta = load_train_state(out)
    try:
        model_config = ModelConfig(**meta["model"])
        saved = TrainConfig.from_json(meta["training"], out)
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        state = Progress(**meta["progress"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"checkpoint in {out} is corrupt ({describe_error(exc)}): start a fresh run") from None
    config = replace(saved, **{k: v for k, v in limits.items() if k in LIMIT_FIELDS and v is not None})
    device = resolve_device(config.device)
    setup = prepare(config, device, tokenizer)
    if setup.data_sha256 != meta.get("data_sha256"):
        raise RnnxError(f"{config.data} changed since the checkpoint was written: resume with the same data")
    if fraction_done(config, state, setup.batches.steps_per_epoch) >= 1:
        raise UsageError(
            f"the run in {out} already reached its limit (step {state.step}, epoch {state.epoch}): "
            "give a larger --epochs, --steps or --minutes to train on"
        )
    model = RNNLM(model_config).to(device)
    optimizer = make_optimizer(model, config)
    average = WeightAverage(model, config.ema) if config.ema else None
    carry = _restore(model, optimizer, average, tensors, meta)
    log.info("resuming at step %d (epoch %d)", state.step, state.epoch)
    result = _Run(model, optimizer, average, setup, config, device, progress).run(state, carry)
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result

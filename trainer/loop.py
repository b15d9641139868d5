"""The training loop: one `Run` goes from a `Progress` to the run's end, validating, keeping the best model and
writing checkpoints and metrics on the way (`state` turns the training state into a checkpoint's tensors and back)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rnnx.runtime.errors import RnnxError, UsageError
from rnnx.runtime.tokenizer import Tokenizer
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import save_model, save_train_state
from rnnx.trainer.config import TrainConfig, TrainResult
from rnnx.trainer.data import LineBatches, StreamBatches
from rnnx.trainer.evaluate import stateful_loss
from rnnx.trainer.guards import LossMeter, Stopped, StopRequests, all_finite, diverged
from rnnx.trainer.limits import number, whole
from rnnx.trainer.report import MetricsLog, write_loss_plot
from rnnx.trainer.state import state_tensors

log = logging.getLogger(__name__)

VAL_STREAMS = 32  # validation reads the held-out text as this many contiguous pieces side by side


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

    def __post_init__(self) -> None:
        """Types and ranges: a checkpoint is a file from outside, and `"step": "abc"` must not reach the loop."""
        for name in ("step", "epoch", "index", "tokens", "best_step", "evals_since_best"):
            whole(f"progress {name}", getattr(self, name), 0)
        for name in ("elapsed", "train_seconds"):
            if number(f"progress {name}", getattr(self, name)) < 0:
                raise UsageError(f"progress {name} must be 0 or more, got {getattr(self, name)}")
        if self.best_val is not None:
            number("progress best_val", self.best_val)


@dataclass
class Setup:
    tokenizer: Tokenizer
    batches: LineBatches | StreamBatches
    val_ids: torch.Tensor | None
    data_sha256: str


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast (weights, optimizer and validation stay fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # oneDNN runs bf16 LSTMs ~2.6x faster on AMX
    return bool(amx and amx())


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


def reset_streams(state: tuple[torch.Tensor, ...], chance: float) -> tuple[torch.Tensor, ...]:
    """Zero each stream's carried state (layers, B, H) with probability `chance`, drawn from torch's CPU generator.

    A model trained only on carried states rarely sees a step start cold, yet every prompt and every windowed
    score does; resetting a few streams per step teaches both without giving up long carried context.
    """
    keep = (torch.rand(state[0].size(1)) >= chance).to(state[0].device)  # (B,) bool
    return tuple(torch.where(keep[None, :, None], s, 0.0) for s in state)


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


class Run:
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
        self.saved_step: int | None = None  # the step of the newest checkpoint on disk (None: none from this run)
        self.meter = LossMeter(device)  # training losses since the last `train` record

    def document(self, progress: Progress) -> dict[str, Any]:
        return {
            "training": self.config.to_json(),
            "data_sha256": self.setup.data_sha256,
            "step": progress.step,
            "val_loss": progress.best_val,
            "val_protocol": f"stateful, {VAL_STREAMS} streams" if progress.best_val is not None else None,
        }

    def diverged_error(self, progress: Progress, what: str) -> RnnxError:
        kept = (
            f"the checkpoint of step {self.saved_step} and the best model are kept"
            if self.saved_step is not None
            else "no checkpoint or model of this run was saved"
        )
        return RnnxError(
            f"training diverged by step {progress.step} ({what}): lower --lr (it is {self.config.lr:g}) "
            f"or set --clip; {kept}"
        )

    def check_loss(self, progress: Progress) -> None:
        """Raise if the training losses not yet logged show divergence (reads them from the device)."""
        if self.meter.count and diverged(loss := self.meter.mean(), self.model.config.vocab_size):
            raise self.diverged_error(progress, f"mean training loss {loss:.4g} nats/token")

    def checkpoint(self, progress: Progress, carry: tuple) -> None:
        """Write checkpoint.safetensors, unless the state has diverged: a good checkpoint is never replaced by one."""
        self.check_loss(progress)
        groups = [dict(g) for g in self.optimizer.state_dict()["param_groups"]]
        meta = {
            "progress": asdict(progress),
            "model": asdict(self.model.config),
            "training": self.config.to_json(),
            "tokenizer": self.setup.tokenizer.to_dict(),
            "data_sha256": self.setup.data_sha256,
            "optimizer_groups": groups,
        }
        tensors = state_tensors(self.model, self.optimizer, carry, self.average)
        if not all_finite(list(tensors.values())):
            raise self.diverged_error(progress, "weights or optimizer state not finite")
        save_train_state(self.config.out, tensors, meta)
        self.saved_step = progress.step

    def save(self, progress: Progress, extra: dict[str, Any]) -> None:
        """Replace the model directory's model with the current (averaged) weights, if they are finite."""
        if not all_finite([p.detach() for p in self.model.parameters()]):
            raise self.diverged_error(progress, "weights not finite")
        save_model(self.config.out, self.model, self.setup.tokenizer, {**self.document(progress), **extra})

    def averaged(self) -> contextlib.AbstractContextManager:
        """The weights to score and keep: the running average with --ema, else the trained ones."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def validate(self, progress: Progress, metrics: MetricsLog) -> bool:
        """Validate, keep the model if it is the best so far; True when early stopping says stop."""
        self.check_loss(progress)
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
        if diverged(val, self.model.config.vocab_size):
            raise self.diverged_error(progress, f"validation loss {val:.4g} nats/token")
        if progress.best_val is None or val < progress.best_val:
            progress.best_val, progress.best_step, progress.evals_since_best = val, progress.step, 0
            self.save(progress, {})
        else:
            progress.evals_since_best += 1
        return bool(self.config.patience) and progress.evals_since_best >= self.config.patience

    def log_train(self, progress: Progress, metrics: MetricsLog, lr: float | None) -> float:
        """Write a `train` record with the mean loss since the last one; raise if it shows divergence."""
        loss = self.meter.mean()
        metrics.write(_train_record(progress, loss, lr))
        self.check_loss(progress)
        self.meter.reset()
        return loss

    def run(self, progress: Progress, carry: tuple | None) -> TrainResult:
        """Train from `progress` (and the carried state of a resumed run) to the first limit reached."""
        config = self.config
        config.out.mkdir(parents=True, exist_ok=True)
        self.saved_step = progress.step if carry is not None else None  # a resumed run starts from a checkpoint
        metrics = MetricsLog(config.out, progress.step if carry is not None else None)
        carry = carry if carry else self.model.init_state(config.batch_size)
        bar = tqdm(
            total=1000,
            desc="training",
            disable=None if self.show else True,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        )
        try:
            with StopRequests() as stops:
                final_loss = self._loop(progress, carry, metrics, bar, stops)
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

    def _loop(self, progress: Progress, carry: tuple, metrics: MetricsLog, bar: tqdm, stops: StopRequests) -> float:
        """The steps, validations and checkpoints to the end of the run; returns the last mean training loss."""
        config, model, batches = self.config, self.model, self.setup.batches
        start = time.monotonic() - progress.elapsed
        last_eval = last_log = time.monotonic()
        log_step, val_text = progress.step, "-"
        final_loss = float("nan")
        model.train()
        while True:
            done = fraction_done(config, progress, batches.steps_per_epoch)
            if done >= 1:
                break
            if stops.signum is not None:  # between two steps: the checkpoint holds whole steps only
                self.checkpoint(progress, carry)
                raise Stopped(stops.signum, progress.step, config.out)
            lr = learning_rate(config, progress.step, done)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            t0 = time.monotonic()
            loss, carry = self._step(batches.get(progress.epoch, progress.index), carry)
            if self.average is not None:
                self.average.update(progress.step)
            self.meter.add(loss)
            progress.step += 1
            progress.tokens += batches.tokens_per_step
            progress.index += 1
            epoch_end = progress.index == batches.steps_per_epoch
            if epoch_end:
                progress.epoch, progress.index = progress.epoch + 1, 0
            now = time.monotonic()
            progress.elapsed = now - start
            if progress.step - log_step >= 10 and now - last_log >= 0.2 or epoch_end:
                final_loss = self.log_train(progress, metrics, lr)  # waits for the device: training time too
                log_step, last_log = progress.step, now
            progress.train_seconds += time.monotonic() - t0
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
        if self.meter.count:
            final_loss = self.log_train(progress, metrics, None)
        if self.setup.val_ids is None:
            with self.averaged():
                self.save(progress, {"final_loss": final_loss})
        elif progress.best_step != progress.step:
            self.validate(progress, metrics)
        self.checkpoint(progress, carry)
        return final_loss

    def _step(self, batch, carry: tuple) -> tuple[torch.Tensor, tuple]:
        """One optimisation step; the loss stays on the device (reading it would wait for the device)."""
        model = self.model
        if not batch.stateful:
            carry = model.init_state(batch.inputs.size(0))
        elif self.config.state_reset:
            carry = reset_streams(carry, self.config.state_reset)
        with self.autocast:
            logits, new = model(batch.inputs, carry)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.config.clip)
        self.optimizer.step()
        return loss.detach(), tuple(s.detach().float() for s in new)

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

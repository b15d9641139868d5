"""The training loop: one `Run` takes a `TrainState` from where it stands to the run's end, validating, keeping the
best model and writing checkpoints and metrics on the way. The state itself (and its checkpoint file) belongs to
`rnnx.trainer.state`; the processes of a torchrun run agree through `rnnx.trainer.distributed`.

The loss stays on the device: it is read (and checked for divergence) only where a `train` record is logged,
at a validation and before a checkpoint, never at every step, so a GPU is never made to wait for the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rnnx.runtime.errors import RnnxError
from rnnx.runtime.tokenizer import Tokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.config import GENERATION, TrainConfig, TrainResult
from rnnx.trainer.data import LineBatches, StreamBatches
from rnnx.trainer.distributed import Ranks
from rnnx.trainer.evaluate import stateful_sums
from rnnx.trainer.guards import LossMeter, Stopped, StopRequests, all_finite, diverged
from rnnx.trainer.report import MetricsLog, write_loss_plot
from rnnx.trainer.state import Progress, TrainState

log = logging.getLogger(__name__)

VAL_STREAMS = 32  # validation reads the held-out text as this many contiguous pieces side by side
LOG_STEPS, LOG_SECONDS = 10, 0.2  # a `train` record at most this often: each one reads the loss from the device


@dataclass
class Setup:
    tokenizer: Tokenizer
    batches: LineBatches | StreamBatches
    val_ids: torch.Tensor | None
    data_sha256: str


def _amx_or_avx512_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: AMX tiles, or AVX512-BF16 (e.g. AMD EPYC Zen 4)."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):  # torch's cpuinfo, not /proc/cpuinfo
        check = getattr(torch.cpu, name, None)  # private: a torch without it, or one whose check fails, means fp32
        try:
            if check is not None and check():
                return True
        except (RuntimeError, OSError):
            continue
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast (weights, optimizer and validation stay fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _amx_or_avx512_bf16()  # oneDNN ran the LSTM preset 1.6x (AVX512-BF16) to 2.3x (AMX) faster in bf16


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


@dataclass
class Tick:
    """What the processes agreed after a step: the run's time, and whether to log and to validate now."""

    elapsed: float
    log: bool
    validate: bool


class Run:
    """One training run from `state.progress` on: the loop, validation, checkpoints and reports."""

    def __init__(self, state: TrainState, setup: Setup, show: bool, ranks: Ranks | None = None) -> None:
        self.state, self.setup, self.config = state, setup, state.config
        self.model, self.optimizer, self.average = state.model, state.optimizer, state.average
        self.ranks = ranks or Ranks.single()
        self.forward = self.ranks.wrap(self.model)  # averages gradients over the processes of a torchrun run
        self.show = show and self.ranks.main
        self.unit = "char" if setup.tokenizer.kind == "char" else "word"
        device = self.model.head.weight.device
        bf16 = use_bf16(self.config.precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.saved_step: int | None = None  # the step of the newest checkpoint on disk (None: none from this run)
        self.meter = LossMeter(device, self.ranks.total)  # training losses since the last `train` record
        self.metrics: MetricsLog | None = None

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train from where the state stands (a fresh run has no carried state yet) to the first limit reached."""
        progress, resumed = self.state.progress, self.state.carry is not None
        self.saved_step = progress.step if resumed else None  # a resumed run starts from a checkpoint
        if self.state.carry is None:
            self.state.carry = self.model.init_state(self.config.batch_size)
        with self._reports(progress.step if resumed else None) as bar, StopRequests() as stops:
            final_loss = self._loop(bar, stops)
        return self._result(final_loss)

    def _loop(self, bar: tqdm, stops: StopRequests) -> float:
        """The steps, validations and checkpoints to the end of the run; returns the last mean training loss."""
        config, progress, batches = self.config, self.state.progress, self.setup.batches
        start, last_log, last_eval = time.monotonic() - progress.elapsed, time.monotonic(), time.monotonic()
        log_step, final_loss, stop = progress.step, float("nan"), False
        self.model.train()
        while not stop and (done := fraction_done(config, progress, batches.steps_per_epoch)) < 1:
            signum = int(self.ranks.agree([stops.signum or 0])[0])
            if signum:  # between two steps: the checkpoint holds whole steps only
                self.checkpoint()
                raise Stopped(signum, progress.step, config.out)
            t0 = time.monotonic()
            lr, epoch_end = self._advance(done)
            tick = self._tick(start, last_log, last_eval)
            progress.elapsed = tick.elapsed
            if tick.log and progress.step - log_step >= LOG_STEPS or epoch_end:
                final_loss = self.log_train(lr)  # waits for the device: training time too
                log_step, last_log = progress.step, time.monotonic()
            progress.train_seconds += time.monotonic() - t0
            validated = self._maybe_validate(epoch_end, tick.validate)
            if validated is not None:
                stop, last_eval = validated, time.monotonic()
            if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                self.checkpoint()
            self._show(bar, final_loss)
        if stop:
            log.info("no better validation loss for %d evaluations: stopping early", config.patience)
        return self._finish(final_loss)

    def _advance(self, done: float) -> tuple[float, bool]:
        """One optimisation step at the scheduled learning rate; returns it and whether an epoch just ended."""
        progress, batches = self.state.progress, self.setup.batches
        lr = learning_rate(self.config, progress.step, done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, self.state.carry = self._step(batches.get(progress.epoch, progress.index), self.state.carry)
        if self.average is not None:
            self.average.update(progress.step)
        self.meter.add(loss)
        progress.step += 1
        progress.tokens += batches.tokens_per_step
        progress.index += 1
        epoch_end = progress.index == batches.steps_per_epoch
        if epoch_end:
            progress.epoch, progress.index = progress.epoch + 1, 0
        return lr, epoch_end

    def _tick(self, start: float, last_log: float, last_eval: float) -> Tick:
        now = time.monotonic()
        elapsed, log_due, eval_due = self.ranks.agree(
            [now - start, now - last_log >= LOG_SECONDS, now - last_eval >= self.config.eval_seconds]
        )
        return Tick(elapsed, bool(log_due), bool(eval_due))

    def _maybe_validate(self, epoch_end: bool, time_due: bool) -> bool | None:
        """Validate (and checkpoint) when due; None when not due, else whether early stopping says stop."""
        config, step = self.config, self.state.progress.step
        due = (config.eval_every and step % config.eval_every == 0) or (not config.eval_every and epoch_end) or time_due
        if self.setup.val_ids is None or not due:
            return None
        stop = self.validate()
        if not config.checkpoint_every:
            self.checkpoint()
        return stop

    def _finish(self, final_loss: float) -> float:
        """Log what is left, make sure the model directory holds the best (or last) model, write the checkpoint."""
        progress = self.state.progress
        if self.meter.count:
            final_loss = self.log_train(None)
        if self.setup.val_ids is None:
            with self.averaged():
                self.save({"final_loss": final_loss})
        elif progress.best_step != progress.step:
            self.validate()
        self.checkpoint()
        return final_loss

    def _step(self, batch, carry: tuple) -> tuple[torch.Tensor, tuple]:
        """One optimisation step; the loss stays on the device (reading it would wait for the device)."""
        if not batch.stateful:
            carry = self.model.init_state(batch.inputs.size(0))
        elif self.config.state_reset:
            carry = reset_streams(carry, self.config.state_reset)
        with self.autocast:
            logits, new = self.forward(batch.inputs, carry)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        return loss.detach(), tuple(s.detach().float() for s in new)

    # -- validation, checkpoints, the model directory -------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        progress = self.state.progress
        return {
            "training": self.config.to_json(),
            "data_sha256": self.setup.data_sha256,
            "step": progress.step,
            "val_loss": progress.best_val,
            "val_protocol": f"stateful, {VAL_STREAMS} streams" if progress.best_val is not None else None,
            **({"generation": GENERATION[self.unit]} if GENERATION.get(self.unit) else {}),
        }

    def diverged_error(self, what: str) -> RnnxError:
        kept = (
            f"the checkpoint of step {self.saved_step} and the best model are kept"
            if self.saved_step is not None
            else "no checkpoint or model of this run was saved"
        )
        return RnnxError(
            f"training diverged by step {self.state.progress.step} ({what}): lower --lr (it is {self.config.lr:g}) "
            f"or set --clip; {kept}"
        )

    def check_loss(self) -> None:
        """Raise if the training losses not yet logged show divergence (reads them from the device)."""
        if self.meter.count and diverged(loss := self.meter.mean(), self.model.config.vocab_size):
            raise self.diverged_error(f"mean training loss {loss:.4g} nats/token")

    def checkpoint(self) -> None:
        """Write checkpoint.safetensors, unless the state has diverged: a good checkpoint is never replaced by one."""
        self.check_loss()
        if not self.state.save(self.config.out, self.ranks):
            raise self.diverged_error("weights or optimizer state not finite")
        self.saved_step = self.state.progress.step

    def save(self, extra: dict[str, Any]) -> None:
        """Replace the model directory's model with the current (averaged) weights, if they are finite."""
        if not all_finite([p.detach() for p in self.model.parameters()]):
            raise self.diverged_error("weights not finite")
        if self.ranks.main:
            save_model(self.config.out, self.model, self.setup.tokenizer, {**self.document(), **extra})

    def averaged(self) -> contextlib.AbstractContextManager:
        """The weights to score and keep: the running average with --ema, else the trained ones."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def validate(self) -> bool:
        """Validate, keep the model if it is the best so far; True when early stopping says stop."""
        self.check_loss()
        with self.averaged():
            return self._validate()

    def _validate(self) -> bool:
        progress = self.state.progress
        part = (self.ranks.rank, self.ranks.world)
        total, count = self.ranks.total(stateful_sums(self.model, self.setup.val_ids, VAL_STREAMS, 256, part))
        val = total / count
        record = {"event": "val", "step": progress.step, "tokens": progress.tokens, "seconds": progress.elapsed}
        record["val_loss"] = val
        record["val_bpc" if self.unit == "char" else "val_ppl"] = (
            val / math.log(2) if self.unit == "char" else math.exp(min(val, 50))
        )
        if self.metrics is not None:
            self.metrics.write(record)
        if diverged(val, self.model.config.vocab_size):
            raise self.diverged_error(f"validation loss {val:.4g} nats/token")
        if progress.best_val is None or val < progress.best_val:
            progress.best_val, progress.best_step, progress.evals_since_best = val, progress.step, 0
            self.save({})
        else:
            progress.evals_since_best += 1
        return bool(self.config.patience) and progress.evals_since_best >= self.config.patience

    # -- reports --------------------------------------------------------------------------------------------------

    def log_train(self, lr: float | None) -> float:
        """Write a `train` record with the mean loss since the last one; raise if it shows divergence."""
        loss = self.meter.mean()
        if self.metrics is not None:
            self.metrics.write(_train_record(self.state.progress, loss, lr))
        self.check_loss()
        self.meter.reset()
        return loss

    @contextlib.contextmanager
    def _reports(self, resume_step: int | None) -> Iterator[tqdm]:
        """metrics.jsonl and the progress bar (the first process's), and loss.png at the end, however it ends."""
        if self.ranks.main:
            self.config.out.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsLog(self.config.out, resume_step)
        bar = tqdm(
            total=1000,
            desc="training",
            disable=None if self.show else True,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        )
        try:
            yield bar
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
                write_loss_plot(self.config.out, self.unit)

    def _show(self, bar: tqdm, loss: float) -> None:
        if bar.disable:
            return
        progress = self.state.progress
        done = fraction_done(self.config, progress, self.setup.batches.steps_per_epoch)
        left = progress.elapsed / done * (1 - done) if done > 0 else 0.0
        speed = progress.tokens / max(progress.train_seconds, 1e-9)
        val = f"{progress.best_val:.4f}" if progress.best_val is not None else "-"
        bar.n = int(1000 * min(done, 1.0))
        bar.set_postfix_str(
            f"loss {loss:.4f} val {val} {speed / 1000:.1f}k tok/s left {int(left // 60)}:{int(left % 60):02d}",
            refresh=False,
        )
        bar.update(0)

    def _result(self, final_loss: float) -> TrainResult:
        progress = self.state.progress
        return TrainResult(
            out=self.config.out,
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

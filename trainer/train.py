"""Training: `rnn-train` with no arguments fits the built-in three-sentence vanilla RNN in seconds;
`rnn-train --preset shakespeare-lstm --data text.txt --minutes 10` trains a character LSTM on real text.

Everything that can be wrong with the input (data, vocabulary, sizes, memory, checkpoint to resume) is checked
before the output directory is touched. The run then holds the directory (`rundir.claim`) and writes, atomically
each time: the best model so far (`model.safetensors` + `model.json`), `checkpoint.safetensors` to resume from,
`metrics.jsonl` and `loss.png`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer, Tokenizer
from rnnx.trainer.checkpoint import TRAIN_STATE
from rnnx.trainer.config import DEVICES, LIMIT_FIELDS, TrainConfig, TrainResult
from rnnx.trainer.data import (
    DEFAULT_LINES,
    LineBatches,
    StreamBatches,
    build_tokenizer,
    fit_tokenizer,
    line_examples,
    read_corpus,
    split_ids,
)
from rnnx.trainer.distributed import Ranks, processes
from rnnx.trainer.limits import data_limit, shortfall
from rnnx.trainer.loop import Run, Setup, fraction_done, use_bf16
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.rundir import claim, start_fresh
from rnnx.trainer.state import SavedState, TrainState, make_optimizer

__all__ = ["LIMIT_FIELDS", "TrainConfig", "TrainResult", "make_optimizer", "prepare", "resume", "train", "use_bf16"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise RnnxError("--device cuda was asked for, but torch sees no GPU here: use --device cpu or auto")
    return torch.device("cpu")


def _fitted(tokenizer: Tokenizer | None, fitted: Tokenizer) -> Tokenizer:
    """`tokenizer` (a resumed run's) if it is the one the data gives, `fitted` for a fresh run."""
    if tokenizer is not None and (tokenizer.kind, tokenizer.vocab) != (fitted.kind, fitted.vocab):
        raise ModelFileError(
            f"the checkpoint's vocabulary ({len(tokenizer.vocab)} {tokenizer.kind} tokens) is not the one the data "
            f"gives ({len(fitted.vocab)}): resume with the data the run started with, or start a fresh run"
        )
    return tokenizer or fitted


def _check_digest(text: str, config: TrainConfig, expected: str | None) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    if expected is not None and digest != expected:
        raise RnnxError(f"{config.data} changed since the checkpoint was written: resume with the same data")
    return digest


def prepare(
    config: TrainConfig,
    device: torch.device,
    tokenizer: Tokenizer | None = None,
    data_sha256: str | None = None,
    ranks: Ranks | None = None,
) -> Setup:
    """Read and check the data, fit the tokenizer and cut the batches (this process's share of them). A resumed
    run gives its tokenizer and the data's digest, and the data must still be the same and give the same
    vocabulary."""
    ranks = ranks or Ranks.single()
    if config.data is None:
        if ranks.world > 1:
            raise UsageError("several processes need text to share: give --data (or run rnn-train without torchrun)")
        digest = _check_digest("\n".join(DEFAULT_LINES), config, data_sha256)
        tokenizer = _fitted(tokenizer, CharTokenizer.build("".join(DEFAULT_LINES)))
        examples = line_examples(DEFAULT_LINES, tokenizer).to(device)
        return Setup(tokenizer, LineBatches(examples, config.batch_size, config.rng_seed), None, digest)
    text = read_corpus(config.data, data_limit(config.max_data_mb))
    digest = _check_digest(text, config, data_sha256)
    fitted = fit_tokenizer(text, config.tokenizer, config.max_vocab, config.min_freq)
    if tokenizer is not None and tokenizer.kind == "word" and tokenizer.vocab != fitted.vocab:
        legacy = build_tokenizer(text, "word", config.max_vocab, config.min_freq)  # counted over the whole text,
        fitted = legacy if legacy.vocab == tokenizer.vocab else fitted  # as runs started before 2026-11-26 did
    tokenizer = _fitted(tokenizer, fitted)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids)
    if len(val_ids) < 2:
        raise RnnxError(f"{config.data} is too short to hold out validation text: give it more text")
    part = (ranks.rank, ranks.world)
    batches = StreamBatches(train_ids.to(device), config.batch_size, config.seq_len, config.rng_seed, part)
    return Setup(tokenizer, batches, val_ids.to(device), digest)


def check_memory(model_config: ModelConfig, config: TrainConfig, setup: Setup, device: torch.device) -> str | None:
    """Why the model cannot be trained here (None if it can), before it is built: a 1M-unit layer would take
    terabytes and minutes to fail.

    A lower bound: weights, gradients and AdamW's two moments (16 bytes a weight, 20 with --ema) and, for one
    batch, the logits, their log-softmax and its gradient (12 bytes per token and vocabulary entry).
    """
    per_weight = 20 if config.ema else 16
    tokens = setup.batches.tokens_per_step // max(1, getattr(setup.batches, "processes", 1))
    need = per_weight * model_config.weight_count + 12 * tokens * model_config.vocab_size
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    what = (
        f"training this {model_config.cell.upper()} ({model_config.layers} x {model_config.hidden} units, "
        f"{model_config.weight_count:,} weights, {model_config.vocab_size:,} tokens)"
    )
    return shortfall(need, what, free)


def train(
    model_config: ModelConfig, config: TrainConfig, progress: bool = True, *, overwrite: bool = False
) -> TrainResult:
    """Train a model on `config.data` and write it to `config.out`, which must not hold a run unless `overwrite`:
    a fresh state, run. Under torchrun, `config.batch_size` is each process's share of the batch."""
    torch.manual_seed(config.rng_seed)
    with processes(resolve_device(config.device)) as ranks:
        device = ranks.device(resolve_device(config.device))
        setup = prepare(config, device, ranks=ranks)
        model_config = replace(model_config, vocab_size=len(setup.tokenizer.vocab))
        short = check_memory(model_config, config, setup, device)
        if short:
            raise UsageError(f"{short}: lower --hidden, --layers or --embed, or --batch-size and --seq-len")
        with contextlib.ExitStack() as held:
            with ranks.first():
                if ranks.main:
                    held.enter_context(claim(config.out))
                    start_fresh(config.out, overwrite)
            state = TrainState.fresh(model_config, config, setup.tokenizer, setup.data_sha256, device)
            if ranks.rank:
                torch.manual_seed(ranks.seed(config.rng_seed, 0))  # the weights are the same, the masks not
            result = Run(state, setup, progress, ranks).run()
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten: inode, size and modification time (None: no file)."""
    if not path.is_file():
        return None
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def resume(out: Path, limits: dict[str, Any], progress: bool = True) -> TrainResult:
    """Continue the run whose checkpoint is in `out` (load its state, run); `limits` may change LIMIT_FIELDS
    (epochs, steps, ...). A run may resume on another number of processes: the global batch stays the same."""
    identity = _identity(out / TRAIN_STATE)
    saved = TrainState.read(out, limits)
    _check_data_there(out, saved.config.data)
    with processes(resolve_device(saved.config.device)) as ranks:
        saved = saved.for_processes(ranks.world)
        config = saved.config
        device = ranks.device(resolve_device(config.device))
        setup = prepare(config, device, saved.tokenizer, saved.data_sha256, ranks)
        _check_resumable(out, saved, setup, device)
        with contextlib.ExitStack() as held:
            with ranks.first():
                if ranks.main:
                    held.enter_context(claim(out))
                    if _identity(out / TRAIN_STATE) != identity:
                        raise RnnxError(
                            f"the checkpoint in {out} changed while it was read (by another run?): resume again"
                        )
            state = saved.build(device, ranks)
            log.info("resuming at step %d (epoch %d)", state.progress.step, state.progress.epoch)
            result = Run(state, setup, progress, ranks).run()
    log.info("trained %s: %s", saved.model_config.cell, result.summary())
    return result


def _check_data_there(out: Path, data: Path | None) -> None:
    """The text the run trains on is where its checkpoint says (absolute; relative in checkpoints written before
    rnnx recorded it absolute, read from the current directory then)."""
    if data is None or data.exists():
        return
    what = f"the run's data {data} (recorded in {out / TRAIN_STATE})"
    if data.is_absolute():
        raise RnnxError(f"{what} is not there: put the same text back at that path and resume again")
    raise RnnxError(f"{what} is not in {Path.cwd()}: resume from the directory the run began in")


def _check_resumable(out: Path, saved: SavedState, setup: Setup, device: torch.device) -> None:
    state, config = saved.progress, saved.config
    try:
        state.check_position(setup.batches.steps_per_epoch, setup.batches.tokens_per_step)
    except UsageError as exc:
        raise ModelFileError(f"checkpoint in {out} is corrupt ({exc}): start a fresh run") from None
    if fraction_done(config, state, setup.batches.steps_per_epoch) >= 1:
        raise UsageError(
            f"the run in {out} already reached its limit (step {state.step}, epoch {state.epoch}): "
            "give a larger --epochs, --steps or --minutes to train on"
        )
    short = check_memory(saved.model_config, config, setup, device)
    if short:
        raise ModelFileError(f"the checkpoint in {out}: {short}: resume it on a machine with more memory")

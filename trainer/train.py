"""Training: `rnn-train` with no arguments fits the built-in three-sentence vanilla RNN in seconds;
`rnn-train --preset shakespeare-lstm --data text.txt --minutes 10` trains a character LSTM on real text.

Everything that can be wrong with the input (data, vocabulary, sizes, memory, checkpoint to resume) is checked
before the output directory is touched. The run then holds the directory (`rundir.claim`) and writes, atomically
each time: the best model so far (`model.safetensors` + `model.json`), `checkpoint.safetensors` to resume from,
`metrics.jsonl` and `loss.png`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import TRAIN_STATE, describe_error, load_train_state, model_config_from_json
from rnnx.trainer.config import DEVICES, LIMIT_FIELDS, TrainConfig, TrainResult
from rnnx.trainer.data import (
    DEFAULT_LINES,
    LineBatches,
    StreamBatches,
    build_tokenizer,
    line_examples,
    read_corpus,
    split_ids,
)
from rnnx.trainer.limits import data_limit, shortfall
from rnnx.trainer.loop import Progress, Run, Setup, fraction_done, use_bf16
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.rundir import claim, start_fresh
from rnnx.trainer.state import restore

__all__ = ["LIMIT_FIELDS", "TrainConfig", "TrainResult", "prepare", "resume", "train", "use_bf16"]

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
    config: TrainConfig, device: torch.device, tokenizer: Tokenizer | None = None, data_sha256: str | None = None
) -> Setup:
    """Read and check the data, fit the tokenizer and cut the batches. A resumed run gives its tokenizer and the
    data's digest, and the data must still be the same and give the same vocabulary."""
    if config.data is None:
        digest = _check_digest("\n".join(DEFAULT_LINES), config, data_sha256)
        tokenizer = _fitted(tokenizer, CharTokenizer.build("".join(DEFAULT_LINES)))
        examples = line_examples(DEFAULT_LINES, tokenizer).to(device)
        return Setup(tokenizer, LineBatches(examples, config.batch_size, config.rng_seed), None, digest)
    text = read_corpus(config.data, data_limit(config.max_data_mb))
    digest = _check_digest(text, config, data_sha256)
    tokenizer = _fitted(tokenizer, build_tokenizer(text, config.tokenizer, config.max_vocab, config.min_freq))
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids)
    if len(val_ids) < 2:
        raise RnnxError(f"{config.data} is too short to hold out validation text: give it more text")
    batches = StreamBatches(train_ids.to(device), config.batch_size, config.seq_len, config.rng_seed)
    return Setup(tokenizer, batches, val_ids.to(device), digest)


def check_memory(model_config: ModelConfig, config: TrainConfig, setup: Setup, device: torch.device) -> str | None:
    """Why the model cannot be trained here (None if it can), before it is built: a 1M-unit layer would take
    terabytes and minutes to fail.

    A lower bound: weights, gradients and AdamW's two moments (16 bytes a weight, 20 with --ema) and, for one
    batch, the logits, their log-softmax and its gradient (12 bytes per token and vocabulary entry).
    """
    per_weight = 20 if config.ema else 16
    need = per_weight * model_config.weight_count + 12 * setup.batches.tokens_per_step * model_config.vocab_size
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    what = (
        f"training this {model_config.cell.upper()} ({model_config.layers} x {model_config.hidden} units, "
        f"{model_config.weight_count:,} weights, {model_config.vocab_size:,} tokens)"
    )
    return shortfall(need, what, free)


def make_optimizer(model: RNNLM, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def train(
    model_config: ModelConfig, config: TrainConfig, progress: bool = True, *, overwrite: bool = False
) -> TrainResult:
    """Train a model on `config.data` and write it to `config.out`, which must not hold a run unless `overwrite`."""
    torch.manual_seed(config.rng_seed)
    device = resolve_device(config.device)
    setup = prepare(config, device)
    model_config = replace(model_config, vocab_size=len(setup.tokenizer.vocab))
    short = check_memory(model_config, config, setup, device)
    if short:
        raise UsageError(f"{short}: lower --hidden, --layers or --embed, or --batch-size and --seq-len")
    with claim(config.out):
        start_fresh(config.out, overwrite)
        model = RNNLM(model_config).to(device)
        average = WeightAverage(model, config.ema) if config.ema else None
        run = Run(model, make_optimizer(model, config), average, setup, config, device, progress)
        result = run.run(Progress(), None)
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: inode, size and modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _saved_run(out: Path, meta: dict[str, Any]) -> tuple[ModelConfig, TrainConfig, Tokenizer, Progress]:
    """The settings, vocabulary and progress a checkpoint's JSON holds, each checked."""
    where = f"checkpoint in {out}"
    model_config = model_config_from_json(meta.get("model"), where)
    try:
        if not isinstance(meta.get("training"), dict) or not isinstance(meta.get("progress"), dict):
            raise KeyError("training or progress")
        saved = TrainConfig.from_json(meta["training"], out)
        state = Progress(**meta["progress"])
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
    return model_config, saved, tokenizer, state


def resume(out: Path, limits: dict[str, Any], progress: bool = True) -> TrainResult:
    """Continue the run whose checkpoint is in `out`; `limits` may change LIMIT_FIELDS (epochs, steps, ...)."""
    identity = _identity(out / TRAIN_STATE) if (out / TRAIN_STATE).is_file() else None
    tensors, meta = load_train_state(out)
    model_config, saved, tokenizer, state = _saved_run(out, meta)
    config = replace(saved, **{k: v for k, v in limits.items() if k in LIMIT_FIELDS and v is not None})
    device = resolve_device(config.device)
    setup = prepare(config, device, tokenizer, str(meta.get("data_sha256")))
    if state.index >= setup.batches.steps_per_epoch:
        raise ModelFileError(f"checkpoint in {out} is corrupt (batch {state.index} of an epoch): start a fresh run")
    if fraction_done(config, state, setup.batches.steps_per_epoch) >= 1:
        raise UsageError(
            f"the run in {out} already reached its limit (step {state.step}, epoch {state.epoch}): "
            "give a larger --epochs, --steps or --minutes to train on"
        )
    short = check_memory(model_config, config, setup, device)
    if short:
        raise ModelFileError(f"the checkpoint in {out}: {short}: resume it on a machine with more memory")
    with claim(out):
        if _identity(out / TRAIN_STATE) != identity:
            raise RnnxError(f"the checkpoint in {out} changed while it was read (by another run?): resume again")
        model = RNNLM(model_config).to(device)
        optimizer = make_optimizer(model, config)
        average = WeightAverage(model, config.ema) if config.ema else None
        carry = restore(model, optimizer, average, tensors)
        log.info("resuming at step %d (epoch %d)", state.step, state.epoch)
        result = Run(model, optimizer, average, setup, config, device, progress).run(state, carry)
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result

"""Training: `rnn-train` with no arguments fits the built-in three-sentence vanilla RNN in seconds;
`rnn-train --preset shakespeare-lstm --data text.txt --minutes 10` trains a character LSTM on real text.

Everything that can be wrong with the input (data, vocabulary, sizes, checkpoint to resume) is checked before
the output directory is touched. The run then writes, atomically each time: the best model so far
(`model.safetensors` + `model.json`), `checkpoint.safetensors` to resume from, `metrics.jsonl` and `loss.png`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict
from rnnx.trainer.averaging import WeightAverage
from rnnx.trainer.checkpoint import describe_error, load_train_state
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
from rnnx.trainer.loop import Progress, Run, Setup, fraction_done, restore, use_bf16
from rnnx.trainer.model import RNNLM, ModelConfig

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


def train(model_config: ModelConfig, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model on `config.data` and write it to `config.out`."""
    torch.manual_seed(config.rng_seed)
    device = resolve_device(config.device)
    setup = prepare(config, device)
    model_config = replace(model_config, vocab_size=len(setup.tokenizer.vocab))
    model = RNNLM(model_config).to(device)
    average = WeightAverage(model, config.ema) if config.ema else None
    run = Run(model, make_optimizer(model, config), average, setup, config, device, progress)
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
    carry = restore(model, optimizer, average, tensors, meta)
    log.info("resuming at step %d (epoch %d)", state.step, state.epoch)
    result = Run(model, optimizer, average, setup, config, device, progress).run(state, carry)
    log.info("trained %s: %s", model_config.cell, result.summary())
    return result

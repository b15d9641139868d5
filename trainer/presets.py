"""Named settings (`--preset`) after the classic tutorials' models, tuned to train better than they do.

A preset fills in model and training settings; any flag given on the command line overrides it. Without a
preset, the defaults of `ModelConfig` and `TrainConfig` train the built-in three-sentence vanilla RNN.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from rnnx.runtime.errors import UsageError
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.train import TrainConfig

# Shared by the character presets: contiguous TBPTT batches, AdamW, warm-up then cosine decay to the end of
# whichever limit (epochs, steps, minutes) comes first. Validation (and the checkpoint with it) every 500 steps
# or 60 s, whichever comes first: on a 2-core CPU that is once a minute (each costs 1-2 s there; validating at
# every epoch's end took 7% of a 10-minute run), on a GPU every few seconds, so the best model is kept.
_CHAR_TRAINING: dict[str, Any] = {
    "tokenizer": "char",
    "epochs": 100,
    "batch_size": 64,
    "seq_len": 128,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "clip": 1.0,
    "schedule": "cosine",
    "warmup": 100,
    "min_lr": 0.02,
    "eval_every": 500,
    "eval_seconds": 60.0,
    "precision": "auto",
}

# Shared by the word presets: words (at most 10,000, counted over the training part), AdamW with weight decay
# 1.0, warm-up then cosine decay, early stopping after 20 validations without a better loss.
_WORD_TRAINING: dict[str, Any] = {
    "tokenizer": "word",
    "min_freq": 1,
    "max_vocab": 10000,
    "epochs": 150,
    "batch_size": 8,
    "seq_len": 32,
    "lr": 3e-3,
    "weight_decay": 1.0,
    "clip": 1.0,
    "schedule": "cosine",
    "warmup": 20,
    "patience": 20,
    "min_lr": 0.05,
    "eval_seconds": 5.0,
    "precision": "auto",
}

PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # The tutorials' GRU (embedding 256, 1024 units); sized for a GPU, regularised so it does not overfit.
    "shakespeare-gru": (
        {"cell": "gru", "embed": 256, "hidden": 1024, "layers": 1, "dropout": 0.3, "weight_drop": 0.2},
        {**_CHAR_TRAINING, "seq_len": 100, "lr": 2e-3},
    ),
    # The best character LSTM found for ten minutes on a 2-core CPU (see docs/training.md for the probes): two
    # layers of 384 beat one layer of 512 or 768, two of 448 and three of 256 in the same time; dropout 0.15-0.2
    # beat 0.05-0.1, and weight-drop 0.2 lost to 0.1. Weight decay 0.3 beat 0.01, 0.1 and 1.0; a 10% chance per
    # step that a stream restarts from a zero state cut the windowed loss by 0.01 without costing the stateful one.
    "shakespeare-lstm": (
        {"cell": "lstm", "embed": 128, "hidden": 384, "layers": 2, "dropout": 0.2, "weight_drop": 0.1},
        {**_CHAR_TRAINING, "lr": 5e-3, "weight_decay": 0.3, "state_reset": 0.1},
    ),
    # The word-level tutorial's LSTM (150 units) with tied embeddings, for a story of a few thousand words. On the
    # 2,000-word story in bench/data, weight decay 1.0 beat 0.01-0.3 and 2-5 (perplexity 91 against 99-168), and
    # the best model comes a quarter of the way in: stop after 20 validations without a better one (each epoch's
    # end, or every 5 s on a longer text).
    "words-lstm": (
        {
            "cell": "lstm",
            "embed": 150,
            "hidden": 150,
            "layers": 1,
            "dropout": 0.5,
            "weight_drop": 0.5,
            "embed_dropout": 0.1,
            "tie": True,
        },
        _WORD_TRAINING,
    ),
    # A word LSTM for a few hundred thousand words in ten minutes on a 2-core CPU (bench/word_quality.py: on
    # tiny-shakespeare, perplexity 128 against an interpolated Kneser-Ney trigram's 176). Wider than the
    # tutorial's 150 units; batches of 32 x 64 words (in three-minute probes, 8 x 32 with 150 units overfit after
    # two epochs; 32 x 64 with 400 units was better and still learning), AdamW 6e-3. Validation reads ~25k words
    # in fp32, so it runs at each epoch's end or every 30 s, not 5 s (which took 40% of a run). On a story of
    # 2,000 words it overfits at once (perplexity 478 against words-lstm's 96-103): use words-lstm there.
    "words-lstm-large": (
        {
            "cell": "lstm",
            "embed": 400,
            "hidden": 400,
            "layers": 1,
            "dropout": 0.4,
            "weight_drop": 0.3,
            "embed_dropout": 0.1,
            "tie": True,
        },
        {**_WORD_TRAINING, "batch_size": 32, "seq_len": 64, "lr": 6e-3, "eval_seconds": 30.0},
    ),
}


def resolve(
    preset: str | None, model_flags: dict[str, Any], train_flags: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """Defaults, then the preset's settings, then the flags the user gave (None means "not given")."""
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model_base, train_base = PRESETS[preset] if preset else ({}, {})
    model_known = {f.name for f in fields(ModelConfig)}
    train_known = {f.name for f in fields(TrainConfig)}
    model_given = {k: v for k, v in model_flags.items() if v is not None and k in model_known}
    train_given = {k: v for k, v in train_flags.items() if v is not None and k in train_known}
    return ModelConfig(**{**model_base, **model_given}), TrainConfig(**{**train_base, **train_given})

"""rnn-train: train a recurrent language model and save it as a model directory.

rnn-train                                             # the built-in three-sentence vanilla RNN, in seconds
rnn-train --preset shakespeare-lstm --data tinyshakespeare.txt --minutes 10 --out artifacts/shakespeare
rnn-train --out artifacts/shakespeare --resume        # continue an interrupted run from its checkpoint
rnn-train --overwrite                                 # train the default model again, replacing the last one
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from rnnx.cli.common import make_app, user_errors

app = make_app("Train a recurrent language model (by default: the built-in three-sentence vanilla RNN).")

_PRESETS = "shakespeare-gru, shakespeare-lstm, words-lstm, words-lstm-large"


@app.command()
def main(
    data: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|DIR", help="UTF-8 text file or folder of .txt files; omit for the built-in sentences."
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(help=f"Named settings: {_PRESETS}. Flags override them.")] = None,
    out: Annotated[str, typer.Option(metavar="DIR", help="Model directory to write.")] = "artifacts/default",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run checkpointed in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run already in --out (its model, checkpoint, exports).")
    ] = False,
    max_data_mb: Annotated[
        float | None, typer.Option(help="Refuse larger data (default: 1/32 of the memory available).")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="char or word.")] = None,
    max_vocab: Annotated[int | None, typer.Option(help="Word tokenizer: vocabulary cap, <unk> included.")] = None,
    min_freq: Annotated[int | None, typer.Option(help="Word tokenizer: rarer words become <unk>.")] = None,
    cell: Annotated[str | None, typer.Option(help="Recurrent cell: rnn, lstm or gru.")] = None,
    layers: Annotated[int | None, typer.Option(help="Number of stacked recurrent layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden units per layer.")] = None,
    embed: Annotated[int | None, typer.Option(help="Embedding width; 0 feeds one-hot vectors instead.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout on embeddings, between layers, before output.")] = None,
    weight_drop: Annotated[float | None, typer.Option(help="DropConnect on the recurrent weights.")] = None,
    embed_dropout: Annotated[float | None, typer.Option(help="Drop whole vocabulary rows of the embedding.")] = None,
    tie: Annotated[bool | None, typer.Option("--tie/--no-tie", help="Share embedding and output weights.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Limit: passes over the training data.")] = None,
    steps: Annotated[int | None, typer.Option(help="Limit: optimisation steps (0: none).")] = None,
    minutes: Annotated[float | None, typer.Option(help="Limit: wall-clock minutes (0: none).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per optimisation step.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per sequence (truncated BPTT length).")] = None,
    state_reset: Annotated[
        float | None, typer.Option(help="Chance a stream starts a step from a zero state (0: always carried).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay on weight matrices.")] = None,
    ema: Annotated[
        float | None, typer.Option(help="Validate and keep a moving average of the weights with this decay (0: off).")
    ] = None,
    clip: Annotated[float | None, typer.Option(help="Maximum gradient norm (0: off).")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant or cosine (warm-up, then cosine decay).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N steps (0: each epoch).")] = None,
    eval_seconds: Annotated[float | None, typer.Option(help="...and at least every this many seconds.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N validations without improvement.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0: at validation).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (bf16 autocast on cuda).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto (bf16 autocast on CUDA and AMX CPUs), fp32 or bf16.")
    ] = None,
    rng_seed: Annotated[int | None, typer.Option(help="Random seed; the same seed repeats the same run.")] = None,
) -> None:
    """Train a model and write OUT/model.safetensors, OUT/model.json, a checkpoint, metrics.jsonl and loss.png."""
    flags = dict(locals())  # every option by name, None where not given
    with user_errors():
        from rnnx.runtime.errors import UsageError
        from rnnx.trainer.guards import Stopped

        for name in ("out", "data"):
            if flags[name] is not None and not flags[name].strip():
                raise UsageError(f"--{name} is empty: give a path (--{name} . for the current directory)")
        flags = {**flags, "out": Path(out), "data": Path(data) if data is not None else None}
        try:
            result = _resume(flags) if resume else _train(preset, flags)
        except Stopped as stop:  # SIGINT or SIGTERM, after the checkpoint was written
            typer.echo(str(stop), err=True)
            raise typer.Exit(stop.exit_code) from None
        if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process reports for all
            typer.echo(f"trained -> {result.out}: {result.summary()}")


def _resume(flags: dict):
    from rnnx.runtime.errors import UsageError
    from rnnx.trainer import train as training

    fixed = (*training.LIMIT_FIELDS, "out", "resume", "overwrite")
    given = sorted(k for k, v in flags.items() if v is not None and k not in fixed)
    if flags["overwrite"]:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if given:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"--resume continues with the saved settings; only limits may change, not {names}")
    return training.resume(flags["out"], flags)


def _train(preset: str | None, flags: dict):
    from rnnx.trainer import presets
    from rnnx.trainer import train as training

    model_config, config = presets.resolve(preset, flags, flags)
    return training.train(model_config, config, overwrite=flags["overwrite"])

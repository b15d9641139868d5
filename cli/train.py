"""rnn-train: train a recurrent language model and save it as a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rnnx.cli.common import make_app, user_errors

app = make_app("Train a recurrent language model (by default: the built-in three-sentence vanilla RNN).")


@app.command()
def main(
    data: Annotated[
        Path | None, typer.Option(help="UTF-8 text file to train on; omit for the built-in three sentences.")
    ] = None,
    cell: Annotated[str, typer.Option(help="Recurrent cell: rnn, lstm or gru.")] = "rnn",
    layers: Annotated[int, typer.Option(help="Number of stacked recurrent layers.")] = 1,
    hidden: Annotated[int, typer.Option(help="Hidden units per layer.")] = 32,
    embed: Annotated[int, typer.Option(help="Embedding width; 0 feeds one-hot vectors instead.")] = 16,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Sequences per optimisation step.")] = 64,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence for continuous text.")] = 100,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.01,
    rng_seed: Annotated[int, typer.Option(help="Random seed; the same seed repeats the same run.")] = 0,
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = Path("artifacts/default"),
) -> None:
    """Train a model and write OUT/model.safetensors and OUT/model.json."""
    with user_errors():
        from rnnx.trainer.model import ModelConfig
        from rnnx.trainer.train import TrainConfig, train

        model_config = ModelConfig(cell=cell, layers=layers, hidden=hidden, embed=embed)
        config = TrainConfig(
            data=data, out=out, epochs=epochs, batch_size=batch_size, seq_len=seq_len, lr=lr, rng_seed=rng_seed
        )
        result = train(model_config, config)
        source = data or "the built-in three sentences"
        typer.echo(
            f"trained {cell} ({layers}x{hidden}) on {source}: loss {result.final_loss:.4f} "
            f"after {result.epochs} epochs in {result.seconds:.1f}s -> {result.out}"
        )

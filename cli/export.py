"""rnn-export: write a trained model as one verified, self-describing ONNX step graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rnnx.cli.common import make_app, user_errors
from rnnx.runtime.contract import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN

app = make_app("Export a trained model directory to a single-step ONNX graph, verified against torch.")


@app.command()
def main(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by rnn-train.")] = Path(
        "artifacts/default"
    ),
    opset: Annotated[int, typer.Option(help=f"ONNX opset, {OPSET_MIN} to {OPSET_MAX}.")] = DEFAULT_OPSET,
    output: Annotated[
        Path | None, typer.Option(help="Where to write the .onnx file; default MODEL_DIR/model.onnx.")
    ] = None,
) -> None:
    """Build the step graph, check it, prove parity with torch, then write it."""
    with user_errors():
        from rnnx.export import export_model

        result = export_model(model_dir, output, opset)
        typer.echo(
            f"wrote {result.path} ({result.size_bytes / 1024:.0f} KiB, opset {opset}); "
            f"max |Δlogit| vs torch {result.max_logit_diff:.1e}"
        )

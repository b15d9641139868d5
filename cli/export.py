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
        str | None, typer.Option(help="Where to write the .onnx file; default MODEL_DIR/model.onnx.")
    ] = None,
    quantize: Annotated[
        str, typer.Option(help="none, or int8: int8 recurrent weights for faster CPU inference.")
    ] = "none",
    form: Annotated[
        str | None,
        typer.Option(help="Graph form: matmul (MatMul cells, embedding folded in; the default) or op (ONNX RNN ops)."),
    ] = None,
) -> None:
    """Build the step graph, check it, prove parity with torch, then write it."""
    with user_errors():
        from rnnx.export import export_model
        from rnnx.export.graph import DEFAULT_FORM
        from rnnx.runtime.errors import UsageError

        if output is not None and (not output.strip() or output.endswith(("/", "\\"))):
            raise UsageError(
                f"--output {output!r} is not a file path: give one such as {Path(output or '.') / 'model.onnx'}"
            )
        form = form or DEFAULT_FORM
        result = export_model(
            model_dir,
            Path(output) if output else None,
            opset,
            quantize=None if quantize == "none" else quantize,
            form=form,
        )
        line = (
            f"wrote {result.path} ({result.size_bytes / 1024:.0f} KiB, opset {opset}, {form} form, "
            f"{result.weights}); max |Δlogit| vs torch {result.max_logit_diff:.1e}"
        )
        if result.prompt_diff is not None:
            line += f"; prompt path max |Δ| {result.prompt_diff:.1e}"
        if result.int8_kl is not None:
            line += f"; int8 vs fp32: {result.int8_tensors} int8 weight matrices, KL {result.int8_kl:.1e} nats/token"
        typer.echo(line)

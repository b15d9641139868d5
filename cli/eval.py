"""rnn-eval: how well an exported .onnx model predicts a text (numpy + onnxruntime only).

rnn-eval --model artifacts/shakespeare/model.onnx --data valid.txt --streams 32
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rnnx.cli.common import make_app, user_errors

if TYPE_CHECKING:
    from rnnx.runtime.scoring import Score

# Below this much text the score comes back in moments: no progress bar.
BAR_MIN_BYTES = 64 << 10

app = make_app("Score a text with an exported rnnx .onnx model: mean next-token cross-entropy, state carried.")


@app.command()
def main(
    data: Annotated[str, typer.Option(help="UTF-8 text file, or a folder of .txt files (read as rnn-train does).")],
    model: Annotated[Path, typer.Option(help="Exported .onnx file.")] = Path("artifacts/default/model.onnx"),
    streams: Annotated[
        int, typer.Option(help="Read the text as this many contiguous pieces side by side (rnn-train's protocol).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a line of text.")] = False,
    provider: Annotated[str, typer.Option(help="Execution provider: auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="onnxruntime CPU threads; 0 lets it choose.")] = 0,
) -> None:
    """Print the model's mean next-token cross-entropy on DATA, with bits/char (char models) or perplexity
    (word models)."""
    with user_errors():
        from tqdm import tqdm

        from rnnx.runtime import Model
        from rnnx.runtime.errors import UsageError
        from rnnx.runtime.scoring import (
            check_held,
            check_streams,
            count_tokens,
            data_files,
            read_data,
            score,
            stream_cut,
        )

        if not data.strip():
            raise UsageError("--data is empty: give a text file or a folder (--data . for the current directory)")
        data = Path(data)
        check_streams(streams)
        size = sum(f.stat().st_size for f in data_files(data))
        loaded = Model(model, provider=provider, threads=threads)
        # a first pass checks every file and counts the tokens, before any time goes into scoring
        tokens = count_tokens(read_data(data), loaded.tokenizer)
        if streams > 1:
            check_held(tokens)
        used, length = stream_cut(tokens, streams)
        quiet = size < BAR_MIN_BYTES or not sys.stderr.isatty()
        with tqdm(total=used * length, desc="scoring", unit="tok", unit_scale=True, leave=False, disable=quiet) as bar:
            result = score(loaded, read_data(data), streams=streams, progress=lambda done: bar.update(done - bar.n))
        typer.echo(json.dumps(_record(result, model, data)) if as_json else _line(result))


def _record(result: Score, model: Path, data: Path) -> dict[str, Any]:
    record = {
        "model": str(model),
        "data": str(data),
        "kind": result.kind,
        "tokens": result.tokens,
        "streams": result.streams,
        "nats_per_token": result.nats_per_token,
    }
    if result.kind == "char":
        record["bits_per_char"] = result.bits_per_char
    else:
        record["perplexity"] = result.perplexity
    return record


def _line(result: Score) -> str:
    """`1.4000 nats/token, 2.0198 bits/char (110,000 char tokens, 1 stream)`, perplexity for a word model."""
    if result.kind == "char":
        derived = f"{result.bits_per_char:.4f} bits/char"
    else:
        derived = f"perplexity {result.perplexity:.2f}"
    streams = f"{result.streams} stream{'s' * (result.streams != 1)}"
    return f"{result.nats_per_token:.4f} nats/token, {derived} ({result.tokens:,} {result.kind} tokens, {streams})"

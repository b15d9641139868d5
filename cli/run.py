"""rnn-run: generate text from an exported .onnx model (numpy + onnxruntime only).

rnn-run --model artifacts/default/model.onnx --seed "good" --len 15
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from rnnx.cli.common import make_app, user_errors

app = make_app("Generate text from an exported rnnx .onnx model, streamed as it is produced.")


@app.command()
def main(
    seed: Annotated[str, typer.Option(help="Prompt text the generated text continues.")],
    length: Annotated[
        int,
        typer.Option(
            "--len",
            help="Total length, the seed included: characters for a char model; words for a word model "
            "(punctuation rides along, not counted).",
        ),
    ] = 100,
    model: Annotated[Path, typer.Option(help="Exported .onnx file.")] = Path("artifacts/default/model.onnx"),
    temperature: Annotated[
        float | None, typer.Option(help="0 is greedy; higher is more random. [default: the model's, else 0]")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Sample only from the k most likely tokens; 0 is off. [default: the model's, else 0]"),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(help="Sample from the smallest set with this much probability. [default: the model's, else 1]"),
    ] = None,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(
            help="Above 1 makes tokens already in the text less likely; 1 is off. [default: the model's, else 1; "
            "word models trained by rnnx carry 1.3]"
        ),
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop before this text appears in the output (repeatable).")
    ] = None,
    rng_seed: Annotated[int | None, typer.Option(help="Random seed for repeatable sampling.")] = None,
    provider: Annotated[str, typer.Option(help="Execution provider: auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="onnxruntime CPU threads; 0 lets it choose.")] = 0,
) -> None:
    """Print SEED followed by generated text, LEN characters or words in all (fewer when a stop text is reached)."""
    with user_errors():
        from rnnx.runtime import Model, SamplingConfig

        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "repetition_penalty": repetition_penalty}
        given = {k: v for k, v in given.items() if v is not None}
        SamplingConfig(**given)  # bad flags fail before the model loads
        loaded = Model(model, provider=provider, threads=threads)
        settings = {**loaded.info.generation, **given}  # the model file's defaults, unless told otherwise
        sampling = SamplingConfig(**settings, stop=tuple(stop or ()), rng_seed=rng_seed)
        words = loaded.tokenizer.kind == "word"
        count = loaded.new_tokens_for_length(seed, length, words=words)
        if not words:
            sampling = replace(sampling, max_new_tokens=count)
        out = sys.stdout
        out.write(seed)
        out.flush()
        for piece in loaded.stream(seed, sampling=sampling, max_new_words=count if words else None):
            out.write(piece)
            out.flush()
        out.write("\n")

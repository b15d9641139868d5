"""rnn-info: what an exported .onnx file is, read from the file alone (no onnxruntime session, no generation).

rnn-info artifacts/default/model.onnx
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rnnx.cli.common import make_app, user_errors

app = make_app("Describe an exported rnnx .onnx file: architecture, tokenizer, weights, format, fingerprint.")


def describe(path: Path) -> dict[str, Any]:
    """The file's facts, keyed as its metadata names them; refuses what the runtime would refuse to load."""
    from rnnx.runtime.contract import META_FORMAT, ModelInfo
    from rnnx.runtime.errors import ModelFileError
    from rnnx.runtime.onnxfile import read_facts, read_metadata, read_model_bytes
    from rnnx.runtime.tokenizer import tokenizer_from_dict

    source = str(path)
    data = read_model_bytes(path)
    meta = read_metadata(data, source)
    info = ModelInfo.from_metadata(meta, source, len(data))
    facts = read_facts(data, source)
    tokenizer = tokenizer_from_dict(info.tokenizer)
    if len(tokenizer.vocab) != info.vocab_size:
        raise ModelFileError(f"{source}: vocabulary size disagrees with the metadata: re-export it")
    return {
        "path": source,
        "cell": info.cell,
        "layers": info.layers,
        "hidden": info.hidden,
        "vocab_size": info.vocab_size,
        "tokenizer": tokenizer.kind,
        "weights": info.weights,
        "opset": facts.opset,
        "format_version": int(meta[META_FORMAT]),  # checked by from_metadata
        "producer": info.producer,
        "size_bytes": facts.size_bytes,
        "fingerprint": facts.fingerprint,
    }


@app.command()
def main(
    model: Annotated[Path, typer.Argument(help="Exported .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Print what MODEL is: cell, sizes, tokenizer, weight format, opset, rnnx format version, producer, file
    size and a fingerprint of its graph (equal graphs, equal fingerprints)."""
    with user_errors():
        facts = describe(model)
        if as_json:
            typer.echo(json.dumps(facts, ensure_ascii=False))
            return
        shown = {**facts, "size_bytes": f"{facts['size_bytes']:,} ({_human(facts['size_bytes'])})"}
        width = max(len(key) for key in shown)
        for key, value in shown.items():
            text = str(value)
            typer.echo(f"{key:<{width}}  {text if text.isprintable() else repr(text)}")  # no forged lines


def _human(size: int) -> str:
    """`10.3 KiB`, `4.12 MiB`: the size in the largest binary unit it reaches."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"

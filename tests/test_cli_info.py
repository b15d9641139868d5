"""rnn-info: what an exported file is, from its bytes alone (no onnxruntime session), and which files it refuses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
from typer.testing import CliRunner

from rnnx.cli import info as info_cli
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.data import DEFAULT_LINES

runner = CliRunner()
BIN = Path(sys.executable).parent


@pytest.fixture
def no_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rnn-info made an onnxruntime session")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def expected_facts(path: Path) -> dict[str, object]:
    """The default model's facts (conftest: the built-in RNN, 32 units), read independently with onnx."""
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    return {
        "path": str(path),
        "cell": "rnn",
        "layers": 1,
        "hidden": 32,
        "vocab_size": len(CharTokenizer.build("".join(DEFAULT_LINES)).vocab),
        "tokenizer": "char",
        "weights": "fp32",
        "opset": 17,
        "format_version": int(meta["rnnx.format_version"]),
        "producer": "rnnx",
        "size_bytes": path.stat().st_size,
        "fingerprint": hashlib.sha256(proto.graph.SerializeToString()).hexdigest(),
    }


def test_json_names_every_fact(default_onnx: Path, no_sessions: None) -> None:
    result = runner.invoke(info_cli.app, [str(default_onnx), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected_facts(default_onnx)


def test_text_is_one_aligned_line_per_fact(default_onnx: Path, no_sessions: None) -> None:
    result = runner.invoke(info_cli.app, [str(default_onnx)])
    assert result.exit_code == 0, result.output
    facts = expected_facts(default_onnx)
    size = facts["size_bytes"]
    assert result.stdout.splitlines() == [
        f"path            {default_onnx}",
        "cell            rnn",
        "layers          1",
        "hidden          32",
        f"vocab_size      {facts['vocab_size']}",
        "tokenizer       char",
        "weights         fp32",
        "opset           17",
        f"format_version  {facts['format_version']}",
        "producer        rnnx",
        f"size_bytes      {size:,} ({size / 1024:.3g} KiB)",  # about 10 KiB
        f"fingerprint     {facts['fingerprint']}",
    ]


def test_equal_graphs_have_equal_fingerprints(default_onnx: Path, tmp_path: Path) -> None:
    proto = onnx.load(default_onnx)
    proto.doc_string = "a copy with a note outside the graph"
    copy = tmp_path / "copy.onnx"
    onnx.save(proto, copy)
    proto.graph.initializer[0].raw_data = bytes(len(proto.graph.initializer[0].raw_data))
    zeroed = tmp_path / "zeroed.onnx"
    onnx.save(proto, zeroed)
    prints = [json.loads(runner.invoke(info_cli.app, [str(p), "--json"]).stdout) for p in (default_onnx, copy, zeroed)]
    assert prints[0] == {**prints[1], "path": str(default_onnx), "size_bytes": prints[0]["size_bytes"]}
    assert prints[0]["fingerprint"] == prints[1]["fingerprint"] != prints[2]["fingerprint"]


def one_error_line(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]


def rewritten(default_onnx: Path, target: Path, **meta: str | None) -> Path:
    """The default model with some metadata set (None: removed), saved as `target`."""
    proto = onnx.load(default_onnx)
    kept = {p.key: p.value for p in proto.metadata_props}
    kept.update(meta)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in kept.items() if v is not None})
    onnx.save(proto, target)
    return target


def bad_file(kind: str, default_onnx: Path, tmp_path: Path) -> Path:
    target = tmp_path / f"{kind}.onnx"
    if kind == "directory":
        return tmp_path
    if kind == "text":
        target.write_text("hello, I am text")
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(default_onnx.read_bytes()[:500])
    elif kind == "no-metadata":
        rewritten(default_onnx, target, **{"rnnx.format_version": None})
    elif kind == "newer":
        rewritten(default_onnx, target, **{"rnnx.format_version": "99"})
    elif kind == "vocab":
        rewritten(default_onnx, target, **{"rnnx.vocab_size": "7"})
    elif kind == "cell":
        rewritten(default_onnx, target, **{"rnnx.cell": "transformer"})
    return target  # "missing": never written


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing", "not found"),
        ("directory", "not a file"),
        ("text", "not an onnx model"),
        ("empty", "not an onnx model"),
        ("truncated", "not an onnx model"),
        ("no-metadata", "no rnnx metadata"),
        ("newer", "newer"),
        ("vocab", "disagrees"),
        ("cell", "inconsistent"),
    ],
)
def test_refused_files(default_onnx: Path, tmp_path: Path, no_sessions: None, kind: str, words: str) -> None:
    line = one_error_line(runner.invoke(info_cli.app, [str(bad_file(kind, default_onnx, tmp_path))]))
    assert words in line.lower(), line


def test_the_installed_command(default_onnx: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "rnn-info"), str(default_onnx), "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected_facts(default_onnx)
    missing = subprocess.run([str(BIN / "rnn-info")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), missing.stderr


def test_empty_data_path_is_refused_by_rnn_eval(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rnnx.cli import eval as eval_cli

    result = CliRunner().invoke(eval_cli.app, ["--data", "", "--model", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "--data is empty" in result.stderr


@pytest.mark.parametrize("start", ["zeros", "text", "model"])
def test_a_huge_file_that_is_not_a_model_is_refused_before_it_is_read(
    default_onnx: Path, tmp_path: Path, no_sessions: None, start: str
) -> None:
    """1.5 GB (sparse) of zeros, of text, or a real export followed by zeros: refused from its first fields with
    one line by rnn-info and rnn-run, without reading the file into memory (they read all 1.5 GB, then refused)."""
    import tracemalloc

    from rnnx.cli import run as run_cli

    path = tmp_path / f"{start}.onnx"
    path.write_bytes({"zeros": b"", "text": b"hello, I am text\n" * 100, "model": default_onnx.read_bytes()}[start])
    os.truncate(path, 1500 * 2**20)
    for app, args in ((info_cli.app, [str(path)]), (run_cli.app, ["--model", str(path), "--seed", "good"])):
        tracemalloc.start()
        try:
            line = one_error_line(runner.invoke(app, args))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert line == f"error: {path} is not an ONNX model (corrupt or another format): re-export it"
        assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB held while refusing {path}"

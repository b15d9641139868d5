"""Bad input: one clear `error:` line, a non-zero exit code, no traceback, and nothing overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnx.cli import export as export_cli
from rnnx.cli import run as run_cli
from rnnx.cli import train as train_cli

runner = CliRunner()


def assert_clean_error(result, exit_code: int, *words: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def model_copy(default_model_dir: Path, default_onnx: Path, tmp_path: Path) -> Path:
    """A private copy of the trained and exported default model that a test may try to damage."""
    target = tmp_path / "model"
    shutil.copytree(default_model_dir, target)
    return target


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_export_of_missing_model_directory(tmp_path: Path) -> None:
    result = runner.invoke(export_cli.app, [str(tmp_path / "nope")])
    assert_clean_error(result, 1, "not found", "rnn-train")


@pytest.mark.parametrize("opset", ["9", "13", "24"])
def test_export_with_opset_out_of_range_writes_nothing(model_copy: Path, opset: str) -> None:
    before = snapshot(model_copy)
    result = runner.invoke(export_cli.app, [str(model_copy), "--opset", opset])
    assert_clean_error(result, 2, "opset", "14", "23")
    assert snapshot(model_copy) == before


def test_run_on_corrupt_onnx(model_copy: Path) -> None:
    corrupt = model_copy / "corrupt.onnx"
    corrupt.write_bytes((model_copy / "model.onnx").read_bytes()[:1000])
    result = runner.invoke(run_cli.app, ["--model", str(corrupt), "--seed", "good", "--len", "15"])
    assert_clean_error(result, 1, "corrupt.onnx")


def test_run_on_missing_onnx(tmp_path: Path) -> None:
    result = runner.invoke(run_cli.app, ["--model", str(tmp_path / "x.onnx"), "--seed", "good"])
    assert_clean_error(result, 1, "not found", "rnn-export")


@pytest.mark.parametrize(
    "content, words",
    [(b"", ["empty"]), (b"  \n\n ", ["empty"]), ("caf\u00e9 ol\u00e9".encode("latin-1"), ["utf-8"])],
    ids=["empty", "whitespace", "latin-1"],
)
def test_train_on_unusable_data_keeps_the_old_model(model_copy: Path, content: bytes, words: list[str]) -> None:
    data = model_copy.parent / "data.txt"
    data.write_bytes(content)
    before = snapshot(model_copy)
    result = runner.invoke(train_cli.app, ["--data", str(data), "--out", str(model_copy)])
    assert result.exit_code != 0
    assert_clean_error(result, result.exit_code, *words)
    assert snapshot(model_copy) == before


def test_train_on_missing_data_file(tmp_path: Path) -> None:
    result = runner.invoke(train_cli.app, ["--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert_clean_error(result, result.exit_code, "not found")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", "good morning", "--len", "5"], ["shorter than the seed"]),
        (["--seed", "good", "--temperature", "-0.5"], ["temperature"]),
        (["--seed", "good", "--temperature", "1", "--top-p", "0"], ["top-p"]),
        (["--seed", "good", "--temperature", "1", "--top-p", "1.5"], ["top-p"]),
        (["--seed", "good", "--provider", "tpu"], ["provider"]),
        (["--seed", "", "--len", "5"], ["empty"]),
        (["--seed", "good", "--temperature", "1e50"], ["temperature", "at most 1e+30"]),
        (["--seed", "good", "--repetition-penalty", "1e308"], ["repetition penalty", "at most 1e+30"]),
        (["--seed", "good", "--temperature", "1", "--rng-seed", str(2**70)], ["seed", "2**64-1"]),
    ],
    ids=[
        "len-short", "negative-temperature", "top-p-zero", "top-p-above-one", "provider", "empty-seed",
        "huge-temperature", "huge-penalty", "huge-seed",
    ],
)  # fmt: skip
def test_run_usage_errors(default_onnx: Path, args: list[str], words: list[str]) -> None:
    result = runner.invoke(run_cli.app, ["--model", str(default_onnx), *args])
    assert_clean_error(result, 2, *words)


def test_out_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    result = runner.invoke(train_cli.app, ["--out", str(blocker)])
    assert_clean_error(result, 1, "blocker")
    assert blocker.read_text() == "keep me"


def test_resume_of_a_finished_run_changes_nothing(model_copy: Path) -> None:
    before = snapshot(model_copy)
    result = runner.invoke(train_cli.app, ["--out", str(model_copy), "--resume"])
    assert_clean_error(result, 2, "already reached its limit")
    assert snapshot(model_copy) == before


def test_run_on_onnx_from_another_tool(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(foreign, tmp_path / "foreign.onnx")  # onnx's default IR version, newer than onnxruntime reads
    result = runner.invoke(run_cli.app, ["--model", str(tmp_path / "foreign.onnx"), "--seed", "good"])
    assert_clean_error(result, 1, "no rnnx metadata")


@pytest.mark.parametrize(
    "command",
    [["rnn-train", "--hidden", "abc"], ["rnn-export", "--opset", "x"], ["rnn-run"], ["rnn-run", "--bogus", "1"]],
    ids=["not-an-int", "opset-text", "missing-seed", "unknown-option"],
)
def test_option_parse_errors_are_one_line_too(tmp_path: Path, command: list[str]) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.mark.parametrize("temperature", ["1e-40", "5e-324"])
def test_run_with_a_tiny_temperature_is_greedy(default_onnx: Path, temperature: str) -> None:
    args = ["--model", str(default_onnx), "--seed", "good", "--len", "15"]
    greedy = runner.invoke(run_cli.app, args)
    tiny = runner.invoke(run_cli.app, [*args, "--temperature", temperature])
    assert (tiny.exit_code, tiny.stdout) == (0, greedy.stdout)
    assert len(greedy.stdout.rstrip("\n")) == 15  # it generates, as greedy does


def test_run_on_a_word_model_whose_pattern_is_crafted(default_onnx: Path, tmp_path: Path) -> None:
    """A file that brings its own regular expression is refused before anything compiles it.

    `(a+)+$` backtracks for ever on "aaaa...!": the runtime used to compile the file's pattern and hang here.
    """
    import json

    import onnx

    from rnnx.runtime.tokenizer import WordTokenizer

    proto = onnx.load(default_onnx)
    meta = {p.key: p.value for p in proto.metadata_props}
    vocab = json.loads(meta["rnnx.tokenizer"])["vocab"]
    crafted = {**WordTokenizer(vocab=tuple(vocab)).to_dict(), "pattern": "(a+)+$"}
    del crafted["rules"]  # as rnnx 0.1.0 wrote it: the pattern alone
    meta["rnnx.tokenizer"] = json.dumps(crafted)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    path = tmp_path / "crafted.onnx"
    onnx.save(proto, path)
    result = runner.invoke(run_cli.app, ["--model", str(path), "--seed", "a" * 40 + "!", "--len", "50"])
    assert_clean_error(result, 1, "pattern", "re-train")

"""rnn-run's sampling options on the trained default model (conftest): stop texts, penalty, threads, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from rnnx.cli import run as run_cli

runner = CliRunner()


def rnn_run(onnx: Path, *args: str) -> Result:
    return runner.invoke(run_cli.app, ["--model", str(onnx), "--provider", "cpu", *args])


def test_plain_run_prints_seed_and_continuation(default_onnx: Path) -> None:
    result = rnn_run(default_onnx, "--seed", "good", "--len", "15")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "good i am fine \n"


def test_stop_ends_the_text_before_the_stop_string(default_onnx: Path) -> None:
    result = rnn_run(default_onnx, "--seed", "good", "--len", "15", "--stop", " am", "--stop", "zzz")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "good i\n"


def test_threads_and_penalty_options_run(default_onnx: Path) -> None:
    result = rnn_run(default_onnx, "--seed", "good", "--len", "15", "--threads", "1", "--repetition-penalty", "1.0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "good i am fine \n"
    penalized = rnn_run(default_onnx, "--seed", "good", "--len", "30", "--repetition-penalty", "5")
    assert penalized.exit_code == 0 and len(penalized.stdout) == 31


def test_sampling_with_a_seed_repeats(default_onnx: Path) -> None:
    args = ["--seed", "good", "--len", "40", "--temperature", "1.5", "--top-k", "5", "--rng-seed", "7"]
    first, second = rnn_run(default_onnx, *args), rnn_run(default_onnx, *args)
    assert first.exit_code == 0 and first.stdout == second.stdout and len(first.stdout) == 41


@pytest.mark.parametrize(
    "args, words",
    [
        (["--repetition-penalty", "0.5"], "repetition penalty"),
        (["--threads", "-2"], "threads"),
        (["--stop", ""], "stop"),
        (["--top-k", "-1"], "top-k"),
    ],
)
def test_bad_values_are_usage_errors(default_onnx: Path, args: list[str], words: str) -> None:
    result = rnn_run(default_onnx, "--seed", "good", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr

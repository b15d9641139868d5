"""rnn-serve's command line: bad input is one `error:` line and a non-zero exit, before any server starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import write_model

NO_FASTAPI = "import sys; sys.modules['fastapi'] = None; from rnnx.runtime.serve.cli import main; main()"


def rnn_serve(*args: str, code: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "rnnx.runtime.serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("cli") / "m.onnx", hidden=16)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--max-batch", "0"], 2, "max-batch must be a whole number of 1 or more"),
        (["--max-queue", "-1"], 2, "max-queue must be"),
        (["--api-key-env", "RNNX_SURELY_UNSET_VARIABLE"], 2, "RNNX_SURELY_UNSET_VARIABLE: the variable is not set"),
        (["--drain-seconds", "-1"], 2, "drain-seconds"),
        (["--body-timeout", "0"], 2, "body-timeout must be more than 0"),
        (["--body-timeout", "nan"], 2, "body-timeout must be more than 0"),
        (["--prompt-tokens-per-step", "0"], 2, "prompt-tokens-per-step must be a whole number of 1 or more"),
    ],
)
def test_bad_options_are_one_error_line(model_path: Path, args: list[str], code: int, words: str) -> None:
    run = rnn_serve(str(model_path), *args)
    assert run.returncode == code and run.stderr.startswith("error: ") and words in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_a_missing_model_file_and_a_missing_extra_say_what_to_do(tmp_path: Path, model_path: Path) -> None:
    run = rnn_serve(str(tmp_path / "nothing.onnx"))
    assert run.returncode == 1 and "not found" in run.stderr and "Traceback" not in run.stderr
    run = rnn_serve(str(model_path), code=NO_FASTAPI)
    assert run.returncode == 1 and 'pip install "rnnx-runtime[serve]"' in run.stderr and "Traceback" not in run.stderr

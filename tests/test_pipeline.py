"""The README's default job, through the installed commands: train, export, generate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_default_job_completes_good_to_good_i_am_fine(tmp_path: Path) -> None:
    train = run("rnn-train", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "artifacts/default/model.safetensors").is_file()
    assert (tmp_path / "artifacts/default/model.json").is_file()

    export = run("rnn-export", "--opset", "17", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "artifacts/default/model.onnx").is_file()

    generated = run("rnn-run", "--seed", "good", "--len", "15", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip() == "good i am fine"
    assert len(generated.stdout.rstrip("\n")) == 15  # --len counts the seed too


def test_runtime_import_leaves_torch_out() -> None:
    code = "import sys, rnnx.runtime; assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_command_explains_its_options() -> None:
    for command, options in {
        "rnn-train": ["--data", "--cell", "--layers", "--hidden", "--epochs", "--rng-seed", "--out"],
        "rnn-export": ["--opset", "--output"],
        "rnn-run": ["--model", "--seed", "--len", "--temperature", "--top-k", "--top-p", "--rng-seed", "--provider"],
    }.items():
        result = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        for option in options:
            assert option in result.stdout, f"{command} --help does not mention {option}"

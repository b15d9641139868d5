"""The runtime-only distribution (runtime/pyproject.toml, "rnnx-runtime"), installed for real into a fresh venv.

NETWORK: this test downloads numpy and onnxruntime from PyPI with pip (pip's cache makes later runs quick). It
builds rnnx-runtime from a copy of runtime/, installs it into a new virtual environment that has no torch, and
generates text there from a model exported here with the full rnnx; the text must equal the full install's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
import torch

import rnnx.runtime
from rnnx.export.graph import build_step_graph
from rnnx.runtime import Model, SamplingConfig
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"

GENERATE = """
import importlib.metadata, importlib.util, sys
from rnnx.runtime import Model, SamplingConfig
model = Model(sys.argv[1], provider="cpu")
print(model.generate("the fox", 40, SamplingConfig(temperature=0.9, top_k=8, rng_seed=3)), end="")
assert "torch" not in sys.modules and importlib.util.find_spec("torch") is None, "torch is importable"
assert importlib.util.find_spec("rnnx.trainer") is None, "the trainer came along"
names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
assert {"rnnx-runtime", "numpy", "onnxruntime"} <= names and "torch" not in names, sorted(names)
"""


def test_versions_agree() -> None:
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    runtime = tomllib.loads((RUNTIME / "pyproject.toml").read_text())["project"]["version"]
    assert main == runtime == rnnx.runtime.__version__


def test_runtime_only_install_in_a_fresh_venv_generates_text_without_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("the quick brown fox jumps over the lazy dog")
    config = ModelConfig(cell="gru", vocab_size=len(tokenizer.vocab), embed=8, hidden=32, layers=2)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(build_step_graph(RNNLM(config).eval(), tokenizer, 17).SerializeToString())
    expected = Model(onnx_path, provider="cpu").generate(
        "the fox", 40, SamplingConfig(temperature=0.9, top_k=8, rng_seed=3)
    )

    python, env = install_runtime(tmp_path)

    run = subprocess.run(
        [str(python), "-c", GENERATE, str(onnx_path)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected


def install_runtime(tmp_path: Path, extras: str = "") -> tuple[Path, dict[str, str]]:
    """rnnx-runtime (with `extras`, e.g. "[serve]") built from a copy of runtime/ and installed into a new venv
    under `tmp_path`: that venv's python and the environment to run it in."""
    source = tmp_path / "rnnx-runtime"  # a copy: setuptools' build/ and egg-info never land in the checkout
    shutil.copytree(RUNTIME, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check", "-q"]
        + ["--no-input", f"{source}{extras}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python, env

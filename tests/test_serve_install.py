"""rnn-serve from the runtime-only distribution with its serve extra, installed for real into a fresh venv.

NETWORK: pip downloads numpy, onnxruntime, fastapi, uvicorn and their dependencies from PyPI (its cache makes
later runs quick). The server there answers a completion with the text the full install generates, and the
venv has no torch.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from test_runtime_install import install_runtime
from test_serve import free_port, write_model

from rnnx.runtime import Model, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import importlib.metadata, importlib.util
assert importlib.util.find_spec("torch") is None, "torch is importable"
assert importlib.util.find_spec("typer") is None, "typer came along"
names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
assert {"rnnx-runtime", "fastapi", "uvicorn"} <= names and "torch" not in names, sorted(names)
"""


def test_runtime_serve_extra_installs_without_torch_and_serves(tmp_path: Path) -> None:
    model_path = write_model(tmp_path / "tiny.onnx")
    expected = Model(model_path, provider="cpu").generate("the fox", 25, SamplingConfig(temperature=1.0, rng_seed=4))

    python, env = install_runtime(tmp_path, "[serve]")
    check = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr

    port = free_port()
    command = [str(python.parent / "rnn-serve"), str(model_path), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"prompt": "the fox", "max_tokens": 25, "seed": 4}).encode()
        reply = _post_when_up(f"http://127.0.0.1:{port}/v1/completions", body, proc)
        assert "the fox" + reply["choices"][0]["text"] == expected
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
        proc.stderr.close()


def _post_when_up(url: str, body: bytes, proc: subprocess.Popen, deadline: float = 90.0) -> dict:
    """POST once the server listens (retried while the connection is refused, up to `deadline` seconds)."""
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body), timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.URLError as exc:
            if proc.poll() is not None or time.monotonic() > end or not isinstance(exc.reason, ConnectionError):
                raise
            time.sleep(0.05)

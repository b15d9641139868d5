"""bench/gpu_check.sh, the GPU campaign of issue 14, stays runnable: it parses, its helpers import, and its
no-CUDA path runs end to end to a summary, so that no device minute is spent on a typo. (The campaign itself runs
only on a GPU machine; docs/gpu.md.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = (
    "0 machine facts",
    "1 CUDA tests",
    "2 CUDA latency",
    "2b token choice in the graph",
    "3 training throughput",
    "4 quality run",
)


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed here")
def test_script_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_helpers_import_and_find_the_cuda_tests(bench_path: None) -> None:
    import gpu_campaign
    import gpu_latency
    import gpu_training

    files = gpu_campaign.cuda_test_files()
    assert files[0] == "tests/test_runtime_cuda.py"
    assert "tests/test_gpu_check.py" not in files  # the campaign must never run itself
    assert gpu_latency.BATCHES == (1, 64, 256, 1024)
    assert callable(gpu_training.plain_loop_on)


def test_quality_settings_take_typed_overrides_and_refuse_unknown_keys(bench_path: None) -> None:
    from gpu_training import quality_settings

    _, model_flags, train_flags = quality_settings(["hidden=512", "layers=2", "lr=0.002", "tie=false"])
    assert (model_flags["hidden"], model_flags["layers"], model_flags["tie"]) == (512, 2, False)
    assert train_flags["lr"] == 0.002
    with pytest.raises(SystemExit, match="hiden"):
        quality_settings(["hiden=512"])


@pytest.mark.skipif(shutil.which("timeout") is None, reason="the script time-boxes steps with GNU timeout")
def test_no_cuda_path_writes_a_summary_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "SMOKE": "0", "RNNX_GPU_CHECK_NO_CUDA": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.md").read_text("utf-8")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in summary.splitlines() if " | " in line}
    assert rows["setup"] == "ok"
    assert rows[STEPS[0]] == "ok"
    for step in STEPS[1:]:
        assert rows[step] == "skipped: no CUDA", summary
    assert (out / "facts.json").is_file() and (out / "cuda.json").is_file()
    assert not list(tmp_path.glob("gpu-out*"))  # everything went under $OUT

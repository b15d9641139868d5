"""bench/gpu_probe.py, the campaign's probe of the token choice inside the graph: its unrolled graphs choose
exactly what the plain step graph plus the runtime's host choice chooses, and the check would see it if not.
Tiny models on the CPU provider; the probe's CUDA timings run only on a GPU machine (docs/gpu.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = "hello world, the quick brown fox"  # 20 tokens with <unk>: top-k is cut to 19 here


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_probe

        yield gpu_probe
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module", params=["lstm", "gru"])
def tiny(request, probe):
    from rnnx.trainer.model import ModelConfig

    cfg = ModelConfig(cell=request.param, embed=8, hidden=16, layers=2)
    step, vocab = probe.step_graph(cfg, TEXT)
    return cfg, step, vocab


def bound_for(probe, tiny, variant, batch):
    cfg, step, vocab = tiny
    session = probe.open_session(probe.unrolled(step, cfg.cell, variant, vocab), "cpu", cuda_graph=False)
    return probe.Bound(session, variant, (cfg.layers, cfg.hidden, vocab), batch, "cpu", None)


@pytest.mark.parametrize("choice", ["greedy", "sampled"])
@pytest.mark.parametrize("k", [1, 3])
def test_unrolled_graph_chooses_what_the_host_chooses(probe, tiny, choice: str, k: int) -> None:
    variant = probe.Variant(choice, k)
    reference = probe.open_session(tiny[1], "cpu", cuda_graph=False)
    compared, mismatches, first = probe.check(bound_for(probe, tiny, variant, 3), reference, variant, 3, 60)
    assert (compared, mismatches, first) == (60 // k * k * 3, 0, None)


def test_check_sees_a_graph_that_chooses_otherwise(probe, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    variant = probe.Variant("sampled", 2)
    bound = bound_for(probe, tiny, variant, 3)  # built with the probe's temperature
    reference = probe.open_session(tiny[1], "cpu", cuda_graph=False)
    monkeypatch.setattr(probe, "TEMPERATURE", 5.0)  # the host reference now samples flatter
    compared, mismatches, first = probe.check(bound, reference, variant, 3, 60)
    assert compared == 180 and mismatches > 0 and first is not None


def test_sampled_graph_at_the_ends_of_u_picks_no_cut_token(probe, tiny) -> None:
    """u = 0 and u just below 1 pick the first and the last token of positive weight, as the host does."""
    cfg, _, vocab = tiny
    variant = probe.Variant("sampled", 1)
    bound = bound_for(probe, tiny, variant, 2)
    rng = np.random.default_rng(0)
    state = [rng.standard_normal((cfg.layers, 2, cfg.hidden)).astype(np.float32) for _ in bound.states[0]]
    u = np.array([[0.0, np.nextafter(np.float32(1), np.float32(0))]], np.float32)
    bound.load(np.array([1, 2]), state)
    bound.uniform.update_inplace(u)
    bound.run()
    got = bound.tokens_out.numpy()[0]
    logits = bound.logits.numpy().copy()
    assert got.tolist() == probe.host_choice(logits, variant, u[0]).tolist()
    cut = np.sort(np.where(np.arange(vocab) == 0, -np.inf, logits), axis=1)[:, -probe.check_top_k(vocab)]
    assert all(0 < t < vocab and logits[row, t] >= cut[row] for row, t in enumerate(got.tolist()))


@pytest.mark.skipif(shutil.which("timeout") is None, reason="the script time-boxes steps with GNU timeout")
def test_campaign_runs_the_probe_step_and_skips_it_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "SMOKE": "0",
        "STEPS": "probe",
        "RNNX_GPU_CHECK_NO_CUDA": "1",
        "PYTHON": sys.executable,
    }
    script = ROOT / "bench" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.md").read_text("utf-8")
    assert "| 2b token choice in the graph | skipped: no CUDA |" in summary, summary
    assert "## Token choice in the graph" in summary  # probe.md is part of the summary


def test_a_variant_that_fails_is_one_line_in_the_table_and_the_others_go_on(
    probe, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, step, vocab = tiny
    real = probe.unrolled

    def broken(step, cell, variant, vocab):
        if variant == probe.Variant("sampled", 8):
            raise ValueError("first line\nTopK is not here")
        return real(step, cell, variant, vocab)

    monkeypatch.setattr(probe, "unrolled", broken)
    monkeypatch.setattr(probe, "CHECK_STEPS", 16)
    found = probe.Found([], [], [])
    shapes = (cfg.layers, cfg.hidden, vocab)
    probe.probe_device("cpu", "CPU", step, cfg.cell, shapes, 0.0, float("inf"), found, lambda: None)
    failed = [r for r in found.rows if r.micros is None]
    assert [(r.batch, r.k) for r in failed] == [(1, 8), (64, 8)]
    assert all(r.note == "build/load failed: ValueError: TopK is not here" for r in failed)
    assert len(found.rows) == 24 and len(found.checks) == 5 and len(found.errors) == 1
    assert all(c.mismatches == 0 and c.compared == 16 // c.k * c.k * probe.CHECK_BATCH for c in found.checks)

"""The campaign's latency step: bench/latency.py's CUDA rows for its models at batch 1, 64, 256 and 1024, a
sampled CUDA-graph row at batch 1, and whether the CUDA-graph text equals the CPU text (greedy and sampled).

Run by bench/gpu_campaign.py (`latency`); the rows come from latency.py's own `cuda_rows`, unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gpu_common import BENCH, OK, SKIPPED_NO_CUDA, Cuda, cuda_state, write_result

BATCHES = (1, 64, 256, 1024)  # 1 and 64 as the CPU table, 256 and 1024 for throughput
SAMPLED = "rnnx fp32, CUDA graphs, sampled (T 0.8, top-k 40)"
PARITY_TOKENS = 200
# issue 14's targets (LSTM 1024, embedding 256, vocab 65)
TARGET_BATCH1_US = 50.0
TARGET_BATCH64_TOKENS_S = 1e6


def latency_module():
    sys.path.insert(0, str(BENCH))
    import latency

    return latency


def export_for(name: str, cfg: Any, work: Path) -> tuple[Any, Path]:
    """The model and its fp32 export exactly as bench/latency.py's `bench_model` makes them."""
    import torch

    from rnnx.export import export_model
    from rnnx.runtime.tokenizer import CharTokenizer
    from rnnx.trainer.checkpoint import save_model
    from rnnx.trainer.model import RNNLM

    latency = latency_module()
    tokenizer = CharTokenizer.build(latency.VOCAB_TEXT)
    torch.manual_seed(0)
    model = RNNLM(replace(cfg, vocab_size=len(tokenizer.vocab))).eval()
    model_dir = work / name.split()[0].lower()
    save_model(model_dir, model, tokenizer, {})
    path = model_dir / "fp32.onnx"
    export_model(model_dir, path)
    return model, path


def sampled_loop(model: Any, batch: int) -> Callable[[int], None]:
    """rnnx's generation loop with sampling (temperature and top-k) in place of the greedy choice."""
    from rnnx.runtime import SamplingConfig

    prompts = [chr(33 + row % 64) for row in range(batch)]
    run = model.generator(prompts, SamplingConfig(temperature=0.8, top_k=40, rng_seed=1, max_new_tokens=10**9))

    def loop(n: int) -> None:
        for _ in range(n):
            run.step()

    return loop


def step_profile(model: Any, batch: int, steps_n: int = 2000) -> dict[str, float]:
    """Where one generation step's time goes, µs per step (means over `steps_n` steps, after a warm-up).

    `steps.run` is timed whole, and for the CUDA steps also as its three calls (token ids up, the graph run,
    logits down: private members, read here for the profile only; with device outputs onnxruntime may return
    before the GPU is done, so the wait can show up in "logits down"); then rnnx's whole generation step, greedy
    and sampled, whose excess over `steps.run` is the host's sampling and text work.
    """
    import numpy as np

    from rnnx.runtime import SamplingConfig
    from rnnx.runtime.cuda import CudaSteps

    def mean_us(fn: Callable[[], None]) -> float:
        for _ in range(20):
            fn()
        start = time.perf_counter()
        for _ in range(steps_n):
            fn()
        return (time.perf_counter() - start) * 1e6 / steps_n

    found: dict[str, float] = {}
    steps = model.open_steps(batch)
    ids = np.arange(batch, dtype=np.int64) % 60 + 1
    found["steps.run (up, graph, down)"] = mean_us(lambda: steps.run(ids))
    if isinstance(steps, CudaSteps):
        parts = {"token ids up (update_inplace)": 0.0, "graph run (run_with_iobinding)": 0.0, "logits down": 0.0}
        names = list(parts)
        for i in range(steps_n + 20):
            current = steps._current
            t0 = time.perf_counter()
            steps._tokens.update_inplace(ids)
            t1 = time.perf_counter()
            steps._session.run_with_iobinding(steps._bindings[current], steps._run_options[current])
            t2 = time.perf_counter()
            steps._logits.numpy()
            t3 = time.perf_counter()
            steps._current = 1 - current
            if i >= 20:
                for name, took in zip(names, (t1 - t0, t2 - t1, t3 - t2)):
                    parts[name] += took * 1e6 / steps_n
        found.update(parts)
    steps.close()
    prompts = [chr(33 + row % 64) for row in range(batch)]
    for how, sampling in (
        ("generation step, greedy", SamplingConfig(max_new_tokens=10**9)),
        ("generation step, sampled (T 0.8, top-k 40)", SamplingConfig(temperature=0.8, top_k=40, rng_seed=1)),
    ):
        run = model.generator(prompts, replace(sampling, max_new_tokens=10**9))
        found[how] = mean_us(run.step)
        run.close()
    return found


def profile_table(profiles: list[dict[str, Any]]) -> str:
    lines = ["| model | batch | phase | µs per step |", "|---|---|---|---|"]
    for p in profiles:
        lines += [f"| {p['model']} | {p['batch']} | {phase} | {us:.1f} |" for phase, us in p["phases"].items()]
    return "\n".join(lines)


def text_parity(path: Path, provider: str, cuda_graph: bool) -> list[dict[str, Any]]:
    """The same prompts, greedy and sampled with one seed, on the CPU and on `provider`: is the text identical?"""
    from rnnx.runtime import Model, SamplingConfig

    cpu = Model(path, provider="cpu")
    other = Model(path, provider=provider, cuda_graph=cuda_graph)
    prompts = ["ROMEO:", "THE ", "A"]
    found = []
    for how, sampling in (
        ("greedy", SamplingConfig(max_new_tokens=PARITY_TOKENS)),
        ("sampled", SamplingConfig(temperature=0.8, top_k=40, rng_seed=7, max_new_tokens=PARITY_TOKENS)),
    ):
        for batch in (1, 3):
            want = cpu.generate_batch(prompts[:batch], sampling=sampling)
            got = other.generate_batch(prompts[:batch], sampling=sampling)
            first = next((i for i, (a, b) in enumerate(zip("".join(want), "".join(got))) if a != b), None)
            found.append({"how": how, "batch": batch, "identical": got == want, "first_difference": first})
    return found


def latency_table(rows: list[Any]) -> str:
    lines = [
        "| model | batch | what | µs/step | tokens/s | × torch eager (CUDA) | × torch CUDA graph |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.micros is None:
            lines.append(f"| {row.model} | {row.batch} | {row.what} | {row.note} | | | |")
            continue
        same = {r.what: r.micros for r in rows if (r.model, r.batch) == (row.model, row.batch) and r.micros}
        eager, graph = same.get("torch eager (CUDA)"), same.get("torch CUDA graph")
        lines.append(
            f"| {row.model} | {row.batch} | {row.what} | {row.micros:.1f} | {row.batch * 1e6 / row.micros:,.0f} | "
            f"{f'{row.micros / eager:.2f}' if eager else '—'} | {f'{row.micros / graph:.2f}' if graph else '—'} |"
        )
    return "\n".join(lines)


def latency_targets(rows: list[Any], parity: list[dict[str, Any]]) -> list[str]:
    at = {(r.model, r.batch, r.what): r.micros for r in rows if r.micros}
    lstm, graphs = "LSTM 1024", "rnnx fp32, CUDA graphs"
    checks = []
    for what in (SAMPLED, graphs):
        us = at.get((lstm, 1, what))
        checks.append(
            f"- LSTM 1024, batch 1, {what}: ≤ {TARGET_BATCH1_US:.0f} µs per token: "
            + (f"{us:.1f} µs — {'met' if us <= TARGET_BATCH1_US else 'MISSED'}" if us else "not measured")
        )
    for what in (graphs, "rnnx fp32, IOBinding (CUDA)"):
        us = at.get((lstm, 64, what))
        speed = 64e6 / us if us else None
        checks.append(
            f"- LSTM 1024, batch 64, {what}: ≥ 1 M tokens/s: "
            + (f"{speed / 1e6:.2f} M — {'met' if speed >= TARGET_BATCH64_TOKENS_S else 'MISSED'}" if speed else "—")
        )
    same = all(p["identical"] for p in parity) if parity else None
    checks.append(
        "- LSTM 1024: CUDA-graph text identical to the CPU text, greedy and sampled, batch 1 and 3: "
        + ("not checked" if same is None else ("met" if same else "MISSED (see latency.json: parity)"))
    )
    return checks


def latency_step(args: argparse.Namespace) -> int:
    out, work = args.out, Path(args.work)
    cuda = cuda_state(out)
    if not cuda.torch:
        if not args.smoke:
            write_result(out, "latency", "## CUDA latency\n\nskipped: no CUDA", {}, "no CUDA: " + cuda.note)
            return SKIPPED_NO_CUDA
        return latency_rehearsal(out, work, cuda)
    latency = latency_module()
    deadline = time.monotonic() + args.limit - 20  # leave room to write the results
    rows: list[Any] = []
    parity: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    errors: list[str] = []

    def save(final: bool) -> None:
        md = ["## CUDA latency (bench/latency.py's CUDA rows)", "", latency_table(rows), ""]
        md += ["Targets (issue 14):", *latency_targets(rows, parity), ""]
        if profiles:
            md += ["Where a CUDA-graph step's time goes (`step_profile`):", "", profile_table(profiles), ""]
        md += [f"- {e}" for e in errors]
        data = {
            "rows": [asdict(r) for r in rows],
            "parity": parity,
            "profiles": profiles,
            "errors": errors,
            "final": final,
        }
        graph1 = next((r.micros for r in rows if (r.model, r.batch, r.what) == ("LSTM 1024", 1, SAMPLED)), None)
        detail = f"{len(rows)} rows, {len(errors)} errors; LSTM 1024 batch 1 CUDA graphs sampled: " + (
            f"{graph1:.1f} µs" if graph1 else "—"
        )
        write_result(out, "latency", "\n".join(md), data, detail)

    for name, cfg in latency.MODELS.items():
        if time.monotonic() > deadline:
            errors.append(f"{name}: not reached (time)")
            continue
        try:
            model, path = export_for(name, cfg, work)
        except Exception as exc:  # one model's failure must not cost the others' rows
            errors.append(f"{name}: export failed: {type(exc).__name__}: {exc}")
            continue
        for batch in BATCHES:
            if time.monotonic() > deadline:
                errors.append(f"{name} batch {batch}: not reached (time)")
                continue
            try:
                rows += latency.cuda_rows(name, model, path, batch, args.seconds)
                if batch == 1 and cuda.onnxruntime:
                    from rnnx.runtime import Model

                    on_gpu = Model(path, provider="cuda", cuda_graph=True)
                    us = latency.timed_together([sampled_loop(on_gpu, 1)], args.seconds)[0]
                    rows.append(latency.Row(name, 1, SAMPLED, us))
            except Exception as exc:
                errors.append(f"{name} batch {batch}: {type(exc).__name__}: {exc}")
            print(f"  {name} batch {batch}: {len(rows)} rows so far", flush=True)
            save(False)
        if name == "LSTM 1024" and cuda.onnxruntime:
            try:
                parity = text_parity(path, "cuda", cuda_graph=True)
            except Exception as exc:
                errors.append(f"text parity: {type(exc).__name__}: {exc}")
            try:
                from rnnx.runtime import Model

                on_gpu = Model(path, provider="cuda", cuda_graph=True)
                for batch in (1, 64):
                    profiles.append({"model": name, "batch": batch, "phases": step_profile(on_gpu, batch)})
            except Exception as exc:
                errors.append(f"step profile: {type(exc).__name__}: {exc}")
            save(False)
    save(True)
    missing_rnnx = any(r.micros is None for r in rows)
    return 1 if errors or missing_rnnx or not rows else OK


def latency_rehearsal(out: Path, work: Path, cuda: Cuda) -> int:
    """Without CUDA: the same code on the small model, CPU provider, a fraction of a second per row."""
    from rnnx.runtime import Model

    latency = latency_module()
    name = "RNN 256 (small)"
    model, path = export_for(name, latency.MODELS[name], work)
    if latency.cuda_rows(name, model, path, 1, 0.1) != []:
        raise RuntimeError("latency.cuda_rows measured something without CUDA")
    cpu = Model(path, provider="cpu")
    loops = [latency.rnnx_loop(cpu, 1), sampled_loop(cpu, 1)]
    micros = latency.timed_together(loops, 0.2, rounds=2)
    rows = [
        latency.Row(name, 1, "rnnx fp32 (CPU rehearsal), generation loop", micros[0]),
        latency.Row(name, 1, "rnnx fp32 (CPU rehearsal), sampled (T 0.8, top-k 40)", micros[1]),
    ]
    parity = text_parity(path, "cpu", cuda_graph=False)
    profiles = [{"model": name, "batch": 1, "phases": step_profile(cpu, 1, 50)}]
    host = {"model": name + ", CUDA steps' code on host", "batch": 2, "phases": step_profile(HostSteps(cpu), 2, 50)}
    profiles.append(host)
    md = ["## CUDA latency", "", "skipped: no CUDA. CPU rehearsal of the same code (not a measurement):", ""]
    latency_targets(rows, parity)  # run, not shown: with nothing measured on a GPU the verdicts mean nothing
    same = all(p["identical"] for p in parity)
    md += [latency_table(rows), "", f"Text parity code ran, CPU against CPU: {'identical' if same else 'DIFFERENT'}."]
    md += ["", profile_table(profiles)]
    data = {"rows": [asdict(r) for r in rows], "parity": parity, "profiles": profiles, "cuda": asdict(cuda)}
    write_result(out, "latency", "\n".join(md), data, f"no CUDA; CPU rehearsal ran ({len(rows)} rows, parity checked)")
    return SKIPPED_NO_CUDA


class HostSteps:
    """A CPU model whose `open_steps` lends the CUDA steps' code on host OrtValues: the profile's split runs too."""

    def __init__(self, model: Any) -> None:
        from rnnx.runtime.cuda import GraphPool
        from rnnx.runtime.steps import PromptReader

        self._model = model
        self._pool = GraphPool(model.session, model.info, PromptReader(model.step, None, model.info), device="cpu")

    def open_steps(self, batch: int) -> Any:
        steps = self._pool.acquire(batch)
        steps.load(self._model.initial_state(batch))
        return steps

    def generator(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.generator(*args, **kwargs)

"""Per-token latency of one generation step, every way of running it, side by side in one run.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/latency.py            # about 10 minutes on 2 cores
    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/latency.py --markdown docs/benchmarks.md

Models: the tutorials' char models (embedding 256, LSTM 1024 or GRU 1024, vocab 65) and a small vanilla RNN
(embedding 64, hidden 256), with fresh random weights (speed does not depend on training). Each is exported
through `rnnx.export.export_model`, fp32 and int8, exactly as `rnn-export` writes them.

Generated tokens: every row runs the same loop, one step for the whole batch, the state carried, each row's
greedy token fed back. Rows (CPU): torch eager; rnnx's generation loop (`Model.generator(...).step()`: graph
call, greedy choice, detokenizing) fp32 and int8; the bare onnxruntime `session.run` of the same fp32 session
rnnx holds, with an argmax (so the gap is rnnx's own overhead).

Prompt tokens (batch 1, a prompt of PROMPT_TOKENS tokens read by `Model.generator`, per token): through the
file's prompt path (one graph call), and step by step (the same weights in a file without the prompt path:
one graph call per token, as before format version 2), fp32 and int8.

The recurrent floor (batch 1): one onnxruntime MatMul of a [1, H] vector with the model's first recurrent
weight matrix (W_hh, [H, gates·H]), fp32 and int8 (quantized as the export quantizes it): the bytes every step
must read, in onnxruntime's own kernel. Rows are compared with the floor of their own weight format.

CUDA rows (torch eager, torch CUDA graph, rnnx with IOBinding and with CUDA graphs) run only where torch sees a
GPU; otherwise they print "skipped: no CUDA".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnx.export import export_model
from rnnx.export.quantize import quantize_int8
from rnnx.runtime import Model, SamplingConfig, contract
from rnnx.runtime.onnxfile import extract
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

VOCAB_TEXT = "".join(chr(c) for c in range(32, 32 + 64))  # 64 characters + <unk> = vocab 65
MODELS = {
    "LSTM 1024": ModelConfig(cell="lstm", embed=256, hidden=1024),
    "GRU 1024": ModelConfig(cell="gru", embed=256, hidden=1024),
    "RNN 256 (small)": ModelConfig(cell="rnn", embed=64, hidden=256),
}
BATCHES = (1, 64)
PROMPT_TOKENS = 256
FLOOR = "recurrent floor"
PROMPT_PATH, STEP_BY_STEP = "prompt path", "step by step"
CUDA_ROWS = ("torch eager (CUDA)", "torch CUDA graph", "rnnx fp32, IOBinding (CUDA)", "rnnx fp32, CUDA graphs")

StepLoop = Callable[[int], None]  # runs n steps


@dataclass(frozen=True)
class Row:
    model: str
    batch: int
    what: str
    micros: float | None  # per step; None = skipped
    note: str = ""


def timed_together(loops: list[StepLoop], seconds: float, rounds: int = 5) -> list[float]:
    """Median µs per step of each loop, measured round-robin so that a passing load hits every row alike.

    Each loop is warmed up, then measured in `rounds` turns of about seconds / rounds each.
    """
    chunks = []
    for loop in loops:
        loop(5)
        start = time.perf_counter()
        loop(10)
        chunks.append(max(1, int(seconds / rounds / ((time.perf_counter() - start) / 10))))
    samples: list[list[float]] = [[] for _ in loops]
    for _ in range(rounds):
        for loop, chunk, mine in zip(loops, chunks, samples):
            start = time.perf_counter()
            loop(chunk)
            mine.append((time.perf_counter() - start) / chunk * 1e6)
    return [statistics.median(mine) for mine in samples]


def torch_loop(model: RNNLM, batch: int, device: str) -> StepLoop:
    tokens = (torch.arange(batch, device=device) % 64 + 1)[:, None]  # (B, 1)
    state = model.init_state(batch)

    def run(n: int) -> None:
        nonlocal tokens, state
        with torch.inference_mode():
            for _ in range(n):
                logits, state = model(tokens, state)  # (B, 1, V)
                tokens = logits.argmax(-1)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def torch_cuda_graph_loop(model: RNNLM, batch: int) -> StepLoop:
    """One captured step: static token and state buffers, replayed; the greedy token stays on the GPU."""
    tokens = (torch.arange(batch, device="cuda") % 64 + 1)[:, None]
    state = model.init_state(batch)
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up before capture, as torch asks
                model(tokens, state)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, new_state = model(tokens, state)
            next_tokens = logits.argmax(-1)

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                graph.replay()
                tokens.copy_(next_tokens)
                for s, new in zip(state, new_state):
                    s.copy_(new)
        torch.cuda.synchronize()

    return run


def rnnx_loop(model: Model, batch: int) -> StepLoop:
    """rnnx's own generation loop (greedy): graph call, sampling and detokenizing, per generated token."""
    prompts = [chr(33 + row % 64) for row in range(batch)]
    run = model.generator(prompts, SamplingConfig(max_new_tokens=10**9))

    def loop(n: int) -> None:
        for _ in range(n):
            run.step()

    return loop


def bare_session_loop(model: Model, batch: int) -> StepLoop:
    """The same session rnnx holds, called directly: what rnnx costs on top of onnxruntime."""
    session, cell = model.session, model.info.cell
    outputs = [contract.LOGITS, *contract.state_outputs(cell)]
    feeds = {contract.TOKENS: np.arange(batch, dtype=np.int64) % 64 + 1}
    feeds.update((name, s) for name, s in zip(contract.state_inputs(cell), model.initial_state(batch)))

    def run(n: int) -> None:
        for _ in range(n):
            logits, *state = session.run(outputs, feeds)
            feeds[contract.TOKENS] = logits.argmax(axis=1)
            feeds.update(zip(contract.state_inputs(cell), state))

    return run


def prompt_loop(model: Model) -> StepLoop:
    """Read a prompt of PROMPT_TOKENS tokens into a fresh run, n times; what `loop(n)` costs is n prompts."""
    prompt = "".join(chr(33 + (i * 7) % 64) for i in range(PROMPT_TOKENS))
    sampling = SamplingConfig(max_new_tokens=0)

    def loop(n: int) -> None:
        for _ in range(n):
            with model.generator([prompt], sampling):
                pass

    return loop


def floor_session(model: RNNLM, weights: str, threads: int) -> tuple[ort.InferenceSession, int]:
    """One MatMul of [1, H] with W_hhᵀ of the first layer ([H, gates·H]), in `weights` ("fp32" or "int8")."""
    w = model.state_dict()["rnn.weight_hh_l0"].detach().numpy().T.copy()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="floor_mm")],
        "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    opsets = [helper.make_opsetid("", contract.DEFAULT_OPSET)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    nbytes = w.nbytes
    if weights == "int8":
        info = contract.ModelInfo(cell="rnn", layers=1, hidden=1, vocab_size=1, tokenizer={}, weights="int8")
        proto = quantize_int8(proto, info)  # the node is not the output layer's, so it is quantized
        nbytes = w.size
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]), nbytes


def floor_loop(session: ort.InferenceSession, hidden: int) -> StepLoop:
    feeds = {"x": np.ones((1, hidden), np.float32)}

    def run(n: int) -> None:
        for _ in range(n):
            session.run(None, feeds)

    return run


def step_only_copy(path: Path) -> Path:
    """The same file without its prompt path: prompts are then read one step per token."""
    model = Model(path, provider="cpu")
    out = path.with_name(path.stem + "-steps.onnx")
    out.write_bytes(extract(path.read_bytes(), contract.step_outputs(model.info.cell), str(path)))
    return out


def cuda_available() -> bool:
    return torch.cuda.is_available()


def bench_model(name: str, cfg: ModelConfig, workdir: Path, threads: int, seconds: float) -> list[Row]:
    tokenizer = CharTokenizer.build(VOCAB_TEXT)
    torch.manual_seed(0)
    model = RNNLM(dataclasses.replace(cfg, vocab_size=len(tokenizer.vocab))).eval()
    model_dir = workdir / name.split()[0].lower()
    save_model(model_dir, model, tokenizer, {})
    fp32_path, int8_path = model_dir / "fp32.onnx", model_dir / "int8.onnx"
    export_model(model_dir, fp32_path)
    export_model(model_dir, int8_path, quantize="int8")
    fp32 = Model(fp32_path, provider="cpu", threads=threads)
    int8 = Model(int8_path, provider="cpu", threads=threads)

    rows = []
    for batch in BATCHES:
        cases = [
            ("torch eager (CPU)", torch_loop(model, batch, "cpu")),
            ("rnnx fp32 (CPU), generation loop", rnnx_loop(fp32, batch)),
            ("bare onnxruntime session.run, fp32", bare_session_loop(fp32, batch)),
            ("rnnx int8 (CPU), generation loop", rnnx_loop(int8, batch)),
        ]
        per = [1] * len(cases)  # tokens per loop unit
        if batch == 1:  # prompts and the floor; at batch 64 the step is arithmetic, not memory, bound
            for weights, path, loaded in (("fp32", fp32_path, fp32), ("int8", int8_path, int8)):
                steps_only = Model(step_only_copy(path), provider="cpu", threads=threads)
                cases.append((f"rnnx {weights} prompt, {PROMPT_PATH} (per prompt token)", prompt_loop(loaded)))
                cases.append((f"rnnx {weights} prompt, {STEP_BY_STEP} (per prompt token)", prompt_loop(steps_only)))
                per += [PROMPT_TOKENS, PROMPT_TOKENS]
                session, nbytes = floor_session(model, weights, threads)
                cases.append(
                    (f"{FLOOR} {weights}: [1, H]·W_hh, {nbytes / 2**20:.1f} MiB", floor_loop(session, cfg.hidden))
                )
                per.append(1)
        micros = timed_together([loop for _, loop in cases], seconds * len(cases))
        for (what, _), value, tokens in zip(cases, micros, per):
            rows.append(Row(name, batch, what, value / tokens))
            print(f"  {name} batch {batch}: {what}: {value / tokens:.1f} µs", flush=True)
        rows += cuda_rows(name, model, fp32_path, batch, seconds)
    return rows


def cuda_rows(name: str, model: RNNLM, path: Path, batch: int, seconds: float) -> list[Row]:
    """The GPU rows, each measured on its own (timed_together's round-robin is for the CPU rows)."""
    whats = CUDA_ROWS
    if not cuda_available():
        return []  # reported once, under the table
    gpu_model = RNNLM(model.config).to("cuda").eval()
    gpu_model.load_state_dict(model.state_dict())
    rows = [
        Row(name, batch, whats[0], timed_together([torch_loop(gpu_model, batch, "cuda")], seconds)[0]),
        Row(name, batch, whats[1], timed_together([torch_cuda_graph_loop(gpu_model, batch)], seconds)[0]),
    ]
    for what, cuda_graph in zip(whats[2:], (False, True)):
        try:
            on_gpu = Model(path, provider="cuda", cuda_graph=cuda_graph)
        except Exception as exc:  # the runtime's own errors, or onnxruntime's
            rows.append(Row(name, batch, what, None, f"skipped: {exc}"))
        else:
            rows.append(Row(name, batch, what, timed_together([rnnx_loop(on_gpu, batch)], seconds)[0]))
    return rows


def cpu_times() -> list[int]:
    """The machine-wide `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...), or []."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return []


def load_note(before: list[int], after: list[int], own_seconds: float) -> str:
    """How busy the cores were during the run, and how much of that was not this process (other work skews rows)."""
    if not before or not after or len(after) < 8:
        return ""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1
    busy = 1 - (delta[3] + delta[4]) / total
    own = own_seconds * os.sysconf("SC_CLK_TCK") / total
    return (
        f" During the run the cores were {busy:.0%} busy, this process {own:.0%}; "
        f"{delta[7] / total:.1%} of CPU time was stolen by the host."
    )


def own_cpu_seconds(since: os.times_result) -> float:
    now = os.times()
    return (now.user - since.user) + (now.system - since.system)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if cuda_available() else "no GPU"
    blas = os.environ.get("OPENBLAS_CORETYPE", "unset")
    try:
        blas_name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except (TypeError, KeyError):  # older numpy prints instead
        blas_name = "BLAS"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, numpy {np.__version__} "
        f"({blas_name}, OPENBLAS_CORETYPE={blas})"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| model | batch | what | µs/step | tokens/s | × torch eager | × floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.micros is None:
            lines.append(f"| {row.model} | {row.batch} | {row.what} | {row.note} | | | |")
            continue
        same = [r for r in rows if (r.model, r.batch) == (row.model, row.batch) and r.micros is not None]
        eager = next(r.micros for r in same if r.what.startswith("torch eager (CPU)"))
        weights = "int8" if "int8" in row.what else "fp32"
        floor = next((r.micros for r in same if r.what.startswith(f"{FLOOR} {weights}")), None)
        tokens_per_s = row.batch * 1e6 / row.micros
        vs_floor = f"{row.micros / floor:.2f}" if floor and "torch" not in row.what else "—"
        lines.append(
            f"| {row.model} | {row.batch} | {row.what} | {row.micros:.1f} | {tokens_per_s:,.0f} | "
            f"{row.micros / eager:.2f} | {vs_floor} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    """The issues' CPU targets at batch 1, each with the measured value and met / missed."""
    at = {(r.model, r.what): r.micros for r in rows if r.batch == 1 and r.micros}

    def get(model: str, start: str) -> float:
        return next(v for (m, what), v in at.items() if m == model and what.startswith(start))

    lstm = "LSTM 1024"
    rnnx, bare = get(lstm, "rnnx fp32 (CPU), generation"), get(lstm, "bare onnxruntime")
    int8, eager = get(lstm, "rnnx int8 (CPU), generation"), get(lstm, "torch eager (CPU)")
    checks = [
        ("LSTM 1024: rnnx fp32 ≤ 0.3× torch eager", rnnx / eager, rnnx / eager <= 0.3),
        ("LSTM 1024: rnnx overhead over the bare session ≤ 10%", rnnx / bare - 1, rnnx / bare <= 1.1),
        ("LSTM 1024: int8 ≥ 1.8× faster than fp32", rnnx / int8, rnnx / int8 >= 1.8),
    ]
    small = "RNN 256 (small)"
    for weights in ("fp32", "int8"):
        gain = get(small, f"rnnx {weights} prompt, {STEP_BY_STEP}") / get(
            small, f"rnnx {weights} prompt, {PROMPT_PATH}"
        )
        checks.append(
            (f"RNN 256: {weights} prompt path ≥ 4× faster per prompt token than step by step", gain, gain >= 4)
        )
    for weights in ("fp32", "int8"):
        ratio = get(lstm, f"rnnx {weights} prompt, {PROMPT_PATH}") / get(lstm, f"{FLOOR} {weights}")
        checks.append((f"LSTM 1024: {weights} prompt path per token ≤ 1.15× its recurrent floor", ratio, ratio <= 1.15))
    return "\n".join(f"- {what}: {value:.2f} — {'met' if ok else 'MISSED'}" for what, value, ok in checks)


START, END = "<!-- latency.py:start -->", "<!-- latency.py:end -->"


def write_between_markers(path: Path, report: str) -> None:
    """Replace what lies between START and END in `path` (appending both if absent), atomically."""
    text = path.read_text("utf-8") if path.exists() else ""
    block = f"{START}\n{report}{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = f"{text.rstrip()}\n\n{block}\n" if text else f"{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    parser.add_argument("--markdown", type=Path, help="also put the table into this file, between the markers")
    parser.add_argument("--only", choices=[name.split()[0] for name in MODELS], help="measure one model only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    before, own_before = cpu_times(), os.times()
    with tempfile.TemporaryDirectory(prefix="rnnx-bench-") as tmp:
        for name, cfg in MODELS.items():
            if args.only and name.split()[0] != args.only:
                continue
            print(f"{name}: exporting and measuring", flush=True)
            rows += bench_model(name, cfg, Path(tmp), args.threads, args.seconds)
    cuda_note = "" if cuda_available() else f"\nCUDA rows ({'; '.join(CUDA_ROWS)}): skipped: no CUDA\n"
    note = load_note(before, cpu_times(), own_cpu_seconds(own_before))
    checks = targets(rows) if not args.only else "(measured with all models only)"
    report = f"Machine: {machine()}.{note}\n\n{table(rows)}\n{cuda_note}\nTargets (CPU, batch 1):\n{checks}\n"
    print("\n" + report)
    if args.markdown:
        write_between_markers(args.markdown, report)


if __name__ == "__main__":
    main()

"""rnn-serve under load: concurrent streaming clients against one server, beside the naive alternative and the
runtime's raw batch-64 step, all in one run.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/serve.py                    # about 5 minutes on 2 cores
    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/serve.py --markdown docs/serve.md

Models (random weights, exported as `rnn-export` writes them, like bench/latency.py): LSTM 1024 char model
fp32 and int8, and the small RNN (embedding 64, hidden 256).

For each model and each number of clients (1, 8, 64, 256), that many clients stream completions (a 16-character
prompt, MAX_TOKENS tokens, temperature 1, a seed each) back to back for WINDOW seconds, over keep-alive
connections, from one asyncio loop in this process (a minimal HTTP/1.1 reader: the client's own cost stays
small, but it shares the cores with the server, as any load generator on this machine would). Measured at the
client: aggregate tokens/s, time to first token and inter-token latency (p50, p99; tokens that arrive in one
read count a gap of 0 after the first).

- "rnn-serve": the server as shipped (continuous batching, --max-batch 64).
- "naive": the same HTTP app, but each request gets its own thread that runs `Model.stream` (a
  `Model.generate` that yields) on one shared `Model` (1 onnxruntime thread: the runtime's advice for many
  threads at once); each token wakes the event loop.
- "raw batch-64 step": `Model.open_steps(64)`'s `run` in a loop, nothing else: 64 tokens per step.

With --profile, py-spy (if installed) samples the rnn-serve process during the small RNN's 64-client window
and the table says where its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from latency import VOCAB_TEXT, cpu_times, load_note, machine, own_cpu_seconds

from rnnx.export import export_model
from rnnx.runtime import Model
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

MODELS = {
    "LSTM 1024": (ModelConfig(cell="lstm", embed=256, hidden=1024), ("fp32", "int8")),
    "RNN 256 (small)": (ModelConfig(cell="rnn", embed=64, hidden=256), ("fp32",)),
}
CLIENTS = (1, 8, 64, 256)
MAX_TOKENS = 64
WINDOW = 6.0  # seconds measured per (server, clients)
WARMUP = 1.5
STARTUP = 120.0


@dataclass
class Result:
    model: str
    server: str
    clients: int
    tokens_per_s: float
    ttft: tuple[float, float]  # p50, p99 seconds
    itl: tuple[float, float]


# -- the naive server: the same app, a thread per request --------------------------------------------------------


class NaiveEngine:
    """A thread per row running `Model.stream` on the shared model; every token wakes the event loop."""

    def __init__(self, model: Model, metrics) -> None:
        self.model, self.metrics = model, metrics

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def submit(self, rows):
        from rnnx.runtime.serve.batcher import Job

        job = Job(rows, asyncio.get_running_loop())
        for row in rows:
            threading.Thread(target=self._run, args=(job, row), daemon=True).start()
        return job

    def _run(self, job, row) -> None:
        from rnnx.runtime.serve.batcher import End

        text = self.model.tokenizer.decode(row.ids)
        config = replace(row.sampler.config, max_new_tokens=row.left)
        for piece in self.model.stream(text, sampling=config):
            if row.cancelled:
                break
            row.events.append(piece)
            row.tokens += 1
            job.loop.call_soon_threadsafe(job.wake.set)
        row.events.append(End("length"))
        job.loop.call_soon_threadsafe(job.wake.set)


def serve_naive(path: str, port: int) -> None:
    import uvicorn

    from rnnx.runtime.serve.app import create_app
    from rnnx.runtime.serve.config import ServeConfig
    from rnnx.runtime.serve.metrics import Metrics

    model = Model(path, provider="cpu", threads=1, spin=False)
    config = ServeConfig(model_name="m", max_batch=1024, max_queue=1024, max_tokens=MAX_TOKENS)
    app = create_app(model, config, NaiveEngine(model, Metrics(config.max_batch)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- a lean streaming client -------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.measuring = False
        self.tokens = 0
        self.ttft: list[float] = []
        self.itl: list[float] = []


async def read_head(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())


async def one_request(reader, writer, request: bytes, rec: Recorder) -> None:
    sent = time.perf_counter()
    writer.write(request)
    await read_head(reader)
    last = None
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)  # chunked transfer encoding
        if size == 0:
            await reader.readexactly(2)
            return
        data = await reader.readexactly(size + 2)
        now = time.perf_counter()
        count = data.count(b'"finish_reason": null')
        if count and rec.measuring:
            rec.tokens += count
            if last is None:
                rec.ttft.append(now - sent)
            else:
                rec.itl.append(now - last)
            rec.itl.extend([0.0] * (count - 1))
        if count:
            last = now


async def client(port: int, index: int, rec: Recorder, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while not stop.is_set():
        prompt = VOCAB_TEXT[(index * 7 + n) % 48 :][:16]
        body = json.dumps(
            {
                "model": "m",
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "temperature": 1.0,
                "seed": index * 1000 + n,
                "stream": True,
            }
        ).encode()
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await one_request(reader, writer, request, rec)
        n += 1
    writer.close()


async def load(port: int, clients: int, window: float) -> tuple[float, Recorder]:
    rec, stop = Recorder(), asyncio.Event()
    tasks = [asyncio.create_task(client(port, i, rec, stop)) for i in range(clients)]
    await asyncio.sleep(WARMUP)
    rec.measuring = True
    start = time.perf_counter()
    await asyncio.sleep(window)
    rec.measuring = False
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return elapsed, rec


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    array = np.array(values)
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


# -- servers -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    end = time.monotonic() + STARTUP
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {command}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


SERVE_ARGS: list[str] = []  # --serve-args


def server_command(kind: str, path: Path, port: int) -> list[str]:
    if kind == "naive":
        return [sys.executable, __file__, "--serve-naive", str(path), "--port", str(port)]
    rnn_serve = [sys.executable, "-m", "rnnx.runtime.serve", str(path), "--port", str(port), "--model-name", "m"]
    return rnn_serve + ["--max-batch", "64", "--max-queue", "1024", "--max-tokens", str(MAX_TOKENS), *SERVE_ARGS]


def raw_step(path: Path, batch: int, seconds: float) -> float:
    """µs per `Steps.run` of `batch` rows, the server's own model settings (threads chosen by onnxruntime)."""
    model = Model(path, provider="cpu", spin=False)
    steps = model.open_steps(batch)
    ids = np.arange(batch, dtype=np.int64) % 64 + 1
    for _ in range(5):
        steps.run(ids)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        begin = time.perf_counter()
        for _ in range(10):
            steps.run(ids)
        times.append((time.perf_counter() - begin) / 10 * 1e6)
    steps.close()
    return statistics.median(times)


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("  profile skipped: py-spy is not installed (pip install py-spy)", flush=True)
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw", "--threads"]
    return subprocess.Popen(
        [*command, "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# the innermost frame that matches decides a sample's category; paths as py-spy shows them, from a checkout
# (runtime/...) or installed (rnnx/runtime/...)
CATEGORIES = (
    ("graph (onnxruntime run)", ("onnxruntime_inference_collection.py",)),
    ("sampling (choose_rows)", ("choose_rows", "runtime/sampling.py")),
    (
        "scheduler: tokens to text, bookkeeping",
        (
            "runtime/serve/batcher.py",
            "runtime/tokenizer.py",
            "runtime/generator.py",
            "runtime/model.py",
        ),
    ),
    ("socket writes", ("selector_events.py", "sock_send", "_write_ready", "sendall")),
    (
        "event loop: HTTP, JSON, SSE",
        ("uvicorn", "starlette", "fastapi", "h11", "pydantic", "json", "runtime/serve/"),
    ),
    ("event loop: asyncio itself", ("asyncio",)),
)


def summarize_profile(path: Path) -> list[tuple[str, float]]:
    """Share of the busy samples per category (py-spy's raw format: `frame;frame;... count`, outermost first)."""
    if not path.exists():
        return []
    totals: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            totals[_category(stack.split(";")[::-1])] += int(count)
    busy = sum(totals.values()) or 1
    return [(name, totals[name] / busy) for name in [*dict(CATEGORIES), "other"] if totals[name]]


def _category(frames: list[str]) -> str:
    for frame in frames:
        for name, keys in CATEGORIES:
            if any(key in frame for key in keys):
                return name
    return "other"


# -- the run -----------------------------------------------------------------------------------------------------


def export(name: str, cfg: ModelConfig, weights: str, workdir: Path) -> Path:
    tokenizer = CharTokenizer.build(VOCAB_TEXT)
    torch.manual_seed(0)
    model = RNNLM(replace(cfg, vocab_size=len(tokenizer.vocab))).eval()
    model_dir = workdir / name.split()[0].lower()
    if not (model_dir / "config.json").exists():
        save_model(model_dir, model, tokenizer, {})
    path = model_dir / f"{weights}.onnx"
    export_model(model_dir, path, quantize="int8" if weights == "int8" else None)
    return path


def bench_model(label: str, path: Path, clients: tuple[int, ...], window: float, profile_to: Path | None):
    results, notes = [], {}
    batch1, batch64 = raw_step(path, 1, 2.0), raw_step(path, 64, 3.0)
    notes["raw"] = (batch1, batch64)
    print(f"  {label}: raw step {batch1:.0f} µs at batch 1, {batch64:.0f} µs at batch 64", flush=True)
    for kind in ("rnn-serve", "naive"):
        port = free_port()
        proc = start(server_command(kind, path, port), port)
        try:
            for count in clients:
                spy = None
                if profile_to is not None and kind == "rnn-serve" and count == 64:
                    spy = profile(proc.pid, window, profile_to)
                elapsed, rec = asyncio.run(load(port, count, window))
                if spy is not None:
                    spy.wait(60)
                result = Result(label, kind, count, rec.tokens / elapsed, percentiles(rec.ttft), percentiles(rec.itl))
                results.append(result)
                print(
                    f"  {label} {kind} {count} clients: {result.tokens_per_s:,.0f} tokens/s, "
                    f"TTFT p50 {result.ttft[0] * 1e3:.1f} ms p99 {result.ttft[1] * 1e3:.1f} ms, "
                    f"ITL p50 {result.itl[0] * 1e3:.2f} ms p99 {result.itl[1] * 1e3:.2f} ms",
                    flush=True,
                )
        finally:
            stop(proc)
    return results, notes


def table(results: list[Result], raw: dict[str, tuple[float, float]]) -> str:
    lines = [
        "| model | server | clients | tokens/s | TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.server} | {r.clients} | {r.tokens_per_s:,.0f} | {r.ttft[0] * 1e3:.1f} / "
            f"{r.ttft[1] * 1e3:.1f} | {r.itl[0] * 1e3:.2f} / {r.itl[1] * 1e3:.2f} |"
        )
    for label, (one, b64) in raw.items():
        lines.append(f"| {label} | raw batch-64 step | — | {64e6 / b64:,.0f} | — | {b64 / 1e3:.2f} (step) |")
        lines.append(f"| {label} | raw batch-1 step | — | {1e6 / one:,.0f} | — | {one / 1e3:.3f} (step) |")
    return "\n".join(lines)


def targets(results: list[Result], raw: dict[str, tuple[float, float]]) -> str:
    def get(model: str, server: str) -> Result | None:
        return next((r for r in results if r.model == model and r.server == server and r.clients == 64), None)

    lines = []
    for label, (_, b64) in raw.items():
        served, naive = get(label, "rnn-serve"), get(label, "naive")
        if served is None or naive is None:
            continue
        versus_naive = served.tokens_per_s / max(naive.tokens_per_s, 1e-9)
        if label.startswith("RNN"):
            ok = "met" if versus_naive >= 5 else "missed"
            lines.append(f"- {label}, 64 clients: {versus_naive:.1f}× the naive server (target ≥ 5×: {ok})")
            continue
        versus_raw = served.tokens_per_s / (64e6 / b64)
        itl = served.itl[1] * 1e6 / b64
        lines.append(
            f"- {label}, 64 clients: {versus_raw:.2f}× the raw batch-64 throughput (target ≥ 0.7: "
            f"{'met' if versus_raw >= 0.7 else 'missed'}), {versus_naive:.1f}× the naive server (target ≥ 1.5: "
            f"{'met' if versus_naive >= 1.5 else 'missed'}), p99 inter-token latency {itl:.1f}× the batch-64 step "
            f"(target ≤ 3: {'met' if itl <= 3 else 'missed'})"
        )
    return "\n".join(lines)


def write_between_markers(path: Path, report: str) -> None:
    begin, end = "<!-- bench/serve.py begin -->", "<!-- bench/serve.py end -->"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + report + "\n" + text[text.index(end) :]
    else:
        text += f"\n{begin}\n{report}\n{end}\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--window", type=float, default=WINDOW, help="seconds measured per row")
    parser.add_argument("--only", help="models whose name starts with this (e.g. RNN)")
    parser.add_argument("--profile", type=Path, help="py-spy the small RNN's rnn-serve at 64 clients into this file")
    parser.add_argument("--serve-args", default="", help="more rnn-serve options, e.g. '--threads 1'")
    parser.add_argument("--markdown", type=Path, help="write the table between markers in this file")
    parser.add_argument("--serve-naive", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(args.serve_naive, args.port)
        return
    clients = tuple(int(c) for c in args.clients.split(","))
    SERVE_ARGS.extend(args.serve_args.split())
    before, since, results, raw = cpu_times(), os.times(), [], {}
    profile_path = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, (cfg, formats) in MODELS.items():
            if args.only and not name.startswith(args.only):
                continue
            for weights in formats:
                label = f"{name} {weights}"
                spy_to = args.profile if args.profile and name.startswith("RNN") else None
                rows, notes = bench_model(label, export(name, cfg, weights, workdir), clients, args.window, spy_to)
                results += rows
                raw[label] = notes["raw"]
                if spy_to is not None:
                    profile_path = summarize_profile(spy_to)
        report = [
            f"Machine: {machine()}.",
            f"{MAX_TOKENS} tokens per request, {args.window:g} s measured per row after {WARMUP:g} s of warm-up; "
            "clients in this process." + load_note(before, cpu_times(), own_cpu_seconds(since)),
            "",
            table(results, raw),
            "",
            targets(results, raw),
        ]
        if profile_path:
            report += ["", "Where rnn-serve's time went (small RNN, 64 clients; py-spy samples of busy threads):", ""]
            report += [f"- {name}: {share:.0%}" for name, share in profile_path]
    text = "\n".join(report)
    print("\n" + text)
    if args.markdown:
        write_between_markers(args.markdown, text)


if __name__ == "__main__":
    main()

"""Tokens per second in a browser (the demo page, onnxruntime-web wasm) next to the Python runtime, same model,
same run.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/web.py              # about 2 minutes on 2 cores

Needs what tests/test_web.py needs: Debian's chromium (or RNNX_CHROMIUM), Playwright's Python package and
`npm ci` in web/. The model is the tutorials' char LSTM 1024 (embedding 256, vocab 65) with random weights
(speed does not depend on training), exported fp32 and int8 exactly as rnn-export writes them; batch 1, greedy.

Rows: the Python runtime (`Model.generator(...).step()`, onnxruntime CPU) at 1 and 2 intra-op threads; the page
in headless Chromium with 1 wasm thread (a plain static server) and 2 (cross-origin isolated: COOP/COEP
headers, so SharedArrayBuffer and wasm threads). Both sides time only the generated tokens (the page's
`model.generate` reports tokens/s after reading the seed; the Python side times the steps after the prompt).
Rows are measured round-robin, `--rounds` times each, and the median kept, so a passing load hits all alike.
Target: the browser at >= 0.3x the Python runtime's tokens/s for fp32 at batch 1 (1 thread against 1 thread).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

import onnxruntime as ort
import torch

from rnnx.export import export_model
from rnnx.runtime import Model, SamplingConfig
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

WEB = Path(__file__).resolve().parent.parent / "web"
VOCAB_TEXT = "".join(chr(c) for c in range(32, 32 + 64))  # 64 characters + <unk> = vocab 65
SEED = "ROMEO:"
TARGET = 0.3
PYTHON, BROWSER = "Python runtime (onnxruntime CPU)", "Chromium, onnxruntime-web wasm"


class Case(NamedTuple):
    weights: str
    runtime: str
    threads: int


def load_serve():
    spec = importlib.util.spec_from_file_location("rnnx_web_serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_models(workdir: Path) -> dict[str, Path]:
    tokenizer = CharTokenizer.build(VOCAB_TEXT)
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=256, hidden=1024)).eval()
    save_model(workdir, model, tokenizer, {})
    return {
        w: export_model(workdir, workdir / f"{w}.onnx", quantize=None if w == "fp32" else w).path
        for w in ("fp32", "int8")
    }


def python_rate(model: Model, tokens: int) -> float:
    """Generated tokens per second of the Python runtime's generation loop, the prompt read beforehand."""
    with model.generator([SEED], SamplingConfig(max_new_tokens=tokens)) as run:
        start = time.perf_counter()
        while not run.done:
            run.step()
        return tokens / (time.perf_counter() - start)


def browser_rate(browser, url: str, model: str, tokens: int, threads: int) -> float:
    """Tokens per second the page reports for one greedy generation (a fresh page: a fresh wasm instance)."""
    page = browser.new_page()
    try:
        query = {"model": f"models/{model}", "seed": SEED, "len": len(SEED) + tokens, "threads": threads}
        page.goto(url + "index.html?" + urlencode(query))
        page.wait_for_selector("#output[data-done], #output[data-error]", state="attached", timeout=300_000)
        error = page.get_attribute("#output", "data-error")
        if error:
            raise SystemExit(f"error: the page failed: {error}")
        if threads > 1 and not page.evaluate("self.crossOriginIsolated"):
            raise SystemExit("error: the page is not cross-origin isolated: wasm threads would not run")
        return float(page.get_attribute("#status", "data-tokens-per-second"))
    finally:
        page.close()


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, onnxruntime {ort.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300, help="generated tokens per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per row (the median is kept)")
    args = parser.parse_args()
    chromium = os.environ.get("RNNX_CHROMIUM") or shutil.which("chromium")
    if not chromium or not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        raise SystemExit("error: needs chromium (or RNNX_CHROMIUM) and `npm ci` in web/ (see docs/web.md)")
    from playwright.sync_api import sync_playwright

    serve = load_serve()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        paths = make_models(Path(tmp))
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        version = browser.version
        with serve.serve(Path(tmp)) as plain, serve.serve(Path(tmp), isolated=True) as isolated:
            cases: dict[Case, Callable[[], float]] = {}
            for weights, path in paths.items():
                for threads in (1, 2):
                    loaded = Model(path, provider="cpu", threads=threads)
                    cases[Case(weights, PYTHON, threads)] = lambda m=loaded: python_rate(m, args.tokens)
                for threads, url in ((1, plain), (2, isolated)):
                    model = f"{weights}.onnx"
                    cases[Case(weights, BROWSER, threads)] = lambda u=url, m=model, t=threads: browser_rate(
                        browser, u, m, args.tokens, t
                    )
            for case in cases.values():  # warm-up: wasm compile, first-call allocations
                case()
            rates: dict[Case, list[float]] = {case: [] for case in cases}
            for round_ in range(args.rounds):
                for case, measure in cases.items():
                    rates[case].append(measure())
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        browser.close()
    print(report({case: statistics.median(values) for case, values in rates.items()}, version, args))


def report(median: dict[Case, float], version: str, args: argparse.Namespace) -> str:
    lines = [
        f"LSTM 1024 (embedding 256, vocab 65, random weights), batch 1, greedy, {args.tokens} generated tokens, "
        f"median of {args.rounds} rounds",
        f"machine: {machine()}; Chromium {version}",
        "",
        "| weights | runtime | threads | tokens/s | × Python runtime, same weights and threads |",
        "|---|---|---|---|---|",
    ]
    for case, rate in median.items():
        python = median[Case(case.weights, PYTHON, case.threads)]
        lines.append(f"| {case.weights} | {case.runtime} | {case.threads} | {rate:.0f} | {rate / python:.2f}× |")
    ratio = median[Case("fp32", BROWSER, 1)] / median[Case("fp32", PYTHON, 1)]
    verdict = "met" if ratio >= TARGET else "missed"
    lines += [
        "",
        f"target: browser fp32, 1 thread >= {TARGET}× the Python runtime fp32, 1 thread: {ratio:.2f}× ({verdict})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

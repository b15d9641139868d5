"""The sampler alone: µs per call and peak extra memory, the full-sort sampler it replaced against today's.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/sampling.py             # about 5 minutes on 2 cores
    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/sampling.py --quick     # small sizes only, seconds
    git show ad65163:runtime/sampling.py > /tmp/earlier.py                  # any earlier rnnx sampler ...
    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/sampling.py --quick --against /tmp/earlier.py   # ... as "before"

Logits: float32, standard normal × 3 (the same for both samplers), each call on a fresh copy (choosing modifies
its input); a prompt of 8 tokens per row for the repetition penalty. "before" is the sampler as it was until
issue 9 (float64 (B, V) buffers, a full argsort for top-p), copied below, or with --against the `Sampler` of an
earlier runtime/sampling.py; "now" is `rnnx.runtime.Sampler`.
Times are the median of the calls of one cell (at least 3, about half a second's worth), the two samplers
interleaved. Peak extra memory is what numpy allocated (tracemalloc) while making the sampler and during one
call, beyond the logits themselves. Cells whose "before" would need more than --before-limit GiB are skipped
(its memory is then estimated from its fixed buffers: 9 bytes per logit plus about 45 for top-p's sort).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from rnnx.runtime.sampling import Sampler, SamplingConfig
from rnnx.runtime.tokenizer import UNK_ID

SIZES = [(65, 1), (65, 64), (10_000, 1), (10_000, 64), (50_000, 64), (200_000, 1), (200_000, 64), (200_000, 1024)]
QUICK_SIZES = [(65, 1), (65, 64), (10_000, 1), (10_000, 64)]
MODES = {
    "greedy": {},
    "T=0.8": {"temperature": 0.8},
    "top-k 50": {"temperature": 0.8, "top_k": 50},
    "top-p 0.9": {"temperature": 0.8, "top_p": 0.9},
    "top-k 50 + top-p 0.9": {"temperature": 0.8, "top_k": 50, "top_p": 0.9},
    "top-k 40": {"temperature": 0.8, "top_k": 40},
    "penalty 1.2": {"temperature": 0.8, "repetition_penalty": 1.2},
}
BEFORE_BYTES_PER_LOGIT = {"top-p 0.9": 54, "top-k 50 + top-p 0.9": 54}  # its buffers + argsort's temporaries
PROMPT = 8


class BeforeSampler:
    """The sampler before issue 9, verbatim but for names: float64 (B, V) buffers, a full argsort for top-p."""

    def __init__(self, config: SamplingConfig, batch: int, vocab: int, history: list[list[int]]) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.rng_seed)
        self._rows = np.arange(batch)
        self._probs = np.empty((batch, vocab), np.float64)
        self._below = np.empty((batch, vocab), bool)
        self._seen = None
        if config.repetition_penalty != 1:
            self._seen = np.zeros((batch, vocab), bool)
            self._positive = np.empty((batch, vocab), bool)
            for row, ids in enumerate(history):
                self._seen[row, list(ids)] = True

    def choose(self, logits: np.ndarray) -> np.ndarray:
        logits[:, UNK_ID] = -np.inf
        if self._seen is not None:
            penalty, seen, positive = self.config.repetition_penalty, self._seen, self._positive
            np.greater(logits, 0, out=positive)
            np.logical_and(positive, seen, out=self._below)
            np.divide(logits, penalty, out=logits, where=self._below)
            np.logical_not(positive, out=positive)
            np.logical_and(positive, seen, out=positive)
            np.multiply(logits, penalty, out=logits, where=positive)
        ids = logits.argmax(axis=1) if self.config.greedy else self._sample(logits)
        if self._seen is not None:
            self._seen[self._rows, ids] = True
        return ids

    def _sample(self, logits: np.ndarray) -> np.ndarray:
        config, p = self.config, self._probs
        vocab = p.shape[1]
        np.multiply(logits, 1.0 / config.temperature, out=p)
        if 0 < config.top_k < vocab:
            kth = np.partition(p, vocab - config.top_k, axis=1)[:, vocab - config.top_k, None]
            np.less(p, kth, out=self._below)
            np.putmask(p, self._below, -np.inf)
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        if config.top_p < 1:
            order = np.argsort(-p, axis=1)
            sorted_p = np.take_along_axis(p, order, axis=1)
            cum = np.cumsum(sorted_p, axis=1)
            drop = (cum - sorted_p) >= config.top_p * cum[:, -1:]
            np.put_along_axis(p, order, np.where(drop, 0.0, sorted_p), axis=1)
        np.cumsum(p, axis=1, out=p)
        u = self.rng.random(len(p)) * p[:, -1]
        np.less_equal(p, u[:, None], out=self._below)
        return np.minimum(self._below.sum(axis=1), vocab - 1)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


EARLIER: list = []  # with --against: that file's Sampler and SamplingConfig


def load_earlier(path: str) -> None:
    """An earlier runtime/sampling.py as the "before" sampler (it imports the rest of rnnx as installed)."""
    spec = importlib.util.spec_from_file_location("earlier_sampling", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    EARLIER[:] = [module.Sampler, module.SamplingConfig]


def make(kind: str, config: SamplingConfig, batch: int, vocab: int, history: list[list[int]]):
    if kind == "before" and EARLIER:
        sampler, settings = EARLIER
        return sampler(settings(**{k: getattr(config, k) for k in MODES_FIELDS}), batch, vocab, history)
    if kind == "before":
        return BeforeSampler(config, batch, vocab, history)
    return Sampler(config, batch, vocab, history)


MODES_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty", "rng_seed")


def peak_bytes(build: Callable[[], object], logits: np.ndarray) -> int:
    """numpy's peak allocation while building a sampler and during its first call, beyond `logits`."""
    build().choose(logits.copy())  # once untraced: what the first call imports or caches is not the sampler's
    tracemalloc.start()
    try:
        sampler = build()
        sampler.choose(logits)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def seconds_per_call(samplers: dict, template: np.ndarray, budget: float) -> dict[str, float]:
    """Median seconds per call of each sampler, calls interleaved, until `budget` seconds or 3 calls each."""
    buffer = np.empty_like(template)
    times: dict[str, list[float]] = {name: [] for name in samplers}
    start = time.perf_counter()
    while min(map(len, times.values())) < 3 or (time.perf_counter() - start < budget and len(times["now"]) < 5000):
        for name, sampler in samplers.items():
            np.copyto(buffer, template)
            t0 = time.perf_counter()
            sampler.choose(buffer)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def cell(vocab: int, batch: int, mode: str, before_limit: float, budget: float) -> tuple[str, str, str, str, str]:
    rng = np.random.default_rng(0)
    template = (rng.standard_normal((batch, vocab), dtype=np.float32) * 3).astype(np.float32)
    history = rng.integers(1, vocab, (batch, PROMPT)).tolist()
    config = SamplingConfig(rng_seed=0, **MODES[mode])
    before_bytes = BEFORE_BYTES_PER_LOGIT.get(mode, 9) * batch * vocab
    kinds = ["before", "now"] if before_bytes <= before_limit * 2**30 else ["now"]
    memory = {k: peak_bytes(lambda k=k: make(k, config, batch, vocab, history), template.copy()) for k in kinds}
    times = seconds_per_call({k: make(k, config, batch, vocab, history) for k in kinds}, template, budget)
    now = fmt_us(times["now"])
    if "before" not in times:
        return f"{vocab:,} × {batch}", mode, "skipped", now, f"~{mib(before_bytes)} (estimate) → {mib(memory['now'])}"
    before, speed = fmt_us(times["before"]), times["before"] / times["now"]
    return (
        f"{vocab:,} × {batch}",
        mode,
        before,
        f"{now} ({speed:.1f}×)",
        f"{mib(memory['before'])} → {mib(memory['now'])}",
    )


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.1f} µs" if us < 100 else f"{us:,.0f} µs"


def mib(size: float) -> str:
    return f"{size / 2**20:,.2f} MiB" if size < 2**30 else f"{size / 2**30:,.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--before-limit", type=float, default=1.0, help="GiB the full-sort sampler may use")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of calls per cell (at least 3 calls)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--against", metavar="FILE", help="an earlier runtime/sampling.py as the before column")
    args = parser.parse_args()
    if args.against:
        load_earlier(args.against)
    print(f"machine: {cpu_name()}, numpy {np.__version__}, one thread (numpy's sorting and reductions are serial)")
    print()
    before = f"before: {args.against}" if args.against else "before: full sort"
    print(f"| vocab × batch | mode | {before}, µs/call | now, µs/call | peak extra memory, before → now |")
    print("|---|---|---|---|---|")
    for vocab, batch in QUICK_SIZES if args.quick else SIZES:
        for mode in args.modes:
            print("| " + " | ".join(cell(vocab, batch, mode, args.before_limit, args.budget)) + " |", flush=True)


if __name__ == "__main__":
    main()

"""The campaign's training steps: rnnx's trainer against the plain loop of bench/train_quality.py for the same
time on the same device (tokens/s both), and a quality run on tiny-shakespeare with what the budget leaves.

Run by bench/gpu_campaign.py (`train`, `quality`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from gpu_common import BENCH, OK, SKIPPED_NO_CUDA, SKIPPED_NO_DATA, cuda_state, find_text, write_result

WARM_UP_S = 3.0  # a plain-loop run before both timed runs, so that neither pays the device's first-use costs
TARGET_TRAIN_RATIO = 0.9  # issue 14: GPU training at least 0.9x the plain loop's tokens/s
TARGET_NATS = 1.35  # issue 14: stateful validation on tiny-shakespeare within 10 minutes
# The quality run's settings where no `shakespeare-lstm-gpu` preset exists yet, over the `shakespeare-lstm`
# preset (weight decay 0.3, state resets, weight drop 0.1). The H200 campaign of 2026-11-26 tried 3 × 768 with
# dropout 0.4: best 1.3692 at 65 s, then overfitting; the preset itself (2 × 384) reached 1.3632 in 60 s and was
# still falling. Next guess: the preset one size up, a little more dropout, and weight averaging for the end.
QUALITY_PRESET = "shakespeare-lstm-gpu"
QUALITY_GUESS = {"hidden": 512, "dropout": 0.3, "ema": 0.999, "eval_seconds": 10.0}
QUALITY_SMOKE = {"hidden": 32, "layers": 1, "embed": 16}  # without CUDA: only the code runs, not the model


def plain_loop_on(m: Any, c: Any, train_ids: Any, seconds: float, device: Any) -> dict[str, Any]:
    """bench/train_quality.py's plain loop on `device`: its stats, with the wall time."""
    sys.path.insert(0, str(BENCH))
    import train_quality

    begin = time.monotonic()
    stats = train_quality.plain_loop(m, c, train_ids, seconds, device=device)[1]
    return {**stats, "wall": time.monotonic() - begin}


def train_step(args: argparse.Namespace) -> int:
    out, work = args.out, Path(args.work)
    cuda = cuda_state(out)
    if not cuda.torch and not args.smoke:
        write_result(out, "train", "## Training throughput\n\nskipped: no CUDA", {}, "no CUDA: " + cuda.note)
        return SKIPPED_NO_CUDA
    import torch

    from rnnx.trainer.data import build_tokenizer, read_corpus, split_ids
    from rnnx.trainer.presets import resolve
    from rnnx.trainer.train import train, use_bf16

    device = torch.device("cuda" if cuda.torch else "cpu")
    path, source, _ = find_text(work)
    seconds = args.seconds if cuda.torch else args.smoke_seconds
    warm_up = WARM_UP_S if cuda.torch else 1.0
    seconds = max(1.0, min(seconds, (args.limit - 40 - warm_up) / 2))  # both runs and their setup in the time given
    if not cuda.torch:  # the smoke run: a slice of the text, so that the CPU validation stays short
        small = work / "smoke.txt"
        small.write_text(read_corpus(path)[:300_000], encoding="utf-8")
        path, source = small, f"the first 300,000 characters of {source}"
    preset = "shakespeare-lstm"
    flags = {"data": path, "minutes": seconds / 60, "epochs": 10_000, "out": work / "rnnx-train", "device": device.type}
    m, c = resolve(preset, {}, flags)
    text = read_corpus(path)
    tokenizer = build_tokenizer(text, c.tokenizer)
    train_ids, _ = split_ids(torch.tensor(tokenizer.encode(text)))
    sized = replace(m, vocab_size=len(tokenizer.vocab))
    plain_loop_on(sized, c, train_ids, warm_up, device)  # kernels, autotuning and allocator warm for both runs
    result = train(m, c, progress=False)
    plain = plain_loop_on(sized, c, train_ids, seconds, device)
    m = sized
    ratio = result.tokens_per_second / plain["tokens_per_second"]
    data = {
        "device": str(device),
        "data": source,
        "seconds_each": seconds,
        "model": asdict(m),
        "bf16": use_bf16(c.precision, device),
        "rnnx": {k: v for k, v in asdict(result).items() if k != "out"},
        "plain": plain,
        "ratio": ratio,
    }
    verdict = f"target ≥ {TARGET_TRAIN_RATIO}×: {'met' if ratio >= TARGET_TRAIN_RATIO else 'MISSED'}"
    if not cuda.torch:
        verdict = "no verdict: a few CPU steps say nothing about speed"
    val = "—" if result.best_val_loss is None else f"{result.best_val_loss:.4f} nats/char"
    md = [
        "## Training throughput" + ("" if cuda.torch else " (CPU smoke, not a measurement: no CUDA)"),
        "",
        f"Preset {preset} ({m.cell} {m.layers} × {m.hidden}, embedding {m.embed}, batch {c.batch_size} × "
        f"{c.seq_len}, bf16 autocast {data['bf16']}) for {seconds:.0f} s each on {device} after a {warm_up:.0f} s "
        f"warm-up, data: {source}.",
        "",
        "| run | steps | tokens | train tokens/s | wall tokens/s |",
        "|---|---|---|---|---|",
        f"| rnnx trainer | {result.steps} | {result.tokens:,} | {result.tokens_per_second:,.0f} | "
        f"{result.tokens / max(result.seconds, 1e-9):,.0f} |",
        f"| plain loop (bench/train_quality.py) | {plain['steps']} | {plain['tokens']:,} | "
        f"{plain['tokens_per_second']:,.0f} | {plain['tokens'] / max(plain['wall'], 1e-9):,.0f} |",
        "",
        f"rnnx / plain: {ratio:.2f}× ({verdict}); rnnx best validation {val} at step {result.best_step}.",
    ]
    detail = (
        f"rnnx {result.tokens_per_second / 1e3:,.1f} k tokens/s, plain {plain['tokens_per_second'] / 1e3:,.1f} k "
        f"({ratio:.2f}×), {seconds:.0f} s each on {device}"
    )
    if not cuda.torch:
        write_result(out, "train", "\n".join(md), data, f"no CUDA; CPU smoke ran: {detail}")
        return SKIPPED_NO_CUDA
    write_result(out, "train", "\n".join(md), data, detail)
    return OK


# -------------------------------------------------------------------------------------------------- quality


def quality_settings(given: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The preset and the model and training flags of the quality run; `given` holds key=value overrides."""
    from rnnx.trainer.model import ModelConfig
    from rnnx.trainer.presets import PRESETS
    from rnnx.trainer.train import TrainConfig

    preset, flags = (QUALITY_PRESET, {}) if QUALITY_PRESET in PRESETS else ("shakespeare-lstm", dict(QUALITY_GUESS))
    for item in given:
        key, _, value = item.partition("=")
        try:
            flags[key] = json.loads(value)
        except json.JSONDecodeError:
            flags[key] = value
    model_keys, train_keys = {f.name for f in fields(ModelConfig)}, {f.name for f in fields(TrainConfig)}
    unknown = set(flags) - model_keys - train_keys
    if unknown:
        raise SystemExit(f"unknown quality setting(s) {sorted(unknown)}")
    return (
        preset,
        {k: v for k, v in flags.items() if k in model_keys},
        {k: v for k, v in flags.items() if k in train_keys},
    )


def quality_step(args: argparse.Namespace) -> int:
    out, work = args.out, Path(args.work)
    cuda = cuda_state(out)
    preset, model_flags, train_flags = quality_settings(args.set)  # a typo in QUALITY_SET fails here too
    if not cuda.torch and not args.smoke:
        write_result(out, "quality", "## Quality run\n\nskipped: no CUDA", {}, "no CUDA: " + cuda.note)
        return SKIPPED_NO_CUDA
    import torch

    from rnnx.trainer.checkpoint import load_model
    from rnnx.trainer.data import read_corpus, split_ids
    from rnnx.trainer.evaluate import stateful_loss
    from rnnx.trainer.presets import resolve
    from rnnx.trainer.train import train

    path, source, is_shakespeare = find_text(work)
    device, seconds = "cuda", max(10.0, min(args.seconds, args.limit - 40))
    if not cuda.torch:  # the smoke run: the same code with a tiny model for a few seconds on a slice of text
        device, seconds = "cpu", args.smoke_seconds
        model_flags = {**model_flags, **QUALITY_SMOKE}
        small = work / "quality-smoke.txt"
        small.write_text(read_corpus(path)[:50_000], encoding="utf-8")
        path, source = small, f"the first 50,000 characters of {source}"
    elif not is_shakespeare:
        write_result(out, "quality", "## Quality run\n\nskipped: no tiny-shakespeare", {}, f"data: {source}")
        return SKIPPED_NO_DATA
    run_dir = work / "quality"
    flags = {**train_flags, "data": path, "minutes": seconds / 60, "epochs": 100_000, "out": run_dir, "device": device}
    m, c = resolve(preset, model_flags, flags)
    result = train(m, c, progress=False)
    best, tokenizer, _ = load_model(run_dir)
    _, val_ids = split_ids(torch.tensor(tokenizer.encode(read_corpus(path))))
    one_stream = stateful_loss(best.to(device), val_ids.to(device), streams=1)
    for name in ("model.json", "metrics.jsonl"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out / f"quality-{name}")
    verdict = f"target ≤ {TARGET_NATS}: {'met' if one_stream <= TARGET_NATS else 'MISSED'}"
    if not cuda.torch:
        verdict = "CPU smoke of a tiny model: no verdict"
    data = {
        "preset": preset,
        "overrides": {**model_flags, **train_flags},
        "seconds": seconds,
        "device": device,
        "result": {k: v for k, v in asdict(result).items() if k != "out"},
        "stateful_one_stream": one_stream,
    }
    md = [
        "## Quality run" + ("" if cuda.torch else " (CPU smoke, not a measurement: no CUDA)"),
        "",
        f"Preset {preset} with {data['overrides'] or 'no overrides'}, {seconds:.0f} s on {device}, data {source}.",
        f"- {result.summary()}",
        f"- stateful validation, one stream, state carried: {one_stream:.4f} nats/char ({verdict})",
        "- model.json and metrics.jsonl copied as quality-model.json, quality-metrics.jsonl",
    ]
    detail = f"{one_stream:.4f} nats/char after {seconds:.0f} s on {device} ({verdict})"
    if not cuda.torch:
        write_result(out, "quality", "\n".join(md), data, f"no CUDA; CPU smoke ran: {detail}")
        return SKIPPED_NO_CUDA
    write_result(out, "quality", "\n".join(md), data, detail)
    return OK

"""What int8 weights cost in quality: validation loss of the fp32 and int8 exports of one trained char model.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/int8_quality.py --minutes 6

Trains (unless --model-dir already holds a model) the tutorials' char LSTM (embedding 256, LSTM 1024, vocab 65)
on the first 90% of tiny-shakespeare with a plain loop, exports it through `rnnx.export.export_model` once as
fp32 and once with `quantize="int8"`, and reads the last 10% in order through both `.onnx` files (batch 1,
state carried), printing nats/char for each, the difference and the per-step speed of both sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnx.export import export_model
from rnnx.runtime import Model
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import load_model, save_model
from rnnx.trainer.model import RNNLM, ModelConfig

DATA = Path("../shared/data/tinyshakespeare.txt")
TRAIN_FRACTION = 0.9


def split_text(path: Path) -> tuple[str, str]:
    text = path.read_text("utf-8")
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def train_quick(train_text: str, out: Path, minutes: float, seed: int = 0) -> None:
    """A plain loop: random 100-character windows, batch 64, Adam 2e-3, clipping at 1, for `minutes`."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer.build(train_text)
    ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=256, hidden=1024, layers=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    seq, batch = 100, 64
    start, step, tokens = time.monotonic(), 0, 0
    while time.monotonic() - start < minutes * 60:
        offsets = torch.randint(0, len(ids) - seq - 1, (batch,))
        window = torch.stack([ids[o : o + seq + 1] for o in offsets])  # (B, L+1)
        logits, _ = model(window[:, :-1], model.init_state(batch))  # (B, L, V)
        loss = loss_fn(logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, tokens = step + 1, tokens + batch * seq
        if step % 50 == 0:
            rate = tokens / (time.monotonic() - start)
            print(f"step {step}: train loss {loss.item():.4f} ({rate:.0f} tokens/s)", flush=True)
    seconds = time.monotonic() - start
    save_model(out, model.eval(), tokenizer, {"training": {"steps": step, "seconds": round(seconds, 1)}})
    print(f"trained {step} steps ({tokens} tokens) in {seconds:.0f}s -> {out}", flush=True)


def stateful_loss(model: Model, text: str) -> tuple[float, float]:
    """Mean nats/char over `text` read in order at batch 1 with the state carried; and µs per step."""
    ids = model.tokenizer.encode(text)
    state = model.initial_state(1)
    token = np.zeros(1, np.int64)
    total, start = 0.0, time.perf_counter()
    for current, target in zip(ids[:-1], ids[1:]):
        token[0] = current
        logits, state = model.step(token, state)
        row = logits[0].astype(np.float64)
        top = row.max()
        total += top + math.log(np.exp(row - top).sum()) - row[target]
    steps = len(ids) - 1
    return total / steps, (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/int8-quality"))
    parser.add_argument("--minutes", type=float, default=6.0, help="training time when --model-dir is empty")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    train_text, val_text = split_text(args.data)
    if not (args.model_dir / "model.json").is_file():
        train_quick(train_text, args.model_dir, args.minutes)
    if args.train_only:
        return
    cfg = load_model(args.model_dir)[0].config
    results = {}
    for weights in ("fp32", "int8"):
        path = args.model_dir / f"model-{weights}.onnx"
        export_model(args.model_dir, path, quantize=None if weights == "fp32" else weights)
        loss, micros = stateful_loss(Model(path, provider="cpu"), val_text)
        results[weights] = {"val_nats_per_char": round(loss, 5), "us_per_step": round(micros, 1)}
        print(f"{weights}: validation {loss:.5f} nats/char, {micros:.0f} µs/step (batch 1, incl. the loss)")
    delta = results["int8"]["val_nats_per_char"] - results["fp32"]["val_nats_per_char"]
    speed = results["fp32"]["us_per_step"] / results["int8"]["us_per_step"]
    model_desc = f"{cfg.cell} {cfg.layers}x{cfg.hidden}, embed {cfg.embed}, vocab {cfg.vocab_size}"
    print(f"{model_desc}: int8 - fp32 = {delta:+.5f} nats/char; int8 {speed:.2f}x faster per step")
    print(json.dumps({"model": model_desc, **results, "delta": round(delta, 5), "speedup": round(speed, 2)}))


if __name__ == "__main__":
    main()

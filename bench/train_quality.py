"""Training quality benchmark: rnnx's trainer against a plain hand-written PyTorch loop, same model, same budget.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/train_quality.py --minutes 10

Both train the `--preset` model on the first 90% of `--data` for `--minutes` of wall-clock time each, one
after the other in this process, with the same batches (contiguous truncated-BPTT streams), optimizer
(AdamW), warm-up + cosine schedule over the time budget, clipping, regularisation and stream resets. rnnx
also validates as its preset says (every 500 steps or 60 s) and keeps its best model; the plain loop keeps its
last weights (with a preset's `ema`, both keep the same moving average). Both are then scored on the last
10% by two protocols (see rnnx.trainer.evaluate):
  stateful - the whole validation text read in order, one stream, state carried (how the model is used);
  windowed - independent 256-character windows from a zero state (how the transformer baseline is measured).
Training tokens/s counts training steps only.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from rnnx.trainer.checkpoint import load_model
from rnnx.trainer.data import build_tokenizer, read_corpus, split_ids
from rnnx.trainer.evaluate import stateful_loss, windowed_loss
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.presets import resolve
from rnnx.trainer.train import TrainConfig, train, use_bf16

LN2 = math.log(2)


class PlainLM(nn.Module):
    """The same network written out by hand: one nn.LSTM per layer, one dropout mask per sequence."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.m = m
        self.embedding = nn.Embedding(m.vocab_size, m.embed)
        self.layers = nn.ModuleList(
            nn.LSTM(m.embed if k == 0 else m.hidden, m.hidden, batch_first=True) for k in range(m.layers)
        )
        self.head = nn.Linear(m.hidden, m.vocab_size)

    def locked(self, x):  # dropout with one mask per sequence, shared over time: (B, 1, F)
        if not (self.training and self.m.dropout):
            return x
        return x * x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.m.dropout) / (1 - self.m.dropout)

    def forward(self, x, states):
        h, new = self.embedding(x), []
        for k, layer in enumerate(self.layers):
            h = self.locked(h)
            params = dict(layer.named_parameters())
            if self.training and self.m.weight_drop:
                params["weight_hh_l0"] = nn.functional.dropout(params["weight_hh_l0"], self.m.weight_drop)
            h, state = functional_call(layer, params, (h, states[k] if states else None))
            new.append(state)
        return self.head(self.locked(h)), new

    def rnnx_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under rnnx's names (`rnn.weight_ih_l1`, ...), so rnnx's evaluation can score them."""
        out = {}
        for name, value in self.state_dict().items():
            if name.startswith("layers."):
                _, k, param = name.split(".")
                name = "rnn." + param.replace("_l0", f"_l{k}")
            out[name] = value
        return out


def plain_loop(
    m: ModelConfig, c: TrainConfig, train_ids: torch.Tensor, seconds: float, device: torch.device | None = None
) -> tuple[PlainLM, dict]:
    device = device or torch.device("cpu")
    torch.manual_seed(c.rng_seed)
    model = PlainLM(m).to(device)
    train_ids = train_ids.to(device)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": c.weight_decay}, {"params": vectors, "weight_decay": 0.0}], lr=c.lr
    )
    average = [p.detach().clone() for p in model.parameters()]  # --ema: the weights scored at the end
    B, T = c.batch_size, c.seq_len
    bf16 = use_bf16(c.precision, device)
    gen = torch.Generator().manual_seed(c.rng_seed)
    step, tokens, train_time, start = 0, 0, 0.0, time.monotonic()
    while time.monotonic() - start < seconds:
        offset = int(torch.randint(T, (1,), generator=gen))
        n = (len(train_ids) - T) // B
        streams = train_ids[offset : offset + B * n].view(B, n)  # (B, N)
        hc = None
        for i in range(0, n - T - 1, T):
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            t0 = time.monotonic()
            warm = min(1.0, (step + 1) / c.warmup) if c.warmup else 1.0
            lr = c.lr * warm * (c.min_lr + (1 - c.min_lr) * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = streams[:, i : i + T], streams[:, i + 1 : i + T + 1]
            if hc is not None and c.state_reset:  # some streams start this step from a zero state
                keep = (torch.rand(B, device=device) >= c.state_reset).float()[:, None]  # (B, 1)
                hc = [tuple(s * keep for s in layer) for layer in hc]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, hc = model(x, hc)
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), c.clip)
            opt.step()
            if c.ema:
                with torch.no_grad():
                    for a, p in zip(average, model.parameters()):
                        a.lerp_(p, 1 - min(c.ema, (1 + step) / (10 + step)))
            hc = [tuple(s.detach().float() for s in layer) for layer in hc]
            step, tokens = step + 1, tokens + B * T
            train_time += time.monotonic() - t0
    t0 = time.monotonic()
    if device.type == "cuda":
        torch.cuda.synchronize()  # the steps queued but not yet run are training time too
    train_time += time.monotonic() - t0
    if c.ema:
        with torch.no_grad():
            for a, p in zip(average, model.parameters()):
                p.copy_(a)
    return model, {"steps": step, "tokens": tokens, "tokens_per_second": tokens / train_time}


def score(model: RNNLM, val_ids: torch.Tensor) -> tuple[float, float]:
    return stateful_loss(model, val_ids, streams=1, chunk=256), windowed_loss(model, val_ids, window=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--preset", default="shakespeare-lstm")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget for each of the two runs")
    parser.add_argument("--skip-plain", action="store_true", help="train only rnnx")
    parser.add_argument("--score", type=Path, help="only score this trained model directory on --data")
    args = parser.parse_args()
    if args.score:
        model, tokenizer, document = load_model(args.score)
        _, val_ids = split_ids(torch.tensor(tokenizer.encode(read_corpus(args.data))))
        stateful, windowed = score(model, val_ids)
        print(
            f"{args.score} (step {document.get('step')}): stateful {stateful:.4f} nats/char "
            f"({stateful / LN2:.3f} bits/char), windowed-256 {windowed:.4f} ({windowed / LN2:.3f} bits/char)"
        )
        return

    m, c = resolve(args.preset, {}, {"data": args.data, "minutes": args.minutes, "epochs": 10_000})
    text = read_corpus(args.data)
    tokenizer = build_tokenizer(text, c.tokenizer)
    train_ids, val_ids = split_ids(torch.tensor(tokenizer.encode(text)))
    m = replace(m, vocab_size=len(tokenizer.vocab))
    print(f"model: {m}; bf16 autocast: {use_bf16(c.precision, torch.device('cpu'))}")
    print(
        f"training: batch {c.batch_size} x seq {c.seq_len}, AdamW lr {c.lr} wd {c.weight_decay}, "
        f"warm-up {c.warmup} + cosine to {c.min_lr}x, clip {c.clip}, state reset {c.state_reset}; "
        f"{args.minutes} min each"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        result = train(m, replace(c, out=Path(tmp)), progress=False)
        best, _, _ = load_model(Path(tmp))
        rows.append(
            ("rnnx (best checkpoint)", result.steps, result.tokens, result.tokens_per_second, *score(best, val_ids))
        )
    if not args.skip_plain:
        plain, stats = plain_loop(m, c, train_ids, args.minutes * 60)
        as_rnnx = RNNLM(m)
        as_rnnx.load_state_dict(plain.rnnx_state_dict())
        rows.append(
            (
                "plain PyTorch loop (last)",
                stats["steps"],
                stats["tokens"],
                stats["tokens_per_second"],
                *score(as_rnnx, val_ids),
            )
        )

    print()
    print(
        "| run | steps | tokens | train tok/s | stateful nats/char (bits/char) | windowed-256 nats/char (bits/char) |"
    )
    print("|---|---|---|---|---|---|")
    for name, steps, tokens, speed, stateful, windowed in rows:
        print(
            f"| {name} | {steps} | {tokens / 1e6:.2f}M | {speed / 1000:.1f}k | "
            f"{stateful:.4f} ({stateful / LN2:.3f}) | {windowed:.4f} ({windowed / LN2:.3f}) |"
        )
    if len(rows) == 2:
        print(f"\nthroughput rnnx / plain: {rows[0][3] / rows[1][3]:.2f}x")


if __name__ == "__main__":
    main()

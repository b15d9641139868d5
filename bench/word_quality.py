"""Word-model quality: the `words-lstm-large` preset against an interpolated Kneser-Ney trigram, same text, same split.

    flock /tmp/rnnx-cpu.lock .venv/bin/python bench/word_quality.py --minutes 10

The text (tiny-shakespeare by default) is read as words by the preset's tokenizer, fitted once; both models use
that vocabulary, so a word outside it is `<unk>` for both and each pays for `<unk>` as for any other token. The
first 90% of the tokens trains, the last 10% validates (the split of the char benchmark). Both models predict
the same validation tokens (all but the first), each reading only validation text as context:
  LSTM - the best checkpoint of a `--minutes` run of the preset, scored stateful over the whole validation text
         as one stream (rnnx.trainer.evaluate.stateful_loss);
  KN   - interpolated Kneser-Ney (Chen & Goodman): absolute discounting at every order, continuation counts
         below the top order, the unigram level interpolated with a uniform distribution over the vocabulary so
         that no token has probability zero. Discounts D_n = n1 / (n1 + 2 n2) from the training counts; a second
         row picks one discount for all orders by trying them on the validation text itself (an oracle, which
         can only favour Kneser-Ney).
The target is an LSTM perplexity at least 25% below the (standard) Kneser-Ney one.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from rnnx.trainer.checkpoint import load_model
from rnnx.trainer.data import fit_tokenizer, read_corpus, split_ids
from rnnx.trainer.evaluate import stateful_loss
from rnnx.trainer.presets import resolve
from rnnx.trainer.train import train

TARGET = 0.25  # the LSTM's perplexity must be at least this fraction below Kneser-Ney's


class KneserNey:
    """An interpolated Kneser-Ney trigram model over token ids 0..V-1, from one stream of training ids."""

    def __init__(self, ids: list[int], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        trigrams = Counter(zip(ids, ids[1:], ids[2:]))
        # continuation counts: in how many distinct left contexts a bigram (or word) occurs
        self.cont2 = Counter((v, w) for (_, v, w) in trigrams)
        self.cont1 = Counter(w for (_, w) in self.cont2)
        self.total1 = sum(self.cont1.values())
        self.tri, self.ctx2 = trigrams, Counter()  # ctx2[(u, v)]: c(u v .)
        self.follow2: Counter = Counter()  # distinct w after (u, v)
        for (u, v, _), n in trigrams.items():
            self.ctx2[(u, v)] += n
            self.follow2[(u, v)] += 1
        self.ctx1: Counter = Counter()  # sum over w of cont2[(v, w)]
        self.follow1: Counter = Counter()  # distinct w after v
        for (v, _), n in self.cont2.items():
            self.ctx1[v] += n
            self.follow1[v] += 1
        self.discounts = tuple(_discount(c) for c in (self.cont1, self.cont2, self.tri))

    def prob(self, u: int | None, v: int | None, w: int, discounts: tuple[float, float, float]) -> float:
        d1, d2, d3 = discounts
        p = (max(self.cont1[w] - d1, 0) + d1 * len(self.cont1) / self.vocab_size) / self.total1
        if v is None or not self.ctx1[v]:
            return p
        p = (max(self.cont2[(v, w)] - d2, 0) + d2 * self.follow1[v] * p) / self.ctx1[v]
        if u is None or not self.ctx2[(u, v)]:
            return p
        return (max(self.tri[(u, v, w)] - d3, 0) + d3 * self.follow2[(u, v)] * p) / self.ctx2[(u, v)]

    def loss(self, ids: list[int], discounts: tuple[float, float, float] | None = None) -> float:
        """Mean nats per token over ids[1:], each token read in the context of the ones before it in `ids`."""
        discounts = discounts or self.discounts
        total = 0.0
        for i in range(1, len(ids)):
            u = ids[i - 2] if i >= 2 else None
            total -= math.log(self.prob(u, ids[i - 1], ids[i], discounts))
        return total / (len(ids) - 1)


def _discount(counts: Counter) -> float:
    """Ney's estimate D = n1 / (n1 + 2 n2) from how many n-grams occur once (n1) and twice (n2)."""
    of = Counter(counts.values())
    return of[1] / (of[1] + 2 * of[2]) if of[1] else 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--preset", default="words-lstm-large")
    parser.add_argument("--minutes", type=float, default=10.0, help="the LSTM's training budget")
    parser.add_argument("--out", type=Path, help="keep the LSTM's run directory here (default: a temporary one)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override preset settings")
    args = parser.parse_args()
    flags = {"data": args.data, "minutes": args.minutes, "epochs": 100_000, "patience": 0}
    for item in args.set:
        name, value = item.split("=", 1)
        flags[name] = type(_field_default(name))(value) if value.lower() not in ("true", "false") else value == "true"
    m, c = resolve(args.preset, flags, flags)
    text = read_corpus(args.data)
    tokenizer = fit_tokenizer(text, c.tokenizer, c.max_vocab, c.min_freq)  # what the trainer fits
    train_ids, val_ids = split_ids(torch.tensor(tokenizer.encode(text)))
    print(f"{args.data}: {len(train_ids):,} training and {len(val_ids):,} validation tokens, {len(tokenizer.vocab):,}")
    print(f"words in the vocabulary; <unk> is {float((val_ids == tokenizer.unk_id).float().mean()):.2%} of validation")

    t0 = time.monotonic()
    kn = KneserNey(train_ids.tolist(), len(tokenizer.vocab))
    kn_loss = kn.loss(val_ids.tolist())
    grid = [(d, kn.loss(val_ids.tolist(), (d, d, d))) for d in (0.6, 0.7, 0.8, 0.9, 0.95)]
    best_d, oracle = min(grid, key=lambda pair: pair[1])
    print(f"Kneser-Ney built and scored in {time.monotonic() - t0:.1f} s; discounts {kn.discounts}")

    print(f"model: {m}\ntraining: {c}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        result = train(replace(m), replace(c, out=out), progress=False, overwrite=True)
        model, saved, _ = load_model(out)
        if saved.vocab != tokenizer.vocab:
            raise SystemExit("the trainer fitted another vocabulary than this benchmark: they must agree")
        lstm = stateful_loss(model, val_ids, streams=1, chunk=256)
    rows = [
        ("interpolated Kneser-Ney trigram", kn_loss, "-"),
        (f"  (oracle: one discount {best_d} tuned on validation)", oracle, "-"),
        (f"{args.preset}, {args.minutes:g} min (best checkpoint, step {result.best_step})", lstm, result.summary()),
    ]
    print("\n| model | nats/word | perplexity |\n|---|---|---|")
    for name, loss, _ in rows:
        print(f"| {name} | {loss:.4f} | {math.exp(loss):.1f} |")
    gain = 1 - math.exp(lstm) / math.exp(kn_loss)
    verdict = "met" if gain >= TARGET else "MISSED"
    print(f"\nLSTM perplexity {gain:.1%} below Kneser-Ney's (target {TARGET:.0%}): {verdict}")
    print(f"training: {result.summary()}")


def _field_default(name: str):
    from dataclasses import fields

    from rnnx.trainer.config import TrainConfig
    from rnnx.trainer.model import ModelConfig

    for f in (*fields(ModelConfig), *fields(TrainConfig)):
        if f.name == name:
            return f.default
    raise SystemExit(f"unknown setting {name!r}")


if __name__ == "__main__":
    main()

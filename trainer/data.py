"""Training text: the built-in three sentences, or UTF-8 text cut into batches for truncated BPTT."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnx.runtime.errors import RnnxError
from rnnx.runtime.tokenizer import MAX_WORD_CHARS, UNK, CharTokenizer, Tokenizer, WordTokenizer

# The classic vanilla-RNN tutorial's corpus: each line is one example, learned from a zero state.
DEFAULT_LINES = ("hey how are you", "good i am fine", "have a nice day")
TOKENIZERS = ("char", "word")
VAL_FRACTION = 0.1  # the last 10% is validation, as in the best-known char-level baselines
# A vocabulary "explodes" when most tokens are new ones (random bytes, base64, hashes): nothing can be learned.
EXPLODE_MIN_TYPES, EXPLODE_TYPE_RATIO = 1000, 0.5


def normalize(text: str) -> str:
    r"""Drop a leading byte-order mark and make every line end `\n` (Windows `\r\n`, old Mac `\r`)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _too_big(path: Path, size: int, limit: int) -> RnnxError:
    return RnnxError(
        f"{path} holds {size / 2**20:,.1f} MB of text, more than the {limit / 2**20:,.1f} MB limit (tokenizing takes "
        "about 20 bytes of memory per byte of text): pass --max-data-mb with a larger limit, or train on less text"
    )


def read_text(path: Path, limit: int | None = None) -> str:
    """A UTF-8 text file's contents (normalized), or an error saying why it cannot be trained on."""
    if not path.exists():
        raise RnnxError(f"data file {path} not found: pass --data with a UTF-8 text file")
    if not path.is_file():
        raise RnnxError(f"{path} is not a regular file (a device, pipe or socket): pass a UTF-8 text file")
    if limit is not None and path.stat().st_size > limit:
        raise _too_big(path, path.stat().st_size, limit)
    with path.open("rb") as f:
        raw = f.read() if limit is None else f.read(limit + 1)  # a file growing while it is read stops at the limit
    if limit is not None and len(raw) > limit:
        raise _too_big(path, len(raw), limit)
    if b"\x00" in raw:
        raise RnnxError(f"{path} looks binary (it holds NUL bytes): pass a UTF-8 text file")
    try:
        text = normalize(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RnnxError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}): convert it, e.g. iconv -t utf-8"
        ) from None
    if not text.strip():
        raise RnnxError(f"{path} is empty: give it some text to learn from")
    return text


def read_corpus(path: Path, limit: int | None = None) -> str:
    """A text file, or every `.txt` file of a directory in name order, joined by blank lines; at most `limit` bytes."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise RnnxError(f"directory {path} holds no .txt files: pass a text file or a folder of .txt files")
        total = sum(p.stat().st_size for p in files)
        if limit is not None and total > limit:
            raise _too_big(path, total, limit)
        return "\n\n".join(read_text(p, limit).strip("\n") for p in files) + "\n"
    return read_text(path, limit)


def build_tokenizer(text: str, kind: str, max_vocab: int = 0, min_freq: int = 1) -> Tokenizer:
    """A tokenizer fitted to `text`; refuses text whose vocabulary would explode."""
    if kind == "char":
        counts = Counter(text)
        tokenizer: Tokenizer = CharTokenizer.build(text)
    elif kind == "word":
        tokenizer = WordTokenizer.build(text, max_vocab=max_vocab, min_freq=min_freq)
        counts = Counter(tokenizer.split(text))
    else:
        raise RnnxError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")
    types, total = len(counts), sum(counts.values())
    if types > EXPLODE_MIN_TYPES and types > EXPLODE_TYPE_RATIO * total:
        raise RnnxError(
            f"the {kind} vocabulary would explode ({types} distinct tokens in {total}): this does not look like "
            "natural-language text; use --tokenizer char, or train on real text"
        )
    return tokenizer


def fit_tokenizer(text: str, kind: str, max_vocab: int = 0, min_freq: int = 1) -> Tokenizer:
    """The tokenizer a run trains with: a word vocabulary counts the training part only (the first
    1 - VAL_FRACTION of the tokens), so a word that only the validation text holds is `<unk>`, as any word the
    model never saw is; it neither takes a vocabulary entry nor an untrained row of the model (3.5% of
    tiny-shakespeare's validation words did). Characters are counted over the whole text, as before."""
    tokenizer = build_tokenizer(text, kind, max_vocab, min_freq)  # also refuses a vocabulary that explodes
    if kind != "word":
        return tokenizer
    words = tokenizer.split(text)
    counts = Counter(words[: len(words) - int(len(words) * VAL_FRACTION)])  # split_ids's cut
    kept = (word for word, n in counts.items() if n >= min_freq and len(word) <= MAX_WORD_CHARS)
    ranked = sorted(kept, key=lambda word: (-counts[word], word))
    return WordTokenizer(vocab=(UNK, *ranked[: max_vocab - 1 if max_vocab else None]))


def line_examples(lines: tuple[str, ...], tokenizer: Tokenizer) -> torch.Tensor:
    """Each line one example, padded with spaces to the longest (as the tutorial does): (N, L) ids."""
    width = max(len(line) for line in lines)
    return torch.tensor([tokenizer.encode(line.ljust(width)) for line in lines], dtype=torch.long)


def split_ids(ids: torch.Tensor, val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (1 - val_fraction) of the ids for training, the rest for validation, both contiguous."""
    cut = len(ids) - int(len(ids) * val_fraction)
    return ids[:cut], ids[cut:]


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T): the inputs shifted by one token
    stateful: bool  # True: start from the state the previous batch ended with


def seed_for(rng_seed: int, epoch: int, spread: int) -> int:
    """Epoch `epoch`'s seed for the batch order: `rng_seed * spread + epoch` wrapped into torch's 64 bits (the
    wrap changes nothing for seeds below 2**32, whose runs stay as they were)."""
    return (rng_seed * spread + epoch) % 2**64


class LineBatches:
    """Line-per-example data: each epoch shuffles the examples; every batch starts from a zero state."""

    def __init__(self, examples: torch.Tensor, batch_size: int, seed: int) -> None:
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.steps_per_epoch = -(-len(examples) // batch_size)
        self.tokens_per_step = min(batch_size, len(examples)) * (examples.size(1) - 1)

    def get(self, epoch: int, index: int) -> Batch:
        order = torch.randperm(
            len(self.examples), generator=torch.Generator().manual_seed(seed_for(self.seed, epoch, 1))
        )
        batch = self.examples[order[index * self.batch_size : (index + 1) * self.batch_size]]  # (B, L)
        return Batch(batch[:, :-1], batch[:, 1:], stateful=False)


class StreamBatches:
    """Continuous text as `batch_size` side-by-side streams, read `seq_len` tokens at a time (truncated BPTT).

        ids:      a b c d e f g h i j k l m n o p q r s t u v w x ...
        stream 0: a b c d | e f g h | ...        batch k = column block k of every stream;
        stream 1: m n o p | q r s t | ...        the state of row r carries from block k to k+1

    Each epoch starts the streams at a different offset below `seq_len` (seeded by epoch), so the model does
    not always see the same cut points; the state is reset at each epoch start.
    """

    def __init__(
        self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int, part: tuple[int, int] = (0, 1)
    ) -> None:
        """`batch_size` streams per process; with `part = (k, n)` this process reads the k-th of n equal shares of
        the n x batch_size streams, one contiguous piece of the text, so n processes see what one would see with
        a batch n times larger."""
        self.rows = slice(part[0] * batch_size, (part[0] + 1) * batch_size)
        self.processes = part[1]
        batch_size *= part[1]
        need = batch_size * seq_len + seq_len
        if len(ids) < need:
            raise RnnxError(
                f"the training text has {len(ids)} tokens, fewer than one batch needs ({need} with --batch-size "
                f"{batch_size} and --seq-len {seq_len}): use more text or smaller --batch-size / --seq-len"
            )
        self.ids, self.batch_size, self.seq_len, self.seed = ids, batch_size, seq_len, seed
        self.stream_len = (len(ids) - seq_len) // batch_size  # the same for every offset below seq_len
        self.steps_per_epoch = (self.stream_len - 1) // seq_len
        self.tokens_per_step = batch_size * seq_len
        self._epoch, self._streams = -1, ids[:0]

    def _streams_for(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(seed_for(self.seed, epoch, 1_000_003))
            offset = int(torch.randint(self.seq_len, (1,), generator=gen))
            span = self.ids[offset : offset + self.batch_size * self.stream_len]
            self._epoch, self._streams = epoch, span.view(self.batch_size, self.stream_len)  # (B, S)
        return self._streams

    def get(self, epoch: int, index: int) -> Batch:
        streams = self._streams_for(epoch)
        start = index * self.seq_len
        block = streams[self.rows, start : start + self.seq_len + 1]  # (B, T+1): this process's streams
        return Batch(block[:, :-1], block[:, 1:], stateful=index > 0)

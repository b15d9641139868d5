"""Training text: the built-in three sentences, or a UTF-8 file, turned into token-id tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnx.runtime.errors import RnnxError
from rnnx.runtime.tokenizer import Tokenizer

# The classic vanilla-RNN tutorial's corpus: each line is one example, learned from a zero state.
DEFAULT_LINES = ("hey how are you", "good i am fine", "have a nice day")


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents, or an error saying why it cannot be trained on."""
    if not path.is_file():
        raise RnnxError(f"data file {path} not found: pass --data with a UTF-8 text file")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise RnnxError(f"{path} looks binary (it holds NUL bytes): pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RnnxError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}): convert it, e.g. iconv -t utf-8"
        ) from None
    if not text.strip():
        raise RnnxError(f"{path} is empty: give it some text to learn from")
    return text


def line_examples(lines: tuple[str, ...], tokenizer: Tokenizer) -> torch.Tensor:
    """Each line one example, padded with spaces to the longest (as the tutorial does): (N, L) ids."""
    width = max(len(line) for line in lines)
    return torch.tensor([tokenizer.encode(line.ljust(width)) for line in lines], dtype=torch.long)


def text_windows(text: str, tokenizer: Tokenizer, seq_len: int) -> torch.Tensor:
    """Continuous text cut into windows of seq_len + 1 ids (inputs plus the next-token targets): (N, L+1)."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if len(ids) < 2:
        raise RnnxError("the text is too short to train on: it needs at least two tokens")
    width = min(seq_len + 1, len(ids))
    count = (len(ids) - 1) // (width - 1)
    return torch.stack([ids[i * (width - 1) : i * (width - 1) + width] for i in range(count)])

"""Scoring text with an exported model alone: mean next-token cross-entropy, the state carried throughout.

    model = Model("artifacts/shakespeare/model.onnx")
    result = score(model, read_data(Path("valid.txt")), streams=32)
    print(result.nats_per_token, result.bits_per_char)

The protocol is the trainer's stateful one (`rnnx.trainer.evaluate.stateful_loss`), so the same ids and the same
`streams` give the trainer's figure. With `streams` > 1 the ids are cut into that many contiguous pieces read
side by side, each from a zero state (`stream_cut` repeats the trainer's arithmetic):

    ids:      a b c d e f g h i j k l m      (13 ids, streams 3: length (13 - 1) // 3 = 4)
    stream 0: a b c d   -> predicts b c d e
    stream 1: e f g h   -> predicts f g h i
    stream 2: i j k l   -> predicts j k l m

Memory stays bounded: logits are reduced block by block (never all of them at once), with one stream the text
is read and encoded piece by piece, and with several the ids are held as int32 (at most `MAX_HELD_TOKENS`).
"""

from __future__ import annotations

import codecs
import contextlib
import math
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnx.runtime.errors import ModelFileError, UsageError
from rnnx.runtime.sampling import is_int

if TYPE_CHECKING:
    from rnnx.runtime.model import Model
    from rnnx.runtime.steps import Steps
    from rnnx.runtime.tokenizer import Tokenizer

PIECE_CHARS = 1 << 20  # the most text encoded at once
READ_BYTES = 1 << 20  # read_data's chunk size
MAX_WORD_RUN = 1 << 24  # a word model waits for whitespace to cut the text; longer runs without any are refused
MAX_HELD_TOKENS = 1 << 27  # streams > 1 hold every id as int32: 512 MiB at most
MAX_STREAMS = 1024
BLOCK_LOGITS = 1 << 22  # logits (float32) collected before they are reduced in float64: 16 MiB at most
BLOCK_STEPS = 256  # ...and steps: progress is reported after each block

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Score:
    """Mean next-token cross-entropy of a text under a model."""

    nats_per_token: float
    tokens: int  # predictions scored: the text's tokens less one (and, with streams, what `stream_cut` leaves over)
    kind: str  # the tokenizer's: "char" or "word"
    streams: int = 1  # streams read side by side (the trainer's clamp applied)

    @property
    def bits_per_char(self) -> float | None:
        """Bits per character, for a char model (None for a word model)."""
        return self.nats_per_token / math.log(2) if self.kind == "char" else None

    @property
    def perplexity(self) -> float | None:
        """exp(nats per token), for a word model (None for a char model)."""
        if self.kind != "word":
            return None
        return math.exp(self.nats_per_token) if self.nats_per_token < 700 else math.inf


def score(model: Model, texts: Iterable[str] | str, *, streams: int = 1, progress: Progress | None = None) -> Score:
    """Teacher-forced mean next-token cross-entropy (nats) of the text under `model`, the state carried along.

    texts: the text as an iterable of chunks (a file streamed in pieces; cut anywhere), or one string.
    streams: contiguous pieces read side by side, as `stateful_loss(streams=...)` cuts them; 1 reads the text in
        order from start to end without holding it.
    progress: called with the number of predictions scored so far, every block and at the end.
    """
    check_streams(streams)
    if progress is not None and not callable(progress):
        raise UsageError(f"progress must be a function of the predictions scored, got {type(progress).__name__}")
    streams = int(streams)
    pieces = encode_pieces(texts, model.tokenizer)
    if streams == 1:
        nats, count = _score_in_order(model, pieces, progress)
        used = 1
    else:
        ids = _hold(pieces)
        _check_enough(len(ids))
        used, length = stream_cut(len(ids), streams)
        nats, count = _score_side_by_side(model, ids, used, length, progress)
    return Score(nats / count, count, model.tokenizer.kind, used)


def stream_cut(tokens: int, streams: int) -> tuple[int, int]:
    """(streams, length) for `tokens` ids, exactly as the trainer cuts them: at most (tokens - 1) // 2 streams,
    each `length` predictions long; the (tokens - 1) % streams ids left over at the end are not scored."""
    streams = max(1, min(streams, (tokens - 1) // 2))
    return streams, (tokens - 1) // streams


def count_tokens(texts: Iterable[str] | str, tokenizer: Tokenizer) -> int:
    """How many ids `tokenizer` makes of the text (read in pieces, as `score` reads it)."""
    return sum(len(ids) for ids in encode_pieces(texts, tokenizer))


def check_streams(streams: int) -> None:
    if not is_int(streams) or not 1 <= streams <= MAX_STREAMS:
        raise UsageError(f"streams must be a whole number from 1 to {MAX_STREAMS}, got {streams!r}")


def check_held(tokens: int) -> None:
    """Refuse a text too long for streams > 1, which hold all of its ids."""
    if tokens > MAX_HELD_TOKENS:
        raise UsageError(
            f"the text has {tokens:,} tokens, more than {MAX_HELD_TOKENS:,} (the most that streams > 1 hold in "
            "memory): score it with one stream, which reads it in pieces"
        )


def encode_pieces(texts: Iterable[str] | str, tokenizer: Tokenizer) -> Iterator[list[int]]:
    """The ids of the text, piece by piece; joined they are `tokenizer.encode` of the whole text.

    A char tokenizer encodes each character alone, so any cut works. A word tokenizer is cut only after
    whitespace: no token spans whitespace, and the text after it reads as a text's start does (a straight
    quote there opens, lower-casing has no context across it).
    """
    if isinstance(texts, str):
        texts = (texts,)
    elif isinstance(texts, bytes | bytearray | memoryview) or not isinstance(texts, Iterable):
        raise UsageError(f"the text must be a string or chunks of one, got {type(texts).__name__}: give it as str")
    by_char = tokenizer.kind == "char"
    carry = ""
    for chunk in texts:
        if not isinstance(chunk, str):
            raise UsageError(f"texts must be strings, got {type(chunk).__name__}: decode the text first")
        for start in range(0, len(chunk), PIECE_CHARS):
            piece = chunk[start : start + PIECE_CHARS]
            if by_char:
                yield tokenizer.encode(piece)
                continue
            cut = _after_last_space(piece)
            if cut:
                yield tokenizer.encode(carry + piece[:cut])
                carry = piece[cut:]
            else:
                carry += piece
            if len(carry) > MAX_WORD_RUN:
                raise UsageError(
                    f"the text runs over {MAX_WORD_RUN:,} characters without whitespace, which a word model cannot "
                    "read in pieces: break it into lines"
                )
    if carry:
        yield tokenizer.encode(carry)


def _after_last_space(text: str) -> int:
    """The index just after the last whitespace character of `text` (0 when it has none)."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isspace():  # what the word rules' `\s` matches
            return index + 1
    return 0


def _hold(pieces: Iterable[list[int]]) -> np.ndarray:
    held = array("i")
    for ids in pieces:
        check_held(len(held) + len(ids))
        held.extend(ids)
    return np.frombuffer(held, dtype=np.int32) if held else np.zeros(0, np.int32)


def _check_enough(tokens: int) -> None:
    if tokens < 2:
        raise UsageError(
            f"the text has {tokens} token{'s' * (tokens != 1)}, and scoring needs at least 2 (one to read, "
            "one to predict): give it more text"
        )


class _Tally:
    """Sums -log softmax(logits)[target] in float64, a block of rows at a time."""

    def __init__(self, batch: int, vocab: int, progress: Progress | None) -> None:
        rows = min(BLOCK_STEPS, max(1, BLOCK_LOGITS // (batch * vocab))) * batch
        self._logits = np.empty((rows, vocab), np.float32)  # (R, V)
        self._targets = np.empty(rows, np.int64)  # (R,)
        self._filled = 0
        self._progress = progress
        self.nats = 0.0
        self.count = 0

    def add(self, logits: np.ndarray, targets: np.ndarray) -> None:
        """logits (B, V) and the ids they should predict (B,); B divides the block's rows."""
        end = self._filled + len(targets)
        self._logits[self._filled : end] = logits
        self._targets[self._filled : end] = targets
        self._filled = end
        if end == len(self._targets):
            self.flush()

    def flush(self) -> None:
        if not self._filled:
            return
        x = self._logits[: self._filled].astype(np.float64)  # (R, V)
        top = x.max(axis=1)
        log_z = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
        nats = float((log_z - x[np.arange(self._filled), self._targets[: self._filled]]).sum())
        if not math.isfinite(nats):
            raise ModelFileError(
                "the model gave non-finite logits while scoring: its weights are broken; re-train or re-export it"
            )
        self.nats += nats
        self.count += self._filled
        self._filled = 0
        if self._progress is not None:
            self._progress(self.count)


def _score_in_order(model: Model, pieces: Iterable[list[int]], progress: Progress | None) -> tuple[float, int]:
    """One stream: each id read in turn predicts the next; the pieces are consumed as they come."""
    tally = _Tally(1, model.info.vocab_size, progress)
    token, target = np.zeros(1, np.int64), np.zeros(1, np.int64)
    seen = 0
    with _steps(model, 1) as steps:
        for ids in pieces:
            for next_id in ids:
                if seen:
                    target[0] = next_id
                    tally.add(steps.run(token), target)  # (1, V): what follows `token`
                token[0] = next_id
                seen += 1
    tally.flush()
    _check_enough(seen)
    return tally.nats, tally.count


def _score_side_by_side(
    model: Model, ids: np.ndarray, streams: int, length: int, progress: Progress | None
) -> tuple[float, int]:
    x = ids[: streams * length].reshape(streams, length)  # (S, N)
    y = ids[1 : streams * length + 1].reshape(streams, length)  # (S, N)
    tally = _Tally(streams, model.info.vocab_size, progress)
    with _steps(model, streams) as steps:
        for t in range(length):
            tally.add(steps.run(x[:, t]), y[:, t])  # (S, V)
    tally.flush()
    return tally.nats, tally.count


@contextlib.contextmanager
def _steps(model: Model, batch: int) -> Iterator[Steps]:
    """The generation loop's own step buffers (IOBinding, state kept on the session's device), from zero."""
    steps = model.open_steps(batch)
    try:
        steps.load(model.initial_state(batch))
        yield steps
    finally:
        steps.close()


# -- text files, read as the trainer's --data reads them -------------------------------------------------------


def data_files(path: Path) -> list[Path]:
    """The files `path` names: itself, or every `.txt` file of a folder in name order; each checked before reading."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"data file {path} not found: give a UTF-8 text file or a folder of .txt files")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise UsageError(f"folder {path} holds no .txt files: give a text file or a folder of .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(f"{path} is not a regular file (a device, pipe or socket): give a UTF-8 text file")
    for file in files:
        if file.stat().st_size == 0:
            raise UsageError(f"{file} is empty: give it some text to score")
    return files


def read_data(path: Path, read_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of a file, or of a folder's `.txt` files joined as the trainer joins them, in chunks.

    A file reads as it is, but for line endings and a byte-order mark (see `_file_text`). A folder's files read
    without their leading and trailing line breaks, joined by a blank line, with one line break at the end:
    `rnnx.trainer.data.read_corpus`'s text, never held whole. Each file must be UTF-8 text (no NUL bytes) with
    something besides whitespace.
    """
    path = Path(path)
    files = data_files(path)
    if not path.is_dir():
        yield from _file_text(files[0], read_bytes)
        return
    for index, file in enumerate(files):
        if index:
            yield "\n\n"
        yield from _strip_line_breaks(_file_text(file, read_bytes))
    yield "\n"


def _file_text(path: Path, read_bytes: int) -> Iterator[str]:
    """A file's text as the trainer reads it (`rnnx.trainer.data.read_text`): UTF-8, a leading byte-order mark
    dropped, every line ending `\\n` (`\\r\\n` and a lone `\\r` too)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes handed to the decoder so far
    carry = ""  # a "\r" at the end of a read: its "\n" may come with the next
    started, blank = False, True
    with path.open("rb") as f:
        while True:
            raw = f.read(read_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"{path} is not UTF-8 text (bad byte at offset {offset - pending + exc.start}): convert it, "
                    "e.g. iconv -t utf-8"
                ) from None
            if "\x00" in text:
                raise UsageError(f"{path} looks binary (it holds NUL bytes): give a UTF-8 text file")
            if text and not started:
                text, started = text.removeprefix("\ufeff"), True
            offset += len(raw)
            text = carry + text
            carry = "\r" if raw and text.endswith("\r") else ""
            text = text[: len(text) - len(carry)].replace("\r\n", "\n").replace("\r", "\n")
            if text:
                blank = blank and text.isspace()
                yield text
            if not raw:
                break
    if blank:
        raise UsageError(f"{path} holds only whitespace: give it some text to score")


def _strip_line_breaks(chunks: Iterable[str]) -> Iterator[str]:
    """The chunks' text without leading and trailing "\\n" (str.strip("\\n") without holding the text)."""
    started, held = False, 0  # held: line breaks seen at the end so far, written once more text follows
    for chunk in chunks:
        if not started:
            chunk = chunk.lstrip("\n")
            if not chunk:
                continue
            started = True
        body = chunk.rstrip("\n")
        if body:
            yield "\n" * held + body
            held = 0
        held += len(chunk) - len(body)

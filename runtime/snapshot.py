"""Portable state: one row of a run as bytes, to resume later, in another process or on another machine.

A recurrent model's whole context is its state: a few kilobytes whatever the length of the text. A snapshot
holds that state and what the run needs to go on exactly where it stopped, and nothing else:

    offset  size             field
    0       8                magic b"RNNXSNAP"
    8       2                format version (1), little-endian like every number here
    10      32               sha256 fingerprint of the model's graph (`FileFacts.fingerprint`)
    42      1 + 1 + 4 + 4 + 4  cell index in contract.CELLS, state tensors (1 or 2), layers, hidden, vocabulary
    56      8                the last token read (int64; spacing of the next word depends on it)
    64      16 + 16 + 1 + 4  the row's random generator (numpy PCG64: state, increment, has_uint32, uinteger)
    101     S × L × H × 4    the state, float32, tensor by tensor (h, then c), layer by layer
    ...     V × 4            the logits that state predicts, float32 (what the next token is drawn from)
    ...     ⌈V / 8⌉          which tokens the text holds so far (repetition penalty), one bit each
    ...     4                CRC-32 of everything before it

Everything is checked on load (`decode`): magic, version, exact length, checksum, the model's fingerprint and
sizes, finite numbers, a valid token id, the random generator's odd increment and 0/1 flag, zero padding bits.
No pickle, no code: numbers in a fixed layout.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from rnnx.runtime import contract
from rnnx.runtime.errors import ModelFileError, UsageError

MAGIC = b"RNNXSNAP"
VERSION = 1
_HEAD = struct.Struct("<8sH32sBBIIIq16s16sBI")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Snapshot:
    """One row's resumable state, decoded and checked against a model."""

    state: tuple[np.ndarray, ...]  # each (layers, hidden) float32
    logits: np.ndarray  # (vocab,) float32
    last_id: int
    rng_state: dict  # numpy PCG64 `bit_generator.state`
    seen: np.ndarray  # (vocab,) bool


def encode(
    info: contract.ModelInfo,
    fingerprint: str,
    state: tuple[np.ndarray, ...],
    logits: np.ndarray,
    last_id: int,
    rng_state: dict,
    seen: np.ndarray,
) -> bytes:
    pcg = rng_state["state"]
    head = _HEAD.pack(
        MAGIC,
        VERSION,
        bytes.fromhex(fingerprint),
        contract.CELLS.index(info.cell),
        len(state),
        info.layers,
        info.hidden,
        info.vocab_size,
        last_id,
        pcg["state"].to_bytes(16, "little"),
        pcg["inc"].to_bytes(16, "little"),
        int(rng_state["has_uint32"]),
        int(rng_state["uinteger"]),
    )
    body = b"".join(np.ascontiguousarray(s, "<f4").tobytes() for s in state)
    body += np.ascontiguousarray(logits, "<f4").tobytes() + np.packbits(seen, bitorder="little").tobytes()
    data = head + body
    return data + _CRC.pack(zlib.crc32(data))


def expected_size(info: contract.ModelInfo) -> int:
    vocab = info.vocab_size
    return _HEAD.size + info.state_bytes + 4 * vocab + (vocab + 7) // 8 + _CRC.size


def decode(blob: bytes, info: contract.ModelInfo, fingerprint: str) -> Snapshot:
    """The snapshot in `blob`, or a UsageError (not a snapshot) / ModelFileError (another model's) saying why."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise UsageError(f"a snapshot is bytes from Generator.snapshot, got {type(blob).__name__}")
    size = blob.nbytes if isinstance(blob, memoryview) else len(blob)
    if size > expected_size(info):  # before a byte is copied or summed: a gigabyte is refused at once
        raise UsageError(
            f"{size:,} bytes are more than a snapshot of this model takes ({expected_size(info):,}): "
            "pass one blob from Generator.snapshot per row"
        )
    blob = bytes(blob)
    if len(blob) < _HEAD.size + _CRC.size or blob[: len(MAGIC)] != MAGIC:
        raise UsageError("these bytes are not an rnnx snapshot (take one with Generator.snapshot)")
    fields = _HEAD.unpack_from(blob)
    _, version, print_, cell, tensors, layers, hidden, vocab, last_id, pcg_state, pcg_inc, has32, uint = fields
    if version != VERSION:
        raise UsageError(f"snapshot format version {version} is not one this rnnx reads ({VERSION}): upgrade rnnx")
    if zlib.crc32(blob[: -_CRC.size]) != _CRC.unpack_from(blob, len(blob) - _CRC.size)[0]:
        raise UsageError(f"the snapshot is damaged or truncated ({len(blob)} bytes, checksum mismatch): take a new one")
    if print_.hex() != fingerprint:
        raise ModelFileError(
            f"the snapshot was taken from another model (weights fingerprint {print_.hex()[:12]}…, this model "
            f"{fingerprint[:12]}…): resume it with the model file it came from"
        )
    sizes = (cell, tensors, layers, hidden, vocab)
    want = (contract.CELLS.index(info.cell), len(info.state_inputs), info.layers, info.hidden, info.vocab_size)
    if sizes != want:
        raise ModelFileError(f"the snapshot's sizes {sizes} do not fit this model {want}: it is not from this file")
    if len(blob) != expected_size(info):
        want_bytes = expected_size(info)
        raise UsageError(f"the snapshot is {len(blob)} bytes, not the {want_bytes} its sizes need: take a new one")
    if not 0 <= last_id < vocab:
        raise UsageError(f"the snapshot's last token {last_id} is outside the vocabulary: take a new one")
    offset = _HEAD.size
    floats = np.frombuffer(blob, "<f4", count=tensors * layers * hidden + vocab, offset=offset)
    if not np.isfinite(floats).all():
        raise UsageError("the snapshot holds non-finite numbers (inf or NaN): take a new one")
    per_tensor = layers * hidden
    state = tuple(floats[i * per_tensor : (i + 1) * per_tensor].reshape(layers, hidden).copy() for i in range(tensors))
    logits = floats[tensors * per_tensor :].copy()
    offset += floats.nbytes
    bits = np.frombuffer(blob, np.uint8, count=(vocab + 7) // 8, offset=offset)
    if vocab % 8 and bits[-1] >> (vocab % 8):  # `encode` pads the last byte with zeros
        raise UsageError("the snapshot marks tokens past the vocabulary as seen: take a new one")
    seen = np.unpackbits(bits, count=vocab, bitorder="little").astype(bool)
    inc = int.from_bytes(pcg_inc, "little")
    # numpy's PCG64 increment is always odd and has_uint32 a flag: anything else was not written by `encode`,
    # and numpy would quietly make it fit (another random stream than the snapshot's)
    if not inc & 1 or has32 > 1:
        raise UsageError("the snapshot's random generator state is not numpy PCG64's: take a new one")
    rng_state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(pcg_state, "little"), "inc": inc},
        "has_uint32": has32,
        "uinteger": uint,
    }
    return Snapshot(state, logits, last_id, rng_state, seen)


__all__ = ["Snapshot", "decode", "encode", "expected_size"]

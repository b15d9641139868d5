"""Reading an `.onnx` file's bytes without the onnx package: just enough protobuf to check and take it apart.

The runtime must not follow paths written inside a model file, so a file whose tensors live in external
files is refused outright; the sessions are then built from the bytes in memory. The same reader gives the
file's facts (opset, producer, a fingerprint of its graph) and cuts one path out of a two-path graph
(`extract`): onnxruntime runs every node of a graph whatever outputs are asked for, so the step path and the
prompt path of a version-2 file each become a session of their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rnnx.runtime.errors import ModelFileError

# A self-contained ONNX file is one protobuf message, which protobuf caps at 2 GiB.
MAX_MODEL_BYTES = 2**31 - 1

# Field numbers from onnx.proto.
_MODEL_IR, _MODEL_PRODUCER, _MODEL_PRODUCER_VERSION = 1, 2, 3
_MODEL_GRAPH, _MODEL_OPSET, _MODEL_METADATA = 7, 8, 14
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
_GRAPH_SPARSE_INITIALIZER = 15
_NODE_INPUT, _NODE_OUTPUT, _NODE_ATTRIBUTE = 1, 2, 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_VALUE_NAME = 1
_EXTERNAL = 1
_MAX_DEPTH = 16  # graphs inside node attributes inside graphs: rnnx writes two levels
_MAX_SCANNED = 4096  # top-level fields walked before a file is read whole; an rnnx export has a few dozen


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _spans(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview, int, int]]:
    """Yield (field number, wire type, value, start, end) for each field of one protobuf message.

    buf[start:end] is the whole field, key included, so a kept field can be copied as it is.
    """
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise _Malformed
            value = 0
        else:
            raise _Malformed
        yield field, wire, value, start, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    for field, wire, value, _, _ in _spans(buf):
        yield field, wire, value


def _strings(buf: memoryview, number: int) -> list[str]:
    try:
        return [bytes(v).decode("utf-8") for f, w, v in _fields(buf) if f == number and w == 2]
    except UnicodeDecodeError:
        raise _Malformed from None


def _tensor_is_external(tensor: memoryview) -> bool:
    for field, _, value in _fields(tensor):
        if field == _TENSOR_EXTERNAL_DATA or (field == _TENSOR_DATA_LOCATION and value == _EXTERNAL):
            return True
    return False


def _graph_has_external(graph: memoryview, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        raise _Malformed
    for field, wire, value in _fields(graph):
        if wire != 2:
            continue
        if field in (_GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER) and _tensor_is_external(value):
            return True
        if field == _GRAPH_NODE:
            for nfield, nwire, attr in _fields(value):
                if nfield == _NODE_ATTRIBUTE and nwire == 2 and _attribute_has_external(attr, depth):
                    return True
    return False


def _attribute_has_external(attr: memoryview, depth: int) -> bool:
    for field, wire, value in _fields(attr):
        if wire != 2:
            continue
        if field in (_ATTR_T, _ATTR_TENSORS) and _tensor_is_external(value):
            return True
        if field in (_ATTR_G, _ATTR_GRAPHS) and _graph_has_external(value, depth + 1):
            return True
    return False


def _one_graph(data: bytes) -> memoryview:
    graphs = [v for f, w, v in _fields(memoryview(data)) if f == _MODEL_GRAPH and w == 2]
    if len(graphs) != 1:
        raise _Malformed
    return graphs[0]


def read_model_bytes(path: Path, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """The file's bytes, once it is known to be a self-contained ONNX model of at most `max_bytes` bytes."""
    if not path.exists():
        raise ModelFileError(f"model file {path} not found: export one with rnn-export")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file: pass the path of an exported .onnx file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(_too_big(path, size, max_bytes))
    with path.open("rb") as f:
        if not _framed_as_a_model(f, size):  # before reading it all: 1.5 GB of zeros took 1.6 GB and seconds
            raise ModelFileError(f"{path} is not an ONNX model (corrupt or another format): re-export it")
        f.seek(0)
        data = f.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise ModelFileError(_too_big(path, len(data), max_bytes))
    try:
        external = _graph_has_external(_one_graph(data))
    except _Malformed:
        raise ModelFileError(f"{path} is not an ONNX model (corrupt or another format): re-export it") from None
    if external:
        raise ModelFileError(
            f"{path} keeps tensors in external data files, which rnnx refuses: export a single .onnx file"
        )
    return data


def _read_varint(f: BinaryIO) -> int:
    """One varint from the file's current position (_Malformed at its end or past 64 bits)."""
    result = shift = 0
    while shift <= 63:
        byte = f.read(1)
        if not byte:
            raise _Malformed
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
    raise _Malformed


def _framed_as_a_model(f: BinaryIO, size: int) -> bool:
    """Whether the file's top-level fields, read key by key and skipped with seeks, look like a ModelProto's:
    ir_version first (tag 0x08: protobuf writes fields in number order, and onnxruntime requires it), then fields
    that end within the file. Zeros, text or a size that runs past the end fail in the first few bytes. After
    _MAX_SCANNED fields the rest is left to the full parse (a file of tiny fields would be slow to walk)."""
    try:
        if f.read(1) != bytes([_MODEL_IR << 3]) or _read_varint(f) == 0:
            return False
        for _ in range(_MAX_SCANNED):
            if f.tell() == size:
                return True
            key = _read_varint(f)
            field, wire = key >> 3, key & 7
            if field == 0 or wire not in (0, 1, 2, 5):
                return False
            if wire == 0:
                _read_varint(f)
            else:
                skip = _read_varint(f) if wire == 2 else 8 if wire == 1 else 4
                if f.tell() + skip > size:
                    return False
                f.seek(skip, 1)
    except _Malformed:
        return False
    return True


def _too_big(path: Path, size: int, limit: int) -> str:
    if limit >= MAX_MODEL_BYTES:
        return (
            f"{path} is {size / 2**30:.1f} GiB, more than a self-contained ONNX file can be (2 GiB): not an rnnx model"
        )
    return f"{path} is {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.1f} MiB: raise max_bytes to load it"


def read_metadata(data: bytes, source: str) -> dict[str, str]:
    """The model's `metadata_props`, read before onnxruntime sees the file (bytes from `read_model_bytes`)."""
    meta: dict[str, str] = {}
    try:
        for field, wire, entry in _fields(memoryview(data)):
            if field != _MODEL_METADATA or wire != 2:
                continue
            parts = {f: bytes(v).decode("utf-8") for f, w, v in _fields(entry) if w == 2}
            meta[parts.get(_ENTRY_KEY, "")] = parts.get(_ENTRY_VALUE, "")
    except (_Malformed, UnicodeDecodeError):
        raise ModelFileError(f"{source} has unreadable metadata: re-export it") from None
    return meta


@dataclass(frozen=True)
class FileFacts:
    """What a model file says about itself outside the rnnx metadata."""

    size_bytes: int
    opset: int  # the default ("ai.onnx") domain's version
    ir_version: int
    producer: str  # producer_name and producer_version, as the file gives them
    fingerprint: str  # sha256 of the serialized graph (nodes and weights), hex: equal graphs, equal fingerprints
    outputs: tuple[str, ...] = ()  # the graph's output names


def read_facts(data: bytes, source: str) -> FileFacts:
    opset = ir_version = 0
    producer: list[str] = []
    try:
        for field, wire, value in _fields(memoryview(data)):
            if field == _MODEL_IR and wire == 0:
                ir_version = value
            elif field in (_MODEL_PRODUCER, _MODEL_PRODUCER_VERSION) and wire == 2:
                producer.append(bytes(value).decode("utf-8"))
            elif field == _MODEL_OPSET and wire == 2:
                parts = dict((f, v) for f, w, v in _fields(value))
                if not bytes(parts.get(_OPSET_DOMAIN, b"")) or bytes(parts[_OPSET_DOMAIN]) == b"ai.onnx":
                    opset = int(parts.get(_OPSET_VERSION, 0))
        graph = _one_graph(data)
        outputs = tuple(_named(v, _VALUE_NAME) for f, w, v in _fields(graph) if f == _GRAPH_OUTPUT and w == 2)
    except (_Malformed, UnicodeDecodeError, TypeError, ValueError):
        raise ModelFileError(f"{source} is not an ONNX model (corrupt or another format): re-export it") from None
    fingerprint = hashlib.sha256(graph).hexdigest()
    return FileFacts(len(data), opset, ir_version, " ".join(p for p in producer if p), fingerprint, outputs)


def _graph_names(graph: memoryview, depth: int = 0) -> Iterator[str]:
    """Every name the nodes of `graph` and of its subgraphs read: a subgraph may read outer names directly."""
    if depth > _MAX_DEPTH:
        raise _Malformed
    for field, wire, node in _fields(graph):
        if field != _GRAPH_NODE or wire != 2:
            continue
        yield from _strings(node, _NODE_INPUT)
        for nfield, nwire, attr in _fields(node):
            if nfield == _NODE_ATTRIBUTE and nwire == 2:
                for afield, awire, sub in _fields(attr):
                    if afield in (_ATTR_G, _ATTR_GRAPHS) and awire == 2:
                        yield from _graph_names(sub, depth + 1)


def _node_reads(node: memoryview) -> set[str]:
    reads = set(_strings(node, _NODE_INPUT))
    for field, wire, attr in _fields(node):
        if field == _NODE_ATTRIBUTE and wire == 2:
            for afield, awire, sub in _fields(attr):
                if afield in (_ATTR_G, _ATTR_GRAPHS) and awire == 2:
                    reads.update(_graph_names(sub, 1))
    return reads


def _named(value: memoryview, number: int) -> str:
    names = _strings(value, number)
    return names[0] if names else ""


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def extract(data: bytes, outputs: Iterable[str], source: str) -> bytes:
    """The model with only what computing `outputs` needs: those graph outputs, the nodes they depend on, and
    the inputs and initializers those nodes read. Everything else in the file is copied as it is."""
    want = set(outputs)
    try:
        model = memoryview(data)
        graph = _one_graph(data)
        fields = list(_spans(graph))
        needed = set(want)
        keep: set[int] = set()
        for index in range(len(fields) - 1, -1, -1):  # nodes are stored in topological order
            field, wire, value, _, _ = fields[index]
            if field == _GRAPH_NODE and wire == 2 and needed.intersection(_strings(value, _NODE_OUTPUT)):
                keep.add(index)
                needed |= _node_reads(value)
        found = {_named(v, _VALUE_NAME) for f, w, v, _, _ in fields if f == _GRAPH_OUTPUT and w == 2} & want
        if found != want:
            raise ModelFileError(f"{source} lacks the outputs {', '.join(sorted(want - found))}: re-export it")
        parts = []
        for index, (field, wire, value, start, end) in enumerate(fields):
            if wire == 2 and field == _GRAPH_NODE and index not in keep:
                continue
            if wire == 2 and field in (_GRAPH_INPUT, _GRAPH_VALUE_INFO) and _named(value, _VALUE_NAME) not in needed:
                continue
            if wire == 2 and field == _GRAPH_OUTPUT and _named(value, _VALUE_NAME) not in want:
                continue
            if wire == 2 and field == _GRAPH_INITIALIZER and _named(value, _TENSOR_NAME) not in needed:
                continue
            parts.append(graph[start:end])
        new_graph = b"".join(parts)
        out = []
        for field, wire, _, start, end in _spans(model):
            out.append(_field(_MODEL_GRAPH, new_graph) if field == _MODEL_GRAPH and wire == 2 else model[start:end])
    except _Malformed:
        raise ModelFileError(f"{source} is not an ONNX model (corrupt or another format): re-export it") from None
    return b"".join(out)

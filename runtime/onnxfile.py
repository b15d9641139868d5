"""Reading an `.onnx` file's bytes without the onnx package: just enough protobuf to refuse external data.

The runtime must not follow paths written inside a model file, so a file whose tensors live in external
files is refused outright; the session is then built from the bytes in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rnnx.runtime.errors import ModelFileError

# Field numbers from onnx.proto.
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_EXTERNAL = 1


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


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed
            yield field, wire, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise _Malformed
        else:
            raise _Malformed


def _tensor_is_external(tensor: memoryview) -> bool:
    for field, _, value in _fields(tensor):
        if field == _TENSOR_EXTERNAL_DATA or (field == _TENSOR_DATA_LOCATION and value == _EXTERNAL):
            return True
    return False


def _graph_has_external(graph: memoryview) -> bool:
    for field, wire, value in _fields(graph):
        if wire != 2:
            continue
        if field == _GRAPH_INITIALIZER and _tensor_is_external(value):
            return True
        if field == _GRAPH_NODE:
            for nfield, nwire, attr in _fields(value):
                if nfield == _NODE_ATTRIBUTE and nwire == 2 and _attribute_has_external(attr):
                    return True
    return False


def _attribute_has_external(attr: memoryview) -> bool:
    for field, wire, value in _fields(attr):
        if wire != 2:
            continue
        if field in (_ATTR_T, _ATTR_TENSORS) and _tensor_is_external(value):
            return True
        if field in (_ATTR_G, _ATTR_GRAPHS) and _graph_has_external(value):
            return True
    return False


def read_model_bytes(path: Path) -> bytes:
    """The file's bytes, once it is known to be a self-contained ONNX model."""
    if not path.exists():
        raise ModelFileError(f"model file {path} not found: export one with rnn-export")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file: pass the path of an exported .onnx file")
    data = path.read_bytes()
    try:
        graphs = [v for f, w, v in _fields(memoryview(data)) if f == _MODEL_GRAPH and w == 2]
        if len(graphs) != 1:
            raise _Malformed
        external = _graph_has_external(graphs[0])
    except _Malformed:
        raise ModelFileError(f"{path} is not an ONNX model (corrupt or another format): re-export it") from None
    if external:
        raise ModelFileError(
            f"{path} keeps tensors in external data files, which rnnx refuses: export a single .onnx file"
        )
    return data


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

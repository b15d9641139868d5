"""int8 weights for the CPU: onnxruntime dynamic quantization of the MatMul-form step graph.

Only the recurrent MatMuls are quantized: their weights are what a step reads (4·H·(E+H) values per LSTM layer
before folding, G·H·H after), so they are where int8 pays. The folded embedding table is only gathered from
(one row per token) and the output layer is small, so both stay fp32, which keeps the logits' own error down.
onnxruntime stores each quantized weight as int8 with one scale, quantizes the activation per call
(DynamicQuantizeLinear) and fuses the pattern into DynamicQuantizeMatMul when the session loads.

The ONNX-op form is not used here: its LSTM has a quantized twin (DynamicQuantizeLSTM) but GRU and RNN do not,
and on the 2-core dev machine the quantized MatMul form was faster than DynamicQuantizeLSTM anyway.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from rnnx.export.matmul_graph import HEAD_MATMUL
from rnnx.runtime import contract
from rnnx.runtime.errors import ExportCheckError

PER_CHANNEL = False  # one scale per weight matrix; per-column scales measured no better, and slower


class _DropQuantizerAdvice(logging.Filter):
    """onnxruntime's quantizer logs generic advice on the root logger ("consider pre-processing"); drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


def recurrent_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose weights are recurrent-layer weights (every MatMul but the head)."""
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name != HEAD_MATMUL]


def int8_weight_count(proto: onnx.ModelProto) -> int:
    """How many weight matrices are stored as int8 (scalar int8 zero points do not count)."""
    return sum(1 for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2)


def quantize_int8(proto: onnx.ModelProto, info: contract.ModelInfo) -> onnx.ModelProto:
    """A copy of the fp32 MatMul-form `proto` with int8 recurrent weights and `info`'s metadata, weights="int8"."""
    targets = recurrent_matmuls(proto)
    if not targets:
        raise ExportCheckError("the graph has no recurrent MatMul to quantize: int8 needs the matmul form")
    source = onnx.ModelProto()
    source.CopyFrom(proto)  # the quantizer may rewrite its input in place
    drop = _DropQuantizerAdvice()
    logging.getLogger().addFilter(drop)
    try:
        with tempfile.TemporaryDirectory(prefix="rnnx-int8-") as tmp:
            path = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                source,
                path,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=targets,
                per_channel=PER_CHANNEL,
                weight_type=QuantType.QInt8,
            )
            quantized = onnx.load(str(path))
    finally:
        logging.getLogger().removeFilter(drop)

    found = int8_weight_count(quantized)
    if found != len(targets):
        raise ExportCheckError(
            f"int8 quantization converted {found} of {len(targets)} recurrent weights; nothing was written"
        )
    # The quantizer renames the producer and adds metadata of its own; the file must carry exactly rnnx's.
    quantized.producer_name = "rnnx"
    del quantized.metadata_props[:]
    helper.set_model_props(quantized, info.to_metadata())
    return quantized

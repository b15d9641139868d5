"""Build the single-step ONNX graph straight from a trained model's weights.

No tracing exporter is involved: the graph is written op by op with onnx.helper, in one of two forms:
"matmul" (see matmul_graph: MatMul cells, embedding folded in; what rnn-export writes) or "op", ONNX's
own RNN / GRU / LSTM ops, drawn below. That pins exactly what is exported (GRU needs `linear_before_reset=1`
to match torch, and the gate order differs between torch and ONNX); the parity check in `verify` proves it.

    tokens [B] --Gather(embedding)--> [1, B, E] --layer 1--> ... --layer L--> [B, H] --Gemm--> logits [B, V]
    h [L, B, H] --Split--> h_l [1, B, H] for each layer; each layer's final state is Concat'ed into h_next
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnx.export.matmul_graph import add_prompt_path, build_matmul_body
from rnnx.runtime import contract
from rnnx.runtime.errors import UsageError
from rnnx.runtime.tokenizer import Tokenizer
from rnnx.trainer.model import RNNLM

# torch packs gates as LSTM (i, f, g, o) and GRU (r, z, n); ONNX wants LSTM (i, o, f, c) and GRU (z, r, h).
_GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
_ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}

# "op": ONNX's RNN/LSTM/GRU ops; "matmul": MatMul cells with the embedding folded in (see matmul_graph).
# export_model writes DEFAULT_FORM, the faster one on the CPU (docs/benchmarks.md); build_step_graph keeps
# "op" as its own default so callers that inspect the ONNX RNN nodes keep working.
FORMS = ("op", "matmul")
DEFAULT_FORM = "matmul"


def _reorder_gates(weight: np.ndarray, cell: str) -> np.ndarray:
    chunks = np.split(weight, len(_GATE_ORDER[cell]), axis=0)
    return np.concatenate([chunks[i] for i in _GATE_ORDER[cell]], axis=0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _ints(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _op_body(
    cell: str, layers: int, hidden: int, params: dict[str, np.ndarray], embed_table: np.ndarray
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes and initializers in ONNX-op form: one RNN / LSTM / GRU node per layer."""
    inits = [
        _initializer("embedding", embed_table),
        _initializer("head.weight", params["head.weight"]),
        _initializer("head.bias", params["head.bias"]),
        _ints("axes0", [0]),
        _ints("axes1", [1]),
        _ints("axes01", [0, 1]),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", contract.TOKENS], ["x_embed"], axis=0),  # (B, E)
        helper.make_node("Unsqueeze", ["x_embed", "axes0"], ["x_0"]),  # (1, B, E)
    ]
    state_in = contract.state_inputs(cell)
    if layers > 1:
        inits.append(_ints("split_layers", [1] * layers))
        for name in state_in:
            nodes.append(
                helper.make_node("Split", [name, "split_layers"], [f"{name}_{k}" for k in range(layers)], axis=0)
            )
    layer_state = {name: [name] if layers == 1 else [f"{name}_{k}" for k in range(layers)] for name in state_in}

    x = "x_0"
    for k in range(layers):
        w = _reorder_gates(params[f"rnn.weight_ih_l{k}"], cell)[None]  # (1, G*H, in)
        r = _reorder_gates(params[f"rnn.weight_hh_l{k}"], cell)[None]  # (1, G*H, H)
        b = np.concatenate(
            [_reorder_gates(params[f"rnn.bias_ih_l{k}"], cell), _reorder_gates(params[f"rnn.bias_hh_l{k}"], cell)]
        )[None]  # (1, 2*G*H)
        inits += [_initializer(f"W_{k}", w), _initializer(f"R_{k}", r), _initializer(f"B_{k}", b)]
        inputs = [x, f"W_{k}", f"R_{k}", f"B_{k}", "", layer_state[contract.H][k]]
        outputs = [f"y_{k}", f"{contract.H_NEXT}_{k}"]
        if cell == "lstm":
            inputs.append(layer_state[contract.C][k])
            outputs.append(f"{contract.C_NEXT}_{k}")
        attrs = {"hidden_size": hidden}
        if cell == "gru":
            attrs["linear_before_reset"] = 1  # torch applies the reset gate after the hidden matmul
        nodes.append(helper.make_node(_ONNX_OP[cell], inputs, outputs, name=f"{cell}_{k}", **attrs))
        nodes.append(helper.make_node("Squeeze", [f"y_{k}", "axes1"], [f"x_{k + 1}"]))  # (1, B, H)
        x = f"x_{k + 1}"

    nodes.append(helper.make_node("Squeeze", [f"y_{layers - 1}", "axes01"], ["h_top"]))  # (B, H)
    nodes.append(helper.make_node("Gemm", ["h_top", "head.weight", "head.bias"], [contract.LOGITS], transB=1))
    for name_out in contract.state_outputs(cell):
        parts = [f"{name_out}_{k}" for k in range(layers)]
        nodes.append(helper.make_node("Concat", parts, [name_out], axis=0))

    return nodes, inits


def build_step_graph(model: RNNLM, tokenizer: Tokenizer, opset: int, form: str = "op") -> onnx.ModelProto:
    """The step graph for `model` in `form`, with the contract's names and the metadata to run it alone."""
    contract.check_opset(opset)
    if form not in FORMS:
        raise UsageError(f"unknown graph form {form!r}: choose one of {', '.join(FORMS)}")
    cfg = model.config
    cell, layers, hidden = cfg.cell, cfg.layers, cfg.hidden
    params = {name: _np(t) for name, t in model.state_dict().items()}
    embed_table = params["embedding.weight"] if cfg.embed else np.eye(cfg.vocab_size, dtype=np.float32)
    body = _op_body if form == "op" else build_matmul_body
    nodes, inits = body(cell, layers, hidden, params, embed_table)
    state_in = contract.state_inputs(cell)

    batch, state_shape = contract.BATCH_AXIS, [layers, contract.BATCH_AXIS, hidden]
    graph = helper.make_graph(
        nodes,
        f"rnnx_{cell}_step",
        inputs=[helper.make_tensor_value_info(contract.TOKENS, TensorProto.INT64, [batch])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape) for n in state_in],
        outputs=[helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, [batch, cfg.vocab_size])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape) for n in contract.state_outputs(cell)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="rnnx",
        ir_version=helper.find_min_ir_version_for(opsets),
        doc_string=f"rnnx single-step {cell.upper()} language model; see metadata_props for how to run it",
    )
    info = contract.ModelInfo(
        cell=cell, layers=layers, hidden=hidden, vocab_size=cfg.vocab_size, tokenizer=tokenizer.to_dict()
    )
    helper.set_model_props(proto, info.to_metadata())
    return proto


def build_model_graph(model: RNNLM, tokenizer: Tokenizer, opset: int, form: str = DEFAULT_FORM) -> onnx.ModelProto:
    """What rnn-export writes: the step graph, plus the prompt path in the matmul form (see contract)."""
    proto = build_step_graph(model, tokenizer, opset, form)
    if form == "matmul":
        proto = add_prompt_path(proto, model.config.cell, model.config.layers)
    return proto

"""The step graph in MatMul form: each cell written out as MatMul + gate arithmetic, the embedding folded in.

    tokens [B] --Gather(table_0)--> gates_0 [B, G*H]        (table_0 = embedding · W_ih_0ᵀ + biases: [V, G*H])
    gates_0 += h_0 · W_hh_0ᵀ            -> cell arithmetic -> h_next_0 [B, H]
    layer k > 0: gates_k = [x, h_k] · [W_ih_k | W_hh_k]ᵀ + b_k  (one MatMul; GRU keeps the two apart)
    logits = h_top · head.weightᵀ + head.bias

Two reasons to have it beside the ONNX-op form in `graph`: a batch-1 step reads fewer weight bytes (the
[V, G*H] table replaces the [G*H, E] input weights plus the embedding), and onnxruntime's dynamic int8
quantization only rewrites MatMul (and LSTM), so GRU and vanilla RNN need this form to get int8 weights.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from rnnx.runtime import contract

# Gate rows as torch packs them: LSTM (i, f, g, o), GRU (r, z, n). LSTM is reordered to (i, f, o, g) so one
# Sigmoid covers the first three gates and one Tanh the last.
_LSTM_IFOG = [0, 1, 3, 2]
HEAD_MATMUL = "head_mm"  # the output layer's MatMul node (int8 export keeps it fp32)


class _Builder:
    """Collects nodes and initializers for one graph."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | str, **attrs: object) -> list[str]:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        # named after its first output, so quantization can pick nodes by name
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs

    def split(self, x: str, sizes: list[int], names: list[str]) -> list[str]:
        sizes_name = self.const(f"{names[0]}_split", np.asarray(sizes, np.int64))
        return self.op("Split", [x, sizes_name], names, axis=1)


def _reorder(weight: np.ndarray, order: list[int]) -> np.ndarray:
    chunks = np.split(weight, len(order), axis=0)
    return np.concatenate([chunks[i] for i in order], axis=0)


def _layer_gates(
    b: _Builder, k: int, x: str | None, h: str, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray
) -> str:
    """gates [B, G*H] = x·W_ihᵀ + h·W_hhᵀ + bias; layer 0 (x None) reads x·W_ihᵀ + bias from the folded table."""
    if x is None:
        (from_h,) = b.op("MatMul", [h, b.const(f"W_hh_{k}", w_hh.T)], f"gh_{k}")
        return b.op("Add", ["x_gates", from_h], f"gates_{k}")[0]
    (xh,) = b.op("Concat", [x, h], f"xh_{k}", axis=1)  # (B, in + H)
    (mm,) = b.op("MatMul", [xh, b.const(f"W_{k}", np.concatenate([w_ih, w_hh], axis=1).T)], f"mm_{k}")
    return b.op("Add", [mm, b.const(f"B_{k}", bias)], f"gates_{k}")[0]


def _rnn_layer(b: _Builder, k: int, x: str | None, h: str, p: dict[str, np.ndarray]) -> str:
    bias = p[f"rnn.bias_ih_l{k}"] + p[f"rnn.bias_hh_l{k}"]
    gates = _layer_gates(b, k, x, h, p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"], bias)
    return b.op("Tanh", [gates], f"h_new_{k}")[0]


def _lstm_layer(
    b: _Builder, k: int, x: str | None, h: str, c: str, p: dict[str, np.ndarray], hidden: int
) -> tuple[str, str]:
    w_ih, w_hh = (_reorder(p[f"rnn.weight_{n}_l{k}"], _LSTM_IFOG) for n in ("ih", "hh"))
    bias = _reorder(p[f"rnn.bias_ih_l{k}"] + p[f"rnn.bias_hh_l{k}"], _LSTM_IFOG)
    gates = _layer_gates(b, k, x, h, w_ih, w_hh, bias)
    sig_in, tanh_in = b.split(gates, [3 * hidden, hidden], [f"sig_in_{k}", f"tanh_in_{k}"])
    (sig,) = b.op("Sigmoid", [sig_in], f"sig_{k}")
    i, f, o = b.split(sig, [hidden] * 3, [f"i_{k}", f"f_{k}", f"o_{k}"])
    (g,) = b.op("Tanh", [tanh_in], f"g_{k}")
    (fc,) = b.op("Mul", [f, c], f"fc_{k}")
    (ig,) = b.op("Mul", [i, g], f"ig_{k}")
    (c_new,) = b.op("Add", [fc, ig], f"c_new_{k}")
    (tc,) = b.op("Tanh", [c_new], f"tc_{k}")
    (h_new,) = b.op("Mul", [o, tc], f"h_new_{k}")
    return h_new, c_new


def _gru_layer(b: _Builder, k: int, x: str | None, h: str, p: dict[str, np.ndarray], hidden: int) -> str:
    # torch: r, z = σ(W_i x + b_i + W_h h + b_h); n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)); h' = n + z ⊙ (h - n)
    w_ih, w_hh = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
    b_ih, b_hh = p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]
    if x is None:
        gi = "x_gates"  # b_ih already folded into the table
    else:
        (mi,) = b.op("MatMul", [x, b.const(f"W_ih_{k}", w_ih.T)], f"mi_{k}")
        (gi,) = b.op("Add", [mi, b.const(f"B_ih_{k}", b_ih)], f"gi_{k}")
    (mh,) = b.op("MatMul", [h, b.const(f"W_hh_{k}", w_hh.T)], f"mh_{k}")
    (gh,) = b.op("Add", [mh, b.const(f"B_hh_{k}", b_hh)], f"gh_{k}")
    gi_rz, gi_n = b.split(gi, [2 * hidden, hidden], [f"gi_rz_{k}", f"gi_n_{k}"])
    gh_rz, gh_n = b.split(gh, [2 * hidden, hidden], [f"gh_rz_{k}", f"gh_n_{k}"])
    (rz_in,) = b.op("Add", [gi_rz, gh_rz], f"rz_in_{k}")
    (rz,) = b.op("Sigmoid", [rz_in], f"rz_{k}")
    r, z = b.split(rz, [hidden, hidden], [f"r_{k}", f"z_{k}"])
    (rn,) = b.op("Mul", [r, gh_n], f"rn_{k}")
    (n_in,) = b.op("Add", [gi_n, rn], f"n_in_{k}")
    (n,) = b.op("Tanh", [n_in], f"n_{k}")
    (hn,) = b.op("Sub", [h, n], f"hn_{k}")
    (zhn,) = b.op("Mul", [z, hn], f"zhn_{k}")
    return b.op("Add", [n, zhn], f"h_new_{k}")[0]


def _folded_table(cell: str, params: dict[str, np.ndarray], embed_table: np.ndarray) -> np.ndarray:
    """[V, G*H]: what layer 0 adds to its gates for each token, input weights and input-side biases included."""
    w_ih, bias = params["rnn.weight_ih_l0"], params["rnn.bias_ih_l0"]
    if cell == "lstm":
        w_ih = _reorder(w_ih, _LSTM_IFOG)
        bias = _reorder(bias + params["rnn.bias_hh_l0"], _LSTM_IFOG)
    elif cell == "rnn":
        bias = bias + params["rnn.bias_hh_l0"]
    # float64 for the fold itself, so the table is as exact as float32 allows
    return (embed_table.astype(np.float64) @ w_ih.T.astype(np.float64) + bias).astype(np.float32)


def build_matmul_body(
    cell: str, layers: int, hidden: int, params: dict[str, np.ndarray], embed_table: np.ndarray
) -> tuple[list[NodeProto], list[TensorProto]]:
    """Nodes and initializers computing the contract's outputs from its inputs, in MatMul form."""
    b = _Builder()
    b.op("Gather", [b.const("table_0", _folded_table(cell, params, embed_table)), contract.TOKENS], "x_gates", axis=0)
    state_in = contract.state_inputs(cell)
    axes0 = b.const("axes0", np.asarray([0], np.int64))
    per_layer: dict[str, list[str]] = {}
    for name in state_in:  # [L, B, H] -> L tensors of [B, H]
        parts = [f"{name}_{k}" for k in range(layers)]
        if layers == 1:
            b.op("Squeeze", [name, axes0], parts)
        else:
            split = b.const(f"{name}_layers", np.ones(layers, np.int64))
            b.op("Split", [name, split], [f"{p}_3d" for p in parts], axis=0)
            for part in parts:
                b.op("Squeeze", [f"{part}_3d", axes0], part)
        per_layer[name] = parts

    x: str | None = None
    new_h, new_c = [], []
    for k in range(layers):
        h = per_layer[contract.H][k]
        if cell == "lstm":
            x, c_new = _lstm_layer(b, k, x, h, per_layer[contract.C][k], params, hidden)
            new_c.append(c_new)
        elif cell == "gru":
            x = _gru_layer(b, k, x, h, params, hidden)
        else:
            x = _rnn_layer(b, k, x, h, params)
        new_h.append(x)

    (head,) = b.op("MatMul", [x, b.const("head.weight", params["head.weight"].T)], HEAD_MATMUL)
    b.op("Add", [head, b.const("head.bias", params["head.bias"])], contract.LOGITS)
    for out_name, parts in zip(contract.state_outputs(cell), (new_h, new_c)):
        if layers == 1:
            b.op("Unsqueeze", [parts[0], axes0], out_name)
        else:
            unsq = [b.op("Unsqueeze", [p, axes0], f"{p}_3d")[0] for p in parts]  # (1, B, H) each
            b.op("Concat", unsq, out_name, axis=0)
    return b.nodes, b.inits


# -- the prompt path ---------------------------------------------------------------------------------------------
#
#     prompt [B, T] --Gather(table_0)--> x_gates [B, T, G*H]
#     Scan over T (body: the step graph's layer nodes, carrying each layer's [B, H] state) -> final states
#     prompt_logits = top layer's final h · head.weightᵀ + head.bias;  prompt_h_next / prompt_c_next [L, B, H]
#
# The body is cut out of the finished step graph (fp32 or int8) and reads its weights from the outer graph by
# name, so the two paths share every weight and compute each step with the very same nodes.

PROMPT_SCOPE = "prompt/"


def _new_state_names(cell: str, layers: int) -> dict[str, list[str]]:
    """The per-layer [B, H] names the layer builders above give each layer's new state."""
    names = {contract.H: [f"h_new_{k}" for k in range(layers)]}
    if cell == "lstm":
        names[contract.C] = [f"c_new_{k}" for k in range(layers)]
    return names


def _nodes_between(nodes: list[NodeProto], sources: set[str], targets: list[str]) -> list[NodeProto]:
    """The nodes that compute `targets` from `sources` (and initializers), in graph order."""
    producer = {out: node for node in nodes for out in node.output}
    needed, stack = set(), list(targets)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in sources or node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    return [node for node in nodes if id(node) in needed]


def add_prompt_path(proto: ModelProto, cell: str, layers: int) -> ModelProto:
    """A copy of the MatMul-form step graph `proto` with the prompt path added beside the step path."""
    out = ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {t.name for t in graph.initializer}
    state_in = contract.state_inputs(cell)
    per_layer = {name: [f"{name}_{k}" for k in range(layers)] for name in state_in}  # as build_matmul_body splits
    new_state = _new_state_names(cell, layers)
    carried = [n for name in state_in for n in per_layer[name]]
    finals = [n for name in state_in for n in new_state[name]]
    body_nodes = _nodes_between(list(graph.node), {"x_gates", *carried}, finals)
    inner = {o for node in body_nodes for o in node.output} | {"x_gates", *carried}

    def scoped(name: str) -> str:
        return PROMPT_SCOPE + name if name in inner else name  # weights keep their outer names

    copies = []
    for node in body_nodes:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = PROMPT_SCOPE + node.name
        copy.input[:] = [scoped(i) for i in node.input]
        copy.output[:] = [scoped(o) for o in node.output]
        copies.append(copy)
    hidden = next(d.dim_value for d in graph.input[1].type.tensor_type.shape.dim[2:])
    gate_width = next(t for t in graph.initializer if t.name == "table_0").dims[1]
    row = [contract.BATCH_AXIS, hidden]
    body = helper.make_graph(
        copies,
        "rnnx_prompt_step",
        inputs=[helper.make_tensor_value_info(scoped(n), TensorProto.FLOAT, row) for n in carried]
        + [helper.make_tensor_value_info(scoped("x_gates"), TensorProto.FLOAT, [contract.BATCH_AXIS, gate_width])],
        outputs=[helper.make_tensor_value_info(scoped(n), TensorProto.FLOAT, row) for n in finals],
    )
    b = _Builder()
    b.op("Gather", ["table_0", contract.PROMPT], "prompt_x_gates", axis=0)  # (B, T, G*H)
    ends = [f"prompt_{n}" for n in finals]
    b.op("Scan", [*carried, "prompt_x_gates"], ends, num_scan_inputs=1, scan_input_axes=[1], body=body)
    head = next(n for n in graph.node if n.name == HEAD_MATMUL)
    head_add = next(n for n in graph.node if contract.LOGITS in n.output)
    top = ends[len(new_state[contract.H]) - 1]
    b.op(head.op_type, [top, head.input[1]], "prompt_head_mm")
    b.op(head_add.op_type, ["prompt_head_mm", head_add.input[1]], contract.PROMPT_LOGITS)
    axes0 = "axes0" if "axes0" in inits else b.const("prompt_axes0", np.asarray([0], np.int64))
    outputs = dict(zip(state_in, contract.prompt_state_outputs(cell)))
    for name in state_in:
        parts = [f"prompt_{n}" for n in new_state[name]]
        if layers == 1:
            b.op("Unsqueeze", [parts[0], axes0], outputs[name])
        else:
            unsq = [b.op("Unsqueeze", [p, axes0], f"{p}_3d")[0] for p in parts]
            b.op("Concat", unsq, outputs[name], axis=0)
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    vocab = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    state_shape = [layers, contract.BATCH_AXIS, hidden]
    graph.input.append(
        helper.make_tensor_value_info(contract.PROMPT, TensorProto.INT64, [contract.BATCH_AXIS, contract.LENGTH_AXIS])
    )
    graph.output.append(
        helper.make_tensor_value_info(contract.PROMPT_LOGITS, TensorProto.FLOAT, [contract.BATCH_AXIS, vocab])
    )
    for name in contract.prompt_state_outputs(cell):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape))
    return out

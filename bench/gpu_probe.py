"""The campaign's probe step: can the token choice inside the graph, K steps per graph call, meet issue 14's
targets (LSTM 1024 at batch 1 with sampling ≤ 50 µs per token; ≥ 1 M tokens/s at batch 64)?

    python bench/gpu_campaign.py probe --out DIR [--seconds 0.5] [--smoke]

The H200 run spent ~37 µs per batch-1 step in the CUDA-graph call and ~45 µs more around it (token ids up,
logits down, host sampling). Here the LSTM 1024 step graph (MatMul form, random weights, as bench/latency.py
makes it) is unrolled K times (K = 1, 4, 8; no Loop or Scan: onnxruntime's CUDA graphs cannot capture control
flow), every copy reading the same initializers, each followed by the token choice in ONNX ops:

    greedy:   next = ArgMax(logits + mask)                              (mask: -inf at <unk>, 0 elsewhere)
    sampled:  the k-th largest of TopK(logits + mask) cuts the rest to -inf (ties kept), w = exp((· - max) / T),
              cum = CumSum(w), next = the count of cum <= u × cum[-1] (u from an input `uniform` [K, B])

The sampled choice is runtime/sampling.py's (`_sample`: top-k cut, weights, inverse CDF over the vocabulary
in id order), so the graph picks what the host picks for the same u, up to float32 against float64 sums.
Outputs: tokens_out [K, B], next_token [B] (the last row, bound to the next call's token input on the device),
logits (the last step's, left on the device) and the final state.

Timed with IOBinding as runtime/cuda.py runs a stream (two state buffers and two token buffers, one binding
and one CUDA graph per direction), per call and per token, batch 1 and 64: the plain step (graph call alone;
with logits down and the host's greedy or sampled choice, as the runtime does it today), and the unrolled
graphs with tokens_out down each call (sampled: the host's uniforms up too; greedy also with the logits down).
Correctness, on every provider here: each unrolled graph's tokens against the plain step graph plus the
host's choice (teacher-forced: the reference reads the graph's tokens, so every step is compared on its own).
Without CUDA, `--smoke` runs all of it on the CPU provider (a rehearsal: its figures say nothing of a GPU).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from gpu_common import OK, SKIPPED_NO_CUDA, cuda_state, write_result
from gpu_latency import latency_module

K_STEPS = (1, 4, 8)
BATCHES = (1, 64)
TEMPERATURE, TOP_K = 0.8, 40  # as the latency step's sampled row
CHECK_STEPS, CHECK_BATCH = 200, 4  # tokens per row compared against the host reference
TARGET_BATCH1_US, TARGET_BATCH64_TOKENS_S = 50.0, 1e6  # issue 14
NOT_CUDA = "skipped: no CUDA"


@dataclass(frozen=True)
class Variant:
    choice: str  # "plain" (the exported step, choice on the host), "greedy" or "sampled" (in the graph)
    k: int  # steps per graph call

    @property
    def name(self) -> str:
        return "plain step" if self.choice == "plain" else f"{self.choice} in graph"


@dataclass(frozen=True)
class Row:
    device: str
    batch: int
    variant: str
    k: int
    micros: float | None  # per graph call
    note: str = ""

    @property
    def per_token(self) -> float | None:
        return None if self.micros is None else self.micros / self.k


@dataclass(frozen=True)
class Check:
    device: str
    variant: str
    k: int
    compared: int
    mismatches: int
    first: int | None  # the step of the first mismatch
    note: str = ""


VARIANTS = (Variant("plain", 1), *(Variant(c, k) for c in ("greedy", "sampled") for k in K_STEPS))
# what is timed per variant: (label, what one call does besides the graph run)
TIMINGS = {
    "plain": (
        ("graph call only", "ids up"),
        ("host greedy", "ids up, logits down, argmax"),
        ("host sampled", "ids up, logits down, runtime Sampler"),
    ),
    "greedy": (("tokens down", "tokens_out down"), ("tokens + logits down", "tokens_out and logits down")),
    "sampled": (("tokens down", "uniforms drawn and up, tokens_out down"),),
}


# ---------------------------------------------------------------------------------------------- the graphs


def step_graph(cfg: Any, text: str, seed: int = 0) -> Any:
    """The MatMul-form step graph of a fresh RNNLM (random weights, seed `seed`), as `rnn-export` writes its
    step path; (proto, vocab size)."""
    import torch

    from rnnx.export.graph import build_step_graph
    from rnnx.runtime.contract import DEFAULT_OPSET
    from rnnx.runtime.tokenizer import CharTokenizer
    from rnnx.trainer.model import RNNLM

    tokenizer = CharTokenizer.build(text)
    torch.manual_seed(seed)
    model = RNNLM(replace(cfg, vocab_size=len(tokenizer.vocab))).eval()
    return build_step_graph(model, tokenizer, DEFAULT_OPSET, "matmul"), len(tokenizer.vocab)


def unrolled(step: Any, cell: str, variant: Variant, vocab: int) -> Any:
    """`step` unrolled `variant.k` times with the token choice after each copy (module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from rnnx.export.matmul_graph import _Builder
    from rnnx.runtime import contract
    from rnnx.runtime.tokenizer import UNK_ID

    g = step.graph
    inits = {t.name for t in g.initializer}
    state_in, state_out = contract.state_inputs(cell), contract.state_outputs(cell)
    b = _Builder()
    mask = np.zeros(vocab, np.float32)
    mask[UNK_ID] = -np.inf
    b.const("probe_unk_mask", mask)
    if variant.choice == "sampled":
        sampled_constants(b, vocab, check_top_k(vocab))
    for i in range(variant.k):

        def renamed(name: str, i: int = i) -> str:
            if name in inits or name == "":
                return name
            if name == contract.TOKENS:
                return contract.TOKENS if i == 0 else f"s{i - 1}/next"
            if name in state_in:
                return name if i == 0 else f"s{i - 1}/{state_out[state_in.index(name)]}"
            return f"s{i}/{name}"

        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"s{i}/{node.name}"
            copy.input[:] = [renamed(n) for n in node.input]
            copy.output[:] = [renamed(n) for n in node.output]
            b.nodes.append(copy)
        (masked,) = b.op("Add", [f"s{i}/{contract.LOGITS}", "probe_unk_mask"], f"s{i}/masked")
        if variant.choice == "greedy":
            b.op("ArgMax", [masked], f"s{i}/next", axis=1, keepdims=0)
        else:
            sampled_choice(b, i, masked)
    last = variant.k - 1
    b.op("Identity", [f"s{last}/{contract.LOGITS}"], contract.LOGITS)
    for name in state_out:
        b.op("Identity", [f"s{last}/{name}"], name)
    b.op("Identity", [f"s{last}/next"], "next_token")
    rows = [b.op("Unsqueeze", [f"s{i}/next", "probe_axes0"], f"s{i}/next_row")[0] for i in range(variant.k)]
    b.op("Concat", rows, "tokens_out", axis=0)
    b.const("probe_axes0", np.asarray([0], np.int64))
    inputs = list(g.input)
    if variant.choice == "sampled":
        inputs.append(helper.make_tensor_value_info("uniform", TensorProto.FLOAT, [variant.k, contract.BATCH_AXIS]))
    outputs = [
        helper.make_tensor_value_info("tokens_out", TensorProto.INT64, [variant.k, contract.BATCH_AXIS]),
        helper.make_tensor_value_info("next_token", TensorProto.INT64, [contract.BATCH_AXIS]),
        *g.output,
    ]
    graph = helper.make_graph(b.nodes, f"probe_{variant.choice}_{variant.k}", inputs, outputs, [*g.initializer])
    graph.initializer.extend(b.inits)
    proto = helper.make_model(graph, opset_imports=step.opset_import, ir_version=step.ir_version)
    onnx.checker.check_model(proto)
    return proto


def sampled_constants(b: Any, vocab: int, top_k: int) -> None:
    b.const("probe_k", np.asarray([top_k], np.int64))
    b.const("probe_0", np.asarray([0], np.int64))
    b.const("probe_1", np.asarray([1], np.int64))
    b.const("probe_kth", np.asarray([top_k - 1], np.int64))
    b.const("probe_k_end", np.asarray([top_k], np.int64))
    b.const("probe_last", np.asarray([vocab - 1], np.int64))
    b.const("probe_vocab", np.asarray([vocab], np.int64))
    scalar(b, "probe_axis1", np.int64(1))  # CumSum's axis
    scalar(b, "probe_vocab_f", np.float32(vocab))
    scalar(b, "probe_ninf", np.float32(-np.inf))
    scalar(b, "probe_inv_t", np.float32(1.0 / TEMPERATURE))  # as the host: float32(1 / T)
    # u × total must stay below the total, so that some cum exceeds it: 1 - 2**-22 is two float32 ulps below
    scalar(b, "probe_below_one", np.float32(1.0 - 2.0**-22))


def scalar(b: Any, name: str, value: np.generic) -> str:
    """A 0-d initializer (`_Builder.const` makes arrays of at least one dimension)."""
    from onnx import numpy_helper

    b.inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def sampled_choice(b: Any, i: int, masked: str) -> None:
    """`_sample_block` of runtime/sampling.py for top-k and temperature, in ONNX ops (the module docstring)."""
    from onnx import TensorProto

    s = f"s{i}/"
    values, _ = b.op("TopK", [masked, "probe_k"], [s + "top_values", s + "top_ids"], axis=1)  # (B, k), sorted
    (top,) = b.op("Slice", [values, "probe_0", "probe_1", "probe_1"], s + "top")  # (B, 1): the largest
    (kth,) = b.op("Slice", [values, "probe_kth", "probe_k_end", "probe_1"], s + "kth")  # (B, 1)
    (below,) = b.op("Less", [masked, kth], s + "below_kth")
    (cut,) = b.op("Where", [below, "probe_ninf", masked], s + "cut")  # ties with the k-th stay
    (shifted,) = b.op("Sub", [cut, top], s + "shifted")
    (scaled,) = b.op("Mul", [shifted, "probe_inv_t"], s + "scaled")
    (w,) = b.op("Exp", [scaled], s + "weights")  # (B, V): the largest 1, cut tokens 0
    (cum,) = b.op("CumSum", [w, "probe_axis1"], s + "cum")
    (total,) = b.op("Slice", [cum, "probe_last", "probe_vocab", "probe_1"], s + "total")  # (B, 1)
    index = scalar(b, f"probe_step_{i}", np.int64(i))
    (u,) = b.op("Gather", ["uniform", index], s + "u", axis=0)  # (B,)
    (u_col,) = b.op("Unsqueeze", [u, "probe_1"], s + "u_col")  # (B, 1)
    (scaled_u,) = b.op("Mul", [u_col, total], s + "u_total")
    (ceiling,) = b.op("Mul", [total, "probe_below_one"], s + "ceiling")
    (target,) = b.op("Min", [scaled_u, ceiling], s + "target")
    # the host's count of cum <= target, as V - the count past it: no ArgMax over ties (which of several equal
    # maxima a GPU reduction returns is not promised)
    (past,) = b.op("Greater", [cum, target], s + "past")
    (hit,) = b.op("Cast", [past], s + "hit", to=TensorProto.FLOAT)
    (beyond,) = b.op("ReduceSum", [hit, "probe_1"], s + "beyond", keepdims=0)  # (B,)
    (index,) = b.op("Sub", ["probe_vocab_f", beyond], s + "index")
    b.op("Cast", [index], s + "next", to=TensorProto.INT64)


# ------------------------------------------------------------------------------------- sessions and bindings


def open_session(proto: Any, device: str, cuda_graph: bool) -> Any:
    import onnxruntime as ort

    from rnnx.runtime.session import cuda_provider_options, session_options

    providers: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(cuda_graph)))
    session = ort.InferenceSession(proto.SerializeToString(), session_options(0, True), providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"asked for CUDA, got {session.get_providers()}")
    return session


def zeros_on(device: str, shape: tuple[int, ...], dtype: type) -> Any:
    import onnxruntime as ort

    value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)
    value.update_inplace(np.zeros(shape, dtype))
    return value


class Bound:
    """One session's buffers at one batch size on `device`, bound both ways as runtime/cuda.py's CudaSteps:
    direction d reads tokens[d] and states[d] and writes states[1 - d] (and, in the graph variants,
    next_token into tokens[1 - d]), so that a call's tokens feed the next call without leaving the device."""

    def __init__(
        self,
        session: Any,
        variant: Variant,
        shapes: tuple[int, int, int],
        batch: int,
        device: str,
        graph_ids: tuple[int, int] | None,
    ) -> None:
        import onnxruntime as ort

        layers, hidden, vocab = shapes
        names = [i.name for i in session.get_inputs()]
        state_in = [n for n in names if n not in ("tokens", "uniform")]
        state_out = [o.name for o in session.get_outputs() if o.name.endswith("_next")]
        self.session, self.variant, self.current = session, variant, 0
        self.tokens = [zeros_on(device, (batch,), np.int64) for _ in range(2)]
        self.states = [[zeros_on(device, (layers, batch, hidden), np.float32) for _ in state_in] for _ in range(2)]
        self.logits = zeros_on(device, (batch, vocab), np.float32)
        in_graph = variant.choice != "plain"
        self.tokens_out = zeros_on(device, (variant.k, batch), np.int64) if in_graph else None
        self.uniform = zeros_on(device, (variant.k, batch), np.float32) if "uniform" in names else None
        self.bindings, self.options = [], []
        for d in (0, 1):
            binding = session.io_binding()
            binding.bind_ortvalue_input("tokens", self.tokens[d])
            for name, value in zip(state_in, self.states[d]):
                binding.bind_ortvalue_input(name, value)
            if self.uniform is not None:
                binding.bind_ortvalue_input("uniform", self.uniform)
            binding.bind_ortvalue_output("logits", self.logits)
            for name, value in zip(state_out, self.states[1 - d]):
                binding.bind_ortvalue_output(name, value)
            if in_graph:
                binding.bind_ortvalue_output("tokens_out", self.tokens_out)
                binding.bind_ortvalue_output("next_token", self.tokens[1 - d])
            options = ort.RunOptions()
            if graph_ids is not None:
                options.add_run_config_entry("gpu_graph_id", str(graph_ids[d]))
            self.bindings.append(binding)
            self.options.append(options)

    def load(self, tokens: np.ndarray, state: list[np.ndarray]) -> None:
        self.tokens[self.current].update_inplace(np.ascontiguousarray(tokens, np.int64))
        for buffer, value in zip(self.states[self.current], state):
            buffer.update_inplace(np.ascontiguousarray(value, np.float32))

    def run(self) -> None:
        d = self.current
        self.session.run_with_iobinding(self.bindings[d], self.options[d])
        self.current = 1 - d


# ----------------------------------------------------------------------------------------------------- timing


def one_call(bound: Bound, label: str, vocab: int, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one call of the loop `label` times, what waits for the device at the end)."""
    from rnnx.runtime import SamplingConfig
    from rnnx.runtime.sampling import Sampler

    ids = np.arange(batch, dtype=np.int64) % (vocab - 1) + 1  # never <unk>
    tokens = bound.tokens
    sync = bound.logits.numpy
    if label == "graph call only":

        def call() -> None:
            tokens[bound.current].update_inplace(ids)
            bound.run()

        return call, sync
    if bound.variant.choice == "plain":
        config = SamplingConfig(temperature=TEMPERATURE, top_k=TOP_K, rng_seed=1) if "sampled" in label else None
        sampler = Sampler(config or SamplingConfig(), batch, vocab)
        chosen = [ids]

        def call() -> None:
            tokens[bound.current].update_inplace(chosen[0])
            bound.run()
            chosen[0] = sampler.choose(bound.logits.numpy())  # the runtime's choice, greedy inlined

        return call, sync
    rng = np.random.default_rng(1)
    logits_too = "logits" in label

    def call() -> None:
        if bound.uniform is not None:
            bound.uniform.update_inplace(rng.random((bound.variant.k, batch), np.float32))
        bound.run()
        bound.tokens_out.numpy()
        if logits_too:
            bound.logits.numpy()

    return call, sync


def micros_per_call(call: Callable[[], None], sync: Callable[[], None], seconds: float) -> float:
    """Mean µs per call over about `seconds` (at least 3 calls), after 6 warm-up calls (3 per direction: a CUDA
    graph is captured on its first runs)."""
    for _ in range(6):
        call()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    sync()
    return (time.perf_counter() - start) * 1e6 / calls


# ------------------------------------------------------------------------------------------------ correctness


def host_choice(logits: np.ndarray, variant: Variant, u: np.ndarray) -> np.ndarray:
    """The runtime's own choice for `logits` [B, V]: greedy argmax, or `_sample` with the uniforms `u` [B]."""
    from rnnx.runtime import SamplingConfig
    from rnnx.runtime.sampling import _sample
    from rnnx.runtime.tokenizer import UNK_ID

    logits = logits.copy()
    logits[:, UNK_ID] = -np.inf
    if variant.choice == "greedy":
        return logits.argmax(axis=1)
    config = SamplingConfig(temperature=TEMPERATURE, top_k=check_top_k(logits.shape[1]))
    return _sample(config, logits, u.astype(np.float64), np.arange(len(logits)))


def check_top_k(vocab: int) -> int:
    """TOP_K, or less for a tiny test vocabulary (the host cuts only below the vocabulary's size)."""
    return min(TOP_K, vocab - 1)


def check(
    bound: Bound, reference: Any, variant: Variant, batch: int, steps: int, seed: int = 3
) -> tuple[int, int, int | None]:  # noqa: E501
    """(tokens compared, mismatches, first mismatching step): the unrolled graph through `bound` (its tokens fed
    back on the device) against `reference`, the plain step session, plus the host's choice. The reference
    reads the graph's tokens, so a mismatch at one step does not carry into the next."""
    rng = np.random.default_rng(seed)
    names = [i.name for i in reference.get_inputs()][1:]
    layers, _, hidden = reference.get_inputs()[1].shape
    state = [rng.standard_normal((layers, batch, hidden)).astype(np.float32) * 0.5 for _ in names]
    vocab = reference.get_outputs()[0].shape[1]
    tokens = rng.integers(1, vocab, batch).astype(np.int64)  # not <unk>
    bound.load(tokens, state)
    compared = mismatches = 0
    first = None
    for call in range(steps // variant.k):
        u = rng.random((variant.k, batch), np.float32)
        if bound.uniform is not None:
            bound.uniform.update_inplace(u)
        bound.run()
        got = bound.tokens_out.numpy().copy()  # on the CPU provider numpy() is a view of the buffer
        for k in range(variant.k):
            logits, *state = reference.run(None, {"tokens": tokens, **dict(zip(names, state))})
            want = host_choice(logits, variant, u[k])
            wrong = int((want != got[k]).sum())
            if wrong and first is None:
                first = call * variant.k + k
            compared, mismatches = compared + batch, mismatches + wrong
            tokens = got[k]
    return compared, mismatches, first


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class Found:
    rows: list[Row]
    checks: list[Check]
    errors: list[str]


def one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= 240 else text[:237] + "..."


def probe_device(
    device: str,
    label: str,
    step: Any,
    cell: str,
    shapes: tuple[int, int, int],
    seconds: float,
    deadline: float,
    found: Found,
    save: Callable[[], None],
) -> None:
    """Every variant's timings and checks on `device` ("cuda" with CUDA graphs, or "cpu"), into `found`."""
    vocab = shapes[2]
    try:
        reference = open_session(step, device, cuda_graph=False)
    except Exception as exc:
        found.errors.append(f"{label}: the plain step session failed: {one_line(exc)}")
        return
    for variant in VARIANTS:
        timings = TIMINGS[variant.choice]
        try:
            proto = step if variant.choice == "plain" else unrolled(step, cell, variant, vocab)
            session, graphs, fallback = open_with_fallback(proto, device)
        except Exception as exc:  # one variant's failure is a finding; the others go on
            note = f"build/load failed: {one_line(exc)}"
            found.rows += [
                Row(label, b, f"{variant.name}, {t}", variant.k, None, note) for b in BATCHES for t, _ in timings
            ]
            found.errors.append(f"{label} {variant.name} K={variant.k}: {note}")
            continue
        if fallback:
            found.errors.append(f"{label} {variant.name} K={variant.k}: {fallback}")
        next_id = 1
        for batch in BATCHES:
            for what, _ in timings:
                name = f"{variant.name}, {what}" + (" (no CUDA graph)" if fallback else "")
                if time.monotonic() > deadline:
                    found.rows.append(Row(label, batch, name, variant.k, None, "not reached (time)"))
                    continue
                try:
                    ids = (next_id, next_id + 1) if graphs else None
                    next_id += 2
                    bound = Bound(session, variant, shapes, batch, device, ids)
                    call, sync = one_call(bound, what, vocab, batch)
                    found.rows.append(Row(label, batch, name, variant.k, micros_per_call(call, sync, seconds)))
                except Exception as exc:
                    found.rows.append(Row(label, batch, name, variant.k, None, f"failed: {one_line(exc)}"))
                    found.errors.append(f"{label} {name} K={variant.k} batch {batch}: {one_line(exc)}")
            save()
        if variant.choice != "plain":
            try:
                ids = (next_id, next_id + 1) if graphs else None
                bound = Bound(session, variant, shapes, CHECK_BATCH, device, ids)
                compared, wrong, first = check(bound, reference, variant, CHECK_BATCH, CHECK_STEPS)
                found.checks.append(Check(label, variant.name, variant.k, compared, wrong, first))
            except Exception as exc:
                found.checks.append(Check(label, variant.name, variant.k, 0, 0, None, f"failed: {one_line(exc)}"))
                found.errors.append(f"{label} check {variant.name} K={variant.k}: {one_line(exc)}")
            save()


def open_with_fallback(proto: Any, device: str) -> tuple[Any, bool, str]:
    """(session, with CUDA graphs, why not): on CUDA a graph that CUDA graphs refuse (a node left to the CPU)
    is still timed with IOBinding alone, so that the device minutes bring some figure back."""
    if device != "cuda":
        return open_session(proto, device, cuda_graph=False), False, ""
    try:
        return open_session(proto, device, cuda_graph=True), True, ""
    except Exception as exc:
        why = f"CUDA graphs refused it ({one_line(exc)}); timed without them"
        return open_session(proto, device, cuda_graph=False), False, why


# --------------------------------------------------------------------------------------------------- reports


def rows_table(rows: list[Row]) -> str:
    lines = [
        "| device | batch | variant | K | µs/call | µs/token | tokens/s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.micros is None:
            lines.append(f"| {r.device} | {r.batch} | {r.variant} | {r.k} | | | | {r.note} |")
            continue
        speed = r.batch * r.k * 1e6 / r.micros
        lines.append(
            f"| {r.device} | {r.batch} | {r.variant} | {r.k} | {r.micros:.1f} | {r.per_token:.1f} | {speed:,.0f} | "
            f"{r.note} |"
        )
    return "\n".join(lines)


def checks_lines(checks: list[Check]) -> list[str]:
    lines = []
    for c in checks:
        where = "" if c.first is None else f", first at step {c.first}"
        text = c.note or f"{c.mismatches} mismatches in {c.compared} tokens{where}"
        lines.append(f"- {c.device}, {c.variant}, K={c.k}: {text}")
    return lines


def targets(rows: list[Row]) -> list[str]:
    cuda = [r for r in rows if r.device == "CUDA" and r.micros]
    sampled = [r for r in cuda if r.batch == 1 and "sampled" in r.variant]
    best1 = min(sampled, key=lambda r: r.per_token, default=None)
    wide = [r for r in cuda if r.batch == 64 and "graph call only" not in r.variant]
    best64 = max(wide, key=lambda r: 64 * r.k / r.micros, default=None)
    if best1 is None and best64 is None:
        return ["- targets: not measured (no CUDA rows)"]
    lines = []
    if best1:
        verdict = "met" if best1.per_token <= TARGET_BATCH1_US else "MISSED"
        lines.append(
            f"- batch 1 sampled ≤ {TARGET_BATCH1_US:.0f} µs/token: best {best1.per_token:.1f} "
            f"({best1.variant}, K={best1.k}) — {verdict}"
        )
    if best64:
        speed = 64 * best64.k * 1e6 / best64.micros
        verdict = "met" if speed >= TARGET_BATCH64_TOKENS_S else "MISSED"
        lines.append(
            f"- batch 64 ≥ 1 M tokens/s: best {speed / 1e6:.2f} M ({best64.variant}, K={best64.k}) — {verdict}"
        )
    return lines


def probe_step(args: argparse.Namespace) -> int:
    """The campaign's `probe` step (module docstring)."""
    out = args.out
    cuda = cuda_state(out)
    if not cuda.onnxruntime and not args.smoke:
        write_result(out, "probe", f"## Token choice in the graph (probe)\n\n{NOT_CUDA}", {}, "no CUDA: " + cuda.note)
        return SKIPPED_NO_CUDA
    latency = latency_module()
    start = time.monotonic()
    deadline = start + args.limit - 15  # room to write the results
    cfg = latency.MODELS["LSTM 1024"]
    step, vocab = step_graph(cfg, latency.VOCAB_TEXT)
    shapes = (cfg.layers, cfg.hidden, vocab)
    found = Found([], [], [])
    timed_rows = len(BATCHES) * sum(len(TIMINGS[v.choice]) for v in VARIANTS)
    per_row = min(args.seconds, 0.4 * args.limit / timed_rows)  # the rest: sessions, warm-ups, checks
    devices = [("cuda", "CUDA")] if cuda.onnxruntime else []

    def save(final: bool = False) -> None:
        md = ["## Token choice in the graph (probe: bench/gpu_probe.py)", ""]
        md += [f"LSTM 1024 (embedding 256, vocab {vocab}), random weights; {per_row:.2f} s per row.", ""]
        legend = "; ".join(
            f"*{Variant(choice, 1).name}, {what}*: {does}" for choice, pairs in TIMINGS.items() for what, does in pairs
        )
        md += [
            rows_table(found.rows),
            "",
            f"Per call besides the graph run: {legend}.",
            "",
            "Correctness (graph tokens against the plain step + the host's choice, "
            f"{CHECK_STEPS} steps × batch {CHECK_BATCH}, teacher-forced):",
            *checks_lines(found.checks),
            "",
        ]
        md += ["Targets (issue 14, CUDA rows only):", *targets(found.rows), ""]
        md += [f"- error: {e}" for e in found.errors]
        data = {
            "rows": [{**asdict(r), "per_token": r.per_token} for r in found.rows],
            "checks": [asdict(c) for c in found.checks],
            "errors": found.errors,
            "seconds_per_row": per_row,
            "final": final,
        }
        wrong = sum(c.mismatches for c in found.checks)
        measured = sum(r.micros is not None for r in found.rows)
        detail = f"{measured} rows, {len(found.errors)} errors; correctness: {wrong} mismatches in " + (
            f"{sum(c.compared for c in found.checks)} tokens"
        )
        best = targets(found.rows)
        write_result(out, "probe", "\n".join(md), data, f"{detail}; " + " ".join(b.lstrip("- ") for b in best))

    for device, label in devices:
        probe_device(device, label, step, cfg.cell, shapes, per_row, deadline, found, save)
    if not cuda.onnxruntime:  # the CPU rehearsal: the same code on the CPU provider, CUDA rows skipped
        found.rows += [
            Row("CUDA", b, f"{v.name}, {t}", v.k, None, NOT_CUDA)
            for v in VARIANTS
            for b in BATCHES
            for t, _ in TIMINGS[v.choice]
        ]
        probe_device("cpu", "CPU", step, cfg.cell, shapes, per_row, deadline, found, save)
    else:  # the CPU's correctness too: the same graphs on onnxruntime's reference provider
        probe_cpu_checks(step, cfg.cell, shapes, found, deadline)
    save(True)
    if found.errors or any(c.mismatches for c in found.checks):
        return 1
    return OK if cuda.onnxruntime else SKIPPED_NO_CUDA


def probe_cpu_checks(step: Any, cell: str, shapes: tuple[int, int, int], found: Found, deadline: float) -> None:
    try:
        reference = open_session(step, "cpu", cuda_graph=False)
    except Exception as exc:
        found.errors.append(f"CPU: the plain step session failed: {one_line(exc)}")
        return
    for variant in VARIANTS[1:]:
        if time.monotonic() > deadline:
            found.checks.append(Check("CPU", variant.name, variant.k, 0, 0, None, "not reached (time)"))
            continue
        try:
            session = open_session(unrolled(step, cell, variant, shapes[2]), "cpu", cuda_graph=False)
            bound = Bound(session, variant, shapes, CHECK_BATCH, "cpu", None)
            compared, wrong, first = check(bound, reference, variant, CHECK_BATCH, CHECK_STEPS)
            found.checks.append(Check("CPU", variant.name, variant.k, compared, wrong, first))
        except Exception as exc:
            found.checks.append(Check("CPU", variant.name, variant.k, 0, 0, None, f"failed: {one_line(exc)}"))
            found.errors.append(f"CPU check {variant.name} K={variant.k}: {one_line(exc)}")

"""Prove an exported step graph computes what the torch model computes, before anything is written."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rnnx.runtime import contract
from rnnx.runtime.errors import ExportCheckError, ModelFileError
from rnnx.runtime.onnxfile import extract
from rnnx.runtime.tokenizer import UNK_ID
from rnnx.trainer.model import RNNLM

STEPS = 128
BATCHES = (1, 3)
PROMPT_CHUNKS = (1, 7, 56, 64)  # prompt lengths fed one after another, state carried: 128 tokens in all
TOLERANCE = 1e-4  # max |logit difference| between torch and onnxruntime
# int8 cannot meet TOLERANCE; it must instead stay within this much extra loss (nats/token) of fp32
KL_LIMIT = 0.02


def verify_step_graph(
    proto: onnx.ModelProto, model: RNNLM, steps: int = STEPS, batches: tuple[int, ...] = BATCHES
) -> float:
    """Run torch and onnxruntime side by side for `steps` greedy steps per batch size.

    Both are fed the tokens torch picks; the logits must agree within TOLERANCE and onnxruntime's greedy
    picks must equal torch's. Returns the largest difference seen; raises ExportCheckError otherwise.
    """
    check_graph(proto)
    cell, vocab = model.config.cell, model.config.vocab_size
    session = path_session(proto, contract.step_outputs(cell))
    outputs = [contract.LOGITS, *contract.state_outputs(cell)]
    worst = 0.0
    model = model.eval()
    for batch in batches:
        tokens = torch.arange(1, batch + 1) % vocab  # distinct start tokens per row
        torch_state = model.init_state(batch)
        ort_state = [s.numpy() for s in torch_state]
        for step in range(steps):
            with torch.no_grad():
                logits, torch_state = model(tokens[:, None], torch_state)  # (B, 1, V)
            expected = logits[:, 0].numpy()
            feeds = {contract.TOKENS: tokens.numpy(), **dict(zip(contract.state_inputs(cell), ort_state))}
            got, *ort_state = session.run(outputs, feeds)
            diff = float(np.max(np.abs(got - expected)))
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                raise ExportCheckError(
                    f"onnxruntime and torch disagree at step {step} (batch {batch}): max |Δlogit| {diff:.2e} "
                    f"> {TOLERANCE:.0e}; nothing was written"
                )
            expected[:, UNK_ID] = -np.inf
            got[:, UNK_ID] = -np.inf
            picks = expected.argmax(axis=1)
            if not np.array_equal(picks, got.argmax(axis=1)):
                raise ExportCheckError(f"greedy tokens differ at step {step} (batch {batch}); nothing was written")
            tokens = torch.from_numpy(picks).long()
    return worst


def check_graph(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"the exported graph fails onnx.checker: {exc}") from None


def path_session(proto: onnx.ModelProto, outputs: tuple[str, ...]) -> ort.InferenceSession:
    """A CPU session over the part of `proto` that computes `outputs` (one path, as the runtime opens it)."""
    try:
        data = extract(proto.SerializeToString(), outputs, "the exported graph")
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except (ModelFileError, Exception) as exc:  # onnxruntime's own exception types
        raise ExportCheckError(f"onnxruntime cannot load the exported graph: {exc}") from None


Reference = Callable[[np.ndarray, tuple], tuple[np.ndarray, tuple]]  # (tokens [B, T], state) -> (logits, state)


def verify_prompt_path(proto: onnx.ModelProto, reference: Reference, cell: str, vocab: int) -> float:
    """Feed prompts of the lengths in PROMPT_CHUNKS one after another (state carried), batch 1 and 3, and
    compare the prompt path's logits and state after each with `reference`, which reads the same tokens
    another way (torch for fp32; the file's own step path for int8). Returns the largest difference; raises
    ExportCheckError past TOLERANCE."""
    session = path_session(proto, contract.prompt_outputs(cell))
    h = next(i for i in session.get_inputs() if i.name == contract.H)
    layers, hidden = h.shape[0], h.shape[2]
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch in BATCHES:
        state = tuple(np.zeros((layers, batch, hidden), np.float32) for _ in contract.state_inputs(cell))
        for length in PROMPT_CHUNKS:
            tokens = rng.integers(1, vocab, (batch, length), dtype=np.int64)
            want_logits, want_state = reference(tokens, state)
            feeds = {contract.PROMPT: tokens, **dict(zip(contract.state_inputs(cell), state))}
            got_logits, *got_state = session.run(list(contract.prompt_outputs(cell)), feeds)
            diffs = [np.max(np.abs(got_logits - want_logits))]
            diffs += [np.max(np.abs(g - w)) for g, w in zip(got_state, want_state)]
            diff = float(max(diffs))
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                raise ExportCheckError(
                    f"the prompt path disagrees after a prompt of {length} tokens (batch {batch}): max |Δ| "
                    f"{diff:.2e} > {TOLERANCE:.0e}; nothing was written"
                )
            state = tuple(got_state)
    return worst


def torch_reference(model: RNNLM) -> Reference:
    """`reference` for verify_prompt_path: torch reads the tokens."""
    model = model.eval()

    def run(tokens: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
        torch_state = tuple(torch.from_numpy(s) for s in state)
        with torch.no_grad():
            logits, torch_state = model(torch.from_numpy(tokens), torch_state)  # (B, T, V)
        return logits[:, -1].numpy(), tuple(s.numpy().copy() for s in torch_state)

    return run


def steps_reference(proto: onnx.ModelProto, cell: str) -> Reference:
    """`reference` for verify_prompt_path: the file's own step path, one token at a time."""
    session = path_session(proto, contract.step_outputs(cell))

    def run(tokens: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
        for t in range(tokens.shape[1]):
            feeds = {contract.TOKENS: tokens[:, t].copy(), **dict(zip(contract.state_inputs(cell), state))}
            logits, *state = session.run(list(contract.step_outputs(cell)), feeds)
        return logits, tuple(state)

    return run


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def int8_divergence(
    int8: onnx.ModelProto, fp32: onnx.ModelProto, cell: str, steps: int = STEPS, batch: int = 3, seed: int = 0
) -> float:
    """Mean KL(fp32 ‖ int8) in nats per token, over sequences the fp32 graph samples itself.

    Both graphs read the same tokens, drawn from the fp32 model's distribution (never the unknown token).
    KL(p ‖ q) is exactly how much more loss q pays than p on text distributed as p, so this is the int8
    model's extra nats/token on text its fp32 twin finds typical. Raises ExportCheckError above KL_LIMIT.
    """
    try:
        onnx.checker.check_model(int8, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"the quantized graph fails onnx.checker: {exc}") from None
    sessions = [path_session(proto, contract.step_outputs(cell)) for proto in (fp32, int8)]
    rng = np.random.default_rng(seed)
    outputs = [contract.LOGITS, *contract.state_outputs(cell)]
    inputs = [i for i in sessions[0].get_inputs() if i.name != contract.TOKENS]
    layers, hidden = inputs[0].shape[0], inputs[0].shape[2]
    states = [[np.zeros((layers, batch, hidden), np.float32) for _ in inputs] for _ in sessions]
    tokens = np.arange(1, batch + 1, dtype=np.int64)
    total = 0.0
    for _ in range(steps):
        logps = []
        for k, session in enumerate(sessions):
            feeds = {contract.TOKENS: tokens, **dict(zip(contract.state_inputs(cell), states[k]))}
            logits, *states[k] = session.run(outputs, feeds)
            logps.append(_log_softmax(np.delete(logits, UNK_ID, axis=1)))  # (B, V-1): never the unknown token
        p_log, q_log = logps
        total += float(np.sum(np.exp(p_log) * (p_log - q_log)))
        picks = (p_log + rng.gumbel(size=p_log.shape)).argmax(axis=1)  # Gumbel-max: a sample from p
        tokens = (picks + (picks >= UNK_ID)).astype(np.int64)  # back to vocabulary ids
    kl = total / (steps * batch)
    if not kl <= KL_LIMIT:
        raise ExportCheckError(
            f"the int8 graph drifts from fp32 by {kl:.4f} nats/token (KL), more than {KL_LIMIT}; nothing was written"
        )
    return kl

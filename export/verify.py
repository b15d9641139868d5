"""Prove an exported step graph computes what the torch model computes, before anything is written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rnnx.runtime import contract
from rnnx.runtime.errors import ExportCheckError
from rnnx.runtime.tokenizer import UNK_ID
from rnnx.trainer.model import RNNLM

STEPS = 128
BATCHES = (1, 3)
TOLERANCE = 1e-4  # max |logit difference| between torch and onnxruntime


def verify_step_graph(
    proto: onnx.ModelProto, model: RNNLM, steps: int = STEPS, batches: tuple[int, ...] = BATCHES
) -> float:
    """Run torch and onnxruntime side by side for `steps` greedy steps per batch size.

    Both are fed the tokens torch picks; the logits must agree within TOLERANCE and onnxruntime's greedy
    picks must equal torch's. Returns the largest difference seen; raises ExportCheckError otherwise.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"the exported graph fails onnx.checker: {exc}") from None
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ExportCheckError(f"onnxruntime cannot load the exported graph: {exc}") from None

    cell, vocab = model.config.cell, model.config.vocab_size
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

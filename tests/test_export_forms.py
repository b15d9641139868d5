"""The MatMul-form step graph (embedding folded into layer 1) computes what torch computes, like the op form."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rnnx.export.graph import FORMS, build_step_graph
from rnnx.export.verify import verify_step_graph
from rnnx.runtime import contract
from rnnx.runtime.errors import ExportCheckError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_model(cell: str, layers: int, embed: int = 8, hidden: int = 16) -> tuple[RNNLM, CharTokenizer]:
    torch.manual_seed(1234)
    tokenizer = CharTokenizer.build(TEXT)
    config = ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=embed, hidden=hidden, layers=layers)
    model = RNNLM(config)
    with torch.no_grad():  # larger weights than the default init, so that a wrong gate or bias would show
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval(), tokenizer


@pytest.mark.parametrize("embed", [8, 0])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_matmul_form_matches_torch(cell: str, layers: int, embed: int) -> None:
    """128 greedy steps at batch 1 and 3 within 1e-4 (verify_step_graph raises otherwise)."""
    model, tokenizer = random_model(cell, layers, embed)
    assert verify_step_graph(build_step_graph(model, tokenizer, 17, "matmul"), model) <= 1e-4


@pytest.mark.parametrize("opset", [contract.OPSET_MIN, contract.OPSET_MAX])
def test_matmul_form_at_the_opset_edges(opset: int) -> None:
    model, tokenizer = random_model("lstm", 2)
    assert verify_step_graph(build_step_graph(model, tokenizer, opset, "matmul"), model) <= 1e-4


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_both_forms_share_the_contract(cell: str) -> None:
    """Same input/output names, types and metadata, whichever form: the runtime cannot tell them apart."""
    model, tokenizer = random_model(cell, 2)
    signatures, metadata = [], []
    for form in FORMS:
        proto = build_step_graph(model, tokenizer, 17, form)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        signatures.append(
            (
                [(i.name, i.type, i.shape) for i in session.get_inputs()],
                [(o.name, o.type, o.shape) for o in session.get_outputs()],
            )
        )
        metadata.append({p.key: p.value for p in proto.metadata_props})
    assert signatures[0] == signatures[1]
    assert metadata[0] == metadata[1]
    assert metadata[0][contract.META_WEIGHTS] == "fp32"
    names_in = [name for name, _, _ in signatures[0][0]]
    assert names_in == [contract.TOKENS, *contract.state_inputs(cell)]


def test_a_wrong_gate_order_in_the_matmul_form_is_caught() -> None:
    """Swap the LSTM's input and forget gates in the recurrent weights: the verifier must notice."""
    model, tokenizer = random_model("lstm", 1)
    proto = build_step_graph(model, tokenizer, 17, "matmul")
    for init in proto.graph.initializer:
        if init.name == "W_hh_0":
            w = np.frombuffer(init.raw_data, np.float32).reshape(init.dims).copy()  # (H, 4H), gates i f o g
            hidden = w.shape[0]
            w[:, : 2 * hidden] = np.concatenate([w[:, hidden : 2 * hidden], w[:, :hidden]], axis=1)
            init.raw_data = w.tobytes()
    with pytest.raises(ExportCheckError, match="disagree"):
        verify_step_graph(proto, model)


def test_unknown_form_is_a_usage_error() -> None:
    model, tokenizer = random_model("rnn", 1)
    with pytest.raises(UsageError, match="matmul"):
        build_step_graph(model, tokenizer, 17, "scan")

"""torch and onnxruntime agree, step by step, for every cell, depth and batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnx.export.graph import build_step_graph
from rnnx.export.verify import verify_step_graph
from rnnx.runtime import Model
from rnnx.runtime.errors import ExportCheckError
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

STEPS = 150
TEXT = "the quick brown fox jumps over the lazy dog"


def random_model(cell: str, layers: int, embed: int = 8) -> tuple[RNNLM, CharTokenizer]:
    torch.manual_seed(1234)
    tokenizer = CharTokenizer.build(TEXT)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=embed, hidden=16, layers=layers))
    with torch.no_grad():  # larger weights than the default init, so that errors would show
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval(), tokenizer


def write_graph(model: RNNLM, tokenizer: CharTokenizer, path: Path, opset: int = 17) -> Path:
    path.write_bytes(build_step_graph(model, tokenizer, opset).SerializeToString())
    return path


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_runtime_matches_torch_over_many_steps(tmp_path: Path, cell: str, layers: int, batch: int) -> None:
    model, tokenizer = random_model(cell, layers)
    runtime = Model(write_graph(model, tokenizer, tmp_path / "m.onnx"), provider="cpu")
    rng = np.random.default_rng(0)
    torch_state = model.init_state(batch)
    ort_state = runtime.initial_state(batch)
    tokens = rng.integers(1, len(tokenizer.vocab), size=batch)
    for step in range(STEPS):
        with torch.no_grad():
            expected, torch_state = model(torch.from_numpy(tokens)[:, None], torch_state)
        got, ort_state = runtime.step(tokens.astype(np.int64), ort_state)
        np.testing.assert_allclose(got, expected[:, 0].numpy(), atol=1e-4, rtol=0, err_msg=f"step {step}")
        for mine, theirs in zip(ort_state, torch_state, strict=True):
            np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-4, rtol=0)
        assert np.array_equal(got[:, 1:].argmax(1), expected[:, 0, 1:].numpy().argmax(1))
        # half the steps follow the greedy path, half jump to random tokens, to cover more of the state space
        tokens = got[:, 1:].argmax(1) + 1 if step % 2 else rng.integers(1, len(tokenizer.vocab), size=batch)


def test_one_hot_input_matches_torch(tmp_path: Path) -> None:
    model, _ = random_model("rnn", 1, embed=0)
    assert verify_step_graph(build_step_graph(model, CharTokenizer.build(TEXT), 17), model) <= 1e-4


@pytest.mark.parametrize("opset", [14, 17, 23])
def test_every_supported_opset_edge_verifies(opset: int) -> None:
    model, tokenizer = random_model("gru", 2)
    assert verify_step_graph(build_step_graph(model, tokenizer, opset), model) <= 1e-4


def test_gru_without_linear_before_reset_is_caught() -> None:
    """The classic GRU export bug: the verifier must notice it."""
    model, tokenizer = random_model("gru", 1)
    proto = build_step_graph(model, tokenizer, 17)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "linear_before_reset":
                attr.i = 0
    with pytest.raises(ExportCheckError, match="disagree"):
        verify_step_graph(proto, model)

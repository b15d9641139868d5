"""`rnn-export --quantize int8`: one self-describing file, int8 recurrent weights, output that still makes sense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn
from typer.testing import CliRunner

from rnnx.cli import export as export_cli
from rnnx.export import export_model
from rnnx.export import quantize as quantize_module
from rnnx.runtime import Model, contract
from rnnx.runtime.errors import ExportCheckError, ModelFileError
from rnnx.runtime.onnxfile import read_model_bytes
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

LINES = ("hey how are you", "good i am fine", "have a nice day")
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit_lines(cell: str, layers: int, out: Path) -> Path:
    """A small model that has learned the three lines by heart (a few seconds), saved as a model directory."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("".join(LINES))
    width = max(len(line) for line in LINES)
    data = torch.tensor([tokenizer.encode(line.ljust(width)) for line in LINES])  # (3, L)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=16, hidden=64, layers=layers))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        logits, _ = model(data[:, :-1], model.init_state(len(LINES)))  # (3, L-1, V)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(out, model.eval(), tokenizer, {})
    return out


def greedy(model: Model, prompt: str, new_tokens: int) -> str:
    ids = model.tokenizer.encode(prompt)
    state = model.initial_state(1)
    for token in ids:
        logits, state = model.step(np.array([token], np.int64), state)
    for _ in range(new_tokens):
        logits[0, 0] = -np.inf  # never the unknown token
        ids.append(int(logits[0].argmax()))
        logits, state = model.step(np.array([ids[-1]], np.int64), state)
    return model.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def lines_lstm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_lines("lstm", 1, tmp_path_factory.mktemp("lstm") / "model")


@pytest.mark.parametrize(("cell", "layers", "int8_matrices"), [("rnn", 1, 1), ("lstm", 2, 2), ("gru", 2, 3)])
def test_int8_export_is_one_file_with_int8_weights(tmp_path: Path, cell: str, layers: int, int8_matrices: int) -> None:
    model_dir = fit_lines(cell, layers, tmp_path / "model")
    result = export_model(model_dir, tmp_path / "int8.onnx", quantize="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "model"]  # no external data beside it
    read_model_bytes(result.path)  # the runtime's own refusal of external data passes
    proto = onnx.load(str(result.path))
    # recurrent weights: one per layer for RNN/LSTM (x and h share one MatMul above layer 1), W_hh + W_ih for GRU
    int8 = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) == int8_matrices == result.int8_tensors
    # the folded embedding table and the output layer stay fp32
    fp32 = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert {"table_0", "head.weight"} <= fp32
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(meta) == contract.META_KEYS | {contract.META_WEIGHTS}
    assert meta[contract.META_WEIGHTS] == "int8"
    assert result.weights == "int8" and 0 <= result.int8_kl <= 0.02
    assert Model(result.path, provider="cpu").info.weights == "int8"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_int8_greedy_text_equals_fp32(tmp_path: Path, cell: str) -> None:
    model_dir = fit_lines(cell, 1, tmp_path / "model")
    texts = {}
    for weights in ("fp32", "int8"):
        path = export_model(model_dir, tmp_path / f"{weights}.onnx", quantize=weights).path
        texts[weights] = greedy(Model(path, provider="cpu"), "good", 10)
    assert texts["fp32"] == "good i am fine"
    assert texts["int8"] == texts["fp32"]


def test_cli_int8_export(lines_lstm: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = runner.invoke(export_cli.app, [str(lines_lstm), "--quantize", "int8", "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "int8" in result.stdout and "KL" in result.stdout
    assert Model(out, provider="cpu").info.weights == "int8"


def test_drifting_int8_graph_writes_nothing(lines_lstm: Path, tmp_path: Path, monkeypatch) -> None:
    """Spoil the quantized weights' scale: the KL check refuses, and the old file stays as it was."""
    real = quantize_module.quantize_int8

    def spoiled(proto, info):
        quantized = real(proto, info)
        for init in quantized.graph.initializer:
            if init.name.endswith("_scale") and init.data_type == TensorProto.FLOAT:
                scale = np.frombuffer(init.raw_data, np.float32) if init.raw_data else np.array(init.float_data)
                init.ClearField("float_data")
                init.raw_data = (scale * 4).astype(np.float32).tobytes()
        return quantized

    out = tmp_path / "m.onnx"
    old = export_model(lines_lstm, out).path.read_bytes()  # a good export already there
    monkeypatch.setattr("rnnx.export.quantize_int8", spoiled)
    with pytest.raises(ExportCheckError, match="int8 graph drifts"):
        export_model(lines_lstm, out, quantize="int8")
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_files_without_a_weights_key_read_as_fp32() -> None:
    info = contract.ModelInfo(cell="rnn", layers=1, hidden=4, vocab_size=3, tokenizer={"kind": "char"})
    meta = info.to_metadata()
    del meta[contract.META_WEIGHTS]  # as files exported before the key existed
    assert contract.ModelInfo.from_metadata(meta, "old.onnx").weights == "fp32"


def test_unknown_weight_format_is_refused() -> None:
    info = contract.ModelInfo(cell="rnn", layers=1, hidden=4, vocab_size=3, tokenizer={"kind": "char"})
    meta = {**info.to_metadata(), contract.META_WEIGHTS: "int4"}
    with pytest.raises(ModelFileError, match="int4"):
        contract.ModelInfo.from_metadata(meta, "new.onnx")

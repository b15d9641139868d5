"""rnn-export's bad input: one `error:` line, exit 2 for usage, and no file written or overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnx.cli import export as export_cli
from rnnx.export import export_model
from rnnx.export import graph as graph_module
from rnnx.runtime.errors import ExportCheckError, UsageError
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build("a small text")
    model = RNNLM(ModelConfig(cell="gru", vocab_size=len(tokenizer.vocab), embed=8, hidden=16, layers=2))
    save_model(tmp_path / "model", model.eval(), tokenizer, {})
    return tmp_path / "model"


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_clean_usage_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("opset", ["13", "24"])
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_opset_out_of_range(model_dir: Path, opset: str, quantize: str) -> None:
    before = files(model_dir.parent)
    result = runner.invoke(export_cli.app, [str(model_dir), "--opset", opset, "--quantize", quantize])
    assert_clean_usage_error(result, f"opset {opset}", "14", "23")
    assert files(model_dir.parent) == before


def test_output_that_is_a_directory(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    result = runner.invoke(export_cli.app, [str(model_dir), "--output", str(target)])
    assert_clean_usage_error(result, "is a directory")
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--quantize", "int4"], ["int4", "none", "int8"]),
        (["--form", "scan"], ["scan", "matmul", "op"]),
        (["--form", "op", "--quantize", "int8"], ["matmul"]),
    ],
)
def test_bad_choices(model_dir: Path, args: list[str], words: list[str]) -> None:
    before = files(model_dir.parent)
    result = runner.invoke(export_cli.app, [str(model_dir), *args])
    assert_clean_usage_error(result, *words)
    assert files(model_dir.parent) == before


@pytest.mark.parametrize("form", ["op", "matmul"])
def test_failed_verification_writes_nothing(model_dir: Path, tmp_path: Path, monkeypatch, form: str) -> None:
    """Corrupt one weight of the built graph: parity fails, and a file already at --output is left alone."""
    real = graph_module.build_step_graph

    def corrupted(*args, **kwargs):
        proto = real(*args, **kwargs)
        weight = next(t for t in proto.graph.initializer if t.name == "head.weight")
        data = bytearray(weight.raw_data)
        data[0:4] = bytes([0, 0, 0x80, 0x3F])  # the first weight becomes 1.0
        weight.raw_data = bytes(data)
        return proto

    out = tmp_path / "model.onnx"
    previous = export_model(model_dir, out, form=form).path.read_bytes()
    monkeypatch.setattr("rnnx.export.build_step_graph", corrupted)
    with pytest.raises(ExportCheckError, match="disagree"):
        export_model(model_dir, out, form=form)
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.onnx"]  # no temporary left behind


def test_library_rejects_opset_before_loading(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="opset 99"):
        export_model(tmp_path / "missing", opset=99)


def test_a_model_replaced_during_export_is_not_written(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer removes a replaced model's exports; an export of the old model must not land after that."""
    import rnnx.export as export_module
    from rnnx.trainer.checkpoint import WEIGHTS

    trained = model_dir
    real = export_module.verify_step_graph

    def save_meanwhile(proto, model):
        worst = real(proto, model)
        weights = trained / WEIGHTS
        weights.write_bytes(weights.read_bytes())  # a new file in its place, as a training run's save makes
        return worst

    monkeypatch.setattr(export_module, "verify_step_graph", save_meanwhile)
    with pytest.raises(ExportCheckError, match="changed while it was being exported"):
        export_module.export_model(trained, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors", "notes.txt"])
def test_output_never_replaces_a_file_that_is_not_an_export(model_dir: Path, name: str) -> None:
    """--output pointing at the weights, the checkpoint or any other file is refused; the file is kept."""
    target = model_dir / name
    if not target.exists():
        target.write_text("my notes")
    before = target.read_bytes()
    result = runner.invoke(export_cli.app, [str(model_dir), "--output", str(target)])
    assert_clean_usage_error(result, "not an rnnx .onnx file")
    assert target.read_bytes() == before


@pytest.mark.parametrize("output", ["newdir/", ""])
def test_output_that_is_not_a_file_path(model_dir: Path, tmp_path: Path, output: str) -> None:
    result = runner.invoke(export_cli.app, [str(model_dir), "--output", f"{tmp_path}/{output}" if output else ""])
    assert_clean_usage_error(result, "is not a file path")
    assert not (tmp_path / "newdir").exists()

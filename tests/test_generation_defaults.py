"""Default generation settings: a word model carries them from training through export to rnn-run, which uses
them unless told otherwise; a file's settings are checked like the rest of its metadata."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnx.cli import run as run_cli
from rnnx.runtime import contract
from rnnx.runtime.errors import ModelFileError
from rnnx.trainer.checkpoint import read_model_json
from rnnx.trainer.config import GENERATION
from rnnx.trainer.model import ModelConfig
from rnnx.trainer.train import TrainConfig, train

pytest.importorskip("onnx")

runner = CliRunner()
SENTENCES = ["The inspector opened the door.", "The old man kept his letters in a drawer.", "What happens now?"]
SEED = "the old man"


@pytest.fixture(scope="module")
def word_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rnnx.export import export_model

    root = tmp_path_factory.mktemp("words")
    rng = random.Random(0)
    (root / "text.txt").write_text(" ".join(rng.choice(SENTENCES) for _ in range(400)) + "\n", encoding="utf-8")
    config = TrainConfig(
        data=root / "text.txt", out=root / "run", tokenizer="word", steps=60, batch_size=8, seq_len=16, lr=0.01
    )
    train(ModelConfig(cell="lstm", embed=32, hidden=32), config, progress=False)
    assert read_model_json(root / "run")["generation"] == GENERATION["word"] == {"repetition_penalty": 1.3}
    return export_model(root / "run").path


def _run(path: Path, *flags: str) -> str:
    result = runner.invoke(run_cli.app, ["--model", str(path), "--seed", SEED, "--len", "40", *flags])
    assert result.exit_code == 0, result.output
    return result.output


def test_rnn_run_uses_the_files_settings_unless_told_otherwise(word_onnx: Path) -> None:
    from rnnx.runtime import Model

    assert Model(word_onnx, provider="cpu").info.generation == {"repetition_penalty": 1.3}
    default = _run(word_onnx)
    assert default == _run(word_onnx, "--repetition-penalty", "1.3")
    plain = _run(word_onnx, "--repetition-penalty", "1")
    assert plain != default  # the penalty changed the greedy text: the file's setting was used


def test_a_char_model_carries_no_settings(default_model_dir: Path, default_onnx: Path) -> None:
    from rnnx.runtime import Model

    assert "generation" not in read_model_json(default_model_dir)
    assert Model(default_onnx, provider="cpu").info.generation == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"repetition_penalty": 0.5}', "bad generation setting (repetition penalty must be 1 (off) or more"),
        ('{"stop": ["x"]}', "its generation settings are not temperature, top_k, top_p, repetition_penalty"),
        ("[1]", "its generation settings are not"),
        ('{"temperature": NaN}', "temperature must be 0 (greedy) or positive"),
        ('{"top_p": Infinity}', "top-p must be in (0, 1]"),
        ('{"top_k": "5"}', "top-k must be 0 (off) or positive"),
        ('{"top_k": ' + "9" * 4000 + "}", "its generation settings take 4,011 characters, more than rnnx ever writes"),
        (json.dumps({"x" * 1_000_000: 1}), "more than rnnx ever writes"),
        ("{", "has malformed rnnx metadata"),
    ],
)
def test_bad_settings_in_a_file_are_refused(default_onnx: Path, value: str, message: str) -> None:
    info = contract.ModelInfo.from_metadata(_metadata(default_onnx), str(default_onnx)).to_metadata()
    with pytest.raises(ModelFileError) as caught:
        contract.ModelInfo.from_metadata({**info, contract.META_GENERATION: value}, "model.onnx")
    assert message in str(caught.value)


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_settings_round_trip_through_the_metadata(default_onnx: Path) -> None:
    meta = {**_metadata(default_onnx), contract.META_GENERATION: json.dumps({"top_k": 5, "temperature": 0.7})}
    info = contract.ModelInfo.from_metadata(meta, "model.onnx")
    assert info.generation == {"top_k": 5, "temperature": 0.7}
    assert json.loads(info.to_metadata()[contract.META_GENERATION]) == info.generation


def test_a_crafted_file_is_one_error_line_from_rnn_run(default_onnx: Path, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(default_onnx))
    proto.metadata_props.add(key=contract.META_GENERATION, value='{"top_k": ' + "9" * 4000 + "}")
    onnx.save(proto, str(tmp_path / "crafted.onnx"))
    result = runner.invoke(run_cli.app, ["--model", str(tmp_path / "crafted.onnx"), "--seed", "a", "--len", "5"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "more than rnnx ever writes" in lines[0]


def test_export_refuses_settings_it_could_not_load_again() -> None:
    with pytest.raises(ModelFileError, match="too long to be numbers rnnx wrote"):
        contract.check_generation({"top_k": 10**3000}, "model.safetensors")

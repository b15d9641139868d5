"""Files from outside on the trainer side: model documents, checkpoints and data with wrong types, absurd sizes or
deep nesting end in one clear error (ModelFileError, or one `error:` line from the CLI), never a traceback."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rnnx.cli import export as export_cli
from rnnx.cli import train as train_cli
from rnnx.runtime.errors import ModelFileError
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer import limits
from rnnx.trainer.checkpoint import CONFIG, TRAIN_STATE, WEIGHTS, load_model, read_model_json, save_model
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.train import TrainConfig, resume, train

runner = CliRunner()
TOKENIZER = CharTokenizer(("<unk>", "a", "b", "c", "d"))


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def edit_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Change the rnnx JSON inside a safetensors file's header, as someone with a text editor and time might."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    document = json.loads(header["__metadata__"]["rnnx"])
    edit(document)
    header["__metadata__"]["rnnx"] = json.dumps(document)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def model_dir(tmp_path: Path) -> Path:
    save_model(tmp_path, RNNLM(ModelConfig(vocab_size=5, embed=4, hidden=6)), TOKENIZER, {"step": 1})
    return tmp_path


def legacy_dir(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A directory as rnnx wrote them before the document moved into the weights: model.json is read."""
    model = RNNLM(ModelConfig(vocab_size=5, embed=4, hidden=6))
    tmp_path.mkdir(exist_ok=True)
    save_file(dict(model.state_dict()), tmp_path / WEIGHTS)
    document = {"format": "rnnx-model", "format_version": 1, "model": model.config.__dict__}
    document["tokenizer"] = TOKENIZER.to_dict()
    edit(document)
    (tmp_path / CONFIG).write_text(json.dumps(document))
    return tmp_path


def _set_model(key: str, value: object) -> Callable[[dict], None]:
    return lambda document: document["model"].update({key: value})


BAD_DOCUMENTS = [  # each as the document of today's directories and as the model.json of older ones
    (_set_model("hidden", 1e7), "hidden must be a whole number, got 10000000.0"),
    (_set_model("hidden", 32.0), "hidden must be a whole number, got 32.0"),
    (_set_model("hidden", 10**7), "TiB of memory, more than the 8.0 GiB available"),
    (_set_model("layers", 100000), "layers must be from 1 to 64, got 100000"),
    (_set_model("cell", ["lstm"]), "unknown cell ['lstm']"),
    (_set_model("tie", "yes"), "tie must be true or false"),
    (lambda d: d.update(format_version="2"), "format_version must be a whole number, got '2'"),
    (lambda d: d.update(format_version=9), "written by a newer rnnx (format 9)"),
    (lambda d: d.update(model=[1, 2]), "has no valid model section"),
]


@pytest.fixture
def eight_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 8 * 2**30)


@pytest.mark.usefixtures("eight_gib")
@pytest.mark.parametrize(("edit", "message"), BAD_DOCUMENTS)
def test_bad_model_documents_are_refused(tmp_path: Path, edit: Callable[[dict], None], message: str) -> None:
    current = model_dir(tmp_path / "current")
    edit_header(current / WEIGHTS, edit)
    for directory in (current, legacy_dir(tmp_path / "legacy", edit)):
        with pytest.raises(ModelFileError) as caught:
            load_model(directory)
        assert message in str(caught.value)


def test_export_of_a_bad_model_is_one_error_line(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    edit_header(directory / WEIGHTS, lambda d: d.update(format_version="2"))
    result = runner.invoke(export_cli.app, [str(directory)])
    assert result.exit_code == 1 and "format_version must be a whole number" in result.stderr
    assert "Traceback" not in result.output


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    directory = legacy_dir(tmp_path, lambda d: None)
    (directory / CONFIG).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        read_model_json(directory)


def test_an_oversized_model_json_is_not_read(tmp_path: Path) -> None:
    directory = legacy_dir(tmp_path, lambda d: None)
    os.truncate(directory / CONFIG, 200_000_000)  # sparse: costs no disk
    with pytest.raises(ModelFileError, match="far more than any rnnx model.json"):
        read_model_json(directory)


def test_weights_that_do_not_match_the_document_are_refused_by_size(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    with (directory / WEIGHTS).open("ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(ModelFileError, match="wrong size"):
        load_model(directory)


# Checkpoints ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-step char run on text, checkpointed: the run each checkpoint test copies and damages."""
    root = tmp_path_factory.mktemp("run")
    data = root / "text.txt"
    data.write_text("the cat sat on the mat. a dog ran by. " * 300, encoding="utf-8")
    config = TrainConfig(data=data, out=root / "run", steps=20, batch_size=4, seq_len=16, eval_every=10)
    train(ModelConfig(cell="lstm", embed=8, hidden=16), config, progress=False)
    return root / "run"


def damaged(run_dir: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name in (TRAIN_STATE, WEIGHTS, CONFIG):
        (out / name).write_bytes((run_dir / name).read_bytes())
    edit_header(out / TRAIN_STATE, edit)
    return out


def _swap_two_tokens(meta: dict) -> None:
    vocab = meta["tokenizer"]["vocab"]
    vocab[1], vocab[2] = vocab[2], vocab[1]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["progress"].update(step="abc"), "progress step must be a whole number, got 'abc'"),
        (lambda m: m["progress"].update(best_val=float("nan")), "progress best_val must be a finite number"),
        (lambda m: m["progress"].update(index=10**6, step=10**6), "batch 1000000 of an epoch"),
        (lambda m: m["progress"].update(epoch=1e9), "progress epoch must be a whole number, got 1000000000.0"),
        (lambda m: m["progress"].update(epoch=10**9), "progress epoch 1000000000 is past step 20"),
        (lambda m: m["progress"].update(epoch=10**20), "progress epoch must be from 0 to 9007199254740992"),
        (lambda m: m["progress"].update(step=-1), "progress step must be from 0 to 9007199254740992, got -1"),
        (lambda m: m["progress"].update(step=21), "step 21 is not epoch 0 x"),
        (lambda m: m["progress"].update(tokens=10**15), "1000000000000000 tokens in 20 steps of 64"),
        (lambda m: m["progress"].update(elapsed=1e300), "progress elapsed must be from 0 to 1e+10 seconds"),
        (lambda m: m["progress"].update(best_val=-1.0), "progress best_val is a loss, 0 or more, got -1.0"),
        (lambda m: m["progress"].update(best_step=21), "progress best_step 21 is past step 20"),
        (lambda m: m["progress"].update(evals_since_best=10**9), "evals_since_best 1000000000 is more than step 20"),
        (lambda m: m["training"].update(lr="fast"), "lr must be a finite number"),
        (lambda m: m["model"].update(hidden=16.0), "hidden must be a whole number"),
        (lambda m: m["model"].update(hidden=10**7), "TiB of memory, more than the 8.0 GiB available: resume it on"),
        (lambda m: m["tokenizer"]["vocab"].append("Z"), "its vocabulary has"),
        (_swap_two_tokens, "is not the one the data gives"),
        (lambda m: m.update(progress=[]), "is corrupt"),
        (lambda m: m.update(world_size=2), "carry.0 of shape (1, 4, 16) for a global batch of 8 streams"),
        (lambda m: m.update(world_size=10**12), "for a global batch of 4000000000000 streams"),
    ],
)
@pytest.mark.usefixtures("eight_gib")
def test_bad_checkpoints_are_refused_on_resume(
    run_dir: Path, tmp_path: Path, edit: Callable[[dict], None], message: str
) -> None:
    out = damaged(run_dir, tmp_path, edit)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ModelFileError) as caught:
        resume(out, {"steps": 40}, progress=False)
    assert message in str(caught.value)
    result = runner.invoke(train_cli.app, ["--out", str(out), "--resume", "--steps", "40"])
    assert result.exit_code == 1 and message in one_error_line(result)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_checkpoint_with_non_finite_weights_is_refused(run_dir: Path, tmp_path: Path) -> None:
    out = damaged(run_dir, tmp_path, lambda m: None)
    raw = bytearray((out / TRAIN_STATE).read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    start = 8 + length + header["model.head.bias"]["data_offsets"][0]
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    (out / TRAIN_STATE).write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"not finite \(model.head.bias\)"):
        resume(out, {"steps": 40}, progress=False)


def _tensor_edit(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        key = next(k for k in sorted(tensors) if k.startswith(name))
        tensors[key] = make(tensors[key])
        save_file(tensors, str(path), metadata=metadata)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_tensor_edit("carry.0", lambda t: t.to(torch.int64)), "a carried state of torch.int64"),
        (_tensor_edit("optim.0.step", lambda t: torch.tensor(-5.0)), "one whole number 0 or more"),
        (_tensor_edit("optim.0.step", lambda t: torch.zeros(3)), "optimizer step of shape (3,)"),
        (_tensor_edit("optim.0.exp_avg", lambda t: torch.zeros(2)), "optimizer exp_avg of shape (2,)"),
    ],
)
def test_bad_checkpoint_tensors_are_one_error_line(
    run_dir: Path, tmp_path: Path, edit: Callable[[Path], None], message: str
) -> None:
    """Tensors of the wrong type or shape are refused before the run starts; they used to fail mid-step (a crafted
    carried state or AdamW step count ended in a 60-line traceback from the LSTM or the fused optimizer)."""
    out = damaged(run_dir, tmp_path, lambda m: None)
    edit(out / TRAIN_STATE)
    before = {name: (out / name).read_bytes() for name in (TRAIN_STATE, WEIGHTS, CONFIG)}
    result = runner.invoke(train_cli.app, ["--out", str(out), "--resume", "--steps", "40"])
    assert result.exit_code == 1 and message in one_error_line(result)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_half_precision_carried_state_is_read_as_float32(run_dir: Path, tmp_path: Path) -> None:
    out = damaged(run_dir, tmp_path, lambda m: None)
    _tensor_edit("carry.0", lambda t: t.half())(out / TRAIN_STATE)
    assert resume(out, {"steps": 22}, progress=False).steps == 22


def test_resume_keeps_the_metrics_before_a_damaged_line(run_dir: Path, tmp_path: Path) -> None:
    out = damaged(run_dir, tmp_path, lambda m: None)
    good = (run_dir / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([*good[:3], "[" * 100_000, '{"step": "abc"}', *good[3:]]) + "\n")
    resume(out, {"steps": 25}, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[:3] == good[:3] and [json.loads(line)["step"] for line in lines[3:]] == [25, 25]


# Data -------------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("eight_gib")
def test_a_huge_data_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    data = tmp_path / "huge.txt"
    with data.open("wb") as f:
        f.truncate(40 * 2**30)  # 40 GB, sparse: nothing on disk
    out = tmp_path / "out"
    result = runner.invoke(train_cli.app, ["--data", str(data), "--out", str(out)])
    line = one_error_line(result)
    assert result.exit_code == 1
    assert "holds 40,960.0 MB of text, more than the 256.0 MB limit" in line and "--max-data-mb" in line
    assert not out.exists()


def test_max_data_mb_sets_the_limit(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat. " * 50_000)  # 1.2 MB
    out = tmp_path / "out"
    result = runner.invoke(train_cli.app, ["--data", str(data), "--out", str(out), "--max-data-mb", "1"])
    assert result.exit_code == 1 and "more than the 1.0 MB limit" in one_error_line(result)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in "ab":
        (folder / f"{name}.txt").write_text("the dog ran by. " * 40_000)  # 0.64 MB each, 1.3 MB together
    result = runner.invoke(train_cli.app, ["--data", str(folder), "--out", str(out), "--max-data-mb", "1"])
    assert result.exit_code == 1 and "more than the 1.0 MB limit" in one_error_line(result)
    args = ["--data", str(data), "--out", str(out), "--max-data-mb", "2", "--steps", "2", "--batch-size", "4"]
    assert runner.invoke(train_cli.app, args).exit_code == 0

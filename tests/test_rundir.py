"""A model directory is one unit: weights and document commit together, a fresh run never lands on an existing one
unless asked, one run at a time holds a directory, killed runs' temporaries go, and empty paths are refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rnnx.cli.train import app
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer import checkpoint
from rnnx.trainer.checkpoint import CONFIG, TRAIN_STATE, WEIGHTS, load_model, read_model_json, save_model
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.rundir import claim, held_run

runner = CliRunner()
TOKENIZER = CharTokenizer(("<unk>", "a", "b", "c", "d"))


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def tiny(cell: str, hidden: int, seed: int) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(ModelConfig(cell=cell, vocab_size=5, embed=4, hidden=hidden)).eval()


def same_weights(a: RNNLM, b: RNNLM) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()
    )


def failing_write(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make checkpoint.write_atomic fail (disk full) when it writes `name`, as a crash there would."""
    real = checkpoint.write_atomic

    def write(path: Path, data: bytes) -> None:
        if path.name == name:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", write)


def test_a_failed_weights_write_leaves_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tiny("rnn", 6, 0), tiny("gru", 8, 1)
    save_model(tmp_path, old, TOKENIZER, {"step": 1})
    failing_write(monkeypatch, WEIGHTS)
    with pytest.raises(OSError):
        save_model(tmp_path, new, TOKENIZER, {"step": 2})
    model, _, document = load_model(tmp_path)
    assert model.config.cell == "rnn" and document["step"] == 1 and same_weights(model, old)
    assert read_model_json(tmp_path)["step"] == 1 and json.loads((tmp_path / CONFIG).read_text())["step"] == 1


def test_a_crash_between_the_two_renames_never_mixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tiny("rnn", 6, 0), tiny("gru", 8, 1)
    save_model(tmp_path, old, TOKENIZER, {"step": 1})
    failing_write(monkeypatch, CONFIG)  # model.safetensors (the commit) is written, its model.json copy is not
    with pytest.raises(OSError):
        save_model(tmp_path, new, TOKENIZER, {"step": 2})
    assert json.loads((tmp_path / CONFIG).read_text())["model"]["cell"] == "rnn"  # a stale copy...
    model, _, document = load_model(tmp_path)  # ...that no reader uses: weights and document are the new pair
    assert model.config.cell == "gru" and document["step"] == 2 and same_weights(model, new)
    assert read_model_json(tmp_path)["model"]["cell"] == "gru"
    monkeypatch.undo()
    save_model(tmp_path, new, TOKENIZER, {"step": 3})  # the next save brings the copy back in line
    assert json.loads((tmp_path / CONFIG).read_text()) == read_model_json(tmp_path)


def test_directories_written_before_still_load(tmp_path: Path) -> None:
    model = tiny("lstm", 6, 0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / WEIGHTS)  # no document inside
    document = {"format": "rnnx-model", "format_version": 1, "model": model.config.__dict__, "step": 7}
    (tmp_path / CONFIG).write_text(json.dumps({**document, "tokenizer": TOKENIZER.to_dict()}))
    loaded, tokenizer, document = load_model(tmp_path)
    assert same_weights(loaded, model) and tokenizer.vocab == TOKENIZER.vocab and document["step"] == 7


def test_saving_a_model_removes_the_exports_of_the_one_it_replaces(tmp_path: Path) -> None:
    save_model(tmp_path, tiny("rnn", 6, 0), TOKENIZER, {})
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07...rnnx.format_version\x12\x012...")  # as rnn-export writes
    (tmp_path / "model-int8.onnx").write_bytes(b"...rnnx.format_version...")
    (tmp_path / "foreign.onnx").write_bytes(b"another tool's graph")
    (tmp_path / "empty.onnx").write_bytes(b"")
    save_model(tmp_path, tiny("gru", 6, 1), TOKENIZER, {})
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["empty.onnx", "foreign.onnx"]


def test_a_fresh_run_refuses_a_directory_that_holds_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, ["--out", str(out), "--epochs", "3"]).exit_code == 0
    before = snapshot(out)
    result = runner.invoke(app, ["--out", str(out), "--epochs", "5", "--cell", "gru"])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"{out} already holds a run" in line and "--overwrite" in line and "--resume" in line
    assert snapshot(out) == before  # metrics.jsonl not truncated, nothing replaced


def test_overwrite_replaces_the_whole_run_exports_included(
    default_model_dir: Path, default_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(default_model_dir, out)
    shutil.copy(out / "model.onnx", out / "model-int8.onnx")
    (out / "notes.onnx").write_bytes(b"not written by rnn-export")
    result = runner.invoke(app, ["--out", str(out), "--cell", "gru", "--epochs", "3", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "model.onnx").exists() and not (out / "model-int8.onnx").exists()
    assert (out / "notes.onnx").read_bytes() == b"not written by rnn-export"
    assert load_model(out)[0].config.cell == "gru"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # the new run's records only


def test_resume_and_overwrite_exclude_each_other(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--out", str(tmp_path), "--resume", "--overwrite"])
    assert result.exit_code == 2 and "give one of them" in one_error_line(result)


def test_a_second_run_on_a_held_directory_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with claim(out):  # as a running rnn-train holds it
        result = runner.invoke(app, ["--out", str(out), "--epochs", "3"])
        resumed = runner.invoke(app, ["--out", str(out), "--resume"])
    line = one_error_line(result)
    assert result.exit_code == 1 and f"another rnn-train is writing to {out} (process {os.getpid()})" in line
    assert held_run(out) == []  # it wrote nothing
    assert resumed.exit_code == 1 and "no checkpoint" in one_error_line(resumed)
    assert runner.invoke(app, ["--out", str(out), "--epochs", "3"]).exit_code == 0  # free again afterwards


def test_temporaries_of_killed_runs_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / f".{TRAIN_STATE}.k1ll3d.tmp", out / f".{WEIGHTS}.x.tmp", out / ".metrics.jsonl.q.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    in_flight = out / ".model.onnx.r4nd0m.tmp"  # rnn-export's, which does not take the run lock
    in_flight.write_bytes(b"an export being written")
    result = runner.invoke(app, ["--out", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and in_flight.exists()


@pytest.mark.parametrize("flag", ["--out", "--data"])
def test_empty_paths_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("words the current directory holds " * 500)
    other = ["--out", "x"] if flag == "--data" else []
    result = runner.invoke(app, [flag, "", *other, "--epochs", "1"])
    assert result.exit_code == 2 and f"{flag} is empty" in one_error_line(result)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_run_that_saved_nothing_does_not_suggest_resume(tmp_path: Path) -> None:
    """A first run that diverged leaves only its metrics: the advice is --overwrite, never a --resume that fails."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    result = runner.invoke(app, ["--out", str(out), "--epochs", "3"])
    line = one_error_line(result)
    assert result.exit_code == 1 and "--overwrite" in line and "--resume" not in line

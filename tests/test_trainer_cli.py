"""rnn-train on text: outputs, word models through export and the runtime, and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from rnnx.cli.train import app
from rnnx.trainer.checkpoint import TRAIN_STATE, load_model
from rnnx.trainer.presets import PRESETS

runner = CliRunner()
SENTENCES = [
    "The inspector opened the door.",
    "What happens if we do this now?",
    'She said, "the clock stopped at two."',
    "The old man kept his letters in a drawer.",
]


def story(path: Path, sentences: int = 400) -> Path:
    rng = random.Random(0)
    path.write_text(" ".join(rng.choice(SENTENCES) for _ in range(sentences)) + "\n", encoding="utf-8")
    return path


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_char_text_run_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", str(story(tmp_path / "s.txt")), "--out", str(out), "--cell", "gru", "--hidden", "24"]
    result = runner.invoke(app, [*args, "--steps", "30", "--batch-size", "8", "--seq-len", "32", "--eval-every", "10"])
    assert result.exit_code == 0, result.output
    assert "best val" in result.output and "bits/char" in result.output and "tokens/s" in result.output
    assert {p.name for p in out.iterdir()} >= {"model.json", "model.safetensors", TRAIN_STATE, "metrics.jsonl"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "val"] == [10, 20, 30]
    assert all(r["val_bpc"] > 0 for r in records if r["event"] == "val")


def test_word_model_tied_weights_export_and_runtime(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from rnnx.export import export_model
    from rnnx.runtime import Model

    out = tmp_path / "words"
    args = ["--preset", "words-lstm", "--data", str(story(tmp_path / "s.txt")), "--out", str(out)]
    result = runner.invoke(app, [*args, "--steps", "60", "--hidden", "32", "--embed", "32", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output
    saved = load_file(out / "model.safetensors")
    assert set(saved) == {
        "embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
        "head.weight", "head.bias",
    }  # fmt: skip
    assert (saved["head.weight"] == saved["embedding.weight"]).all()  # tied, saved as two copies
    model, tokenizer, _ = load_model(out)
    assert model.head.weight is model.embedding.weight and tokenizer.kind == "word"
    export_model(out)
    runtime = Model(out / "model.onnx", provider="cpu")
    assert runtime.tokenizer.to_dict() == tokenizer.to_dict()
    assert runtime.new_tokens_for_length("What happens we do this", 15) == 10
    words = "".join(runtime.stream("What happens we do this", 10))
    assert len(tokenizer.split(words)) == 10 and words.startswith(" ")


def test_unknown_preset_lists_valid_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--preset", "shakespeare-rnn", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert all(name in one_error_line(result) for name in PRESETS)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (b"to be or not to be\n" * 5, [], "fewer than one batch"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", [], "binary"),
        (b"\xff\xfe garbage \xfa", [], "not UTF-8"),
        (None, ["--tokenizer", "word"], "vocabulary would explode"),
    ],
)
def test_bad_data_one_line_nothing_written(tmp_path: Path, content: bytes | None, extra: list, message: str) -> None:
    path = tmp_path / "data.txt"
    if content is None:  # random "words": every token new
        rng = random.Random(1)
        content = " ".join("".join(rng.choices("abcdefghij", k=9)) for _ in range(5000)).encode()
    path.write_bytes(content)
    out = tmp_path / "out"
    result = runner.invoke(app, ["--data", str(path), "--out", str(out), *extra])
    assert result.exit_code == 1
    assert message in one_error_line(result)
    assert not out.exists()


def test_resume_without_or_with_corrupt_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["--out", str(out), "--resume"])
    assert result.exit_code == 1 and "no checkpoint" in one_error_line(result)
    assert not out.exists()
    out.mkdir()
    (out / TRAIN_STATE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = runner.invoke(app, ["--out", str(out), "--resume"])
    assert result.exit_code == 1 and "corrupt" in one_error_line(result)
    assert [p.name for p in out.iterdir()] == [TRAIN_STATE]


@pytest.mark.parametrize("flag", [["--hidden", "64"], ["--state-reset", "0.1"]])
def test_resume_refuses_changed_settings(tmp_path: Path, flag: list[str]) -> None:
    result = runner.invoke(app, ["--out", str(tmp_path), "--resume", *flag])
    assert result.exit_code == 2 and flag[0] in one_error_line(result)


def test_bad_state_reset_one_line_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "x"
    result = runner.invoke(app, ["--data", str(story(tmp_path / "s.txt")), "--state-reset", "1.5", "--out", str(out)])
    assert result.exit_code == 2 and "state-reset" in one_error_line(result)
    assert not out.exists()


def test_tie_needs_equal_sizes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--tie", "--embed", "8", "--hidden", "16", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--embed equal to --hidden" in one_error_line(result)


def test_data_that_is_not_a_regular_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    missing = runner.invoke(app, ["--data", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert missing.exit_code == 1 and "not found" in one_error_line(missing)
    device = runner.invoke(app, ["--data", os.devnull, "--out", str(out)])
    assert device.exit_code == 1 and "not a regular file" in one_error_line(device)
    assert not out.exists()

"""Scoring from the file alone: `rnnx.runtime.scoring.score` gives the trainer's stateful figure, and rnn-eval."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnx.cli import eval as eval_cli
from rnnx.export import export_model
from rnnx.runtime import Model, scoring
from rnnx.runtime.errors import UsageError
from rnnx.runtime.scoring import Score, encode_pieces, read_data, score
from rnnx.trainer.checkpoint import load_model
from rnnx.trainer.data import read_corpus
from rnnx.trainer.evaluate import stateful_loss
from rnnx.trainer.model import RNNLM, ModelConfig
from rnnx.trainer.train import TrainConfig, train

runner = CliRunner()
SENTENCES = [
    'The inspector said, "open the door."',
    "What happens if we do this now?",
    "She kept the well-known letters (all of them) in a drawer.",
    '"Nobody\'s home," he said.\n',
    "The old clock stopped at two.\n\n",
]


def story(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences)) + "\n"


@dataclass(frozen=True)
class Trained:
    torch_model: RNNLM
    onnx: Model
    path: Path


def trained(root: Path, kind: str, model_config: ModelConfig) -> Trained:
    """A tiny model trained for a few steps on a story, exported, and loaded both ways."""
    data = root / "story.txt"
    data.write_text(story(0, 200), encoding="utf-8")
    out = root / "model"
    config = TrainConfig(data=data, out=out, tokenizer=kind, steps=30, batch_size=8, seq_len=32, device="cpu")
    train(model_config, config, progress=False)
    onnx = export_model(out).path
    torch_model, _, _ = load_model(out)
    return Trained(torch_model, Model(onnx, provider="cpu", threads=1), onnx)


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.mktemp("char"), "char", ModelConfig(cell="lstm", hidden=24, layers=2))


@pytest.fixture(scope="module")
def word_model(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.mktemp("word"), "word", ModelConfig(cell="gru", hidden=24))


@pytest.fixture(params=["char", "word"])
def any_model(request: pytest.FixtureRequest) -> Trained:
    return request.getfixturevalue(f"{request.param}_model")


def pieces_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- the library ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 4])
def test_score_matches_the_trainers_stateful_loss(any_model: Trained, streams: int, one_torch_thread: None) -> None:
    text = story(1, 60)  # text the model was not trained on
    ids = torch.tensor(any_model.onnx.tokenizer.encode(text), dtype=torch.long)
    expected = stateful_loss(any_model.torch_model, ids, streams=streams)
    got = score(any_model.onnx, text, streams=streams)
    assert abs(got.nats_per_token - expected) < 1e-5, (got, expected)  # measured: about 1e-8
    assert (got.streams, got.tokens) == (streams, (len(ids) - 1) // streams * streams)


def test_text_in_pieces_scores_exactly_as_the_whole_text(any_model: Trained) -> None:
    text = story(2, 20)
    whole = score(any_model.onnx, text)
    assert score(any_model.onnx, pieces_of(text, 7)) == whole  # pieces cut words and quotes in two
    assert score(any_model.onnx, iter(pieces_of(text, 1))) == whole
    assert score(any_model.onnx, pieces_of(text, 5), streams=3) == score(any_model.onnx, [text], streams=3)


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_pieces_encode_to_the_ids_of_the_whole_text(any_model: Trained, size: int) -> None:
    tokenizer = any_model.onnx.tokenizer
    text = 'A "quoted" word-\n\nbreak, Σίσυφος and İstanbul.  "Yes" ' + story(3, 10)
    ids = [i for piece in encode_pieces(pieces_of(text, size), tokenizer) for i in piece]
    assert ids == tokenizer.encode(text)


def test_long_strings_are_encoded_in_bounded_pieces(any_model: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = any_model.onnx.tokenizer
    text = story(3, 10)
    monkeypatch.setattr(scoring, "PIECE_CHARS", 3)
    pieces = list(encode_pieces(text, tokenizer))
    assert [i for piece in pieces for i in piece] == tokenizer.encode(text)
    assert len(pieces) > 50  # never the whole string at once
    assert tokenizer.kind == "word" or max(len(piece) for piece in pieces) == 3


def test_a_word_model_needs_whitespace_now_and_then(word_model: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "MAX_WORD_RUN", 10)
    assert score(word_model.onnx, ["the ", "inspector ", "said"]).tokens == 2
    with pytest.raises(UsageError, match="without whitespace"):
        score(word_model.onnx, ["the ", "inspector", "said", " so"])


def test_progress_counts_every_prediction_block_by_block(any_model: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    text = story(4, 10)
    plain = score(any_model.onnx, text, streams=2)
    monkeypatch.setattr(scoring, "BLOCK_LOGITS", 1)  # one step per block
    done: list[int] = []
    blocked = score(any_model.onnx, text, streams=2, progress=done.append)
    assert done == list(range(2, blocked.tokens + 1, 2))
    assert blocked.tokens == plain.tokens and blocked.nats_per_token == pytest.approx(plain.nats_per_token, 1e-12)


@pytest.mark.parametrize("text, streams", [("", 1), ("a", 1), ("", 4), ("a", 4), ([], 1), (["", ""], 1)])
def test_fewer_than_two_tokens_is_refused(char_model: Trained, text, streams: int) -> None:
    with pytest.raises(UsageError, match="at least 2"):
        score(char_model.onnx, text, streams=streams)


def test_two_tokens_score_one_prediction(char_model: Trained) -> None:
    assert score(char_model.onnx, "ab", streams=32).tokens == 1


@pytest.mark.parametrize("streams", [0, -1, 1025, True, 2.0])
def test_bad_stream_counts_are_refused(char_model: Trained, streams) -> None:
    with pytest.raises(UsageError, match="streams"):
        score(char_model.onnx, "some text", streams=streams)


def test_bytes_are_refused(char_model: Trained) -> None:
    with pytest.raises(UsageError, match="decode"):
        score(char_model.onnx, [b"some text"])


def test_held_ids_have_a_limit(char_model: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "MAX_HELD_TOKENS", 10)
    assert score(char_model.onnx, "x" * 11).tokens == 10  # one stream holds nothing
    with pytest.raises(UsageError, match="one stream"):
        score(char_model.onnx, "x" * 11, streams=2)


def test_derived_figures_follow_the_kind() -> None:
    char, word = Score(1.5, 10, "char"), Score(3.0, 10, "word")
    assert char.bits_per_char == 1.5 / math.log(2) and char.perplexity is None
    assert word.perplexity == math.exp(3.0) and word.bits_per_char is None


def test_read_data_gives_the_trainers_text(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_bytes(b"\n\nsecond\r\nfile\r\n\r\n")
    (folder / "a.txt").write_bytes("\ufefffirst\rfile é\n".encode())
    (folder / "notes.md").write_text("not read")
    for path in (folder, folder / "a.txt", folder / "b.txt"):
        for read_bytes in (1, 2, 3, 1 << 20):
            assert "".join(read_data(path, read_bytes)) == read_corpus(path)
    assert "".join(read_data(folder)) == "first\nfile é\n\nsecond\nfile\n"


# -- rnn-eval -------------------------------------------------------------------------------------------------


def rnn_eval(model: Path, data: Path, *args: str):
    return runner.invoke(eval_cli.app, ["--model", str(model), "--data", str(data), "--provider", "cpu", *args])


def test_eval_prints_nats_and_bits_per_char(char_model: Trained, tmp_path: Path) -> None:
    data = tmp_path / "valid.txt"
    data.write_text(story(5, 30), encoding="utf-8")
    result = rnn_eval(char_model.path, data)
    assert result.exit_code == 0, result.output
    expected = score(char_model.onnx, data.read_text(encoding="utf-8"))
    assert result.stdout == (
        f"{expected.nats_per_token:.4f} nats/token, {expected.bits_per_char:.4f} bits/char "
        f"({expected.tokens:,} char tokens, 1 stream)\n"
    )
    assert result.stderr == ""


def test_eval_json_for_a_char_model(char_model: Trained, tmp_path: Path) -> None:
    data = tmp_path / "valid.txt"
    data.write_text(story(5, 30), encoding="utf-8")
    result = rnn_eval(char_model.path, data, "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    expected = score(char_model.onnx, data.read_text(encoding="utf-8"))
    assert record == {
        "model": str(char_model.path),
        "data": str(data),
        "kind": "char",
        "tokens": expected.tokens,
        "streams": 1,
        "nats_per_token": expected.nats_per_token,
        "bits_per_char": expected.bits_per_char,
    }


def test_eval_of_a_folder_with_streams_for_a_word_model(word_model: Trained, tmp_path: Path) -> None:
    folder = tmp_path / "valid"
    folder.mkdir()
    for name, seed in (("b.txt", 6), ("a.txt", 7)):
        (folder / name).write_text(story(seed, 15).replace("\n", "\r\n"), encoding="utf-8")
    result = rnn_eval(word_model.path, folder, "--streams", "4", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    expected = score(word_model.onnx, read_corpus(folder), streams=4)
    assert (record["kind"], record["streams"], record["tokens"]) == ("word", 4, expected.tokens)
    assert record["nats_per_token"] == expected.nats_per_token
    assert record["perplexity"] == expected.perplexity and "bits_per_char" not in record
    text = rnn_eval(word_model.path, folder, "--streams", "4")
    line = r"\d+\.\d{4} nats/token, perplexity \d+\.\d{2} \([\d,]+ word tokens, 4 streams\)\n"
    assert re.fullmatch(line, text.stdout), text.stdout


def assert_one_error_line(result, exit_code: int, *words: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize(
    "content, args, words",
    [
        (None, [], ["not found"]),
        (b"", [], ["empty"]),
        (b" \n\t\n", [], ["only whitespace"]),
        ("caf\u00e9 ol\u00e9".encode("latin-1"), [], ["utf-8", "offset 3"]),
        (b"text\x00more", [], ["binary"]),
        (b"a", [], ["at least 2"]),
        (b"plenty of text", ["--streams", "0"], ["streams"]),
    ],
    ids=["missing", "empty", "whitespace", "latin-1", "nul", "one-token", "streams-0"],
)
def test_eval_refuses_bad_data(char_model: Trained, tmp_path: Path, content: bytes | None, args, words) -> None:
    data = tmp_path / "data.txt"
    if content is not None:
        data.write_bytes(content)
    assert_one_error_line(rnn_eval(char_model.path, data, *args), 2, *words)


def test_eval_refuses_a_folder_without_text_files(char_model: Trained, tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("not text for rnnx")
    assert_one_error_line(rnn_eval(char_model.path, tmp_path), 2, ".txt files")


def test_eval_refuses_files_that_are_not_rnnx_models(char_model: Trained, tmp_path: Path) -> None:
    import onnx

    data = tmp_path / "data.txt"
    data.write_text("some text to score", encoding="utf-8")
    text = tmp_path / "text.onnx"
    text.write_text("hello, I am not a model")
    assert_one_error_line(rnn_eval(text, data), 1, "not an onnx model")
    proto = onnx.load(char_model.path)
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, plain)
    assert_one_error_line(rnn_eval(plain, data), 1, "no rnnx metadata")
    assert_one_error_line(rnn_eval(tmp_path / "missing.onnx", data), 1, "not found")


def test_the_installed_command_reports_parse_errors_in_one_line(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "rnn-eval"), "--data", "x.txt", "--streams", "many"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--streams" in lines[0], result.stderr

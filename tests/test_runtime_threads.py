"""One loaded Model shared by 8 threads: each run keeps its own state and gives exactly the serial text."""

from __future__ import annotations

import threading

import pytest
import torch

from rnnx.export.graph import build_step_graph
from rnnx.runtime import Model, SamplingConfig
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

THREADS = 8
PROMPTS = ["to be", "or not", "that is the", "q", "whether tis nobler", "in the mind", "to suffer", "the slings"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(" ".join(PROMPTS) + "abcdefghijklmnopqrstuvwxyz,.")
    config = ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=16, hidden=64, layers=2)
    path = tmp_path_factory.mktemp("threads") / "m.onnx"
    path.write_bytes(build_step_graph(RNNLM(config).eval(), tokenizer, 17).SerializeToString())
    return Model(path, provider="cpu")


def sampling(seed: int) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_k=20, top_p=0.95, repetition_penalty=1.1, rng_seed=seed)


def test_eight_threads_sharing_one_model_match_serial_runs(model: Model) -> None:
    n_tokens = 300
    serial = [model.generate(PROMPTS[i], n_tokens, sampling(seed=i)) for i in range(THREADS)]
    assert len(set(serial)) == THREADS  # different seeds and prompts: eight different texts

    results: list[str | None] = [None] * THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(i: int) -> None:
        try:
            start.wait()
            pieces = []
            for piece in model.stream(PROMPTS[i], n_tokens, sampling(seed=i)):
                pieces.append(piece)  # interleave with the other threads token by token
            results[i] = PROMPTS[i] + "".join(pieces)
        except BaseException as exc:  # reported below; a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == serial


def test_threads_running_batches_match_serial_batches(model: Model) -> None:
    batches = [PROMPTS[i : i + 3] for i in range(0, 6)]
    serial = [model.generate_batch(b, 50, sampling(seed=i)) for i, b in enumerate(batches)]
    results: list[list[str] | None] = [None] * len(batches)

    def work(i: int) -> None:
        results[i] = model.generate_batch(batches[i], 50, sampling(seed=i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == serial

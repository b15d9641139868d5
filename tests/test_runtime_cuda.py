"""CUDA paths: device-resident state (IOBinding) and CUDA-graph replay agree with the CPU. Skipped without a GPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnx.export.graph import build_model_graph, build_step_graph
from rnnx.runtime import Model, SamplingConfig
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

TEXT = "it was the best of times, it was the worst of times"


@pytest.fixture(scope="module", params=["lstm", "gru"])
def onnx_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(TEXT)
    config = ModelConfig(cell=request.param, vocab_size=len(tokenizer.vocab), embed=16, hidden=64, layers=2)
    path = tmp_path_factory.mktemp(request.param) / "m.onnx"  # with the prompt path, as rnn-export writes it
    path.write_bytes(build_model_graph(RNNLM(config).eval(), tokenizer, 17, "matmul").SerializeToString())
    probe = Model(path, provider="auto")
    if probe.device != "cuda":
        pytest.skip("no usable CUDA GPU here (onnxruntime could not start a CUDA session)")
    return path


@pytest.fixture(scope="module")
def cpu(onnx_path: Path) -> Model:
    return Model(onnx_path, provider="cpu")


def token_path(model: Model, batch: int, steps: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    return rng.integers(1, model.info.vocab_size, size=(steps, batch))


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["iobinding", "cuda-graph"])
@pytest.mark.parametrize("batch", [1, 3])
def test_device_steps_match_cpu_steps(onnx_path: Path, cpu: Model, cuda_graph: bool, batch: int) -> None:
    gpu = Model(onnx_path, provider="cuda", cuda_graph=cuda_graph)
    path = token_path(cpu, batch, 40)
    for _ in range(2):  # the second pass reuses pooled buffers and replays captured graphs
        steps = gpu.open_steps(batch)
        steps.load(cpu.initial_state(batch))
        state = cpu.initial_state(batch)
        for t, tokens in enumerate(path):
            want, state = cpu.step(tokens.astype(np.int64), state)
            got = steps.run(tokens)
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"step {t}")
        for got, want in zip(steps.state(), state):
            np.testing.assert_allclose(got, want, atol=1e-4)
        steps.close()


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["iobinding", "cuda-graph"])
def test_state_stays_on_the_device(onnx_path: Path, cuda_graph: bool) -> None:
    gpu = Model(onnx_path, provider="cuda", cuda_graph=cuda_graph)
    steps = gpu.open_steps(2)
    buffers = [value for pair in steps._states for value in pair]
    assert {value.device_name().lower() for value in buffers} == {"cuda"}
    assert isinstance(steps.run(np.array([1, 2])), np.ndarray)  # logits come to the host as numpy
    steps.close()


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["iobinding", "cuda-graph"])
def test_generation_on_cuda_equals_cpu(onnx_path: Path, cpu: Model, cuda_graph: bool) -> None:
    gpu = Model(onnx_path, provider="cuda", cuda_graph=cuda_graph)
    prompts = ["it was", "the worst of", "b"]
    assert gpu.generate_batch(prompts, 60) == cpu.generate_batch(prompts, 60)
    sampling = SamplingConfig(temperature=0.9, top_k=12, rng_seed=3, max_new_tokens=60)
    assert gpu.generate("times", sampling=sampling) == cpu.generate("times", sampling=sampling)


def test_cuda_graph_model_serves_threads(onnx_path: Path, cpu: Model) -> None:
    gpu = Model(onnx_path, provider="cuda", cuda_graph=True)
    seeds = range(4)
    want = [cpu.generate("it was", 80, SamplingConfig(temperature=1.0, rng_seed=s)) for s in seeds]
    got: list[str | None] = [None] * len(want)

    def work(i: int) -> None:
        got[i] = gpu.generate("it was", 80, SamplingConfig(temperature=1.0, rng_seed=i))

    threads = [threading.Thread(target=work, args=(i,)) for i in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == want


# Without a GPU, the same device-buffer code runs on host OrtValues: ping-pong, rebinding-free steps, and the
# graph pool's lending, checked against the plain step loop. (The graph ids are ignored by the CPU provider.)


@pytest.fixture(scope="module")
def host_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    torch.manual_seed(1)
    tokenizer = CharTokenizer.build(TEXT)
    config = ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=8, hidden=32, layers=2)
    path = tmp_path_factory.mktemp("host") / "m.onnx"
    path.write_bytes(build_step_graph(RNNLM(config).eval(), tokenizer, 17).SerializeToString())
    return Model(path, provider="cpu")


@pytest.mark.parametrize("batch", [1, 3])
def test_device_buffer_code_on_host_ortvalues(host_model: Model, batch: int) -> None:
    from rnnx.runtime.cuda import GraphPool
    from rnnx.runtime.steps import PromptReader

    reader = PromptReader(host_model.step, None, host_model.info)
    pool = GraphPool(host_model.session, host_model.info, reader, device="cpu")
    path = token_path(host_model, batch, 25)
    lent = []
    for _ in range(2):
        steps = pool.acquire(batch)
        lent.append(steps)
        steps.load(host_model.initial_state(batch))
        state = host_model.initial_state(batch)
        for tokens in path:
            want, state = host_model.step(tokens.astype(np.int64), state)
            np.testing.assert_allclose(steps.run(tokens), want, atol=1e-6)
        for got, want in zip(steps.state(), state):
            np.testing.assert_allclose(got, want, atol=1e-6)
        steps.close()
        steps.close()  # closing twice returns it once
    assert lent[0] is lent[1]  # the second run borrowed the same buffers (and would replay the same graphs)
    assert pool.acquire(batch) is lent[0] and pool.acquire(batch) is not lent[0]


def test_generation_through_device_buffer_code_on_host(host_model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnx.runtime.cuda import CudaSteps
    from rnnx.runtime.steps import PromptReader

    reader = PromptReader(host_model.step, None, host_model.info)
    prompts = ["it was", "the worst of", "b"]
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, rng_seed=4, max_new_tokens=40)
    want = host_model.generate_batch(prompts, sampling=sampling)
    monkeypatch.setattr(
        host_model,
        "open_steps",
        lambda batch: CudaSteps(host_model.session, host_model.info, batch, reader, device="cpu"),
    )
    assert host_model.generate_batch(prompts, sampling=sampling) == want


def test_cuda_sessions_ask_for_full_fp32_and_graphs_only_when_asked() -> None:
    from rnnx.runtime.session import cuda_provider_options

    assert cuda_provider_options(False) == {"use_tf32": "0"}
    assert cuda_provider_options(True) == {"use_tf32": "0", "enable_cuda_graph": "1"}


def test_preload_is_left_to_a_cuda_torch_already_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA torch has loaded its own cuDNN; onnxruntime's preload could add a second, other version."""
    import sys
    import types

    from rnnx.runtime.session import _torch_brought_cuda

    fake = types.SimpleNamespace(version=types.SimpleNamespace(cuda="13.0"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert _torch_brought_cuda()
    fake.version.cuda = None  # a CPU build brought no CUDA libraries
    assert not _torch_brought_cuda()
    monkeypatch.delitem(sys.modules, "torch")
    assert not _torch_brought_cuda()

"""A loaded rnnx model: an onnxruntime session over the step graph plus the tokenizer from its metadata.

    model = Model("artifacts/default/model.onnx")
    print(model.generate("good", 11))  # greedy, 11 new tokens
    print(model.generate("good", sampling=SamplingConfig(temperature=0.8, max_new_tokens=11, rng_seed=1)))

The model holds no generation state: each `generate`/`stream`/`generate_batch` call (or `generator`) makes its
own, so one instance serves many threads at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnx.runtime import contract
from rnnx.runtime.errors import ModelFileError, UsageError
from rnnx.runtime.generator import Generator, collect
from rnnx.runtime.onnxfile import read_metadata, read_model_bytes
from rnnx.runtime.sampling import SamplingConfig
from rnnx.runtime.session import CUDA, PROVIDERS, check_io, open_session
from rnnx.runtime.steps import CpuSteps, State, Steps
from rnnx.runtime.tokenizer import tokenizer_from_dict

log = logging.getLogger(__name__)

__all__ = ["PROVIDERS", "Model", "State"]


class Model:
    """An exported rnnx model, loaded from its `.onnx` file alone.

    provider: "auto" (CUDA when a CUDA session really comes up, else the CPU), "cpu" or "cuda".
    threads: onnxruntime intra-op threads; 0 lets it pick (one per physical core). For many streams served
        from threads at once, 1 gives the most tokens per second in total.
    spin: let idle worker threads spin between calls (lower latency for one stream; costs CPU when the cores
        are shared).
    cuda_graph: on CUDA, replay captured CUDA graphs for the steps (see `rnnx.runtime.cuda`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "auto",
        threads: int = 0,
        spin: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        path = Path(path)
        source = str(path)
        data = read_model_bytes(path)
        # the metadata decides whether this is an rnnx model at all, before onnxruntime is asked to load it
        self.info = contract.ModelInfo.from_metadata(read_metadata(data, source), source)
        settings = {"threads": threads, "spin": spin, "cuda_graph": cuda_graph}
        session = open_session(data, provider, source, **settings)
        if self.info.weights != "fp32" and session.get_providers()[0] == CUDA:
            # dynamic int8 quantization has CPU kernels only; on CUDA it would run slower, partly on the host
            if provider == "cuda":
                raise UsageError(f"{source} has {self.info.weights} weights, which run on the CPU only: use cpu")
            log.info("%s has %s weights: running on the CPU", source, self.info.weights)
            session = open_session(data, "cpu", source, threads=threads, spin=spin)
        self.session = session
        self.tokenizer = tokenizer_from_dict(self.info.tokenizer)
        if len(self.tokenizer.vocab) != self.info.vocab_size:
            raise ModelFileError(f"{source}: vocabulary size disagrees with the metadata: re-export it")
        check_io(session, self.info, source)
        self.path = path
        self.provider = session.get_providers()[0]
        self._outputs = [contract.LOGITS, *self.info.state_outputs]
        self._graph_pool = None
        self._run_options = None
        if self.provider == CUDA and cuda_graph:
            from rnnx.runtime.cuda import NO_GRAPH, GraphPool

            self._graph_pool = GraphPool(session, self.info)
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("gpu_graph_id", NO_GRAPH)

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    # -- one graph call at a time, state on the host (tests, export checks, prompt ingestion) ------------------

    def initial_state(self, batch: int = 1) -> State:
        shape = (self.info.layers, batch, self.info.hidden)
        return tuple(np.zeros(shape, np.float32) for _ in self.info.state_inputs)

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One graph call: `tokens` [batch] int64 -> logits [batch, vocab] and the next state."""
        feeds = {contract.TOKENS: tokens, **dict(zip(self.info.state_inputs, state))}
        lock = self._graph_pool.lock if self._graph_pool is not None else contextlib.nullcontext()
        with lock:
            logits, *next_state = self.session.run(self._outputs, feeds, self._run_options)
        return logits, tuple(next_state)

    def _ingest(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, State]:
        """Feed each row's prompt ids from a zero state: the logits after each row's last id, and the state.

        The single entry for prompt tokens (a prefill graph, where a file carries one, belongs here). Baseline:
        one step per position with the prompts right-aligned, so every row ends on the last step; a row whose
        prompt has not begun yet has its state put back to zero after each step.

            row 0:  a b c d e        (5 ids)
            row 1:  . . x y z        (3 ids; state zeroed after steps 1 and 2)
        """
        batch, longest = len(prompts), max(len(ids) for ids in prompts)
        state = self.initial_state(batch)
        tokens = np.zeros(batch, np.int64)
        for t in range(longest):
            waiting = []
            for row, ids in enumerate(prompts):
                start = longest - len(ids)
                tokens[row] = ids[max(t - start, 0)]
                if t < start:
                    waiting.append(row)
            logits, state = self.step(tokens, state)
            for array in state if waiting else ():
                array[:, waiting, :] = 0.0
        return logits, state

    def _open_steps(self, batch: int) -> Steps:
        """The per-stream step buffers for the hot loop, on the session's device."""
        if self._graph_pool is not None:
            return self._graph_pool.acquire(batch)
        if self.provider == CUDA:
            from rnnx.runtime.cuda import CudaSteps

            return CudaSteps(self.session, self.info, batch)
        return CpuSteps(self.session, self.info, batch)

    # -- text in, text out --------------------------------------------------------------------------------------

    def new_tokens_for_length(self, prompt: str, length: int) -> int:
        """How many tokens to generate so the whole text, prompt included, is `length` tokens long."""
        prompt_len = len(self.tokenizer.encode(prompt))
        if not prompt_len:
            raise UsageError("the seed text is empty: give at least one token to start from")
        if length < prompt_len:
            raise UsageError(f"length {length} is shorter than the seed text ({prompt_len} tokens)")
        return length - prompt_len

    def generator(
        self, prompts: Sequence[str], sampling: SamplingConfig | None = None, max_new_tokens: int | None = None
    ) -> Generator:
        """A run over `prompts` (one row each) that the caller steps; see `rnnx.runtime.generator`."""
        return Generator(self, prompts, _config(sampling, max_new_tokens))

    def stream(
        self, prompt: str, max_new_tokens: int | None = None, sampling: SamplingConfig | None = None
    ) -> Iterator[str]:
        """Feed `prompt`, then yield the text of each new token as it is produced.

        `max_new_tokens`, when given, stands in for `sampling.max_new_tokens`.
        """
        with self.generator([prompt], sampling, max_new_tokens) as run:
            while not run.done:
                piece = run.step()[0]
                if piece:
                    yield piece

    def generate(self, prompt: str, max_new_tokens: int | None = None, sampling: SamplingConfig | None = None) -> str:
        """The prompt followed by the generated text."""
        return prompt + collect(self.generator([prompt], sampling, max_new_tokens))[0]

    def generate_batch(
        self, prompts: Sequence[str], max_new_tokens: int | None = None, sampling: SamplingConfig | None = None
    ) -> list[str]:
        """Each prompt followed by its generated text, all rows run together in one batch."""
        return [p + new for p, new in zip(prompts, collect(self.generator(prompts, sampling, max_new_tokens)))]

    def __repr__(self) -> str:
        info = self.info
        shape = f"{info.cell} {info.layers}x{info.hidden}, vocab {info.vocab_size}"
        return f"Model({str(self.path)!r}, {shape}, {self.device})"


def _config(sampling: SamplingConfig | None, max_new_tokens: int | None) -> SamplingConfig:
    if sampling is None:
        sampling = SamplingConfig()
    elif not isinstance(sampling, SamplingConfig):
        raise UsageError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    return sampling if max_new_tokens is None else replace(sampling, max_new_tokens=max_new_tokens)

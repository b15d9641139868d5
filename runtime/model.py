"""A loaded rnnx model: an onnxruntime session over the step graph plus the tokenizer from its metadata.

    model = Model("artifacts/default/model.onnx")
    print(model.generate("good", max_new_tokens=11))

The model holds no generation state, so one instance can serve many threads, each with its own state.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnx.runtime import contract
from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError
from rnnx.runtime.onnxfile import read_model_bytes
from rnnx.runtime.sampling import SamplingConfig, choose
from rnnx.runtime.tokenizer import tokenizer_from_dict

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

State = tuple[np.ndarray, ...]


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def _try_cuda_session(data: bytes, threads: int) -> ort.InferenceSession | None:
    """A session on the CUDA provider, or None when onnxruntime cannot really run one here.

    onnxruntime-gpu lists CUDA as available even without a GPU, then logs an error and falls back to the CPU;
    the probe is silenced and judged by the providers the session actually got.
    """
    if _CUDA not in ort.get_available_providers():
        return None
    sink = io.StringIO()
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if hasattr(ort, "preload_dlls"):  # CUDA libraries from pip's nvidia-* wheels, without torch
                ort.preload_dlls()
        options = _session_options(threads)
        options.log_severity_level = 4
        session = ort.InferenceSession(data, options, providers=[_CUDA, _CPU])
    except Exception as exc:  # onnxruntime raises its own exception types; any failure means "no CUDA"
        log.debug("CUDA session failed: %s", exc)
        return None
    finally:
        ort.set_default_logger_severity(2)
    return session if session.get_providers()[0] == _CUDA else None


def _open_session(data: bytes, provider: str, threads: int, source: str) -> ort.InferenceSession:
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if threads < 0:
        raise UsageError(f"threads must be 0 (onnxruntime decides) or positive, got {threads}")
    try:
        if provider != "cpu":
            session = _try_cuda_session(data, threads)
            if session is not None:
                return session
            if provider == "cuda":
                raise RnnxError(
                    "the CUDA provider was asked for but onnxruntime cannot use a GPU here "
                    "(no GPU, or no CUDA/cuDNN libraries): use --provider cpu or auto"
                )
        return ort.InferenceSession(data, _session_options(threads), providers=[_CPU])
    except RnnxError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{source} could not be loaded by onnxruntime: {first}") from None


def _check_io(session: ort.InferenceSession, info: contract.ModelInfo, source: str) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want_in = {contract.TOKENS, *info.state_inputs}
    want_out = {contract.LOGITS, *info.state_outputs}
    if set(inputs) != want_in or not want_out <= outputs:
        raise ModelFileError(
            f"{source} does not match the rnnx contract: inputs {sorted(inputs)}, outputs {sorted(outputs)}; "
            f"expected inputs {sorted(want_in)} and outputs {sorted(want_out)}"
        )
    if inputs[contract.TOKENS].type != "tensor(int64)" or any(
        inputs[name].type != "tensor(float)" for name in info.state_inputs
    ):
        raise ModelFileError(f"{source}: input types do not match the rnnx contract: re-export it")


class Model:
    """An exported rnnx model, loaded from its `.onnx` file alone."""

    def __init__(self, path: str | Path, *, provider: str = "auto", threads: int = 0) -> None:
        path = Path(path)
        source = str(path)
        data = read_model_bytes(path)
        self.session = _open_session(data, provider, threads, source)
        self.info = contract.ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, source)
        self.tokenizer = tokenizer_from_dict(self.info.tokenizer)
        if len(self.tokenizer.vocab) != self.info.vocab_size:
            raise ModelFileError(f"{source}: vocabulary size disagrees with the metadata: re-export it")
        _check_io(self.session, self.info, source)
        self.path = path
        self.provider = self.session.get_providers()[0]
        self._outputs = [contract.LOGITS, *self.info.state_outputs]

    def initial_state(self, batch: int = 1) -> State:
        shape = (self.info.layers, batch, self.info.hidden)
        return tuple(np.zeros(shape, np.float32) for _ in self.info.state_inputs)

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One graph call: `tokens` [batch] int64 -> logits [batch, vocab] and the next state."""
        feeds = {contract.TOKENS: tokens, **dict(zip(self.info.state_inputs, state))}
        logits, *next_state = self.session.run(self._outputs, feeds)
        return logits, tuple(next_state)

    def new_tokens_for_length(self, prompt: str, length: int) -> int:
        """How many tokens to generate so the whole text, prompt included, is `length` tokens long."""
        prompt_len = len(self.tokenizer.encode(prompt))
        if length < prompt_len:
            raise UsageError(f"length {length} is shorter than the seed text ({prompt_len} tokens)")
        return length - prompt_len

    def stream(self, prompt: str, max_new_tokens: int, sampling: SamplingConfig | None = None) -> Iterator[str]:
        """Feed `prompt`, then yield the text of each new token as it is produced."""
        sampling = sampling or SamplingConfig()
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UsageError("the seed text is empty: give at least one token to start from")
        if max_new_tokens < 0:
            raise UsageError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
        rng = np.random.default_rng(sampling.rng_seed)
        state = self.initial_state(1)
        token = np.zeros(1, np.int64)
        for token_id in ids:
            token[0] = token_id
            logits, state = self.step(token, state)
        prev = ids[-1]
        for i in range(max_new_tokens):
            next_id = choose(logits[0], sampling, rng)
            yield self.tokenizer.piece(prev, next_id)
            if i + 1 < max_new_tokens:  # the last token's logits would go unused
                prev = token[0] = next_id
                logits, state = self.step(token, state)

    def generate(self, prompt: str, max_new_tokens: int, sampling: SamplingConfig | None = None) -> str:
        """The prompt followed by `max_new_tokens` generated tokens, as text."""
        return prompt + "".join(self.stream(prompt, max_new_tokens, sampling))

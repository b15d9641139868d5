"""Opening an onnxruntime session for an rnnx step graph: provider choice, CPU options, and the contract check.

CPU options are tuned for per-token latency, measured on the 2-core dev machine with the tutorials' LSTM 1024
at batch 1: two intra-op threads with spinning 422 µs per step, without spinning 516 µs, one thread 786 µs.
Spinning stays on by default; it costs throughput when several streams share the cores (two concurrent
streams: 2118 steps/s spinning vs 2361 not, and 2545 with one thread each), so `spin=False` or `threads=1`
is the choice for a model that serves many threads at once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

import onnxruntime as ort

from rnnx.runtime import contract
from rnnx.runtime.errors import ModelFileError, RnnxError, UsageError

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def session_options(threads: int, spin: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one small graph: nothing to run side by side
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads  # 0 leaves it to onnxruntime: one per physical core
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def _try_cuda_session(data: bytes, threads: int, spin: bool, cuda_graph: bool) -> ort.InferenceSession | None:
    """A session on the CUDA provider, or None when onnxruntime cannot really run one here.

    onnxruntime-gpu lists CUDA as available even without a GPU, then logs an error and falls back to the CPU;
    the probe is silenced and judged by the providers the session actually got.
    """
    if CUDA not in ort.get_available_providers():
        return None
    sink = io.StringIO()
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if hasattr(ort, "preload_dlls"):  # CUDA libraries from pip's nvidia-* wheels, without torch
                ort.preload_dlls()
        options = session_options(threads, spin)
        options.log_severity_level = 4
        cuda = (CUDA, {"enable_cuda_graph": "1"}) if cuda_graph else CUDA
        session = ort.InferenceSession(data, options, providers=[cuda, CPU])
    except Exception as exc:  # onnxruntime raises its own exception types; any failure means "no CUDA"
        log.debug("CUDA session failed: %s", exc)
        return None
    finally:
        ort.set_default_logger_severity(2)
    return session if session.get_providers()[0] == CUDA else None


def open_session(
    data: bytes, provider: str, source: str, *, threads: int = 0, spin: bool = True, cuda_graph: bool = False
) -> ort.InferenceSession:
    """A session on `provider`: auto takes CUDA only when a CUDA session really comes up, else the CPU."""
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if not isinstance(threads, int) or threads < 0:
        raise UsageError(f"threads must be 0 (onnxruntime decides) or positive, got {threads!r}")
    most = 4 * (os.cpu_count() or 1)  # far past this, onnxruntime spends ages starting threads that only contend
    if threads > most:
        raise UsageError(f"threads {threads} is far more than this machine's {os.cpu_count()} CPUs: use at most {most}")
    if cuda_graph and provider == "cpu":
        raise UsageError("CUDA graphs need the CUDA provider: use provider cuda or auto, or leave cuda_graph off")
    try:
        if provider != "cpu":
            session = _try_cuda_session(data, threads, spin, cuda_graph)
            if session is not None:
                return session
            if provider == "cuda":
                raise RnnxError(
                    "the CUDA provider was asked for but onnxruntime cannot use a GPU here "
                    "(no GPU, or no CUDA/cuDNN libraries): use --provider cpu or auto"
                )
            if cuda_graph:
                log.info("no usable GPU: running on the CPU without CUDA graphs")
        return ort.InferenceSession(data, session_options(threads, spin), providers=[CPU])
    except RnnxError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{source} could not be loaded by onnxruntime: {first}") from None


def check_io(session: ort.InferenceSession, info: contract.ModelInfo, source: str) -> None:
    """Refuse a graph whose inputs and outputs are not the ones the contract names for its cell."""
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
    state_shape = (info.layers, None, info.hidden)  # None: the dynamic batch axis
    if not _fits(inputs[contract.TOKENS].shape, (None,)) or any(
        not _fits(inputs[name].shape, state_shape) for name in info.state_inputs
    ):
        raise ModelFileError(f"{source}: input shapes disagree with its metadata (layers, hidden): re-export it")


def _fits(shape: list[int | str | None], want: tuple[int | None, ...]) -> bool:
    """Whether a graph input's declared shape agrees with `want`; symbolic or unknown dimensions always do."""
    return len(shape) == len(want) and all(not isinstance(d, int) or w is None or d == w for d, w in zip(shape, want))

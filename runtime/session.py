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
import sys

import numpy as np
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
        options.intra_op_num_threads = int(threads)  # 0 leaves it to onnxruntime: one per physical core
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def cuda_provider_options(cuda_graph: bool) -> dict[str, str]:
    """The CUDA provider's options: full fp32 matmuls (its default is TF32 on Ampere and later, whose 10-bit
    mantissa changes logits by ~1e-3, enough to flip a sampled token now and then: the text would then differ
    from the CPU's for the same seed), and CUDA graphs when asked."""
    options = {"use_tf32": "0"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def _torch_brought_cuda() -> bool:
    """Whether a CUDA build of torch is already imported, and with it its own CUDA and cuDNN libraries.

    onnxruntime's `preload_dlls` would then load a second cuDNN from the default library path, possibly
    another version (seen on an H200 machine: torch built for cuDNN 9.19 found 9.14 and refused), while the
    libraries torch loaded serve onnxruntime as they are. The runtime never imports torch; it only looks.
    """
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None) is not None


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
            if hasattr(ort, "preload_dlls") and not _torch_brought_cuda():
                ort.preload_dlls()  # CUDA libraries from pip's nvidia-* wheels, or the system's
        options = session_options(threads, spin)
        options.log_severity_level = 4
        cuda = (CUDA, cuda_provider_options(cuda_graph))
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
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 0:
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
        # onnxruntime's Python wrapper prints an "EP Error" banner to stdout when a session fails: keep it out
        with contextlib.redirect_stdout(io.StringIO()):
            return ort.InferenceSession(data, session_options(threads, spin), providers=[CPU])
    except RnnxError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(first) > 200:
            first = first[:197] + "..."
        raise ModelFileError(f"{source} could not be loaded by onnxruntime ({first}): re-export it") from None


def run_failed(source: str, exc: BaseException) -> ModelFileError:
    """The one-line error for a graph that loaded but fails while it runs (a broken or crafted file)."""
    lines = str(exc).strip().splitlines()
    first = lines[-1] if lines else type(exc).__name__  # onnxruntime puts the reason on the last line
    if len(first) > 200:
        first = first[:197] + "..."
    return ModelFileError(f"{source} failed while running ({first}): the file is broken; re-export it")


def check_io(session: ort.InferenceSession, info: contract.ModelInfo, source: str, prompt: bool = False) -> None:
    """Refuse a path whose inputs or outputs are not the ones the contract names for its cell: names, element
    types, and sizes (layers, hidden and vocabulary fixed in the graph and equal to the metadata; batch and
    length dynamic). `prompt` picks the prompt path's names instead of the step path's."""
    try:  # onnxruntime decodes names and declared shapes as UTF-8 here: a flipped bit makes that raise
        inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
        outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    except UnicodeDecodeError:
        raise ModelFileError(
            f"{source} is corrupt (its inputs or outputs hold bytes that are not text): re-export it"
        ) from None
    tokens = contract.PROMPT if prompt else contract.TOKENS
    want_in = (tokens, *info.state_inputs)
    want_out = contract.prompt_outputs(info.cell) if prompt else contract.step_outputs(info.cell)
    if set(inputs) != set(want_in) or set(outputs) != set(want_out):
        raise ModelFileError(
            f"{source} does not match the rnnx contract: inputs {sorted(inputs)}, outputs {sorted(outputs)}; "
            f"expected inputs {sorted(want_in)} and outputs {sorted(want_out)}"
        )
    types = {tokens: "tensor(int64)"}
    state_shape = (info.layers, None, info.hidden)  # None: the dynamic batch axis
    shapes = {tokens: (None, None) if prompt else (None,), want_out[0]: (None, info.vocab_size)}
    for name in (*info.state_inputs, *want_out[1:]):
        shapes[name] = state_shape
    for name, (kind, shape) in {**inputs, **outputs}.items():
        if kind != types.get(name, "tensor(float)"):
            raise ModelFileError(
                f"{source}: {name} is {kind}, the rnnx contract says {types.get(name, 'tensor(float)')}: re-export it"
            )
        if not _fits(shape, shapes[name]):
            raise ModelFileError(
                f"{source}: {name} has shape {shape}, which disagrees with its metadata "
                f"(layers {info.layers}, hidden {info.hidden}, vocabulary {info.vocab_size}): re-export it"
            )


def _fits(shape: list[int | str | None] | None, want: tuple[int | None, ...]) -> bool:
    """Whether a declared shape is exactly `want`: fixed sizes equal, dynamic axes (None) not fixed."""
    if shape is None or len(shape) != len(want):
        return False
    return all(isinstance(d, int) and d == w if w is not None else not isinstance(d, int) for d, w in zip(shape, want))

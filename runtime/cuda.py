"""Steps on the CUDA provider: the state never leaves the GPU between steps; only the logits come to the host.

Each stream owns two sets of device state buffers (onnxruntime `OrtValue`s) and one IOBinding per direction,
as `CpuSteps` does on the host. Per step the token ids go up (`update_inplace` into a fixed device buffer) and
the logits come down; h and c stay put.

With CUDA graphs (the session made with the CUDA provider's `enable_cuda_graph`), each direction replays its
own captured graph, picked by the run option `gpu_graph_id` (0 is onnxruntime's, -1 runs without a graph).
A captured graph replays fixed device addresses, so graph buffers belong to the model: a `GraphPool` keeps them
per batch size and lends each set to one stream at a time. Capture must not overlap other CUDA work of the
process, so on such a session every CUDA call (runs, copies, allocations) holds the pool's lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from rnnx.runtime import contract
from rnnx.runtime.session import run_failed
from rnnx.runtime.steps import PromptReader, State, feed_rows

DEVICE = "cuda"
NO_GRAPH = "-1"  # gpu_graph_id for runs that must not be captured (Model.step)


def _device_zeros(shape: tuple[int, ...], dtype: type, device: str) -> ort.OrtValue:
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)
    value.update_inplace(np.zeros(shape, dtype))  # fresh device memory holds whatever was there before
    return value


class CudaSteps:
    """Device-resident steps for one stream (see the module docstring); the `Steps` protocol of `steps.py`.

    `device` is "cuda" in use; tests without a GPU pass "cpu" to run the same code on host OrtValues.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        info: contract.ModelInfo,
        batch: int,
        reader: PromptReader,
        *,
        graph_ids: tuple[int, int] | None = None,
        lock: threading.Lock | None = None,
        on_close: Callable[[CudaSteps], None] | None = None,
        device: str = DEVICE,
    ) -> None:
        self.batch = batch
        self._session = session
        self._reader = reader
        self._lock = lock or contextlib.nullcontext()
        self._on_close = on_close
        self.lent = True  # False once closed: a pooled set is lent again by GraphPool.acquire
        self._current = 0  # which state buffer the next step reads
        shape = (info.layers, batch, info.hidden)
        with self._lock:
            self._tokens = _device_zeros((batch,), np.int64, device)
            self._logits = _device_zeros((batch, info.vocab_size), np.float32, device)
            self._states = [
                tuple(_device_zeros(shape, np.float32, device) for _ in info.state_inputs) for _ in range(2)
            ]
        self._bindings = [self._bind(info, source) for source in (0, 1)]
        self._run_options = [ort.RunOptions(), ort.RunOptions()]
        if graph_ids is not None:
            for options, graph_id in zip(self._run_options, graph_ids):
                options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def _bind(self, info: contract.ModelInfo, source: int) -> ort.IOBinding:
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(contract.TOKENS, self._tokens)
        for name, value in zip(info.state_inputs, self._states[source]):
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(contract.LOGITS, self._logits)
        for name, value in zip(info.state_outputs, self._states[1 - source]):
            binding.bind_ortvalue_output(name, value)
        return binding

    def load(self, state: State) -> None:
        with self._lock:
            for buffer, value in zip(self._states[self._current], state):
                buffer.update_inplace(np.ascontiguousarray(value, np.float32))

    def feed(self, rows: Sequence[int], tokens: np.ndarray, start: State | None = None) -> np.ndarray:
        return feed_rows(self, self._reader, rows, tokens, start)  # prompts are read outside the captured graphs

    def run(self, token_ids: np.ndarray) -> np.ndarray:
        current = self._current
        with self._lock:
            self._tokens.update_inplace(np.ascontiguousarray(token_ids, np.int64))
            try:
                self._session.run_with_iobinding(self._bindings[current], self._run_options[current])
            except Exception as exc:  # onnxruntime's own exception types: the file's graph failed
                raise run_failed(self._reader.source, exc) from None
            logits = self._logits.numpy()  # the only copy to the host per step
        self._current = 1 - current
        return logits

    def state(self) -> State:
        with self._lock:
            return tuple(value.numpy() for value in self._states[self._current])

    def close(self) -> None:
        if self.lent:
            self.lent = False
            if self._on_close is not None:
                self._on_close(self)


class GraphPool:
    """CUDA-graph buffer sets of one model, per batch size, each lent to one stream at a time."""

    def __init__(
        self,
        session: ort.InferenceSession,
        info: contract.ModelInfo,
        reader: PromptReader,
        device: str = DEVICE,
        lock: threading.Lock | None = None,
    ) -> None:
        self.lock = lock or threading.Lock()  # held by every CUDA call on this session (see the module docstring)
        self._session = session
        self._reader = reader
        self._info = info
        self._device = device
        self._free: dict[int, list[CudaSteps]] = {}
        self._next_graph_id = 1

    def acquire(self, batch: int) -> CudaSteps:
        with self.lock:
            free = self._free.get(batch)
            if free:
                steps = free.pop()
                steps.lent = True
                return steps
            graph_ids = (self._next_graph_id, self._next_graph_id + 1)  # one captured graph per direction
            self._next_graph_id += 2
        return CudaSteps(
            self._session,
            self._info,
            batch,
            self._reader,
            graph_ids=graph_ids,
            lock=self.lock,
            on_close=self._release,
            device=self._device,
        )

    def _release(self, steps: CudaSteps) -> None:
        with self.lock:
            self._free.setdefault(steps.batch, []).append(steps)

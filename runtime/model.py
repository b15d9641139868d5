"""A loaded rnnx model: onnxruntime sessions over the file's step path and prompt path, plus the tokenizer
from its metadata.

    model = Model("artifacts/default/model.onnx")
    print(model.generate("good", 11))  # greedy, 11 new tokens
    print(model.generate("good", sampling=SamplingConfig(temperature=0.8, max_new_tokens=11, rng_seed=1)))

The model holds no generation state: each `generate`/`stream`/`generate_batch` call (or `generator`) makes its
own, so one instance serves many threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnx.runtime import contract
from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.errors import ModelFileError, UsageError
from rnnx.runtime.generator import Generator, collect
from rnnx.runtime.onnxfile import MAX_MODEL_BYTES, extract, read_facts, read_metadata, read_model_bytes
from rnnx.runtime.sampling import SamplingConfig, is_int
from rnnx.runtime.scoring import Score, score
from rnnx.runtime.session import CUDA, PROVIDERS, check_io, open_session, run_failed
from rnnx.runtime.steps import CpuSteps, PromptReader, State, Steps
from rnnx.runtime.tokenizer import tokenizer_from_dict

log = logging.getLogger(__name__)

__all__ = ["PROVIDERS", "Model", "State"]

MAX_BATCH = 1 << 16  # rows in one run: 64 times the largest batch measured (1024); more is a mistake, not a batch
# What one run may hold in rows (state buffers, logits, sampler and bookkeeping): a batch past it is refused up
# front, before gigabytes are allocated row by row. ROW_BYTES is the Python bookkeeping of a row (its lists,
# encoded prompt, random generator, stop-string buffer). Measured (peak RSS less the interpreter's, LSTM 2x8,
# vocabulary 11, 65,536 rows of 3 tokens): greedy 3.4 KB a row; seeded top-k with a repetition penalty and a
# stop string 6.1 KB, of which the state and logits are 0.6.
MAX_RUN_BYTES = 4 << 30
ROW_BYTES = 6 << 10


class Model:
    """An exported rnnx model, loaded from its `.onnx` file alone.

    provider: "auto" (CUDA when a CUDA session really comes up, else the CPU), "cpu" or "cuda".
    threads: onnxruntime intra-op threads; 0 lets it pick (one per physical core). For many streams served
        from threads at once, 1 gives the most tokens per second in total.
    spin: let idle worker threads spin between calls (lower latency for one stream; costs CPU when the cores
        are shared).
    cuda_graph: on CUDA, replay captured CUDA graphs for the steps (see `rnnx.runtime.cuda`).
    max_bytes: refuse files larger than this (the format's own limit, 2 GiB, by default).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "auto",
        threads: int = 0,
        spin: bool = True,
        cuda_graph: bool = False,
        max_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        if not isinstance(path, str | Path):
            raise UsageError(f"the model path must be a str or Path, got {type(path).__name__}")
        if not is_int(max_bytes) or max_bytes < 1:
            raise UsageError(f"max_bytes must be a positive whole number, got {max_bytes!r}")
        for name, flag in (("spin", spin), ("cuda_graph", cuda_graph)):
            if not isinstance(flag, bool | np.bool_):  # "no" would be true: refuse rather than guess
                raise UsageError(f"{name} must be True or False, got {flag!r}")
        path = Path(path)
        source = str(path)
        try:  # no file can be larger than the format's limit: a larger max_bytes means that limit
            data = read_model_bytes(path, min(int(max_bytes), MAX_MODEL_BYTES))
        except OSError as exc:  # a name too long, permission denied, an I/O error
            reason = exc.strerror or exc
            raise ModelFileError(
                f"{contract._short(source, 200)} could not be read ({reason}): check the path"
            ) from None
        # the metadata decides whether this is an rnnx model at all, before onnxruntime is asked to load it
        self.info = contract.ModelInfo.from_metadata(read_metadata(data, source), source, len(data))
        self.tokenizer = tokenizer_from_dict(self.info.tokenizer)
        if len(self.tokenizer.vocab) != self.info.vocab_size:
            raise ModelFileError(f"{source}: vocabulary size disagrees with the metadata: re-export it")
        self.facts = read_facts(data, source)
        prompt_data = None
        if contract.PROMPT_LOGITS in self.facts.outputs:  # two paths: a session each (see contract)
            prompt_data = extract(data, contract.prompt_outputs(self.info.cell), source)
            data = extract(data, contract.step_outputs(self.info.cell), source)
        settings = {"threads": threads, "spin": spin, "cuda_graph": cuda_graph}
        session = open_session(data, provider, source, **settings)
        if self.info.weights != "fp32" and session.get_providers()[0] == CUDA:
            # dynamic int8 quantization has CPU kernels only; on CUDA it would run slower, partly on the host
            if provider == "cuda":
                raise UsageError(f"{source} has {self.info.weights} weights, which run on the CPU only: use cpu")
            log.info("%s has %s weights: running on the CPU", source, self.info.weights)
            session = open_session(data, "cpu", source, threads=threads, spin=spin)
        check_io(session, self.info, source)
        self.session = session
        self.path = path
        self.provider = session.get_providers()[0]
        prompt_session = None
        if prompt_data is not None:  # on the step session's device, never captured in a CUDA graph
            where = "cuda" if self.provider == CUDA else "cpu"
            prompt_threads = 1 if _small(self.info) else threads  # `threads` is a ceiling, not a demand
            prompt_session = open_session(prompt_data, where, source, threads=prompt_threads, spin=spin)
            check_io(prompt_session, self.info, source, prompt=True)
        self._outputs = list(contract.step_outputs(self.info.cell))
        self._graph_pool = None
        self._run_options = None
        lock = None
        if self.provider == CUDA and cuda_graph:
            from rnnx.runtime.cuda import NO_GRAPH, GraphPool

            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("gpu_graph_id", NO_GRAPH)
            lock = threading.Lock()
        self._reader = PromptReader(self._step, prompt_session, self.info, lock, source)
        if lock is not None:
            self._graph_pool = GraphPool(session, self.info, self._reader, lock=lock)

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    @property
    def fingerprint(self) -> str:
        """sha256 of the file's graph (nodes and weights): what snapshots are checked against."""
        return self.facts.fingerprint

    @property
    def has_prompt_path(self) -> bool:
        """Whether prompts are read a whole sequence per graph call (else one step per token)."""
        return self._reader.has_prompt_path

    # -- one graph call at a time, state on the host (tests, export checks, prompt ingestion) ------------------

    def initial_state(self, batch: int = 1) -> State:
        _check_batch(batch, self.info)
        shape = (self.info.layers, batch, self.info.hidden)
        return tuple(np.zeros(shape, np.float32) for _ in self.info.state_inputs)

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One graph call: `tokens` [batch] int64 -> logits [batch, vocab] and the next state."""
        self._check(tokens, 1, state)
        return self._step(tokens, state)

    def _step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """`step` without the argument checks, for inputs the runtime made itself (prompts of v1 files)."""
        feeds = {contract.TOKENS: tokens, **dict(zip(self.info.state_inputs, state))}
        lock = self._graph_pool.lock if self._graph_pool is not None else contextlib.nullcontext()
        with lock:
            try:
                logits, *next_state = self.session.run(self._outputs, feeds, self._run_options)
            except Exception as exc:  # onnxruntime's own exception types: the file's graph failed
                raise run_failed(str(self.path), exc) from None
        if logits.shape != (len(tokens), self.info.vocab_size):
            raise ModelFileError(f"{self.path} computed logits of shape {logits.shape}, not [batch, vocabulary]")
        return logits, tuple(next_state)

    def read(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Read `tokens` [batch, length] int64 from `state`: the logits after each row's last token and the
        state after all of them; the prompt path, in as few graph calls as memory allows."""
        self._check(tokens, 2, state)
        return self._reader.read(tokens, state)

    def _check(self, tokens: np.ndarray, ndim: int, state: State) -> None:
        """Refuse tokens and states that are not what the graph takes (a UsageError naming the argument)."""
        want = "[batch]" if ndim == 1 else "[batch, length] with length ≥ 1"
        if not isinstance(tokens, np.ndarray) or tokens.ndim != ndim or tokens.dtype != np.int64 or not tokens.size:
            got = f"{tokens.dtype} {tokens.shape}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
            raise UsageError(f"tokens must be an int64 numpy array {want}, got {got}")
        if tokens.min() < 0 or tokens.max() >= self.info.vocab_size:
            raise UsageError(f"token ids must be from 0 to {self.info.vocab_size - 1} (the vocabulary)")
        shape = (self.info.layers, tokens.shape[0], self.info.hidden)
        if (
            not isinstance(state, tuple | list)
            or len(state) != len(self.info.state_inputs)
            or any(not isinstance(s, np.ndarray) or s.dtype != np.float32 or s.shape != shape for s in state)
        ):
            raise UsageError(f"state must be {len(self.info.state_inputs)} float32 array(s) of shape {shape}")

    def open_steps(self, batch: int) -> Steps:
        """The buffers of one run, on the session's device: what `Generator` feeds every token through."""
        _check_batch(batch, self.info)
        if self._graph_pool is not None:
            return self._graph_pool.acquire(batch)
        if self.provider == CUDA:
            from rnnx.runtime.cuda import CudaSteps

            return CudaSteps(self.session, self.info, batch, self._reader)
        return CpuSteps(self.session, self.info, batch, self._reader)

    # -- text in, text out --------------------------------------------------------------------------------------

    def new_tokens_for_length(self, prompt: str, length: int, *, words: bool = False) -> int:
        """How many tokens (with `words`: word tokens, punctuation not counted) to generate so that the whole
        text, prompt included, is `length` of them long."""
        if not isinstance(prompt, str):
            raise UsageError(f"the prompt must be a string, got {type(prompt).__name__}")
        if not is_int(length):
            raise UsageError(f"the length must be a whole number, got {length!r}")
        if not isinstance(words, bool | np.bool_):
            raise UsageError(f"words must be True or False, got {words!r}")
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UsageError("the seed text is empty: give at least one token to start from")
        prompt_len = sum(map(self.tokenizer.is_word, ids)) if words else len(ids)
        unit = "words" if words else "tokens"
        if length < prompt_len:
            raise UsageError(f"length {length} is shorter than the seed text ({prompt_len} {unit})")
        return length - prompt_len

    def generator(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig | None = None,
        max_new_tokens: int | None = None,
        *,
        resume: Sequence[bytes | None] | None = None,
        max_new_words: int | None = None,
    ) -> Generator:
        """A run over `prompts` (one row each) that the caller steps and may `append` to; see
        `rnnx.runtime.generator`.

        resume: one snapshot (bytes from `Generator.snapshot`) or None per row; a resumed row goes on from the
            snapshot, then reads its prompt ("" for none). It continues the snapshot's random stream.
        max_new_words: count only word tokens towards the budget (punctuation rides along), in place of
            max_new_tokens; for a character model every token is a word.
        """
        config = _config(sampling, max_new_tokens)
        batch = _batch(prompts)
        _check_batch(batch, self.info)  # before any snapshot is decoded or buffer allocated
        decoded = None
        if resume is not None:
            if isinstance(resume, bytes | str) or not isinstance(resume, Sequence):
                raise UsageError("resume must be a list with one snapshot (bytes) or None per prompt")
            if len(resume) != batch:  # before a blob is decoded: a million of them take half a minute
                raise UsageError(
                    f"resume must hold one snapshot (or None) per prompt: {len(resume)} for {batch} prompts"
                )
            decoded = [None if b is None else snapshots.decode(b, self.info, self.fingerprint) for b in resume]
        return Generator(self, self.open_steps(batch), prompts, config, decoded, max_new_words)

    def stream(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        sampling: SamplingConfig | None = None,
        *,
        max_new_words: int | None = None,
    ) -> Iterator[str]:
        """Feed `prompt`, then yield the text of each new token as it is produced.

        `max_new_tokens`, when given, stands in for `sampling.max_new_tokens`; `max_new_words` counts words.
        """
        with self.generator([prompt], sampling, max_new_tokens, max_new_words=max_new_words) as run:
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

    def score(self, text: str, *, streams: int = 1) -> Score:
        """Mean next-token cross-entropy of `text` under the model (nats/token), teacher-forced with the state
        carried across the whole text (the trainer's stateful protocol); see `rnnx.runtime.scoring`."""
        return score(self, text, streams=streams)

    def __repr__(self) -> str:
        info = self.info
        shape = f"{info.cell} {info.layers}x{info.hidden}, vocab {info.vocab_size}"
        return f"Model({str(self.path)!r}, {shape}, {self.device})"


# A prompt-path step reads the recurrent weights once; below this many bytes of them, splitting each step's small
# MatMul over threads costs more than it saves (dev machine, batch 1, per prompt token: LSTM 128 8.5 µs on one
# thread vs 10.3 on two, the small RNN 256 3.3 vs 5.1; LSTM 256, 1 MiB, 17.8 vs 15.5; LSTM 384 84 vs 35).
ONE_THREAD_BELOW = 512 << 10


_FEWER_ROWS = "split the prompts into several runs (or score with fewer streams)"


def _check_batch(batch: object, info: contract.ModelInfo) -> None:
    if not is_int(batch) or batch < 1:
        raise UsageError(f"batch must be a whole number from 1 to {MAX_BATCH:,}, got {batch!r}")
    if batch > MAX_BATCH:
        raise UsageError(f"a batch of {batch:,} rows is more than one run takes ({MAX_BATCH:,}): {_FEWER_ROWS}")
    need = batch * row_bytes(info)
    if need > MAX_RUN_BYTES:
        raise UsageError(
            f"a run of {batch:,} rows of this model would hold about {need / 2**30:.1f} GiB (at most "
            f"{MAX_RUN_BYTES >> 30} GiB, {MAX_RUN_BYTES // row_bytes(info):,} rows): {_FEWER_ROWS}"
        )


def row_bytes(info: contract.ModelInfo) -> int:
    """What one row of a run holds at most: three copies of its state (the step buffers and the state it starts
    from), four of its logits (the buffers, the run's, the sampler's) and its bookkeeping."""
    return 3 * info.state_bytes + 4 * 4 * info.vocab_size + ROW_BYTES


def _small(info: contract.ModelInfo) -> bool:
    """Whether a prompt-path step reads so few weight bytes that one intra-op thread beats several."""
    weight_bytes = 1 if info.weights == "int8" else 4
    return info.layers * contract.GATES[info.cell] * info.hidden * info.hidden * weight_bytes < ONE_THREAD_BELOW


def _batch(prompts: object) -> int:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise UsageError("prompts must be a non-empty list of strings")
    return len(prompts)


def _config(sampling: SamplingConfig | None, max_new_tokens: int | None) -> SamplingConfig:
    if sampling is None:
        sampling = SamplingConfig()
    elif not isinstance(sampling, SamplingConfig):
        raise UsageError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    return sampling if max_new_tokens is None else replace(sampling, max_new_tokens=max_new_tokens)

"""What one server allows: batch and queue sizes, request limits, the API key. Set once, from the command line."""

from __future__ import annotations

from dataclasses import dataclass

from rnnx.runtime.errors import UsageError
from rnnx.runtime.sampling import is_int


@dataclass(frozen=True)
class ServeConfig:
    model_name: str  # what /v1/models lists and requests name in `model`
    max_batch: int = 64  # rows stepped together at most; more wait in the queue
    max_queue: int = 256  # rows waiting at most; past it a request gets 429
    max_tokens: int = 4096  # the largest `max_tokens` a request may ask for
    max_prompt_tokens: int = 4096  # the longest prompt, in the model's tokens
    max_n: int = 16  # the most choices per prompt
    max_body_bytes: int = 1 << 20  # a larger request body is refused (413) before it is read
    api_key: str | None = None  # when set, every request needs `Authorization: Bearer <key>`
    drain_seconds: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    body_timeout: float = 30.0  # seconds from the headers to the body's last byte; later is a 408
    # prompt token positions read between two steps of the batch (rows of equal length side by side count
    # once: a position of g rows costs about a step of g rows): on the CPU a prompt token of one row costs
    # about a batch-1 step and a batch-64 step about six, so 32 tokens are ~5 batch-64 steps
    # (LSTM 1024 and RNN 256 alike) and a 4096-token prompt joins in 128 steps; a piece that short costs the
    # prompt path ~8% (LSTM 1024) to ~25% (RNN 256) of its speed against one call
    prompt_tokens_per_step: int = 32

    def __post_init__(self) -> None:
        wholes = ("max_batch", "max_tokens", "max_prompt_tokens", "max_n", "max_body_bytes", "prompt_tokens_per_step")
        for name in wholes:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be a whole number of 1 or more, got {value!r}")
        if not is_int(self.max_queue) or self.max_queue < 0:
            raise UsageError(f"max-queue must be a whole number of 0 or more, got {self.max_queue!r}")
        if not self.model_name or len(self.model_name) > 256:
            raise UsageError("the model name must be 1 to 256 characters")
        if self.api_key is not None and not self.api_key:
            raise UsageError("the API key is empty: set the variable to a secret, or leave out --api-key-env")
        if not 0 <= self.drain_seconds <= 3600:
            raise UsageError(f"drain-seconds must be from 0 to 3600, got {self.drain_seconds}")
        if not 0 < self.body_timeout <= 3600:
            raise UsageError(f"body-timeout must be more than 0 and at most 3600 seconds, got {self.body_timeout}")

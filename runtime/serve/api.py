"""The completions request as OpenAI's client libraries send it (plus rnnx's extras), checked, turned into rows.

Schema errors (a wrong type, a value out of range, an unknown field) are 422s naming the field; what needs
the model to judge (prompt length in tokens, state tokens) is a 400 naming the field; a request bigger than
the server takes at once is a 422 naming `n` or `prompt`.
"""

from __future__ import annotations

import base64
import binascii
import math

from pydantic import BaseModel, ConfigDict, Field

from rnnx.runtime import snapshot as snapshots
from rnnx.runtime.contract import GENERATION_KEYS
from rnnx.runtime.errors import RnnxError
from rnnx.runtime.model import Model
from rnnx.runtime.sampling import MAX_REPETITION_PENALTY, MAX_SEED, MAX_TEMPERATURE, RowSampler, SamplingConfig
from rnnx.runtime.serve.batcher import Row
from rnnx.runtime.serve.config import ServeConfig

MAX_STOPS = 4  # OpenAI's own limit
MAX_STOP_CHARS = 200
MAX_BIAS_ENTRIES = 300  # OpenAI's own limit
MAX_BIAS = 100.0
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


class ApiError(Exception):
    """A request the server refuses: HTTP status, the field at fault (or None), and what to do."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions. Defaults are OpenAI's (temperature 1, max_tokens 16); sampling settings a request
    leaves out come from the model file's defaults where it has them (`rnnx.generation`), as in rnn-run."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    echo: bool | None = False
    # sent by some clients at their neutral values; anything else is not supported
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None
    # rnnx's own
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, ge=1, le=MAX_REPETITION_PENALTY)
    state: str | list[str | None] | None = None  # state tokens to continue from, one per prompt
    return_state: bool = False  # each choice ends with its state token


def prompts_of(body: CompletionRequest) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise ApiError(422, "prompt: give a string or a non-empty list of strings", "prompt")
    return prompts


def plan_rows(body: CompletionRequest, model: Model, config: ServeConfig) -> list[Row]:
    """The rows of a request, prompt by prompt and choice by choice (choice index = prompt index × n + j)."""
    if body.model is not None and body.model != config.model_name:
        raise ApiError(
            404,
            f"model {body.model[:80]!r} is not served here; this server serves {config.model_name!r}",
            "model",
            "model_not_found",
        )
    _check_unsupported(body)
    prompts, n = prompts_of(body), body.n or 1
    _check_counts(body, len(prompts), n, config)
    starts = _starts(body.state, len(prompts), model)
    bias = _bias(body.logit_bias, model.info.vocab_size)
    stop = _stops(body.stop)
    # OpenAI's defaults, then the model file's own (word models carry a repetition penalty), then the request's
    given = {
        k: getattr(body, k) for k in GENERATION_KEYS if k in body.model_fields_set and getattr(body, k) is not None
    }
    settings = {**OPENAI_DEFAULTS, **model.info.generation, **given}
    try:
        sampling = SamplingConfig(**settings, stop=stop, max_new_tokens=_max_tokens(body), rng_seed=body.seed)
    except RnnxError as exc:
        raise ApiError(422, str(exc)) from None
    rows = []
    for i, (prompt, start) in enumerate(zip(prompts, starts)):
        ids = model.tokenizer.encode(prompt)
        if len(ids) > config.max_prompt_tokens:
            raise ApiError(
                400,
                f"prompt {i} is {len(ids)} tokens; this server reads at most {config.max_prompt_tokens}: shorten it",
                "prompt",
            )
        if not ids and start is None:
            raise ApiError(
                400, f"prompt {i} is empty: give at least one token of text (or a state to go on from)", "prompt"
            )
        for j in range(n):
            sampler = RowSampler(sampling, model.info.vocab_size, row=i * n + j, bias=bias)
            if start is not None:  # the state's random stream goes on in choice 0, unless a seed starts a new one;
                # the other choices draw their own (one stream for all n would make n equal texts)
                go_on = body.seed is None and j == 0
                sampler.restore(start.rng_state if go_on else None, start.seen)
            rows.append(Row(ids, sampler, sampling.max_new_tokens, stop, start, body.return_state))
    return rows


# fields some clients always send: accepted at their neutral values, refused otherwise
_NEUTRAL = {
    "presence_penalty": (0, "use repetition_penalty"),
    "frequency_penalty": (0, "use repetition_penalty"),
    "best_of": (1, "use n"),
    "logprobs": (0, "log probabilities are not returned"),
    "suffix": ("", "only text after the prompt is generated"),
}


def _check_unsupported(body: CompletionRequest) -> None:
    for name, (neutral, advice) in _NEUTRAL.items():
        value = getattr(body, name)
        if value is not None and value != neutral:
            raise ApiError(422, f"{name} is not supported (only {neutral!r} or null): {advice}", name)


def _max_tokens(body: CompletionRequest) -> int:
    return 16 if body.max_tokens is None else body.max_tokens


def _check_counts(body: CompletionRequest, prompts: int, n: int, config: ServeConfig) -> None:
    if _max_tokens(body) > config.max_tokens:
        raise ApiError(
            422, f"max_tokens is {body.max_tokens}; this server generates at most {config.max_tokens}", "max_tokens"
        )
    if n > config.max_n:
        raise ApiError(422, f"n is {n}; this server makes at most {config.max_n} choices per prompt", "n")
    if prompts * n > config.max_batch:
        param = "n" if n > 1 else "prompt"
        raise ApiError(
            422,
            f"{prompts} prompt(s) × n={n} is {prompts * n} rows; this server runs at most "
            f"{config.max_batch} at once: split the request",
            param,
        )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(
            422, f"stop: at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters", "stop"
        )
    return stops


def _bias(bias: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    if not bias:
        return None
    if len(bias) > MAX_BIAS_ENTRIES:
        raise ApiError(422, f"logit_bias: at most {MAX_BIAS_ENTRIES} entries, got {len(bias)}", "logit_bias")
    out = {}
    for key, value in bias.items():
        # ASCII digits only: str.isdigit() also takes '²' and '٣', and int() of a 5000-digit key raises
        if not (key.isascii() and key.isdigit() and len(key) <= 9) or not 0 <= int(key) < vocab:
            raise ApiError(422, f"logit_bias: key {key[:20]!r} is not a token id from 0 to {vocab - 1}", "logit_bias")
        if not (math.isfinite(value) and -MAX_BIAS <= value <= MAX_BIAS):
            raise ApiError(422, f"logit_bias: values must be from -100 to 100, got {value}", "logit_bias")
        out[int(key)] = value
    return out


def _starts(state: str | list[str | None] | None, prompts: int, model: Model) -> list[snapshots.Snapshot | None]:
    """The decoded state tokens, one per prompt (None: start fresh). Untrusted: size-capped before decoding,
    then checked by the snapshot format (checksum, fingerprint, sizes, finite numbers)."""
    if state is None:
        return [None] * prompts
    tokens = [state] if isinstance(state, str) else list(state)
    if len(tokens) != prompts:
        raise ApiError(422, f"state: give one state token (or null) per prompt: {len(tokens)} for {prompts}", "state")
    size = snapshots.expected_size(model.info)
    cap = 4 * ((size + 2) // 3)  # base64 of a snapshot of this model, exactly
    out = []
    for i, token in enumerate(tokens):
        if token is None:
            out.append(None)
            continue
        if len(token) > cap:
            raise ApiError(
                400,
                f"state {i} is {len(token)} characters; a state token of this model is {cap}: "
                "pass a token this model's server returned",
                "state",
            )
        try:
            blob = base64.b64decode(token, validate=True)
            out.append(snapshots.decode(blob, model.info, model.fingerprint))
        except (binascii.Error, ValueError, RnnxError) as exc:
            reason = str(exc) if isinstance(exc, RnnxError) else "it is not base64"
            raise ApiError(400, f"state {i} is not usable: {reason}", "state") from None
    return out

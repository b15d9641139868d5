"""The HTTP side: FastAPI routes over one `Scheduler`.

    POST /v1/completions   OpenAI's completions API; `"stream": true` sends server-sent events, then [DONE]
    GET  /v1/models        the one model served
    GET  /health           200 {"status": "ok", ...} while serving
    GET  /metrics          Prometheus text

Every refusal is OpenAI's error object, {"error": {"message", "type", "param", "code"}}, with a 4xx status;
the message says what is wrong and what to do. The `Guard` middleware answers before any routing: a missing
or wrong API key (401) and a body over the limit (413) never reach a handler; a body that does not arrive in
`body_timeout` seconds is a 408 and its connection is closed (uvicorn has no such limit: `timeout_keep_alive`
only covers the idle time between requests).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from rnnx.runtime.model import Model
from rnnx.runtime.serve.api import ApiError, CompletionRequest, plan_rows, prompts_of
from rnnx.runtime.serve.batcher import End, Failure, Job, QueueFull, Scheduler, ShuttingDown
from rnnx.runtime.serve.config import ServeConfig
from rnnx.runtime.serve.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
SHUTDOWN_RETRY_AFTER_SECONDS = 5  # this server is going away: a restarted one needs seconds to load its model
_FASTAPI_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's words for a body json.loads raised on


def error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict:
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _raw_error(status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    body = json.dumps(error_body(status, message)).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyTooLarge(HTTPException):
    """Raised while the body is read (FastAPI passes HTTPExceptions through as they are)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes: send a smaller request")


class BodyTimeout(HTTPException):
    """The body did not arrive in time; the connection closes after the 408, as a stalled one cannot be reused."""

    def __init__(self, seconds: float) -> None:
        message = f"the request body did not arrive within {seconds:g} s: send it all at once"
        super().__init__(408, message, headers={"Connection": "close"})


class Guard:
    """ASGI middleware: the API key (constant-time compare) and the body size, before anything else runs."""

    def __init__(self, app, config: ServeConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self.scheduler: Scheduler | None = None  # create_app's engine: the CLI cancels its rows when a drain ends
        self.key = None if config.api_key is None else config.api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refusal = self._refusal(headers)
        if refusal is not None:
            self.metrics.requests[str(refusal[0]["status"])] += 1
            for message in refusal:
                await send(message)
            return
        if scope["path"] == "/v1/completions":  # the body is JSON whatever it says (curl -d says a form)
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"content-type"])
            scope["headers"].append((b"content-type", b"application/json"))
        limit, seen, reading = self.config.max_body_bytes, 0, True
        deadline = time.monotonic() + self.config.body_timeout

        async def counted():
            nonlocal seen, reading
            if not reading:  # the body is in: what comes now is http.disconnect, however late
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                raise BodyTimeout(self.config.body_timeout) from None
            reading = message["type"] == "http.request" and message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests[str(message["status"])] += 1
            await send(message)

        await self.app(scope, counted, counting_send)

    def _authorized(self, header: bytes) -> bool:
        """`Bearer <key>`: the scheme in any case, any spaces between (RFC 7235); the key compared in constant time."""
        scheme, _, token = header.strip().partition(b" ")
        return hmac.compare_digest(token.strip(), self.key) and scheme.lower() == b"bearer"

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[dict, dict] | None:
        if self.key is not None and not self._authorized(headers.get(b"authorization", b"")):
            return _raw_error(
                401, "missing or wrong API key: send Authorization: Bearer <key>", [(b"www-authenticate", b"Bearer")]
            )
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return _raw_error(400, "Content-Length must be a number of bytes")
        if int(length) > self.config.max_body_bytes:
            return _raw_error(
                413, f"the request body is over {self.config.max_body_bytes} bytes: send a smaller request"
            )
        return None


def create_app(model: Model, config: ServeConfig, scheduler: Scheduler | None = None) -> Guard:
    """The server's ASGI app. `scheduler`: another engine with the same `submit`/`start`/`close` (benchmarks)."""
    metrics = scheduler.metrics if scheduler is not None else Metrics(config.max_batch)
    engine = scheduler or Scheduler(model, config.max_batch, config.max_queue, metrics, config.prompt_tokens_per_step)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="rnn-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.kind), exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405, 413 while reading
        message = str(exc.detail)
        if exc.status_code == 400 and message == _FASTAPI_PARSE_ERROR:  # nested too deeply, or not UTF-8
            message = "the body is not valid JSON (not UTF-8, or nested too deeply): send one flat JSON object"
        return JSONResponse(error_body(exc.status_code, message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _describe(exc.errors())
        return JSONResponse(error_body(status, message, param), status)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": config.model_name,
            "active_rows": metrics.active_rows,
            "queued_rows": metrics.queued_rows,
        }

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        info = model.info
        entry = {
            "id": config.model_name,
            "object": "model",
            "created": created,
            "owned_by": "rnnx",
            "rnnx": {
                "cell": info.cell,
                "layers": info.layers,
                "hidden": info.hidden,
                "vocab_size": info.vocab_size,
                "tokenizer": model.tokenizer.kind,
                "fingerprint": model.fingerprint,
            },
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        rows = plan_rows(body, model, config)
        try:
            job = engine.submit(rows)
        except QueueFull:
            message = f"the server is full ({config.max_batch} rows running, {config.max_queue} waiting): retry later"
            return JSONResponse(
                error_body(429, message, None, "rate_limit_error"),
                429,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except ShuttingDown:
            message = "the server is shutting down: retry on another server or after it restarts"
            return JSONResponse(
                error_body(503, message), 503, headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_SECONDS)}
            )
        reply = Reply(body, config.model_name, prompts_of(body))
        if body.stream:
            return StreamingResponse(
                reply.stream(job), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await reply.whole(job, request)

    guard = Guard(app, config, metrics)
    guard.scheduler = engine
    return guard


def _describe(errors: list[dict]) -> tuple[int, str, str | None]:
    """One line for pydantic's errors: the first one, naming its field."""
    first = errors[0] if errors else {"msg": "bad request", "loc": ()}
    if first.get("type") == "json_invalid":
        return 400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not loc:
        return 422, "the body must be a JSON object (send Content-Type: application/json)", None
    field = loc[0]
    path = ".".join(part for part in loc if not part.startswith(("str", "list[", "dict[", "int", "float")))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    message = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        message = "unknown field: see docs/serve.md for the fields this server takes"
    return 422, f"{path or field}: {message}{more}", field


class Reply:
    """Builds one request's response, whole or as server-sent events, from its rows' events."""

    def __init__(self, body: CompletionRequest, model_name: str, prompts: list[str]) -> None:
        self.body = body
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.n = body.n or 1
        self.prompts = prompts
        head = {"id": self.id, "object": "text_completion", "created": self.created, "model": model_name}
        self.head = head
        self._prefix = (json.dumps(head)[:-1] + ', "choices": [{"text": ').encode()  # the hot path's fixed bytes

    def _usage(self, job: Job) -> dict:
        prompt = sum(len(row.ids) for i, row in enumerate(job.rows) if i % self.n == 0)
        done = sum(row.tokens for row in job.rows)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _chunk(self, index: int, text: str) -> bytes:
        tail = f', "index": {index}, "logprobs": null, "finish_reason": null}}]}}\n\n'
        return b"data: " + self._prefix + json.dumps(text).encode() + tail.encode()

    def _final(self, index: int, end: End) -> dict:
        choice = {"text": "", "index": index, "logprobs": None, "finish_reason": end.reason}
        if end.state is not None:
            choice["state"] = base64.b64encode(end.state).decode()
        return choice

    def _event(self, payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        """Server-sent events: a chunk per piece of text, a last chunk per choice, usage if asked, [DONE]."""
        open_rows = set(range(len(job.rows)))
        try:
            if self.body.echo:
                yield b"".join(self._chunk(i, self.prompts[i // self.n]) for i in range(len(job.rows)))
            while open_rows:
                await job.wake.wait()
                job.wake.clear()
                out = []
                for i in list(open_rows):
                    events = job.rows[i].events
                    while events:
                        event = events.popleft()
                        if isinstance(event, str):
                            out.append(self._chunk(i, event))
                        elif isinstance(event, End):
                            out.append(self._event({**self.head, "choices": [self._final(i, event)]}))
                            open_rows.discard(i)
                        else:
                            out.append(self._event(error_body(500, event.message)))
                            open_rows.clear()
                            break
                if out:
                    yield b"".join(out)
            options = self.body.stream_options
            if options is not None and options.include_usage:
                yield self._event({**self.head, "choices": [], "usage": self._usage(job)})
            yield b"data: [DONE]\n\n"
        finally:
            if open_rows:  # the client went away (or the server is shutting down): free the rows now
                job.cancel()

    async def whole(self, job: Job, request: Request) -> JSONResponse:
        """The whole response at once; a client that goes away first frees its rows."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            texts, ends = await self._collect(job, gone)
        finally:
            gone.cancel()
        if ends is None:
            job.cancel()
            return JSONResponse(error_body(499, "the client closed the connection"), 499)
        failure = next((e for e in ends if isinstance(e, Failure)), None)
        if failure is not None:
            return JSONResponse(error_body(500, failure.message), 500)
        choices = []
        for i, (text, end) in enumerate(zip(texts, ends)):
            choice = self._final(i, end)
            choice["text"] = (self.prompts[i // self.n] if self.body.echo else "") + text
            choices.append(choice)
        return JSONResponse({**self.head, "choices": choices, "usage": self._usage(job)})

    async def _collect(self, job: Job, gone: asyncio.Future) -> tuple[list[str], list | None]:
        parts: list[list[str]] = [[] for _ in job.rows]
        ends: list = [None] * len(job.rows)
        while any(e is None for e in ends):
            waiting = asyncio.ensure_future(job.wake.wait())
            await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                waiting.cancel()
                return [], None
            job.wake.clear()
            for i, row in enumerate(job.rows):
                while row.events:
                    event = row.events.popleft()
                    if isinstance(event, str):
                        parts[i].append(event)
                    else:
                        ends[i] = event
        return ["".join(p) for p in parts], ends


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read: only http.disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

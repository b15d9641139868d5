"""rnn-serve's limits: a long prompt is read in pieces while the batch goes on stepping, a body that does not
arrive in time is a 408 that closes its connection, and a request that reaches a draining server is a 503.

The scheduler is driven in this process (no HTTP) where the order of its graph calls is what is checked; the
HTTP limits against a real server subprocess (test_serve's helpers). No assertion rests on how long anything
took: the scheduler's order is fixed by its loop, and the timeouts are waited for, however late they fire.
"""

from __future__ import annotations

import asyncio
import base64
import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serve import TEXT, sampling, sse_events, start_server, stop_server, write_model

from rnnx.export import export_model
from rnnx.runtime import Model
from rnnx.runtime.sampling import RowSampler
from rnnx.runtime.serve.api import CompletionRequest, plan_rows
from rnnx.runtime.serve.app import create_app
from rnnx.runtime.serve.batcher import End, Row, Scheduler
from rnnx.runtime.serve.config import ServeConfig
from rnnx.runtime.serve.metrics import Metrics
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

LONG = (TEXT * 12)[:1000]  # 1000 tokens of the character model
PIECE = 50  # prompt tokens per step in these tests: the long prompt takes 20 pieces


@pytest.fixture(scope="module", params=["steps", "prompt path"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The character model without a prompt path (prompts read a step per token) and with one (a graph call
    per piece): pieces must be exact either way."""
    folder = tmp_path_factory.mktemp("limits")
    if request.param == "steps":
        return Model(write_model(folder / "steps.onnx"), provider="cpu", threads=1)
    torch.manual_seed(0)
    tokenizer = CharTokenizer.build(TEXT)
    net = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=8, hidden=32, layers=2)).eval()
    save_model(folder / "run", net, tokenizer, {})
    model = Model(export_model(folder / "run", folder / "prompt.onnx").path, provider="cpu", threads=1)
    assert model.has_prompt_path
    return model


class Recording:
    """The model, with the shape of every prompt read noted beside the tokens the watched row had by then and
    the rows reading and stepping then (the metrics' gauges)."""

    def __init__(self, model: Model, metrics: Metrics) -> None:
        self.model, self.metrics = model, metrics
        self.watched: Row | None = None
        self.reads: list[tuple[tuple[int, int], int, int, int]] = []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def read(self, tokens: np.ndarray, state):
        seen = self.watched.tokens if self.watched is not None else -1
        self.reads.append((tokens.shape, seen, self.metrics.reading_rows, self.metrics.active_rows))
        return self.model.read(tokens, state)


def row(model: Model, prompt: str, seed: int, tokens: int, index: int = 0) -> Row:
    sampler = RowSampler(sampling(seed, tokens), model.info.vocab_size, row=index)
    return Row(model.tokenizer.encode(prompt), sampler, tokens, (), None, False)


async def until_end(job, rows: list[Row], texts: dict[int, str]) -> None:
    """Collect the rows' text into `texts` (by position) until each has ended."""
    open_rows = set(range(len(rows)))
    while open_rows:
        await job.wake.wait()
        job.wake.clear()
        for i in list(open_rows):
            while rows[i].events:
                event = rows[i].events.popleft()
                if isinstance(event, str):
                    texts[i] = texts.get(i, "") + event
                else:
                    assert isinstance(event, End), event
                    open_rows.discard(i)


def test_a_long_prompt_is_read_in_pieces_while_the_running_row_keeps_stepping(model: Model) -> None:
    metrics = Metrics(8)
    recording = Recording(model, metrics)
    scheduler = Scheduler(recording, 8, 8, metrics, prompt_tokens_per_step=PIECE)
    running = row(model, "the", 21, 100_000)
    joining = [row(model, LONG, 22, 30), row(model, LONG, 22, 30, 1), row(model, LONG[:333], 23, 30)]
    texts: dict[int, str] = {}
    running_text: dict[int, str] = {}

    async def serve() -> None:
        scheduler.start()
        first = scheduler.submit([running])
        while running.tokens < 3:  # it is in the batch and stepping
            await asyncio.sleep(0.001)
        recording.watched = running
        await until_end(scheduler.submit(joining), joining, texts)
        first.cancel()
        await until_end(first, [running], running_text)

    try:
        asyncio.run(serve())
    finally:
        scheduler.close()
    # the two 1000-token rows read side by side, 50 tokens per step; the 333-token row waits for what is left
    # of each step's 50 (nothing) and reads once they are done: not one read of a whole long prompt
    pieces = [read for read in recording.reads if read[1] >= 0]
    assert [shape for shape, *_ in pieces] == [(2, 50)] * 20 + [(1, 50)] * 6 + [(1, 33)], pieces
    assert [seen for _, seen, *_ in pieces] == list(range(pieces[0][1], pieces[0][1] + 27))  # a step between
    assert [(reading, active) for *_, reading, active in pieces] == [(3, 1)] * 20 + [(1, 3)] * 7
    assert metrics.reading_rows == 0 and metrics.active_rows == 0
    # read in 20 or 7 pieces, each row's text is the one `Model.generate` gives from one read
    assert LONG + texts[0] == model.generate(LONG, sampling=sampling(22, 30))
    assert LONG + texts[1] == model.generate_batch([LONG, LONG], sampling=sampling(22, 30))[1]
    assert LONG[:333] + texts[2] == model.generate(LONG[:333], sampling=sampling(23, 30))
    assert "the" + running_text[0] == model.generate("the", sampling=sampling(21, running.tokens))


def answers(model: Model, piece: int, bodies: list[dict]) -> list[list[tuple[str, End]]]:
    """Each request's choices (text, last event), all submitted at once to one scheduler that reads `piece`
    prompt tokens per step; every row, gauge and place is free again at the end."""
    config = ServeConfig("tiny", max_batch=8, max_queue=8, prompt_tokens_per_step=piece)
    metrics = Metrics(config.max_batch)
    scheduler = Scheduler(model, config.max_batch, config.max_queue, metrics, piece)
    plans = [plan_rows(CompletionRequest(**body), model, config) for body in bodies]
    out: list[list[tuple[str, End]]] = []

    async def serve() -> None:
        scheduler.start()
        for job, rows in [(scheduler.submit(rows), rows) for rows in plans]:
            texts, ends = [""] * len(rows), [None] * len(rows)
            while None in ends:
                await job.wake.wait()
                job.wake.clear()
                for i, each in enumerate(rows):
                    while each.events:
                        event = each.events.popleft()
                        if isinstance(event, str):
                            texts[i] += event
                        else:
                            ends[i] = event
            out.append(list(zip(texts, ends)))

    try:
        asyncio.run(serve())
    finally:
        scheduler.close()
    assert metrics.reading_rows == 0 and metrics.active_rows == 0 and scheduler.load == 0
    return out


@pytest.mark.parametrize("piece", [1, 39, 40, 41])
def test_pieces_of_any_size_give_the_text_and_state_of_one_read(model: Model, piece: int) -> None:
    """A 40-token prompt read a token per step, in pieces of one less, exactly one, or more than its length:
    choices (n = 2, a stop string), a session resumed from a state token with a new prompt, and the state token
    of a prompt with nothing generated are the same, to the byte, as when the prompt is read in one call."""
    prompt = (TEXT * 2)[:40]
    first = answers(model, 10_000, [{"prompt": "the", "max_tokens": 5, "seed": 3, "return_state": True}])
    session = base64.b64encode(first[0][0][1].state).decode()
    bodies = [
        {"prompt": prompt, "n": 2, "max_tokens": 30, "seed": 4, "stop": ["e "], "top_k": 20},
        {"prompt": prompt, "state": session, "max_tokens": 20, "seed": 5, "return_state": True},
        {"prompt": prompt, "max_tokens": 0, "seed": 6, "return_state": True},
    ]
    whole = answers(model, 10_000, bodies)
    assert [len(choices) for choices in whole] == [2, 1, 1] and whole[2][0][1].state is not None
    assert answers(model, piece, bodies) == whole


# -- HTTP ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("limits-http") / "tiny.onnx")


def http_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on `sock`, read to the end: the server must close it."""
    data = b""
    while chunk := sock.recv(65536):  # a connection the server left open runs into the socket's timeout
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(scope="module")
def impatient(model_path: Path) -> Iterator:
    server = start_server(model_path, "--body-timeout", "1", "--max-tokens", "100000000")
    yield server
    assert stop_server(server) == 0


@pytest.mark.parametrize("trickle", [False, True])
def test_a_body_that_does_not_arrive_in_time_is_408_and_its_connection_closes(impatient, trickle: bool) -> None:
    before = impatient.metric('rnnx_requests_total{code="408"}') if trickle else 0
    sock = socket.create_connection(("127.0.0.1", impatient.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n" + b'{"pro')
    end = time.monotonic() + 60
    while trickle and not select.select([sock], [], [], 0.05)[0]:  # a byte at a time until the server answers
        assert time.monotonic() < end, "no answer to a trickled body"
        sock.sendall(b" ")
    status, headers, body = http_reply(sock)
    sock.close()
    error = json.loads(body)["error"]
    assert status == 408 and headers["connection"] == "close", (status, headers)
    assert error["code"] == 408 and error["type"] == "invalid_request_error" and "within 1 s" in error["message"]
    assert impatient.complete({"prompt": "x", "max_tokens": 2})["choices"][0]["finish_reason"] == "length"
    if trickle:
        assert impatient.metric('rnnx_requests_total{code="408"}') == before + 1


def test_a_stream_goes_on_past_the_body_timeout(impatient) -> None:
    conn, resp = impatient.open_stream({"prompt": "the", "max_tokens": 100_000_000, "temperature": 0})
    events = sse_events(resp)
    past = time.monotonic() + 2  # the server's second began before the response did
    while time.monotonic() < past:
        assert next(events)["choices"][0]["finish_reason"] is None
    assert next(events)["choices"][0]["finish_reason"] is None  # still streaming: its reads are not timed
    conn.close()
    impatient.wait_for("rnnx_active_rows", 0)


def test_a_request_that_reaches_a_draining_server_is_503_with_retry_after(model_path: Path) -> None:
    server = start_server(model_path, "--drain-seconds", "600", "--max-tokens", "100000000")
    running, resp = server.open_stream({"prompt": "the", "max_tokens": 100_000_000, "temperature": 0})
    try:
        next(sse_events(resp))  # the drain waits for this stream
        body = json.dumps({"prompt": "x", "max_tokens": 1}).encode()
        late = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        late.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
        assert late.recv(100).startswith(b"HTTP/1.1 100"), "no 100 Continue"  # the app is reading its body
        server.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 60
        while True:  # the drain has begun once the server takes no new connections
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < end, "the server kept taking connections after SIGTERM"
            time.sleep(0.01)
        late.sendall(body)
        status, headers, reply = http_reply(late)
        late.close()
        error = json.loads(reply)["error"]
        assert status == 503 and headers["retry-after"] == "5", (status, headers)
        assert error["code"] == 503 and "shutting down" in error["message"]
    finally:
        running.close()  # the in-flight stream's client goes away: the drain is over
        code = stop_server(server)
    assert code == 0


def test_a_late_body_is_408_where_asyncio_has_a_timeout_error_of_its_own(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.10, which rnnx supports, raises asyncio.TimeoutError from wait_for, a class apart from the builtin
    TimeoutError (one class since 3.11): the Guard answers 408 there too, not a 500 and a traceback."""

    class OwnTimeout(Exception):  # asyncio.TimeoutError as Python 3.10 defines it
        pass

    async def times_out(awaitable, timeout: float):
        awaitable.close()
        raise OwnTimeout

    app = create_app(Model(model_path, provider="cpu", threads=1), ServeConfig("tiny", body_timeout=1))
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.Event().wait()  # the body never comes
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"x"), (b"content-length", b"20")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    monkeypatch.setattr(asyncio, "TimeoutError", OwnTimeout)
    monkeypatch.setattr(asyncio, "wait_for", times_out)
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408, sent[:1]
    assert b"did not arrive within 1 s" in b"".join(m.get("body", b"") for m in sent[1:])

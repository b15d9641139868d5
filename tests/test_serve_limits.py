"""rnn-serve's limits: a body that does not arrive in time is a 408 that closes its connection, and a request
that reaches a draining server is a 503. Against a real server subprocess (test_serve's helpers); no assertion
rests on how long anything took: the timeouts are waited for, however late they fire.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import sse_events, start_server, stop_server, write_model

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
    next(sse_events(resp))  # the drain waits for this stream
    body = json.dumps({"prompt": "x", "max_tokens": 1}).encode()
    late = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    late.sendall(head.encode())
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
    running.close()  # the in-flight stream's client goes away: the drain is over
    assert stop_server(server) == 0

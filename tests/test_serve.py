"""rnn-serve against a real server on 127.0.0.1: a subprocess started and stopped by these tests.

Texts are checked exactly against the runtime in this process (`Model.generate`, `generate_batch`, rnn-run),
so continuous batching must not change a row's text whoever shares its batch.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnx.cli.run import app as run_app
from rnnx.export.graph import build_step_graph
from rnnx.runtime import Model, SamplingConfig
from rnnx.runtime.tokenizer import CharTokenizer
from rnnx.trainer.model import RNNLM, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!"
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STARTUP_SECONDS = 90  # a loaded CI machine imports fastapi, numpy and onnxruntime slowly


def write_model(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = CharTokenizer.build(TEXT)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=len(tokenizer.vocab), embed=8, hidden=hidden, layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier than the default init: varied text, not one character forever
    path.write_bytes(build_step_graph(model.eval(), tokenizer, 17).SerializeToString())
    return path


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    key: dict | None = None  # headers /metrics needs (the API key)

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None, raw: bytes = None):
        """(status, headers, parsed JSON or text) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        kind = resp.getheader("content-type", "")
        return resp.status, resp, json.loads(text) if kind.startswith("application/json") else text

    def complete(self, body: dict, headers: dict | None = None) -> dict:
        status, _, reply = self.request("POST", "/v1/completions", body, headers)
        assert status == 200, reply
        return reply

    def open_stream(self, body: dict, headers: dict | None = None) -> tuple[http.client.HTTPConnection, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}).encode(), headers or {})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return conn, resp

    def stream(self, body: dict) -> list:
        """Every event of a streamed completion: parsed chunks, then the string "[DONE]"."""
        conn, resp = self.open_stream(body)
        events = list(sse_events(resp))
        conn.close()
        return events

    def metric(self, name: str) -> float:
        _, _, text = self.request("GET", "/metrics", headers=self.key)
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))

    def wait_for(self, name: str, value: float, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while self.metric(name) != value:
            assert time.monotonic() < end, f"{name} never became {value}"
            time.sleep(0.01)


def sse_events(resp) -> Iterator:
    for line in resp:
        line = line.decode().rstrip("\n")
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def streamed_texts(events: list) -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events:
        if isinstance(event, dict):
            for choice in event["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *args: str, env: dict | None = None) -> Server:
    """rnn-serve in a subprocess, ready: /health answered (polled with a deadline, never a fixed sleep)."""
    for _ in range(3):  # the free port may be taken between choosing it and binding it: choose again
        port = free_port()
        command = [sys.executable, "-m", "rnnx.runtime.serve", str(model), "--port", str(port), "--threads", "1"]
        proc = subprocess.Popen([*command, *args], env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
        server = Server(proc, port)
        end = time.monotonic() + STARTUP_SECONDS
        while proc.poll() is None and time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server
            except OSError:
                time.sleep(0.05)
        stop_server(server)
    raise AssertionError(f"rnn-serve did not start: {proc.stderr.read().decode()}")


def stop_server(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.stderr.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("serve") / "tiny.onnx")


@pytest.fixture(scope="module")
def model(model_path: Path) -> Model:
    return Model(model_path, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[Server]:
    server = start_server(model_path)
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def strict(model_path: Path) -> Iterator[Server]:
    """One row at a time, one waiting, long generations allowed, an API key."""
    args = ["--max-batch", "1", "--max-queue", "1", "--max-tokens", "1000000", "--api-key-env", "RNNX_TEST_KEY"]
    server = start_server(model_path, *args, env={"RNNX_TEST_KEY": KEY})
    server.key = AUTH
    yield server
    assert stop_server(server) == 0


def sampling(seed: int, tokens: int, **kw) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_k=12, rng_seed=seed, max_new_tokens=tokens, **kw)


# -- completions ---------------------------------------------------------------------------------------------------


def test_greedy_text_equals_rnn_run(server: Server, model_path: Path) -> None:
    reply = server.complete({"model": "tiny", "prompt": "the fox", "max_tokens": 30, "temperature": 0})
    assert reply["object"] == "text_completion" and reply["model"] == "tiny" and reply["id"].startswith("cmpl-")
    assert reply["choices"][0]["finish_reason"] == "length" and reply["choices"][0]["index"] == 0
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 30, "total_tokens": 37}
    run = CliRunner().invoke(run_app, ["--model", str(model_path), "--seed", "the fox", "--len", "37"])
    assert run.exit_code == 0, run.output
    assert run.stdout == "the fox" + reply["choices"][0]["text"] + "\n"


def test_stream_joins_to_the_plain_reply_and_to_generate(server: Server, model: Model) -> None:
    body = {"prompt": "lazy", "max_tokens": 40, "temperature": 1.0, "top_k": 12, "seed": 11}
    plain = server.complete(body)["choices"][0]["text"]
    events = server.stream({**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 40
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-3])
    assert streamed_texts(events)[0] == plain
    assert "lazy" + plain == model.generate("lazy", sampling=sampling(11, 40))


def test_choices_of_prompts_and_n_equal_a_batch_run(server: Server, model: Model) -> None:
    reply = server.complete({"prompt": ["dog", "box of"], "n": 2, "max_tokens": 20, "top_k": 12, "seed": 3})
    texts = [c["text"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
    with model.generator(["dog", "dog", "box of", "box of"], sampling(3, 20)) as run:
        expected = ["" for _ in range(4)]
        while not run.done:
            expected = [a + b for a, b in zip(expected, run.step())]
    assert texts == expected
    assert reply["usage"]["prompt_tokens"] == 3 + 6


def test_stop_string_ends_the_choice(server: Server, model: Model) -> None:
    full = model.generate("jumps", sampling=sampling(5, 60))[len("jumps") :]
    stop = full[10:12]
    reply = server.complete({"prompt": "jumps", "max_tokens": 60, "top_k": 12, "seed": 5, "stop": stop})
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == full[: full.index(stop)]


def test_echo_logit_bias_and_repetition_penalty(server: Server, model: Model) -> None:
    reply = server.complete({"prompt": "pack", "max_tokens": 8, "temperature": 0, "echo": True})
    assert reply["choices"][0]["text"] == model.generate("pack", 8)
    banned = model.tokenizer.encode(model.generate("pack", 1)[-1])[0]
    biased = server.complete({"prompt": "pack", "max_tokens": 1, "temperature": 0, "logit_bias": {str(banned): -100}})
    assert model.tokenizer.encode(biased["choices"][0]["text"]) != [banned]
    body = {"prompt": "pack", "max_tokens": 30, "top_k": 12, "seed": 2, "repetition_penalty": 1.5}
    expected = model.generate("pack", sampling=sampling(2, 30, repetition_penalty=1.5))
    assert "pack" + server.complete(body)["choices"][0]["text"] == expected


def test_64_concurrent_streams_give_their_own_texts_and_the_batch_grows(server: Server, model: Model) -> None:
    def body(i: int) -> dict:
        return {"prompt": TEXT[i % 40 : i % 40 + 1 + i % 7], "max_tokens": 300, "top_k": 12, "seed": 100 + i}

    alone = streamed_texts(server.stream(body(7)))[0]
    texts: dict[int, str] = {}
    start = threading.Barrier(64)

    def client(i: int) -> None:
        start.wait()
        texts[i] = streamed_texts(server.stream(body(i)))[0]

    before = server.metric('rnnx_batch_size_bucket{le="8"}'), server.metric("rnnx_batch_size_count")
    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(texts) == 64
    for i in range(64):
        prompt = body(i)["prompt"]
        assert prompt + texts[i] == model.generate(prompt, sampling=sampling(100 + i, 300)), i
    assert texts[7] == alone  # the same request and seed, alone or among 63 others
    big = (server.metric("rnnx_batch_size_count") - before[1]) - (
        server.metric('rnnx_batch_size_bucket{le="8"}') - before[0]
    )
    assert big > 0, "no step ran more than 8 rows at once"
    server.wait_for("rnnx_active_rows", 0)


# -- sessions -----------------------------------------------------------------------------------------------------


def test_a_session_continues_on_another_server_process(server: Server, strict: Server) -> None:
    body = {"prompt": "the lazy", "top_k": 12, "seed": 9}
    whole = server.complete({**body, "max_tokens": 50})["choices"][0]["text"]
    first = server.complete({**body, "max_tokens": 20, "return_state": True})["choices"][0]
    state = first["state"]
    then = {"prompt": "", "max_tokens": 30, "top_k": 12, "state": state, "return_state": True}
    second = strict.complete(then, AUTH)["choices"][0]
    assert first["text"] + second["text"] == whole
    again = server.stream(then)  # the same state token, streamed on the first server: the same text and state
    assert streamed_texts(again)[0] == second["text"]
    assert again[-2]["choices"][0]["state"] == second["state"]


def test_state_tokens_that_are_not_this_models_are_400s(server: Server, tmp_path: Path) -> None:
    other = Model(write_model(tmp_path / "other.onnx", seed=1), provider="cpu")
    with other.generator(["the"], SamplingConfig(max_new_tokens=0)) as run:
        foreign = base64.b64encode(run.snapshot(0)).decode()
    good = server.complete({"prompt": "the", "max_tokens": 0, "return_state": True})["choices"][0]["state"]
    blob = bytearray(base64.b64decode(good))
    blob[120] ^= 1
    cases = {
        foreign: "another model",
        base64.b64encode(bytes(blob)).decode(): "checksum",
        good[:-8]: "not usable",
        "not base64!": "not base64",
        "A" * 100_000: "characters",
    }
    for token, words in cases.items():
        status, _, reply = server.request("POST", "/v1/completions", {"prompt": "x", "state": token})
        assert status == 400 and reply["error"]["param"] == "state" and words in reply["error"]["message"], reply
    assert server.complete({"prompt": "x", "max_tokens": 2, "state": good})["choices"][0]["text"]


def test_n_choices_from_one_state_token_differ_and_the_first_goes_on(server: Server) -> None:
    body = {"prompt": "the", "top_k": 12, "seed": 6}
    whole = server.complete({**body, "max_tokens": 45})["choices"][0]["text"]
    first = server.complete({**body, "max_tokens": 5, "return_state": True})["choices"][0]
    then = {"prompt": "", "max_tokens": 40, "n": 3, "top_k": 12, "state": first["state"]}
    choices = server.complete(then)["choices"]
    texts = [c["text"] for c in choices]
    assert first["text"] + texts[0] == whole and len(set(texts)) == 3, texts


# -- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b'{"prompt": "x",', 400, None, "not valid JSON"),
        (b'["x"]', 422, None, "JSON object"),
        ({"prompt": "x", "max_tokens": 5000}, 422, "max_tokens", "at most 4096"),
        ({"prompt": "x", "max_tokens": -1}, 422, "max_tokens", "greater than or equal"),
        ({"prompt": "x", "max_tokens": "5"}, 422, "max_tokens", "valid integer"),
        ({"prompt": "x", "temperature": -0.5}, 422, "temperature", "greater than or equal"),
        ({"prompt": "x", "top_p": 0}, 422, "top_p", "greater than 0"),
        ({"prompt": "x", "n": 17}, 422, "n", "at most 16"),
        ({"prompt": ["x"] * 40, "n": 2}, 422, "n", "80 rows"),
        ({"prompt": []}, 422, "prompt", "non-empty"),
        ({"prompt": ""}, 400, "prompt", "empty"),
        ({"prompt": "x" * 5000}, 400, "prompt", "5000 tokens"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop", "at most 4"),
        ({"prompt": "x", "logit_bias": {"999": 1}}, 422, "logit_bias", "token id"),
        ({"prompt": "x", "logit_bias": {"1": 500}}, 422, "logit_bias", "-100 to 100"),
        ({"prompt": "x", "logit_bias": {"\u00b2": 1}}, 422, "logit_bias", "token id"),  # isdigit, not int()
        ({"prompt": "x", "logit_bias": {"\u0663": 1}}, 422, "logit_bias", "token id"),  # Arabic-Indic 3
        ({"prompt": "x", "logit_bias": {"9" * 5000: 1}}, 422, "logit_bias", "token id"),  # past int()'s digit limit
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "not valid JSON"),  # too deep
        (b'{"prompt": "\xff"}', 400, None, "not valid JSON"),  # not UTF-8
        ({"prompt": "x", "presence_penalty": 0.5}, 422, "presence_penalty", "not supported"),
        ({"prompt": "x", "colour": "red"}, 422, "colour", "unknown field"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model", "serves 'tiny'"),
        ({"prompt": "x", "seed": 2**64}, 422, "seed", "less than or equal"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(server: Server, body, status: int, param, words: str) -> None:
    raw = body if isinstance(body, bytes) else None
    code, _, reply = server.request("POST", "/v1/completions", None if raw else body, raw=raw)
    assert code == status and reply["error"]["param"] == param and words in reply["error"]["message"], reply
    assert server.complete({"prompt": "x", "max_tokens": 1})["choices"][0]["finish_reason"] == "length"


def test_oversized_body_is_413(server: Server) -> None:
    for length, chunked in ((2 << 20, False), (None, True)):  # said up front, or found while reading
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Content-Type", "application/json")
        conn.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length))))
        conn.endheaders()
        piece = b"x" * 65536
        for _ in range(17 if chunked else 0):  # just over 1 MiB: what is left unread fits the socket buffers
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        resp = conn.getresponse()
        assert resp.status == 413 and "over 1048576 bytes" in json.loads(resp.read())["error"]["message"]
        conn.close()
    assert server.complete({"prompt": "x", "max_tokens": 1})["choices"]


def test_models_health_and_metrics(server: Server, model: Model) -> None:
    status, _, models = server.request("GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["rnnx"]["fingerprint"] == model.fingerprint
    status, _, health = server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, resp, text = server.request("GET", "/metrics")
    assert status == 200 and resp.getheader("content-type").startswith("text/plain")
    for name in (
        "rnnx_requests_total",
        "rnnx_tokens_generated_total",
        "rnnx_active_rows",
        "rnnx_reading_rows",
        "rnnx_queue_length",
        "rnnx_batch_size_bucket",
        "rnnx_time_to_first_token_seconds_bucket",
        "rnnx_inter_token_latency_seconds_bucket",
    ):
        assert f"\n{name}" in text, name
    assert server.metric('rnnx_requests_total{code="200"}') > 0


def test_api_key_is_required(strict: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        for method, path in (("GET", "/health"), ("POST", "/v1/completions"), ("GET", "/metrics")):
            status, resp, reply = strict.request(method, path, {"prompt": "x"}, headers)
            assert status == 401 and "API key" in reply["error"]["message"] and resp.getheader("www-authenticate")
    for header in (f"Bearer {KEY}", f"bearer  {KEY}", f" BEARER {KEY} "):  # the scheme's case and spaces are free
        assert strict.request("GET", "/health", headers={"Authorization": header})[0] == 200, header


def test_disconnect_frees_the_row_and_a_full_queue_is_429(strict: Server) -> None:
    long = {"prompt": "the", "max_tokens": 1_000_000, "temperature": 0}
    first, resp = strict.open_stream(long, AUTH)
    next(sse_events(resp))  # it is running
    second, resp2 = strict.open_stream(long, AUTH)  # max batch 1: it waits in the queue (max 1)
    strict.wait_for("rnnx_queue_length", 1)
    status, resp, reply = strict.request("POST", "/v1/completions", {"prompt": "x"}, AUTH)
    assert status == 429 and resp.getheader("Retry-After") == "1" and "retry later" in reply["error"]["message"]
    second.close()  # the waiting client goes away: its place in the queue is free at once, while the batch is full
    strict.wait_for("rnnx_queue_length", 0)
    third, resp3 = strict.open_stream(long, AUTH)
    strict.wait_for("rnnx_queue_length", 1)
    first.close()  # the running client goes away: its row leaves, the waiting one runs
    next(sse_events(resp3))
    strict.wait_for("rnnx_queue_length", 0)
    third.close()
    strict.wait_for("rnnx_active_rows", 0)
    assert strict.complete({"prompt": "x", "max_tokens": 3}, AUTH)["choices"][0]["finish_reason"] == "length"


def test_sigterm_finishes_in_flight_streams_and_exits_0(model_path: Path) -> None:
    server = start_server(model_path)
    conn, resp = server.open_stream({"prompt": "the", "max_tokens": 3000, "temperature": 0})
    events = sse_events(resp)
    first = next(events)
    server.proc.send_signal(signal.SIGTERM)
    rest = list(events)
    conn.close()
    assert rest[-1] == "[DONE]" and len(streamed_texts([first, *rest])[0]) == 3000
    assert stop_server(server) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_sigterm_past_the_drain_cancels_running_and_waiting_rows_cleanly(model_path: Path) -> None:
    args = ["--max-batch", "1", "--max-queue", "1", "--max-tokens", "100000000", "--drain-seconds", "1"]
    server = start_server(model_path, *args)
    long = {"prompt": "the", "max_tokens": 100_000_000, "temperature": 0}
    running, resp = server.open_stream(long)
    events = sse_events(resp)
    next(events)
    waiting, resp2 = server.open_stream(long)
    server.wait_for("rnnx_queue_length", 1)
    server.proc.send_signal(signal.SIGTERM)
    for stream in (list(events), list(sse_events(resp2))):  # each ends properly, not with a dropped connection
        assert stream[-1] == "[DONE]" and stream[-2]["choices"][0]["finish_reason"] == "cancelled", stream[-2:]
    running.close()
    waiting.close()
    assert server.proc.wait(timeout=60) == 0
    log = server.proc.stderr.read().decode()
    assert "Traceback" not in log and "ERROR" not in log, log
    stop_server(server)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text, checked line by line: every sample belongs to a family declared by HELP and TYPE, and
    every histogram's buckets are cumulative, end at +Inf and agree with its _count."""
    kinds: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind in ("counter", "gauge", "histogram") and name not in kinds, line
            kinds[name] = kind
            continue
        match = re.fullmatch(r'([a-z_]+)(\{[a-z]+="[^"]*"\})? (\S+)', line)
        assert match, f"not a sample line: {line!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
        assert match.group(1) in kinds or kinds.get(family) == "histogram", line
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    for name in (n for n, k in kinds.items() if k == "histogram"):
        buckets = [(k, v) for k, v in samples.items() if k.startswith(f'{name}_bucket{{le="')]
        bounds = [float(k.split('"')[1]) for k, _ in buckets]
        counts = [v for _, v in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), name
        assert counts == sorted(counts) and counts[-1] == samples[f"{name}_count"], name
    return samples


def test_metrics_count_what_happened_and_are_well_formed(server: Server) -> None:
    def read() -> dict[str, float]:
        status, _, text = server.request("GET", "/metrics")
        assert status == 200
        return parse_metrics(text)

    server.wait_for("rnnx_active_rows", 0)
    before = read()
    server.complete({"prompt": "box", "max_tokens": 5, "n": 2, "temperature": 0})
    assert server.request("POST", "/v1/completions", {"prompt": 5})[0] == 422
    after = read()

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("rnnx_tokens_generated_total") == 10 and grew("rnnx_prompt_tokens_total") == 6
    assert grew("rnnx_batch_size_count") == 5 and grew('rnnx_batch_size_bucket{le="1"}') == 0  # 5 steps of 2 rows
    assert grew("rnnx_time_to_first_token_seconds_count") == 2  # one first token per row
    assert grew("rnnx_inter_token_latency_seconds_count") == 8  # the other four tokens of each row
    assert grew('rnnx_requests_total{code="422"}') == 1 and grew('rnnx_requests_total{code="200"}') >= 2
    assert after["rnnx_active_rows"] == 0 and after["rnnx_queue_length"] == 0


def test_every_option_at_once_gives_the_same_choices_alone_and_among_others(server: Server) -> None:
    body = {
        "prompt": ["fox", "dog"],
        "n": 3,
        "max_tokens": 60,
        "seed": 77,
        "top_k": 12,
        "top_p": 0.9,
        "repetition_penalty": 1.3,
        "logit_bias": {"3": 5, "4": -100},
        "stop": ["zz", "k"],
    }
    alone = server.complete(body)
    others = [
        threading.Thread(target=server.complete, args=({"prompt": "x" * (i + 1), "max_tokens": 200},)) for i in range(4)
    ]
    for t in others:
        t.start()
    among = server.stream(body)
    for t in others:
        t.join(60)
    texts = streamed_texts(among)
    assert [texts[i] for i in range(6)] == [c["text"] for c in alone["choices"]]
    reasons = {c["index"]: c["finish_reason"] for e in among[:-1] for c in e["choices"] if c["finish_reason"]}
    assert reasons == {c["index"]: c["finish_reason"] for c in alone["choices"]}
    assert "stop" in reasons.values()  # the stop strings took part


def test_a_session_that_a_stop_string_ended_goes_on_after_the_stop(server: Server) -> None:
    body = {"prompt": "the lazy", "top_k": 12, "seed": 4}
    whole = server.complete({**body, "max_tokens": 80})["choices"][0]["text"]
    stop = whole[30:32]
    first = server.complete({**body, "max_tokens": 80, "stop": stop, "return_state": True})["choices"][0]
    assert first["finish_reason"] == "stop" and first["text"] == whole[: whole.index(stop)]
    then = server.complete({"prompt": "", "max_tokens": 20, "top_k": 12, "state": first["state"]})["choices"][0]
    assert first["text"] + stop + then["text"] == whole[: len(first["text"]) + len(stop) + 20]


def test_a_prompt_at_the_length_limit_is_read_and_one_token_more_is_refused(server: Server) -> None:
    reply = server.complete({"prompt": "x" * 4096, "max_tokens": 1})
    assert reply["usage"]["prompt_tokens"] == 4096 and reply["choices"][0]["finish_reason"] == "length"
    status, _, refused = server.request("POST", "/v1/completions", {"prompt": "x" * 4097})
    assert status == 400 and refused["error"]["param"] == "prompt" and "4097 tokens" in refused["error"]["message"]


def test_a_prompt_longer_than_a_piece_gives_the_text_of_generate_beside_a_running_stream(
    server: Server, model: Model
) -> None:
    long = (TEXT * 20)[:1500]  # read 32 tokens per step (the default): 47 pieces, the running row stepping between
    conn, resp = server.open_stream({"prompt": "the", "max_tokens": 4000, "top_k": 12, "seed": 8})
    next(sse_events(resp))
    reply = server.complete({"prompt": [long, long[:700]], "max_tokens": 40, "top_k": 12, "seed": 12})
    conn.close()
    texts = [c["text"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
    assert [long + texts[0], long[:700] + texts[1]] == model.generate_batch([long, long[:700]], 40, sampling(12, 40))
    assert reply["usage"]["prompt_tokens"] == 2200
    server.wait_for("rnnx_active_rows", 0)


def test_many_clients_leaving_mid_stream_free_every_row_and_a_stuck_body_blocks_nobody(server: Server) -> None:
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # says 100 bytes, sends 5, waits
    stuck.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"pro')
    long = {"prompt": "the", "max_tokens": 4000, "top_k": 12, "seed": 1}
    streams = [server.open_stream(long) for _ in range(16)]
    for _, resp in streams:
        next(sse_events(resp))
    for conn, _ in streams:
        conn.close()
    server.wait_for("rnnx_active_rows", 0)
    server.wait_for("rnnx_queue_length", 0)
    assert server.complete({"prompt": "x", "max_tokens": 2})["choices"][0]["finish_reason"] == "length"
    stuck.close()

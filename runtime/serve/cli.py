"""rnn-serve: serve an exported .onnx model over HTTP, OpenAI-compatible, with continuous batching.

    rnn-serve model.onnx --port 8000 --max-batch 64 --api-key-env RNNX_API_KEY

argparse, not typer: the runtime-only install (`pip install "rnnx-runtime[serve]"`) has no typer, and this one
command is the same in both installs. Bad input is one `error:` line and exit code 2 (usage) or 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130
CANCEL_GRACE_SECONDS = 5.0  # after the drain, for cancelled requests to send their last chunk and [DONE]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnn-serve", description="Serve an rnnx .onnx model: OpenAI-compatible completions, continuous batching."
    )
    p.add_argument("model", type=Path, help="exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=64, help="rows stepped together at most (default 64)")
    p.add_argument("--max-queue", type=int, default=256, help="rows waiting at most; past it 429 (default 256)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads; 0 lets it choose (default)")
    p.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"), help="execution provider")
    p.add_argument("--api-key-env", metavar="VAR", help="require `Authorization: Bearer $VAR` on every request")
    p.add_argument("--model-name", help="the model's id in the API (default: the file name without .onnx)")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask (4096)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest prompt in tokens (4096)")
    p.add_argument("--max-n", type=int, default=16, help="most choices per prompt (16)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (1 MiB)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, time for requests to finish (30)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request body; then 408 (30)")
    p.add_argument(
        "--prompt-tokens-per-step",
        type=int,
        default=32,
        help="prompt tokens read between two steps of the batch (rows of equal length side by side count once): "
        "larger, long prompts join sooner; smaller, running streams stall less while they are read (32)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs time per request)")
    p.add_argument("-v", "--verbose", action="store_true", help="show rnnx's and uvicorn's INFO logs")
    p.add_argument("--version", action="version", version=f"rnnx {_version()}")
    return p


def _version() -> str:
    from rnnx.runtime import __version__

    return __version__


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("rnnx").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        import uvicorn

        from rnnx.runtime.serve.app import create_app
    except ImportError as exc:
        _fail(f'rnn-serve needs fastapi and uvicorn ({exc.name} is missing): pip install "rnnx-runtime[serve]"')
    from rnnx.runtime import Model, RnnxError, UsageError
    from rnnx.runtime.serve.config import ServeConfig

    try:
        config = ServeConfig(
            model_name=args.model_name or args.model.stem,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_tokens=args.max_tokens,
            max_prompt_tokens=args.max_prompt_tokens,
            max_n=args.max_n,
            max_body_bytes=args.max_body_bytes,
            api_key=_api_key(args.api_key_env),
            drain_seconds=args.drain_seconds,
            body_timeout=args.body_timeout,
            prompt_tokens_per_step=args.prompt_tokens_per_step,
        )
        model = Model(args.model, provider=args.provider, threads=args.threads, spin=False)
    except UsageError as exc:
        _fail(str(exc), USAGE_EXIT)
    except RnnxError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or args.model}")
    app = create_app(model, config)
    server = _Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="info" if args.verbose else "warning",
            access_log=args.access_log,
            timeout_graceful_shutdown=args.drain_seconds + CANCEL_GRACE_SECONDS,
            lifespan="on",
        ),
        app.scheduler,
        args.drain_seconds,
    )
    print(
        f"rnn-serve: {config.model_name} on http://{args.host}:{args.port} (max batch {config.max_batch})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    if not server.started:  # the port is taken, or the address cannot be bound: uvicorn said why
        sys.exit(ERROR_EXIT)


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        from rnnx.runtime import UsageError

        raise UsageError(f"--api-key-env {variable}: the variable is not set or empty; export the key in it")
    return key


def _fail(message: str, code: int = ERROR_EXIT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM that shut it down gracefully ends the process with 0, not the signal."""

        def __init__(self, config, scheduler, drain: float) -> None:
            super().__init__(config)
            self.scheduler, self.drain = scheduler, drain

        async def shutdown(self, sockets=None) -> None:
            # when the drain ends, the rows still running or waiting are cancelled by the scheduler, so each
            # request ends properly (finish_reason "cancelled", then [DONE]) before uvicorn's own deadline,
            # which would cut the connections and log a traceback per request; from now on a request that reaches
            # the app (its connection was open before) is a 503, not queued
            self.scheduler.drain()
            timer = asyncio.get_running_loop().call_later(self.drain, self.scheduler.cancel_all)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server


def _Server(config, scheduler, drain: float):  # noqa: N802 (a class made on first use: uvicorn is imported late)
    return _server_class()(config, scheduler, drain)


if __name__ == "__main__":
    main()

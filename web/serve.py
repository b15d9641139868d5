"""Serve the demo page and a folder of models from 127.0.0.1 (standard library only).

    python3 web/serve.py --models artifacts                # http://127.0.0.1:8000/?model=models/default/model.onnx
    python3 web/serve.py --models artifacts --isolated     # COOP/COEP headers: wasm threads > 1 allowed

`web/` is served at `/` and the `--models` folder at `/models/`. Any static server works for one thread
(`python3 -m http.server -d web` with the model copied into web/); this one also sends the cross-origin
isolation headers that onnxruntime-web needs for more than one wasm thread, and the right type for `.mjs` and
`.wasm` on every Python. The tests and bench/web.py use `serve()` from here.
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEB = Path(__file__).resolve().parent
TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}


class Handler(SimpleHTTPRequestHandler):
    """Files of `web/` at /, files of the models folder at /models/; nothing outside them."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def __init__(self, *args, models: Path | None, isolated: bool, **kwargs) -> None:
        self.models = models
        self.isolated = isolated
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path: str) -> str:
        if self.models is not None and (path == "/models" or path.startswith("/models/")):
            inner = super().translate_path(path[len("/models") :] or "/")  # checked against web/, then moved
            return str(self.models / Path(inner).relative_to(WEB))
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.isolated:  # cross-origin isolation: SharedArrayBuffer, so wasm threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests and benchmarks print their own
        pass


@contextmanager
def serve(models: Path | None = None, *, isolated: bool = False, port: int = 0) -> Iterator[str]:
    """A server in a background thread for the `with` block; yields its base URL (port 0: any free port)."""
    handler = functools.partial(Handler, models=models.resolve() if models else None, isolated=isolated)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="a folder served at /models/ (e.g. artifacts)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--isolated", action="store_true", help="send COOP/COEP headers (wasm threads)")
    args = parser.parse_args()
    if args.models is not None and not args.models.is_dir():
        parser.error(f"--models {args.models} is not a folder")
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        parser.error(f"{WEB / 'node_modules'} is missing: run `npm ci` in {WEB} first")
    with serve(args.models, isolated=args.isolated, port=args.port) as url:
        print(f"serving {WEB} at {url}" + (f" and {args.models} at {url}models/" if args.models else ""), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

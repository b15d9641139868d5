"""A screenshot of the demo page after it generated from a seed, in headless Chromium (docs/web-shakespeare.png).

    .venv/bin/python web/screenshot.py artifacts/shakespeare/model.onnx docs/web-shakespeare.png \\
        --seed "ROMEO:" --len 500 --temperature 0.8 --rng-seed 1

Needs Debian's chromium (or RNNX_CHROMIUM), Playwright's Python package and `npm ci` in web/.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

WEB = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported .onnx file")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--seed", default="ROMEO:")
    parser.add_argument("--len", type=int, default=500)
    parser.add_argument("--temperature", default="0.8")
    parser.add_argument("--rng-seed", default="1")
    args = parser.parse_args()
    chromium = os.environ.get("RNNX_CHROMIUM") or shutil.which("chromium")
    if not chromium or not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        parser.error("needs chromium (or RNNX_CHROMIUM) and `npm ci` in web/")
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file")
    from playwright.sync_api import sync_playwright

    spec = importlib.util.spec_from_file_location("rnnx_web_serve", WEB / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    query = {
        "model": f"models/{args.model.name}",
        "seed": args.seed,
        "len": args.len,
        "temperature": args.temperature,
        "rng_seed": args.rng_seed,
    }
    with serve.serve(args.model.parent) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1040, "height": 900})
        page.goto(url + "index.html?" + urlencode(query))
        page.wait_for_selector("#output[data-done], #output[data-error]", state="attached", timeout=300_000)
        error = page.get_attribute("#output", "data-error")
        if error:
            raise SystemExit(f"error: the page failed: {error}")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

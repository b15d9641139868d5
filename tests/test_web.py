"""web/: the demo page and rnnx.js in a real headless Chromium, against the Python runtime.

Needs Debian's `chromium` (or RNNX_CHROMIUM naming a Chromium binary), Playwright's Python package (the driver
only: no browser is downloaded) and `npm ci` run in web/; without them every test here skips and says why.
`.ci/run` installs all three. The page is served by web/serve.py from 127.0.0.1, the models from a temp folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from rnnx.cli import run as run_cli
from rnnx.export import export_model
from rnnx.runtime import Model
from rnnx.runtime.onnxfile import extract
from rnnx.runtime.tokenizer import CharTokenizer, WordTokenizer
from rnnx.trainer.checkpoint import save_model
from rnnx.trainer.model import RNNLM, ModelConfig

WEB = Path(__file__).resolve().parent.parent / "web"
CHAR_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nO Romeo, Romeo! wherefore art thou?\n"
WORD_TEXT = (
    'The cat sat. "Where is the dog?" she asked. The dog ran, and the cat ran too! Don\'t you see it? '
    "I saw a well-known (old) dog; it's 10% faster. Did the dog sit? No, the dog ran: it ran away."
)
DONE = "#output[data-done], #output[data-error]"


def _chromium() -> str | None:
    named = os.environ.get("RNNX_CHROMIUM")
    return named if named and Path(named).is_file() else shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    if _chromium() is None:
        return "no Chromium: apt-get install chromium (or set RNNX_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "no Playwright: pip install -e '.[dev]'"
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        return "web/node_modules is missing: run `npm ci` in web/"
    return None


pytestmark = [
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _serve_module():
    spec = importlib.util.spec_from_file_location("rnnx_web_serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_model(out: Path, tokenizer, cell: str, layers: int, seed: int = 0) -> Path:
    """A model with lively random weights (parity does not need training), saved and exported as rnn-export does."""
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(cell=cell, vocab_size=len(tokenizer.vocab), embed=16, hidden=48, layers=layers))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # varied tokens, not one character forever
    save_model(out, model.eval(), tokenizer, {})
    return export_model(out, opset=17).path


def _foreign_onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "foreign",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save_model(helper.make_model(graph), path)


@pytest.fixture(scope="module")
def models(default_model_dir: Path, default_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder served at /models/: good models and bad files, each under the name the tests use."""
    root = tmp_path_factory.mktemp("web-models")
    shutil.copy(default_onnx, root / "default.onnx")
    export_model(default_model_dir, root / "int8.onnx", quantize="int8")
    shutil.copy(_random_model(root / "char", CharTokenizer.build(CHAR_TEXT), "lstm", 2), root / "char.onnx")
    shutil.copy(_random_model(root / "gru", CharTokenizer.build(CHAR_TEXT), "gru", 1, seed=1), root / "gru.onnx")
    shutil.copy(_random_model(root / "word", WordTokenizer.build(WORD_TEXT), "lstm", 1), root / "word.onnx")
    # the same char model without its prompt path (a version-1 style file: prompts read step by step)
    steps = extract((root / "char.onnx").read_bytes(), ["logits", "h_next", "c_next"], "char")
    (root / "steps.onnx").write_bytes(steps)
    (root / "notonnx.onnx").write_text("this is a text file, not a model\n")
    _foreign_onnx(root / "foreign.onnx")
    proto = onnx.load(str(default_onnx))
    onnx.save_model(
        proto, root / "external.onnx", save_as_external_data=True, location="external.bin", size_threshold=0
    )
    return root


@pytest.fixture(scope="module")
def site(models: Path) -> Iterator[str]:
    with _serve_module().serve(models) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        launched = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """One page load, with everything the console said."""

    def __init__(self, browser, site: str) -> None:
        self.page = browser.new_page()
        self.site = site
        self.uncaught: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda err: self.uncaught.append(str(err)))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))

    def open(self, **query: object) -> Page:
        self.page.goto(self.site + "index.html?" + urlencode(query))
        self.page.wait_for_selector(DONE, state="attached", timeout=60_000)
        return self

    @property
    def output(self) -> str:
        return self.page.eval_on_selector("#output", "e => e.textContent")

    @property
    def error(self) -> str | None:
        return self.page.get_attribute("#output", "data-error")

    def assert_clean(self) -> None:
        """No uncaught exception; console errors only for the page's own refused fetches (404s)."""
        assert self.uncaught == []
        assert [e for e in self.console_errors if "Failed to load resource" not in e] == []


@pytest.fixture
def page(browser, site: str) -> Iterator[Page]:
    opened = Page(browser, site)
    yield opened
    opened.page.close()


def rnn_run(model: Path, *args: str) -> str:
    """What `rnn-run` prints, without its final newline."""
    result = CliRunner().invoke(run_cli.app, ["--model", str(model), "--provider", "cpu", *args])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("\n")
    return result.output[:-1]


def test_default_model_completes_good(page: Page, models: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    page.open(model="models/default.onnx", seed="good", len=15)
    assert page.error is None
    assert page.output == rnn_run(models / "default.onnx", "--seed", "good", "--len", "15")
    assert page.output.strip() == "good i am fine"
    assert "RNN, 1 layer" in page.page.text_content("#info")
    assert "tokens/s" in page.page.text_content("#status")
    shot = tmp_path_factory.mktemp("web-screenshots") / "default-good.png"
    page.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    page.assert_clean()


@pytest.mark.parametrize(
    ("name", "seed", "length"),
    [
        ("char.onnx", "ROMEO:", 200),
        ("steps.onnx", "ROMEO:", 200),  # no prompt path: the seed is read step by step
        ("gru.onnx", "O Romeo", 120),
        ("word.onnx", "The cat", 40),
        ("word.onnx", '"Where is the dog?" she asked', 30),
        ("int8.onnx", "hey", 15),
    ],
)
def test_greedy_text_equals_rnn_run(page: Page, models: Path, name: str, seed: str, length: int) -> None:
    page.open(model=f"models/{name}", seed=seed, len=length)
    assert page.error is None
    assert page.output == rnn_run(models / name, "--seed", seed, "--len", str(length))
    page.assert_clean()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("char.onnx", {"repetition_penalty": "1.5"}),  # greedy with a penalty is still deterministic
        ("word.onnx", {"repetition_penalty": "2"}),
        ("char.onnx", {"stop": "e"}),
        ("word.onnx", {"stop": "dog"}),
    ],
)
def test_greedy_options_equal_rnn_run(page: Page, models: Path, name: str, options: dict[str, str]) -> None:
    page.open(model=f"models/{name}", seed="The", len=60, **options)
    assert page.error is None
    args = [arg for key, value in options.items() for arg in (f"--{key.replace('_', '-')}", value)]
    assert page.output == rnn_run(models / name, "--seed", "The", "--len", "60", *args)
    page.assert_clean()


def test_sampling_repeats_with_a_seed_and_keeps_the_length(page: Page, browser, site: str) -> None:
    query = {"model": "models/char.onnx", "seed": "ROMEO:", "len": 80, "temperature": "0.9", "rng_seed": "7"}
    first = page.open(**query).output
    again = Page(browser, site).open(**query)
    other = Page(browser, site).open(**{**query, "rng_seed": "8", "top_k": "5", "top_p": "0.9"})
    assert first == again.output and first.startswith("ROMEO:") and len(first) == 80
    assert other.output != first and len(other.output) == 80
    for p in (page, again, other):
        p.assert_clean()


@pytest.mark.parametrize("name", ["default.onnx", "char.onnx", "gru.onnx", "word.onnx", "int8.onnx"])
def test_logits_match_the_python_runtime(page: Page, models: Path, name: str) -> None:
    """100 steps through the step path, and a whole prompt through the prompt path, within 1e-4."""
    assert_same_logits(page, models / name, f"models/{name}")
    page.assert_clean()


def assert_same_logits(page: Page, path: Path, url: str, steps: int = 100) -> None:
    python = Model(path, provider="cpu")
    ids = np.random.default_rng(0).integers(1, python.info.vocab_size, size=steps).tolist()
    page.page.goto(page.site + "index.html")
    browser_rows = page.page.evaluate(
        """async ([url, ids]) => {
            const model = await window.rnnxPage.loadModel(url);
            const steps = await model.traceLogits(ids);
            const read = await model.read(ids, model.initialState());
            return { steps, read: Array.from(read.logits), prompt: model.info.hasPromptPath };
        }""",
        [url, ids],
    )
    state = python.initial_state(1)
    expected = []
    for token in ids:
        logits, state = python.step(np.array([token], np.int64), state)
        expected.append(logits[0])
    np.testing.assert_allclose(np.array(browser_rows["steps"]), np.stack(expected), atol=1e-4, rtol=0)
    read, _ = python.read(np.array([ids], np.int64), python.initial_state(1))
    np.testing.assert_allclose(np.array(browser_rows["read"]), read[0], atol=1e-4, rtol=0)
    assert browser_rows["prompt"] == python.has_prompt_path


TRAINED = [Path(p) for p in os.environ.get("RNNX_WEB_MODELS", "").split(os.pathsep) if p]


@pytest.mark.skipif(not TRAINED, reason="set RNNX_WEB_MODELS to exported files (e.g. artifacts/shakespeare/model.onnx)")
@pytest.mark.parametrize("path", TRAINED or [Path("unset")], ids=str)
def test_trained_models_match_the_python_runtime(browser, path: Path) -> None:
    """Real trained models (not made here: too slow for CI): greedy text equals rnn-run's, logits within 1e-4."""
    seed, length = ("ROMEO:", 400) if Model(path, provider="cpu").tokenizer.kind == "char" else ("What happens", 80)
    with _serve_module().serve(path.parent) as url:
        page = Page(browser, url).open(model=f"models/{path.name}", seed=seed, len=length)
        assert page.error is None
        assert page.output == rnn_run(path, "--seed", seed, "--len", str(length))
        assert_same_logits(page, path, f"models/{path.name}")
        page.assert_clean()
        page.page.close()


TOKENIZER_TEXTS = [
    "Hello, \"world\" (again)! It's a well-known fact: 10% of the cat's dogs — don't they? “Yes,” he said.",
    "ÉCOLE İstanbul straße ΣΟΦΟΣ naïve 日本語 x_y\ttab\u00a0nbsp\u2028line \U0001f600 end.",
    '"quote at start" and ("nested") [x] {y} $5 #tag … done?',
    'JavaScript and Python disagree on spaces: \ufeff"bom" \x1c"sep"\x85"nel" ‘single’ „low“',
]


def test_tokenizers_match_python(page: Page) -> None:
    """Splitting, ids and spacing (the text each token adds after another) for texts that stress the rules."""
    word = WordTokenizer.build(" ".join(TOKENIZER_TEXTS))
    char = CharTokenizer.build(TOKENIZER_TEXTS[0])
    page.page.goto(page.site + "index.html")
    got = page.page.evaluate(
        """async ([word, char, texts]) => {
            const { tokenizerFromDict } = await import("./tokenizer.js");
            const w = tokenizerFromDict(word), c = tokenizerFromDict(char);
            const pieces = (t, ids) => ids.map((id, i) => t.piece(i ? ids[i - 1] : null, id));
            return texts.map((text) => ({
                split: w.split(text), word: w.encode(text), char: c.encode(text),
                wordPieces: pieces(w, w.encode(text)), words: w.encode(text).map((id) => w.isWord(id)),
            }));
        }""",
        [word.to_dict(), char.to_dict(), TOKENIZER_TEXTS],
    )
    for text, js in zip(TOKENIZER_TEXTS, got):
        ids = word.encode(text)
        assert js["split"] == word.split(text)
        assert js["word"] == ids and js["char"] == char.encode(text)
        assert js["wordPieces"] == [word.piece(ids[i - 1] if i else None, t) for i, t in enumerate(ids)]
        assert js["words"] == [word.is_word(t) for t in ids]
    page.assert_clean()


def test_a_chosen_file_loads_and_generates(page: Page, models: Path) -> None:
    """A file from the page's file input (what dropping a file does too) runs like a URL."""
    page.page.goto(page.site + "index.html")
    page.page.set_input_files("#model-file", str(models / "default.onnx"))
    page.page.wait_for_selector("#run:not([disabled])", timeout=60_000)
    page.page.fill("#seed", "hey")
    page.page.fill("#len", "15")
    page.page.click("#run")
    page.page.wait_for_selector(DONE, state="attached", timeout=60_000)
    assert page.output == rnn_run(models / "default.onnx", "--seed", "hey", "--len", "15")
    page.assert_clean()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"model": "models/notonnx.onnx", "seed": "good", "len": 15}, "is not an ONNX model"),
        ({"model": "models/foreign.onnx", "seed": "good", "len": 15}, "has no rnnx metadata"),
        ({"model": "models/external.onnx", "seed": "good", "len": 15}, "external data"),
        ({"model": "models/default.onnx", "seed": "§§§", "len": 15}, "the seed has no character this model knows"),
        ({"model": "models/word.onnx", "seed": "xyzzy plugh", "len": 15}, "the seed has no word this model knows"),
        ({"model": "models/default.onnx", "seed": "", "len": 15}, "the seed text is empty"),
        ({"model": "models/default.onnx", "seed": "good", "len": 2}, "shorter than the seed"),
        ({"model": "models/default.onnx", "seed": "good", "len": 15, "temperature": "-1"}, "temperature must be"),
        ({"model": "models/missing.onnx", "seed": "good", "len": 15}, "answered 404"),
    ],
)
def test_bad_input_is_one_clear_message(page: Page, query: dict[str, object], words: str) -> None:
    page.open(**query)
    assert page.error is not None and words in page.error
    assert "\n" not in page.error
    assert page.page.get_attribute("#output", "data-done") is None
    assert words in page.page.text_content("#status")
    page.assert_clean()

"""The README's promises that CI relies on."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    command = next(line for line in ci_lines if line.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text().splitlines()


def python_blocks(markdown: str) -> list[str]:
    parts = markdown.split("```python\n")[1:]
    return [part.split("```", 1)[0] for part in parts]


def test_the_readme_python_example_runs(default_onnx: Path, capsys) -> None:
    """The embedding example (generate, stream, append, snapshot/resume, score) runs as printed."""
    (block,) = [b for b in python_blocks((ROOT / "README.md").read_text()) if "resume=" in b]
    code = block.replace('"artifacts/default/model.onnx"', repr(str(default_onnx)))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("good i am fine\n")
    assert "Score(" in out or "nats" in out

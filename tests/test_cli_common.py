"""What every command gets from `make_app`: --version, -v/--verbose, Ctrl-C as `interrupted` (exit 130) at any
moment from the first import of rnnx.cli.common, and a clean line when stdout is closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnx.cli import common
from rnnx.cli import eval as eval_cli
from rnnx.cli import export as export_cli
from rnnx.cli import info as info_cli
from rnnx.cli import run as run_cli
from rnnx.cli import train as train_cli
from rnnx.runtime import __version__

runner = CliRunner()
BIN = Path(sys.executable).parent
COMMANDS = {
    "rnn-train": train_cli.app,
    "rnn-export": export_cli.app,
    "rnn-run": run_cli.app,
    "rnn-eval": eval_cli.app,
    "rnn-info": info_cli.app,
}


def sigint_as_usual() -> None:
    """In the child before exec: a shell that starts pytest in the background leaves SIGINT ignored, which the
    child would inherit, and Python then never raises KeyboardInterrupt, which is what these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=sigint_as_usual, **kwargs
    )


def assert_interrupted(result: subprocess.CompletedProcess) -> None:
    assert (result.returncode, result.stderr) == (130, "interrupted\n"), (result.returncode, result.stderr)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_prints_its_version(name: str) -> None:
    result = runner.invoke(COMMANDS[name], ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"rnnx {__version__}\n")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_lists_version_and_verbose_in_its_help(name: str) -> None:
    result = runner.invoke(COMMANDS[name], ["--help"])
    assert result.exit_code == 0 and "--version" in result.stdout and "--verbose" in result.stdout


def test_a_new_command_gets_the_common_options_without_code_of_its_own() -> None:
    app = common.make_app("A test command.")

    @app.command()
    def main(name: str = "x") -> None:
        with common.user_errors():
            print(f"hello {name}")

    assert runner.invoke(app, ["--version"]).stdout == f"rnnx {__version__}\n"
    assert runner.invoke(app, ["-v", "--name", "y"]).stdout == "hello y\n"
    assert main.__name__ == "main"  # the decorator hands back the function itself


def command(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / str(args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600)


def test_verbose_shows_the_library_info_logs_and_quiet_does_not(tmp_path: Path) -> None:
    out = tmp_path / "m"
    trained = command("rnn-train", "--out", out, "-v")
    assert trained.returncode == 0 and "INFO: trained rnn" in trained.stderr, trained.stderr
    quiet = command("rnn-export", out)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = command("rnn-export", out, "--verbose")
    assert loud.returncode == 0 and f"INFO: wrote {out / 'model.onnx'}" in loud.stderr, loud.stderr
    run = command("rnn-run", "--model", out / "model.onnx", "--seed", "good", "--len", "15", "-v")
    assert run.returncode == 0 and run.stdout.startswith("good") and "Traceback" not in run.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_closed_stdout_is_one_error_line(name: str) -> None:
    result = subprocess.run(
        [BIN / name, "--version"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.close(1), timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: standard output is closed") and result.stderr.count("\n") == 1


def into_a_closed_pipe(*args: object) -> subprocess.CompletedProcess:
    """`args` run with stdout a pipe whose reader has already gone: every write fails, as after `| head -1`."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run([str(a) for a in args], stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_into_a_pipe_whose_reader_left_end_quietly(name: str, option: str) -> None:
    result = into_a_closed_pipe(BIN / name, option)
    assert (result.returncode, result.stderr) == (0, "")


def test_generated_text_into_a_pipe_whose_reader_left_ends_quietly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert command("rnn-train", "--out", out, "--epochs", "2").returncode == 0
    assert command("rnn-export", out).returncode == 0
    result = into_a_closed_pipe(BIN / "rnn-run", "--model", out / "model.onnx", "--seed", "good", "--len", "40")
    assert (result.returncode, result.stderr) == (0, "")


# -- Ctrl-C -----------------------------------------------------------------------------------------------------


def test_ctrl_c_while_later_modules_import_is_interrupted() -> None:
    assert_interrupted(python("import rnnx.cli.common\nraise KeyboardInterrupt"))


def test_a_real_sigint_after_the_import_is_interrupted() -> None:
    assert_interrupted(python("import rnnx.cli.common, os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                              "time.sleep(60)"))  # fmt: skip


def test_sigint_that_breaks_an_import_into_another_error_is_interrupted() -> None:
    # numpy's C init turns a KeyboardInterrupt into ImportError("initialization failed")
    code = (
        "import rnnx.cli.common, os, signal, time\n"
        "try:\n    os.kill(os.getpid(), signal.SIGINT); time.sleep(60)\n"
        "except KeyboardInterrupt:\n    raise ImportError('initialization failed') from None\n"
    )
    assert_interrupted(python(code))


def test_other_errors_before_a_command_keep_their_traceback() -> None:
    result = python("import rnnx.cli.common\nraise ValueError('a bug')")
    assert result.returncode == 1 and "ValueError: a bug" in result.stderr and "Traceback" in result.stderr


APP = """
import os, signal, time
from rnnx.cli.common import make_app, user_errors
app = make_app("test")
@app.command()
def main(where: str) -> None:
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
    if where == "before":  # in the command, before user_errors
        ctrl_c()
    if where == "swallowed":  # an import that caught it and went on; the command ends normally
        try:
            ctrl_c()
        except KeyboardInterrupt:
            pass
        print("finished")
        return
    with user_errors():
        ctrl_c()
app()
"""


@pytest.mark.parametrize("where", ["before", "inside", "swallowed"])
def test_sigint_anywhere_in_a_command_is_one_interrupted_line(where: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", APP, where], capture_output=True, text=True, timeout=120, preexec_fn=sigint_as_usual
    )
    assert_interrupted(result)


def test_keyboard_interrupt_in_a_command_under_clirunner() -> None:
    app = common.make_app("A test command.")

    @app.command()
    def main() -> None:
        raise KeyboardInterrupt

    result = runner.invoke(app, [])
    assert (result.exit_code, result.stderr) == (130, "interrupted\n")


def test_version_into_a_full_device_is_one_error_line() -> None:
    """`--version > /dev/full`: one `error:` line and exit 1, not an OSError traceback."""
    import shutil

    script = shutil.which("rnn-info") or str(Path(sys.executable).with_name("rnn-info"))
    if not Path("/dev/full").exists() or not Path(script).exists():
        pytest.skip("needs /dev/full and the installed rnn-info script")
    with open("/dev/full", "w") as full:
        done = subprocess.run([script, "--version"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: cannot write the output: No space left on device"]

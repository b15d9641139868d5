"""What every rnnx command shares: one clean error line and an exit code instead of a traceback, Ctrl-C as
`interrupted` (exit 130) from the moment this module loads, and the `--version` and `-v/--verbose` options.

A command gets all of it by being made with `make_app` and running its body inside `user_errors()`:

    app = make_app("What the command does.")

    @app.command()
    def main(...) -> None:
        with user_errors():
            ...
"""

from __future__ import annotations

# Only what the Ctrl-C hook below needs comes before it: it should be in place as early as possible.
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType, TracebackType

USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130


class _Interrupts:
    """Ctrl-C, as this process saw it: whether SIGINT came, and whether `interrupted` was printed.

    A SIGINT can land inside a C extension's import, which then fails with another error (numpy raises
    ImportError("initialization failed")): once SIGINT has come, whatever ends the command reads `interrupted`.
    """

    received = False
    said = False

    @classmethod
    def on_sigint(cls, signum: int, frame: FrameType | None) -> None:
        cls.received = True
        raise KeyboardInterrupt

    @classmethod
    def say(cls) -> None:
        if not cls.said:
            cls.said = True
            _echo("interrupted")


def _echo(line: str) -> None:
    """`line` on stderr, if there is a stderr to write to."""
    try:
        if sys.stderr is None:  # started with 2>&- : the descriptor may still be there
            os.write(2, (line + "\n").encode("utf-8", "replace"))
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _interrupted_quietly(hook: Callable[..., object]) -> Callable[..., object]:
    """An excepthook for Ctrl-C that lands before a command runs (while Python imports): `interrupted`, 130."""

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not (issubclass(kind, KeyboardInterrupt) or _Interrupts.received):
            hook(kind, value, tb)
            return
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            pass
        _Interrupts.say()
        os._exit(INTERRUPT_EXIT)  # no interpreter teardown: it would only be interrupted again

    return excepthook


sys.excepthook = _interrupted_quietly(sys.excepthook)
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Python's own: replaced by an equal one
    try:
        signal.signal(signal.SIGINT, _Interrupts.on_sigint)
    except ValueError:  # imported outside the main thread: leave signals alone
        pass

import contextlib  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402  (after the hook: Ctrl-C while typer loads is quiet too)

LIBRARY_LOGGER = "rnnx"  # -v shows this logger's INFO records (the library's), not every package's


class _App(typer.Typer):
    """A typer app whose own parse errors (a bad or missing option value) are one `error:` line too, and whose
    commands all take `--version` and `-v/--verbose`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            register(_with_common_options(function))
            return function

        return decorator

    def __call__(self, *args: object, **kwargs: object) -> None:
        if sys.stdout is None or sys.stdout.closed:
            _echo("error: standard output is closed (e.g. `>&-`): redirect it to a file or /dev/null instead")
            sys.exit(ERROR_EXIT)
        try:
            command = typer.main.get_command(self)
            code = command.main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's usage errors: unknown option, value of the wrong type
            if _Interrupts.received:
                _exit_interrupted()
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            _echo(f"error: {message} (see --help)")
            sys.exit(getattr(exc, "exit_code", USAGE_EXIT))
        except BrokenPipeError:  # --help or --version into a reader that went away (`| head -1`): fine
            _stop_writing_stdout()
            sys.exit(0)
        except SystemExit as exc:
            # typer (for --version) and rich (for --help) meet a reader that went away with a silent exit 1
            if isinstance(exc.__context__, BrokenPipeError):
                _stop_writing_stdout()
                sys.exit(0)
            raise
        except OSError as exc:  # --help or --version into a full disk or /dev/full
            _echo(f"error: cannot write the output: {exc.strerror or exc}")
            sys.exit(ERROR_EXIT)
        except (Exception, KeyboardInterrupt):
            if _Interrupts.received or sys.exc_info()[0] is KeyboardInterrupt:
                _exit_interrupted()
            raise
        if _Interrupts.received:  # typer turns a KeyboardInterrupt it meets into exit code 130, silently
            _exit_interrupted()
        sys.exit(code if isinstance(code, int) else 0)


def _stop_writing_stdout() -> None:
    """Point stdout at /dev/null: the reader is gone, and Python's flush at exit would fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _exit_interrupted() -> None:
    _Interrupts.say()
    sys.exit(INTERRUPT_EXIT)


def make_app(help_text: str) -> typer.Typer:
    return _App(add_completion=False, pretty_exceptions_enable=False, help=help_text)


def _show_version(value: bool) -> None:
    if value:
        from rnnx.runtime import __version__

        typer.echo(f"rnnx {__version__}")
        raise typer.Exit(0)


_VERSION = Annotated[
    bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the rnnx version and exit.")
]
_VERBOSE = Annotated[bool, typer.Option("-v", "--verbose", help="Show rnnx's progress messages (INFO logs) on stderr.")]


def _with_common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with `--version` and `-v/--verbose` added to the options typer reads from its signature.

    The command itself never sees them; Ctrl-C outside its `user_errors()` becomes `interrupted` and 130 too.
    """

    @functools.wraps(function)
    def command(*args: Any, rnnx_version: bool = False, rnnx_verbose: bool = False, **kwargs: Any) -> Any:
        _Interrupts.said = False
        try:
            if _Interrupts.received:  # a SIGINT whose KeyboardInterrupt an import swallowed
                raise KeyboardInterrupt
            configure_logging(rnnx_verbose)
            return function(*args, **kwargs)
        except typer.Exit:
            raise
        except (Exception, KeyboardInterrupt):
            if not (_Interrupts.received or sys.exc_info()[0] is KeyboardInterrupt):
                raise
            _Interrupts.say()
            raise typer.Exit(INTERRUPT_EXIT) from None

    signature = inspect.signature(function, eval_str=True)
    extra = [
        inspect.Parameter("rnnx_version", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=_VERSION),
        inspect.Parameter("rnnx_verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=_VERBOSE),
    ]
    params = list(signature.parameters.values()) + extra
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}  # evaluated: typer reads these
    return command


def configure_logging(verbose: bool) -> None:
    """Warnings and errors on stderr; with `verbose`, the library's INFO records too."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger(LIBRARY_LOGGER).setLevel(logging.INFO if verbose else logging.NOTSET)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into `error: ...` on stderr and an exit code (2 for usage, 1 otherwise)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from rnnx.runtime.errors import RnnxError, UsageError  # here: importing rnnx.runtime loads numpy

    try:
        yield
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE_EXIT) from None
    except RnnxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ERROR_EXIT) from None
    except BrokenPipeError:  # the reader went away (e.g. `rnn-run ... | head`): stop quietly
        _stop_writing_stdout()
        raise typer.Exit(0) from None
    except OSError as exc:  # a path that cannot be written or read, a full disk, ...
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        raise typer.Exit(ERROR_EXIT) from None
    except KeyboardInterrupt:
        _Interrupts.say()
        raise typer.Exit(INTERRUPT_EXIT) from None

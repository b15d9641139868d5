"""What every rnnx command shares: one clean error line and an exit code instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import typer

from rnnx.runtime.errors import RnnxError, UsageError

USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130


class _App(typer.Typer):
    """A typer app whose own parse errors (a bad or missing option value) are one `error:` line too."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        command = typer.main.get_command(self)
        try:
            code = command.main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            sys.exit(INTERRUPT_EXIT)
        except typer.TyperException as exc:  # click's usage errors: unknown option, value of the wrong type
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"error: {message} (see --help)", err=True)
            sys.exit(getattr(exc, "exit_code", USAGE_EXIT))
        sys.exit(code if isinstance(code, int) else 0)


def make_app(help_text: str) -> typer.Typer:
    return _App(add_completion=False, pretty_exceptions_enable=False, help=help_text)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into `error: ...` on stderr and an exit code (2 for usage, 1 otherwise)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        yield
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE_EXIT) from None
    except RnnxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ERROR_EXIT) from None
    except BrokenPipeError:  # the reader went away (e.g. `rnn-run ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except OSError as exc:  # a path that cannot be written or read, a full disk, ...
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        raise typer.Exit(ERROR_EXIT) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(INTERRUPT_EXIT) from None

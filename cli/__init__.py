"""rnnx command line: rnn-train, rnn-export, rnn-run, rnn-eval and rnn-info, thin typer layers over the library."""

from rnnx.cli import common as _common  # noqa: F401  # first: Ctrl-C is one clean line from here on

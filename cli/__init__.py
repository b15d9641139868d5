"""rnnx command line: rnn-train, rnn-export and rnn-run, thin typer layers over the library."""

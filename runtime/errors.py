"""Exceptions shared by every rnnx package. Library code raises them; only the CLI prints and exits."""


class RnnxError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


class UsageError(RnnxError, ValueError):
    """A bad argument value (the CLI exits with code 2)."""


class ModelFileError(RnnxError):
    """A model file or directory that is missing, corrupt or not an rnnx model."""


class ExportCheckError(RnnxError):
    """An exported graph failed its verification; nothing was written."""

"""The one exception family llmc raises: every user-facing failure is an LlmcError.

Messages name the op, the model source line where known, and what to do about it.
The CLI prints them without a traceback and exits non-zero.
"""


class LlmcError(Exception):
    """Base of every error llmc reports to a user."""


class UnsupportedOpError(LlmcError):
    """The model uses an operation llmc cannot import or lower."""


class MalformedIRError(LlmcError):
    """IR text that does not parse or verify."""


class PassOptionError(LlmcError):
    """An unknown pass name or a bad pass option."""


class ModelFileError(LlmcError):
    """A model.py that does not follow the model-file convention."""


class ModelError(LlmcError):
    """The model fails in eager PyTorch on its example inputs: there is nothing correct to compile."""


class OutputError(LlmcError):
    """A file or folder llmc was asked to write cannot be written."""


def write_output(path, text: str) -> None:
    """Write a file llmc was asked to produce, creating its folder; failure is an OutputError."""
    from pathlib import Path

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


class InterpretError(LlmcError):
    """The IR interpreter could not execute an op."""


def with_loc(message: str, loc: str | None) -> str:
    """Append the model source line to a message when we know it."""
    return f"{message} (at {loc})" if loc else message


class BuildError(LlmcError):
    """No C compiler, a compile error in generated code, or a library that will not load."""


class InternalError(LlmcError):
    """llmc itself failed on a model it accepted: a bug to report, named with the stage it happened in
    (llmc.reproducer writes the files that replay it)."""

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


class InterpretError(LlmcError):
    """The IR interpreter could not execute an op."""


def with_loc(message: str, loc: str | None) -> str:
    """Append the model source line to a message when we know it."""
    return f"{message} (at {loc})" if loc else message


class BuildError(LlmcError):
    """No C compiler, a compile error in generated code, or a library that will not load."""


class InternalError(LlmcError):
    """llmc itself failed on a model it accepted: a bug to report, named with the stage it happened in."""


def internal(stage: str, error: Exception) -> InternalError:
    return InternalError(f"llmc failed in {stage}: {type(error).__name__}: {error} "
                         "(an llmc bug: please report it with the model)")

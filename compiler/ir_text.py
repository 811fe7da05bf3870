"""Print and parse llmc IR as MLIR text."""

from __future__ import annotations

import re
from io import StringIO

from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException
from xdsl.utils.mlir_lexer import MLIRLexer

from llmc.errors import MalformedIRError
from llmc.registry import make_context


# xDSL 0.74's string-literal rule, `"(?:[^"\\...]+|\\(...))*"`, nests a `+` inside a `*`: on a `"` that is never
# closed (a Python file given as IR) the regex engine tries every split of the run of characters, doubling the
# time per character, and `llmc opt model.py` never returns. Possessive quantifiers accept the same strings (the
# two branches start with different characters, so there is one way to split) and fail in linear time.
MLIRLexer._unescaped_characters_regex = re.compile(r'"(?:[^"\\\n\v\f]++|\\(?:["nt\\]|[0-9A-Fa-f]{2}))*+"')


def print_ir(module: ModuleOp) -> str:
    out = StringIO()
    Printer(stream=out).print_op(module)
    return out.getvalue() + "\n"


def parse_ir(text: str, source: str = "<input>") -> ModuleOp:
    """Parse and verify; errors come back as MalformedIRError with line and column."""
    try:
        module = Parser(make_context(), text, source).parse_module()
    except ParseError as error:
        raise MalformedIRError(f"{source}: cannot parse IR:\n{error}") from None
    except Exception as error:  # xDSL's parser raises more than ParseError on some malformed text
        raise MalformedIRError(f"{source}: cannot parse IR: {type(error).__name__}: {error}") from None
    try:
        module.verify()
    except VerifyException as error:
        raise MalformedIRError(f"{source}: IR does not verify: {error}") from None
    return module

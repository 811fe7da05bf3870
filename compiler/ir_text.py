"""Print and parse llmc IR as MLIR text."""

from __future__ import annotations

from io import StringIO

from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from llmc.errors import MalformedIRError
from llmc.registry import make_context


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
    try:
        module.verify()
    except VerifyException as error:
        raise MalformedIRError(f"{source}: IR does not verify: {error}") from None
    return module

"""Code generation backends: `c/` (SIMD C) and `triton/`, and what both need to read tile IR."""

from __future__ import annotations

from xdsl.ir import Operation, SSAValue

from llmc.dialects import graph
from llmc.passes.lowering.emit import as_2d

# arith.cmpi predicate -> infix operator; index values are non-negative, so the unsigned
# predicates (6..9) compare the same way as the signed ones.
CMPI_SYMBOLS = {0: "==", 1: "!=", 2: "<", 3: "<=", 4: ">", 5: ">=", 6: "<", 7: "<=", 8: ">", 9: ">="}


def constant_exponent(op: Operation) -> float | None:
    """The exponent of a graph.pow by a constant (rendered without a general pow), else None."""
    if isinstance(op, graph.PowOp) and isinstance(op.rhs.owner, graph.ConstantOp):
        return op.rhs.owner.value.value.data
    return None


def shape2(value: SSAValue) -> tuple[int, int]:
    """(rows, cols) of a tile value: a rank-1 tile is one row, a rank-0 one a single element."""
    rows, cols = as_2d(value.type.get_shape())
    return rows, cols

"""Vector expressions for one loop nest: the pointwise ops a consumer reads, in registers.

A nest iterates a tile row `r` and a vector of columns starting at `c`. Each
inline value becomes one `const vf` statement the first time the nest needs it;
materialised values are read from their buffer. Values of one column broadcast
(row statistics) are splatted, values of one row are read at row 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdsl.dialects.builtin import i1
from xdsl.ir import SSAValue

from llmc.backends.c.exprs import BINARY, GELU, POWERS, UNARY, float_literal
from llmc.backends import constant_exponent, shape2
from llmc.backends.c.plan import INLINE, OPERAND
from llmc.dialects import graph, tile
from llmc.errors import UnsupportedOpError

if TYPE_CHECKING:
    from llmc.backends.c.kernel import KernelRenderer


class Nest:
    def __init__(self, renderer: KernelRenderer):
        self.renderer = renderer
        self.memo: dict[SSAValue, str] = {}

    def vector(self, value: SSAValue) -> str:
        """A C variable holding `value` at (r, c..c+W-1), emitting statements as needed."""
        if value in self.memo:
            return self.memo[value]
        info = self.renderer.plan.values.get(value)
        if info is not None and info.kind != INLINE:
            expr, comment = self.read(value), "read"
        else:
            expr, comment = self.compute(value.owner), self.renderer.describe(value.owner)
        var = f"x{self.renderer.name(value)[1:]}"
        kind = "vi" if is_mask(value) else "vf"
        self.renderer.line(f"const {kind} {var} = {expr}; /* {comment} */")
        self.memo[value] = var
        return var

    def read(self, value: SSAValue) -> str:
        rows, cols = shape2(value)
        name, info = self.renderer.name(value), self.renderer.plan.values[value]
        r = "r" if rows > 1 else "0"
        if cols == 1:
            return f"vsplat({name}.p[{r} * {name}.ld])"
        if info.kind == OPERAND:
            if info.panel:
                raise UnsupportedOpError(f"pointwise read of a packed weight tile in @{self.renderer.kernel_name}")
            return f"llmc_load_vec({name}.p, {r}, c, {rows}, {cols}, {name}.ld, 1, 0.0f)"
        return f"vload({name}.p + {r} * {name}.ld + c)"

    def compute(self, op) -> str:
        """The vector expression of a pointwise op or an inline load at this nest's position."""
        if isinstance(op, tile.LoadOp):
            return self.load(op)
        if isinstance(op, tile.IotaOp):
            return self.iota(op)
        if isinstance(op, graph.ConstantOp):
            return f"vsplat({float_literal(op.value.value.data)})"
        if constant_exponent(op) in POWERS:
            return POWERS[constant_exponent(op)].format(self.vector(op.lhs))
        if isinstance(op, graph.GeluOp):
            return GELU[op.approximate.data].format(self.vector(op.operand))
        if isinstance(op, graph.DivOp) and shape2(op.rhs)[1] == 1:
            # one reciprocal per row (hoisted out of the column loop), then multiplies
            return f"{self.vector(op.lhs)} * (1.0f / {self.vector(op.rhs)})"
        if isinstance(op, graph.WhereOp):
            return f"vsel({self.vector(op.cond)}, {self.vector(op.lhs)}, {self.vector(op.rhs)})"
        template = UNARY.get(type(op)) or BINARY.get(type(op))
        if template is None:
            raise UnsupportedOpError(
                f"the C backend has no vector form of {op.name} in @{self.renderer.kernel_name}"
            )
        return template.format(*(self.vector(v) for v in op.operands))

    def load(self, op: tile.LoadOp) -> str:
        rows, cols = shape2(op.result)
        name = self.renderer.name
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        pad = "-INFINITY" if op.padding is not None and op.padding.data == "neg_inf" else "0.0f"
        row = f"{name(op.row)} + r" if rows > 1 else name(op.row)
        where = f"{name(op.buffer)} + {name(op.base)}, {row}"
        view = f"{height}, {width}, {s0}, {s1}, {pad}"
        if cols == 1:
            return f"vsplat(llmc_load_scalar({where}, {name(op.col)}, {view}))"
        return f"llmc_load_vec({where}, {name(op.col)} + c, {view})"

    def iota(self, op: tile.IotaOp) -> str:
        rows, cols = shape2(op.result)
        offset = self.renderer.name(op.offset)
        if op.axis.value.data == 1:
            return f"viota({offset} + c)" if cols > 1 else f"vsplat((float){offset})"
        return f"vsplat((float)({offset} + r))" if rows > 1 else f"vsplat((float){offset})"


def is_mask(value: SSAValue) -> bool:
    return value.type.element_type == i1

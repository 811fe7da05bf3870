"""Vector expressions for one loop nest: the pointwise ops a consumer reads, in registers.

A nest iterates a tile row `r` and a vector of columns starting at `c`. Each
inline value becomes one `const` vector statement the first time the nest
needs it; materialised values are read from their buffer. Values of one
column broadcast (row statistics) are splatted, values of one row are read at
row 0. A value's vector kind follows its element type: `vf` for f32, `vl`
for integers, `vi` for i1 masks (exprs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdsl.dialects.builtin import bf16, f16, i1, i8, i32, i64
from xdsl.ir import SSAValue

from llmc.backends import constant_exponent, shape2
from llmc.backends.c.exprs import (ACCESS, BINARY, BINARY_INT, BINARY_MASK, CASTS, GELU, HALF, POWERS, SPLAT, UNARY,
                                   UNARY_INT, UNARY_MASK, WHERE, literal)
from llmc.backends.c.plan import INLINE, OPERAND
from llmc.dialects import graph, tile
from llmc.errors import UnsupportedOpError

if TYPE_CHECKING:
    from llmc.backends.c.kernel import KernelRenderer

UNARY_BY_KIND = {"vf": UNARY, "vl": UNARY_INT, "vi": UNARY_MASK}
BINARY_BY_KIND = {"vf": BINARY, "vl": BINARY_INT, "vi": BINARY_MASK}


def kind_of(value: SSAValue) -> str:
    element = value.type.element_type
    return "vi" if element == i1 else "vl" if element in (i64, i32) else "vf"


def element_key(element) -> str:
    return {i64: "i64", i32: "i32", i1: "i1", i8: "i8", bf16: "bf16", f16: "f16"}.get(element, "f32")


class Nest:
    def __init__(self, renderer: KernelRenderer, above: tuple[int, int] | None = None, row: str = "r",
                 tag: str = "", ahead: bool = False):
        self.renderer = renderer
        self.row = row  # the tile row this nest computes: r, or the next row's (r + 1) in a pipelined pass
        self.ahead = ahead  # a step computed ahead, whose result past the view is dropped: its loads stay inside
        self.tag = tag  # told apart from another nest's statements in the same loop
        self.memo: dict[SSAValue, str] = {}
        # where values of one column go when this nest is a column loop: (line index, depth) above it
        self.above = list(above) if above is not None else None

    def vector(self, value: SSAValue) -> str:
        """A C variable holding `value` at (r, c..c+W-1), emitting statements as needed."""
        if value in self.memo:
            return self.memo[value]
        info = self.renderer.plan.values.get(value)
        if info is not None and info.kind != INLINE:
            expr, comment = self.read(value), "read"
        else:
            expr, comment = self.compute(value.owner), self.renderer.describe(value.owner)
        var = f"x{self.renderer.name(value)[1:]}{self.tag}"
        statement = f"const {kind_of(value)} {var} = {expr}; /* {comment} */"
        if self.above is not None and shape2(value)[1] == 1:  # the same for every c: once per row, above the loop
            at, depth = self.above
            self.renderer.lines.insert(at, "    " * depth + statement)
            self.above[0] += 1
        else:
            self.renderer.line(statement)
        self.memo[value] = var
        return var

    def read(self, value: SSAValue) -> str:
        rows, cols = shape2(value)
        name, info = self.renderer.name(value), self.renderer.plan.values[value]
        r = self.row if rows > 1 else "0"
        if rows > 1 and cols > 1 and info.kind != OPERAND:  # a row-wide value: rows-outer, in its slot's first row
            r = self.renderer.wide_row()
        if kind_of(value) == "vl":
            element = f"((const int64_t *){name}.p)[{r} * {name}.ld + c]"
            return f"vsplat_l(((const int64_t *){name}.p)[{r} * {name}.ld])" if cols == 1 else \
                f"*(const vl_u *)&{element}"
        if cols == 1:
            return f"vsplat({name}.p[{r} * {name}.ld])"
        if info.kind == OPERAND:
            if info.panel:
                raise UnsupportedOpError(f"pointwise read of a packed weight tile in @{self.renderer.kernel_name}")
            return f"llmc_load_vec({name}.p, {r}, c, {rows}, {cols}, {name}.ld, 1, 0.0f)"
        return f"vload({name}.p + {r} * {name}.ld + c)"

    def compute(self, op) -> str:
        """The vector expression of a pointwise op or an inline load at this nest's position."""
        form = FORMS.get(type(op))
        if form is not None:
            return form(self, op)
        if isinstance(op, graph.CompareOp) and all(self.index_like(v) for v in op.operands):
            return BINARY[type(op)].format(*(self.as_float_index(v) for v in op.operands))
        return self.arithmetic(op)

    def arithmetic(self, op) -> str:
        kind = kind_of(op.operands[0])
        if kind == "vf":
            special = self.float_special(op)
            if special is not None:
                return special
        template = (UNARY_BY_KIND[kind] if len(op.operands) == 1 else BINARY_BY_KIND[kind]).get(type(op))
        if template is None:
            raise UnsupportedOpError(
                f"the C backend has no vector form of {op.name} on {op.operands[0].type.element_type} tiles "
                f"in @{self.renderer.kernel_name}")
        return template.format(*(self.vector(v) for v in op.operands))

    def constant(self, op: graph.ConstantOp) -> str:
        kind = kind_of(op.result)
        return SPLAT[kind].format(literal(op.number, kind))

    def where(self, op: graph.WhereOp) -> str:
        return WHERE[kind_of(op.result)].format(self.vector(op.cond), self.vector(op.lhs), self.vector(op.rhs))

    def index_like(self, value: SSAValue) -> bool:
        """A tile position (iota) or a small integer constant, in a kernel whose every dim is below 2^24:
        exact as a float, so comparing them (masks of concats, causal and ragged tiles) is one float compare
        instead of int64 lanes."""
        owner = value.owner
        if not self.renderer.small_indices:
            return False
        if isinstance(owner, tile.IotaOp):
            return True
        return isinstance(owner, graph.ConstantOp) and kind_of(value) == "vl" and abs(owner.number) < 2**24

    def as_float_index(self, value: SSAValue) -> str:
        owner = value.owner
        if isinstance(owner, graph.ConstantOp):
            return f"vsplat({literal(owner.number, 'vf')})"
        return self.iota(owner, "viota", "vsplat", "(float)")

    def float_special(self, op) -> str | None:
        if constant_exponent(op) in POWERS:
            return POWERS[constant_exponent(op)].format(self.vector(op.lhs))
        if isinstance(op, graph.GeluOp):
            return GELU[op.approximate.data].format(self.vector(op.operand))
        if isinstance(op, graph.DivOp) and shape2(op.rhs)[1] == 1:
            # one reciprocal per row (hoisted out of the column loop), then multiplies
            return f"{self.vector(op.lhs)} * (1.0f / {self.vector(op.rhs)})"
        return None

    def cast(self, op: graph.CastOp) -> str:
        source, target = kind_of(op.operand), kind_of(op.result)
        value = self.vector(op.operand)
        converted = value if source == target else CASTS[(source, target)].format(value)
        if op.result.type.element_type == i32:  # an int32 result wraps to 32 bits
            converted = f"__builtin_convertvector(__builtin_convertvector({converted}, vi), vl)"
        key = element_key(op.result.type.element_type)
        if key in HALF and element_key(op.operand.type.element_type) != key:  # rounded, kept in f32 lanes
            converted = f"llmc_round_{key}({converted})"
        return converted

    def load(self, op: tile.LoadOp) -> str:
        rows, cols = shape2(op.result)
        name = self.renderer.name
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        row = f"{name(op.row)} + {self.row}" if rows > 1 else name(op.row)
        if self.ahead and rows > 1:
            row = f"llmc_row_within({row}, {height})"
        where = f"{name(op.buffer)} + {name(op.base)}, {row}"
        key = element_key(op.buffer.type.element_type)
        if key not in ("f32", *HALF):
            column = name(op.col) if cols == 1 else f"{name(op.col)} + c"
            vector = f"llmc_load_vec{ACCESS[key]}({where}, {column}, {height}, {width}, {s0}, {s1})"
            return self._splat_lane0(vector, kind_of(op.result)) if cols == 1 else vector
        pad = "-INFINITY" if op.padding is not None and op.padding.data == "neg_inf" else "0.0f"
        view = f"{height}, {width}, {s0}, {s1}, {pad}"
        suffix = ACCESS[key]
        if cols == 1:
            return f"vsplat(llmc_load_scalar{suffix}({where}, {name(op.col)}, {view}))"
        return f"llmc_load_vec{suffix}({where}, {name(op.col)} + c, {view})"

    @staticmethod
    def _splat_lane0(vector: str, kind: str) -> str:
        return SPLAT[kind].format(f"({vector})[0]")

    def gather(self, op: tile.GatherOp) -> str:
        """Row `rows[r]` of the view (wrapped when negative, checked against the height)."""
        rows, cols = shape2(op.result)
        name = self.renderer.name
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        index = self.vector(op.rows)
        row = f"llmc_gather_row(({index})[0], {height}, status, {self.renderer.status_code})"
        key = element_key(op.buffer.type.element_type)
        column = name(op.col) if cols == 1 else f"{name(op.col)} + c"
        where = f"{name(op.buffer)} + {name(op.base)}, {row}, {column}, {height}, {width}, {s0}, {s1}"
        if key in ("f32", *HALF):
            vector = f"llmc_load_vec{ACCESS[key]}({where}, 0.0f)"
        else:
            vector = f"llmc_load_vec{ACCESS[key]}({where})"
        return self._splat_lane0(vector, kind_of(op.result)) if cols == 1 else vector

    def iota(self, op: tile.IotaOp, ramp: str = "viota_l", splat: str = "vsplat_l", cast: str = "") -> str:
        """The positions an iota holds at this nest's (r, c): int64 lanes, or float lanes for a float compare."""
        rows, cols = shape2(op.result)
        offset = self.renderer.name(op.offset)
        if op.axis.value.data == 1:
            return f"{ramp}({offset} + c)" if cols > 1 else f"{splat}({cast}{offset})"
        return f"{splat}({cast}({offset} + {self.row}))" if rows > 1 else f"{splat}({cast}{offset})"


# ops with a form of their own (the rest go through the per-kind tables)
FORMS = {tile.LoadOp: Nest.load, tile.GatherOp: Nest.gather, tile.IotaOp: Nest.iota,
         graph.ConstantOp: Nest.constant, graph.CastOp: Nest.cast, graph.WhereOp: Nest.where}

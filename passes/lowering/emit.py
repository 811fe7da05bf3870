"""Building blocks of the kernel → tile lowering: index math, block loads, stores.

`Emitter` appends ops to the block being built (switching into loop bodies as
needed) and keeps index constants at the top of the kernel. `Operand2D` is
a buffer seen as a batch of 2-D strided views: per-program base offset plus
the view the loads use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.dialects import arith
from xdsl.dialects.builtin import FloatAttr, IndexType, IntegerAttr, StringAttr, TensorType, f32, i32, i64
from xdsl.ir import Attribute, Block, Operation, SSAValue

from llmc.dialects import graph, tile
from llmc.dtypes import is_low_precision
from llmc.passes.fusion.views import StridedView


def tile_type(shape: Sequence[int], element: Attribute = f32) -> TensorType:
    return TensorType(element, list(shape))


def pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def as_2d(shape: Sequence[int]) -> tuple[int, ...]:
    """Tiles cover the last two dims; a rank-1 space is one row."""
    return tuple(shape) if len(shape) >= 2 else (1, *shape) if shape else (1, 1)


class Emitter:
    def __init__(self, entry: Block):
        self.entry = entry
        self.block = entry
        self.constants: dict[int, SSAValue] = {}

    def add(self, op: Operation) -> Operation:
        self.block.add_op(op)
        return op

    def value(self, op: Operation) -> SSAValue:
        return self.add(op).results[0]

    def index(self, n: int) -> SSAValue:
        if n not in self.constants:
            op = arith.ConstantOp(IntegerAttr(n, IndexType()))
            if self.entry.first_op is None:
                self.entry.add_op(op)
            else:
                self.entry.insert_op_before(op, self.entry.first_op)
            self.constants[n] = op.result
        return self.constants[n]

    def addi(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.value(arith.AddiOp(a, b))

    def muli(self, a: SSAValue, n: int) -> SSAValue:
        return a if n == 1 else self.value(arith.MuliOp(a, self.index(n)))

    def divi(self, a: SSAValue, n: int) -> SSAValue:
        return a if n == 1 else self.value(arith.DivSIOp(a, self.index(n)))

    def remi(self, a: SSAValue, n: int) -> SSAValue:
        return self.index(0) if n == 1 else self.value(arith.RemSIOp(a, self.index(n)))

    def mini(self, a: SSAValue, b: SSAValue) -> SSAValue:
        less = self.value(arith.CmpiOp(a, b, "slt"))
        return self.value(arith.SelectOp(less, a, b))

    def maxi(self, a: SSAValue, b: SSAValue) -> SSAValue:
        greater = self.value(arith.CmpiOp(a, b, "sgt"))
        return self.value(arith.SelectOp(greater, a, b))

    def program_id(self, axis: int) -> SSAValue:
        return self.value(tile.ProgramIdOp(result_types=[IndexType()], attributes={"axis": IntegerAttr(axis, 64)}))

    def full(self, value: float, shape: Sequence[int]) -> SSAValue:
        return self.value(tile.FullOp(result_types=[tile_type(shape)], attributes={"value": FloatAttr(value, f32)}))

    def iota(self, offset: SSAValue, axis: int, length: int) -> SSAValue:
        """offset + position along `axis`, an i64 tile of `length` rows (axis 0) or columns (axis 1)."""
        shape = (length, 1) if axis == 0 else (1, length)
        return self.value(tile.IotaOp(operands=[offset], result_types=[tile_type(shape, i64)],
                                      attributes={"axis": IntegerAttr(axis, 64)}))

    def scalar(self, value: float | int, element: Attribute = f32) -> SSAValue:
        return self.value(graph.ConstantOp(value, graph.tensor((), element)))

    def unflatten(self, linear: SSAValue, dims: Sequence[int]) -> list[SSAValue]:
        """Multi-index of a row-major linear index over `dims`."""
        out = []
        for d in reversed(dims):
            out.append(self.remi(linear, d))
            linear = self.divi(linear, d)
        return out[::-1]


@dataclass(frozen=True)
class Operand2D:
    """A buffer as a batch of 2-D views: element strides of batch dims, and the 2-D view."""

    offset: int
    batch_strides: tuple[int, ...]
    shape: tuple[int, int]
    strides: tuple[int, int]

    @staticmethod
    def of(view: StridedView, batch_rank: int) -> Operand2D:
        shape, strides = as_2d(view.shape), (0,) * (2 - len(view.shape)) + tuple(view.strides)
        lead = len(shape) - 2
        assert lead == batch_rank, f"view {view} does not have {batch_rank} batch dims"
        return Operand2D(view.offset, tuple(strides[:lead]), tuple(shape[-2:]), tuple(strides[-2:]))

    def transposed(self) -> Operand2D:
        return Operand2D(self.offset, self.batch_strides, self.shape[::-1], self.strides[::-1])

    def base(self, em: Emitter, batch_index: Sequence[SSAValue]) -> SSAValue:
        total = em.index(self.offset)
        for idx, stride in zip(batch_index, self.batch_strides):
            if stride:
                total = em.addi(total, em.muli(idx, stride))
        return total

    def view_attrs(self) -> dict[str, Attribute]:
        return {"shape": graph.dense(self.shape), "strides": graph.dense(self.strides)}


def load(em: Emitter, buffer: SSAValue, operand: Operand2D, base: SSAValue, row: SSAValue, col: SSAValue,
         block: Sequence[int], padding: str | None = None) -> SSAValue:
    """A block of the buffer, in the buffer's element type."""
    element = buffer.type.element_type
    attrs = operand.view_attrs()
    if padding:
        attrs["padding"] = StringAttr(padding)
    op = tile.LoadOp(operands=[buffer, base, row, col], result_types=[tile_type(block, element)], attributes=attrs)
    return em.value(op)


def compute_element(element: Attribute) -> Attribute:
    """What tile arithmetic on values of `element` computes in: f32 for floats, i64 for integers."""
    if is_low_precision(element):
        return f32
    return i64 if element == i32 else element


def widened(em: Emitter, value: SSAValue) -> SSAValue:
    """A 16-bit float tile as f32, an i32 tile as i64 (both exact): what tile arithmetic computes in."""
    element = compute_element(value.type.element_type)
    if element == value.type.element_type:
        return value
    cast = graph.CastOp(operands=[value], result_types=[tile_type(value.type.get_shape(), element)])
    return em.value(cast)


def narrowed(em: Emitter, value: SSAValue, element: Attribute) -> SSAValue:
    """`value` rounded to `element` when that is a 16-bit float (a dot operand on tensor cores)."""
    if not is_low_precision(element) or value.type.element_type == element:
        return value
    return em.value(graph.CastOp(operands=[value], result_types=[tile_type(value.type.get_shape(), element)]))


def store(em: Emitter, value: SSAValue, buffer: SSAValue, operand: Operand2D, base: SSAValue,
          row: SSAValue, col: SSAValue) -> None:
    em.add(tile.StoreOp(operands=[value, buffer, base, row, col], attributes=operand.view_attrs()))

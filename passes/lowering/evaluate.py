"""Evaluate a kernel region's graph ops on one program's tiles.

The kernel's iteration space is split into [BR, BC] tiles over its last two
dims; the program at `origin` evaluates every value it needs on its tile:
buffers (through their view chains) become block loads, pointwise ops are
cloned onto tiles, reductions over the last dim become `tile.reduce` with the
true row length as extent, a concat evaluates each input at a shifted
origin and selects by position, a gather loads its index column and then the
rows it names (`tile.gather`), and a causal mask is two iotas compared.
Values are memoised per shift. Arithmetic is f32 for floats and i64 for
integers (`compute_element`); stores round to the buffer's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.dialects import arith
from xdsl.dialects.builtin import IntegerAttr, StringAttr, TensorType, i1, i64
from xdsl.ir import Operation, SSAValue

from llmc.dialects import graph, tile
from llmc.dtypes import is_low_precision
from llmc.errors import UnsupportedOpError, with_loc
from llmc.passes.fusion.views import StridedView, apply_views, iota_dim, view_chain
from llmc.passes.lowering.emit import Emitter, Operand2D, as_2d, compute_element, load, tile_type, widened


@dataclass
class TileSpace:
    """One program's place in the iteration space."""

    shape: tuple[int, ...]
    block: tuple[int, int]
    batch_index: list[SSAValue]
    row: SSAValue
    col: SSAValue

    @property
    def shape2d(self) -> tuple[int, ...]:
        return as_2d(self.shape)

    def normalize(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A value's shape right-aligned to the space (a reduced row without keepdim gets its 1 back)."""
        full = self.shape2d
        if len(shape) == len(full) - 1 and shape == full[:-1]:
            shape = (*shape, 1)
        shape = as_2d(shape)
        return (1,) * (len(full) - len(shape)) + shape

    def tile_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return (self.block[0], 1 if self.one_column(shape) else self.block[1])

    def one_column(self, shape: tuple[int, ...]) -> bool:
        """A value one column wide in a wider space: it broadcasts along the row, or it is a width-1 piece
        of a concat. (Not the same as a tile one column wide: `tile{matmul=1,1,1}` makes every tile so.)"""
        return self.normalize(shape)[-1] == 1 and self.shape2d[-1] != 1


@dataclass
class TileEvaluator:
    em: Emitter
    space: TileSpace
    buffers: dict[SSAValue, SSAValue]
    bindings: dict[SSAValue, SSAValue] = field(default_factory=dict)
    memo: dict[tuple, SSAValue] = field(default_factory=dict)

    def value(self, value: SSAValue, space_shape: tuple[int, ...], shift: tuple[int, int] = (0, 0)) -> SSAValue:
        if value in self.bindings and shift == (0, 0):
            return self.bindings[value]
        key = (value, space_shape, shift)
        if key not in self.memo:
            self.memo[key] = self._compute(value, space_shape, shift)
        return self.memo[key]

    def _compute(self, value: SSAValue, space_shape, shift) -> SSAValue:
        root, chain = view_chain(value)
        if root in self.buffers:
            return self.leaf(root, chain, space_shape, shift)
        if isinstance(root.owner, graph.ConstantOp):  # a splat, whatever views see it
            return self.em.scalar(root.owner.number, compute_element(root.type.element_type))
        if isinstance(root.owner, graph.CausalMaskOp):  # tril over the last two dims, which views keep
            return self.causal_mask(space_shape, shift)
        if isinstance(root.owner, graph.IotaOp):
            return self.iota(root.owner, chain, space_shape, shift)
        op = value.owner
        if chain:
            return self._in_group_view(value, chain, space_shape, shift)
        if isinstance(op, graph.GatherOp):
            return self.gather(op, space_shape, shift)
        if isinstance(op, graph.ConcatOp):
            return self.concat(op, shift)
        if isinstance(op, graph.POINTWISE_OPS):
            return self.pointwise(op, shift)
        if isinstance(op, graph.ROW_OPS):
            return self.row_op(op, shift)
        raise UnsupportedOpError(with_loc(f"{op.name} cannot be evaluated inside a fused tile kernel", _loc(op)))

    def leaf(self, root: SSAValue, chain: list[Operation], space_shape, shift) -> SSAValue:
        """A block load of a buffer seen through views, broadcast to the consumer's shape."""
        view = apply_views(graph.shape_of(root), chain)
        if view is None:
            raise UnsupportedOpError("a view chain that needs a copy reached the tile lowering; run fuse first")
        target = self.space.normalize(space_shape)
        view = view.broadcast_to(self.space.shape2d[:-2] + target[-2:])
        operand = Operand2D.of(view, len(self.space.shape2d) - 2)
        em = self.em
        base = operand.base(em, self.space.batch_index)
        row = _shifted(em, self.space.row, shift[0])
        col = self._column(space_shape, shift)
        return widened(em, load(em, self.buffers[root], operand, base, row, col, self.space.tile_shape(space_shape)))

    def _column(self, space_shape, shift) -> SSAValue:
        """Where a tile's columns start: a value one column wide (it broadcasts along the row, or it is a
        width-1 piece of a concat) has only column 0; any other value starts at the program's column."""
        if self.space.one_column(space_shape):
            return self.em.index(0)
        return _shifted(self.em, self.space.col, shift[1])

    def _in_group_view(self, value, chain, space_shape, shift) -> SSAValue:
        inner = chain[0].operand
        if self.space.normalize(graph.shape_of(inner)) != self.space.normalize(graph.shape_of(value)):
            raise UnsupportedOpError(with_loc("a view between two ops of one fused kernel", _loc(chain[0])))
        return self.value(inner, graph.shape_of(inner), shift)

    def pointwise(self, op: Operation, shift) -> SSAValue:
        shape = graph.shape_of(op.results[0])
        operands = [self.value(v, shape, shift) for v in op.operands]
        tile_shape = self.space.tile_shape(shape)
        element = op.results[0].type.element_type
        if not (is_low_precision(element) and isinstance(op, graph.CastOp)):
            element = compute_element(element)  # f32 / i64 until a store or an explicit cast rounds it
        out = operands[0].type.get_shape() if isinstance(op, graph.UnaryOp) else _broadcast_tiles(operands, tile_shape)
        result_type = tile_type(out, element)
        return self.em.value(type(op)(operands=operands, result_types=[result_type], attributes=dict(op.attributes)))

    def concat(self, op: graph.ConcatOp, shift) -> SSAValue:
        shape = graph.shape_of(op.result)
        axis = op.dim.value.data - (len(shape) - 2)
        if axis not in (0, 1) or len(shape) < 2:
            raise UnsupportedOpError(with_loc("concat along a dim other than the last two", _loc(op)))
        em = self.em
        position = self.space.row if axis == 0 else self.space.col
        block = self.space.tile_shape(shape)
        index_shape = (block[0], 1) if axis == 0 else (1, block[1])
        here = em.iota(_shifted(em, position, shift[axis]), axis, block[axis])
        result, start = None, 0
        for part in op.inputs:
            part_shift = (shift[0] + start, shift[1]) if axis == 0 else (shift[0], shift[1] + start)
            piece = self.value(part, graph.shape_of(part), part_shift)
            if result is None:
                result = piece
            else:
                bound = em.scalar(start, i64)
                inside = em.value(graph.GeOp(operands=[here, bound], result_types=[tile_type(index_shape, i1)]))
                element = piece.type.element_type
                result = em.value(graph.WhereOp(operands=[inside, piece, result], result_types=[tile_type(block, element)]))
            start += graph.shape_of(part)[op.dim.value.data]
        return result

    def row_op(self, op: Operation, shift) -> SSAValue:
        if shift != (0, 0):
            raise UnsupportedOpError(with_loc("a reduction feeding a concat in one kernel", _loc(op)))
        x = self.value(op.operands[0], graph.shape_of(op.operands[0]))
        extent = graph.shape_of(op.operands[0])[-1]
        if isinstance(op, graph.ReduceSumOp | graph.ReduceMaxOp | graph.ArgmaxOp):
            kind = {graph.ReduceSumOp: "sum", graph.ReduceMaxOp: "max", graph.ArgmaxOp: "argmax"}[type(op)]
            return self.reduce(x, kind, extent)
        if isinstance(op, graph.CumsumOp):
            return self.em.value(tile.ScanOp(operands=[x], result_types=[x.type], attributes={"axis": IntegerAttr(1, 64)}))
        if isinstance(op, graph.ReduceMeanOp):
            return self.mean(x, extent)
        if isinstance(op, graph.SoftmaxOp):
            return self.softmax(x, extent)
        return self.layer_norm(op, x, extent)

    def reduce(self, x: SSAValue, kind: str, extent: int) -> SSAValue:
        rows = x.type.get_shape()[0]
        element = i64 if kind == "argmax" else x.type.element_type
        attrs = {"kind": StringAttr(kind), "axis": IntegerAttr(1, 64), "extent": IntegerAttr(extent, 64)}
        return self.em.value(tile.ReduceOp(operands=[x], result_types=[tile_type((rows, 1), element)], attributes=attrs))

    def mean(self, x: SSAValue, extent: int) -> SSAValue:
        return self.binary(graph.MulOp, self.reduce(x, "sum", extent), self.em.scalar(1.0 / extent))

    def softmax(self, x: SSAValue, extent: int) -> SSAValue:
        shifted = self.binary(graph.SubOp, x, self.reduce(x, "max", extent))
        e = self.unary(graph.ExpOp, shifted)
        return self.binary(graph.DivOp, e, self.reduce(e, "sum", extent))

    def layer_norm(self, op: graph.LayerNormOp, x: SSAValue, extent: int) -> SSAValue:
        shape = graph.shape_of(op.result)
        centered = self.binary(graph.SubOp, x, self.mean(x, extent))
        var = self.mean(self.binary(graph.MulOp, centered, centered), extent)
        eps = self.em.scalar(op.eps.value.data)
        scaled = self.binary(graph.MulOp, centered, self.unary(graph.RsqrtOp, self.binary(graph.AddOp, var, eps)))
        weighted = self.binary(graph.MulOp, scaled, self.value(op.weight, shape))
        return self.binary(graph.AddOp, weighted, self.value(op.bias, shape))

    def unary(self, cls, x: SSAValue) -> SSAValue:
        return self.em.value(cls(operands=[x], result_types=[x.type]))

    def binary(self, cls, a: SSAValue, b: SSAValue) -> SSAValue:
        shape = _broadcast_tiles([a, b], None)
        element = i1 if issubclass(cls, graph.CompareOp) else a.type.element_type
        return self.em.value(cls(operands=[a, b], result_types=[tile_type(shape, element)]))

    def causal_mask(self, space_shape, shift) -> SSAValue:
        """tril over the tile: row index >= column index."""
        em, block = self.em, self.space.tile_shape(space_shape)
        rows = em.iota(_shifted(em, self.space.row, shift[0]), 0, block[0])
        cols = em.iota(_shifted(em, self.space.col, shift[1]), 1, block[1])
        return self.binary(graph.LeOp, cols, rows)

    def iota(self, op: graph.IotaOp, chain: list[Operation], space_shape, shift) -> SSAValue:
        """Positions along the rows or the columns of the tile (an iota broadcast by expands)."""
        dim = iota_dim(op.result, chain)
        shape = graph.shape_of(chain[-1].result if chain else op.result)
        axis = None if dim is None else 1 - (len(shape) - 1 - dim)
        if axis not in (0, 1):
            raise UnsupportedOpError(with_loc("positions (an arange) along a batch dim of a fused kernel", _loc(op)))
        em, block = self.em, self.space.tile_shape(space_shape)
        start = self.space.row if axis == 0 else self._column(space_shape, shift)
        if axis == 0:
            start = _shifted(em, start, shift[0])
        return em.iota(start, axis, block[axis])

    def gather(self, op: graph.GatherOp, space_shape, shift) -> SSAValue:
        """Load this tile's rows of the index (a column), then the source rows they name."""
        if shift[0]:
            raise UnsupportedOpError(with_loc("a gather feeding a concat along its rows in one kernel", _loc(op)))
        source, source_chain = view_chain(op.source)
        index, index_chain = view_chain(op.index)
        if source not in self.buffers or index not in self.buffers:
            raise UnsupportedOpError(with_loc("a gather whose source or index is computed in its own kernel", _loc(op)))
        em, space = self.em, self.space
        batch = space.shape2d[:-2]
        target = space.normalize(space_shape)
        block = space.tile_shape(space_shape)
        src_view = apply_views(graph.shape_of(source), source_chain)
        src = Operand2D.of(src_view.broadcast_to(batch + src_view.shape[-2:]), len(batch))
        idx_view = apply_views(graph.shape_of(index), index_chain)
        column = StridedView((idx_view.shape[0], 1), (idx_view.strides[0], 0), idx_view.offset)
        idx = Operand2D.of(column.broadcast_to(batch + (target[-2], 1)), len(batch))
        rows = widened(em, load(em, self.buffers[index], idx, idx.base(em, space.batch_index), space.row,
                                em.index(0), (block[0], 1)))
        col = self._column(space_shape, shift)
        attrs = src.view_attrs()
        picked = em.value(tile.GatherOp(operands=[self.buffers[source], src.base(em, space.batch_index), rows, col],
                                        result_types=[tile_type(block, op.result.type.element_type)], attributes=attrs))
        return widened(em, picked)


def _broadcast_tiles(values: list[SSAValue], fallback) -> tuple[int, ...]:
    shapes = [tuple(v.type.get_shape()) for v in values if isinstance(v.type, TensorType)]
    out = graph.broadcast_shapes(*shapes) if shapes else None
    if fallback is not None and (out is None or len(out) < 2):
        return fallback
    return out


def _shifted(em: Emitter, position: SSAValue, shift: int) -> SSAValue:
    if shift == 0:
        return position
    return em.value(arith.SubiOp(position, em.index(shift)))


def _loc(op: Operation) -> str | None:
    loc = op.attributes.get("loc")
    return loc.data if loc is not None else None

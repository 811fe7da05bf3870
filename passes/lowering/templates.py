"""Tile programs for each kernel kind: row/pointwise, matmul + epilogue, flash attention.

Each template takes a kernel.kernel and its tile sizes and builds the body of
a tile.kernel: program ids → tile origin, the main loop (K for matmul, KV for
attention, marked with its pipeline stage count for the `pipeline` pass), the
fused epilogue through `TileEvaluator`, and the stores of every output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from xdsl.dialects import scf
from xdsl.dialects.builtin import IndexType, IntegerAttr, StringAttr, i1, i64
from xdsl.ir import Block, Region, SSAValue

from llmc.dialects import graph, kernel, tile
from llmc.errors import UnsupportedOpError
from llmc.passes.fusion.views import StridedView, apply_views, store_view, view_chain
from llmc.passes.lowering.emit import (Emitter, Operand2D, as_2d, load, narrowed, pow2_at_least, store, tile_type,
                                      widened)
from llmc.passes.lowering.evaluate import TileEvaluator, TileSpace
from llmc.quantization import ACTIVATION_BLOCK

STAGES_ATTR = "llmc.pipeline_stages"
LOWEST_F32 = -3.4028234663852886e38


class KernelLowering:
    """State shared by the templates while one kernel is lowered."""

    def __init__(self, kop: kernel.KernelOp, entry: Block):
        self.kop = kop
        self.em = Emitter(entry)
        region = kop.body.block
        n_in = len(region.args)
        self.buffers = dict(zip(region.args, entry.args[:n_in]))
        self.out_buffers = list(entry.args[n_in:])
        self.yields = list(region.last_op.values)

    def anchor(self, types) -> graph.GraphOp | None:
        return next((op for op in self.kop.body.block.ops if isinstance(op, types)), None)

    def split_yield(self, value: SSAValue) -> tuple[SSAValue, list]:
        root, chain = view_chain(value)
        if root in self.buffers:
            return value, []
        return root, chain

    def store_outputs(self, evaluator: TileEvaluator) -> None:
        space = evaluator.space
        for value, buffer in zip(self.yields, self.out_buffers):
            base_value, views = self.split_yield(value)
            shape = graph.shape_of(base_value)
            tile_value = evaluator.value(base_value, shape)
            if len(tile_value.type.get_shape()) < 2 and isinstance(tile_value.owner, graph.ConstantOp):
                # a constant the function returns: a splat tile of the store's shape
                splat = graph.ConstantOp(tile_value.owner.number, tile_type(space.tile_shape(shape), tile_value.type.element_type))
                tile_value = self.em.value(splat)
            view = store_view(shape, views, graph.shape_of(value))
            operand = Operand2D.of(_normalized(view, space), len(space.shape2d) - 2)
            store(self.em, tile_value, buffer, operand, operand.base(self.em, space.batch_index), space.row, space.col)

    def loop(self, upper: SSAValue, step: int, carried: list[SSAValue], body: Callable, stages: int) -> list[SSAValue]:
        """scf.for from 0 to `upper`; `body(iv, carried)` returns the new carried values."""
        block = Block(arg_types=[IndexType(), *[v.type for v in carried]])
        outer = self.em.block
        self.em.block = block
        results = body(block.args[0], list(block.args[1:]))
        self.em.add(scf.YieldOp(*results))
        self.em.block = outer
        loop = scf.ForOp(self.em.index(0), upper, self.em.index(step), carried, Region(block))
        loop.attributes[STAGES_ATTR] = IntegerAttr(stages, 64)
        self.em.add(loop)
        return list(loop.results)


def _normalized(view: StridedView, space: TileSpace) -> StridedView:
    """Right-align a store view to the space's rank (reduced rows get a trailing unit dim)."""
    shape, strides = list(view.shape), list(view.strides)
    full = space.shape2d
    if len(shape) == len(full) - 1 and tuple(shape) == full[:-1]:
        shape, strides = shape + [1], strides + [1]
    while len(shape) < len(full):
        shape, strides = [1] + shape, [0] + strides
    return StridedView(tuple(shape), tuple(strides), view.offset)


def iteration_shape(low: KernelLowering) -> tuple[int, ...]:
    row = low.anchor(graph.ROW_OPS)
    if row is not None:
        return graph.shape_of(row.operands[0])
    base, _ = low.split_yield(low.yields[0])
    return graph.shape_of(base)


def lower_elementwise(low: KernelLowering, tiles: tuple[int, ...]) -> list[int]:
    """Pointwise and row kernels: one [BR, BC] tile per program (a row kernel's BC spans the row)."""
    shape = iteration_shape(low)
    space, grid = _tile_programs(low.em, shape, tiles[0], tiles[1])
    low.store_outputs(TileEvaluator(low.em, space, low.buffers))
    return grid


def _tile_programs(em: Emitter, shape: tuple[int, ...], block_r: int, block_c: int) -> tuple[TileSpace, list[int]]:
    """One [block_r, block_c] tile per program: axis 0 over the batch dims, axis 1 over the row and column tiles."""
    dims = as_2d(shape)
    rows, cols = dims[-2:]
    row_tiles, col_tiles = math.ceil(rows / block_r), math.ceil(cols / block_c)
    batch_index = em.unflatten(em.program_id(0), dims[:-2])
    pid = em.program_id(1)
    row = em.muli(em.divi(pid, col_tiles), block_r)
    col = em.muli(em.remi(pid, col_tiles), block_c)
    return TileSpace(shape, (block_r, block_c), batch_index, row, col), [math.prod(dims[:-2]), row_tiles * col_tiles]


def _operand(value: SSAValue, low: KernelLowering, full_shape: tuple[int, ...]) -> tuple[SSAValue, Operand2D]:
    root, chain = view_chain(value)
    if root not in low.buffers:
        raise UnsupportedOpError("a matmul/attention operand computed inside its own kernel")
    view = apply_views(graph.shape_of(root), chain).broadcast_to(full_shape)
    return low.buffers[root], Operand2D.of(view, len(full_shape) - 2)


def lower_matmul(low: KernelLowering, tiles: tuple[int, ...], stages: int) -> list[int]:
    anchor = low.anchor((graph.MatmulOp, graph.LinearOp))
    shape = graph.shape_of(anchor.result)
    batch, (m, n) = shape[:-2], shape[-2:]
    k = graph.shape_of(anchor.operands[0])[-1]
    bm, bn, bk = tiles
    act8 = isinstance(anchor, graph.LinearOp) and anchor.activations is not None
    if act8 and bk < min(ACTIVATION_BLOCK, k):  # int8 activations are rounded per block of 32: whole blocks per tile
        bk = ACTIVATION_BLOCK
    em = low.em
    a_buf, a = _operand(anchor.operands[0], low, (*batch, m, k))
    quantized = _quantized_weight(low, anchor, batch)
    if quantized is not None:
        b_buf, b = None, None
    elif isinstance(anchor, graph.LinearOp):
        b_buf, b = _operand(anchor.weight, low, (*batch, n, k))
        b = b.transposed()
    else:
        b_buf, b = _operand(anchor.rhs, low, (*batch, k, n))
    batch_index = em.unflatten(em.program_id(0), batch)
    m_tiles, n_tiles = math.ceil(m / bm), math.ceil(n / bn)
    coords = em.add(tile.TileCoordsOp(operands=[em.program_id(1)], result_types=[IndexType(), IndexType()], attributes={
        "rows": IntegerAttr(m_tiles, 64), "cols": IntegerAttr(n_tiles, 64), "group": IntegerAttr(1, 64)}))
    m0, n0 = em.muli(coords.row, bm), em.muli(coords.col, bn)
    a_base = a.base(em, batch_index)
    b_base = b.base(em, batch_index) if quantized is None else None

    def k_step(kk: SSAValue, carried: list[SSAValue]) -> list[SSAValue]:
        a_tile = load(em, a_buf, a, a_base, m0, kk, (bm, bk))
        if quantized is not None:  # f32 values, rounded to a 16-bit model's type as its dot operand
            b_tile = narrowed(em, quantized.tile(em, kk, n0, bk, bn), a_tile.type.element_type)
        else:
            b_tile = load(em, b_buf, b, b_base, kk, n0, (bk, bn))
        dot = tile.DotOp(operands=[a_tile, b_tile, carried[0]], result_types=[carried[0].type])
        if act8:
            dot.attributes["activations"] = anchor.activations
        return [em.value(dot)]

    (acc,) = low.loop(em.index(k), bk, [em.full(0.0, (bm, bn))], k_step, stages)
    space = TileSpace(shape, (bm, bn), batch_index, m0, n0)
    evaluator = TileEvaluator(em, space, low.buffers)
    if isinstance(anchor, graph.LinearOp) and anchor.bias is not None:
        acc = evaluator.binary(graph.AddOp, acc, evaluator.value(anchor.bias, shape))
    evaluator.bindings[anchor.result] = acc
    low.store_outputs(evaluator)
    return [math.prod(batch), m_tiles * n_tiles]


class QuantizedWeight:
    """A linear's graph.dequantize weight, read a [bk, bn] tile at a time as codes + scales (+ zeros)."""

    def __init__(self, low: KernelLowering, op: graph.DequantizeOp, batch: tuple[int, ...]):
        self.op = op
        self.parts = []
        for value in (op.codes, op.scales, *([op.zeros] if op.zeros is not None else [])):
            buffer, view = _operand(value, low, (*batch, *graph.shape_of(value)))
            self.parts.append((buffer, view.transposed()))  # [K or K/2 or K/G, N]
        self.k = graph.shape_of(op.result)[1]

    def tile(self, em: Emitter, kk: SSAValue, n0: SSAValue, bk: int, bn: int) -> SSAValue:
        op, group = self.op, self.op.group
        if group != self.k and ((bk > group and bk % group) or (bk < group and group % bk)):
            raise UnsupportedOpError(f"a K tile of {bk} does not align with quantization groups of {group}")
        per_byte = 8 // op.bits
        (codes_buf, codes), *rest = self.parts
        code_tile = load(em, codes_buf, codes, em.index(codes.offset), em.divi(kk, per_byte), n0, (bk // per_byte, bn))
        scale_rows = 1 if group == self.k else max(1, bk // group)
        row = em.divi(kk, group)
        loaded = [load(em, buf, view, em.index(view.offset), row, n0, (scale_rows, bn)) for buf, view in rest]
        return em.value(tile.DequantOp(operands=[code_tile, loaded[0], loaded[1:]], result_types=[tile_type((bk, bn))],
                                       attributes={"format": op.format}))


def _quantized_weight(low: KernelLowering, anchor, batch: tuple[int, ...]) -> QuantizedWeight | None:
    if not isinstance(anchor, graph.LinearOp):
        return None
    root, chain = view_chain(anchor.weight)
    if not isinstance(root.owner, graph.DequantizeOp):
        return None
    if chain:
        raise UnsupportedOpError("a linear reads its dequantized weight through a view")
    return QuantizedWeight(low, root.owner, batch)


def lower_attention(low: KernelLowering, tiles: tuple[int, ...], stages: int) -> list[int]:
    op = low.anchor(graph.AttentionOp)
    (b, h, tq, dv), (_, h_kv, tk, d) = graph.shape_of(op.result), graph.shape_of(op.key)
    bm, bn = tiles[0], tiles[1]
    bd, bdv = pow2_at_least(d), pow2_at_least(dv)
    em = low.em
    q_buf, q = _operand(op.query, low, (b, h, tq, d))
    k_buf, k = _operand(op.key, low, (b, h_kv, tk, d))
    v_buf, v = _operand(op.value, low, (b, h_kv, tk, dv))
    k = k.transposed()
    mask = _operand(op.mask, low, (b, h, tq, tk)) if op.mask is not None else None
    pid = em.program_id(0)
    batch, head = em.divi(pid, h), em.remi(pid, h)
    kv_head = em.divi(head, h // h_kv)
    m0 = em.muli(em.program_id(1), bm)
    zero = em.index(0)
    q_tile = load(em, q_buf, q, q.base(em, [batch, head]), m0, zero, (bm, bd))
    k_base, v_base = k.base(em, [batch, kv_head]), v.base(em, [batch, kv_head])
    causal = op.causal is not None
    upper = em.mini(em.index(tk), em.addi(m0, em.index(bm))) if causal else em.index(tk)
    bound = None
    if op.positions is not None:
        upper, bound = _live_keys(low, op.positions, (b, h, tq), [batch, head], m0, bm, upper)
    scale = op.scale.value.data

    def kv_step(j: SSAValue, carried: list[SSAValue]) -> list[SSAValue]:
        m_i, l_i, acc = carried
        kt = load(em, k_buf, k, k_base, zero, j, (bd, bn))
        scores = em.value(tile.DotOp(operands=[q_tile, kt, em.full(0.0, (bm, bn))], result_types=[tile_type((bm, bn))]))
        scores = _masked_scores(em, scores, j, m0, tk, scale, causal, (bm, bn))
        if bound is not None:
            cols = em.iota(j, 1, bn)
            visible = em.value(graph.LeOp(operands=[cols, bound], result_types=[tile_type((bm, bn), i1)]))
            scores = em.value(graph.WhereOp(operands=[visible, scores, em.scalar(-math.inf)], result_types=[scores.type]))
        if mask is not None:
            scores = _apply_mask(em, scores, mask, [batch, head], m0, j, (bm, bn))
        ev = TileEvaluator(em, TileSpace((bm, bn), (bm, bn), [], zero, zero), {})
        m_new = ev.binary(graph.MaximumOp, m_i, ev.reduce(scores, "max", bn))
        p = ev.unary(graph.ExpOp, ev.binary(graph.SubOp, scores, m_new))
        alpha = ev.unary(graph.ExpOp, ev.binary(graph.SubOp, m_i, m_new))
        l_new = ev.binary(graph.AddOp, ev.binary(graph.MulOp, l_i, alpha), ev.reduce(p, "sum", bn))
        v_tile = load(em, v_buf, v, v_base, j, zero, (bn, bdv))
        rescaled = ev.binary(graph.MulOp, acc, alpha)
        p_operand = narrowed(em, p, v_tile.type.element_type)  # 16-bit P @ V, as FlashAttention does
        return [m_new, l_new, em.value(tile.DotOp(operands=[p_operand, v_tile, rescaled], result_types=[acc.type]))]

    # the running max starts at the lowest finite float: a key an additive mask pushed to ~finfo.min still
    # counts (eager gives a fully masked row a uniform average), one a bool mask made -inf never does
    init = [em.full(LOWEST_F32, (bm, 1)), em.full(0.0, (bm, 1)), em.full(0.0, (bm, bdv))]
    _, l_final, acc = low.loop(upper, bn, init, kv_step, stages)
    space = TileSpace(graph.shape_of(op.result), (bm, bdv), [batch, head], m0, zero)
    evaluator = TileEvaluator(em, space, low.buffers)
    # a row whose every key is masked has l = 0 and acc = 0: it gives zeros, as SDPA does (l >= 1 otherwise)
    live = evaluator.binary(graph.MaximumOp, l_final, em.scalar(1e-30))
    evaluator.bindings[op.result] = evaluator.binary(graph.DivOp, acc, live)
    low.store_outputs(evaluator)
    return [b * h, math.ceil(tq / bm)]


def _live_keys(low: KernelLowering, positions: SSAValue, rows: tuple[int, int, int], batch_index, m0, bm: int,
               upper: SSAValue) -> tuple[SSAValue, SSAValue]:
    """(KV loop bound, [bm x 1] bound column): the keys up to the largest position of this query tile
    are read, the rest skipped (a dynamic trip count, at least one tile); key j is visible to query i
    where j <= positions[i]."""
    em = low.em
    b, h, tq = rows
    buffer, column = _operand(positions, low, (b, h, tq, 1))
    base = column.base(em, batch_index)
    bound = widened(em, load(em, buffer, column, base, m0, em.index(0), (bm, 1)))
    along_row = widened(em, load(em, buffer, column.transposed(), base, em.index(0), m0, (1, bm)))
    largest = em.value(tile.ReduceOp(operands=[along_row], result_types=[tile_type((1, 1), i64)], attributes={
        "axis": IntegerAttr(1, 64), "kind": StringAttr("max"), "extent": IntegerAttr(bm, 64)}))
    live = em.addi(em.value(tile.ToIndexOp(operands=[largest], result_types=[IndexType()])), em.index(1))
    return em.maxi(em.mini(upper, live), em.index(1)), bound


def lower_scatter(low: KernelLowering, tiles: tuple[int, ...]) -> list[int]:
    """[BR, BC] tiles of the source rows, each stored at the rows its index names, into the dest
    operand's own buffer (the kernel's result): only the new rows are written."""
    op = low.anchor(graph.ScatterOp)
    shape = graph.shape_of(op.source)
    dims = as_2d(shape)
    rows, cols = dims[-2:]
    em = low.em
    space, grid = _tile_programs(em, shape, tiles[0], min(tiles[1], pow2_at_least(cols)))
    batch_index, row, col = space.batch_index, space.row, space.col
    block_r = space.block[0]
    value = TileEvaluator(em, space, low.buffers).value(op.source, shape)
    index_root, index_chain = view_chain(op.index)
    if op.dest not in low.buffers or index_root not in low.buffers:
        raise UnsupportedOpError("a scatter whose destination or index is computed in its own kernel")
    index_view = apply_views(graph.shape_of(index_root), index_chain)
    column = StridedView((index_view.shape[0], 1), (index_view.strides[0], 0), index_view.offset)
    index = Operand2D.of(column.broadcast_to((*dims[:-2], rows, 1)), len(dims) - 2)
    picked = widened(em, load(em, low.buffers[index_root], index, index.base(em, batch_index), row, em.index(0),
                              (block_r, 1)))
    dest = Operand2D.of(_contiguous(graph.shape_of(op.dest)), len(dims) - 2)
    attrs = {**dest.view_attrs(), "count": IntegerAttr(rows, 64)}
    em.add(tile.ScatterOp(operands=[value, low.buffers[op.dest], dest.base(em, batch_index), picked, row, col],
                          attributes=attrs))
    return grid


def _contiguous(shape: tuple[int, ...]) -> StridedView:
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    return StridedView(tuple(shape), tuple(strides), 0)


def _apply_mask(em: Emitter, scores: SSAValue, mask: tuple[SSAValue, Operand2D], batch_index, m0, j, block) -> SSAValue:
    """The scaled scores with the mask tile applied: a bool mask keeps keys where true, a float one adds."""
    buffer, operand = mask
    tile_value = widened(em, load(em, buffer, operand, operand.base(em, batch_index), m0, j, block))
    if tile_value.type.element_type == i1:
        neg_inf = em.scalar(-math.inf)
        return em.value(graph.WhereOp(operands=[tile_value, scores, neg_inf], result_types=[scores.type]))
    return em.value(graph.AddOp(operands=[scores, tile_value], result_types=[scores.type]))


def _masked_scores(em: Emitter, scores, j, m0, tk: int, scale: float, causal: bool, block) -> SSAValue:
    """scale, then -inf where the key is past the end or (causal) after the query."""
    scores = em.value(graph.MulOp(operands=[scores, em.scalar(scale)], result_types=[scores.type]))
    neg_inf = em.scalar(-math.inf)
    cols = em.iota(j, 1, block[1])
    in_range = em.value(graph.LtOp(operands=[cols, em.scalar(tk, i64)], result_types=[tile_type((1, block[1]), i1)]))
    scores = em.value(graph.WhereOp(operands=[in_range, scores, neg_inf], result_types=[scores.type]))
    if not causal:
        return scores
    rows = em.iota(m0, 0, block[0])
    visible = em.value(graph.LeOp(operands=[cols, rows], result_types=[tile_type(block, i1)]))
    return em.value(graph.WhereOp(operands=[visible, scores, neg_inf], result_types=[scores.type]))

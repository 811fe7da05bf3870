"""Decode-shaped rewrites: rows that share their operands' bytes become rows of one tile.

Linears: the batch's rows as one matrix, so every weight is read once per step.

A decode step's activations are [B, 1, K]. As a graph op the linear keeps B as a batch dim, and
the matmul template gives each batch entry programs of its own, each streaming every weight:
B times the bytes of a step that is bound by exactly those bytes. Seen as [B, K] (a view: only
a unit dim goes) B is the M of one matrix product, and each weight tile is read once for all B
rows. The epilogue then reads the product through the reshape back, as its own small kernel:
bytes of activations, against megabytes of weights.

GQA attention: the query heads that share a KV head as rows of one query tile (below).
"""

from __future__ import annotations

import math

from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern
from xdsl.rewriter import InsertPoint

from llmc.dialects import graph


class LinearRowsAsMatrix(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.LinearOp, rewriter: PatternRewriter):
        x = graph.shape_of(op.input)
        if len(x) < 3 or x[-2] != 1 or math.prod(x[:-2]) == 1:
            return
        rows, n = math.prod(x[:-2]), graph.shape_of(op.weight)[0]
        flat = _view(op.input, (rows, x[-1]))
        operands = [flat.result, op.weight, [op.bias] if op.bias is not None else []]
        product = graph.LinearOp(operands=operands, result_types=[graph.tensor((rows, n), op.result.type.element_type)],
                                 attributes=dict(op.attributes))
        _replace_through_view(rewriter, op, [flat, product])


class GroupedQueryRows(RewritePattern):
    """A decode step's GQA attention (one query per head, g query heads per KV head) as g query rows
    per KV head: q [B, H, 1, D] seen as [B, H/g, g, D] (a view). Each KV head's keys and values are
    then read once for its g heads, by one program with a g-row query tile, instead of g times."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.AttentionOp, rewriter: PatternRewriter):
        b, h, tq, d = graph.shape_of(op.query)
        kv_heads = graph.shape_of(op.key)[1]
        if tq != 1 or kv_heads == h or op.causal is not None:
            return
        group = h // kv_heads
        if not all(_same_for_every_head(extra) for extra in (op.mask, op.positions) if extra is not None):
            return
        dv = graph.shape_of(op.value)[3]
        rows = _view(op.query, (b, kv_heads, group, d))
        out_type = graph.tensor((b, kv_heads, group, dv), op.result.type.element_type)
        grouped = graph.AttentionOp.make(rows.result, op.key, op.value, op.mask, out_type, dict(op.attributes), op.positions)
        _replace_through_view(rewriter, op, [rows, grouped])


def _view(value, shape) -> graph.ReshapeOp:
    return graph.ReshapeOp(operands=[value], result_types=[graph.tensor(tuple(shape), value.type.element_type)])


def _replace_through_view(rewriter: PatternRewriter, op, new_ops: list) -> None:
    """Insert `new_ops` before `op` and replace `op` by a reshape of the last one's result back to
    `op`'s type; the new views carry `op`'s source line."""
    back = _view(new_ops[-1].results[0], graph.shape_of(op.results[0]))
    for new in (*new_ops, back):
        if "loc" in op.attributes and "loc" not in new.attributes:
            new.attributes["loc"] = op.attributes["loc"]
    rewriter.insert_op(new_ops, InsertPoint.before(op))
    rewriter.replace(op, back)


def _same_for_every_head(value) -> bool:
    """A mask or positions operand that broadcasts over the heads (dim -3 of [B, H, Tq, *])."""
    shape = graph.shape_of(value)
    return len(shape) < 3 or shape[-3] == 1

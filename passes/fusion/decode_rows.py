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
        element = op.result.type.element_type
        flat = graph.ReshapeOp(operands=[op.input], result_types=[graph.tensor((rows, x[-1]), op.input.type.element_type)])
        operands = [flat.result, op.weight, [op.bias] if op.bias is not None else []]
        product = graph.LinearOp(operands=operands, result_types=[graph.tensor((rows, n), element)],
                                 attributes=dict(op.attributes))
        back = graph.ReshapeOp(operands=[product.result], result_types=[op.result.type])
        for new in (flat, back):
            if "loc" in op.attributes:
                new.attributes["loc"] = op.attributes["loc"]
        rewriter.insert_op([flat, product], InsertPoint.before(op))
        rewriter.replace(op, back)


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
        rows = graph.ReshapeOp(operands=[op.query], result_types=[graph.tensor((b, kv_heads, group, d), op.query.type.element_type)])
        out_type = graph.tensor((b, kv_heads, group, dv), op.result.type.element_type)
        grouped = graph.AttentionOp.make(rows.result, op.key, op.value, op.mask, out_type, dict(op.attributes), op.positions)
        back = graph.ReshapeOp(operands=[grouped.result], result_types=[op.result.type])
        for new in (rows, back):
            if "loc" in op.attributes:
                new.attributes["loc"] = op.attributes["loc"]
        rewriter.insert_op([rows, grouped], InsertPoint.before(op))
        rewriter.replace(op, back)


def _same_for_every_head(value) -> bool:
    """A mask or positions operand that broadcasts over the heads (dim -3 of [B, H, Tq, *])."""
    shape = graph.shape_of(value)
    return len(shape) < 3 or shape[-3] == 1

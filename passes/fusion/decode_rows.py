"""Decode-shaped linears: the batch's rows as one matrix, so every weight is read once per step.

A decode step's activations are [B, 1, K]. As a graph op the linear keeps B as a batch dim, and
the matmul template gives each batch entry programs of its own, each streaming every weight:
B times the bytes of a step that is bound by exactly those bytes. Seen as [B, K] (a view: only
a unit dim goes) B is the M of one matrix product, and each weight tile is read once for all B
rows. The epilogue then reads the product through the reshape back, as its own small kernel:
bytes of activations, against megabytes of weights.
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
        rewriter.replace_op(op, back)

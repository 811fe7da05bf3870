"""Recognise attention written out by hand and make it one graph.attention op.

Pattern (rank-4 [B, H, T, D] operands, every intermediate used once):

    s = matmul(q, permute(k, [0, 1, 3, 2]))       # QK^T
    s = s * c  |  s / c                            # optional scale (a constant)
    s = where(eq(causal_mask, 0), -inf, s)         # optional causal masking
    p = softmax(s, dim=-1)
    o = matmul(p, v)

Both the written-out form and imported `graph.attention` ops then have their
repeat_kv stripped (reshape(expand(reshape(kv)))), so GQA reads each K/V head
once instead of materialising the repeats.
"""

from __future__ import annotations

import math

from xdsl.dialects.builtin import FloatAttr, UnitAttr, f32
from xdsl.ir import Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from llmc.dialects import graph


def _single_use_producer(value: SSAValue, op_type) -> Operation | None:
    owner = value.owner
    if isinstance(owner, op_type) and value.has_one_use():
        return owner
    return None


def _scalar_constant(value: SSAValue) -> float | None:
    owner = value.owner
    if isinstance(owner, graph.ConstantOp) and graph.shape_of(value) in ((), (1,)):
        return owner.value.value.data
    return None


def _strip_causal_mask(value: SSAValue) -> tuple[SSAValue, bool]:
    """s under `where(mask == 0, -inf, s)` or `where(mask, s, -inf)`, and whether it was there."""
    where = _single_use_producer(value, graph.WhereOp)
    if where is None:
        return value, False
    cond = where.cond.owner
    if isinstance(cond, graph.EqOp) and _scalar_constant(cond.rhs) == 0.0 and isinstance(cond.lhs.owner, graph.CausalMaskOp):
        if _scalar_constant(where.lhs) == -math.inf:
            return where.rhs, True
    if isinstance(cond, graph.CausalMaskOp) and _scalar_constant(where.rhs) == -math.inf:
        return where.lhs, True
    return value, False


def _strip_scale(value: SSAValue) -> tuple[SSAValue, float]:
    mul = _single_use_producer(value, graph.MulOp)
    if mul is not None:
        if (c := _scalar_constant(mul.rhs)) is not None:
            return mul.lhs, c
        if (c := _scalar_constant(mul.lhs)) is not None:
            return mul.rhs, c
    div = _single_use_producer(value, graph.DivOp)
    if div is not None and (c := _scalar_constant(div.rhs)) not in (None, 0.0):
        return div.lhs, 1.0 / c
    return value, 1.0


def _transposed_key(value: SSAValue) -> SSAValue | None:
    op = value.owner
    if isinstance(op, graph.PermuteOp) and tuple(op.perm.get_values()) == (0, 1, 3, 2):
        return op.operand
    return None


def strip_repeat_kv(value: SSAValue) -> SSAValue:
    """kv under reshape(expand(reshape(kv))) that repeats each head g times (repeat_kv)."""
    outer = value.owner
    if not isinstance(outer, graph.ReshapeOp):
        return value
    expand = outer.operand.owner
    if not isinstance(expand, graph.ExpandOp) or not isinstance(expand.operand.owner, graph.ReshapeOp):
        return value
    inner = expand.operand.owner
    kv = graph.shape_of(inner.operand)
    if len(kv) != 4:
        return value
    b, h, t, d = kv
    groups = graph.shape_of(expand.result)[2]
    if graph.shape_of(inner.result) != (b, h, 1, t, d) or graph.shape_of(outer.result) != (b, h * groups, t, d):
        return value
    return inner.operand


class WrittenOutAttention(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.MatmulOp, rewriter: PatternRewriter):
        softmax = _single_use_producer(op.lhs, graph.SoftmaxOp)
        if softmax is None or len(graph.shape_of(op.result)) != 4:
            return
        scores, causal = _strip_causal_mask(softmax.operand)
        scores, scale = _strip_scale(scores)
        qk = _single_use_producer(scores, graph.MatmulOp)
        if qk is None or (key := _transposed_key(qk.rhs)) is None:
            return
        q, v = qk.lhs, op.rhs
        if len(graph.shape_of(q)) != 4 or (causal and graph.shape_of(q)[2] != graph.shape_of(key)[2]):
            return
        attrs = {"scale": FloatAttr(scale, f32)}
        if causal:
            attrs["causal"] = UnitAttr()
        if op.loc is not None:
            attrs["loc"] = op.loc
        fused = graph.AttentionOp(operands=[q, key, v], result_types=[op.result.type], attributes=attrs)
        rewriter.replace(op, fused)


class AttentionWithoutRepeatKV(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.AttentionOp, rewriter: PatternRewriter):
        key, value = strip_repeat_kv(op.key), strip_repeat_kv(op.value)
        if key is op.key and value is op.value:
            return
        if graph.shape_of(key)[1] != graph.shape_of(value)[1]:
            return
        rewriter.replace(op, graph.AttentionOp(operands=[op.query, key, value], result_types=[op.result.type], attributes=dict(op.attributes)))

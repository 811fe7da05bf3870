"""Recognise attention written out by hand and make it one graph.attention op.

Pattern (rank-4 [B, H, T, D] operands, every intermediate used once):

    s = matmul(q, permute(k, [0, 1, 3, 2]))       # QK^T
    s = s * c  |  s / c                            # optional scale (a constant)
    s = where(m, s, -inf) | where(m, -inf, s)      # optional mask: bool, kept where true / false,
      | s + f                                      #   or additive float (HF's finfo.min masks)
    p = [cast] softmax(s, dim=-1)
    o = matmul(p, v)

Then every graph.attention (written out or from SDPA) has its mask simplified:
a lower-triangular constant mask (`graph.causal_mask`, maybe as a 0 / -inf
additive mask, maybe and-ed with a padding mask) becomes the `causal`
attribute, so the kernel skips the tiles above the diagonal and reads no mask
bytes for it (a row with every key masked gives zeros under a bool mask and a
uniform average under an additive one, so an additive mask is never split or
turned into a bool); and repeat_kv (reshape(expand(reshape(kv)))) is stripped, so GQA reads each K/V
head once instead of materialising the repeats.
"""

from __future__ import annotations

from xdsl.dialects.builtin import FloatAttr, UnitAttr, f32, i1, i64
from xdsl.ir import Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern
from xdsl.rewriter import InsertPoint

from llmc.dialects import graph
from llmc.passes.fusion.views import iota_dim, view_chain

MASKED = -1e30  # a score at or below this is a masked-out key (HF adds finfo.min)


def _single_use_producer(value: SSAValue, op_type) -> Operation | None:
    owner = value.owner
    if isinstance(owner, op_type) and value.has_one_use():
        return owner
    return None


def scalar_constant(value: SSAValue) -> float | None:
    root, chain = view_chain(value)
    owner = root.owner
    if isinstance(owner, graph.ConstantOp) and all(isinstance(v, graph.ExpandOp | graph.ReshapeOp) for v in chain):
        return float(owner.number)
    return None


def _is_masked_value(value: SSAValue) -> bool:
    c = scalar_constant(value)
    return c is not None and c <= MASKED


def _strip_mask(value: SSAValue) -> tuple[SSAValue, SSAValue | None, bool]:
    """(scores, mask, negated): scores under a masking op, the mask it applies, and whether a bool
    mask keeps the keys where it is false."""
    where = _single_use_producer(value, graph.WhereOp)
    if where is not None and where.cond.type.element_type == i1:
        if _is_masked_value(where.rhs):
            return where.lhs, where.cond, False
        if _is_masked_value(where.lhs):
            return where.rhs, where.cond, True
    add = _single_use_producer(value, graph.AddOp)
    if add is not None:
        for scores, mask in ((add.lhs, add.rhs), (add.rhs, add.lhs)):
            if graph.shape_of(scores) == graph.shape_of(add.result) and scalar_constant(mask) is None:
                if _is_scores(scores):
                    return scores, mask, False
    return value, None, False


def _is_scores(value: SSAValue) -> bool:
    """Whether `value` is (a scaled) QK^T: the side of an addition that is not the mask."""
    scores, _ = _strip_scale(value)
    qk = scores.owner
    return isinstance(qk, graph.MatmulOp) and _transposed_key(qk.rhs) is not None


def _strip_scale(value: SSAValue) -> tuple[SSAValue, float]:
    mul = _single_use_producer(value, graph.MulOp)
    if mul is not None:
        if (c := scalar_constant(mul.rhs)) is not None:
            return mul.lhs, c
        if (c := scalar_constant(mul.lhs)) is not None:
            return mul.rhs, c
    div = _single_use_producer(value, graph.DivOp)
    if div is not None and (c := scalar_constant(div.rhs)) not in (None, 0.0):
        return div.lhs, 1.0 / c
    return value, 1.0


def _transposed_key(value: SSAValue) -> SSAValue | None:
    op = value.owner
    if isinstance(op, graph.PermuteOp) and tuple(op.perm.get_values()) == (0, 1, 3, 2):
        return op.operand
    return None


def _probabilities(value: SSAValue) -> graph.SoftmaxOp | None:
    cast = _single_use_producer(value, graph.CastOp)
    if cast is not None:
        value = cast.operand
    softmax = _single_use_producer(value, graph.SoftmaxOp)
    if softmax is None or softmax.dim.value.data != len(graph.shape_of(softmax.operand)) - 1:
        return None
    return softmax


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
        softmax = _probabilities(op.lhs)
        if softmax is None or len(graph.shape_of(op.result)) != 4:
            return
        scores, mask, negated = _strip_mask(softmax.operand)
        scores, scale = _strip_scale(scores)
        qk = _single_use_producer(scores, graph.MatmulOp)
        if qk is None or (key := _transposed_key(qk.rhs)) is None:
            return
        q, v = qk.lhs, op.rhs
        if len(graph.shape_of(q)) != 4 or q.type.element_type != v.type.element_type:
            return
        if mask is not None:
            if negated:
                mask = _negated(rewriter, op, mask)
            mask = mask if mask.type.element_type == i1 else _as_f32(rewriter, op, mask)
        attrs = {"scale": FloatAttr(scale, f32)}
        if op.loc is not None:
            attrs["loc"] = op.loc
        rewriter.replace(op, graph.AttentionOp.make(q, key, v, mask, op.result.type, attrs))


def negation_of(value: SSAValue) -> SSAValue | None:
    """m where `value` is not(m) or m == 0 for an i1 mask m."""
    op = value.owner
    if isinstance(op, graph.NotOp) and op.operand.type.element_type == i1:
        return op.operand
    if isinstance(op, graph.EqOp) and op.lhs.type.element_type == i1 and scalar_constant(op.rhs) == 0.0:
        return op.lhs
    return None


def _negated(rewriter: PatternRewriter, before: Operation, mask: SSAValue) -> SSAValue:
    inner = negation_of(mask)
    if inner is not None:
        return inner
    constant = scalar_constant(mask)
    if constant is not None:
        return _inserted(rewriter, before, graph.ConstantOp(not constant, mask.type))
    return _inserted(rewriter, before, graph.NotOp(mask))


def _inserted(rewriter: PatternRewriter, before: Operation, new: Operation) -> SSAValue:
    if "loc" in before.attributes:
        new.attributes["loc"] = before.attributes["loc"]
    rewriter.insert(new, InsertPoint.before(before))
    return new.results[0]


def _as_f32(rewriter: PatternRewriter, before: Operation, mask: SSAValue) -> SSAValue:
    if mask.type.element_type == f32:
        return mask
    return _inserted(rewriter, before, graph.CastOp(operands=[mask], result_types=[graph.tensor(graph.shape_of(mask), f32)]))


# ----------------------------------------------------------------- mask simplification


def is_causal(value: SSAValue, scores: tuple[int, ...]) -> bool:
    """A top-left lower-triangular mask over [Tq, Tk] (a graph.causal_mask seen through broadcasts)."""
    root, chain = view_chain(value)
    if not isinstance(root.owner, graph.CausalMaskOp) or any(not isinstance(v, graph.ExpandOp | graph.ReshapeOp) for v in chain):
        return False
    mask = graph.shape_of(root)
    return len(mask) >= 2 and mask[-2:] == scores[-2:]


def _causal_additive(value: SSAValue, scores) -> bool:
    """where(causal_mask, 0, masked): a causal mask written as an additive float mask."""
    root, chain = view_chain(value)
    where = root.owner
    if not isinstance(where, graph.WhereOp) or any(not isinstance(v, graph.ExpandOp | graph.ReshapeOp) for v in chain):
        return False
    return is_causal(where.cond, scores) and scalar_constant(where.lhs) == 0.0 and _is_masked_value(where.rhs)


def simplify_mask(mask: SSAValue, scores: tuple[int, ...]) -> tuple[SSAValue | None, bool]:
    """(remaining mask or None, whether the causal attribute carries the rest)."""
    if is_causal(mask, scores) or _causal_additive(mask, scores):
        return None, True
    keep_all = 1.0 if mask.type.element_type == i1 else 0.0
    if scalar_constant(mask) == keep_all:
        return None, False
    op = mask.owner
    if isinstance(op, graph.AndOp):
        for causal, other in ((op.lhs, op.rhs), (op.rhs, op.lhs)):
            if is_causal(causal, scores):
                return other, True
    return mask, False


def and_factors(value: SSAValue) -> list[SSAValue]:
    """The operands of a tree of graph.and, seen through broadcasts; constant-true factors dropped."""
    root, chain = view_chain(value)
    if isinstance(root.owner, graph.AndOp) and all(isinstance(v, graph.ExpandOp | graph.ReshapeOp) for v in chain):
        return and_factors(root.owner.lhs) + and_factors(root.owner.rhs)
    return [] if scalar_constant(value) == 1.0 else [value]


def key_bound(value: SSAValue, scores: tuple[int, ...]) -> SSAValue | None:
    """P where `value` is `kv_idx <= P` (or `P >= kv_idx`) with kv_idx an iota over the keys and P an
    integer broadcasting to [B, H, Tq, 1]: the run-time causal bound of queries at cache positions."""
    root, chain = view_chain(value)
    op = root.owner
    if not _right_aligned(chain):
        return None
    if isinstance(op, graph.LeOp):
        keys, bound = op.lhs, op.rhs
    elif isinstance(op, graph.GeOp):
        bound, keys = op.lhs, op.rhs
    else:
        return None
    key_root, key_chain = view_chain(keys)
    if not isinstance(key_root.owner, graph.IotaOp) or iota_dim(key_root, key_chain) != len(graph.shape_of(keys)) - 1:
        return None
    shape = graph.shape_of(bound)
    rows = (*scores[:3], 1)
    if len(shape) > 4 or graph.broadcast_shapes((1,) * (4 - len(shape)) + shape, rows) != rows:
        return None
    return bound


def _right_aligned(chain: list[Operation]) -> bool:
    """Views that keep every dim where broadcasting puts it: expands, and reshapes adding leading 1s."""
    for view in chain:
        before, after = graph.shape_of(view.operand), graph.shape_of(view.result)
        if isinstance(view, graph.ReshapeOp) and after[len(after) - len(before):] == before and set(after[:len(after) - len(before)]) <= {1}:
            continue
        if not isinstance(view, graph.ExpandOp):
            return False
    return True


class SimplifiedAttentionMask(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.AttentionOp, rewriter: PatternRewriter):
        if op.mask is None:
            return
        scores = (*graph.shape_of(op.query)[:3], graph.shape_of(op.key)[2])
        mask, causal = simplify_mask(op.mask, scores)
        positions = op.positions
        if mask is not None and mask.type.element_type == i1 and positions is None:
            mask, positions = _split_key_bound(rewriter, op, mask, scores)
        if mask is op.mask:
            return
        attrs = dict(op.attributes)
        if causal:
            attrs["causal"] = UnitAttr()
        rewriter.replace(op, graph.AttentionOp.make(op.query, op.key, op.value, mask, op.result.type, attrs, positions))


def _split_key_bound(rewriter: PatternRewriter, op: graph.AttentionOp, mask: SSAValue, scores):
    """(rest of the mask, P) when one factor of a bool mask is `kv_idx <= P`, so the kernel stops
    reading keys past P instead of masking them; (mask, None) otherwise."""
    factors = and_factors(mask)
    bounds = [key_bound(f, scores) for f in factors]
    if not any(b is not None for b in bounds):
        return mask, None
    at = next(i for i, b in enumerate(bounds) if b is not None)
    rest = factors[:at] + factors[at + 1 :]
    bound = bounds[at]
    shape = graph.shape_of(bound)
    if len(shape) < 4:
        bound = _inserted(rewriter, op, graph.ReshapeOp(operands=[bound], result_types=[
            graph.tensor((1,) * (4 - len(shape)) + shape, bound.type.element_type)]))
    if bound.type.element_type != i64:
        bound = _inserted(rewriter, op, graph.CastOp(operands=[bound], result_types=[graph.tensor(graph.shape_of(bound), i64)]))
    if not rest:
        return None, bound
    remaining = rest[0]
    for factor in rest[1:]:
        remaining = _inserted(rewriter, op, graph.AndOp(remaining, factor))
    return remaining, bound


class AttentionWithoutRepeatKV(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: graph.AttentionOp, rewriter: PatternRewriter):
        key, value = strip_repeat_kv(op.key), strip_repeat_kv(op.value)
        if key is op.key and value is op.value:
            return
        if graph.shape_of(key)[1] != graph.shape_of(value)[1]:
            return
        rewriter.replace(op, graph.AttentionOp.make(op.query, key, value, op.mask, op.result.type, dict(op.attributes),
                                                    op.positions))


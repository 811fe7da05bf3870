"""One handler per ATen op the exporter knows: arithmetic, contractions, reductions.

Each handler receives the import context and the node's own arguments, and
returns the SSA value (or list of values, for multi-result ops) it produced.
torch's type promotion is made explicit here: the operands of an arithmetic
op are cast to the type torch computes it in, so graph ops never mix element
types. Views and indexing are in `exporter_views.py`; the context in
`import_context.py`.
"""

from __future__ import annotations

import math

import torch
from xdsl.dialects.builtin import FloatAttr, StringAttr, UnitAttr, f32, i1, i64
from xdsl.ir import SSAValue

from llmc.dialects import graph
from llmc.dtypes import is_float
from llmc.import_context import OP_HANDLERS, ImportContext, handles, norm_dim, permute, promoted, reshape, shape

aten = torch.ops.aten


# ----------------------------------------------------------------- pointwise


_UNARY = {
    aten.neg.default: graph.NegOp,
    aten.exp.default: graph.ExpOp,
    aten.log.default: graph.LogOp,
    aten.tanh.default: graph.TanhOp,
    aten.sqrt.default: graph.SqrtOp,
    aten.rsqrt.default: graph.RsqrtOp,
    aten.sigmoid.default: graph.SigmoidOp,
    aten.relu.default: graph.ReluOp,
    aten.silu.default: graph.SiluOp,
    aten.sin.default: graph.SinOp,
    aten.cos.default: graph.CosOp,
    aten.abs.default: graph.AbsOp,
    aten.bitwise_not.default: graph.NotOp,
    aten.logical_not.default: graph.NotOp,
}

_BINARY = {
    aten.add.Tensor: graph.AddOp,
    aten.add.Scalar: graph.AddOp,
    aten.sub.Tensor: graph.SubOp,
    aten.sub.Scalar: graph.SubOp,
    aten.mul.Tensor: graph.MulOp,
    aten.mul.Scalar: graph.MulOp,
    aten.div.Tensor: graph.DivOp,
    aten.div.Scalar: graph.DivOp,
    aten.pow.Tensor_Scalar: graph.PowOp,
    aten.pow.Tensor_Tensor: graph.PowOp,
    aten.maximum.default: graph.MaximumOp,
    aten.minimum.default: graph.MinimumOp,
    aten.floor_divide.default: graph.FloorDivOp,
    aten.remainder.Tensor: graph.RemOp,
    aten.remainder.Scalar: graph.RemOp,
    aten.bitwise_and.Tensor: graph.AndOp,
    aten.bitwise_and.Scalar: graph.AndOp,
    aten.__and__.Tensor: graph.AndOp,
    aten.logical_and.default: graph.AndOp,
    aten.bitwise_or.Tensor: graph.OrOp,
    aten.bitwise_or.Scalar: graph.OrOp,
    aten.__or__.Tensor: graph.OrOp,
    aten.logical_or.default: graph.OrOp,
    aten.bitwise_xor.Tensor: graph.XorOp,
    aten.logical_xor.default: graph.XorOp,
    aten.eq.Scalar: graph.EqOp,
    aten.eq.Tensor: graph.EqOp,
    aten.ne.Scalar: graph.NeOp,
    aten.ne.Tensor: graph.NeOp,
    aten.lt.Scalar: graph.LtOp,
    aten.lt.Tensor: graph.LtOp,
    aten.le.Scalar: graph.LeOp,
    aten.le.Tensor: graph.LeOp,
    aten.gt.Scalar: graph.GtOp,
    aten.gt.Tensor: graph.GtOp,
    aten.ge.Scalar: graph.GeOp,
    aten.ge.Tensor: graph.GeOp,
}
LOGICAL = (aten.logical_and.default, aten.logical_or.default, aten.logical_xor.default, aten.logical_not.default)


def _unary(cls):
    def handler(ctx: ImportContext, node, x):
        x = ctx.cast(ctx.value(x), ctx.element)
        return ctx.result(cls(x, result_types=[ctx.tensor(shape(x))]))

    return handler


for _target, _cls in _UNARY.items():
    OP_HANDLERS[_target] = _unary(_cls)


def _binary(cls):
    def handler(ctx: ImportContext, node, lhs, rhs, alpha=1):
        if issubclass(cls, graph.CompareOp):
            compute = promoted(lhs, rhs)
        else:
            compute = i1 if node.target in LOGICAL else ctx.element
        lhs_value = ctx.cast(ctx.value(lhs, compute), compute)
        rhs_value = ctx.cast(ctx.value(rhs, compute), compute)
        if alpha != 1:
            rhs_value = ctx.result(graph.MulOp(rhs_value, ctx.scalar(alpha, compute)))
        if issubclass(cls, graph.CompareOp):
            return ctx.result(cls(lhs_value, rhs_value))
        out = graph.broadcast_shapes(shape(lhs_value), shape(rhs_value))
        return ctx.result(cls(operands=[lhs_value, rhs_value], result_types=[ctx.tensor(out, compute)]))

    return handler


for _target, _cls in _BINARY.items():
    OP_HANDLERS[_target] = _binary(_cls)

VIEW_TARGETS = {"view", "_unsafe_view", "reshape", "slice", "select", "transpose", "permute", "expand", "unsqueeze",
                "squeeze", "t", "alias", "split", "chunk", "unbind", "narrow", "diagonal", "as_strided", "numpy_T"}


def _in_place(functional):
    """`x.op_(y)` on an intermediate tensor x: the functional op, and x holds its result for every later
    reader (the graph is imported in program order). On a view or an input the write would reach
    another tensor's storage, which llmc does not model: refused."""
    def handler(ctx: ImportContext, node, x, *args, **kwargs):
        target = x.target if isinstance(x, torch.fx.Node) else None
        if x.op != "call_function" or getattr(target, "__name__", "").split(".")[0] in VIEW_TARGETS:
            raise ctx.unsupported(f"'{node.target}' writing in place into "
                                  f"{'an input' if x.op == 'placeholder' else 'a view of another tensor'}")
        result = functional(ctx, node, x, *args, **kwargs)
        ctx.values[x] = result
        return result

    return handler


# x.op_(y) for the arithmetic ops whose result keeps x's dtype (an in-place comparison does not)
for _target, _cls in {**_UNARY, **_BINARY}.items():
    _in_place_packet = getattr(aten, f"{_target._opname}_", None)
    _overload = getattr(_in_place_packet, _target._overloadname, None) if _in_place_packet is not None else None
    if _overload is not None and not issubclass(_cls, graph.CompareOp) and _target not in LOGICAL:
        OP_HANDLERS[_overload] = _in_place(OP_HANDLERS[_target])


@handles(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(ctx, node, x, other, alpha=1):
    return _binary(graph.SubOp)(ctx, node, other, x, alpha)  # other - alpha * x


@handles(aten.gelu.default)
def _gelu(ctx, node, x, approximate="none"):
    x = ctx.cast(ctx.value(x), ctx.element)
    return ctx.result(graph.GeluOp(operands=[x], result_types=[x.type], attributes={"approximate": StringAttr(approximate)}))


@handles(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where(ctx, node, cond, a, b):
    cond = ctx.cast(ctx.value(cond), i1)
    a, b = (ctx.cast(ctx.value(v, ctx.element), ctx.element) for v in (a, b))
    out = graph.broadcast_shapes(shape(cond), shape(a), shape(b))
    return ctx.result(graph.WhereOp(operands=[cond, a, b], result_types=[ctx.tensor(out)]))


@handles(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(ctx, node, x, mask, value):
    return _where(ctx, node, mask, value, x)


@handles(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(ctx, node, x, low=None, high=None):
    if node.target is aten.clamp_max.default:
        low, high = None, low
    x = ctx.cast(ctx.value(x), ctx.element)
    if low is not None:
        x = ctx.result(graph.MaximumOp(x, ctx.value(low, ctx.element)))
    if high is not None:
        x = ctx.result(graph.MinimumOp(x, ctx.value(high, ctx.element)))
    return x


@handles(aten.scalar_tensor.default)
def _scalar_tensor(ctx, node, value, **_):
    return ctx.scalar(value, ctx.element)


@handles(aten.full.default)
def _full(ctx, node, size, value, **_):
    return ctx.result(graph.ConstantOp(value, ctx.tensor(size)))


@handles(aten.arange.default, aten.arange.start, aten.arange.start_step, aten.zeros.default, aten.ones.default,
         aten.empty.memory_format, aten.triu.default, aten.tril.default, aten.new_ones.default,
         aten.new_zeros.default, aten.new_full.default, aten.new_empty.default, aten.ones_like.default,
         aten.zeros_like.default, aten.full_like.default, aten.empty_like.default)
def _compile_time_only(ctx, node, *_, **__):
    # These fold whenever their inputs are known at compile time; reaching here means they are not.
    raise ctx.unsupported(f"'{node.target}' on a tensor computed at run time (llmc evaluates it at compile time only)")


@handles(aten.clone.default, aten.alias.default, aten.detach.default, aten.detach_.default,
         aten.contiguous.default, aten.lift_fresh_copy.default)
def _identity(ctx, node, x, **_):
    return ctx.value(x)


@handles(aten.copy.default)
def _copy(ctx, node, x, src, non_blocking=False):
    # functional copy: src's values in x's shape and dtype (what `x.copy_(src)` becomes once functionalized)
    return ctx.broadcast_to(ctx.cast(ctx.value(src), ctx.element), shape(ctx.value(x)))


@handles(aten.dropout.default)
def _dropout(ctx, node, x, p=0.5, train=False):
    if train and p:
        raise ctx.unsupported("dropout in training mode (compile the model in eval mode)")
    return ctx.value(x)


@handles(aten._assert_tensor_metadata.default, aten._assert_scalar.default)
def _metadata_assertion(ctx, node, *_, **__):
    return None  # export's check that a value has the type it had when traced: true by construction


@handles(aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten.type_as.default)
def _to_copy(ctx, node, x, *_, **__):
    return ctx.cast(ctx.value(x), ctx.element)


# ----------------------------------------------------------------- contractions


def _float_operands(ctx, *values):
    for v in values:
        if not is_float(v.type.element_type):
            raise ctx.unsupported(f"a matrix product of {v.type.element_type} tensors; llmc multiplies floats")
    return values


@handles(aten.linear.default)
def _linear(ctx, node, x, weight, bias=None):
    operands = [ctx.value(x), ctx.value(weight)] + ([ctx.value(bias)] if bias is not None else [])
    _float_operands(ctx, *operands)
    vector = len(shape(operands[0])) == 1  # a product of one row: tiled as a [1, K] matrix
    if vector:
        operands[0] = reshape(ctx, operands[0], (1, *shape(operands[0])))
    out = (*shape(operands[0])[:-1], shape(operands[1])[0])
    product = ctx.result(graph.LinearOp(operands=[operands[0], operands[1], operands[2:]], result_types=[ctx.tensor(out)]))
    return reshape(ctx, product, out[1:]) if vector else product


@handles(aten.matmul.default, aten.bmm.default, aten.mm.default)
def _matmul(ctx, node, a, b):
    a, b = _float_operands(ctx, ctx.value(a), ctx.value(b))
    sa, sb = shape(a), shape(b)
    if len(sa) == 1:
        a = reshape(ctx, a, (1, sa[0]))
    if len(sb) == 1:
        b = reshape(ctx, b, (sb[0], 1))
    ra, rb = shape(a), shape(b)
    batch = graph.broadcast_shapes(ra[:-2], rb[:-2])
    product = ctx.result(graph.MatmulOp(operands=[a, b], result_types=[ctx.tensor((*batch, ra[-2], rb[-1]))]))
    out = (*batch, *sa[-2:-1], *sb[-1:]) if len(sb) > 1 else (*batch, *sa[-2:-1])
    return reshape(ctx, product, out if len(sa) > 1 else (*batch, rb[-1]))


@handles(aten.addmm.default, aten.baddbmm.default)
def _addmm(ctx, node, bias, a, b, beta=1, alpha=1):
    product = _matmul(ctx, node, a, b)
    if alpha != 1:
        product = ctx.result(graph.MulOp(product, ctx.scalar(alpha, ctx.element)))
    if beta == 0:
        return product
    bias = ctx.value(bias)
    if beta != 1:
        bias = ctx.result(graph.MulOp(bias, ctx.scalar(beta, ctx.element)))
    return ctx.result(graph.AddOp(product, bias))


@handles(aten.scaled_dot_product_attention.default)
def _sdpa(ctx, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if dropout_p:
        raise ctx.unsupported("scaled_dot_product_attention with dropout (export the model in eval mode)")
    q, k, v = ctx.value(q), ctx.value(k), ctx.value(v)
    sq, sk, sv = shape(q), shape(k), shape(v)
    if len(sq) != 4:
        raise ctx.unsupported(f"attention on rank-{len(sq)} tensors; llmc expects [batch, heads, seq, dim]")
    if sq[1] != sk[1] and not enable_gqa and sk[1] != 1:  # one key head broadcasts over the query heads
        raise ctx.unsupported("attention with different query and key head counts without enable_gqa")
    if is_causal and sq[2] != sk[2]:
        raise ctx.unsupported("causal attention with different query and key lengths")
    scale = 1.0 / math.sqrt(sq[-1]) if scale is None else scale
    attrs = {"scale": FloatAttr(scale, f32)}
    if is_causal:
        attrs["causal"] = UnitAttr()
    mask = None
    if attn_mask is not None:
        mask = ctx.value(attn_mask)
        mask = mask if mask.type.element_type == i1 else ctx.cast(mask, f32)
    return ctx.result(graph.AttentionOp.make(q, k, v, mask, ctx.tensor((*sq[:3], sv[3])), attrs))


@handles(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_flash_cpu(ctx, node, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    # what SDPA becomes after aot_autograd's decompositions on a CPU: (output, logsumexp); only the output
    # of an inference graph is read
    return [_sdpa(ctx, node, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa=True), None]


@handles(aten._scaled_dot_product_efficient_attention.default)
def _sdpa_efficient(ctx, node, q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    return [_sdpa(ctx, node, q, k, v, attn_bias, dropout_p, is_causal, scale, enable_gqa=True), None, None, None]


@handles(aten._scaled_dot_product_flash_attention.default)
def _sdpa_flash(ctx, node, q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    return [_sdpa(ctx, node, q, k, v, None, dropout_p, is_causal, scale, enable_gqa=True)] + [None] * 8


# ----------------------------------------------------------------- reductions


def to_last(ctx, x: SSAValue, dims: list[int]) -> tuple[SSAValue, list[int]]:
    """x with `dims` moved to the end and merged into one; returns the permutation used."""
    rank = len(shape(x))
    dims = sorted({norm_dim(d, rank) for d in dims})
    kept = [d for d in range(rank) if d not in dims]
    x = permute(ctx, x, kept + dims)
    merged = (*(shape(x)[: len(kept)]), math.prod(shape(x)[len(kept):]))
    return reshape(ctx, x, merged), kept


def _reduced_shape(full: tuple[int, ...], dims: list[int], keepdim: bool) -> tuple[int, ...]:
    return tuple(1 if i in dims else d for i, d in enumerate(full) if keepdim or i not in dims)


def reduced(ctx, cls, x: SSAValue, dims, keepdim: bool) -> SSAValue:
    """A `cls` reduction of x over `dims` (None or empty: all of them), as torch shapes its result."""
    full = shape(x)
    if not full:
        return x if cls is not graph.ArgmaxOp else ctx.scalar(0, i64)
    dims = list(range(len(full))) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    dims = sorted({norm_dim(d, len(full)) for d in dims}) or list(range(len(full)))
    merged, _ = to_last(ctx, x, dims)
    last = len(shape(merged)) - 1
    element = i64 if cls is graph.ArgmaxOp else x.type.element_type
    # over the last dim alone, keepdim is an attribute (no view between the reduction and its users)
    keep = keepdim and merged is x
    attrs = {"dim": graph.int_attr(last), **({"keepdim": UnitAttr()} if keep else {})}
    out_shape = shape(merged)[:-1] + ((1,) if keep else ())
    out = ctx.result(cls(operands=[merged], result_types=[graph.tensor(out_shape, element)], attributes=attrs))
    return reshape(ctx, out, _reduced_shape(full, dims, keepdim))


def _reduce(cls):
    def handler(ctx, node, x, dims=None, keepdim=False, dtype=None):
        x = ctx.value(x)
        if cls is not graph.ArgmaxOp and cls is not graph.ReduceMaxOp:
            x = ctx.cast(x, ctx.element)
        return reduced(ctx, cls, x, dims, keepdim)

    return handler


OP_HANDLERS[aten.mean.dim] = _reduce(graph.ReduceMeanOp)
OP_HANDLERS[aten.mean.default] = _reduce(graph.ReduceMeanOp)
OP_HANDLERS[aten.sum.dim_IntList] = _reduce(graph.ReduceSumOp)
OP_HANDLERS[aten.sum.default] = _reduce(graph.ReduceSumOp)
OP_HANDLERS[aten.amax.default] = _reduce(graph.ReduceMaxOp)
OP_HANDLERS[aten.argmax.default] = _reduce(graph.ArgmaxOp)


def along_last(ctx, x: SSAValue, dim: int, cls) -> SSAValue:
    """A `cls` op over the last dim applied along `dim`: permute there, apply, permute back."""
    rank = len(shape(x))
    if rank == 0:
        return x
    dim = norm_dim(dim, rank)
    order = [d for d in range(rank) if d != dim] + [dim]
    moved = permute(ctx, x, order)
    out = ctx.result(cls(operands=[moved], result_types=[moved.type], attributes={"dim": graph.int_attr(rank - 1)}))
    return permute(ctx, out, [order.index(d) for d in range(rank)])


@handles(aten.softmax.int, aten._softmax.default)
def _softmax(ctx, node, x, dim, half_to_float=False, dtype=None):
    return along_last(ctx, ctx.cast(ctx.value(x), ctx.element), dim, graph.SoftmaxOp)


@handles(aten.reciprocal.default)
def _reciprocal(ctx, node, x):
    x = ctx.cast(ctx.value(x), ctx.element)
    return ctx.result(graph.DivOp(ctx.scalar(1.0, x.type.element_type), x))


@handles(aten.log_softmax.int, aten._log_softmax.default)
def _log_softmax(ctx, node, x, dim, half_to_float=False, dtype=None):
    """x - max - log(sum(exp(x - max))), as torch computes it (log(softmax) would lose the small terms)."""
    x = ctx.cast(ctx.value(x), ctx.element)
    shifted = ctx.result(graph.SubOp(x, reduced(ctx, graph.ReduceMaxOp, x, [dim], True)))
    total = reduced(ctx, graph.ReduceSumOp, ctx.result(graph.ExpOp(shifted)), [dim], True)
    return ctx.result(graph.SubOp(shifted, ctx.result(graph.LogOp(total))))


@handles(aten._safe_softmax.default)
def _safe_softmax(ctx, node, x, dim, dtype=None):
    """softmax whose rows with every element -inf give zeros (what SDPA's math path computes)."""
    x = ctx.cast(ctx.value(x), ctx.element)
    probabilities = along_last(ctx, x, dim, graph.SoftmaxOp)
    top = reduced(ctx, graph.ReduceMaxOp, x, [dim], True)
    dead = ctx.result(graph.EqOp(top, ctx.scalar(float("-inf"), x.type.element_type)))
    zero = ctx.scalar(0.0, x.type.element_type)
    return ctx.result(graph.WhereOp(operands=[dead, zero, probabilities], result_types=[probabilities.type]))


@handles(aten.cumsum.default)
def _cumsum(ctx, node, x, dim, dtype=None):
    return along_last(ctx, ctx.cast(ctx.value(x), ctx.element), dim, graph.CumsumOp)


@handles(aten.native_layer_norm.default)
def _native_layer_norm(ctx, node, x, normalized_shape, weight, bias, eps):
    # layer_norm as aot_autograd decomposes it: (output, mean, rstd); an inference graph reads the output
    return [_layer_norm(ctx, node, x, normalized_shape, weight, bias, eps), None, None]


@handles(aten.layer_norm.default)
def _layer_norm(ctx, node, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=False):
    x = ctx.value(x)
    full = shape(x)
    n = math.prod(normalized_shape)
    merged = reshape(ctx, x, (*full[: len(full) - len(normalized_shape)], n))
    w = reshape(ctx, ctx.value(weight), (n,)) if weight is not None else ctx.result(graph.ConstantOp(1.0, graph.tensor((n,))))
    b = reshape(ctx, ctx.value(bias), (n,)) if bias is not None else ctx.result(graph.ConstantOp(0.0, graph.tensor((n,))))
    out = ctx.result(graph.LayerNormOp(operands=[merged, w, b], result_types=[merged.type], attributes={"eps": FloatAttr(eps, f32)}))
    return reshape(ctx, out, full)

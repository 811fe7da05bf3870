"""One handler per ATen op the exporter knows: ATen node → `graph` ops.

Each handler receives the import context and the node's own arguments, and
returns the SSA value (or list of values, for multi-result ops) it produced.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from xdsl.dialects.builtin import FloatAttr, StringAttr, TensorType, UnitAttr, f32, i1
from xdsl.ir import Attribute, Block, Operation, SSAValue

from llmc.dialects import graph
from llmc.dtypes import LOW_PRECISION, element_of
from llmc.errors import UnsupportedOpError, with_loc

aten = torch.ops.aten


@dataclass
class ImportContext:
    block: Block
    values: dict = field(default_factory=dict)
    loc: str | None = None
    causal_masks: set = field(default_factory=set)
    element: Attribute = f32  # the float element type of the node being imported (its FX meta)

    def add(self, op: Operation, loc: str | None = "current") -> Operation:
        loc = self.loc if loc == "current" else loc
        if loc and isinstance(op, graph.GraphOp):
            op.attributes["loc"] = StringAttr(loc)
        self.block.add_op(op)
        return op

    def value(self, arg) -> SSAValue:
        """An SSA value for an FX argument: a node's value or a scalar constant."""
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, bool | int | float):
            return self.add(graph.ConstantOp(float(arg))).result
        raise self.unsupported(f"argument {arg!r} of type {type(arg).__name__}")

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(with_loc(f"llmc cannot import {what}", self.loc))

    def tensor(self, shape) -> TensorType:
        """The type of a float result of the node being imported."""
        return graph.tensor(tuple(shape), self.element)

    def result(self, op: Operation) -> SSAValue:
        return self.add(op).results[0]


Handler = Callable[..., SSAValue | list[SSAValue]]
OP_HANDLERS: dict[object, Handler] = {}


def handles(*targets) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for target in targets:
            OP_HANDLERS[target] = fn
        return fn

    return register


def _shape(v: SSAValue) -> tuple[int, ...]:
    return graph.shape_of(v)


def _dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _last_dim_only(ctx: ImportContext, what: str, dims, rank: int) -> int:
    dims = [dims] if isinstance(dims, int) else list(dims)
    if len(dims) != 1 or _dim(dims[0], rank) != rank - 1:
        raise ctx.unsupported(f"{what} over dims {dims}: only the last dim is supported")
    return rank - 1


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
}

_BINARY = {
    aten.add.Tensor: graph.AddOp,
    aten.sub.Tensor: graph.SubOp,
    aten.mul.Tensor: graph.MulOp,
    aten.div.Tensor: graph.DivOp,
    aten.pow.Tensor_Scalar: graph.PowOp,
    aten.pow.Tensor_Tensor: graph.PowOp,
    aten.maximum.default: graph.MaximumOp,
    aten.minimum.default: graph.MinimumOp,
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

def _unary(cls):
    def handler(ctx: ImportContext, node, x):
        x = ctx.value(x)
        return ctx.result(cls(x, result_types=[ctx.tensor(_shape(x))]))

    return handler


for _target, _cls in _UNARY.items():
    OP_HANDLERS[_target] = _unary(_cls)


def _binary(cls):
    def handler(ctx: ImportContext, node, lhs, rhs, alpha=1):
        if alpha != 1:
            rhs_value = ctx.result(graph.MulOp(ctx.value(rhs), ctx.value(alpha)))
        else:
            rhs_value = ctx.value(rhs)
        lhs_value = ctx.value(lhs)
        if issubclass(cls, graph.CompareOp):
            return ctx.result(cls(lhs_value, rhs_value))
        shape = graph.broadcast_shapes(_shape(lhs_value), _shape(rhs_value))
        return ctx.result(cls(operands=[lhs_value, rhs_value], result_types=[ctx.tensor(shape)]))

    return handler


for _target, _cls in _BINARY.items():
    OP_HANDLERS[_target] = _binary(_cls)


@handles(aten.gelu.default)
def _gelu(ctx, node, x, approximate="none"):
    x = ctx.value(x)
    return ctx.result(graph.GeluOp(operands=[x], result_types=[x.type], attributes={"approximate": StringAttr(approximate)}))


@handles(aten.where.self)
def _where(ctx, node, cond, a, b):
    operands = [ctx.value(cond), ctx.value(a), ctx.value(b)]
    shape = graph.broadcast_shapes(*(_shape(v) for v in operands))
    return ctx.result(graph.WhereOp(operands=operands, result_types=[ctx.tensor(shape)]))


@handles(aten.masked_fill.Scalar)
def _masked_fill(ctx, node, x, mask, value):
    return _where(ctx, node, mask, value, x)


@handles(aten.scalar_tensor.default)
def _scalar_tensor(ctx, node, value, **_):
    return ctx.result(graph.ConstantOp(float(value)))


@handles(aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default, aten.lift_fresh_copy.default)
def _identity(ctx, node, x, **_):
    return ctx.value(x)


@handles(aten._assert_tensor_metadata.default)
def _metadata_assertion(ctx, node, *_, **__):
    return None  # export's check that a cast's input has the dtype it had when traced: true by construction


@handles(aten._to_copy.default, aten.to.dtype)
def _to_copy(ctx, node, x, dtype=None, *_, **__):
    x = ctx.value(x)
    if dtype is None or element_of(dtype) == x.type.element_type:
        return x
    if element_of(dtype) not in (f32, *LOW_PRECISION):
        raise ctx.unsupported(f"a cast to {dtype}; llmc computes in float32, bfloat16 and float16")
    return ctx.result(graph.CastOp(operands=[x], result_types=[graph.tensor(_shape(x), element_of(dtype))]))


# ----------------------------------------------------------------- contractions


@handles(aten.linear.default)
def _linear(ctx, node, x, weight, bias=None):
    operands = [ctx.value(x), ctx.value(weight)] + ([ctx.value(bias)] if bias is not None else [])
    shape = (*_shape(operands[0])[:-1], _shape(operands[1])[0])
    return ctx.result(graph.LinearOp(operands=[operands[0], operands[1], operands[2:]], result_types=[ctx.tensor(shape)]))


@handles(aten.matmul.default, aten.bmm.default, aten.mm.default)
def _matmul(ctx, node, a, b):
    a, b = ctx.value(a), ctx.value(b)
    sa, sb = _shape(a), _shape(b)
    if len(sa) < 2 or len(sb) < 2:
        raise ctx.unsupported(f"matmul of a rank-1 operand ({sa} @ {sb}); reshape it to rank 2")
    batch = graph.broadcast_shapes(sa[:-2], sb[:-2])
    return ctx.result(graph.MatmulOp(operands=[a, b], result_types=[ctx.tensor((*batch, sa[-2], sb[-1]))]))


@handles(aten.addmm.default)
def _addmm(ctx, node, bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise ctx.unsupported("addmm with beta or alpha other than 1")
    product = _matmul(ctx, node, a, b)
    return ctx.result(graph.AddOp(product, ctx.value(bias)))


@handles(aten.scaled_dot_product_attention.default)
def _sdpa(ctx, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None:
        raise ctx.unsupported("scaled_dot_product_attention with an explicit attn_mask; use is_causal")
    if dropout_p:
        raise ctx.unsupported("scaled_dot_product_attention with dropout (export the model in eval mode)")
    q, k, v = ctx.value(q), ctx.value(k), ctx.value(v)
    sq, sk, sv = _shape(q), _shape(k), _shape(v)
    if len(sq) != 4:
        raise ctx.unsupported(f"attention on rank-{len(sq)} tensors; llmc expects [batch, heads, seq, dim]")
    if sq[1] != sk[1] and not enable_gqa:
        raise ctx.unsupported("attention with different query and key head counts without enable_gqa")
    if is_causal and sq[2] != sk[2]:
        raise ctx.unsupported("causal attention with different query and key lengths")
    scale = 1.0 / math.sqrt(sq[-1]) if scale is None else scale
    attrs = {"scale": FloatAttr(scale, f32)}
    if is_causal:
        attrs["causal"] = UnitAttr()
    return ctx.result(
        graph.AttentionOp(operands=[q, k, v], result_types=[ctx.tensor((*sq[:3], sv[3]))], attributes=attrs)
    )


# ----------------------------------------------------------------- reductions


@handles(aten.softmax.int, aten._softmax.default)
def _softmax(ctx, node, x, dim, half_to_float=False, dtype=None):
    x = ctx.value(x)
    dim = _last_dim_only(ctx, "softmax", dim, len(_shape(x)))
    return ctx.result(graph.SoftmaxOp(operands=[x], result_types=[ctx.tensor(_shape(x))], attributes={"dim": graph.int_attr(dim)}))


@handles(aten.layer_norm.default)
def _layer_norm(ctx, node, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=False):
    x = ctx.value(x)
    if len(normalized_shape) != 1:
        raise ctx.unsupported(f"layer_norm over {list(normalized_shape)}: only the last dim is supported")
    (n,) = normalized_shape
    w = ctx.value(weight) if weight is not None else ctx.result(graph.ConstantOp(1.0, graph.tensor((n,))))
    b = ctx.value(bias) if bias is not None else ctx.result(graph.ConstantOp(0.0, graph.tensor((n,))))
    return ctx.result(graph.LayerNormOp(operands=[x, w, b], result_types=[x.type], attributes={"eps": FloatAttr(eps, f32)}))


def _reduce(cls):
    def handler(ctx, node, x, dims=None, keepdim=False, dtype=None):
        x = ctx.value(x)
        shape = _shape(x)
        dim = _last_dim_only(ctx, cls.name, dims if dims is not None else list(range(len(shape))), len(shape))
        out = shape[:dim] + ((1,) if keepdim else ())
        attrs = {"dim": graph.int_attr(dim)}
        if keepdim:
            attrs["keepdim"] = UnitAttr()
        return ctx.result(cls(operands=[x], result_types=[ctx.tensor(out)], attributes=attrs))

    return handler


OP_HANDLERS[aten.mean.dim] = _reduce(graph.ReduceMeanOp)
OP_HANDLERS[aten.sum.dim_IntList] = _reduce(graph.ReduceSumOp)
OP_HANDLERS[aten.amax.default] = _reduce(graph.ReduceMaxOp)


# ----------------------------------------------------------------- views


def reshape(ctx: ImportContext, x: SSAValue, shape) -> SSAValue:
    shape = list(shape)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = math.prod(_shape(x)) // known
    if tuple(shape) == _shape(x):
        return x
    return ctx.result(graph.ReshapeOp(operands=[x], result_types=[graph.tensor(shape, x.type.element_type)]))


def permute(ctx: ImportContext, x: SSAValue, perm) -> SSAValue:
    shape = _shape(x)
    perm = [_dim(p, len(shape)) for p in perm]
    if perm == sorted(perm):
        return x
    out = graph.tensor([shape[p] for p in perm], x.type.element_type)
    return ctx.result(graph.PermuteOp(operands=[x], result_types=[out], attributes={"perm": graph.dense(perm)}))


def slice_(ctx: ImportContext, x: SSAValue, dim: int, start, end, step: int = 1) -> SSAValue:
    shape = list(_shape(x))
    dim = _dim(dim, len(shape))
    start, end, _ = slice(start, end).indices(shape[dim])
    if (start, end, step) == (0, shape[dim], 1):
        return x
    shape[dim] = len(range(start, end, step))
    if x in ctx.causal_masks and start == 0 and step == 1 and dim >= len(shape) - 2:
        # a top-left corner of a lower-triangular mask is lower-triangular
        op = ctx.add(graph.CausalMaskOp(result_types=[graph.tensor(shape, i1)]))
        ctx.causal_masks.add(op.result)
        return op.result
    attrs = {k: graph.int_attr(v) for k, v in (("dim", dim), ("start", start), ("end", end), ("step", step))}
    return ctx.result(graph.SliceOp(operands=[x], result_types=[graph.tensor(shape, x.type.element_type)], attributes=attrs))


@handles(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(ctx, node, x, shape):
    return reshape(ctx, ctx.value(x), shape)


@handles(aten.unsqueeze.default)
def _unsqueeze(ctx, node, x, dim):
    x = ctx.value(x)
    shape = list(_shape(x))
    shape.insert(_dim(dim, len(shape) + 1), 1)
    return reshape(ctx, x, shape)


@handles(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(ctx, node, x, dims=None):
    x = ctx.value(x)
    shape = _shape(x)
    dims = range(len(shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    drop = {_dim(d, len(shape)) for d in dims if shape[_dim(d, len(shape))] == 1}
    return reshape(ctx, x, [s for i, s in enumerate(shape) if i not in drop])


@handles(aten.permute.default)
def _permute(ctx, node, x, perm):
    return permute(ctx, ctx.value(x), perm)


@handles(aten.transpose.int)
def _transpose(ctx, node, x, d0, d1):
    x = ctx.value(x)
    perm = list(range(len(_shape(x))))
    d0, d1 = _dim(d0, len(perm)), _dim(d1, len(perm))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return permute(ctx, x, perm)


@handles(aten.t.default)
def _t(ctx, node, x):
    return _transpose(ctx, node, x, 0, 1)


@handles(aten.expand.default)
def _expand(ctx, node, x, sizes, implicit=False):
    x = ctx.value(x)
    shape = _shape(x)
    lead = len(sizes) - len(shape)
    sizes = [shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)]
    if tuple(sizes) == shape:
        return x
    return ctx.result(graph.ExpandOp(operands=[x], result_types=[graph.tensor(sizes, x.type.element_type)]))


@handles(aten.slice.Tensor)
def _slice(ctx, node, x, dim=0, start=None, end=None, step=1):
    return slice_(ctx, ctx.value(x), dim, start, end, step)


@handles(aten.select.int)
def _select(ctx, node, x, dim, index):
    x = ctx.value(x)
    shape = list(_shape(x))
    dim = _dim(dim, len(shape))
    index %= shape[dim]
    picked = slice_(ctx, x, dim, index, index + 1)
    return reshape(ctx, picked, shape[:dim] + shape[dim + 1 :])


@handles(aten.split_with_sizes.default, aten.split.Tensor)
def _split(ctx, node, x, sizes, dim=0):
    x = ctx.value(x)
    extent = _shape(x)[_dim(dim, len(_shape(x)))]
    if isinstance(sizes, int):
        sizes = [min(sizes, extent - s) for s in range(0, extent, sizes)]
    parts, start = [], 0
    for size in sizes:
        parts.append(slice_(ctx, x, dim, start, start + size))
        start += size
    return parts


@handles(operator.getitem)
def _getitem(ctx, node, parts, index):
    return ctx.values[parts][index]


@handles(aten.cat.default)
def _cat(ctx, node, tensors, dim=0):
    inputs = [ctx.value(t) for t in tensors if math.prod(_shape(ctx.value(t))) > 0]
    if len(inputs) == 1:
        return inputs[0]
    shape = list(_shape(inputs[0]))
    dim = _dim(dim, len(shape))
    shape[dim] = sum(_shape(v)[dim] for v in inputs)
    return ctx.result(graph.ConcatOp(operands=[inputs], result_types=[ctx.tensor(shape)], attributes={"dim": graph.int_attr(dim)}))

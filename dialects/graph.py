"""The `graph` dialect: tensor-level ops at the granularity an LLM engineer thinks in.

Value semantics, static shapes, float data (f32, bf16, f16), integers (i64,
i32: token ids, positions, indices) and i1 masks. A float op computes in f32
and rounds its result to the result's element type, as eager PyTorch does per
op; `graph.cast` is such a rounding (or an integer/bool conversion) on its
own. The importer makes torch's type promotion explicit, so the operands of
an arithmetic op share one element type. Weights
are referenced by name (`graph.weight "attn.c_attn.weight"`), never printed
inline. Every op may carry `loc`, the model source line it came from. The same pointwise ops are used
on tiles inside `tile.kernel` bodies: their semantics (numpy broadcasting) do not
depend on whether the operand is a whole tensor or one tile of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import (
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    UnitAttr,
    f32,
    i1,
    i8,
    i32,
    i64,
)
from xdsl.irdl import base
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    opt_operand_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from llmc.dtypes import is_float


def shape_of(value: SSAValue | Attribute) -> tuple[int, ...]:
    typ = value.type if isinstance(value, SSAValue) else value
    assert isinstance(typ, TensorType), f"expected a tensor type, got {typ}"
    return tuple(typ.get_shape())


def tensor(shape: Sequence[int], element: Attribute = f32) -> TensorType:
    return TensorType(element, list(shape))


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """numpy's broadcasting rule, or None where the shapes do not broadcast."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


class GraphOp(IRDLOperation):
    """Common base: an optional source location string."""

    loc = opt_attr_def(StringAttr)

    @property
    def loc_str(self) -> str | None:
        return self.loc.data if self.loc else None


# ----------------------------------------------------------------- sources


@irdl_op_definition
class WeightOp(GraphOp):
    """A parameter or buffer of the model, looked up by its name at run time."""

    name = "graph.weight"
    weight_name = attr_def(StringAttr, attr_name="name")
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$name attr-dict `:` type($result)"

    def __init__(self, weight_name: str, typ: TensorType, loc: str | None = None):
        attrs = {"name": StringAttr(weight_name)}
        if loc:
            attrs["loc"] = StringAttr(loc)
        super().__init__(result_types=[typ], attributes=attrs)


@irdl_op_definition
class ConstantOp(GraphOp):
    """A tensor filled with one scalar (scalars of the model become 0-d constants); integer and
    bool constants carry an integer value, so large integers stay exact."""

    name = "graph.constant"
    value = attr_def(base(FloatAttr) | base(IntegerAttr))
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$value attr-dict `:` type($result)"

    def __init__(self, value: float | int, typ: TensorType | None = None):
        typ = typ or tensor(())
        if is_float(typ.element_type):
            attr = FloatAttr(float(value), f32)
        else:
            attr = IntegerAttr(int(value), i64)
        super().__init__(result_types=[typ], attributes={"value": attr})

    @property
    def number(self) -> float | int:
        return self.value.value.data


@irdl_op_definition
class CausalMaskOp(GraphOp):
    """A lower-triangular boolean mask over the last two dims (True = may attend)."""

    name = "graph.causal_mask"
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "attr-dict `:` type($result)"


@irdl_op_definition
class IotaOp(GraphOp):
    """Positions along `dim`: result[..., k, ...] = k. A folded `arange` is this, so passes can see
    that a comparison with it is a bound on a position (kv_idx <= cache_position)."""

    name = "graph.iota"
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "attr-dict `:` type($result)"

    def verify_(self):
        shape = shape_of(self.result)
        if not 0 <= self.dim.value.data < len(shape) or self.result.type.element_type not in (i64, i32):
            raise VerifyException(f"graph.iota: needs an integer result and a dim inside {shape}")


# ----------------------------------------------------------------- pointwise


class UnaryOp(GraphOp):
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def __init__(self, operand: SSAValue | None = None, *, operands=None, result_types=None, attributes=None):
        if operand is not None:
            operands, result_types = [operand], result_types or [operand.type]
        super().__init__(operands=operands, result_types=result_types, attributes=attributes)

    def verify_(self):
        if shape_of(self.operand) != shape_of(self.result):
            raise VerifyException(f"{self.name}: operand and result shapes differ")


class BinaryOp(GraphOp):
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)"
    RESULT_ELEMENT: ClassVar[Attribute | None] = None

    def __init__(self, lhs: SSAValue | None = None, rhs: SSAValue | None = None, *,
                 operands=None, result_types=None, attributes=None):
        if lhs is not None:
            shape = broadcast_shapes(shape_of(lhs), shape_of(rhs))
            assert shape is not None, f"{self.name}: shapes do not broadcast"
            element = self.RESULT_ELEMENT or lhs.type.element_type
            operands, result_types = [lhs, rhs], [tensor(shape, element)]
        super().__init__(operands=operands, result_types=result_types, attributes=attributes)

    def verify_(self):
        shape = broadcast_shapes(shape_of(self.lhs), shape_of(self.rhs))
        if shape is None or shape != shape_of(self.result):
            raise VerifyException(
                f"{self.name}: operands {shape_of(self.lhs)} and {shape_of(self.rhs)} "
                f"do not broadcast to the result shape {shape_of(self.result)}"
            )


def _unary(op_name: str, doc: str) -> type[UnaryOp]:
    cls = type(op_name.title().replace("_", "") + "Op", (UnaryOp,), {"name": f"graph.{op_name}", "__doc__": doc})
    return irdl_op_definition(cls)


class CompareOp(BinaryOp):
    RESULT_ELEMENT: ClassVar[Attribute | None] = i1


def _binary(op_name: str, doc: str, base: type[BinaryOp] = BinaryOp) -> type[BinaryOp]:
    body = {"name": f"graph.{op_name}", "__doc__": doc}
    cls = type(op_name.title().replace("_", "") + "Op", (base,), body)
    return irdl_op_definition(cls)


NegOp = _unary("neg", "-x")
ExpOp = _unary("exp", "e**x")
LogOp = _unary("log", "natural logarithm")
TanhOp = _unary("tanh", "hyperbolic tangent")
SqrtOp = _unary("sqrt", "square root")
RsqrtOp = _unary("rsqrt", "1 / sqrt(x)")
SigmoidOp = _unary("sigmoid", "1 / (1 + e**-x)")
ReluOp = _unary("relu", "max(x, 0)")
SiluOp = _unary("silu", "x * sigmoid(x)")
SinOp = _unary("sin", "sine")
CosOp = _unary("cos", "cosine")
AbsOp = _unary("abs", "|x|")
NotOp = _unary("not", "logical not of an i1 mask, bitwise not of an integer")


@irdl_op_definition
class CastOp(UnaryOp):
    """The operand rounded to (or widened from) the result's element type: `x.to(dtype)`."""

    name = "graph.cast"

AddOp = _binary("add", "lhs + rhs, broadcasting")
SubOp = _binary("sub", "lhs - rhs, broadcasting")
MulOp = _binary("mul", "lhs * rhs, broadcasting")
DivOp = _binary("div", "lhs / rhs, broadcasting")
PowOp = _binary("pow", "lhs ** rhs, broadcasting")
MaximumOp = _binary("maximum", "elementwise max, broadcasting")
MinimumOp = _binary("minimum", "elementwise min, broadcasting")
EqOp = _binary("eq", "lhs == rhs as an i1 mask", CompareOp)
NeOp = _binary("ne", "lhs != rhs as an i1 mask", CompareOp)
LtOp = _binary("lt", "lhs < rhs as an i1 mask", CompareOp)
LeOp = _binary("le", "lhs <= rhs as an i1 mask", CompareOp)
GtOp = _binary("gt", "lhs > rhs as an i1 mask", CompareOp)
GeOp = _binary("ge", "lhs >= rhs as an i1 mask", CompareOp)
AndOp = _binary("and", "logical and of i1 masks, bitwise and of integers")
OrOp = _binary("or", "logical or of i1 masks, bitwise or of integers")
XorOp = _binary("xor", "logical xor of i1 masks, bitwise xor of integers")
FloorDivOp = _binary("floordiv", "integer division rounding toward -inf (torch's floor_divide)")
RemOp = _binary("rem", "remainder with the sign of the divisor (torch's remainder)")


@irdl_op_definition
class GeluOp(GraphOp):
    """GELU; `approximate = "tanh"` is GPT-2's tanh form, "none" the erf form."""

    name = "graph.gelu"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    approximate = attr_def(StringAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if self.approximate.data not in ("tanh", "none"):
            raise VerifyException(f"graph.gelu: approximate must be tanh or none, got {self.approximate.data}")


@irdl_op_definition
class WhereOp(GraphOp):
    """cond ? lhs : rhs, broadcasting all three."""

    name = "graph.where"
    cond = operand_def(TensorType)
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$cond `,` $lhs `,` $rhs attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        shape = broadcast_shapes(shape_of(self.cond), shape_of(self.lhs), shape_of(self.rhs))
        if shape != shape_of(self.result):
            raise VerifyException("graph.where: operands do not broadcast to the result shape")
        if self.cond.type.element_type != i1:
            raise VerifyException("graph.where: the condition must be an i1 tensor")


# ----------------------------------------------------------------- contractions


@irdl_op_definition
class MatmulOp(GraphOp):
    """Batched a @ b with broadcast batch dims (torch.matmul on rank >= 2)."""

    name = "graph.matmul"
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        a, b = shape_of(self.lhs), shape_of(self.rhs)
        if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
            raise VerifyException(f"graph.matmul: cannot multiply {a} by {b}")
        batch = broadcast_shapes(a[:-2], b[:-2])
        if batch is None or (*batch, a[-2], b[-1]) != shape_of(self.result):
            raise VerifyException(f"graph.matmul: result shape {shape_of(self.result)} is wrong for {a} @ {b}")


@irdl_op_definition
class LinearOp(GraphOp):
    """x @ weight^T (+ bias), the weight stored as [out_features, in_features]."""

    name = "graph.linear"
    input = operand_def(TensorType)
    weight = operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    result = result_def(TensorType)
    # "int8": the input is rounded to int8 per block of 32 along K first (llmc.quantization.round_activations)
    activations = opt_attr_def(StringAttr)
    traits = traits_def(Pure())
    assembly_format = "$input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        x, w = shape_of(self.input), shape_of(self.weight)
        if len(w) != 2 or x[-1] != w[1]:
            raise VerifyException(f"graph.linear: input {x} does not match weight {w}")
        if self.bias is not None and shape_of(self.bias) != (w[0],):
            raise VerifyException(f"graph.linear: bias must have shape ({w[0]},)")
        if shape_of(self.result) != (*x[:-1], w[0]):
            raise VerifyException("graph.linear: wrong result shape")
        if self.activations is not None and self.activations.data != "int8":
            raise VerifyException("graph.linear: activations must be \"int8\" when given")


@irdl_op_definition
class DequantizeOp(GraphOp):
    """The f32 weight [N, K] that integer codes stand for: (code - zero) * scale, a scale (and zero
    point) per output channel or per `group` consecutive input channels (llmc.quantization; the last group may be partial).
    int8 codes are [N, K]; int4 codes are two per byte along K ([N, ceil(K/2)], k even in the low
    nibble, values 0..15); without `zeros` the zero point is 0 (int8) or 8 (int4)."""

    name = "graph.dequantize"
    codes = operand_def(TensorType)
    scales = operand_def(TensorType)
    zeros = opt_operand_def(TensorType)
    result = result_def(TensorType)
    format = attr_def(StringAttr)
    group_attr = attr_def(IntegerAttr, attr_name="group")
    traits = traits_def(Pure())
    assembly_format = "$codes `,` $scales (`,` $zeros^)? attr-dict `:` functional-type(operands, results)"

    @property
    def bits(self) -> int:
        return 8 if self.format.data == "int8" else 4

    @property
    def group(self) -> int:
        """Input channels per scale."""
        return self.group_attr.value.data

    def verify_(self):
        if self.format.data not in ("int8", "int4"):
            raise VerifyException("graph.dequantize: format must be int8 or int4")
        n, k = shape_of(self.result)
        columns = k if self.bits == 8 else (k + 1) // 2
        if shape_of(self.codes) != (n, columns) or self.codes.type.element_type != i8:
            raise VerifyException(f"graph.dequantize: {self.format.data} codes of a [{n}, {k}] weight are "
                                  f"tensor<{n}x{columns}xi8>, got {self.codes.type}")
        groups = shape_of(self.scales)
        if self.group < 1 or len(groups) != 2 or groups != (n, -(-k // self.group)):
            raise VerifyException(f"graph.dequantize: scales of a [{n}, {k}] weight in groups of {self.group} "
                                  f"are [{n}, {-(-k // max(self.group, 1))}], got {list(groups)}")
        if self.zeros is not None and (shape_of(self.zeros) != groups or self.bits == 8):
            raise VerifyException("graph.dequantize: zero points are int4's, shaped like the scales")
        for value in (self.scales, self.zeros):
            if value is not None and value.type.element_type != f32:
                raise VerifyException("graph.dequantize: scales and zero points are f32")
        if not is_float(self.result.type.element_type):
            raise VerifyException("graph.dequantize: the weight is a float tensor (f32, bf16 or f16)")


@irdl_op_definition
class AttentionOp(GraphOp):
    """softmax(q @ k^T * scale [causal] [+ mask]) @ v over [B, H, T, D]; k/v may have H/g heads (GQA).

    `causal` keeps key j for query i where j <= i. `mask` broadcasts to [B, H, Tq, Tk]: an i1 mask
    keeps the keys where it is true, a float mask is added to the scaled scores. `positions`
    (integer, broadcasting to [B, H, Tq, 1]) keeps key j for query i where j <= positions[i]: the
    run-time causal bound of a query at a cache position, so the kernel reads only keys up to it."""

    name = "graph.attention"
    query = operand_def(TensorType)
    key = operand_def(TensorType)
    value = operand_def(TensorType)
    mask = opt_operand_def(TensorType)
    positions = opt_operand_def(TensorType)
    result = result_def(TensorType)
    scale = attr_def(FloatAttr)
    causal = opt_attr_def(UnitAttr)
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    traits = traits_def(Pure())
    assembly_format = (
        "$query `,` $key `,` $value (`,` $mask^)? (`positions` $positions^ `:` type($positions))? attr-dict `:` "
        "`(` type($query) `,` type($key) `,` type($value) (`,` type($mask)^)? `)` `->` type($result)"
    )

    @staticmethod
    def make(query: SSAValue, key: SSAValue, value: SSAValue, mask: SSAValue | None, result_type: TensorType,
             attributes: dict, positions: SSAValue | None = None) -> AttentionOp:
        operands = [query, key, value, [mask] if mask is not None else [], [positions] if positions is not None else []]
        attributes = {k: v for k, v in attributes.items() if k != "operandSegmentSizes"}
        return AttentionOp(operands=operands, result_types=[result_type], attributes=attributes)

    def verify_(self):
        q, k, v = shape_of(self.query), shape_of(self.key), shape_of(self.value)
        if len(q) != 4 or len(k) != 4 or k != v[:3] + (k[3],) or q[3] != k[3]:
            raise VerifyException(f"graph.attention: bad shapes q={q} k={k} v={v}")
        if q[0] != k[0] or q[1] % k[1]:
            raise VerifyException("graph.attention: query heads must be a multiple of key heads")
        if shape_of(self.result) != (*q[:3], v[3]):
            raise VerifyException("graph.attention: wrong result shape")
        if self.mask is not None:
            scores = (q[0], q[1], q[2], k[2])
            if len(shape_of(self.mask)) > 4 or broadcast_shapes(shape_of(self.mask), scores) != scores:
                raise VerifyException(f"graph.attention: mask {shape_of(self.mask)} does not broadcast to {scores}")
        if self.positions is not None:
            rows = (q[0], q[1], q[2], 1)
            if self.positions.type.element_type not in (i64, i32) or len(shape_of(self.positions)) != 4 \
                    or broadcast_shapes(shape_of(self.positions), rows) != rows:
                raise VerifyException(f"graph.attention: positions must be integers broadcasting to {rows}")


@irdl_op_definition
class GatherOp(GraphOp):
    """Rows of `source` picked by `index`: result[..., n, :] = source[..., index[n], :].

    A negative index counts from the end (index + rows); one outside [-rows, rows) is a
    run-time error, as in torch. Embedding lookups and every torch indexing op become this."""

    name = "graph.gather"
    source = operand_def(TensorType)
    index = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$source `[` $index `]` attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        src, idx = shape_of(self.source), shape_of(self.index)
        if len(src) < 2 or len(idx) != 1 or self.index.type.element_type not in (i64, i32):
            raise VerifyException(f"graph.gather: needs a source of rank >= 2 and a 1-D integer index, got {src}, {idx}")
        if shape_of(self.result) != (*src[:-2], idx[0], src[-1]):
            raise VerifyException("graph.gather: wrong result shape")
        if self.result.type.element_type != self.source.type.element_type:
            raise VerifyException("graph.gather: the result has the source's element type")


@irdl_op_definition
class ScatterOp(GraphOp):
    """`dest` with rows replaced: result[..., index[n], :] = source[..., n, :], every other row as in
    `dest`; the inverse of graph.gather. A KV-cache write at run-time positions (index_copy,
    `cache[:, :, pos] = k`) is this. A negative index counts from the end; one outside [-rows, rows)
    is a run-time error and its row is not written. `fuse` makes it write `dest`'s buffer in place."""

    name = "graph.scatter"
    dest = operand_def(TensorType)
    index = operand_def(TensorType)
    source = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$dest `[` $index `]` `,` $source attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        dest, idx, src = shape_of(self.dest), shape_of(self.index), shape_of(self.source)
        if len(dest) < 2 or len(idx) != 1 or self.index.type.element_type not in (i64, i32):
            raise VerifyException(f"graph.scatter: needs a dest of rank >= 2 and a 1-D integer index, got {dest}, {idx}")
        if src != (*dest[:-2], idx[0], dest[-1]) or self.source.type.element_type != self.dest.type.element_type:
            raise VerifyException(f"graph.scatter: source {src} does not fit {idx[0]} rows of {dest}")
        if self.result.type != self.dest.type:
            raise VerifyException("graph.scatter: the result has the dest's type")


# ----------------------------------------------------------------- reductions


class ReduceOp(GraphOp):
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    keepdim = opt_attr_def(UnitAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        shape = shape_of(self.operand)
        dim = self.dim.value.data
        if not -len(shape) <= dim < len(shape):
            raise VerifyException(f"{self.name}: dim {dim} out of range for {shape}")
        dim %= len(shape)
        expect = shape[:dim] + ((1,) if self.keepdim else ()) + shape[dim + 1 :]
        if shape_of(self.result) != expect:
            raise VerifyException(f"{self.name}: result shape should be {expect}")


def _reduce(op_name: str, doc: str) -> type[ReduceOp]:
    cls = type(op_name.title().replace("_", "") + "Op", (ReduceOp,), {"name": f"graph.{op_name}", "__doc__": doc})
    return irdl_op_definition(cls)


ReduceSumOp = _reduce("reduce_sum", "sum over one dim")
ReduceMaxOp = _reduce("reduce_max", "max over one dim")
ReduceMeanOp = _reduce("reduce_mean", "mean over one dim")
ArgmaxOp = _reduce("argmax", "index (i64) of the first maximum over one dim")


@irdl_op_definition
class CumsumOp(GraphOp):
    """Inclusive prefix sum along one dim."""

    name = "graph.cumsum"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if shape_of(self.operand) != shape_of(self.result):
            raise VerifyException("graph.cumsum: operand and result shapes differ")


@irdl_op_definition
class SoftmaxOp(GraphOp):
    name = "graph.softmax"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"


@irdl_op_definition
class LayerNormOp(GraphOp):
    """Layer norm over the last dim, then * weight + bias (constants where the model has none)."""

    name = "graph.layer_norm"
    operand = operand_def(TensorType)
    weight = operand_def(TensorType)
    bias = operand_def(TensorType)
    result = result_def(TensorType)
    eps = attr_def(FloatAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand `,` $weight `,` $bias attr-dict `:` functional-type(operands, results)"


# ----------------------------------------------------------------- views


@irdl_op_definition
class ReshapeOp(GraphOp):
    name = "graph.reshape"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if math.prod(shape_of(self.operand)) != math.prod(shape_of(self.result)):
            raise VerifyException("graph.reshape: element counts differ")


@irdl_op_definition
class ExpandOp(GraphOp):
    """Broadcast to the result shape (torch.expand)."""

    name = "graph.expand"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if broadcast_shapes(shape_of(self.operand), shape_of(self.result)) != shape_of(self.result):
            raise VerifyException("graph.expand: operand does not broadcast to the result")


@irdl_op_definition
class PermuteOp(GraphOp):
    name = "graph.permute"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    perm = attr_def(DenseArrayBase)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        perm = self.perm.get_values()
        shape = shape_of(self.operand)
        if sorted(perm) != list(range(len(shape))):
            raise VerifyException(f"graph.permute: {perm} is not a permutation")
        if tuple(shape[p] for p in perm) != shape_of(self.result):
            raise VerifyException("graph.permute: wrong result shape")


@irdl_op_definition
class SliceOp(GraphOp):
    """operand[start:end:step] along one dim."""

    name = "graph.slice"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    start = attr_def(IntegerAttr)
    end = attr_def(IntegerAttr)
    step = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        shape = list(shape_of(self.operand))
        dim, start, end, step = (a.value.data for a in (self.dim, self.start, self.end, self.step))
        if not (0 <= dim < len(shape)) or not (0 <= start <= end <= shape[dim]) or step < 1:
            raise VerifyException(f"graph.slice: bad slice {start}:{end}:{step} of dim {dim} in {shape}")
        shape[dim] = len(range(start, end, step))
        if tuple(shape) != shape_of(self.result):
            raise VerifyException("graph.slice: wrong result shape")


@irdl_op_definition
class ConcatOp(GraphOp):
    name = "graph.concat"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    dim = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$inputs attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        shapes = [shape_of(v) for v in self.inputs]
        dim = self.dim.value.data
        out = list(shapes[0])
        if not 0 <= dim < len(out):
            raise VerifyException("graph.concat: dim out of range")
        out[dim] = sum(s[dim] for s in shapes)
        for s in shapes:
            if len(s) != len(out) or any(a != b for i, (a, b) in enumerate(zip(s, out)) if i != dim):
                raise VerifyException(f"graph.concat: inputs {shapes} disagree off dim {dim}")
        if tuple(out) != shape_of(self.result):
            raise VerifyException("graph.concat: wrong result shape")


UNARY_OPS = (NegOp, ExpOp, LogOp, TanhOp, SqrtOp, RsqrtOp, SigmoidOp, ReluOp, SiluOp, SinOp, CosOp, AbsOp, NotOp, CastOp)
BINARY_OPS = (AddOp, SubOp, MulOp, DivOp, PowOp, MaximumOp, MinimumOp, EqOp, NeOp, LtOp, LeOp, GtOp, GeOp,
              AndOp, OrOp, XorOp, FloorDivOp, RemOp)
POINTWISE_OPS = (*UNARY_OPS, *BINARY_OPS, GeluOp, WhereOp)
REDUCE_OPS = (ReduceSumOp, ReduceMaxOp, ReduceMeanOp, ArgmaxOp)
ROW_OPS = (*REDUCE_OPS, SoftmaxOp, LayerNormOp, CumsumOp)
VIEW_OPS = (ReshapeOp, ExpandOp, PermuteOp, SliceOp)
SOURCE_OPS = (WeightOp, ConstantOp, CausalMaskOp, IotaOp)

Graph = Dialect(
    "graph",
    [
        WeightOp,
        ConstantOp,
        CausalMaskOp,
        IotaOp,
        *POINTWISE_OPS,
        MatmulOp,
        LinearOp,
        DequantizeOp,
        AttentionOp,
        GatherOp,
        ScatterOp,
        *ROW_OPS,
        *VIEW_OPS,
        ConcatOp,
    ],
)


# On a func.func: [r0, a0, r1, a1, ...], the caller copies result r into argument a after each call
# (a buffer or input the model updates); `fuse` may then write r into a's storage in place.
WRITES_BACK = "llmc.writes_back"


def int_attr(value: int) -> IntegerAttr:
    return IntegerAttr(value, i64)


def dense(values: Sequence[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, list(values))


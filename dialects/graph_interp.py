"""numpy semantics of the `graph` dialect for xDSL's interpreter.

Tensors are numpy arrays (float32 data, int64 integers, bool masks). Weights come from the
mapping the functions object is built with, looked up by the name in the IR.
A result of a 16-bit element type is rounded to it (`rounded`), so a bf16
graph runs with eager's per-op rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from xdsl.interpreter import Interpreter, InterpreterFunctions, PythonValues, impl, register_impls

from llmc.dialects import graph
from llmc.dtypes import is_float, round_to, storage_dtype
from llmc.errors import InterpretError, with_loc
from llmc.quantization import QuantFormat, dequantize, round_activations, weight_value

F32 = np.float32


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        inner = F32(np.sqrt(2.0 / np.pi)) * (x + F32(0.044715) * x * x * x)
        return F32(0.5) * x * (F32(1.0) + np.tanh(inner))
    return torch.nn.functional.gelu(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(1.0) / (F32(1.0) + np.exp(-x))


UNARY: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    graph.NegOp: np.negative,
    graph.ExpOp: np.exp,
    graph.LogOp: np.log,
    graph.TanhOp: np.tanh,
    graph.SqrtOp: np.sqrt,
    graph.RsqrtOp: lambda x: F32(1.0) / np.sqrt(x),
    graph.SigmoidOp: _sigmoid,
    graph.ReluOp: lambda x: np.maximum(x, F32(0.0)),
    graph.SiluOp: lambda x: x * _sigmoid(x),
    graph.SinOp: np.sin,
    graph.CosOp: np.cos,
    graph.AbsOp: np.abs,
    graph.NotOp: lambda x: np.logical_not(x) if x.dtype == np.bool_ else np.invert(x),
    graph.CastOp: lambda x: x,  # the rounding is the result type's
}

BINARY: dict[type, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    graph.AddOp: np.add,
    graph.SubOp: np.subtract,
    graph.MulOp: np.multiply,
    graph.DivOp: np.divide,
    graph.PowOp: np.power,
    graph.MaximumOp: np.maximum,
    graph.MinimumOp: np.minimum,
    graph.EqOp: np.equal,
    graph.NeOp: np.not_equal,
    graph.LtOp: np.less,
    graph.LeOp: np.less_equal,
    graph.GtOp: np.greater,
    graph.GeOp: np.greater_equal,
    graph.AndOp: np.bitwise_and,
    graph.OrOp: np.bitwise_or,
    graph.XorOp: np.bitwise_xor,
    graph.FloorDivOp: np.floor_divide,
    graph.RemOp: np.remainder,
}


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def causal_mask(shape: tuple[int, ...]) -> np.ndarray:
    rows, cols = shape[-2], shape[-1]
    return np.broadcast_to(np.tril(np.ones((rows, cols), dtype=bool)), shape).copy()


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool,
              mask: np.ndarray | None = None, positions: np.ndarray | None = None) -> np.ndarray:
    """SDPA's semantics: a bool mask keeps keys where true, a float mask adds to the scores, and a
    query row with every key masked out gives zeros. `positions` keeps key j for query i where
    j <= positions[..., i, 0]."""
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = (q @ np.swapaxes(k, -1, -2)) * F32(scale)
    if causal:
        scores = np.where(causal_mask(scores.shape), scores, F32(-np.inf))
    if positions is not None:
        keys = np.arange(scores.shape[-1])
        scores = np.where(keys <= np.asarray(positions, dtype=np.int64), scores, F32(-np.inf))
    if mask is not None:
        scores = np.where(mask, scores, F32(-np.inf)) if mask.dtype == np.bool_ else scores + mask.astype(F32)
    top = scores.max(axis=-1, keepdims=True)
    live = np.isfinite(top)
    weights = np.exp(scores - np.where(live, top, F32(0)))
    total = weights.sum(axis=-1, keepdims=True)
    probs = np.where(live, weights / np.where(live, total, F32(1)), F32(0))
    return (probs @ v).astype(F32)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + F32(eps)) * weight + bias


def rounded(op, value: np.ndarray) -> np.ndarray:
    """A result in the op's result element type: floats computed in f32 and rounded to it,
    integers as int64, masks as bool."""
    element = op.results[0].type.element_type
    if is_float(element):
        value = np.asarray(value, dtype=F32)
    return round_to(value, element)


def _unary_impl(op_type: type, fn: Callable[[np.ndarray], np.ndarray]):
    @impl(op_type)
    def run(self, interpreter: Interpreter, op, args: PythonValues) -> PythonValues:
        return (rounded(op, fn(args[0])),)

    return run


def _binary_impl(op_type: type, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    @impl(op_type)
    def run(self, interpreter: Interpreter, op, args: PythonValues) -> PythonValues:
        result = fn(args[0], args[1])
        return (result if result.dtype == np.bool_ else rounded(op, result),)

    return run


def _reduce_impl(op_type: type, fn: Callable[..., np.ndarray]):
    @impl(op_type)
    def run(self, interpreter: Interpreter, op: graph.ReduceOp, args: PythonValues) -> PythonValues:
        keep = op.keepdim is not None
        return (rounded(op, fn(args[0], axis=op.dim.value.data, keepdims=keep)),)

    return run


@register_impls
class GraphFunctions(InterpreterFunctions):
    """Interpreter functions for `graph`; `weights` maps weight names to arrays."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights

    for _op, _fn in UNARY.items():
        locals()[f"run_{_op.name}"] = _unary_impl(_op, _fn)
    for _op, _fn in BINARY.items():
        locals()[f"run_{_op.name}"] = _binary_impl(_op, _fn)
    for _op, _fn in ((graph.ReduceSumOp, np.sum), (graph.ReduceMaxOp, np.max), (graph.ReduceMeanOp, np.mean),
                     (graph.ArgmaxOp, np.argmax)):
        locals()[f"run_{_op.name}"] = _reduce_impl(_op, _fn)
    del _op, _fn

    @impl(graph.WeightOp)
    def run_weight(self, interpreter: Interpreter, op: graph.WeightOp, args: PythonValues):
        name = op.weight_name.data
        value = weight_value(self.weights, name)
        if value is None:
            raise InterpretError(with_loc(f"no value was given for weight '{name}'", op.loc_str))
        value = np.asarray(value)
        if value.shape != graph.shape_of(op.result):
            raise InterpretError(f"weight '{name}' has shape {value.shape}, the IR expects {graph.shape_of(op.result)}")
        return (value,)

    @impl(graph.ConstantOp)
    def run_constant(self, interpreter: Interpreter, op: graph.ConstantOp, args: PythonValues):
        element = op.result.type.element_type
        dtype = np.dtype(F32 if is_float(element) else storage_dtype(element))
        return (np.full(graph.shape_of(op.result), op.number, dtype=np.int64 if dtype.kind == "i" else dtype),)

    @impl(graph.CausalMaskOp)
    def run_causal_mask(self, interpreter: Interpreter, op: graph.CausalMaskOp, args: PythonValues):
        return (causal_mask(graph.shape_of(op.result)),)

    @impl(graph.GeluOp)
    def run_gelu(self, interpreter: Interpreter, op: graph.GeluOp, args: PythonValues):
        return (rounded(op, _gelu(args[0], op.approximate.data)),)

    @impl(graph.WhereOp)
    def run_where(self, interpreter: Interpreter, op: graph.WhereOp, args: PythonValues):
        return (rounded(op, np.where(*args)),)

    @impl(graph.MatmulOp)
    def run_matmul(self, interpreter: Interpreter, op: graph.MatmulOp, args: PythonValues):
        return (rounded(op, np.matmul(args[0], args[1])),)

    @impl(graph.LinearOp)
    def run_linear(self, interpreter: Interpreter, op: graph.LinearOp, args: PythonValues):
        x = round_activations(args[0]) if op.activations is not None else args[0]
        out = np.matmul(x, args[1].T)
        if len(args) == 3:
            out = out + args[2]
        return (rounded(op, out),)

    @impl(graph.DequantizeOp)
    def run_dequantize(self, interpreter: Interpreter, op: graph.DequantizeOp, args: PythonValues):
        zeros = args[2] if op.zeros is not None else None
        k = graph.shape_of(op.result)[1]
        fmt = QuantFormat(op.bits, 0 if op.group == k else op.group, zeros is None)
        return (rounded(op, dequantize(args[0], args[1], zeros, fmt, k)),)

    @impl(graph.AttentionOp)
    def run_attention(self, interpreter: Interpreter, op: graph.AttentionOp, args: PythonValues):
        rest = list(args[3:])
        mask = rest.pop(0) if op.mask is not None else None
        positions = rest.pop(0) if op.positions is not None else None
        return (rounded(op, attention(*args[:3], op.scale.value.data, op.causal is not None, mask, positions)),)

    @impl(graph.IotaOp)
    def run_iota(self, interpreter: Interpreter, op: graph.IotaOp, args: PythonValues):
        shape, dim = graph.shape_of(op.result), op.dim.value.data
        steps = np.arange(shape[dim], dtype=np.int64).reshape([-1 if d == dim else 1 for d in range(len(shape))])
        return (np.broadcast_to(steps, shape).copy(),)

    @impl(graph.ScatterOp)
    def run_scatter(self, interpreter: Interpreter, op: graph.ScatterOp, args: PythonValues):
        dest, index, source = args
        rows = dest.shape[-2]
        index = np.asarray(index, dtype=np.int64)
        bad = (index < -rows) | (index >= rows)
        if bad.any():
            raise InterpretError(with_loc(f"index {int(index[bad][0])} is out of range for {rows} rows", op.loc_str))
        result = np.array(dest, copy=True)
        result[..., np.where(index < 0, index + rows, index), :] = source
        return (result,)

    @impl(graph.GatherOp)
    def run_gather(self, interpreter: Interpreter, op: graph.GatherOp, args: PythonValues):
        source, index = args
        rows = source.shape[-2]
        index = np.asarray(index, dtype=np.int64)
        bad = (index < -rows) | (index >= rows)
        if bad.any():
            raise InterpretError(with_loc(f"index {int(index[bad][0])} is out of range for {rows} rows", op.loc_str))
        return (np.take(source, np.where(index < 0, index + rows, index), axis=-2),)

    @impl(graph.CumsumOp)
    def run_cumsum(self, interpreter: Interpreter, op: graph.CumsumOp, args: PythonValues):
        return (rounded(op, np.cumsum(args[0], axis=op.dim.value.data)),)

    @impl(graph.SoftmaxOp)
    def run_softmax(self, interpreter: Interpreter, op: graph.SoftmaxOp, args: PythonValues):
        return (rounded(op, softmax(args[0], op.dim.value.data)),)

    @impl(graph.LayerNormOp)
    def run_layer_norm(self, interpreter: Interpreter, op: graph.LayerNormOp, args: PythonValues):
        return (rounded(op, layer_norm(*args, op.eps.value.data)),)

    @impl(graph.ReshapeOp)
    def run_reshape(self, interpreter: Interpreter, op: graph.ReshapeOp, args: PythonValues):
        return (np.reshape(args[0], graph.shape_of(op.result)),)

    @impl(graph.ExpandOp)
    def run_expand(self, interpreter: Interpreter, op: graph.ExpandOp, args: PythonValues):
        return (np.broadcast_to(args[0], graph.shape_of(op.result)),)

    @impl(graph.PermuteOp)
    def run_permute(self, interpreter: Interpreter, op: graph.PermuteOp, args: PythonValues):
        return (np.transpose(args[0], op.perm.get_values()),)

    @impl(graph.SliceOp)
    def run_slice(self, interpreter: Interpreter, op: graph.SliceOp, args: PythonValues):
        index = [slice(None)] * args[0].ndim
        index[op.dim.value.data] = slice(op.start.value.data, op.end.value.data, op.step.value.data)
        return (args[0][tuple(index)],)

    @impl(graph.ConcatOp)
    def run_concat(self, interpreter: Interpreter, op: graph.ConcatOp, args: PythonValues):
        return (np.concatenate(args, axis=op.dim.value.data),)

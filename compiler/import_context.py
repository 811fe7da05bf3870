"""The importer's context and the registry its handlers fill: ATen node → `graph` ops.

`ImportContext` holds the values imported so far, the compile-time constants
folding found (materialised on first use: splat, causal mask, or named
constant buffer), and the model line of the node being imported. Handlers
register with `@handles(target)` in `exporter_ops.py` (arithmetic,
contractions, reductions) and `exporter_views.py` (views and indexing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from xdsl.dialects.builtin import StringAttr, TensorType, f32, i1, i64
from xdsl.ir import Attribute, Block, Operation, SSAValue

from llmc.dialects import graph
from llmc.dtypes import element_of, to_numpy
from llmc.errors import UnsupportedOpError, with_loc
from llmc.folding import Causal, Iota, Splat, classify

aten = torch.ops.aten


def source_loc(node: torch.fx.Node) -> str | None:
    """'file.py:LINE' of the innermost frame of the model's code (torch's own frames skipped; a
    Hugging Face model's line is in its modeling file)."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    frames = [(f, line) for f, line in frames if "/torch/" not in f and not f.startswith("<")]
    if not frames:
        return None
    path, line = frames[-1]
    return f"{Path(path).name}:{line}"


@dataclass
class ImportContext:
    block: Block
    folded: dict = field(default_factory=dict)  # FX node -> its compile-time value
    weights: dict = field(default_factory=dict)  # weight name -> value, filled as weights are named
    values: dict = field(default_factory=dict)
    loc: str | None = None
    element: Attribute = f32  # the element type of the node being imported (its FX meta)

    def add(self, op: Operation, loc: str | None = "current") -> Operation:
        loc = self.loc if loc == "current" else loc
        if loc and isinstance(op, graph.GraphOp):
            op.attributes["loc"] = StringAttr(loc)
        self.block.add_op(op)
        return op

    def value(self, arg, element: Attribute | None = None) -> SSAValue:
        """An SSA value for an FX argument: a node's value, a folded constant, or a scalar."""
        if isinstance(arg, torch.fx.Node):
            if arg not in self.values:
                if arg not in self.folded:
                    raise self.unsupported(f"the value of FX node '{arg.name}' ({arg.op} {arg.target})")
                self.values[arg] = self.materialise(arg)
            return self.values[arg]
        if isinstance(arg, bool | int | float):
            return self.scalar(arg, element or scalar_element(arg))
        raise self.unsupported(f"argument {arg!r} of type {type(arg).__name__}")

    def scalar(self, value, element: Attribute = f32) -> SSAValue:
        return self.add(graph.ConstantOp(value, graph.tensor((), element))).result

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(with_loc(f"llmc cannot import {what}", self.loc))

    def tensor(self, shape, element: Attribute | None = None) -> TensorType:
        """The type of a result of the node being imported."""
        return graph.tensor(tuple(shape), element or self.element)

    def result(self, op: Operation) -> SSAValue:
        return self.add(op).results[0]

    def cast(self, value: SSAValue, element: Attribute) -> SSAValue:
        if value.type.element_type == element:
            return value
        return self.result(graph.CastOp(operands=[value], result_types=[graph.tensor(graph.shape_of(value), element)]))

    def broadcast_to(self, value: SSAValue, shape) -> SSAValue:
        shape = tuple(shape)
        if graph.shape_of(value) == shape:
            return value
        return self.result(graph.ExpandOp(operands=[value], result_types=[graph.tensor(shape, value.type.element_type)]))

    def weight(self, name: str, tensor: torch.Tensor, loc: str | None = None) -> SSAValue:
        op = graph.WeightOp(name, tensor_type(tensor, f"weight '{name}'"), loc)
        self.add(op, None)
        hint = re.sub(r"\W", "_", name)
        op.result.name_hint = hint if not hint[:1].isdigit() else f"w{hint}"  # nn.Sequential's "0.weight"
        self.weights[name] = to_numpy(tensor)
        return op.result

    def materialise(self, node: torch.fx.Node) -> SSAValue:
        """A folded value as IR: splat, causal mask, or a named constant buffer."""
        value = self.folded[node]
        if not isinstance(value, torch.Tensor):
            return self.value(value)
        saved, self.loc = self.loc, source_loc(node)
        try:
            return self.constant(value, node.name)
        finally:
            self.loc = saved

    def constant(self, value: torch.Tensor, name: str) -> SSAValue:
        if value.dtype == torch.float64 and value.dim() == 0:
            value = value.float()  # a Python-float scalar (a size's square root...): promotes as a float32 one
        element = element_of(value.dtype)
        if element is None:
            raise self.unsupported(f"a {value.dtype} constant ('{name}')")
        full = tuple(value.shape)
        kind = classify(value)
        if isinstance(kind, Splat):
            return self.result(graph.ConstantOp(kind.value, graph.tensor(full, element)))
        if isinstance(kind, Causal):
            mask = self.result(graph.CausalMaskOp(result_types=[graph.tensor(full, i1)]))
            if kind.negated:
                return self.result(graph.NotOp(mask))
            if kind.additive is not None:
                zero, masked = self.scalar(0.0, element), self.scalar(kind.additive, element)
                return self.result(graph.WhereOp(operands=[mask, zero, masked], result_types=[graph.tensor(full, element)]))
            return mask
        if isinstance(kind, Iota):
            iota = self.result(graph.IotaOp(result_types=[graph.tensor(kind.shape, element)],
                                            attributes={"dim": graph.int_attr(kind.dim)}))
            return self.broadcast_to(iota, full)
        stored = self.weight(f"const.{name}", kind.compact, self.loc)
        return self.broadcast_to(stored, full)


def tensor_type(value: torch.Tensor, what: str) -> TensorType:
    """The graph type of a tensor the model passes in; an llmc error for a dtype llmc does not take."""
    element = element_of(value.dtype)
    if element is None:
        raise UnsupportedOpError(
            f"{what} has dtype {value.dtype}; llmc supports float32, bfloat16, float16, int64, int32 and bool tensors")
    return graph.tensor(tuple(value.shape), element)


def scalar_element(value) -> Attribute:
    if isinstance(value, bool):
        return i1
    return i64 if isinstance(value, int) else f32


def meta(arg):
    """What torch's type promotion sees of an argument: a meta tensor of its shape and dtype, or the scalar."""
    if isinstance(arg, torch.fx.Node):
        value = arg.meta.get("val")
        if isinstance(value, torch.Tensor):
            return torch.empty(value.shape, dtype=value.dtype, device="meta")
    return arg


def promoted(*args) -> Attribute:
    """The element type torch computes an op on these arguments in."""
    dtype = torch.result_type(meta(args[0]), meta(args[1])) if len(args) == 2 else meta(args[0]).dtype
    element = element_of(dtype)
    if element is None:
        raise UnsupportedOpError(f"llmc does not compute in {dtype}")
    return element


Handler = Callable[..., SSAValue | list[SSAValue]]
OP_HANDLERS: dict[object, Handler] = {}


def handles(*targets) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for target in targets:
            OP_HANDLERS[target] = fn
        return fn

    return register


def shape(v: SSAValue) -> tuple[int, ...]:
    return graph.shape_of(v)


def norm_dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


# ----------------------------------------------------------------- view helpers


def reshape(ctx: ImportContext, x: SSAValue, new_shape) -> SSAValue:
    new_shape = list(new_shape)
    if -1 in new_shape:
        known = math.prod(d for d in new_shape if d != -1)
        new_shape[new_shape.index(-1)] = math.prod(shape(x)) // known if known else 0
    if tuple(new_shape) == shape(x):
        return x
    return ctx.result(graph.ReshapeOp(operands=[x], result_types=[graph.tensor(new_shape, x.type.element_type)]))


def permute(ctx: ImportContext, x: SSAValue, perm) -> SSAValue:
    full = shape(x)
    perm = [norm_dim(p, len(full)) for p in perm]
    if perm == sorted(perm):
        return x
    out = graph.tensor([full[p] for p in perm], x.type.element_type)
    return ctx.result(graph.PermuteOp(operands=[x], result_types=[out], attributes={"perm": graph.dense(perm)}))

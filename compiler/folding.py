"""Compile-time constants: every FX node whose value does not depend on a runtime input.

Decide, then do. `fold_constants` walks the ATen graph once and evaluates, with
torch itself (so the values are exactly eager's), each node whose tensor inputs
are all constants: buffers the model does not mutate, lifted tensor constants,
and nodes that create tensors from shapes alone (`arange`, `full`, `ones`,
`triu`, `new_ones(x)`, ...). Parameters are weights, not folding sources, so a
weight is never copied into a transformed constant.

`classify` then says how the importer should write a folded value that a
runtime op reads: a splat becomes a `graph.constant`, a lower-triangular bool
mask (or its negation, or a 0 / -inf additive mask of that shape) becomes
`graph.causal_mask` so attention takes it as its causal attribute and reads no
mask bytes, and anything else a named constant buffer, stored without the
dims it is only broadcast along.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten

# Ops whose value depends only on their input's shape and dtype, never on its values.
SHAPE_ONLY = {
    aten.new_ones.default, aten.new_zeros.default, aten.new_full.default, aten.new_empty.default,
    aten.ones_like.default, aten.zeros_like.default, aten.full_like.default, aten.empty_like.default,
}
# Ops that run without side effects though torch tags them otherwise, or higher-order wrappers.
ALWAYS_FOLDABLE = {operator.getitem}
MASK_FLOOR = -1e30  # an additive mask value at or below this masks the key out (HF uses finfo.min)


def _foldable_target(node: torch.fx.Node) -> bool:
    target = node.target
    if target in ALWAYS_FOLDABLE or target in SHAPE_ONLY:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target is aten.dropout.default:
        return not (node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False))
    if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
        return False
    return target.namespace in ("aten", "prims")


def _shape_stand_in(arg):
    """A real tensor of the shape and dtype of a node's traced value (for shape-only ops)."""
    value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=value.dtype)
    return None


def foldable(node: torch.fx.Node) -> bool:
    """Whether torch may evaluate this node at compile time once its inputs are known."""
    return node.op == "call_function" and _foldable_target(node)


def fold_constants(gm: torch.fx.GraphModule, constants: dict[str, torch.Tensor]) -> dict[torch.fx.Node, object]:
    """Values of every node computable at compile time; `constants` are placeholders by name."""
    folded: dict[torch.fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.name in constants:
            folded[node] = constants[node.name]
        elif node.op == "call_function" and _foldable_target(node):
            value = _evaluate(node, folded)
            if value is not None:
                folded[node] = value
    return folded


def _evaluate(node: torch.fx.Node, folded: dict) -> object | None:
    args, kwargs = node.args, node.kwargs
    if node.target in SHAPE_ONLY:
        stand_in = _shape_stand_in(args[0])
        if stand_in is None:
            return None
        args = (stand_in, *args[1:])
    inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.fx.Node)]
    if any(a not in folded for a in inputs):
        return None
    args, kwargs = tree_map(lambda a: folded[a] if isinstance(a, torch.fx.Node) else a, (args, kwargs))
    try:
        with torch.no_grad():
            value = node.target(*args, **kwargs)
    except Exception:  # leave it to the importer, which reports ops it cannot take
        return None
    leaves = tree_flatten(value)[0]
    if not leaves or not all(isinstance(v, torch.Tensor | int | float | bool) for v in leaves):
        return None
    return value


# ----------------------------------------------------------------- how a folded value is written


@dataclass(frozen=True)
class Splat:
    value: float | int | bool


@dataclass(frozen=True)
class Causal:
    """A lower-triangular mask of `shape`: bool (`negated`: True where masked) or additive float."""

    negated: bool = False
    additive: float | None = None  # the masked value of an additive float mask


@dataclass(frozen=True)
class Stored:
    """A named constant buffer holding `compact`, broadcast to the value's shape where it is larger."""

    compact: torch.Tensor


@dataclass(frozen=True)
class Iota:
    """Integer positions 0, 1, ... along `dim` of `shape` (the compact value), broadcast to the value:
    a folded `arange`, which attention's mask analysis reads as key positions."""

    dim: int
    shape: tuple[int, ...]


def compact(value: torch.Tensor) -> torch.Tensor:
    """The value without the dims it is only broadcast along (stride 0, or equal slices)."""
    value = value.detach()
    for dim in range(value.dim()):
        if value.shape[dim] > 1 and (value.stride(dim) == 0 or _constant_along(value, dim)):
            value = value.narrow(dim, 0, 1)
    return value.contiguous()


def _constant_along(value: torch.Tensor, dim: int) -> bool:
    first = value.narrow(dim, 0, 1)
    return value.numel() <= 1 << 24 and bool(torch.equal(value, first.expand_as(value)))


def classify(value: torch.Tensor) -> Splat | Causal | Iota | Stored:
    small = compact(value)
    if small.numel() == 1:
        return Splat(small.reshape(()).item())
    varying = [d for d in range(small.dim()) if small.shape[d] > 1]
    if value.dtype in (torch.int64, torch.int32) and len(varying) == 1:
        steps = torch.arange(small.shape[varying[0]], dtype=small.dtype)
        if torch.equal(small.reshape(-1), steps):
            return Iota(varying[0], tuple(small.shape))
    if value.dim() >= 2 and _lower_triangular_pattern(small, value):
        tril = _tril_of(small)
        if small.dtype == torch.bool:
            return Causal(negated=not bool(small.reshape(tril.shape)[0, 0]))
        masked = small.reshape(tril.shape)[~tril]
        if bool((small.reshape(tril.shape)[tril] == 0).all()) and masked.numel() and bool((masked == masked[0]).all()):
            if float(masked[0]) <= MASK_FLOOR:
                return Causal(additive=float(masked[0]))
    return Stored(small)


def _tril_of(small: torch.Tensor) -> torch.Tensor:
    rows, cols = small.shape[-2], small.shape[-1]
    return torch.tril(torch.ones(rows, cols, dtype=torch.bool))


def _lower_triangular_pattern(small: torch.Tensor, value: torch.Tensor) -> bool:
    """Only the last two dims vary, they are the value's full extent, and they split the value into
    the positions of tril(ones) and the rest (in either order)."""
    if any(d != 1 for d in small.shape[:-2]) or small.shape[-2:] != value.shape[-2:] or small.shape[-2] < 2:
        return False
    square = small.reshape(small.shape[-2:])
    tril = _tril_of(small)
    inside, outside = square[tril], square[~tril]
    if outside.numel() == 0 or not bool((inside == inside[0]).all()) or not bool((outside == outside[0]).all()):
        return False
    return not bool(inside[0] == outside[0])

"""View chains: graph.reshape/permute/slice/expand applied to a buffer.

A chain of views over a contiguous buffer is free when it stays a strided view
(shape, strides, offset): the consumer's loads absorb it. torch's own strided
view rules decide that, on meta tensors, so llmc agrees with torch on which
reshapes need a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from xdsl.ir import Operation, SSAValue

from llmc.dialects import graph


@dataclass(frozen=True)
class StridedView:
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    def broadcast_to(self, shape: tuple[int, ...]) -> StridedView:
        """Right-align to `shape` as numpy broadcasting does; size-1 dims get stride 0."""
        lead = len(shape) - len(self.shape)
        strides = [0] * lead + [0 if d == 1 and s != 1 else st for d, s, st in zip(self.shape, shape[lead:], self.strides)]
        return StridedView(tuple(shape), tuple(strides), self.offset)


def view_chain(value: SSAValue) -> tuple[SSAValue, list[Operation]]:
    """The root value under a chain of view ops, and the views root-first."""
    chain = []
    while isinstance(value.owner, graph.VIEW_OPS):
        chain.append(value.owner)
        value = value.owner.operand
    return value, chain[::-1]


def contiguous(shape: tuple[int, ...]) -> StridedView:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return StridedView(tuple(shape), tuple(reversed(strides)), 0)


def apply_views(shape: tuple[int, ...], chain: list[Operation]) -> StridedView | None:
    """The strided view that `chain` makes of a contiguous buffer, or None if one needs a copy."""
    t = torch.empty(shape, device="meta")
    for op in chain:
        t = _apply(t, op)
        if t is None:
            return None
    return StridedView(tuple(t.shape), tuple(t.stride()), t.storage_offset())


def _apply(t: torch.Tensor, op: Operation) -> torch.Tensor | None:
    if isinstance(op, graph.ReshapeOp):
        try:
            return t.view(graph.shape_of(op.result))
        except RuntimeError:
            return None
    if isinstance(op, graph.PermuteOp):
        return t.permute(op.perm.get_values())
    if isinstance(op, graph.ExpandOp):
        return t.expand(graph.shape_of(op.result))
    index = [slice(None)] * t.dim()
    index[op.dim.value.data] = slice(op.start.value.data, op.end.value.data, op.step.value.data)
    return t[tuple(index)]


def store_view(value_shape: tuple[int, ...], views, out_shape: tuple[int, ...]) -> StridedView | None:
    """How a value of `value_shape` lands in a contiguous buffer of `views(value)` (permutes and
    reshapes undone on the buffer), or None where that is not one strided view of it."""
    t = torch.empty(out_shape, device="meta")
    try:
        for op in reversed(views):
            if isinstance(op, graph.PermuteOp):
                perm = op.perm.get_values()
                t = t.permute([perm.index(i) for i in range(len(perm))])
            else:
                t = t.view(graph.shape_of(op.operand))
        t = t.view(value_shape) if tuple(t.shape) != value_shape else t
    except RuntimeError:
        return None
    return StridedView(tuple(t.shape), tuple(t.stride()), t.storage_offset())

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


def iota_dim(root: SSAValue, chain: list[Operation]) -> int | None:
    """The dim that holds the positions of a graph.iota `root` once seen through `chain`: expands keep
    it, reshapes that only add or drop unit dims move it; None when a view mixes it with other dims."""
    shape, dim = graph.shape_of(root), root.owner.dim.value.data
    for view in chain:
        after = graph.shape_of(view.result)
        if isinstance(view, graph.ReshapeOp):
            kept_before = [d for d in range(len(shape)) if shape[d] != 1]
            kept_after = [d for d in range(len(after)) if after[d] != 1]
            if [shape[d] for d in kept_before] != [after[d] for d in kept_after] or dim not in kept_before:
                return None
            dim = kept_after[kept_before.index(dim)]
        elif isinstance(view, graph.ExpandOp):
            dim += len(after) - len(shape)  # an expand right-aligns, as broadcasting does
        else:
            return None
        shape = after
    return dim


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

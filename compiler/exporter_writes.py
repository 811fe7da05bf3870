"""Importing writes at run-time positions: `index_copy` and `index_put` become `graph.scatter`.

A KV cache updated in place (`cache.index_copy_(2, pos, k)`, `cache[:, :, pos] = k`, Hugging
Face's `StaticCache`) reaches the importer functionalized: `index_copy(cache, 2, pos, k)` whose
result is copied back into the cache. Its rows dim is written by one `graph.scatter` on
`[..., rows, cols]`; `fuse` then makes the scatter kernel write the rows into the caller's buffer
itself, so no step copies the cache.
"""

from __future__ import annotations

import math

import torch
from xdsl.dialects.builtin import i64
from xdsl.ir import SSAValue

from llmc.dialects import graph
from llmc.import_context import ImportContext, handles, meta, norm_dim, reshape, shape

aten = torch.ops.aten


def scatter(ctx: ImportContext, x: SSAValue, dim: int, index: SSAValue, source: SSAValue) -> SSAValue:
    """x with x[..., index[n] (at dim), ...] = source[..., n, ...]; `source` broadcasts to its place."""
    full = shape(x)
    dim = norm_dim(dim, len(full))
    count = math.prod(shape(index))
    placed = (*full[:dim], count, *full[dim + 1 :])
    source = ctx.broadcast_to(ctx.cast(source, x.type.element_type), placed)
    index = reshape(ctx, ctx.cast(index, i64), (count,))
    if dim == len(full) - 2:  # a KV cache's sequence dim: no views, so the write can be in place
        return ctx.result(graph.ScatterOp(operands=[x, index, source], result_types=[x.type]))
    post = math.prod(full[dim + 1 :])
    rows = reshape(ctx, x, (*full[:dim], full[dim], post))
    new = reshape(ctx, source, (*full[:dim], count, post))
    written = ctx.result(graph.ScatterOp(operands=[rows, index, new], result_types=[rows.type]))
    return reshape(ctx, written, full)


@handles(aten.index_copy.default)
def _index_copy(ctx, node, x, dim, index, source):
    return scatter(ctx, ctx.value(x), dim, ctx.value(index), ctx.value(source))


@handles(aten.index_put.default)
def _index_put(ctx, node, x, indices, values, accumulate=False):
    if accumulate:
        raise ctx.unsupported("index_put with accumulate=True (a scatter-add)")
    positions = [i for i, idx in enumerate(indices) if idx is not None]
    if len(positions) != 1 or meta(indices[positions[0]]).dtype == torch.bool:
        raise ctx.unsupported("an indexed write with other than one integer index tensor "
                              "(llmc writes rows at run-time positions: cache[:, :, pos] = k)")
    dim = positions[0]
    index = ctx.value(indices[dim])
    if len(shape(index)) != 1:
        raise ctx.unsupported("an indexed write whose index tensor is not 1-D")
    return scatter(ctx, ctx.value(x), dim, index, ctx.value(values))

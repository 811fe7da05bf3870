"""Import handlers for views, concatenation and indexing.

Views stay views (`graph.reshape/permute/slice/expand`; fusion turns them into
strides). Every indexing op — `embedding`, `index.Tensor`, `index_select`,
`select`, `slice_scatter` — is written with one primitive, `graph.gather`
(rows picked by a 1-D integer index), plus views: several index tensors are
linearised into one index over the merged indexed dims. An index known at
compile time that walks consecutive rows (positions `arange(T)`, HF's mask
indexing `mask[batch_idx, kv_idx]`) is no gather at all but a slice.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from xdsl.dialects.builtin import i64
from xdsl.ir import SSAValue

from llmc.dialects import graph
from llmc.import_context import ImportContext, handles, meta, norm_dim, permute, reshape, shape
from llmc.dtypes import torch_dtype
from llmc.folding import compact
from llmc.passes.fusion.views import view_chain

aten = torch.ops.aten


def slice_(ctx: ImportContext, x: SSAValue, dim: int, start, end, step: int = 1) -> SSAValue:
    full = list(shape(x))
    dim = norm_dim(dim, len(full))
    start, end, _ = slice(start, end).indices(full[dim])
    end = max(start, end)
    if (start, end, step) == (0, full[dim], 1):
        return x
    full[dim] = len(range(start, end, step))
    attrs = {k: graph.int_attr(v) for k, v in (("dim", dim), ("start", start), ("end", end), ("step", step))}
    return ctx.result(graph.SliceOp(operands=[x], result_types=[graph.tensor(full, x.type.element_type)], attributes=attrs))


@handles(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(ctx, node, x, new_shape):
    return reshape(ctx, ctx.value(x), new_shape)


@handles(aten.unsqueeze.default)
def _unsqueeze(ctx, node, x, dim):
    x = ctx.value(x)
    full = list(shape(x))
    full.insert(norm_dim(dim, len(full) + 1), 1)
    return reshape(ctx, x, full)


@handles(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(ctx, node, x, dims=None):
    x = ctx.value(x)
    full = shape(x)
    dims = range(len(full)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    drop = {norm_dim(d, len(full)) for d in dims if full[norm_dim(d, len(full))] == 1}
    return reshape(ctx, x, [s for i, s in enumerate(full) if i not in drop])


@handles(aten.permute.default)
def _permute(ctx, node, x, perm):
    return permute(ctx, ctx.value(x), perm)


@handles(aten.transpose.int)
def _transpose(ctx, node, x, d0, d1):
    x = ctx.value(x)
    perm = list(range(len(shape(x))))
    if not perm:
        return x
    d0, d1 = norm_dim(d0, len(perm)), norm_dim(d1, len(perm))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return permute(ctx, x, perm)


@handles(aten.t.default)
def _t(ctx, node, x):
    return x if len(shape(ctx.value(x))) < 2 else _transpose(ctx, node, x, 0, 1)


@handles(aten.expand.default)
def _expand(ctx, node, x, sizes, implicit=False):
    x = ctx.value(x)
    full = shape(x)
    lead = len(sizes) - len(full)
    sizes = [full[i - lead] if s == -1 else s for i, s in enumerate(sizes)]
    if lead:
        x = reshape(ctx, x, (1,) * lead + full)
    return ctx.broadcast_to(x, sizes)


@handles(aten.repeat.default)
def _repeat(ctx, node, x, repeats):
    x = ctx.value(x)
    full = (1,) * (len(repeats) - len(shape(x))) + shape(x)
    spread = reshape(ctx, x, [d for s in full for d in (1, s)])
    tiled = ctx.broadcast_to(spread, [d for r, s in zip(repeats, full) for d in (r, s)])
    return reshape(ctx, tiled, [r * s for r, s in zip(repeats, full)])


@handles(aten.slice.Tensor)
def _slice(ctx, node, x, dim=0, start=None, end=None, step=1):
    return slice_(ctx, ctx.value(x), dim, start, end, step)


def select(ctx: ImportContext, x: SSAValue, dim: int, index: int) -> SSAValue:
    full = list(shape(x))
    dim = norm_dim(dim, len(full))
    if not -full[dim] <= index < full[dim]:
        raise ctx.unsupported(f"select of index {index} from a dim of size {full[dim]}")
    index %= full[dim]
    picked = slice_(ctx, x, dim, index, index + 1)
    return reshape(ctx, picked, full[:dim] + full[dim + 1 :])


@handles(aten.select.int)
def _select(ctx, node, x, dim, index):
    return select(ctx, ctx.value(x), dim, index)


@handles(aten.unbind.int)
def _unbind(ctx, node, x, dim=0):
    x = ctx.value(x)
    return [select(ctx, x, dim, i) for i in range(shape(x)[norm_dim(dim, len(shape(x)))])]


@handles(aten.split_with_sizes.default, aten.split.Tensor)
def _split(ctx, node, x, sizes, dim=0):
    x = ctx.value(x)
    extent = shape(x)[norm_dim(dim, len(shape(x)))]
    if isinstance(sizes, int):
        sizes = [min(sizes, extent - s) for s in range(0, extent, sizes)]
    parts, start = [], 0
    for size in sizes:
        parts.append(slice_(ctx, x, dim, start, start + size))
        start += size
    return parts


@handles(aten.chunk.default)
def _chunk(ctx, node, x, chunks, dim=0):
    extent = shape(ctx.value(x))[norm_dim(dim, len(shape(ctx.value(x))))]
    return _split(ctx, node, x, -(-extent // chunks), dim)


@handles(aten.flatten.using_ints)
def _flatten(ctx, node, x, start_dim=0, end_dim=-1):
    x = ctx.value(x)
    full = shape(x)
    if not full:
        return reshape(ctx, x, (1,))
    start, end = norm_dim(start_dim, len(full)), norm_dim(end_dim, len(full))
    return reshape(ctx, x, (*full[:start], math.prod(full[start : end + 1]), *full[end + 1 :]))


@handles(aten.numpy_T.default)
def _numpy_t(ctx, node, x):
    x = ctx.value(x)
    return permute(ctx, x, list(range(len(shape(x))))[::-1])


@handles(aten.repeat_interleave.self_int)
def _repeat_interleave(ctx, node, x, repeats, dim=None, output_size=None):
    x = ctx.value(x)
    if dim is None:
        x, dim = reshape(ctx, x, (math.prod(shape(x)),)), 0
    full = shape(x)
    dim = norm_dim(dim, len(full))
    spread = reshape(ctx, x, (*full[: dim + 1], 1, *full[dim + 1 :]))
    tiled = ctx.broadcast_to(spread, (*full[: dim + 1], repeats, *full[dim + 1 :]))
    return reshape(ctx, tiled, (*full[:dim], full[dim] * repeats, *full[dim + 1 :]))


@handles(operator.getitem)
def _getitem(ctx, node, parts, index):
    value = ctx.values[parts][index]
    if value is None:
        raise ctx.unsupported(f"output {index} of '{parts.target}' (only a training graph reads it)")
    return value


def concat(ctx: ImportContext, inputs: list[SSAValue], dim: int, element) -> SSAValue:
    """Concatenation along any dim: along a dim before the last two, as a concat of the inputs seen
    as [outer, dim * inner] rows, which the kernels index like any other."""
    inputs = [ctx.cast(v, element) for v in inputs if math.prod(shape(v)) > 0]
    if len(inputs) == 1:
        return inputs[0]
    full = list(shape(inputs[0]))
    dim = norm_dim(dim, len(full))
    out = list(full)
    out[dim] = sum(shape(v)[dim] for v in inputs)
    if dim >= len(full) - 2:
        return ctx.result(graph.ConcatOp(operands=[inputs], result_types=[graph.tensor(out, element)],
                                         attributes={"dim": graph.int_attr(dim)}))
    outer, inner = math.prod(full[:dim]), math.prod(full[dim + 1 :])
    rows = [reshape(ctx, v, (outer, shape(v)[dim] * inner)) for v in inputs]
    joined = ctx.result(graph.ConcatOp(operands=[rows], result_types=[graph.tensor((outer, out[dim] * inner), element)],
                                       attributes={"dim": graph.int_attr(1)}))
    return reshape(ctx, joined, out)


@handles(aten.cat.default)
def _cat(ctx, node, tensors, dim=0):
    return concat(ctx, [ctx.value(t) for t in tensors], dim, ctx.element)


@handles(aten.stack.default)
def _stack(ctx, node, tensors, dim=0):
    values = [ctx.value(t) for t in tensors]
    dim = norm_dim(dim, len(shape(values[0])) + 1)
    lifted = [reshape(ctx, v, (*shape(v)[:dim], 1, *shape(v)[dim:])) for v in values]
    return concat(ctx, lifted, dim, ctx.element)


def scatter_slice(ctx: ImportContext, x: SSAValue, src: SSAValue, dim: int, start, end) -> SSAValue:
    """x with x[start:end] along `dim` replaced by src: the kept slices and src, concatenated."""
    dim = norm_dim(dim, len(shape(x)))
    start, end, _ = slice(start, end).indices(shape(x)[dim])
    parts = [slice_(ctx, x, dim, 0, start), ctx.cast(src, ctx.element), slice_(ctx, x, dim, end, shape(x)[dim])]
    return concat(ctx, parts, dim, ctx.element)


@handles(aten.slice_scatter.default)
def _slice_scatter(ctx, node, x, src, dim=0, start=None, end=None, step=1):
    if step != 1:
        raise ctx.unsupported("slice_scatter with a step other than 1")
    return scatter_slice(ctx, ctx.value(x), ctx.value(src), dim, start, end)


@handles(aten.select_scatter.default)
def _select_scatter(ctx, node, x, src, dim, index):
    x, src = ctx.value(x), ctx.value(src)
    dim = norm_dim(dim, len(shape(x)))
    index %= shape(x)[dim]
    lifted = reshape(ctx, src, (*shape(src)[:dim], 1, *shape(src)[dim:]))
    return scatter_slice(ctx, x, lifted, dim, index, index + 1)


@handles(aten.diff.default)
def _diff(ctx, node, x, n=1, dim=-1, prepend=None, append=None):
    if n != 1 or prepend is not None or append is not None:
        raise ctx.unsupported("diff with n != 1 or prepend/append")
    x = ctx.value(x)
    size = shape(x)[norm_dim(dim, len(shape(x)))]
    later, earlier = slice_(ctx, x, dim, 1, size), slice_(ctx, x, dim, 0, size - 1)
    return ctx.result(graph.SubOp(later, earlier))


# ----------------------------------------------------------------- gathers


def gather(ctx: ImportContext, x: SSAValue, dim: int, index: Callable[[], SSAValue],
           known: torch.Tensor | None = None) -> SSAValue:
    """x.index_select(dim, index) for an index of any shape: x.shape[:dim] + index.shape + x.shape[dim+1:].
    `known` is the index's value when it is a compile-time constant (`index()` then builds it only if
    the gather is not a plain view)."""
    full = shape(x)
    dim = norm_dim(dim, len(full))
    pre, rows, post = full[:dim], full[dim], full[dim + 1 :]
    if known is not None:
        known = _checked(ctx, known, rows)
        view = _consecutive_rows(ctx, x, dim, known)
        if view is not None:
            return view
    index = index()
    index_shape = shape(index)
    x = _rows_in_memory(ctx, x, dim)
    inner = math.prod(post)
    source = reshape(ctx, x, (*pre, rows, inner))
    flat = reshape(ctx, ctx.cast(index, i64), (math.prod(index_shape),))
    picked = ctx.result(graph.GatherOp(operands=[source, flat],
                                       result_types=[graph.tensor((*pre, shape(flat)[0], inner), x.type.element_type)]))
    return reshape(ctx, picked, (*pre, *index_shape, *post))


def _rows_in_memory(ctx: ImportContext, x: SSAValue, dim: int) -> SSAValue:
    """A gather reads its source's rows from memory: a splat source (a zeros buffer the model indexes)
    becomes one stored value per row, broadcast over the rest, so each index is still checked."""
    root, _ = view_chain(x)
    if not isinstance(root.owner, graph.ConstantOp):
        return x
    full = shape(x)
    dtype = torch_dtype(x.type.element_type)
    column = torch.full([d if i == dim else 1 for i, d in enumerate(full)], root.owner.number, dtype=dtype)
    return ctx.broadcast_to(ctx.weight(f"const.rows_{len(ctx.weights)}", column, ctx.loc), full)


def _checked(ctx: ImportContext, known: torch.Tensor, rows: int) -> torch.Tensor:
    if known.numel() and (int(known.min()) < -rows or int(known.max()) >= rows):
        raise ctx.unsupported(f"an index out of range for a dim of size {rows} (as eager would refuse it)")
    return torch.where(known < 0, known + rows, known)


def _consecutive_rows(ctx: ImportContext, x: SSAValue, dim: int, known: torch.Tensor) -> SSAValue | None:
    """The gather as slice + reshape + expand when the index, without its broadcast dims, counts up by one."""
    small = compact(known)
    flat = small.reshape(-1)
    if not flat.numel():
        return None
    start = int(flat[0])
    if not torch.equal(flat, torch.arange(start, start + flat.numel(), dtype=flat.dtype)):
        return None
    full = shape(x)
    rows = slice_(ctx, x, dim, start, start + flat.numel())
    shaped = reshape(ctx, rows, (*full[:dim], *small.shape, *full[dim + 1 :]))
    return ctx.broadcast_to(shaped, (*full[:dim], *known.shape, *full[dim + 1 :]))


def _known(ctx: ImportContext, arg) -> torch.Tensor | None:
    value = ctx.folded.get(arg) if isinstance(arg, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


@handles(aten.embedding.default)
def _embedding(ctx, node, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return gather(ctx, ctx.value(weight), 0, lambda: ctx.value(indices), _known(ctx, indices))


@handles(aten.index_select.default)
def _index_select(ctx, node, x, dim, index):
    return gather(ctx, ctx.value(x), dim, lambda: ctx.value(index), _known(ctx, index))


@handles(aten.index.Tensor)
def _index(ctx, node, x, indices):
    x = ctx.value(x)
    positions = [i for i, idx in enumerate(indices) if idx is not None]
    for i in positions:
        if meta(indices[i]).dtype == torch.bool:
            raise ctx.unsupported("indexing with a boolean mask (its result shape depends on the data)")
    if positions != list(range(positions[0], positions[-1] + 1)):
        # torch puts the broadcast index dims first when the indexed dims are not adjacent
        rest = [d for d in range(len(shape(x))) if d not in positions]
        x = permute(ctx, x, positions + rest)
        positions = list(range(len(positions)))
    first, dims = positions[0], [shape(x)[i] for i in positions]
    merged = reshape(ctx, x, (*shape(x)[:first], math.prod(dims), *shape(x)[first + len(dims):]))
    knowns = [_known(ctx, indices[i]) for i in positions]
    if all(k is not None for k in knowns):
        linear = _linear_index([_checked(ctx, k, d) for k, d in zip(knowns, dims)], dims)
        return gather(ctx, merged, first, lambda: ctx.constant(linear, f"{node.name}_index"), linear)
    linear = _runtime_linear_index(ctx, [ctx.value(indices[i]) for i in positions], dims)
    return gather(ctx, merged, first, lambda: linear)


@handles(aten.gather.default)
def _torch_gather(ctx, node, x, dim, index, sparse_grad=False):
    """torch.gather: out[..., j, ...] = x[..., index[..., j, ...], ...] along `dim`, as one row gather
    from x flattened: the offsets of the other dims are a compile-time constant."""
    x_value = ctx.value(x)
    full, index_shape = shape(x_value), tuple(meta(index).shape)
    dim = norm_dim(dim, len(full))
    strides = _strides(list(full))
    offsets = torch.zeros(index_shape, dtype=torch.int64)
    for d, size in enumerate(index_shape):
        if d != dim:
            step = torch.arange(size, dtype=torch.int64).reshape([-1 if i == d else 1 for i in range(len(index_shape))])
            offsets = offsets + step * strides[d]
    flat = reshape(ctx, x_value, (math.prod(full), 1))
    known = _known(ctx, index)
    if known is not None:
        linear = offsets + _checked(ctx, known, full[dim]) * strides[dim]
        picked = gather(ctx, flat, 0, lambda: ctx.constant(linear, f"{node.name}_index"), linear)
    else:
        position, bad = _wrapped(ctx, ctx.value(index), full[dim])
        linear = ctx.result(graph.AddOp(ctx.result(graph.MulOp(position, ctx.scalar(strides[dim], i64))),
                                        ctx.constant(offsets, f"{node.name}_offsets")))
        linear = ctx.result(graph.WhereOp(operands=[bad, ctx.scalar(math.prod(full), i64), linear],
                                          result_types=[linear.type]))
        picked = gather(ctx, flat, 0, lambda: linear)
    return reshape(ctx, picked, index_shape)


def _linear_index(knowns: list[torch.Tensor], dims: list[int]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.int64)
    for k, stride in zip(knowns, _strides(dims)):
        total = total + k.to(torch.int64) * stride
    return total


def _strides(dims: list[int]) -> list[int]:
    return [math.prod(dims[i + 1 :]) for i in range(len(dims))]


def _wrapped(ctx: ImportContext, value: SSAValue, size: int) -> tuple[SSAValue, SSAValue]:
    """An index with negatives counted from the end, and where it is out of [0, size)."""
    value = ctx.cast(value, i64)
    extent = ctx.scalar(size, i64)
    negative = ctx.result(graph.LtOp(value, ctx.scalar(0, i64)))
    value = ctx.result(graph.WhereOp(operands=[negative, ctx.result(graph.AddOp(value, extent)), value],
                                     result_types=[value.type]))
    bad = ctx.result(graph.OrOp(ctx.result(graph.LtOp(value, ctx.scalar(0, i64))), ctx.result(graph.GeOp(value, extent))))
    return value, bad


def _runtime_linear_index(ctx: ImportContext, values: list[SSAValue], dims: list[int]) -> SSAValue:
    """sum(index_j * stride_j) with each index wrapped when negative; an index out of its own range
    makes the whole position out of range, so the gather reports it instead of reading a neighbour."""
    if len(values) == 1:
        return values[0]  # the gather wraps a negative index and refuses one out of range
    total, invalid = None, None
    for value, dim, stride in zip(values, dims, _strides(dims)):
        value, bad = _wrapped(ctx, value, dim)
        term = ctx.result(graph.MulOp(value, ctx.scalar(stride, i64))) if stride != 1 else value
        total = term if total is None else ctx.result(graph.AddOp(total, term))
        invalid = bad if invalid is None else ctx.result(graph.OrOp(invalid, bad))
    beyond = ctx.scalar(math.prod(dims), i64)
    return ctx.result(graph.WhereOp(operands=[invalid, beyond, total], result_types=[total.type]))

"""`fuse`: graph dialect → kernel dialect.

First the attention pattern (written out, or through SDPA with repeat_kv)
becomes one graph.attention op, and a decode step's [B, 1, K] linears see their B
rows as one matrix, its GQA attention the query heads of a KV head as query rows
(`fusion.decode_rows`); then `fusion.partition` decides the groups and
`fusion.kernels` rebuilds each function as kernel.kernel launches. A
`graph.scatter` (a KV-cache write) becomes a `scatter` kernel that stores only
its rows into its `dest` buffer, in place: into the caller's buffer when the
function writes the result back into that argument anyway (`llmc.writes_back`),
so no step copies the cache; behind a copy when anything else still reads `dest`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.ir import BlockArgument
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import GreedyRewritePatternApplier, PatternRewriteWalker
from xdsl.transforms.dead_code_elimination import region_dce

from llmc.dialects import graph
from llmc.passes.fusion.attention import AttentionWithoutRepeatKV, SimplifiedAttentionMask, WrittenOutAttention
from llmc.passes.fusion.decode_rows import GroupedQueryRows, LinearRowsAsMatrix
from llmc.passes.fusion.kernels import KernelBuilder
from llmc.passes.fusion.partition import partition


def writes_in_place(func_op: func.FuncOp, scatter: graph.ScatterOp) -> bool:
    """Whether the scatter may write its rows into `dest`'s own buffer: nothing else reads `dest`, and
    `dest` is an intermediate, or an argument the caller gets this result copied back into anyway."""
    dest = scatter.dest
    if not dest.has_one_use():
        return False
    if isinstance(dest, BlockArgument):
        pairs = func_op.attributes.get(graph.WRITES_BACK)
        values = pairs.get_values() if pairs is not None else ()
        returned = func_op.body.block.last_op.operands
        return any(values[i + 1] == dest.index and returned[values[i]] is scatter.result
                   for i in range(0, len(values), 2))
    return not isinstance(dest.owner, (*graph.SOURCE_OPS, *graph.VIEW_OPS))


def own_scatter_destinations(func_op: func.FuncOp) -> None:
    """Give each scatter a `dest` it may overwrite: a copy (a same-type cast) where it may not."""
    for op in list(func_op.body.block.ops):
        if isinstance(op, graph.ScatterOp) and not writes_in_place(func_op, op):
            copy = graph.CastOp(operands=[op.dest], result_types=[op.dest.type])
            if "loc" in op.attributes:
                copy.attributes["loc"] = op.attributes["loc"]
            func_op.body.block.insert_op_before(copy, op)
            op.operands[0] = copy.result


def fuse_attention(module: builtin.ModuleOp) -> None:
    patterns = GreedyRewritePatternApplier([WrittenOutAttention(), SimplifiedAttentionMask(), AttentionWithoutRepeatKV(),
                                            GroupedQueryRows()])
    PatternRewriteWalker(patterns).rewrite_module(module)
    for op in module.walk():
        if isinstance(op, func.FuncOp):
            region_dce(op.body)


@dataclass(frozen=True)
class FusePass(ModulePass):
    name = "fuse"

    attention: bool = True
    """Recognise the attention pattern (turn off to compare against unfused attention)."""

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        if self.attention:
            fuse_attention(op)
        PatternRewriteWalker(LinearRowsAsMatrix()).rewrite_module(op)  # not attention's: runs either way
        for func_op in [f for f in op.walk() if isinstance(f, func.FuncOp)]:
            own_scatter_destinations(func_op)
            ops = list(func_op.body.block.ops)
            KernelBuilder(func_op, partition(ops)).build()

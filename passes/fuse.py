"""`fuse`: graph dialect → kernel dialect.

First the attention pattern (written out, or through SDPA with repeat_kv)
becomes one graph.attention op; then `fusion.partition` decides the groups and
`fusion.kernels` rebuilds each function as kernel.kernel launches.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import GreedyRewritePatternApplier, PatternRewriteWalker
from xdsl.transforms.dead_code_elimination import region_dce

from llmc.passes.fusion.attention import AttentionWithoutRepeatKV, SimplifiedAttentionMask, WrittenOutAttention
from llmc.passes.fusion.kernels import KernelBuilder
from llmc.passes.fusion.partition import partition


def fuse_attention(module: builtin.ModuleOp) -> None:
    patterns = GreedyRewritePatternApplier([WrittenOutAttention(), SimplifiedAttentionMask(), AttentionWithoutRepeatKV()])
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
        for func_op in [f for f in op.walk() if isinstance(f, func.FuncOp)]:
            ops = list(func_op.body.block.ops)
            KernelBuilder(func_op, partition(ops)).build()

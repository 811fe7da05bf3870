"""`plan-memory`: place intermediate buffers in one arena, reusing dead space.

Decision: `plan_offsets` takes (size, first launch, last launch) per buffer
and assigns byte offsets first-fit over the buffers live at the same time
(largest first), 64-byte aligned. Buffers the function returns are not in the
arena. The rewrite records `offset` on each tile.alloc and the arena size on
the function (`llmc.arena_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import IntegerAttr
from xdsl.passes import ModulePass

from llmc.dialects import tile
from llmc.dtypes import element_bytes
from llmc.dialects.tile_interp import ARENA_ATTR

ALIGN = 64


@dataclass(frozen=True)
class Interval:
    size: int
    start: int
    end: int


def plan_offsets(buffers: list[Interval]) -> tuple[list[int], int]:
    """First-fit offsets so that buffers live at the same time never overlap; returns (offsets, arena size)."""
    offsets = [0] * len(buffers)
    placed: list[int] = []
    for i in sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].start)):
        b = buffers[i]
        busy = sorted(
            (offsets[j], offsets[j] + buffers[j].size)
            for j in placed
            if buffers[j].start <= b.end and b.start <= buffers[j].end
        )
        candidate = 0
        for lo, hi in busy:
            if candidate + b.size <= lo:
                break
            candidate = max(candidate, _align(hi))
        offsets[i] = candidate
        placed.append(i)
    total = max((offsets[i] + buffers[i].size for i in range(len(buffers))), default=0)
    return offsets, _align(total)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def live_intervals(func_op: func.FuncOp) -> tuple[list[tile.AllocOp], list[Interval]]:
    ops = list(func_op.body.block.ops)
    returned = set(ops[-1].operands)
    allocs, intervals = [], []
    for alloc in (op for op in ops if isinstance(op, tile.AllocOp)):
        if alloc.result in returned:
            continue
        users = [ops.index(use.operation) for use in alloc.result.uses]
        size = element_bytes(alloc.result.type.element_type) * alloc.result.type.element_count()
        allocs.append(alloc)
        intervals.append(Interval(size, min(users), max(users)))
    return allocs, intervals


@dataclass(frozen=True)
class PlanMemoryPass(ModulePass):
    name = "plan-memory"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for func_op in [f for f in op.body.block.ops if isinstance(f, func.FuncOp)]:
            allocs, intervals = live_intervals(func_op)
            offsets, total = plan_offsets(intervals)
            for alloc, offset in zip(allocs, offsets):
                alloc.attributes["offset"] = IntegerAttr(offset, 64)
            func_op.attributes[ARENA_ATTR] = IntegerAttr(total, 64)

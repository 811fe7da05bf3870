"""Software prefetch in the row kernels' C: the rows of the next program's tile, asked for into L2 while this
tile's passes run.

A mixin of `KernelRenderer` (kernel.py), which holds the names, the plan, the output lines and the sets of
loads already prefetched (`prefetched`) and of requests left to a later pass (`deferred_prefetch`).
"""

from __future__ import annotations

from xdsl.ir import Operation, SSAValue

from llmc.backends import shape2
from llmc.backends.c.nest import element_key
from llmc.backends.c.plan import BUFFER, INLINE, POINTWISE
from llmc.dialects import tile


class PrefetchRenderer:
    def prefetch_next_rows(self, op: tile.ReduceOp) -> None:
        """A row kernel's first pass over its rows (the first reduction reading them from a buffer) waits on
        memory; the rows of the tile after this one, the next program's, are asked for into L2 by the next pass
        that reads the same rows, which computes (a softmax's exp pass: 13.4 -> 18.0 GB/s beyond the LLC against
        asking in the first pass), else by this one. A row of 1024 floats is a page, and the hardware
        prefetcher stops at page ends."""
        loads = []
        for load in self.inline_loads(op.operand):
            rows, s1 = shape2(load.result)[0], load.strides.get_values()[1]
            if load not in self.prefetched and rows > 1 and s1 == 1 and element_key(load.buffer.type.element_type) == "f32":
                self.prefetched.add(load)
                loads.append(load)
        if not loads:
            return
        later = op.next_op
        while later is not None and not set(loads) & set(self.pass_loads(later)):
            later = later.next_op
        if later is None:
            self.emit_prefetch(loads)
        else:
            self.deferred_prefetch[later] = loads

    def pass_loads(self, op: Operation) -> list[tile.LoadOp]:
        """The loads a pass over a row tile reads inline: a reduction, a materialised row-wide value, a store."""
        if isinstance(op, tile.ReduceOp) and op not in self.done:
            return self.inline_loads(op.operand)
        if isinstance(op, tile.StoreOp):
            return self.inline_loads(op.value)
        info = self.plan.values.get(op.results[0]) if op.results else None
        if info is not None and info.kind == BUFFER and info.cols > 1 and isinstance(op, POINTWISE):
            return [load for operand in op.operands for load in self.inline_loads(operand)]
        return []

    def emit_deferred_prefetch(self, op: Operation) -> None:
        """Inside `op`'s column loop: the requests an earlier pass left to it."""
        self.emit_prefetch(self.deferred_prefetch.pop(op, []))

    def emit_prefetch(self, loads: list[tile.LoadOp]) -> None:
        """Inside a column loop: the same columns of the next tile's rows, into L2."""
        for load in loads:
            rows, s0 = shape2(load.result)[0], load.strides.get_values()[0]
            buf, base, row, col = (self.name(x) for x in (load.buffer, load.base, load.row, load.col))
            self.line(f"__builtin_prefetch({buf} + {base} + ({row} + r + {rows}) * {s0} + {col} + c, 0, 1);")

    def inline_loads(self, value: SSAValue) -> list[tile.LoadOp]:
        """The loads an inline value is computed from (its expression tree, through inline values)."""
        found, todo, seen = [], [value], set()
        while todo:
            v = todo.pop()
            info = self.plan.values.get(v)
            if v in seen or (info is not None and info.kind != INLINE):
                continue
            seen.add(v)
            if isinstance(v.owner, tile.LoadOp):
                found.append(v.owner)
            elif isinstance(v.owner, Operation):
                todo.extend(v.owner.operands)
        return found

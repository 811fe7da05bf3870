"""Row kernels in C, one row at a time, with the first pass of the next row software-pipelined into the current
row's compute.

A row kernel's program takes whole rows, and every row's passes (a softmax's max, exp and store passes; a
LayerNorm's mean, centring and store passes) read and write that row only. Rendered pass by pass, each pass
loops over all the program's rows and the first one, a reduction straight from memory (the max, the mean),
waits on memory with little to compute beside it. Rendered rows-outer, the passes of one row run back to back,
and the first pass of row r + 1 is computed inside the column loop of row r's next pass, the one that computes
(the exp pass, the centring pass): the out-of-order core overlaps the next row's loads with this row's
arithmetic. Row 0's first pass runs alone, as the prologue; the last row's step reads the next program's first
row (or the view's padding past the end), which is a prefetch, and its result is dropped. A value materialised
across a row (the exponentials) lives only while its row's passes run, so every row reuses the first row of its
scratch slot, and the rows the program takes cost no L1.

Kernels with loops, scatters, scans or products inside keep the pass-by-pass form.

A mixin of `KernelRenderer` (kernel.py), which holds the plan, the names and the output lines.
"""

from __future__ import annotations

from xdsl.dialects import scf
from xdsl.ir import Block, Operation, SSAValue

from llmc.backends import shape2
from llmc.backends.c.nest import Nest
from llmc.backends.c.plan import BUFFER, INLINE, POINTWISE
from llmc.dialects import tile

# ops a rows-outer program cannot hold: loops, writes of other rows, ops that read a whole tile at once
ROW_BY_ROW_EXCLUDES = (scf.ForOp, tile.ScatterOp, tile.ScanOp, tile.DotOp, tile.DequantOp, tile.FullOp,
                       tile.ToIndexOp)


class RowPipelineRenderer:
    rows_outer: int | None  # the program's rows, when they are rendered one at a time
    first_pass: tile.ReduceOp | None  # its first pass, run alone for row 0 and pipelined for the others
    carrier: Operation | None  # the pass that computes the next row's first pass
    rows_open: bool

    def plan_row_by_row(self, block: Block) -> None:
        """Decide whether this row kernel renders its rows one at a time, and which pass carries the next row's
        first pass."""
        self.rows_outer, self.first_pass, self.carrier, self.rows_open = None, None, None, False
        if self.kernel.kind.data != "row" or any(isinstance(op, ROW_BY_ROW_EXCLUDES) for op in block.walk()):
            return
        fused = {reduce for reduces in self.plan.fused_reductions.values() for reduce in reduces}
        passes = [op for op in block.ops if self.is_row_pass(op, fused)]
        rows = {self.pass_rows(op) for op in passes}
        if len(rows) != 1 or rows == {1}:
            return
        self.rows_outer = rows.pop()
        first = next((op for op in passes if isinstance(op, tile.ReduceOp)), None)
        if first is None or not self.reads_memory_only(first.operand):
            return
        later = passes[passes.index(first) + 1:]
        carrier = next((op for op in later if self.has_column_loop(op)), None)
        if carrier is not None and self.column_extent(carrier) == first.extent.value.data:
            self.first_pass, self.carrier = first, carrier

    def is_row_pass(self, op: Operation, fused: set[Operation]) -> bool:
        """An op that loops over the program's rows: a reduction of its own (not `fused` into its producer's
        pass), a materialised value, a store."""
        if isinstance(op, tile.ReduceOp):
            return op not in fused
        if isinstance(op, tile.StoreOp):
            return True
        info = self.plan.values.get(op.results[0]) if op.results else None
        return info is not None and info.kind == BUFFER and isinstance(op, POINTWISE)

    def pass_rows(self, op: Operation) -> int:
        return shape2(op.value if isinstance(op, tile.StoreOp) else op.results[0])[0]

    def has_column_loop(self, op: Operation) -> bool:
        """A pass with a loop over the row's columns that computes: a reduction, a row-wide materialised value."""
        if isinstance(op, tile.ReduceOp):
            return True
        return not isinstance(op, tile.StoreOp) and shape2(op.results[0])[1] > 1

    def column_extent(self, op: Operation) -> int:
        if isinstance(op, tile.ReduceOp):
            return op.extent.value.data
        return self.row_width(shape2(op.results[0])[1])

    def reads_memory_only(self, value: SSAValue) -> bool:
        """Whether `value` is computed inline from loads and constants alone (no row statistic, no materialised
        value), so that the next row's is computed ahead of that row's passes."""
        todo, seen = [value], set()
        while todo:
            v = todo.pop()
            if v in seen or not hasattr(v.type, "get_shape"):
                continue
            seen.add(v)
            info = self.plan.values.get(v)
            if info is None or info.kind != INLINE:
                return False
            if isinstance(v.owner, Operation) and not isinstance(v.owner, tile.LoadOp):
                todo.extend(v.owner.operands)
        return True

    # ------------------------------------------------------------------ rendering

    def open_rows(self, op: Operation, rows: int) -> None:
        """Open `op`'s loop over the program's rows, or, rows-outer, the block of this row (the first pass: of
        row 0 only)."""
        if self.rows_outer is None:
            self.open(f"for (long r = 0; r < {rows}; r++)")
            return
        if not self.rows_open:
            self.line("/* the rows one at a time; each row's first pass is computed in the previous row's next "
                      "pass (row_pipeline.py) */" if self.first_pass is not None else "/* the rows one at a time */")
            self.open(f"for (long r = 0; r < {self.rows_outer}; r++)")
            self.rows_open = True
        self.open("if (r == 0)" if op is self.first_pass else "")

    def close_row_loop(self) -> None:
        if self.rows_open:
            self.close()
            self.rows_open = False

    def wide_row(self) -> str:
        """The row of a materialised row-wide value's slot: rows-outer, every row reuses the first."""
        return "r" if self.rows_outer is None else "0"

    def next_row_init(self, op: Operation) -> None:
        if op is self.carrier:
            self.reduce_init(self.first_pass)

    def next_row_step(self, op: Operation) -> None:
        """Inside the carrier's column loop: the next row's first-pass step, its loads at row r + 1."""
        if op is self.carrier:
            self.reduce_step(self.first_pass, Nest(self, row="(r + 1)", tag="n", ahead=True))

    def next_row_finish(self, op: Operation) -> None:
        if op is self.carrier:
            self.open(f"if (r + 1 < {self.rows_outer})")
            self.reduce_finish(self.first_pass, row="(r + 1)")
            self.close()

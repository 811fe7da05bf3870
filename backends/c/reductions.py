"""Row reductions and scans in C: a reduction's pass over its rows (init, the step in a column loop, the
horizontal finish, each usable inside another pass's loop), and prefix sums along rows.

A mixin of `KernelRenderer` (kernel.py), which holds the plan, the names and the output lines.
"""

from __future__ import annotations

from llmc.backends import shape2
from llmc.backends.c.exprs import SPLAT, WHERE, literal
from llmc.backends.c.nest import Nest, kind_of
from llmc.dialects import tile
from llmc.errors import UnsupportedOpError


class ReductionRenderer:
    def op_reduce(self, op: tile.ReduceOp) -> None:
        rows = shape2(op.result)[0]
        self.line(f"/* {self.describe(op)} */")
        self.fresh(op.result)
        self.open_rows(op, rows)
        self.reduce_init(op)
        self.next_row_init(op)
        nest = self.column_loop(op.extent.value.data)
        self.reduce_step(op, nest)
        self.next_row_step(op)
        self.prefetch_next_rows(op)
        self.emit_deferred_prefetch(op)
        self.close()
        self.reduce_finish(op)
        self.next_row_finish(op)
        self.close()

    def reduce_init(self, op: tile.ReduceOp) -> None:
        if op.axis.value.data != 1:
            raise UnsupportedOpError(f"tile.reduce over axis {op.axis.value.data} in @{self.kernel_name}")
        kind, acc = kind_of(op.operand), f"acc{self.name(op.result)[1:]}"
        if kind not in ("vf", "vl"):
            raise UnsupportedOpError(f"tile.reduce of a mask tile in @{self.kernel_name}")
        if op.kind.data == "argmax":
            if kind != "vf":
                raise UnsupportedOpError(f"argmax of an integer tile in @{self.kernel_name}")
            self.line(f"vf {acc} = vsplat(-INFINITY);")
            self.line(f"vl at{acc} = vsplat_l(0);")
            return
        lowest = "-INFINITY" if kind == "vf" else "INT64_MIN"
        init = lowest if op.kind.data == "max" else literal(0, kind)
        self.line(f"{kind} {acc} = {SPLAT[kind].format(init)};")

    def reduce_step(self, op: tile.ReduceOp, nest: Nest) -> None:
        extent = op.extent.value.data
        kind, acc, term = kind_of(op.operand), f"acc{self.name(op.result)[1:]}", nest.vector(op.operand)
        live = f"vlanes_below({extent} - c)"
        if op.kind.data == "argmax":  # per lane: the first maximum and where it was
            self.line(f"const vi up{acc} = ({term} > {acc}) & {live};")
            self.line(f"{acc} = vsel(up{acc}, {term}, {acc});")
            self.line(f"at{acc} = vsel_l(up{acc}, viota_l(c), at{acc});")
            return
        is_sum = op.kind.data == "sum"
        pad = literal(0, kind) if is_sum else ("-INFINITY" if kind == "vf" else "INT64_MIN")
        select = WHERE[kind].format(live, term, SPLAT[kind].format(pad))
        part = f"(c + LLMC_W <= {extent} ? {term} : {select})"
        biggest = "vmax" if kind == "vf" else "vmax_l"
        self.line(f"{acc} = {acc} + {part};" if is_sum else f"{acc} = {biggest}({acc}, {part});")

    def reduce_finish(self, op: tile.ReduceOp, row: str = "r") -> None:
        v, kind = self.name(op.result), kind_of(op.operand)
        acc = f"acc{v[1:]}"
        if op.kind.data == "argmax":
            self.line(f"((int64_t *){v}.p)[{row} * {v}.ld] = llmc_argmax_lanes({acc}, at{acc});")
            return
        total = {"vf": ("vhsum", "vhmax"), "vl": ("vhsum_l", "vhmax_l")}[kind][op.kind.data != "sum"]
        target = f"{v}.p[{row} * {v}.ld]" if kind == "vf" else f"((int64_t *){v}.p)[{row} * {v}.ld]"
        self.line(f"{target} = {total}({acc});")

    def op_scan(self, op: tile.ScanOp) -> None:
        """Inclusive prefix sums along each row, lane by lane (cumsum over a small dim)."""
        rows, cols = shape2(op.result)
        v, kind = self.name(op.result), kind_of(op.result)
        lane = "float" if kind == "vf" else "int64_t"
        self.line(f"/* {self.describe(op)} */")
        self.fresh(op.result)
        self.open(f"for (long r = 0; r < {rows}; r++)")
        self.line(f"{lane} running = 0;")
        self.open(f"for (long c = 0; c < {cols}; c += LLMC_W)")
        term = Nest(self).vector(op.operand)
        self.line(f"for (int j = 0; j < LLMC_W && c + j < {cols}; j++) (({lane} *){v}.p)[r * {v}.ld + c + j] = running += {term}[j];")
        self.close()
        self.close()

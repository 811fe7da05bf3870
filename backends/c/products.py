"""The products of a tile kernel in C: the operands a product reads in its own form (a bf16 lhs as bits, a B kept
as rows of K), `tile.dot` as a call of the micro-kernel its operands call for
(float, 16-bit panels, dequantized in registers, integer dot products), and `tile.dequant` as pointers
into the compile-time panels of a quantized weight (or a tile dequantized once into scratch).

A mixin of `KernelRenderer` (kernel.py), which holds the names, the plan and the output lines.
"""

from __future__ import annotations

from xdsl.dialects import scf
from xdsl.dialects.builtin import StringAttr

from llmc.backends import shape2
from llmc.backends.c.exprs import ACCESS, HALF
from llmc.backends.c.nest import element_key
from llmc.backends.c.plan import MAX_FUSED_ROWS, PAIR_ROWS, PAIRS, QUANT, round_up
from llmc.dialects import tile
from llmc.passes.lowering.templates import STAGES_ATTR
from llmc.passes.pipeline import AHEAD_ATTR, PHASE_ATTR
from llmc.quantization import ACTIVATION_BLOCK


class ProductRenderer:
    def panel_pointer(self, load: tile.LoadOp) -> tuple[str, int]:
        """Where a packed load's tile starts in its compile-time panels, and the panel stride."""
        pack = self.plan.packs[load.buffer.index]
        buf, row, col = (self.name(x) for x in (load.buffer, load.row, load.col))
        return f"{buf} + ({col} / {pack.panel}) * {pack.panel_stride} + {row} * {pack.panel}", pack.panel_stride

    def op_dequant(self, op: tile.DequantOp) -> None:
        """Pointers into the packed codes / scales / zero points; a tile of a large product is also
        dequantized here, once, into scratch."""
        v, info = self.name(op.result), self.plan.values[op.result]
        rows, cols = shape2(op.result)
        loads = [value.owner for value in op.operands]
        self.line(f"/* {self.describe(op)} */")
        if self.plan.values[op.codes].panel:
            (codes, qps), (scales, sps) = self.panel_pointer(loads[0]), self.panel_pointer(loads[1])
            zeros = self.panel_pointer(loads[2])[0] if op.zeros is not None else "NULL"
            self.line(f"const int8_t *q{v} = {codes};")
            self.line(f"const float *s{v} = {scales}, *z{v} = {zeros};")
            self.quant_args[op.result] = f"q{v}, {qps}, {op.bits}, s{v}, {sps}, z{v}, {op.rows_per_scale}"
            if self.plan.packs[loads[0].buffer.index].vnni:
                self.vnni_args[op.result] = f"q{v}, {qps}, {op.bits}, s{v}, {sps}, z{v}, {op.rows_per_scale}"
            if info.kind == QUANT:
                self.line("/* dequantized in registers by the dot below (llmc_qdot) */")
                return
            self.fresh(op.result)
            self.line(f"llmc_dequant_panels({v}.p, {v}.ld, {rows}, {cols}, {self.quant_args[op.result]});")
            return
        self.fresh(op.result)
        code, scale = loads[0], loads[1]
        (ch, cw), (cs0, cs1) = code.shape.get_values(), code.strides.get_values()
        (sh, _), (ss0, ss1) = scale.shape.get_values(), scale.strides.get_values()
        cb, crow, ccol = (self.name(x) for x in (code.buffer, code.row, code.col))
        sb, srow = self.name(scale.buffer), self.name(scale.row)
        zb = f"{self.name(loads[2].buffer)} + {self.name(loads[2].base)}" if op.zeros is not None else "NULL"
        self.line(f"llmc_dequant_view({v}.p, {v}.ld, {rows}, {cols}, {op.bits}, {cb} + {self.name(code.base)}, {crow}, "
                  f"{ccol}, {ch}, {cw}, {cs0}, {cs1}, {sb} + {self.name(scale.base)}, {srow}, {sh}, {ss0}, {ss1}, "
                  f"{zb}, {op.rows_per_scale});")

    def op_dot(self, op: tile.DotOp) -> None:
        m, n = shape2(op.result)
        k = shape2(op.lhs)[1]
        info, acc = self.plan.values[op.result], self.plan.values[op.acc]
        lhs, out = self.name(op.lhs), self.name(op.result)
        if op.rhs in self.vnni_args:
            how = "AMX int8 tiles, else vpdpbusd or vpmaddubsw" if m > MAX_FUSED_ROWS else "vpdpbusd or vpmaddubsw"
            self.line(f"/* {self.describe(op)}: {m}x{k} * {k}x{n}, int8 activations x codes, integer dot products ({how}) */")
            self.line("#ifndef LLMC_INT_DOT")
            self.line('#error "llmc: these weights were packed for integer dot products; build with -march=native on the compiling host"')
            self.line("#endif")
        else:
            if op in self.plan.rounded:  # the linear reads its input rounded to int8 per block of 32
                rounded = self.plan.rounded[op]
                self.line(f"llmc_tile r{lhs} = {{scratch + {rounded.slot}, {rounded.ld}, {self.plan.nr}}};")
                self.line(f"llmc_round_activations(r{lhs}, {lhs}, {m}, {k});")
                lhs = f"r{lhs}"
            rhs_info = self.plan.values[op.rhs]
            how = ("the weight dequantized in registers" if rhs_info.kind == QUANT
                   else "bf16 products in k pairs: AMX tiles, else vdpbf16ps (matrix.h)" if rhs_info.half == PAIRS
                   else f"micro-kernel {8 if self.plan.lanes >= 16 else 6}x{self.plan.nr}")
            self.line(f"/* {self.describe(op)}: {m}x{k} * {k}x{n}, {how} */")
        self.fresh(op.result)
        if info.alias is None:
            self.line(f"llmc_copy_tile({out}, {self.name(op.acc)}, {m}, {n});")
        self.line(self.dot_call(op, (m, n, k), lhs, out, 0 if acc.zero_acc else 1))

    def dot_call(self, op: tile.DotOp, mnk: tuple[int, int, int], lhs: str, out: str, accumulate: int) -> str:
        """The micro-kernel call that computes `op` into `out`, by what its rhs is."""
        (m, n, k), rhs, rhs_info = mnk, self.name(op.rhs), self.plan.values[op.rhs]
        if op.rhs in self.vnni_args:
            return f"llmc_qdot_act8({m}, {n}, {k}, {lhs}, {self.vnni_args[op.rhs]}, {out}, {accumulate});"
        if rhs_info.kind == QUANT:
            return f"llmc_qdot({m}, {n}, {k}, {lhs}, {self.quant_args[op.rhs]}, {out}, {accumulate});"
        if self.plan.values[op.lhs].bits:
            return (f"llmc_dot_pairs_bits({m}, {round_up(n, self.plan.nr)}, {k}, (const uint16_t *){lhs}.p, {lhs}.ld, "
                    f"(const uint16_t *){rhs}.p, {rhs}.ps, {out}, {accumulate});")
        if rhs_info.half:
            return (f"llmc_dot_{rhs_info.half}({m}, {round_up(n, self.plan.nr)}, {k}, {lhs}, (const uint16_t *){rhs}.p, "
                    f"{rhs}.ps, {out}, {accumulate});")
        if rhs_info.transposed:
            return f"llmc_dot_nt({m}, {n}, {k}, {lhs}, {rhs}, {out}, {accumulate});"
        panel = rhs_info.panel or self.plan.nr
        return f"llmc_dot({m}, {round_up(n, self.plan.nr)}, {k}, {lhs}, {rhs}, {panel}, {out}, {accumulate});"

    # ------------------------------------------------------------------ operands read in a product's own form

    def load_operand(self, op: tile.LoadOp, info) -> None:
        """A float (or widened 16-bit) operand of a product: a view of the source when the tile lies inside it, of
        the launch's packed lhs (shared_lhs.py), else a zero-padded copy in scratch."""
        v = self.name(op.result)
        buf, base, row, col = (self.name(x) for x in (op.buffer, op.base, op.row, op.col))
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        key = element_key(op.buffer.type.element_type)
        if key in HALF:  # widened into a zero-padded f32 copy (K^T of attention: whole vectors along k)
            self.line(f"llmc_tile {v} = {{{self.slot(op.result)}, {info.ld}, {self.plan.nr}}};")
            if s0 == 1 and s1 != 1:
                self.line(f"llmc_pack_transposed_{key}({v}.p, {info.ld}, {buf} + {base}, {row}, {col}, {info.rows}, "
                          f"{info.cols}, {height}, {width}, {s1});")
                return
            self.line(f"llmc_pack_block_{key}({v}.p, {info.ld}, {buf} + {base}, {row}, {col}, {info.rows}, {info.cols}, "
                      f"{height}, {width}, {s0}, {s1});")
            return
        if s0 == 1 and s1 != 1:
            copy = (
                f"llmc_pack_transposed({v}.p, {info.ld}, {buf} + {base}, {row}, {col}, {info.rows}, {info.cols}, "
                f"{height}, {width}, {s1});"
            )
        else:
            copy = (
                f"llmc_pack_block({v}.p, {info.ld}, {buf} + {base}, {row}, {col}, {info.rows}, {info.cols}, "
                f"{height}, {width}, {s0}, {s1});"
            )
        self.line(f"llmc_tile {v} = {{{self.slot(op.result)}, {info.ld}, {self.plan.nr}}};")
        if s1 != 1 or (info.rhs and info.cols % self.plan.nr):
            self.line(copy)
            return
        shared = self.plan.shared_lhs.get(op)
        matrix = f" + ({base} - {shared.base}) / {shared.batch_step} * {shared.matrix_floats}" if shared and shared.batch_step else ""
        if shared is not None and shared.codes:  # a view of the rounded rows (llmc_act8_pack; every tile lies inside)
            k, blocks = shared.padded_k, shared.act_blocks
            self.line(f"{v}.p = (float *)((int8_t *)(shared + {shared.offset}{matrix}) + {row} * {k} + {col}); {v}.ld = -{k}; "
                      f"{v}.rows = {4 * shared.codes_floats} + ({row} * {blocks} + {col} / {ACTIVATION_BLOCK}) * 4 - "
                      f"({row} * {k} + {col}); {v}.ps = {shared.padded_rows * blocks * 4};")
            return
        if shared is not None:  # ld 0 tells llmc_dot the rows are packed, ps the step between blocks of rows
            inside = (f"{row} >= 0 && {col} >= 0 && {row} % LLMC_MR == 0 && {row} + {info.rows} <= {shared.padded_rows} "
                      f"&& {col} + {info.cols} <= {shared.padded_k}")
            self.line(f"if ({inside}) {{ {v}.p = shared + {shared.offset}{matrix} + ({row} / LLMC_MR) * {shared.padded_k} * "
                      f"LLMC_MR + {col} * LLMC_MR; {v}.ld = 0; {v}.ps = {shared.padded_k} * LLMC_MR; "
                      f"{v}.rows = {shared.height} - {row}; }}")
            self.line("else")
        inside = f"{row} >= 0 && {col} >= 0 && {row} + {info.rows} <= {height} && {col} + {info.cols} <= {width}"
        self.line(f"if ({inside}) {{ {v}.p = {buf} + {base} + {row} * {s0} + {col}; {v}.ld = {s0}; }}")
        self.line(f"else {self.unless_past_end(op)}{copy}")

    def unless_past_end(self, op: tile.LoadOp) -> str:
        """For a load the body of a full-range pipelined loop issues for iteration i+N-1: a condition that skips
        the copy past the loop's end, where the tile is never read. A decode step's attention zero-filled two
        K and two V tiles per head that way (64 KB of a 528-row cache's 264)."""
        loop = op.parent_op()
        if not (isinstance(loop, scf.ForOp) and AHEAD_ATTR in loop.attributes and op.attributes.get(PHASE_ATTR) == StringAttr("body")):
            return ""
        stages = loop.attributes[STAGES_ATTR].value.data
        iv, ub, step = self.name(loop.body.block.args[0]), self.name(loop.ub), self.name(loop.step)
        return f"if ({iv} + {stages - 1} * {step} < {ub}) "

    def load_bits(self, op: tile.LoadOp, info) -> None:
        """A bf16 lhs of k-pair products as its bits: a view of the source when the tile lies inside it in whole
        blocks of rows and of k, else a zero-padded copy (rows up to whole blocks)."""
        v = self.name(op.result)
        buf, base, row, col = (self.name(x) for x in (op.buffer, op.base, op.row, op.col))
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        self.line("/* bf16 bits for the matrix unit: no widening copy */")
        self.line(f"llmc_tile {v} = {{{self.slot(op.result)}, {info.ld}, {self.plan.nr}}};")
        copy = (f"llmc_copy_bits((uint16_t *){v}.p, {info.ld}, {buf} + {base}, {row}, {col}, {info.rows}, "
                f"{round_up(info.rows, PAIR_ROWS)}, {info.cols}, {height}, {width}, {s0}, {s1});")
        if s1 != 1 or info.rows % PAIR_ROWS or info.cols % PAIR_ROWS:
            self.line(copy)
            return
        inside = f"{row} >= 0 && {col} >= 0 && {row} + {info.rows} <= {height} && {col} + {info.cols} <= {width}"
        self.line(f"if ({inside}) {{ {v}.p = (float *)({buf} + {base} + {row} * {s0} + {col}); {v}.ld = {s0}; }}")
        self.line(f"else {copy}")

    def load_transposed(self, op: tile.LoadOp, info) -> None:
        """A B operand read as rows of K (bt[n][k]): a view of the source when inside it."""
        v = self.name(op.result)
        buf, base, row, col = (self.name(x) for x in (op.buffer, op.base, op.row, op.col))
        (height, width), (_, s1) = op.shape.get_values(), op.strides.get_values()
        self.line("/* kept transposed (rows of K): the dot reads it as dot products, no transposing copy */")
        self.line(f"llmc_tile {v} = {{{self.slot(op.result)}, {info.ld}, {self.plan.nr}}};")
        key = element_key(op.buffer.type.element_type)
        copy = (f"llmc_pack_block{ACCESS[key] if key in HALF else ''}({v}.p, {info.ld}, {buf} + {base}, {col}, {row}, "
                f"{info.cols}, {info.rows}, {width}, {height}, {s1}, 1);")
        if key in HALF:  # widened: always a copy
            self.line(copy)
            return
        inside = f"{row} >= 0 && {col} >= 0 && {row} + {info.rows} <= {height} && {col} + {info.cols} <= {width}"
        self.line(f"if ({inside}) {{ {v}.p = {buf} + {base} + {row} + {col} * {s1}; {v}.ld = {s1}; }}")
        self.line(f"else {self.unless_past_end(op)}{copy}")

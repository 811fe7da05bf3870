"""Render one `tile.kernel` as a C function: OpenMP over the launch grid, one tile per program.

Index arithmetic becomes `long` statements, scf.for a C loop carrying tile
descriptors, tile.dot a call of the register-blocked micro-kernel, and every
store a loop nest whose fused pointwise ops are vector statements (nest.py).
Each op leaves a comment with its IR form and model source line.
"""

from __future__ import annotations

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import FloatAttr, bf16, f16, f32, i1, i8, i32, i64
from xdsl.ir import BlockArgument, Operation, SSAValue

from llmc.backends import CMPI_SYMBOLS, shape2
from llmc.backends.c.exprs import ACCESS, C_TYPES, INDEX_BINARY, c_comment, c_identifier, float_literal
from llmc.backends.c.nest import Nest, element_key
from llmc.backends.c.plan import INLINE, QSOURCE, KernelPlan
from llmc.backends.c.prefetch import PrefetchRenderer
from llmc.backends.c.products import ProductRenderer
from llmc.backends.c.reductions import ReductionRenderer
from llmc.backends.c.row_pipeline import RowPipelineRenderer
from llmc.dialects import tile
from llmc.passes.coalesce import STREAM_ATTR
from llmc.errors import UnsupportedOpError


class KernelRenderer(ProductRenderer, PrefetchRenderer, ReductionRenderer, RowPipelineRenderer):
    def __init__(self, kernel: tile.KernelOp, plan: KernelPlan, function_name: str, arg_notes: list[str],
                 status_code: int = 1):
        self.kernel = kernel
        self.status_code = status_code  # what the forward returns when this kernel meets a bad index
        dims = [d for arg in kernel.body.block.args for d in arg.type.get_shape()] + list(kernel.grid.get_values())
        self.small_indices = max(dims, default=0) < 2**24  # every tile position is exact as a float
        self.kernel_name = kernel.sym_name.data
        self.plan = plan
        self.function_name = function_name
        self.arg_notes = arg_notes
        self.lines: list[str] = []
        self.depth = 0
        self.names: dict[SSAValue, str] = {}
        self.loop_counters: dict[object, str] = {}
        self.done: set[Operation] = set()  # reductions already computed inside their producer's nest
        self.prefetched: set[Operation] = set()  # loads whose next tile a pass already prefetches
        self.deferred_prefetch: dict[Operation, list[tile.LoadOp]] = {}  # a later pass asks for the next rows
        self.quant_args: dict[SSAValue, str] = {}  # a dequantized tile's codes/scales arguments of llmc_qdot
        self.vnni_args: dict[SSAValue, str] = {}  # the same for llmc_qdot_vnni (codes in the integer-dot layout)
        self.handlers = {
            arith.ConstantOp: self.op_constant,
            arith.CmpiOp: self.op_cmpi,
            arith.SelectOp: self.op_select,
            scf.ForOp: self.op_for,
            scf.YieldOp: self.op_yield,
            tile.ProgramIdOp: self.op_program_id,
            tile.TileCoordsOp: self.op_tile_coords,
            tile.LoadOp: self.op_load,
            tile.StoreOp: self.op_store,
            tile.ScatterOp: self.op_scatter,
            tile.ToIndexOp: self.op_to_index,
            tile.DotOp: self.op_dot,
            tile.DequantOp: self.op_dequant,
            tile.ReduceOp: self.op_reduce,
            tile.ScanOp: self.op_scan,
            tile.FullOp: self.op_full,
            tile.ReturnOp: lambda op: None,
        }

    # ------------------------------------------------------------------ plumbing

    def name(self, value: SSAValue) -> str:
        if value not in self.names:
            self.names[value] = f"v{len(self.names)}"
        return self.names[value]

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def open(self, text: str) -> None:
        self.line(text + " {")
        self.depth += 1

    def close(self, suffix: str = "") -> None:
        self.depth -= 1
        self.line("}" + suffix)

    def row_width(self, cols: int) -> int:
        """How many of a row kernel's `cols` tile columns hold data: its row reductions' extent (a program takes
        whole rows, so every reduction runs over the same row). Its materialised copies need no more: they are
        read by those reductions, which stop there, and by stores, which write nothing past the row. A width
        that is not a power of two (GPT-2's 768, Qwen2's 896) computed the padding up to the tile's 1024 through
        the edge loads' slow path, a third more of each pass. Other kernels keep their tiles whole: a product
        reads its operands' padding."""
        if self.kernel.kind.data != "row":
            return cols
        extents = {op.extent.value.data for op in self.kernel.body.block.walk() if isinstance(op, tile.ReduceOp)}
        return min(cols, extents.pop()) if len(extents) == 1 else cols

    def column_loop(self, extent: int | str) -> Nest:
        """Open a row's loop over vectors of columns; its nest computes values of one column (row statistics
        and what is made of them: a softmax's reciprocal sum, a norm's scale) once per row, above the loop.
        GCC would not hoist them itself: they are read from scratch, which it cannot prove the loop's
        stores leave alone. The loop also says its vectors are whole where the extent is a multiple of the
        width: GCC cannot prove from the loop alone that c stays a multiple of it, and kept the edge tests of
        every load, reduction and store in the loop (a softmax's exp pass branched twice per vector)."""
        above = (len(self.lines), self.depth)
        self.open(f"for (long c = 0; c < {extent}; c += LLMC_W)")
        self.line(f"LLMC_WHOLE_VECTORS(c, {extent});")
        return Nest(self, above)

    def describe(self, op: Operation) -> str:
        """A one-line IR form of `op` with the C names, and its model source line."""
        results = ", ".join(f"%{self.name(r)}" for r in op.results)
        operands = ", ".join(f"%{self.name(o)}" for o in op.operands)
        keys = [f"{k}={_short(v)}" for k, v in op.attributes.items() if k not in ("loc", "llmc.pipeline")]
        text = f"{results + ' = ' if results else ''}{op.name} {operands}"
        text += f" {{{', '.join(keys)}}}" if keys else ""
        if "llmc.pipeline" in op.attributes:
            text += f" [{op.attributes['llmc.pipeline'].data}]"
        if "loc" in op.attributes:
            text += f" @ {op.attributes['loc'].data}"
        return c_comment(text)

    def slot(self, value: SSAValue) -> str:
        info = self.plan.values[value]
        where = f"scratch + {info.slot}"
        if info.rotate > 1:
            counter = self.loop_counters[value.owner.parent_block()]
            where += f" + ({counter} % {info.rotate}) * {info.slot_floats}"
        return where

    def fresh(self, value: SSAValue) -> None:
        info = self.plan.values[value]
        if info.alias is not None:
            self.line(f"llmc_tile {self.name(value)} = {self.name(info.alias)};")
        else:
            self.line(f"llmc_tile {self.name(value)} = {{{self.slot(value)}, {info.ld}, {self.plan.nr}}};")

    # ------------------------------------------------------------------ kernel

    def render(self) -> str:
        block = self.kernel.body.block
        for index, arg in enumerate(block.args):
            self.names[arg] = f"arg{index}"
        grid = self.kernel.grid.get_values()
        pids = [f"pid{axis}" for axis in range(len(grid))]
        self.line(f"/* @{c_comment(self.kernel_name)}: {self.kernel.kind.data} kernel, grid {'x'.join(map(str, grid))}")
        for index, note in enumerate(self.arg_notes):
            self.line(f" *   arg{index}: {c_comment(note)}")
        self.line(" */")
        params = ", ".join(f"{arg_c_type(arg.type.element_type, self.plan.packs.get(i))} *arg{i}" for i, arg in enumerate(block.args))
        self.open(f"static void {self.function_name}({params}, float *scratch_base, float *shared, int *status)")
        self.line("(void)status;")
        self.line("(void)shared;")
        self.line("/* runs on every thread of the forward's one parallel region; the programs are shared out */")
        self.line("float *scratch = scratch_base + (long)omp_get_thread_num() * LLMC_SCRATCH_FLOATS;")
        self.line("(void)scratch;")
        for spec in dict.fromkeys(self.plan.shared_lhs.values()):
            into = f"shared + {spec.offset} + b * {spec.matrix_floats}, arg{spec.arg} + {spec.base} + b * {spec.batch_step}"
            if spec.codes:
                self.line(f"/* arg{spec.arg}'s rows rounded to int8 once for every program's integer products (the "
                          f"threads share the rows; the loop's barrier ends it) */")
                self.line(f"for (long b = 0; b < {spec.batches}; b++) llmc_act8_pack({into}, {spec.height}, {spec.width}, "
                          f"{spec.row_stride}, {spec.padded_rows}, {spec.padded_k}, {int(spec.codes == 8)});")
                continue
            self.line(f"/* arg{spec.arg}'s rows packed once for every program's products (the threads share the "
                      f"blocks; the loop's barrier ends it) */")
            self.line(f"for (long b = 0; b < {spec.batches}; b++) llmc_pack_lhs({into}, {spec.height}, "
                      f"{spec.width}, {spec.row_stride}, {spec.padded_k});")
        streams = any(STREAM_ATTR in op.attributes for op in block.walk())
        collapse = f" collapse({len(grid)})" if len(grid) > 1 else ""
        self.line(f"#pragma omp for{collapse} schedule({self.schedule()}){' nowait' if streams else ''}")
        for pid, extent in zip(pids, grid):
            self.line(f"for (long {pid} = 0; {pid} < {extent}; {pid}++)")
        self.open("")
        self.plan_row_by_row(block)
        self.render_block(block)
        self.close_row_loop()
        self.close()
        if streams:
            self.line("LLMC_STREAM_FENCE(); /* streaming stores are weakly ordered: drain before the barrier */")
            self.line("#pragma omp barrier")
        self.close()
        return "\n".join(self.lines)

    def schedule(self) -> str:
        """How the programs are shared out. A matmul kernel's threads take its programs one at a time as they
        finish: a core that runs slower for a while (a decode step's share of the memory bandwidth, a
        neighbour on a shared host, a lower clock) does not leave the other spinning at the barrier. GPT-2's
        decode step spent 19% of its time there with static sharing on a Zen 3 host; in prefill, dynamic
        sharing took the GPT-2 block 0.89x, LLaMA's 0.97x and GEMM 1024^3 0.93x the time when the host was
        busy and 1.00x when it was quiet (in rotation, one process). Row, attention and pointwise kernels keep
        contiguous runs of programs: the row kernels prefetch the next program's rows, and attention gained
        nothing from it."""
        if self.kernel.kind.data == "matmul":
            return "dynamic, 1"
        return "static"

    def render_block(self, block) -> None:
        for op in block.ops:
            if op in self.done:
                continue
            handler = self.handlers.get(type(op))
            if handler is not None:
                handler(op)
            elif type(op) in INDEX_BINARY:
                lhs, rhs = (self.name(v) for v in op.operands)
                expr = INDEX_BINARY[type(op)].format(lhs, rhs)
                self.line(f"const long {self.name(op.results[0])} = {expr};")
            elif self.plan.values.get(op.results[0] if op.results else None) is not None:
                self.op_pointwise(op)
            else:
                raise UnsupportedOpError(f"the C backend cannot render {op.name} in @{self.kernel_name}")

    # ------------------------------------------------------------------ scalars

    def op_constant(self, op: arith.ConstantOp) -> None:
        if isinstance(op.value, FloatAttr):
            self.line(f"const float {self.name(op.result)} = {float_literal(op.value.value.data)};")
        else:
            self.line(f"const long {self.name(op.result)} = {op.value.value.data};")

    def op_cmpi(self, op: arith.CmpiOp) -> None:
        symbol = CMPI_SYMBOLS[op.predicate.value.data]
        self.line(f"const long {self.name(op.result)} = {self.name(op.lhs)} {symbol} {self.name(op.rhs)};")

    def op_select(self, op: arith.SelectOp) -> None:
        cond, lhs, rhs = (self.name(v) for v in op.operands)
        self.line(f"const long {self.name(op.result)} = {cond} ? {lhs} : {rhs};")

    def op_to_index(self, op: tile.ToIndexOp) -> None:
        tile_name = self.name(op.operand)
        self.line(f"const long {self.name(op.result)} = (long)((const int64_t *){tile_name}.p)[0]; /* {self.describe(op)} */")

    def op_program_id(self, op: tile.ProgramIdOp) -> None:
        self.line(f"const long {self.name(op.result)} = pid{op.axis.value.data};")

    def op_tile_coords(self, op: tile.TileCoordsOp) -> None:
        row, col = self.name(op.row), self.name(op.col)
        rows, cols, group = op.rows.value.data, op.cols.value.data, op.group.value.data
        self.line(f"long {row}, {col}; /* {self.describe(op)} */")
        self.line(f"llmc_tile_coords({self.name(op.pid)}, {rows}, {cols}, {group}, &{row}, &{col});")

    # ------------------------------------------------------------------ loops

    def op_for(self, op: scf.ForOp) -> None:
        body = op.body.block
        counter = f"it{len(self.loop_counters)}"
        self.loop_counters[body] = counter
        self.line(f"/* {self.describe_loop(op)} */")
        for init, arg in zip(op.iter_args, body.args[1:]):
            self.carry_in(init, arg)
        self.line(f"long {counter} = 0;")
        iv, lb, ub, step = self.name(body.args[0]), self.name(op.lb), self.name(op.ub), self.name(op.step)
        self.open(f"for (long {iv} = {lb}; {iv} < {ub}; {iv} += {step}, {counter}++)")
        self.render_block(body)
        self.close()
        for arg, result in zip(body.args[1:], op.results):
            kind = "llmc_tile" if arg in self.plan.values else "long"
            self.line(f"{kind} {self.name(result)} = {self.name(arg)};")

    def describe_loop(self, op: scf.ForOp) -> str:
        stages = op.attributes.get("llmc.pipeline_stages")
        text = f"scf.for over [{self.name(op.lb)}, {self.name(op.ub)}) step {self.name(op.step)}"
        if stages is not None:
            text += f": software-pipelined, {stages.value.data} stages (prologue loads above, next-step loads at the end of the body, epilogue below)"
        return text

    def carry_in(self, init: SSAValue, arg: BlockArgument) -> None:
        info = self.plan.values.get(arg)
        if info is None:
            self.line(f"long {self.name(arg)} = {self.name(init)};")
            return
        if not info.copy_init:
            self.line(f"llmc_tile {self.name(arg)} = {self.name(init)};")
            return
        self.line(f"llmc_tile {self.name(arg)} = {{scratch + {info.slot}, {info.ld}, {self.plan.nr}}};")
        self.line(f"llmc_copy_tile({self.name(arg)}, {self.name(init)}, {info.rows}, {info.cols});")

    def op_yield(self, op: scf.YieldOp) -> None:
        args = op.parent_block().args[1:]
        values = [self.name(v) for v in op.operands]
        targets = [self.name(a) for a in args]
        if not values:
            return
        self.open("")
        for index, (arg, value) in enumerate(zip(args, values)):
            kind = "llmc_tile" if arg in self.plan.values else "long"
            self.line(f"const {kind} next{index} = {value};")
        for index, target in enumerate(targets):
            self.line(f"{target} = next{index};")
        self.close()

    # ------------------------------------------------------------------ tiles

    def op_load(self, op: tile.LoadOp) -> None:
        info = self.plan.values[op.result]
        if info.kind in (INLINE, QSOURCE):  # a quantized weight's loads are read by its tile.dequant
            return
        v = self.name(op.result)
        buf, row, col = (self.name(x) for x in (op.buffer, op.row, op.col))
        self.line(f"/* {self.describe(op)} */")
        if info.panel:
            pack = self.plan.packs[op.buffer.index]
            self.line(f"/* weight packed at compile time into K-major panels of {pack.panel} columns: a view, no copy */")
            offset = f"({col} / {pack.panel}) * {pack.panel_stride} + {row} * {pack.panel}"
            if pack.half:  # kept 16-bit (p points at the bits): the few-row dot widens it as it streams it
                self.line(f"const llmc_tile {v} = {{(float *)({buf} + {offset}), {pack.panel}, {pack.panel_stride}}};")
                return
            self.line(f"const llmc_tile {v} = {{{buf} + {offset}, {pack.panel}, {pack.panel_stride}}};")
            return
        if info.transposed:
            self.load_transposed(op, info)
            return
        if info.bits:
            self.load_bits(op, info)
            return
        self.load_operand(op, info)

    def op_full(self, op: tile.FullOp) -> None:
        info = self.plan.values[op.result]
        self.line(f"/* {self.describe(op)} */")
        self.fresh(op.result)
        if not info.zero_acc:
            value = float_literal(op.value.value.data)
            self.line(f"llmc_fill({self.name(op.result)}.p, {info.rows * info.ld}, {value});")

    def op_pointwise(self, op: Operation) -> None:
        value = op.results[0]
        info = self.plan.values[value]
        if info.kind == INLINE:
            return
        rows, cols = shape2(value)
        v = self.name(value)
        self.line(f"/* {self.describe(op)} (materialised: {'row statistic' if cols == 1 else 'several consumers'}) */")
        self.fresh(value)
        if cols == 1:
            self.open_rows(op, rows)
            self.line("const long c = 0; (void)c;")
            self.line(f"{v}.p[r * {v}.ld] = ({Nest(self).compute(op)})[0];")
            self.close()
            return
        reductions = self.plan.fused_reductions.get(op, [])
        for reduce in reductions:
            self.line(f"/* {self.describe(reduce)}: computed in the same pass */")
            self.fresh(reduce.result)
            self.done.add(reduce)
        self.open_rows(op, rows)
        for reduce in reductions:
            self.reduce_init(reduce)
        self.next_row_init(op)
        nest = self.column_loop(self.row_width(cols))
        self.line(f"const vf x{v[1:]} = {nest.compute(op)};")
        nest.memo[value] = f"x{v[1:]}"
        self.line(f"vstore({v}.p + {self.wide_row()} * {v}.ld + c, x{v[1:]});")
        for reduce in reductions:
            self.reduce_step(reduce, nest)
        self.next_row_step(op)
        self.emit_deferred_prefetch(op)
        self.close()
        for reduce in reductions:
            self.reduce_finish(reduce)
        self.next_row_finish(op)
        self.close()

    def op_store(self, op: tile.StoreOp) -> None:
        rows, cols = shape2(op.value)
        buf, base, row, col = (self.name(x) for x in (op.buffer, op.base, op.row, op.col))
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        self.line(f"/* {self.describe(op)}: epilogue fused, computed in registers */")
        self.open_rows(op, rows)
        self.line(f"const long row = {row} + r;")
        self.open(f"if (row >= 0 && row < {height})")
        # the columns past the view's edge are never written: the loop stops at the edge (a row kernel's tile
        # is a power of two wider than its rows, a pointwise grid's last column tile may hang over)
        value = self.column_loop(f"({cols} < {width} - {col} ? {cols} : {width} - {col})").vector(op.value)
        lanes = f"({cols} - c < LLMC_W ? {cols} - c : LLMC_W)"
        key = element_key(op.buffer.type.element_type)
        where = f"{buf} + {base}, row, {col} + c, {height}, {width}, {s0}, {s1}, {lanes}, {value}"
        if key == "f32":
            stream = 1 if STREAM_ATTR in op.attributes else 0
            self.line(f"llmc_store_vec({where}, {stream});")
        else:
            self.line(f"llmc_store_vec{ACCESS[key]}({where});")
        self.emit_deferred_prefetch(op)
        self.close()
        self.close()
        self.close()


    def op_scatter(self, op: tile.ScatterOp) -> None:
        """Each live tile row to the row its index names; an index out of range writes nothing and
        sets the status the forward returns."""
        rows, cols = shape2(op.value)
        buf, base, first, col = (self.name(x) for x in (op.buffer, op.base, op.first, op.col))
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        self.line(f"/* {self.describe(op)}: only these rows are written */")
        self.open(f"for (long r = 0; r < {rows} && {first} + r < {op.count.value.data}; r++)")
        index = Nest(self).vector(op.rows)
        self.line(f"const long row = llmc_scatter_row(({index})[0], {height}, status, {self.status_code});")
        self.line("if (row < 0) continue;")
        self.open(f"for (long c = 0; c < {cols}; c += LLMC_W)")
        value = Nest(self).vector(op.value)
        lanes = f"({cols} - c < LLMC_W ? {cols} - c : LLMC_W)"
        key = element_key(op.buffer.type.element_type)
        where = f"{buf} + {base}, row, {col} + c, {height}, {width}, {s0}, {s1}, {lanes}, {value}"
        self.line(f"llmc_store_vec({where}, 0);" if key == "f32" else f"llmc_store_vec{ACCESS[key]}({where});")
        self.close()
        self.close()


def c_type(element) -> str:
    """The C type of a buffer element (bool as one byte, as torch stores it; 16-bit floats as bits)."""
    key = element_key(element)
    if element not in (f32, i64, i32, i1, i8, bf16, f16):
        raise UnsupportedOpError(f"the C backend has no buffers of {element}")
    return C_TYPES[key]


def arg_c_type(element, pack) -> str:
    """A kernel argument's C type: a 16-bit weight packed into f32 panels (the float micro-kernels read
    it) is float, any other argument has its element's type."""
    return "float" if pack is not None and not pack.half and element in (bf16, f16) else c_type(element)


def _short(attr) -> str:
    if hasattr(attr, "get_values"):
        return "x".join(str(v) for v in attr.get_values())
    if hasattr(attr, "data") and isinstance(attr.data, str):
        return attr.data
    if hasattr(attr, "value") and hasattr(attr.value, "data"):
        return str(attr.value.data)
    return str(attr)


def function_name(kernel_name: str) -> str:
    return "kernel_" + c_identifier(kernel_name)

"""Render tile IR as a Python module of `@triton.jit` kernels and a host function that launches them.

Tile IR is already Triton-shaped, so the mapping is op for op: a `tile.load`
of an R x C block of a strided view is one masked `tl.load` over a pointer
block, `tile.dot` is `tl.dot` (bf16/fp16 operands on tensor cores with an fp32
accumulator, fp32 operands in IEEE fp32; small-M tiles multiply-and-sum instead,
since `tl.dot` needs 16 rows), `tile.reduce` is `tl.sum`/`tl.max` with the
padding columns masked, `graph.cast` is `.to(dtype)`, `scf.for` a Python `for`
carrying the iter_args. A loop the `pipeline` pass delegated becomes
`tl.range(..., num_stages=N)`; an expanded one is rendered as the IR says it
(prologue / body / epilogue), and its kernel is launched with `num_stages=1`
so that Triton does not pipeline it a second time. Each statement carries the
IR op and model source line as a comment.
"""

from __future__ import annotations

import math

from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import FloatAttr, ModuleOp, bf16, f16, f32, i1, i8, i32, i64
from xdsl.ir import Operation, SSAValue

from llmc.backends import CMPI_SYMBOLS, constant_exponent, shape2
from llmc.dialects import graph, tile
from llmc.dtypes import element_bytes, is_low_precision, torch_dtype
from llmc.errors import MalformedIRError, UnsupportedOpError

INDEX = {
    arith.AddiOp: "{0} + {1}",
    arith.SubiOp: "{0} - {1}",
    arith.MuliOp: "{0} * {1}",
    arith.DivSIOp: "{0} // {1}",
    arith.RemSIOp: "{0} % {1}",
    arith.MinSIOp: "tl.minimum({0}, {1})",
    arith.MaxSIOp: "tl.maximum({0}, {1})",
}
UNARY = {
    graph.NegOp: "-{0}",
    graph.ExpOp: "tl.exp({0})",
    graph.LogOp: "tl.log({0})",
    graph.SqrtOp: "tl.sqrt({0})",
    graph.RsqrtOp: "tl.rsqrt({0})",
    graph.SigmoidOp: "tl.sigmoid({0})",
    graph.ReluOp: "tl.maximum({0}, 0.0)",
    graph.SiluOp: "({0} * tl.sigmoid({0}))",
    graph.TanhOp: "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)",
    graph.SinOp: "tl.sin({0})",
    graph.CosOp: "tl.cos({0})",
    graph.AbsOp: "tl.abs({0})",
    graph.NotOp: "(~{0})",
}
BINARY = {
    graph.AddOp: "{0} + {1}",
    graph.SubOp: "{0} - {1}",
    graph.MulOp: "{0} * {1}",
    graph.DivOp: "{0} / {1}",
    graph.MaximumOp: "tl.maximum({0}, {1})",
    graph.MinimumOp: "tl.minimum({0}, {1})",
    graph.EqOp: "{0} == {1}",
    graph.NeOp: "{0} != {1}",
    graph.LtOp: "{0} < {1}",
    graph.LeOp: "{0} <= {1}",
    graph.GtOp: "{0} > {1}",
    graph.GeOp: "{0} >= {1}",
    graph.AndOp: "({0} & {1})",
    graph.OrOp: "({0} | {1})",
    graph.XorOp: "({0} ^ {1})",
    graph.FloorDivOp: "floor_div({0}, {1})",
    graph.RemOp: "floor_rem({0}, {1})",
}
POWERS = {2.0: "({0} * {0})", 3.0: "({0} * {0} * {0})", 1.0: "{0}", 0.5: "tl.sqrt({0})", -0.5: "tl.rsqrt({0})"}
GELU = {
    "tanh": "({0} * tl.sigmoid(1.5957691216057308 * ({0} + 0.044715 * {0} * {0} * {0})))",
    "none": "(0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476)))",
}
DOT_MIN_ROWS = 16
TL_TYPES = {f32: "tl.float32", bf16: "tl.bfloat16", f16: "tl.float16", i1: "tl.int1", i64: "tl.int64", i32: "tl.int32",
            i8: "tl.int8"}
INT_LOWEST = -(2**63)
WIDE_TILE = 128 * 128  # elements of a tile from which a kernel gets 8 warps rather than Triton's default 4


def tl_type(element) -> str:
    if element not in TL_TYPES:
        raise UnsupportedOpError(f"the Triton backend has no element type {element}")
    return TL_TYPES[element]


def literal(value: float) -> str:
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    return repr(float(value))


def comment(op: Operation) -> str:
    text = op.name
    if "llmc.pipeline" in op.attributes:
        text += f" [{op.attributes['llmc.pipeline'].data}]"
    if "loc" in op.attributes:
        text += f" @ {op.attributes['loc'].data}"
    return "  # " + "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


class TritonKernelRenderer:
    def __init__(self, kernel: tile.KernelOp, status_code: int = 1):
        self.kernel = kernel
        self.status_code = status_code  # what a gather stores into `status` on an index out of range
        self.lines: list[str] = []
        self.depth = 1
        self.names: dict[SSAValue, str] = {}

    def name(self, value: SSAValue) -> str:
        if value not in self.names:
            self.names[value] = f"v{len(self.names)}"
        return self.names[value]

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def render(self) -> str:
        block = self.kernel.body.block
        args = [f"arg{i}" for i in range(len(block.args))]
        for arg, text in zip(block.args, args):
            self.names[arg] = text
        name = self.kernel.sym_name.data
        grid = "x".join(map(str, self.kernel.grid.get_values()))
        header = [
            "@triton.jit",
            f"def {python_name(name)}({', '.join([*args, 'status'])}):",
            f'    """@{name}: {self.kernel.kind.data} kernel, grid {grid}."""',
        ]
        self.render_block(block)
        return "\n".join(header + self.lines)

    def render_block(self, block) -> None:
        for op in block.ops:
            self.render_op(op)

    def render_op(self, op: Operation) -> None:  # noqa: C901 - one dispatch table
        if type(op) in INDEX:
            lhs, rhs = (self.name(v) for v in op.operands)
            self.line(f"{self.name(op.results[0])} = {INDEX[type(op)].format(lhs, rhs)}")
        elif isinstance(op, arith.ConstantOp):
            value = op.value.value.data
            text = literal(value) if isinstance(op.value, FloatAttr) else str(value)
            self.line(f"{self.name(op.result)} = {text}")
        elif isinstance(op, arith.CmpiOp):
            symbol = CMPI_SYMBOLS[op.predicate.value.data]
            self.line(f"{self.name(op.result)} = {self.name(op.lhs)} {symbol} {self.name(op.rhs)}")
        elif isinstance(op, arith.SelectOp):
            cond, lhs, rhs = (self.name(v) for v in op.operands)
            self.line(f"{self.name(op.result)} = tl.where({cond}, {lhs}, {rhs})")
        elif isinstance(op, tile.ProgramIdOp):
            self.line(f"{self.name(op.result)} = tl.program_id({op.axis.value.data})")
        elif isinstance(op, tile.TileCoordsOp):
            self.tile_coords(op)
        elif isinstance(op, tile.LoadOp):
            self.load(op)
        elif isinstance(op, tile.StoreOp):
            self.store(op)
        elif isinstance(op, tile.DotOp):
            self.dot(op)
        elif isinstance(op, tile.DequantOp):
            self.dequant(op)
        elif isinstance(op, tile.ReduceOp):
            self.reduce(op)
        elif isinstance(op, tile.ScanOp):
            self.scan(op)
        elif isinstance(op, tile.GatherOp):
            self.gather(op)
        elif isinstance(op, tile.ScatterOp):
            self.scatter(op)
        elif isinstance(op, tile.ToIndexOp):
            self.line(f"{self.name(op.result)} = tl.max(tl.max({self.name(op.operand)}, axis=1), axis=0){comment(op)}")
        elif isinstance(op, tile.FullOp):
            rows, cols = shape2(op.result)
            self.line(f"{self.name(op.result)} = tl.full(({rows}, {cols}), {literal(op.value.value.data)}, tl.float32){comment(op)}")
        elif isinstance(op, tile.IotaOp):
            self.iota(op)
        elif isinstance(op, scf.ForOp):
            self.loop(op)
        elif isinstance(op, scf.YieldOp):
            targets = [self.name(a) for a in op.parent_block().args[1:]]
            if targets:
                self.line(f"{', '.join(targets)} = {', '.join(self.name(v) for v in op.operands)}")
        elif isinstance(op, tile.ReturnOp):
            return
        else:
            self.line(f"{self.name(op.results[0])} = {self.pointwise(op)}{comment(op)}")

    def operand(self, value: SSAValue) -> str:
        """A pointwise operand: 16-bit tiles widen, since fused arithmetic is f32."""
        if is_low_precision(getattr(value.type, "element_type", None)):
            return f"{self.name(value)}.to(tl.float32)"
        return self.name(value)

    def pointwise(self, op: Operation) -> str:
        if isinstance(op, graph.ConstantOp):
            element = op.result.type.element_type
            if element == i1:
                return "True" if op.number else "False"
            return str(int(op.number)) if element in (i64, i32) else literal(op.number)
        if isinstance(op, graph.CastOp):
            if op.result.type.element_type == i1:  # nonzero is true, as torch's bool conversion
                return f"({self.name(op.operand)} != 0)"
            return f"{self.name(op.operand)}.to({tl_type(op.result.type.element_type)})"
        if constant_exponent(op) in POWERS:
            return POWERS[constant_exponent(op)].format(self.operand(op.lhs))
        if isinstance(op, graph.PowOp):
            return f"tl.exp({self.operand(op.rhs)} * tl.log({self.operand(op.lhs)}))"
        if isinstance(op, graph.GeluOp):
            return GELU[op.approximate.data].format(self.operand(op.operand))
        if isinstance(op, graph.WhereOp):
            return f"tl.where({self.name(op.cond)}, {self.operand(op.lhs)}, {self.operand(op.rhs)})"
        template = UNARY.get(type(op)) or BINARY.get(type(op))
        if template is None:
            raise UnsupportedOpError(f"the Triton backend has no form of {op.name} in @{self.kernel.sym_name.data}")
        return template.format(*(self.operand(v) for v in op.operands))

    def tile_coords(self, op: tile.TileCoordsOp) -> None:
        pid, rows, cols, group = self.name(op.pid), op.rows.value.data, op.cols.value.data, op.group.value.data
        self.line(f"first = ({pid} // {group * cols}) * {group}  # grouped program order (L2 swizzle)")
        self.line(f"size = tl.minimum({rows} - first, {group})")
        self.line(f"{self.name(op.row)} = first + ({pid} % {group * cols}) % size")
        self.line(f"{self.name(op.col)} = ({pid} % {group * cols}) // size")

    def block_pointers(self, op, rows: int, cols: int) -> tuple[str, str]:
        """(pointer block, mask) of an R x C block of the op's strided view, with coalescing hints."""
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        buf, base, row, col = (self.name(x) for x in (op.buffer, op.base, op.row, op.col))
        vec = op.vec.value.data if op.vec is not None else 1
        r, c = f"r_{self.name(op.results[0] if op.results else op.value)}", f"c_{self.name(op.results[0] if op.results else op.value)}"
        self.line(f"{r} = ({row} + tl.arange(0, {rows}))[:, None]")
        offsets = f"{col} + tl.arange(0, {cols})"
        if vec > 1 and s1 == 1:
            offsets = f"tl.max_contiguous(tl.multiple_of({offsets}, {vec}), {vec})"
        self.line(f"{c} = ({offsets})[None, :]")
        pointer = f"{buf} + {base} + {r} * {s0} + {c} * {s1}"
        mask = f"({r} >= 0) & ({r} < {height}) & ({c} >= 0) & ({c} < {width})"
        return pointer, mask

    def load(self, op: tile.LoadOp) -> None:
        rows, cols = shape2(op.result)
        pad = "float('-inf')" if op.padding is not None and op.padding.data == "neg_inf" else "0.0"
        if op.result.type.element_type in (i1, i64, i32, i8):
            pad = "0"
        pointer, mask = self.block_pointers(op, rows, cols)
        self.line(f"{self.name(op.result)} = tl.load({pointer}, mask={mask}, other={pad}){comment(op)}")

    def store(self, op: tile.StoreOp) -> None:
        rows, cols = shape2(op.value)
        pointer, mask = self.block_pointers(op, rows, cols)
        value = self.name(op.value)
        element = op.buffer.type.element_type
        if op.value.type.element_type != element:  # the store rounds to the buffer's type
            value = f"{value}.to({tl_type(element)})"
        self.line(f"tl.store({pointer}, tl.broadcast_to({value}, ({rows}, {cols})), mask={mask}){comment(op)}")

    def dot(self, op: tile.DotOp) -> None:
        lhs, rhs, acc = self.name(op.lhs), self.name(op.rhs), self.name(op.acc)
        rows = shape2(op.lhs)[0]
        if op.activations is not None:
            lhs = self.rounded_activations(op)
        low = is_low_precision(op.lhs.type.element_type)
        if rows < DOT_MIN_ROWS:  # tl.dot wants 16 rows: a decode step's few rows multiply-and-sum (in f32) instead
            lhs = f"{lhs}.to(tl.float32)" if op.activations is not None else self.operand(op.lhs)
            rhs = self.operand(op.rhs)
            expr = f"{acc} + tl.sum({lhs}[:, :, None] * {rhs}[None, :, :], axis=1)"
        elif low:  # tensor cores, f32 accumulator
            expr = f"tl.dot(dot_operand({lhs}), dot_operand({rhs}), {acc})"
        else:
            expr = f'tl.dot({lhs}, {rhs}, {acc}, input_precision="ieee")'
        self.line(f"{self.name(op.result)} = {expr}{comment(op)}")

    def rounded_activations(self, op: tile.DotOp) -> str:
        """The lhs tile rounded to int8 per block of 32 columns (round half to even: adding and removing
        1.5 * 2^23 rounds any |x| <= 2^22 to an integer in f32), as the linear's int8 activations."""
        rows, cols = shape2(op.lhs)
        block = min(32, cols)
        v, lhs = self.name(op.result), self.name(op.lhs)
        self.line(f"a_{v} = tl.reshape({lhs}.to(tl.float32), ({rows}, {cols // block}, {block}))")
        self.line(f"d_{v} = tl.max(tl.abs(a_{v}), axis=2, keep_dims=True) / 127.0")
        self.line(f"q_{v} = (a_{v} * (1.0 / tl.where(d_{v} > 0, d_{v}, 1.0)) + 12582912.0) - 12582912.0")
        self.line(f"r_{v} = tl.reshape(q_{v} * d_{v}, ({rows}, {cols})).to({lhs}.dtype)")
        return f"r_{v}"

    def dequant(self, op: tile.DequantOp) -> None:
        """(code - zero) * scale in registers, right before the dot that reads it: the weight crosses
        memory as 8 or 4 bits."""
        rows, cols = shape2(op.result)
        scale_rows, per_scale = shape2(op.scales)[0], op.rows_per_scale
        v, codes = self.name(op.result), self.name(op.codes)
        if op.bits == 8:
            self.line(f"q_{v} = {codes}.to(tl.float32)")
        else:  # byte row i holds rows 2i (low nibble) and 2i + 1: interleave the two nibble planes by row
            self.line(f"b_{v} = {codes}.to(tl.int32) & 255")
            self.line(f"q_{v} = tl.reshape(tl.permute(tl.join(b_{v} & 15, b_{v} >> 4), (0, 2, 1)), ({rows}, {cols}))"
                      ".to(tl.float32)")

        def per_row(value: SSAValue) -> str:
            name = self.name(value)
            if scale_rows == 1:
                return name
            return f"tl.reshape(tl.broadcast_to({name}[:, None, :], ({scale_rows}, {per_scale}, {cols})), ({rows}, {cols}))"

        zero = per_row(op.zeros) if op.zeros is not None else ("8.0" if op.bits == 4 else "0.0")
        self.line(f"{v} = (q_{v} - {zero}) * {per_row(op.scales)}{comment(op)}")

    def reduce(self, op: tile.ReduceOp) -> None:
        if op.axis.value.data != 1:
            raise UnsupportedOpError(f"tile.reduce over axis {op.axis.value.data} in @{self.kernel.sym_name.data}")
        cols = shape2(op.operand)[1]
        extent = op.extent.value.data
        value = self.name(op.operand)
        integer = op.operand.type.element_type in (i64, i32)
        lowest = str(INT_LOWEST) if integer else "float('-inf')"
        fill = "0" if op.kind.data == "sum" else lowest
        if extent < cols:
            value = f"tl.where(tl.arange(0, {cols})[None, :] < {extent}, {value}, {fill})"
        if op.kind.data == "argmax":
            self.line(f"{self.name(op.result)} = tl.argmax({value}, axis=1, keep_dims=True).to(tl.int64){comment(op)}")
            return
        fn = "tl.sum" if op.kind.data == "sum" else "tl.max"
        self.line(f"{self.name(op.result)} = {fn}({value}, axis=1, keep_dims=True){comment(op)}")

    def scan(self, op: tile.ScanOp) -> None:
        self.line(f"{self.name(op.result)} = tl.cumsum({self.name(op.operand)}, axis={op.axis.value.data}){comment(op)}")

    def gather(self, op: tile.GatherOp) -> None:
        """Rows named by an index tile: wrapped when negative, checked against the view's height."""
        rows, cols = shape2(op.result)
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        v = self.name(op.result)
        index = self.name(op.rows)
        self.line(f"r_{v} = tl.where({index} < 0, {index} + {height}, {index})")
        self.line(f"bad_{v} = (r_{v} < 0) | (r_{v} >= {height})")
        self.line(f"tl.store(status + tl.zeros(({rows}, 1), tl.int32), {self.status_code}, mask=bad_{v})"
                  "  # an index out of range: reported by the host")
        self.line(f"r_{v} = tl.where(bad_{v}, 0, r_{v})")
        self.line(f"c_{v} = ({self.name(op.col)} + tl.arange(0, {cols}))[None, :]")
        pointer = f"{self.name(op.buffer)} + {self.name(op.base)} + r_{v} * {s0} + c_{v} * {s1}"
        self.line(f"{v} = tl.load({pointer}, mask=(c_{v} >= 0) & (c_{v} < {width}), other=0){comment(op)}")

    def scatter(self, op: tile.ScatterOp) -> None:
        """Live tile rows stored at the rows an index tile names; an index out of range stores nothing."""
        rows, cols = shape2(op.value)
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        v = f"s{len(self.names)}"
        index = self.name(op.rows)
        live = f"({self.name(op.first)} + tl.arange(0, {rows}))[:, None] < {op.count.value.data}"
        self.line(f"r_{v} = tl.where({index} < 0, {index} + {height}, {index})")
        self.line(f"bad_{v} = ((r_{v} < 0) | (r_{v} >= {height})) & ({live})")
        self.line(f"tl.store(status + tl.zeros(({rows}, 1), tl.int32), {self.status_code}, mask=bad_{v})"
                  "  # an index out of range: reported by the host, nothing written")
        self.line(f"c_{v} = ({self.name(op.col)} + tl.arange(0, {cols}))[None, :]")
        pointer = f"{self.name(op.buffer)} + {self.name(op.base)} + r_{v} * {s0} + c_{v} * {s1}"
        mask = f"({live}) & ~bad_{v} & (c_{v} >= 0) & (c_{v} < {width})"
        value = self.name(op.value)
        if op.value.type.element_type != op.buffer.type.element_type:  # the store rounds to the buffer's type
            value = f"{value}.to({tl_type(op.buffer.type.element_type)})"
        self.line(f"tl.store({pointer}, tl.broadcast_to({value}, ({rows}, {cols})), mask={mask}){comment(op)}")

    def iota(self, op: tile.IotaOp) -> None:
        rows, cols = shape2(op.result)
        offset = self.name(op.offset)
        if op.axis.value.data == 1:
            self.line(f"{self.name(op.result)} = ({offset} + tl.arange(0, {cols}).to(tl.int64))[None, :]{comment(op)}")
        else:
            self.line(f"{self.name(op.result)} = ({offset} + tl.arange(0, {rows}).to(tl.int64))[:, None]{comment(op)}")

    def loop(self, op: scf.ForOp) -> None:
        body = op.body.block
        for init, arg in zip(op.iter_args, body.args[1:]):
            self.line(f"{self.name(arg)} = {self.name(init)}")
        stages = op.attributes.get("llmc.pipeline_stages")
        stages = stages.value.data if stages is not None else 1
        phase = op.attributes.get("llmc.pipeline")
        iv, lb, ub, step = (self.name(v) for v in (body.args[0], op.lb, op.ub, op.step))
        if phase is not None and phase.data == "delegated":
            self.line(f"for {iv} in tl.range({lb}, {ub}, {step}, num_stages={stages}):"
                      f"  # pipelined by Triton, {stages} stages (llmc.pipeline_stages)")
        elif stages > 1:
            self.line(f"for {iv} in range({lb}, {ub}, {step}):"
                      f"  # software-pipelined by llmc, {stages} stages: prologue above, epilogue below")
        else:
            self.line(f"for {iv} in range({lb}, {ub}, {step}):")
        self.depth += 1
        self.render_block(body)
        if len(body.ops) == 1:
            self.line("pass")
        self.depth -= 1
        for arg, result in zip(body.args[1:], op.results):
            self.line(f"{self.name(result)} = {self.name(arg)}")


def launch_options(kernel: tile.KernelOp) -> dict[str, int]:
    """num_warps from the widest tile; num_stages=1 where llmc expanded the pipeline itself."""
    ops = list(kernel.walk())
    widest = max((math.prod(r.type.get_shape()) for op in ops for r in op.results
                  if hasattr(r.type, "get_shape") and r.type.name == "tensor"), default=1)
    options = {"num_warps": 8 if widest >= WIDE_TILE else 4}
    phases = {op.attributes["llmc.pipeline"].data for op in ops if "llmc.pipeline" in op.attributes}
    if phases & {"prologue", "body", "epilogue"}:
        options["num_stages"] = 1
    return options


def python_name(name: str) -> str:
    clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return "kernel_" + clean


def render_host(module: ModuleOp) -> tuple[str, list[tuple[str, object]]]:
    """The `forward(inputs, weights, device)` function: arena, launches in order, outputs."""
    funcs = [op for op in module.ops if isinstance(op, func.FuncOp)]
    if len(funcs) != 1:
        raise MalformedIRError(f"the Triton backend expects one func.func, found {len(funcs)}")
    block = funcs[0].body.block
    arena = funcs[0].attributes.get("llmc.arena_bytes")
    lines = ["def forward(inputs, weights, device):",
             '    """Runs every kernel in order; a kernel that fails to compile or launch is named with its IR."""',
             f"    arena = torch.empty({max(arena.value.data if arena else 0, 1)}, dtype=torch.uint8, device=device)",
             "    status = torch.zeros(1, dtype=torch.int32, device=device)"]
    names = {arg: f"inputs[{i}]" for i, arg in enumerate(block.args)}
    weight_names: list[str] = []
    kernels = {op.sym_name.data: op for op in module.ops if isinstance(op, tile.KernelOp)}
    for index, op in enumerate(block.ops):
        if isinstance(op, tile.WeightOp):
            weight_names.append((op.weight_name.data, op.result.type.element_type))
            names[op.result] = f"weights[{len(weight_names) - 1}]"
        elif isinstance(op, tile.AllocOp):
            shape = tuple(op.result.type.get_shape())
            element = op.result.type.element_type
            dtype = torch_dtype(element)
            if op.offset is None:
                lines.append(f"    b{index} = torch.empty({shape}, dtype={dtype}, device=device)")
            else:
                start = op.offset.value.data
                end = start + math.prod(shape) * element_bytes(element)
                lines.append(f"    b{index} = arena[{start}:{end}].view({dtype}).view({shape})")
            names[op.result] = f"b{index}"
        elif isinstance(op, tile.LaunchOp):
            callee = op.callee.root_reference.data
            grid = tuple(kernels[callee].grid.get_values())
            args = ", ".join(names[b] for b in op.buffers)
            options = launch_options(kernels[callee])
            lines.append(f"    launch({python_name(callee)}, {callee!r}, {grid}, {options!r}, {args}, status)")
    if any(isinstance(op, tile.GatherOp | tile.ScatterOp) for k in kernels.values() for op in k.walk()):
        codes = {code: name for code, name in enumerate(kernels, start=1)}
        lines.append(f"    check_status(status, {codes!r})")
    returned = [names[v] for v in block.last_op.operands]
    lines.append(f"    return ({', '.join(returned)},)")
    return "\n".join(lines), weight_names

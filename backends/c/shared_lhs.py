"""A product's lhs packed once per launch for all of its programs.

Every program of a linear layer's kernel reads the rows of its output tile over the whole K, and the
micro-kernel reads them packed k-major in blocks of LLMC_MR rows (llmc_ukernel_packed). Packed inside each
product, the same rows were packed again by every column tile (18 times for a 128x768x2304 projection in
128-column tiles), each time from rows a row stride apart. A load that qualifies is instead a view into one
copy that all threads pack at the start of the launch (llmc_pack_lhs, runtime.h) into the forward's shared
buffer: rows padded to whole tiles and K to whole K steps, with zeros, so every tile of the loop lies inside it.

The input of products with int8 activations against codes laid out for integer dot products is likewise
rounded to int8 once per launch (llmc_act8_pack, quant.h: codes, and per block of 32 k a scale and the codes'
sum) where every column tile used to round its rows again (GPT-2's 128x3072x768 projection, in 256-column
tiles: 12 times). Not on hosts with AMX int8 tiles, whose kernel reads the f32 rows to lay them out itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import f32
from xdsl.ir import BlockArgument, SSAValue

from llmc.backends import shape2
from llmc.dialects import tile
from llmc.quantization import ACTIVATION_BLOCK
from llmc.target import micro_rows

MAX_BATCHES = 4096  # program ids of the batch axis folded at compile time, one by one


@dataclass(frozen=True)
class SharedLhs:
    arg: int  # the kernel argument packed
    base: int  # of the first matrix (a batch's programs read one matrix each, `batch_step` apart)
    height: int
    width: int
    row_stride: int
    rows: int  # the tile a load reads
    cols: int
    batches: int = 1
    batch_step: int = 0
    offset: int = 0  # floats into the shared buffer
    codes: int = 0  # 8 / 4: rounded to int8 for integer products with such codes (llmc_act8_pack); 0: f32, packed

    @property
    def padded_rows(self) -> int:
        return -(-self.height // self.rows) * self.rows

    @property
    def padded_k(self) -> int:
        return -(-self.width // self.cols) * self.cols

    @property
    def act_blocks(self) -> int:
        """Blocks of 32 k per row of the rounded rows (a scale and a sum each)."""
        return self.padded_k // ACTIVATION_BLOCK

    @property
    def codes_floats(self) -> int:
        """The rounded rows' codes, a byte each, in whole floats: the scales start after them (llmc_act8_pack)."""
        return -(-self.padded_rows * self.padded_k // 4)

    @property
    def matrix_floats(self) -> int:
        if self.codes:  # the codes, then a scale and a sum per row and block of 32 k
            return self.codes_floats + 2 * self.padded_rows * self.act_blocks
        return self.padded_rows * self.padded_k

    @property
    def floats(self) -> int:
        return self.batches * self.matrix_floats


FOLDS = {arith.AddiOp: int.__add__, arith.SubiOp: int.__sub__, arith.MuliOp: int.__mul__,
         arith.DivSIOp: int.__floordiv__, arith.RemSIOp: int.__mod__}


def constant_index(value: SSAValue, pids: tuple[int, ...]) -> int | None:
    """`value` folded to a number for the program whose ids are `pids`, when only constants, program ids and
    integer arithmetic make it (indices are non-negative, so C's division and remainder are Python's)."""
    op = value.owner
    if isinstance(op, arith.ConstantOp):
        return op.value.value.data
    if isinstance(op, tile.ProgramIdOp):
        return pids[op.axis.value.data]
    if type(op) in FOLDS:
        lhs, rhs = (constant_index(v, pids) for v in op.operands)
        if lhs is None or rhs is None or (rhs == 0 and type(op) in (arith.DivSIOp, arith.RemSIOp)):
            return None
        return FOLDS[type(op)](lhs, rhs)
    return None


def program_axes(value: SSAValue) -> set[int] | None:
    """The grid axes whose program ids `value` is computed from; None when anything else but constants and
    integer arithmetic goes into it."""
    op = value.owner
    if isinstance(op, arith.ConstantOp):
        return set()
    if isinstance(op, tile.ProgramIdOp):
        return {op.axis.value.data}
    if type(op) in FOLDS:
        axes = [program_axes(v) for v in op.operands]
        return None if None in axes else set().union(*axes)
    return None


def matrix_bases(base: SSAValue, grid: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(first base, step, count) when the programs' bases depend on the first grid axis alone (a batch), fold
    to numbers and are evenly spaced; None otherwise."""
    axes = program_axes(base)
    if axes is None or axes - {0} or grid[0] > MAX_BATCHES:
        return None
    rest = (0,) * (len(grid) - 1)
    found = [constant_index(base, (pid, *rest)) for pid in range(grid[0])]
    if None in found:
        return None
    bases = sorted(set(found))
    step = bases[1] - bases[0] if len(bases) > 1 else 0
    if any(b != bases[0] + i * step for i, b in enumerate(bases)):
        return None
    return bases[0], step, len(bases)


def only_products(value: SSAValue, seen: set) -> bool:
    """Every use of `value`, followed around loop iter_args and out of the loop (a pipeline's epilogue), is a
    product reading it as its lhs."""
    if value in seen:
        return True
    seen.add(value)
    for use in value.uses:
        user = use.operation
        if isinstance(user, tile.DotOp):
            if use.index != 0:
                return False
        elif isinstance(user, scf.ForOp) and use.index >= 3:
            if not only_products(user.body.block.args[use.index - 2], seen):
                return False
        elif isinstance(user, scf.YieldOp):
            loop = user.parent_op()
            if not only_products(user.parent_block().args[1 + use.index], seen):
                return False
            if isinstance(loop, scf.ForOp) and not only_products(loop.results[use.index], seen):
                return False
        else:
            return False
    return True


def float_weight_rhs(dot: tile.DotOp, packs: dict) -> bool:
    """The product's rhs is an f32 weight in compile-time panels: the float micro-kernel (llmc_dot) runs it."""
    from llmc.backends.c.plan import defining_load

    if dot.activations is not None:
        return False
    load = defining_load(dot.rhs)
    if load is None or not isinstance(load.buffer, BlockArgument) or load.pack is None:
        return False
    pack = packs.get(load.buffer.index)
    return pack is not None and not pack.half and not pack.vnni and load.buffer.type.element_type == f32


def integer_codes(dot: tile.DotOp, packs: dict) -> int:
    """The bits of the codes a product with int8 activations multiplies by integer dot products, else 0."""
    from llmc.backends.c.plan import defining_load

    dequant = dot.rhs.owner
    if dot.activations is None or not isinstance(dequant, tile.DequantOp):
        return 0
    load = defining_load(dequant.codes)
    pack = None if load is None or not isinstance(load.buffer, BlockArgument) else packs.get(load.buffer.index)
    return pack.vnni if pack is not None else 0


def shared_lhs(kernel: tile.KernelOp, load: tile.LoadOp, packs: dict, lanes: int,
               int8_tiles: bool = False) -> SharedLhs | None:
    """The launch-wide packing (or rounding to int8) a load can be a view of, or None when it reads anything
    else. `int8_tiles`: the host's integer products of prefill size run on AMX tiles."""
    rows, cols = shape2(load.result)
    (height, width), (s0, s1) = load.shape.get_values(), load.strides.get_values()
    if not isinstance(load.buffer, BlockArgument) or load.buffer.type.element_type != f32 or s1 != 1:
        return None
    if load.padding is not None or load.pack is not None or rows <= 8:
        return None  # (products of at most 8 rows run the few-row kernels, which read rows in place)
    seen: set = set()
    if not only_products(load.result, seen):
        return None
    dots = {use.operation for value in seen for use in value.uses if isinstance(use.operation, tile.DotOp)}
    if not dots:
        return None
    if all(float_weight_rhs(dot, packs) for dot in dots):
        if rows % micro_rows(lanes):
            return None
        codes = 0
    else:
        bits = {integer_codes(dot, packs) for dot in dots}
        if int8_tiles or len(bits) != 1 or 0 in bits or cols % ACTIVATION_BLOCK:
            return None
        codes = bits.pop()
    if any(isinstance(op, tile.StoreOp | tile.ScatterOp) and op.buffer is load.buffer for op in kernel.body.walk()):
        return None  # written by the kernel itself: a copy taken at the start would go stale
    grid = tuple(kernel.grid.get_values())
    bases = matrix_bases(load.base, grid)
    if bases is None:
        return None
    first, step, count = bases
    return SharedLhs(load.buffer.index, first, height, width, s0, rows, cols, count, step, codes=codes)

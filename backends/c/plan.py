"""Bufferization plan for one tile kernel: where each tile value lives in the C code.

Decide, then render. Every tensor value of a kernel is one of
- `inline`: a pointwise op, iota or a load read only by pointwise code; it is
  recomputed as a vector expression inside the loop nest of each consumer, so
  fused epilogues stay in registers until the store;
- `buffer`: dot accumulators, reductions, values with several consumers and
  loop-carried state, in a slot of the thread's scratch area;
- `operand`: a load a dot reads; at run time a view of the source when the tile
  lies inside it with unit column stride (or of the compile-time packed weight
  panels), otherwise a zero-padded copy in a scratch slot.
- `qsource` / `quant`: the codes, scales and zero points a `tile.dequant`
  reads, and the dequantized tile a dot with at most MAX_FUSED_ROWS rows reads
  in registers (`llmc_qdot`) or any dot reads as codes in integer dot products
  (`llmc_qdot_act8`, int8 activations): no storage, only pointers into the
  packed panels. A dequantized tile of a larger product is an `operand`, dequantized
  once per tile into scratch (the float micro-kernel then reads it).
A buffer is written in place over an operand that dies at that op (the dot
accumulator, the online-softmax statistics). A fresh slot defined in a loop and
carried around it rotates through as many copies as iterations keep alive, so
a 3-stage pipeline gets triple buffering without any special case.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xdsl.dialects import scf
from xdsl.dialects.builtin import bf16, i1, i32, i64
from xdsl.ir import Block, BlockArgument, Operation, SSAValue

from llmc.backends import shape2
from llmc.backends.c.shared_lhs import SharedLhs, shared_lhs
from llmc.dialects import graph, tile
from llmc.errors import UnsupportedOpError

INLINE, BUFFER, OPERAND, QSOURCE, QUANT = "inline", "buffer", "operand", "qsource", "quant"
MAX_FUSED_ROWS = 8  # a quantized product with at most this many rows dequantizes in registers
POINTWISE = (graph.UnaryOp, graph.BinaryOp, graph.GeluOp, graph.WhereOp, graph.ConstantOp, tile.IotaOp)
SLOT_ALIGN = 16
NT_MAX_ROWS = 4  # dots with at most this many rows read a transposed B as dot products
PAIRS = "pairs"  # a bf16 weight packed in k pairs for the matrix unit (matrix.h)
PAIR_ROWS = 32  # the k-pair products compute whole blocks of this many rows
PAIR_K = 32  # K of a weight packed in k pairs is padded to a multiple of this (an AMX tile's k)


@dataclass
class PackSpec:
    """A weight argument repacked at compile time into K-major panels of `panel` columns."""

    base: int
    shape: tuple[int, int]
    strides: tuple[int, int]
    panel: int
    padded: tuple[int, int]  # rows, cols after padding to whole tiles
    half: str = ""  # "bf16" / "f16": a 16-bit weight kept 16-bit (only few-row dots read it), else f32 panels
    vnni: int = 0  # 4 / 8: int4 / int8 codes laid out for integer dot products (llmc_qdot_vnni)

    @property
    def panel_stride(self) -> int:
        return self.padded[0] * self.panel


@dataclass
class TileValue:
    kind: str
    rows: int
    cols: int
    ld: int = 0
    slot: int | None = None
    rotate: int = 1
    alias: SSAValue | None = None  # written in place over this value's storage
    zero_acc: bool = False  # a zero tile only ever used as a dot accumulator
    copy_init: bool = False  # an iter_arg whose init must be copied, not aliased
    panel: int = 0  # column panel width of the descriptor; 0 = row-major
    rhs: bool = False  # read as a dot's B operand (its columns must be padded to whole panels)
    transposed: bool = False  # a B operand kept as rows of K (bt[n][k]) for the dot-product form
    wide: bool = False  # int64 elements (two float slots each)
    half: str = ""  # a view of 16-bit weight panels ("bf16" / "f16"): the descriptor's p points at bits
    bits: bool = False  # a bf16 lhs of k-pair products kept as its bits (rows padded to PAIR_ROWS, zeros)

    @property
    def slot_floats(self) -> int:
        if self.bits:
            return round_up(self.rows, PAIR_ROWS) * self.ld // 2
        return (self.cols if self.transposed else self.rows) * self.ld * (2 if self.wide else 1)



@dataclass
class KernelPlan:
    lanes: int
    values: dict[SSAValue, TileValue] = field(default_factory=dict)
    packs: dict[int, PackSpec] = field(default_factory=dict)
    scratch_floats: int = 0
    # reductions computed in the loop nest that materialises their input (one pass, not two)
    fused_reductions: dict[Operation, list[tile.ReduceOp]] = field(default_factory=dict)
    # a dot with int8 activations that rounds its lhs into a scratch copy first
    rounded: dict[Operation, TileValue] = field(default_factory=dict)
    # loads that are views of an lhs packed once per launch (shared_lhs.py), and the shared floats that takes
    shared_lhs: dict[Operation, SharedLhs] = field(default_factory=dict)
    shared_floats: int = 0

    @property
    def nr(self) -> int:
        return 2 * self.lanes

    def share_lhs(self, load: tile.LoadOp, spec: SharedLhs) -> None:
        """`load` reads the launch-wide packing `spec`; loads of the same rows and tile share one."""
        for known in self.shared_lhs.values():
            if replace(known, offset=0) == spec:
                self.shared_lhs[load] = known
                return
        self.shared_lhs[load] = replace(spec, offset=self.shared_floats)
        self.shared_floats += -(-spec.floats // SLOT_ALIGN) * SLOT_ALIGN

    def allocate(self, info: TileValue) -> None:
        info.slot = self.scratch_floats
        size = info.slot_floats * info.rotate
        self.scratch_floats += -(-size // SLOT_ALIGN) * SLOT_ALIGN


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def ancestor_in(op: Operation, block: Block) -> Operation | None:
    while op is not None and op.parent_block() is not block:
        op = op.parent_op()
    return op


class Planner:
    def __init__(self, kernel: tile.KernelOp, lanes: int, packed_args: dict[int, PackSpec], int8_tiles: bool = False):
        self.kernel = kernel
        self.int8_tiles = int8_tiles
        self.plan = KernelPlan(lanes, packs=packed_args)
        self.positions: dict[Block, dict[Operation, int]] = {}

    def run(self) -> KernelPlan:
        self.plan_block(self.kernel.body.block)
        self.allocate_slots()
        self.fuse_reductions()
        return self.plan

    def fuse_reductions(self) -> None:
        """Reductions right after a materialised tile that read only it, inline ops and older values."""
        for op in self.kernel.body.walk():
            info = self.plan.values.get(op.results[0]) if isinstance(op, POINTWISE) and op.results else None
            if info is None or info.kind != BUFFER or info.cols == 1:
                continue
            fused, follower = [], op.next_op
            while follower is not None:
                result = follower.results[0] if follower.results else None
                if isinstance(follower, tile.ReduceOp) and self.reads_before(follower.operand, op, fused):
                    fused.append(follower)
                elif result is None or self.plan.values.get(result) is None or self.plan.values[result].kind != INLINE:
                    break
                follower = follower.next_op
            if fused:
                self.plan.fused_reductions[op] = fused

    def reads_before(self, value: SSAValue, producer: Operation, fused: list) -> bool:
        """Whether computing `value` inline only needs `producer`'s result and values ready before it."""
        info = self.plan.values.get(value)
        owner = value.owner if isinstance(value.owner, Operation) else None
        if value is producer.results[0]:
            return True
        if info is None or info.kind != INLINE:
            if owner is None or owner in fused:
                return owner is None
            return owner.parent_block() is not producer.parent_block() or self.pos(owner.parent_block())[owner] < self.pos(owner.parent_block())[producer]
        if isinstance(owner, tile.LoadOp):
            return True
        return all(self.reads_before(v, producer, fused) for v in owner.operands if hasattr(v.type, "get_shape"))

    def allocate_slots(self) -> None:
        """Give every value that owns storage a slot, rotated if its storage is carried around a loop."""
        sharers: dict[SSAValue, list[SSAValue]] = {}
        for value in self.plan.values:
            root = value
            while self.plan.values[root].alias is not None:
                root = self.plan.values[root].alias
            sharers.setdefault(root, []).append(value)
        done: set[int] = set()
        for value, info in self.plan.values.items():
            owns = info.kind == OPERAND or (info.kind == BUFFER and info.alias is None)
            if not owns or id(info) in done or (isinstance(value, BlockArgument) and not info.copy_init):
                continue
            done.add(id(info))
            if not isinstance(value, BlockArgument):
                info.rotate = self.rotation(value.owner, sharers.get(value, [value]))
            self.plan.allocate(info)

    def pos(self, block: Block) -> dict[Operation, int]:
        if block not in self.positions:
            self.positions[block] = {op: i for i, op in enumerate(block.ops)}
        return self.positions[block]

    def dead_after(self, value: SSAValue, op: Operation) -> bool:
        block = op.parent_block()
        defined_here = value.block is block if isinstance(value, BlockArgument) else value.owner.parent_block() is block
        if not defined_here or self.info(value).kind != BUFFER or self.info(value).zero_acc:
            return False
        return self.last_read(value, block) <= self.pos(block)[op] and not self.yielded(value, block)

    def last_read(self, value: SSAValue, block: Block) -> int:
        """Position in `block` of the last read of `value`: uses in nested regions count at their parent
        op, and a use by an inline op happens where that op's own consumers compute it."""
        positions, last = self.pos(block), -1
        for use in value.uses:
            owner = ancestor_in(use.operation, block)
            if owner is None:
                return len(positions)
            last = max(last, positions[owner])
            info = self.plan.values.get(owner.results[0]) if owner is use.operation and owner.results else None
            if info is not None and info.kind == INLINE:
                last = max(last, self.last_read(owner.results[0], block))
        return last

    @staticmethod
    def yielded(value: SSAValue, block: Block) -> bool:
        last = block.last_op
        return isinstance(last, scf.YieldOp) and value in last.operands

    def info(self, value: SSAValue) -> TileValue:
        return self.plan.values[value]

    def plan_block(self, block: Block) -> None:
        for op in block.ops:
            if isinstance(op, scf.ForOp):
                self.plan_loop(op)
            elif isinstance(op, tile.LoadOp):
                self.plan_load(op)
            elif isinstance(op, tile.DequantOp):
                self.plan_dequant(op)
            elif isinstance(op, tile.DotOp):
                self.plan_dot(op)
            elif isinstance(op, tile.ReduceOp | tile.ScanOp):
                self.new_buffer(op.result, op)
            elif isinstance(op, tile.GatherOp):
                self.plan_gather(op)
            elif isinstance(op, tile.FullOp):
                self.plan_full(op)
            elif isinstance(op, POINTWISE):
                self.plan_pointwise(op)

    def new_buffer(self, value: SSAValue, op: Operation, alias: SSAValue | None = None) -> TileValue:
        rows, cols = shape2(value)
        info = TileValue(BUFFER, rows, cols, ld=1 if cols == 1 else round_up(cols, self.plan.nr), alias=alias,
                         wide=value.type.element_type in (i64, i32))
        self.plan.values[value] = info
        return info

    def rotation(self, op: Operation, sharers: list[SSAValue]) -> int:
        """Copies a slot written by `op` needs: one, plus one per loop-carried value holding it
        that is still alive when `op` rewrites it."""
        block, alive = op.parent_block(), set()
        for value in sharers:
            seen = set()
            while self.yielded(value, block) and value not in seen:
                seen.add(value)
                carried = block.args[1 + list(block.last_op.operands).index(value)]
                if self.last_read(carried, block) > self.pos(block)[op]:
                    alive.add(carried)
                value = carried
        return 1 + len(alive)

    def plan_dequant(self, op: tile.DequantOp) -> None:
        rows, cols = shape2(op.result)
        packed = [bool(self.info(v).panel) for v in op.operands]
        if any(packed) and not all(packed):
            raise UnsupportedOpError(f"tile.dequant in @{self.kernel.sym_name.data}: codes and scales packed differently")
        users = [u.operation for u in op.result.uses]
        small = all(isinstance(u, tile.DotOp) and u.rhs is op.result and shape2(u.lhs)[0] <= MAX_FUSED_ROWS for u in users)
        if all(packed) and (small or self.integer_codes(op)):
            self.plan.values[op.result] = TileValue(QUANT, rows, cols, panel=self.plan.nr, rhs=True)
        else:
            self.plan.values[op.result] = TileValue(OPERAND, rows, cols, ld=round_up(cols, self.plan.nr), rhs=True)

    def integer_codes(self, op: tile.DequantOp) -> bool:
        """Whether the codes were packed for integer dot products: every product reads them in place."""
        load = op.codes.owner
        pack = self.plan.packs.get(load.buffer.index) if isinstance(load.buffer, BlockArgument) else None
        return pack is not None and bool(pack.vnni)

    def plan_load(self, op: tile.LoadOp) -> None:
        rows, cols = shape2(op.result)
        if op.result.uses and all(isinstance(u.operation, tile.DequantOp) for u in op.result.uses):
            info = TileValue(QSOURCE, rows, cols)
            if op.pack is not None and isinstance(op.buffer, BlockArgument) and op.buffer.index in self.plan.packs:
                info.panel = self.plan.packs[op.buffer.index].panel
            self.plan.values[op.result] = info
            return
        simple = all(isinstance(u.operation, (*POINTWISE, tile.ReduceOp, tile.ScanOp, tile.StoreOp, tile.GatherOp, tile.ScatterOp))
                     for u in op.result.uses)
        if simple:
            self.plan.values[op.result] = TileValue(INLINE, rows, cols)
            return
        info = TileValue(OPERAND, rows, cols, ld=round_up(cols, self.plan.nr))
        if op.pack is not None and isinstance(op.buffer, BlockArgument) and op.buffer.index in self.plan.packs:
            info.panel = self.plan.packs[op.buffer.index].panel
            info.half = self.plan.packs[op.buffer.index].half
        roles = dot_roles(op.result)
        info.rhs = any(index == 1 for _, index in roles)
        if self.pair_lhs(op, roles):  # the matrix unit reads the bits: no widening copy, no rounding back
            info.bits, info.ld = True, round_up(cols, PAIR_ROWS)
        s0, s1 = op.strides.get_values()
        small = all(shape2(dot.lhs)[0] <= NT_MAX_ROWS for dot, index in roles if index == 1)
        if not info.panel and info.rhs and roles and all(index == 1 for _, index in roles) and s0 == 1 and s1 != 1 and small:
            info.transposed, info.ld = True, round_up(rows, self.plan.lanes)
        self.plan.values[op.result] = info
        if not (info.panel or info.rhs or info.transposed or info.bits or info.half):
            spec = shared_lhs(self.kernel, op, self.plan.packs, self.plan.lanes, self.int8_tiles)
            if spec is not None:
                self.plan.share_lhs(op, spec)

    def pair_lhs(self, op: tile.LoadOp, roles: list) -> bool:
        """A bf16 load read only as the lhs of products whose weight is packed in k pairs."""
        if op.buffer.type.element_type != bf16 or not roles:
            return False
        if not all(isinstance(u.operation, (tile.DotOp, scf.ForOp, scf.YieldOp)) for u in op.result.uses):
            return False
        for dot, index in roles:
            load = defining_load(dot.rhs)
            pack = None if load is None or not isinstance(load.buffer, BlockArgument) else self.plan.packs.get(load.buffer.index)
            if index != 0 or pack is None or pack.half != PAIRS:
                return False
        return True

    def plan_gather(self, op: tile.GatherOp) -> None:
        if not all(isinstance(u.operation, (*POINTWISE, tile.ReduceOp, tile.StoreOp)) for u in op.result.uses):
            raise UnsupportedOpError(f"tile.gather in @{self.kernel.sym_name.data} feeds a dot; gathers are read inline")
        self.plan.values[op.result] = TileValue(INLINE, *shape2(op.result))

    def plan_full(self, op: tile.FullOp) -> None:
        uses = list(op.result.uses)
        info = self.new_buffer(op.result, op)
        only_acc = len(uses) == 1 and isinstance(uses[0].operation, tile.DotOp) and uses[0].index == 2
        info.zero_acc = only_acc and op.value.value.data == 0.0 and uses[0].operation.parent_block() is op.parent_block()

    def plan_dot(self, op: tile.DotOp) -> None:
        for operand in (op.lhs, op.rhs):
            if self.info(operand).kind == INLINE:
                raise UnsupportedOpError(f"tile.dot in @{self.kernel.sym_name.data} reads an unmaterialised operand")
        acc = op.acc
        in_place = self.dead_after(acc, op) or self.info(acc).zero_acc
        self.new_buffer(op.result, op, alias=acc if in_place else None)
        if op.activations is not None and not (isinstance(op.rhs.owner, tile.DequantOp) and self.integer_codes(op.rhs.owner)):
            rows, cols = shape2(op.lhs)
            self.plan.rounded[op] = TileValue(BUFFER, rows, cols, ld=round_up(cols, self.plan.nr))
            self.plan.allocate(self.plan.rounded[op])

    def plan_pointwise(self, op: Operation) -> None:
        value = op.results[0]
        rows, cols = shape2(value)
        users = {u.operation for u in value.uses}
        # masks and integers are cheap to recompute and never live in (float) scratch
        keep_inline = isinstance(op, (graph.ConstantOp, tile.IotaOp)) or value.type.element_type in (i1, i64, i32) or (
            len(users) <= 1
            and (cols > 1 or rows == 1)
            and all(isinstance(u, (*POINTWISE, tile.ReduceOp, tile.ScanOp, tile.StoreOp, tile.GatherOp, tile.ScatterOp)) for u in users)
            and all(u.parent_block() is op.parent_block() for u in users)
        )
        if keep_inline:
            self.plan.values[value] = TileValue(INLINE, rows, cols)
            return
        donor = next(
            (v for v in op.operands if v in self.plan.values and shape2(v) == (rows, cols) and self.dead_after(v, op)),
            None,
        )
        self.new_buffer(value, op, alias=donor)

    def plan_loop(self, op: scf.ForOp) -> None:
        body = op.body.block
        for init, arg in zip(op.iter_args, body.args[1:]):
            if not hasattr(arg.type, "get_shape"):
                continue
            source = self.info(init)
            rows, cols = shape2(arg)
            ld = source.ld or round_up(cols, self.plan.nr)
            info = TileValue(source.kind if source.kind != INLINE else BUFFER, rows, cols, ld=ld, panel=source.panel,
                             rhs=source.rhs, transposed=source.transposed, half=source.half, bits=source.bits)
            shared = sum(1 for v in op.iter_args if v is init) > 1
            info.copy_init = source.kind == INLINE or (
                source.kind == BUFFER and (shared or self.last_read(init, op.parent_block()) > self.pos(op.parent_block())[op])
            )
            if info.copy_init:
                info.kind = BUFFER
            self.plan.values[arg] = info
        self.plan_block(body)
        for arg, result in zip(body.args[1:], op.results):
            if arg in self.plan.values:
                self.plan.values[result] = self.plan.values[arg]


def defining_load(value: SSAValue) -> tile.LoadOp | None:
    """The load that produces `value`, followed back through loop iter_args (a pipelined prologue's load) and
    loop results (what the body yields: the tiles a pipeline's epilogue reads)."""
    seen = set()
    while value not in seen:
        seen.add(value)
        if isinstance(value, BlockArgument):
            loop = value.block.parent_op()
            if not isinstance(loop, scf.ForOp) or value.index == 0:
                return None
            value = loop.iter_args[value.index - 1]
        elif isinstance(value.owner, scf.ForOp):
            value = value.owner.body.block.last_op.operands[value.index]
        else:
            break
    return value.owner if isinstance(value.owner, tile.LoadOp) else None


def dot_roles(value: SSAValue, seen: set | None = None) -> list[tuple[tile.DotOp, int]]:
    """(dot, operand index) for every dot reading `value`, following it around loop iter_args."""
    seen = seen if seen is not None else set()
    if value in seen:
        return []
    seen.add(value)
    roles = []
    for use in value.uses:
        user = use.operation
        if isinstance(user, tile.DotOp):
            roles.append((user, use.index))
        elif isinstance(user, scf.ForOp) and use.index >= 3:
            roles += dot_roles(user.body.block.args[use.index - 2], seen)
        elif isinstance(user, scf.YieldOp):
            roles += dot_roles(user.parent_block().args[1 + use.index], seen)
    return roles


def plan_kernel(kernel: tile.KernelOp, lanes: int, packed_args: dict[int, PackSpec], int8_tiles: bool = False) -> KernelPlan:
    return Planner(kernel, lanes, packed_args, int8_tiles).run()

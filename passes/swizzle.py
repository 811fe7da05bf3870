"""`swizzle`: layout choices that change no value, only where data sits and in what order.

- Grouped program order for matmul grids (`tile.tile_coords` `group`): GROUP
  row tiles sweep each column block before moving on, so the B panels they
  share stay in L2 (Triton's "L2 cache optimisation").
- XOR-swizzled scratch tiles for dot operands (`swizzle = [vec, per_phase,
  max_phase]`, Triton's shared-memory swizzle): consecutive rows of a staged
  tile start in different banks.
- Panel-packed weights for the SIMD backend (`pack = NR` on a weight's dot
  operand load, and on the codes, scales and zero points a `tile.dequant`
  reads): the weight is repacked at compile time into K-major panels of NR
  columns, so the micro-kernel streams it with unit stride.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import IntegerAttr
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass

from llmc.dialects import graph, tile
from llmc.target import Target, get_target

BANK_ROW_BYTES = 128


def group_rows(row_tiles: int, col_tiles: int, target: Target) -> int:
    if row_tiles < 2 or col_tiles < 2:
        return 1
    return min(row_tiles, 8 if target.kind == "gpu" else 4)


def xor_swizzle(block: tuple[int, int], vec: int) -> tuple[int, int, int]:
    """(vec, per_phase, max_phase) for a scratch tile of fp32 rows of block[1] elements."""
    row_bytes = block[1] * 4
    vec = max(1, vec)
    per_phase = max(1, BANK_ROW_BYTES // row_bytes)
    max_phase = max(1, min(8, row_bytes // (vec * 4)))
    return vec, per_phase, max_phase


def panel_width(target: Target) -> int:
    return 2 * target.vector_bytes // 4


def weight_arguments(module: builtin.ModuleOp) -> set[SSAValue]:
    """Kernel block arguments that every launch binds to a tile.weight."""
    kernels = {k.sym_name.data: k for k in module.walk() if isinstance(k, tile.KernelOp)}
    bound: dict[SSAValue, bool] = {}
    for launch in (o for o in module.walk() if isinstance(o, tile.LaunchOp)):
        kernel = kernels.get(launch.callee.root_reference.data)
        if kernel is None:
            continue
        for arg, buffer in zip(kernel.body.block.args, launch.buffers):
            bound[arg] = bound.get(arg, True) and isinstance(buffer.owner, tile.WeightOp)
    return {arg for arg, is_weight in bound.items() if is_weight}


@dataclass(frozen=True)
class SwizzlePass(ModulePass):
    name = "swizzle"

    target: str = "cpu"
    group: int | None = None

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = get_target(self.target)
        self_weights = weight_arguments(op)
        for o in op.walk():
            if isinstance(o, tile.TileCoordsOp):
                group = self.group or group_rows(o.rows.value.data, o.cols.value.data, target)
                o.attributes["group"] = IntegerAttr(group, 64)
            elif isinstance(o, tile.DotOp):
                self.swizzle_operands(o, target, self_weights)

    def swizzle_operands(self, dot: tile.DotOp, target: Target, weights: set) -> None:
        dequant = dot.rhs.owner
        if isinstance(dequant, tile.DequantOp):  # a quantized weight: its codes, scales (and zeros) as panels
            loads = [v.owner for v in dequant.operands]
            if target.kind == "cpu" and all(isinstance(o, tile.LoadOp) and o.buffer in weights for o in loads):
                for load in loads:
                    load.attributes["pack"] = IntegerAttr(panel_width(target), 64)
        for index, operand in enumerate((dot.lhs, dot.rhs)):
            load = operand.owner
            if not isinstance(load, tile.LoadOp):
                continue
            vec = load.vec.value.data if load.vec is not None else 1
            load.attributes["swizzle"] = graph.dense(xor_swizzle(tuple(load.result.type.get_shape()), vec))
            is_weight = load.buffer in weights
            if index == 1 and is_weight and target.kind == "cpu":
                load.attributes["pack"] = IntegerAttr(panel_width(target), 64)

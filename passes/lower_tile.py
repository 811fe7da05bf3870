"""`lower-tile`: kernel dialect → tile dialect.

Each kernel.kernel becomes a tile.kernel symbol (built by the template for its
kind, with the tile sizes the `tile` pass recorded, or the default decision
for the cpu target) and a tile.launch on buffers; tensors of the function
become memrefs, graph.weight becomes tile.weight, intermediates tile.alloc. A scatter kernel has no output buffer: it writes
its rows into its dest operand's buffer, which then stands for its result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import MemRefType, StringAttr, SymbolRefAttr
from xdsl.ir import Block, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from llmc.cost_model import decide_tiles
from llmc.dialects import graph, kernel, tile
from llmc.passes.lowering.templates import KernelLowering, lower_attention, lower_elementwise, lower_matmul, lower_scatter
from llmc.target import get_target


def memref_of(typ) -> MemRefType:
    return MemRefType(typ.element_type, typ.get_shape())


def build_tile_kernel(kop: kernel.KernelOp) -> tile.KernelOp:
    tiles = tuple(kop.tiles.get_values()) if kop.tiles is not None else None
    stages = kop.stages.value.data if kop.stages is not None else None
    if tiles is None or stages is None:
        decision = decide_tiles(kop, get_target("cpu"))
        tiles, stages = tiles or decision.tiles, stages or decision.stages
    written = [] if kop.kind.data == "scatter" else kop.outputs  # a scatter writes its dest operand's buffer
    arg_types = [memref_of(v.type) for v in kop.inputs] + [memref_of(v.type) for v in written]
    entry = Block(arg_types=arg_types)
    for new, old in zip(entry.args, kop.body.block.args):
        new.name_hint = old.name_hint
    low = KernelLowering(kop, entry)
    kind = kop.kind.data
    if kind == "matmul":
        grid = lower_matmul(low, tiles, stages)
    elif kind == "attention":
        grid = lower_attention(low, tiles, stages)
    elif kind == "scatter":
        grid = lower_scatter(low, tiles)
    else:
        grid = lower_elementwise(low, tiles)
    entry.add_op(tile.ReturnOp())
    attrs = {"sym_name": StringAttr(kop.kernel_name.data), "grid": graph.dense(grid), "kind": kop.kind}
    return tile.KernelOp(regions=[Region(entry)], attributes=attrs)


def lower_function(module: builtin.ModuleOp, func_op: func.FuncOp) -> None:
    block = func_op.body.block
    for arg in list(block.args):
        Rewriter.replace_value_with_new_type(arg, memref_of(arg.type))
    for op in list(block.ops):
        if isinstance(op, graph.WeightOp):
            new = tile.WeightOp(result_types=[memref_of(op.result.type)], attributes={"name": op.weight_name})
            new.result.name_hint = op.result.name_hint
            block.insert_op_before(new, op)
            op.result.replace_all_uses_with(new.result)
            block.erase_op(op)
        elif isinstance(op, kernel.KernelOp):
            _lower_kernel(module, block, op)
    ret = block.last_op
    func_op.function_type = builtin.FunctionType.from_lists(
        [a.type for a in block.args], [v.type for v in ret.operands]
    )


def _lower_kernel(module: builtin.ModuleOp, block: Block, op: kernel.KernelOp) -> None:
    empty = all(math.prod(graph.shape_of(r)) == 0 for r in op.outputs)  # nothing to write: no kernel, no launch
    if not empty:
        module.body.block.insert_op_before(build_tile_kernel(op), block.parent_op())
    outputs: list[SSAValue] = []
    for result in [] if op.kind.data == "scatter" else op.outputs:
        alloc = tile.AllocOp(result_types=[memref_of(result.type)])
        block.insert_op_before(alloc, op)
        outputs.append(alloc.result)
    if not empty:
        launch = tile.LaunchOp(
            operands=[[*op.inputs, *outputs]], attributes={"callee": SymbolRefAttr(op.kernel_name.data)}
        )
        block.insert_op_before(launch, op)
    if op.kind.data == "scatter":  # the rows were written into the dest operand's buffer: it is the result
        scatter = next(o for o in op.body.block.ops if isinstance(o, graph.ScatterOp))
        outputs = [op.inputs[scatter.dest.index]]
    for result, buffer in zip(op.outputs, outputs):
        result.replace_all_uses_with(buffer)
    block.erase_op(op)


@dataclass(frozen=True)
class LowerTilePass(ModulePass):
    name = "lower-tile"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for func_op in [f for f in op.body.block.ops if isinstance(f, func.FuncOp)]:
            lower_function(op, func_op)

"""`coalesce`: give every tile load and store a unit-stride fastest dim and a vector width.

Heuristic (Triton's Coalesce.cpp in a few lines): the fastest-moving index of
a tile access is the dim whose stride is 1 (`order`, fastest first); the
vector width is the largest power of two, up to the target's SIMD/transaction
width, dividing the tile's extent along it, the view's extent and the pitch of
the other dim, so every vector starts aligned. An access with no unit-stride
dim (a transposed or strided read) gets `vec = 1`: it is scalar, and the
report shows it.

A vector must also start aligned: the width is capped by what provably
divides the access's base offset and its start along the fast dim (a small
divisibility analysis of the index arithmetic; a concat's shifted load start
counts), since the Triton backend turns `vec` into `tl.multiple_of` hints.

On CPUs, a vectorised store into a buffer larger than the last-level cache is
marked `llmc.stream`: written with non-temporal stores, it skips the
read-for-ownership and does not flush what the next kernel reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, builtin, scf
from xdsl.dialects.builtin import IntegerAttr
from xdsl.ir import BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from llmc.dialects import graph, tile
from llmc.dtypes import element_bytes
from llmc.target import Target, get_target

STREAM_ATTR = "llmc.stream"
ANY = 1 << 20  # divisibility of 0: divisible by every width we use


def divisibility(value: SSAValue, depth: int = 0) -> int:
    """The largest power of two (up to ANY) known to divide an index value."""
    owner = value.owner
    if isinstance(value, BlockArgument) and value.index == 0 and isinstance(value.block.parent_op(), scf.ForOp):
        loop = value.block.parent_op()  # an induction variable: lb + i * step
        return min(divisibility(loop.lb, depth + 1), divisibility(loop.step, depth + 1))
    if depth > 32 or not isinstance(owner, Operation):
        return 1
    if isinstance(owner, arith.ConstantOp):
        constant = abs(owner.value.value.data)
        return ANY if constant == 0 else min(ANY, constant & -constant)
    if isinstance(owner, arith.MuliOp):
        return min(ANY, divisibility(owner.lhs, depth + 1) * divisibility(owner.rhs, depth + 1))
    if isinstance(owner, arith.AddiOp | arith.SubiOp):
        return min(divisibility(owner.lhs, depth + 1), divisibility(owner.rhs, depth + 1))
    return 1


def streams(access: tile.StoreOp, vec: int, target: Target) -> bool:
    """Whether a store should bypass the caches: its whole buffer would not fit in them anyway."""
    count = 1
    for extent in access.buffer.type.get_shape():
        count *= extent
    size = count * element_bytes(access.buffer.type.element_type)
    return target.kind == "cpu" and vec > 1 and size > target.llc_bytes


def access_layout(shape: tuple[int, int], strides: tuple[int, int], block: tuple[int, int], target: Target,
                  item_bytes: int = 4) -> tuple[tuple[int, int], int]:
    """(order, vector width in elements of `item_bytes`) for a block access of a 2-D strided view."""
    if strides[1] == 1 and block[1] > 1:
        fast = 1
    elif strides[0] == 1 and block[0] > 1:
        fast = 0
    else:
        fast = 1 if abs(strides[1]) <= abs(strides[0]) else 0
    order = (fast, 1 - fast)
    if strides[fast] != 1:
        return order, 1
    pitch = strides[1 - fast] if shape[1 - fast] > 1 and block[1 - fast] > 1 else 0
    vec = max(1, target.vector_bytes // item_bytes)
    while vec > 1 and (block[fast] % vec or shape[fast] % vec or pitch % vec):
        vec //= 2
    return order, vec


@dataclass(frozen=True)
class CoalescePass(ModulePass):
    name = "coalesce"

    target: str = "cpu"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = get_target(self.target)
        for access in op.walk():
            if not isinstance(access, tile.LoadOp | tile.StoreOp):
                continue
            typ = access.result.type if isinstance(access, tile.LoadOp) else access.value.type
            order, vec = access_layout(
                tuple(access.shape.get_values()), tuple(access.strides.get_values()), tuple(typ.get_shape()), target,
                element_bytes(access.buffer.type.element_type),
            )
            start = access.col if order[0] == 1 else access.row
            vec = max(1, min(vec, divisibility(access.base), divisibility(start)))
            access.attributes["order"] = graph.dense(order)
            access.attributes["vec"] = IntegerAttr(vec, 64)
            if isinstance(access, tile.StoreOp) and streams(access, vec, target):
                access.attributes[STREAM_ATTR] = builtin.UnitAttr()

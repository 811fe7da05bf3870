"""`tile`: choose tile sizes and pipeline depth per kernel, recorded on kernel.kernel.

The decision is `cost_model.decide_tiles` (roofline / cache-fit heuristics for
the target), unless `autotune` already measured one on this host (then it is
kept); options override both per kernel kind, for debugging and tuning:
`tile{target=cpu matmul=32,64,16 stages=3}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import IntegerAttr
from xdsl.passes import ModulePass

from llmc.cost_model import decide_tiles
from llmc.dialects import graph, kernel
from llmc.errors import PassOptionError
from llmc.passes.lowering.emit import pow2_at_least
from llmc.target import Target, get_target

TUNED_ATTR = "llmc.autotune"  # set by the autotune pass beside the tiles and stages it measured best
TILE_RANK = {"matmul": 3, "attention": 2, "row": 2, "pointwise": 2, "gather": 2, "scatter": 2}


@dataclass(frozen=True)
class TilePass(ModulePass):
    name = "tile"

    target: str = "cpu"
    matmul: tuple[int, ...] | None = None
    attention: tuple[int, ...] | None = None
    row: tuple[int, ...] | None = None
    pointwise: tuple[int, ...] | None = None
    gather: tuple[int, ...] | None = None
    scatter: tuple[int, ...] | None = None
    stages: int | None = None

    def override(self, kind: str, target: Target) -> tuple[int, ...] | None:
        tiles = getattr(self, kind)
        if tiles is None:
            return None
        # Triton's block shapes are powers of two. The C micro-kernel takes a matmul's rows in whole blocks
        # of its height, 6 where the host has 16 vector registers: such a row tile may be a multiple of it.
        rows = target.micro_rows if kind == "matmul" and target.kind == "cpu" else None

        def allowed(index: int, size: int) -> bool:
            return size >= 1 and (pow2_at_least(size) == size or (index == 0 and rows is not None and size % rows == 0))

        if len(tiles) != TILE_RANK[kind] or not all(allowed(i, t) for i, t in enumerate(tiles)):
            rows_too = f" (the first may be a multiple of {rows} instead)" if rows is not None else ""
            raise PassOptionError(f"tile: '{kind}' takes {TILE_RANK[kind]} powers of two{rows_too}, got {list(tiles)}")
        return tuple(tiles)

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = get_target(self.target)
        if self.stages is not None and self.stages < 1:
            raise PassOptionError("tile: stages must be at least 1")
        for kind in TILE_RANK:
            self.override(kind, target)
        for kop in op.walk():
            if not isinstance(kop, kernel.KernelOp):
                continue
            kind = kop.kind.data
            override = self.override(kind, target)
            if override is None and self.stages is None and TUNED_ATTR in kop.attributes:
                continue  # measured on this host by `autotune`: a dump replays that decision
            decision = decide_tiles(kop, target)
            if override and kind == "row" and override[1] < decision.tiles[1]:
                # a row kernel (softmax, norms) keeps its whole row in one tile: a narrower one would need a
                # split reduction, which lower-tile does not emit
                raise PassOptionError(f"tile: row tiles span the whole row; this model's row kernels need "
                                      f"{decision.tiles[1]} columns, got row={','.join(map(str, override))}")
            # the decision's depth was clamped to its own trip count; `pipeline` clamps an override's
            default_stages = target.default_stages if override and kind in ("matmul", "attention") else decision.stages
            kop.attributes["tiles"] = graph.dense(override or decision.tiles)
            kop.attributes["stages"] = IntegerAttr(self.stages or default_stages, 64)

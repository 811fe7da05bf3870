"""The pass registry: every llmc pass by the name it is invoked with."""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import arith, builtin, func, scf
from xdsl.passes import ModulePass, PassPipeline
from xdsl.utils.arg_spec import ArgSpecParseError

from llmc.errors import PassOptionError
from llmc.target import get_target


def available_passes() -> dict[str, type[ModulePass]]:
    from llmc.passes.autotune import AutotunePass
    from llmc.passes.coalesce import CoalescePass
    from llmc.passes.fuse import FusePass
    from llmc.passes.lower_tile import LowerTilePass
    from llmc.passes.matmul_precision import MatmulPrecisionPass
    from llmc.passes.pipeline import PipelinePass
    from llmc.passes.plan_memory import PlanMemoryPass
    from llmc.passes.quantize import QuantizePass
    from llmc.passes.swizzle import SwizzlePass
    from llmc.passes.tile import TilePass

    passes = (QuantizePass, MatmulPrecisionPass, FusePass, AutotunePass, TilePass, LowerTilePass, PipelinePass, CoalescePass, SwizzlePass, PlanMemoryPass)
    return {p.name: p for p in passes}


def default_pipeline(target: str = "cpu", autotune: float | None = None, cache: str | None = None) -> str:
    """The full pipeline; `autotune` (a time budget in seconds) measures tile decisions on this host
    (CPU targets only: the tuner runs what it builds), caching them under `cache`."""
    # GPUs hand the stage count to Triton's pipeliner (asynchronous copies into shared memory); CPUs expand
    kind = get_target(target).kind
    mode = "delegate" if kind == "gpu" else "expand"
    where = f' cache="{cache}"' if cache else ""
    tune = (f"autotune{{target={target} budget={round(autotune)}{where}}},"
            if autotune is not None and kind == "cpu" else "")
    return (f"fuse,{tune}tile{{target={target}}},lower-tile,coalesce{{target={target}}},swizzle{{target={target}}},"
            f"pipeline{{mode={mode}}},plan-memory")


def parse_passes(spec: str) -> list[ModulePass]:
    """Passes from xDSL pipeline syntax, e.g. 'fuse,tile{matmul=32,32,16},pipeline{stages=3}'."""
    known = available_passes()
    try:
        pipeline = PassPipeline.parse_spec({k: (lambda v=v: v) for k, v in known.items()}, spec)
    except ArgSpecParseError as error:
        raise PassOptionError(f"bad pass pipeline '{spec}': {error}") from None
    except ValueError as error:
        raise PassOptionError(f"{error}; known passes: {', '.join(known)}") from None
    except Exception as error:  # xDSL reports a bad option through several exception types
        raise PassOptionError(f"bad pass option in '{spec}': {error}") from None
    return list(pipeline.passes)


def make_context() -> Context:
    from llmc.dialects.graph import Graph
    from llmc.dialects.kernel import Kernel
    from llmc.dialects.tile import Tile

    ctx = Context()
    for dialect in (builtin.Builtin, func.Func, arith.Arith, scf.Scf, Graph, Kernel, Tile):
        ctx.load_dialect(dialect)
    return ctx

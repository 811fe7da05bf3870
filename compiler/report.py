"""The per-kernel table `llmc compile` prints: cost, roofline bound and the decisions taken."""

from __future__ import annotations

from xdsl.dialects import scf
from xdsl.dialects.builtin import ModuleOp

import math

from llmc.backends.c.plan import MAX_FUSED_ROWS
from llmc.roofline import Ceilings, percent, product_precision, roofline
from llmc.dialects import graph, kernel, tile
from llmc.dtypes import element_bytes
from llmc.passes.lowering.templates import STAGES_ATTR
from llmc.passes.tile import TUNED_ATTR
from llmc.target import Target, host_has_integer_dot, host_has_vnni


def _layouts(kop: tile.KernelOp) -> str:
    vecs = sorted({op.vec.value.data for op in kop.walk() if isinstance(op, tile.LoadOp | tile.StoreOp) and op.vec})
    parts = [f"vec{'/'.join(map(str, vecs))}"] if vecs else []
    groups = [op.group.value.data for op in kop.walk() if isinstance(op, tile.TileCoordsOp)]
    if groups and groups[0] > 1:
        parts.append(f"group{groups[0]}")
    if any(isinstance(op, tile.LoadOp) and op.swizzle for op in kop.walk()):
        parts.append("xor-swz")
    packs = {op.pack.value.data for op in kop.walk() if isinstance(op, tile.LoadOp) and op.pack}
    if packs:
        parts.append(f"panel{max(packs)}")
    return " ".join(parts) or "-"


def _stages(kop: tile.KernelOp) -> str:
    loops = [op for op in kop.walk() if isinstance(op, scf.ForOp) and STAGES_ATTR in op.attributes]
    return ",".join(str(op.attributes[STAGES_ATTR].value.data) for op in loops) or "-"


def kernel_table(
    kernels: ModuleOp,
    tiled: ModuleOp | None,
    target: Target,
    measured: dict[str, float] | None = None,
    backend: str = "interpret",
    ceilings: Ceilings | None = None,
) -> str:
    """One row per kernel; `kernels` is the IR after `tile`, `tiled` the final tile IR (if lowered),
    `measured` microseconds per kernel from a native run, `ceilings` the host's measured roofline
    (the target's nominal figures without it)."""
    ceilings = ceilings or Ceilings.from_target(target)
    tile_kernels = {op.sym_name.data: op for op in tiled.walk() if isinstance(op, tile.KernelOp)} if tiled else {}
    header = (f"{'kernel':<28}{'kind':<10}{'MFLOP':>9}{'KB':>9}{'FLOP/B':>8}  {'bound':<8}{'pred us':>9}  "
              f"{'tiles':<12}{'stages':<7}{'layout':<24}{'measured':>11}{'% roof':>8}")
    rows = [header, "-" * len(header)]
    points = {k.name: k for k in roofline(kernels, ceilings, measured).kernels}
    for kop in (op for op in kernels.walk() if isinstance(op, kernel.KernelOp)):
        name = kop.kernel_name.data
        point = points[name]
        tiles = "x".join(map(str, kop.tiles.get_values())) if kop.tiles else "-"
        lowered = tile_kernels.get(name)
        stages = _stages(lowered) if lowered else "-"
        layout = _layouts(lowered) if lowered else "-"
        seen = f"{point.measured_us:.1f} us" if point.measured_us else "-" if backend != "interpret" else "(interp.)"
        ridge = ceilings.compute_gflops(product_precision(kop)) / ceilings.dram_gbs
        bound = "compute" if point.intensity >= ridge else "memory"
        rows.append(
            f"{name:<28}{kop.kind.data:<10}{point.flops / 1e6:>9.2f}{point.bytes / 1024:>9.1f}{point.intensity:>8.1f}  "
            f"{bound:<8}{point.predicted_us:>9.1f}  {tiles:<12}{stages:<7}{layout:<24}{seen:>11}"
            f"{percent(point.percent_of_roofline):>8}"
        )
    total = sum(p.predicted_us for p in points.values())
    summary = (f"{len(rows) - 2} kernels on {target.name} (ridge {ceilings.ridge:.1f} FLOP/B; ceilings: {ceilings.source}); "
               f"predicted total {total:.1f} us")
    if measured:
        total_measured = sum(p.measured_us or 0.0 for p in points.values())
        summary += f", measured total {total_measured:.1f} us ({percent(100 * total / total_measured)} of roofline)"
    rows.append(summary)
    for precision, unit in (("bf16", "GFLOP/s"), ("int8", "GOP/s")):
        name = ceilings.ceiling_name(precision)
        held = sorted(p.name for p in points.values() if p.ceiling == name != "FMA")
        if held:
            rows.append(f"{precision} products held to the {name} peak, {ceilings.compute_gflops(precision):.0f} {unit}: "
                        f"{', '.join(held)}")
    if measured:
        rows.append("% roof: the measured speed over the roofline's at the kernel's intensity (above 100%: its "
                    "data stayed in a cache)")
    rows += _autotune_rows(kernels)
    rows += _quantized_rows(kernels, backend, target)
    return "\n".join(rows)


def _autotune_rows(kernels: ModuleOp) -> list[str]:
    """Per kernel the autotuner measured: the configuration chosen, the model's, and the alternatives."""
    tuned = [(k.kernel_name.data, k.attributes[TUNED_ATTR].data) for k in kernels.walk()
             if isinstance(k, kernel.KernelOp) and TUNED_ATTR in k.attributes]
    if not tuned:
        return []
    return ["", "autotuned on this host (tiles/stages, median us; the chosen one first):"] + [
        f"  {name:<26}{summary}" for name, summary in tuned]


def _quantized_rows(kernels: ModuleOp, backend: str, target: Target) -> list[str]:
    """Per kernel with a quantized weight: its weight bytes before and after, and where it is dequantized."""
    rows = []
    integer_dot = target.kind == "cpu" and host_has_integer_dot(target.lanes)  # AMX int8 hosts have vpdpbusd too
    instruction = "vpdpbusd" if host_has_vnni(target.lanes) else "vpmaddubsw and vpmaddwd"
    for kop in (op for op in kernels.walk() if isinstance(op, kernel.KernelOp)):
        for dq in (op for op in kop.body.block.ops if isinstance(op, graph.DequantizeOp)):
            n, k = graph.shape_of(dq.result)
            after = sum(math.prod(graph.shape_of(v)) * element_bytes(v.type.element_type) for v in dq.operands)
            linear = next(u.operation for u in dq.result.uses)
            m = math.prod(graph.shape_of(linear.results[0])) // n
            if backend == "triton":
                how = "dequantized in registers before tl.dot"
            elif linear.activations is not None and integer_dot:  # the C backend packs the codes for them
                how = (f"not dequantized: its codes times the int8 activations in integer dot products ({instruction}, "
                       "several rows at a time; AMX int8 tiles for prefill where the CPU has them), as long as K "
                       "tiles hold whole blocks of 32")
            elif m <= MAX_FUSED_ROWS:
                how = f"dequantized in registers in the K loop ({m} rows <= {MAX_FUSED_ROWS}: each weight byte is read once)"
            else:
                how = (f"dequantized once per K x N tile into scratch ({m} rows > {MAX_FUSED_ROWS}: the float "
                       "micro-kernel reuses it)")
            rows.append(f"  {kop.kernel_name.data}: {dq.format.data} weight {n}x{k} (groups of {dq.group}): "
                        f"{n * k * 4 / 1024:.1f} KB as f32 -> {after / 1024:.1f} KB; {how}")
    return ["quantized weights:", *rows] if rows else []

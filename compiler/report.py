"""The per-kernel table `llmc compile` prints: cost, roofline bound and the decisions taken."""

from __future__ import annotations

from xdsl.dialects import scf
from xdsl.dialects.builtin import ModuleOp

import math

from llmc.backends.c.plan import MAX_FUSED_ROWS
from llmc.cost_model import kernel_cost
from llmc.dialects import graph, kernel, tile
from llmc.dtypes import element_bytes
from llmc.passes.lowering.templates import STAGES_ATTR
from llmc.target import Target


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
) -> str:
    """One row per kernel; `kernels` is the IR after `tile`, `tiled` the final tile IR (if lowered),
    `measured` microseconds per kernel from a native run."""
    tile_kernels = {op.sym_name.data: op for op in tiled.walk() if isinstance(op, tile.KernelOp)} if tiled else {}
    header = f"{'kernel':<28}{'kind':<10}{'MFLOP':>9}{'KB':>9}{'FLOP/B':>8}  {'bound':<8}{'pred us':>9}  {'tiles':<12}{'stages':<7}{'layout':<24}measured"
    rows = [header, "-" * len(header)]
    total, total_measured = 0.0, 0.0
    for kop in (op for op in kernels.walk() if isinstance(op, kernel.KernelOp)):
        cost = kernel_cost(kop)
        name = kop.kernel_name.data
        tiles = "x".join(map(str, kop.tiles.get_values())) if kop.tiles else "-"
        lowered = tile_kernels.get(name)
        stages = _stages(lowered) if lowered else "-"
        layout = _layouts(lowered) if lowered else "-"
        predicted = cost.predicted_us(target)
        total += predicted
        if measured and name in measured:
            total_measured += measured[name]
            seen = f"{measured[name]:.1f} us"
        else:
            seen = "-" if backend != "interpret" else "- (interpreted)"
        rows.append(
            f"{name:<28}{kop.kind.data:<10}{cost.flops / 1e6:>9.2f}{cost.bytes / 1024:>9.1f}{cost.intensity:>8.1f}  "
            f"{cost.bound(target):<8}{predicted:>9.1f}  {tiles:<12}{stages:<7}{layout:<24}{seen}"
        )
    summary = f"{len(rows) - 2} kernels on {target.name} (ridge {target.ridge:.1f} FLOP/B); predicted total {total:.1f} us"
    if measured:
        summary += f", measured total {total_measured:.1f} us"
    rows.append(summary)
    rows += _quantized_rows(kernels, backend)
    return "\n".join(rows)


def _quantized_rows(kernels: ModuleOp, backend: str) -> list[str]:
    """Per kernel with a quantized weight: its weight bytes before and after, and where it is dequantized."""
    rows = []
    for kop in (op for op in kernels.walk() if isinstance(op, kernel.KernelOp)):
        for dq in (op for op in kop.body.block.ops if isinstance(op, graph.DequantizeOp)):
            n, k = graph.shape_of(dq.result)
            after = sum(math.prod(graph.shape_of(v)) * element_bytes(v.type.element_type) for v in dq.operands)
            linear = next(u.operation for u in dq.result.uses)
            m = math.prod(graph.shape_of(linear.results[0])) // n
            if backend == "triton":
                where = "in registers before tl.dot"
            elif m <= MAX_FUSED_ROWS:
                where = f"in registers in the K loop ({m} rows <= {MAX_FUSED_ROWS}: each weight byte is read once)"
            else:
                where = f"once per K x N tile into scratch ({m} rows > {MAX_FUSED_ROWS}: the float micro-kernel reuses it)"
            rows.append(f"  {kop.kernel_name.data}: {dq.format.data} weight {n}x{k} (groups of {dq.group}): "
                        f"{n * k * 4 / 1024:.1f} KB as f32 -> {after / 1024:.1f} KB; dequantized {where}")
    return ["quantized weights:", *rows] if rows else []

"""The roofline of a compiled model on this host: data, a `roofline.svg`, and the report as JSON.

Ceilings are measured, not nominal: the FMA peak and the copy bandwidth of main memory, of the
last-level cache and of L2 come from the machine probe (llmc.backends.c.probe). Each kernel is a
point at its arithmetic intensity (FLOPs over the bytes it must move) and its measured GFLOP/s,
beside its predicted point (the roofline at that intensity: the model's prediction). "% of roofline"
is the measured GFLOP/s over the predicted: 100% means the kernel runs at the speed the slower of
its two ceilings allows; above 100% means its data stayed in a cache that is faster than memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xdsl.dialects.builtin import bf16

from llmc.cost_model import kernel_cost
from llmc.dialects import kernel


@dataclass(frozen=True)
class Ceilings:
    """What the host can do; `source` says whether it was measured (and when) or nominal."""

    gflops: float
    dram_gbs: float
    llc_gbs: float = 0.0
    l2_gbs: float = 0.0
    source: str = "nominal"
    bf16_gflops: float = 0.0  # bf16 products on the host's matrix unit (AMX, vdpbf16ps), where it has one
    bf16_unit: str = ""
    int8_gops: float = 0.0  # int8 products (AMX, vpdpbusd), where it has them; an operation counts as a FLOP
    int8_unit: str = ""

    @classmethod
    def from_probe(cls, peak) -> Ceilings:
        return cls(peak.gflops, peak.bandwidth_gbs, peak.llc_gbs, peak.l2_gbs, f"probe, measured {peak.measured_at}",
                   peak.bf16_gflops, peak.bf16_unit, peak.int8_gops, peak.int8_unit)

    @classmethod
    def from_target(cls, target) -> Ceilings:
        return cls(target.peak_gflops, target.bandwidth_gbs, source=f"nominal figures of {target.name}")

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        return self.gflops / self.dram_gbs

    def attainable_gflops(self, intensity: float) -> float:
        return min(self.gflops, intensity * self.dram_gbs)

    def compute_gflops(self, precision: str = "f32") -> float:
        """The compute ceiling of products in `precision` (f32, bf16, int8): the matrix unit's where the host has
        one for it, else the FMA peak."""
        unit = {"bf16": self.bf16_gflops, "int8": self.int8_gops}.get(precision, 0.0)
        return unit or self.gflops

    def ceiling_name(self, precision: str = "f32") -> str:
        """What `compute_gflops(precision)` is: "FMA", "AMX bf16", "vpdpbusd int8"..."""
        unit = {"bf16": (self.bf16_gflops, self.bf16_unit), "int8": (self.int8_gops, self.int8_unit)}.get(precision)
        return f"{unit[1]} {precision}" if unit and unit[0] else "FMA"

    def predicted_us(self, flops: int, moved: int, precision: str = "f32") -> float:
        """The roofline's time: the slower of computing at the compute ceiling and moving the bytes from DRAM."""
        return max(flops / (self.compute_gflops(precision) * 1e3), moved / (self.dram_gbs * 1e3))


@dataclass
class KernelPoint:
    name: str
    kind: str
    flops: int
    bytes: int
    intensity: float
    predicted_us: float
    measured_us: float | None = None
    ceiling: str = "FMA"  # the compute ceiling it is held to: the f32 FMA peak, or a matrix unit's (bf16, int8)

    @property
    def predicted_gflops(self) -> float:
        return self.flops / (self.predicted_us * 1e3) if self.predicted_us else 0.0

    @property
    def measured_gflops(self) -> float | None:
        return self.flops / (self.measured_us * 1e3) if self.measured_us else None

    @property
    def percent_of_roofline(self) -> float | None:
        return 100 * self.predicted_us / self.measured_us if self.measured_us else None


@dataclass
class Roofline:
    ceilings: Ceilings
    kernels: list[KernelPoint] = field(default_factory=list)

    def as_dict(self) -> dict:
        kernels = [{**asdict(k), "predicted_gflops": k.predicted_gflops, "measured_gflops": k.measured_gflops,
                    "percent_of_roofline": k.percent_of_roofline} for k in self.kernels]
        return {"ceilings": asdict(self.ceilings), "kernels": kernels}


def roofline(kernels_ir, ceilings: Ceilings, measured: dict[str, float] | None = None) -> Roofline:
    """One point per kernel of the IR after `tile`, with measured microseconds where given."""
    points = []
    for kop in (op for op in kernels_ir.walk() if isinstance(op, kernel.KernelOp)):
        cost = kernel_cost(kop)
        name = kop.kernel_name.data
        precision = product_precision(kop)
        points.append(KernelPoint(name, kop.kind.data, cost.flops, cost.bytes, cost.intensity,
                                  ceilings.predicted_us(cost.flops, cost.bytes, precision), (measured or {}).get(name),
                                  ceilings.ceiling_name(precision)))
    return Roofline(ceilings, points)


def product_precision(kop) -> str:
    """What a kernel's matrix products compute in: "int8" (a linear with int8 activations), "bf16" (bf16
    operands: a bf16 model's, or under matmul-precision bf16), else "f32"."""
    from llmc.dialects import graph

    products = [op for op in kop.walk() if isinstance(op, (graph.LinearOp, graph.MatmulOp))]
    if any(isinstance(op, graph.LinearOp) and op.activations is not None for op in products):
        return "int8"
    return "bf16" if any(op.operands[0].type.element_type == bf16 for op in products) else "f32"


def graph_precision(kernels_ir, ceilings: Ceilings) -> str:
    """The precision of the graph's fastest compute ceiling among its kernels' products: what a whole graph's
    FLOP/s may approach."""
    present = {product_precision(k) for k in kernels_ir.walk() if isinstance(k, kernel.KernelOp)} | {"f32"}
    return max(sorted(present), key=ceilings.compute_gflops)


def write_json(path: Path, data: dict) -> None:
    from llmc.errors import write_output

    write_output(path, json.dumps(data, indent=2, default=str) + "\n")


def write_svg(path: Path, model: Roofline, title: str) -> None:
    """The roofline plot: ceilings as lines, each kernel's measured point (filled) joined to its
    predicted point (hollow), labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmc.errors import OutputError

    c = model.ceilings
    points = [k for k in model.kernels if k.flops and k.bytes]
    low = min([k.intensity for k in points] + [0.05]) / 2
    high = max([k.intensity for k in points] + [4 * c.gflops / c.dram_gbs]) * 2
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    figure, axes = plt.subplots(figsize=(9, 6))
    axes.plot(xs, [c.attainable_gflops(x) for x in xs], color="black", linewidth=2,
              label=f"DRAM {c.dram_gbs:.0f} GB/s, FMA peak {c.gflops:.0f} GFLOP/s")
    if c.bf16_gflops:
        axes.plot(xs, [min(c.bf16_gflops, x * c.dram_gbs) for x in xs], "-.", color="tab:green",
                  label=f"{c.bf16_unit} bf16 peak {c.bf16_gflops:.0f} GFLOP/s")
    if c.int8_gops:
        axes.plot(xs, [min(c.int8_gops, x * c.dram_gbs) for x in xs], "-.", color="tab:purple",
                  label=f"{c.int8_unit} int8 peak {c.int8_gops:.0f} GOP/s")
    for gbs, name, style in ((c.llc_gbs, "LLC", "--"), (c.l2_gbs, "L2", ":")):
        if gbs > 0:
            axes.plot(xs, [min(c.gflops, x * gbs) for x in xs], style, color="gray", label=f"{name} {gbs:.0f} GB/s")
    for k in points:
        predicted = k.predicted_gflops
        axes.scatter([k.intensity], [predicted], facecolors="none", edgecolors="tab:blue", s=40)
        if k.measured_gflops:
            axes.plot([k.intensity, k.intensity], [predicted, k.measured_gflops], color="tab:blue", alpha=0.4)
            axes.scatter([k.intensity], [k.measured_gflops], color="tab:red", s=30, zorder=3)
        axes.annotate(k.name, (k.intensity, k.measured_gflops or predicted), fontsize=7, xytext=(4, 2),
                      textcoords="offset points")
    axes.scatter([], [], color="tab:red", label="measured")
    axes.scatter([], [], facecolors="none", edgecolors="tab:blue", label="predicted")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (FLOP / byte)")
    axes.set_ylabel("GFLOP/s")
    axes.set_title(f"{title}\nceilings: {c.source}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="svg")
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(figure)


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}%"

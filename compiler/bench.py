"""`llmc bench`: eager PyTorch, torch.compile (Inductor) and llmc timed side by side in one process.

Each contender is warmed up, then all are timed call by call in rotation (so a
noisy neighbour hits them alike); medians are reported with
ratios against eager and against the faster of eager and Inductor (the bar the
project states its goals against). Achieved GFLOP/s and GB/s are set against
the machine's measured peak (llmc.backends.c.probe). Compile times: llmc cold
(empty build cache) and warm (cached), Inductor cold (empty cache directory).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

from llmc.cost_model import kernel_cost
from llmc.dialects import kernel
from llmc.exporter import split_inputs
from llmc.progress import Progress
from llmc.roofline import Ceilings, graph_precision, roofline, write_json, write_svg
from llmc.target import get_target


@dataclass
class Contender:
    name: str
    median_ms: float
    compile_s: float | None = None


@dataclass
class BenchResult:
    title: str
    flops: int
    bytes: int
    peak_gflops: float
    peak_gbs: float
    contenders: list[Contender] = field(default_factory=list)
    llmc_warm_s: float | None = None
    max_abs_error: float = 0.0
    kernel_ms: float | None = None  # llmc's kernels alone, outputs reused (no first-touch page faults)
    peak_note: str = ""  # when the probe ran, and whether this run re-measured it
    roofline: object | None = None  # llmc.roofline.Roofline of llmc's kernels, on the probe's ceilings
    peak_name: str = "FMA"  # the compute peak held to: f32 FMA, or a matrix unit's (bf16, int8)
    # llmc's kernels timed in rotation with one pass of the copy and FMA probes (medians): (kernels ms, copy GB/s,
    # FMA GFLOP/s), the ceilings of the same rounds as the kernels; None where not measured
    alongside: tuple[float, float, float] | None = None

    def shares_alongside(self) -> tuple[float, float] | None:
        """The kernels' GFLOP/s over the FMA probe's and their GB/s over the copy probe's, timed in rotation."""
        if self.alongside is None:
            return None
        kernel_ms, copy_gbs, fma_gflops = self.alongside
        return self.flops / (kernel_ms * 1e6) / fma_gflops, self.bytes / (kernel_ms * 1e6) / copy_gbs

    def as_dict(self) -> dict:
        return {"title": self.title, "flops": self.flops, "bytes": self.bytes,
                "contenders": [vars(c) for c in self.contenders], "llmc_warm_compile_s": self.llmc_warm_s,
                "max_abs_error": self.max_abs_error, "llmc_kernels_ms": self.kernel_ms,
                **({"alongside_probes": dict(zip(("llmc_kernels_ms", "copy_gbs", "fma_gflops"), self.alongside))}
                   if self.alongside else {}),
                **(self.roofline.as_dict() if self.roofline else {})}

    def get(self, name: str) -> Contender | None:
        return next((c for c in self.contenders if c.name == name), None)

    def best_torch_ms(self) -> float:
        return min(c.median_ms for c in self.contenders if c.name != "llmc")

    def format(self) -> str:
        eager = self.get("eager").median_ms
        best = self.best_torch_ms()
        lines = [
            self.title,
            f"graph: {self.flops / 1e9:.3f} GFLOP, {self.bytes / 1e6:.2f} MB compulsory traffic; "
            f"machine peak ({self.peak_name}) {self.peak_gflops:.1f} GFLOP/s, {self.peak_gbs:.1f} GB/s "
            f"(probe{self.peak_note})",
            "x eager, x best: time over eager's and over the fastest torch contender's (lower is faster)",
            f"{'':<10}{'median ms':>10}{'x eager':>9}{'x best':>8}{'GFLOP/s':>9}{'%peak':>7}{'GB/s':>8}{'%bw':>6}{'compile s':>11}",
        ]
        for c in self.contenders:
            gflops = self.flops / (c.median_ms * 1e6)
            gbs = self.bytes / (c.median_ms * 1e6)
            compile_s = f"{c.compile_s:.2f}" if c.compile_s is not None else "-"
            lines.append(
                f"{c.name:<10}{c.median_ms:>10.3f}{c.median_ms / eager:>9.2f}{c.median_ms / best:>8.2f}"
                f"{gflops:>9.1f}{100 * gflops / self.peak_gflops:>6.0f}%{gbs:>8.1f}{100 * gbs / self.peak_gbs:>5.0f}%{compile_s:>11}"
            )
        if self.kernel_ms is not None:
            gflops, gbs = self.flops / (self.kernel_ms * 1e6), self.bytes / (self.kernel_ms * 1e6)
            lines.append(
                f"llmc kernels alone (steady state, outputs reused): {self.kernel_ms:.3f} ms, {gflops:.1f} GFLOP/s "
                f"({100 * gflops / self.peak_gflops:.0f}% of peak), {gbs:.1f} GB/s ({100 * gbs / self.peak_gbs:.0f}% of bandwidth)"
            )
        if self.alongside is not None:
            kernel_ms, copy_gbs, fma_gflops = self.alongside
            compute, bandwidth = self.shares_alongside()
            lines.append(
                f"llmc kernels in rotation with the probes: {kernel_ms:.3f} ms; {100 * compute:.0f}% of the "
                f"{fma_gflops:.1f} GFLOP/s and {100 * bandwidth:.0f}% of the {copy_gbs:.1f} GB/s they measured in "
                "the same rounds"
            )
        if self.llmc_warm_s is not None:
            lines.append(f"llmc warm (cached) compile {self.llmc_warm_s:.2f} s (median of 3); "
                         f"max abs error vs eager {self.max_abs_error:.2e}")
        inductor, llmc = self.get("inductor"), self.get("llmc")
        if inductor and llmc and inductor.compile_s and llmc.compile_s:
            lines.append(f"cold compile llmc / inductor = {llmc.compile_s / inductor.compile_s:.2f}")
        return "\n".join(lines)


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each callable, timed in rotation (a, b, c, a, b, c, ...) so that every
    contender sees the same machine: on a shared, noisy host this is what keeps ratios honest."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            for _ in range(warmup):
                fn()
        with Progress(repeats, "timing rounds") as progress:
            for round_ in range(repeats):
                for name, fn in runs.items():
                    begin = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - begin)
                progress.stage(f"round {round_ + 1}")
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def graph_cost(compiled) -> tuple[int, int]:
    kernels = compiled.kernels_ir()
    costs = [kernel_cost(k) for k in kernels.walk() if isinstance(k, kernel.KernelOp)]
    return sum(c.flops for c in costs), sum(c.bytes for c in costs)


def compile_inductor(model, inputs) -> tuple[Callable, float]:
    """torch.compile the model and run it once into an empty Inductor cache: (compiled, cold seconds)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            torch._dynamo.reset()
            compiled = torch.compile(model)
            args, kwargs = split_inputs(inputs)
            begin = time.perf_counter()
            with torch.no_grad():
                compiled(*args, **kwargs)
            return compiled, time.perf_counter() - begin
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def bench(model, inputs, title: str, target: str = "cpu", passes: str | None = None, build=None,
          repeats: int = 30, inductor: bool = True, remeasure_peak: bool = False, log=print,
          matmul_precision: str = "f32", quantize: str | None = None,
          others: dict[str, Callable[[], object]] | None = None) -> BenchResult:
    """Time eager, Inductor and llmc (compiled with `matmul_precision` and `quantize`) and any `others`
    (more contenders, e.g. torch's own int8 linears) in rotation on `model(*inputs)`."""
    import llmc
    from llmc.backends.c.build import BuildOptions
    from llmc.backends.c.probe import machine_peak

    build = build or BuildOptions.from_environment()
    chosen = get_target(target)
    log(f"[bench] {title}: measuring the machine peak (cached after the first run)")
    peak = machine_peak(build, chosen.lanes, remeasure=remeasure_peak)
    args, kwargs = split_inputs(inputs)
    runs, colds = {"eager": lambda: model(*args, **kwargs)}, {}
    if inductor:
        log("[bench] torch.compile / Inductor: cold compile into an empty cache")
        compiled_inductor, colds["inductor"] = compile_inductor(model, inputs)
        runs["inductor"] = lambda: compiled_inductor(*args, **kwargs)
    runs.update(others or {})
    log("[bench] llmc: cold compile into an empty cache, then three warm (cached) compiles")
    with tempfile.TemporaryDirectory(prefix="llmc-cold-") as cache:
        cold_options = replace(build, cache_dir=Path(cache))
        begin = time.perf_counter()
        llmc.compile(model, inputs, target=target, passes=passes, build=cold_options, emit=lambda *_: None,
                     matmul_precision=matmul_precision, quantize=quantize)
        colds["llmc"] = time.perf_counter() - begin
        warm_runs = []
        for _ in range(3):
            begin = time.perf_counter()
            compiled = llmc.compile(model, inputs, target=target, passes=passes, build=cold_options, emit=lambda *_: None,
                                    matmul_precision=matmul_precision, quantize=quantize)
            warm_runs.append(time.perf_counter() - begin)
    runs["llmc"] = lambda: compiled(*args, **kwargs)
    log(f"[bench] timing {', '.join(runs)} in rotation, {repeats} rounds")
    medians = interleaved_medians(runs, repeats)
    contenders = [Contender(name, medians[name], colds.get(name)) for name in runs]
    per_kernel = compiled.profile(inputs, repeats)
    kernel_ms = sum(per_kernel.values()) / 1e3
    alongside = kernels_alongside_probes(compiled, inputs, repeats, build, chosen, log)
    with torch.no_grad():
        expected, got = tree_leaves(model(*args, **kwargs)), tree_leaves(compiled(*args, **kwargs))
    error = max(float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected))
    warm = statistics.median(warm_runs)
    flops, moved = graph_cost(compiled)
    kernels_ir = compiled.kernels_ir()
    # a graph whose products run on a matrix unit (bf16, int8) is held to its peak, not the f32 FMA one
    precision = graph_precision(kernels_ir, Ceilings.from_probe(peak)) if kernels_ir is not None else "f32"
    peak, note = plausible_peak(peak, flops, moved, kernel_ms, chosen.llc_bytes, build, chosen, log, precision)
    ceilings = Ceilings.from_probe(peak)
    kernels = roofline(kernels_ir, ceilings, per_kernel) if kernels_ir else None
    return BenchResult(title, flops, moved, ceilings.compute_gflops(precision), peak.bandwidth_gbs,
                       contenders, warm, error, kernel_ms, note, kernels, ceilings.ceiling_name(precision),
                       alongside if precision == "f32" else None)


def kernels_alongside_probes(compiled, inputs, repeats: int, build, target, log) -> tuple[float, float, float]:
    """llmc's kernels and one pass of each probe (a copy beyond the LLC, FMA chains) in rotation, `repeats`
    rounds: (kernels ms, copy GB/s, FMA GFLOP/s), medians. `profile` re-warms the caches the copy swept before
    each timed call, so the kernels run in the same steady state as `kernel_ms`."""
    from llmc.backends.c.probe import RotationProbe

    log("[bench] llmc's kernels in rotation with the copy and FMA probes")
    probe = RotationProbe(build, target.lanes, target.llc_bytes)
    copies, fmas = [], []

    def probes():
        copies.append(probe.copy_gbs())
        fmas.append(probe.fma_gflops())

    per_kernel = compiled.profile(inputs, repeats, between=probes)
    return sum(per_kernel.values()) / 1e3, statistics.median(copies), statistics.median(fmas)


def plausible_peak(peak, flops: int, moved: int, kernel_ms: float, llc_bytes: int, build, target, log,
                   precision: str = "f32"):
    """The cached probe, re-measured once when a kernel beat it: more FLOP/s than the compute peak of the
    graph's products (`precision`: the FMA peak, or a matrix unit's), or more than the copy bandwidth on data
    beyond the LLC, means the probe ran on a loaded machine."""
    from llmc.backends.c.probe import machine_peak

    seconds = kernel_ms / 1e3
    compute = Ceilings.from_probe(peak).compute_gflops(precision)
    beaten = flops / seconds / 1e9 > 1.05 * compute or (
        moved > llc_bytes and moved / seconds / 1e9 > 1.05 * peak.bandwidth_gbs)
    when = f", measured {peak.measured_at}" if peak.measured_at else ""
    if not beaten:
        return peak, when
    log("[bench] a kernel beat the cached machine peak (probe taken under load?): re-measuring it")
    fresh = machine_peak(build, target.lanes, remeasure=True)
    # a probe re-run on a loaded host can read lower still: each ceiling keeps the larger of the two readings
    larger = {name: max(getattr(peak, name), getattr(fresh, name)) for name in PEAK_FIGURES}
    return replace(fresh, **larger), f", re-measured {fresh.measured_at}: the cached one was below what a kernel achieved"


# the probe's figures a re-measure may only raise
PEAK_FIGURES = ("gflops", "bandwidth_gbs", "l2_gbs", "llc_gbs", "bf16_gflops", "int8_gops")


def bench_model_file(path: str, args, build) -> str:
    from llmc.model_file import load_model_file

    model, inputs = load_model_file(path)
    target = get_target(args.target)
    title = f"llmc bench {path} ({target.name}, {target.cores} cores)"
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    result = bench(model, inputs, title, args.target, args.passes, build, args.repeats,
                   not args.no_inductor, args.remeasure_peak, log)
    if result.roofline is not None:
        svg = Path(args.out_dir or Path("llmc-out") / Path(path).stem) / "roofline.svg"
        write_svg(svg, result.roofline, title)
        log(f"wrote {svg}")
    if args.json:
        write_json(Path(args.json), result.as_dict())
        log(f"wrote {args.json}")
    return result.format()

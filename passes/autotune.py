"""`autotune`: measure tile decisions on this host and record the fastest on each kernel.

Runs after `fuse`, before `tile`. For each kernel it takes the cost model's candidate set
(`cost_model.candidate_tiles`: the model's own decision first, then the next tilings the model ranks,
other pipeline depths), builds all of them as copies of the kernel in one C library — the same code
path as production: `tile`, `lower-tile`, `coalesce`, `swizzle`, `pipeline`, `plan-memory`, the C
backend — runs them on random inputs, checks every copy against llmc's interpreter (a mismatch
disqualifies it, and the report says so) and times them. The fastest valid one is written on the
kernel as its `tiles` and `stages`, with `llmc.autotune` saying what was measured; `tile` keeps that
decision, so a dump taken after this pass replays it without measuring.

Results are cached on disk per host (CPU model and flags), kernel signature (the kernel's IR with
names canonicalised) and llmc version (its release and a digest of its code), so a second compile measures
nothing, and kernels of one signature (every layer's copy of a kernel) are measured once. The libraries of a
batch of kernels compile in parallel and are timed one after another. Tuning stops when its time budget is
spent; the kernels left take the model's decision. Kernels
reading quantized weights run on random codes, scales and zero points in their formats' ranges; integer
inputs are zeros (indices in range), except an attention's run-time key bound (`key_bounds`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Block, Region
from xdsl.passes import ModulePass

from llmc.cost_model import TileDecision, candidate_tiles
from llmc.dialects import graph, kernel
from llmc.passes.tile import TUNED_ATTR
from llmc.progress import Progress
from llmc.quantization import parse_derived
from llmc.dtypes import is_float, round_to, storage_dtype, torch_dtype
from llmc.target import get_target, host_key

if TYPE_CHECKING:
    from llmc.backends.c.module import CSource

TUNED_PIPELINE = "tile{{target={t}}},lower-tile,coalesce{{target={t}}},swizzle{{target={t}}},pipeline,plan-memory"


@dataclass(frozen=True)
class Measured:
    tiles: tuple[int, ...]
    stages: int
    us: float | None  # None: disqualified (its outputs did not match the interpreter's)


@dataclass(frozen=True)
class AutotunePass(ModulePass):
    name = "autotune"

    target: str = "cpu"
    budget: int = 60  # seconds of tuning per compile (cached kernels cost nothing)
    candidates: int = 8
    repeats: int = 15
    cache: str = ""  # the cache folder; default: the C build cache's

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        from llmc.backends.c.build import BuildOptions

        target = get_target(self.target)
        options = BuildOptions.from_environment()
        if self.cache:  # the candidates' libraries too: a compile into an empty cache measures and builds afresh
            options = replace(options, cache_dir=Path(self.cache))
        folder = options.cache_dir / "autotune"
        begin = time.perf_counter()
        kernels = [k for k in op.walk() if isinstance(k, kernel.KernelOp) and tunable(k)]
        by_key: dict[str, list[kernel.KernelOp]] = {}
        for kop in kernels:  # every layer's copy of a kernel shares its signature: measured once
            by_key.setdefault(signature(kop, target.name), []).append(kop)
        with Progress(len(kernels), "autotune") as progress:

            def done(key: str, measured: list[Measured] | None, cached: bool) -> None:
                for i, kop in enumerate(by_key[key]):
                    progress.stage(kop.kernel_name.data)
                    if measured is not None:  # None: the budget ran out, the model decides
                        record(kop, measured, cached or i > 0)

            pending = []
            for key in by_key:
                measured = read_cache(folder, key)
                if measured is None:
                    pending.append(key)
                else:
                    done(key, measured, True)
            self.measure_pending(pending, by_key, target, options, folder, begin, done)

    def measure_pending(self, pending: list[str], by_key, target, options, folder, begin: float, done) -> None:
        """Tune the kernels of `pending` signatures in batches while the budget lasts. The libraries of a batch
        build at once, one compiler a core; they are timed one after another, with no compiler beside them."""
        batch = 2 * max(1, target.cores)
        for start in range(0, len(pending), batch):
            keys = pending[start:start + batch]
            if time.perf_counter() - begin > self.budget:
                for key in keys:  # nothing cached, so a later compile measures them
                    done(key, None, False)
                continue
            results = tune_kernels([by_key[key][0] for key in keys], target, options, self.candidates, self.repeats)
            for key, measured in zip(keys, results):
                write_cache(folder, key, measured)
                done(key, measured, False)


def tunable(kop: kernel.KernelOp) -> bool:
    """Kernels the tuner can run alone on random data: no in-place cache writes."""
    return kop.kind.data != "scatter"


def signature(kop: kernel.KernelOp, target: str) -> str:
    """The kernel's IR with its name, value names and source locations canonicalised, the host and llmc's
    version, hashed. The body's arguments carry the names of the weights they read (`model_layers_2_...`):
    left in, every layer's copy of a kernel was measured again (a 4-layer model's tuning took 36 s)."""
    holder = Block(arg_types=[v.type for v in kop.inputs])  # the clone must not become a user of the model's values
    clone = kop.clone(value_mapper=dict(zip(kop.inputs, holder.args)))
    holder.add_op(clone)
    undecided(clone, "k")
    for op in clone.walk():
        op.attributes.pop("loc", None)
        for value in op.results:
            value.name_hint = None
        for region in op.regions:
            for block in region.blocks:
                for value in block.args:
                    value.name_hint = None
    host = f"{host_key()}|{target}|{llmc_version()}"
    return hashlib.sha256(f"{host}\n{clone}".encode()).hexdigest()[:32]


def undecided(kop: kernel.KernelOp, name: str) -> None:
    """Rename a copy of a kernel and drop the decisions it carries."""
    kop.attributes["name"] = StringAttr(name)
    for key in ("tiles", "stages", TUNED_ATTR):
        kop.attributes.pop(key, None)


@functools.cache
def llmc_version() -> str:
    """llmc's release and a digest of its code: what makes and times the kernels decides what a measurement is
    worth, so one taken with other code (another release, a working tree edited since) is measured again rather
    than reused. (Row kernels came to be rendered one row at a time at the same release number, and entries
    measured on the old form kept choosing its row counts.)"""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("llmc")
    except PackageNotFoundError:
        release = "dev"
    return f"{release}+{code_digest()}"


def code_digest() -> str:
    """A digest of llmc's Python modules and C headers, by path within each package and content."""
    import llmc
    import llmc.backends
    import llmc.dialects
    import llmc.passes

    digest = hashlib.sha256()
    for package in (llmc, llmc.dialects, llmc.passes, llmc.backends):
        for root in map(Path, package.__path__):
            for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".h") and p.is_file()):
                digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\n".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def read_cache(folder, key: str) -> list[Measured] | None:
    """The measurements of a kernel, or None when absent or unreadable (a corrupt entry is measured again)."""
    try:
        entries = json.loads((folder / f"{key}.json").read_text())["measured"]
        return [Measured(tuple(e["tiles"]), int(e["stages"]), e["us"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cache(folder, key: str, measured: list[Measured]) -> None:
    from llmc.backends.c.build import atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = {"measured": [{"tiles": list(m.tiles), "stages": m.stages, "us": m.us} for m in measured]}
        atomic_write(folder / f"{key}.json", json.dumps(data).encode())
    except OSError:
        pass  # an unwritable cache costs a re-measure next time, nothing else


def record(kop: kernel.KernelOp, measured: list[Measured], cached: bool) -> None:
    valid = [m for m in measured if m.us is not None]
    if not valid:
        return  # every candidate disqualified: `tile` takes the model's decision
    best = min(valid, key=lambda m: m.us)
    model = measured[0]
    kop.attributes["tiles"] = graph.dense(best.tiles)
    kop.attributes["stages"] = IntegerAttr(best.stages, 64)
    others = ", ".join(f"{_name(m)} {m.us:.1f} us" if m.us is not None else f"{_name(m)} MISMATCH (disqualified)"
                       for m in measured if m is not best)
    model_said = "the model's choice" if best is model else f"model's {_name(model)} " + (
        f"{model.us:.1f} us" if model.us is not None else "disqualified")
    kop.attributes[TUNED_ATTR] = StringAttr(
        f"{_name(best)} {best.us:.1f} us ({model_said}){'; cached' if cached else ''}; also measured: {others or '-'}")


def _name(m: Measured) -> str:
    return f"{'x'.join(map(str, m.tiles))}/s{m.stages}"


@dataclass
class Candidates:
    """A kernel's candidates as copies in one module, rendered to C, with what checks and times them."""

    decisions: list[TileDecision]
    module: builtin.ModuleOp
    weights: dict
    inputs: list[np.ndarray]
    reference: list[np.ndarray]
    source: CSource


def tune_kernels(kops: list[kernel.KernelOp], target, options, count: int, repeats: int) -> list[list[Measured]]:
    """Each kernel's candidates built as copies in one library, checked against the interpreter and timed;
    [model's decision, others...] per kernel. The libraries are compiled in parallel (the C compiler is most of
    the tuning time: 7.7 of 9.7 s for the LLaMA block's ten kernels on a 2-core Zen 5), then timed in turn."""
    from concurrent.futures import ThreadPoolExecutor

    from llmc.backends.c.build import build_library

    prepared, building = [], []
    with ThreadPoolExecutor(max_workers=max(1, min(len(kops), target.cores))) as pool:
        for kop in kops:  # the next kernel's candidates are made while the compiler builds the last one's
            prepared.append(prepare(kop, target, options, count))
            building.append(pool.submit(build_library, prepared[-1].source.text, options))
        builds = [b.result() for b in building]
    return [measure(c, built, options, repeats) for c, built in zip(prepared, builds)]


def prepare(kop: kernel.KernelOp, target, options, count: int) -> Candidates:
    from llmc.backends.c import render_c
    from llmc.pipeline import PassRunner
    from llmc.registry import parse_passes

    decisions = candidate_tiles(kop, target, count)
    module, weights, inputs = standalone(kop, decisions)
    reference = interpret_reference(standalone(kop, [None])[0], inputs, weights)
    tiled = PassRunner(parse_passes(TUNED_PIPELINE.format(t=target.name)), emit=lambda *_: None).run(module)
    return Candidates(decisions, module, weights, inputs, reference, render_c(tiled, target, options))


def measure(candidates: Candidates, built, options, repeats: int) -> list[Measured]:
    import torch

    from llmc.backends.c import load_c

    program = load_c(candidates.source, built, candidates.weights, options)
    forward = next(op for op in candidates.module.ops if isinstance(op, func.FuncOp))
    tensors = tuple(torch.from_numpy(x).to(torch_dtype(arg.type.element_type))
                    for x, arg in zip(candidates.inputs, forward.body.block.args))
    outputs = program.library.run(tensors)
    times = program.library.profile(tensors, repeats)
    reference = candidates.reference
    per = len(reference)
    measured = []
    for i, decision in enumerate(candidates.decisions):
        got = outputs[i * per:(i + 1) * per]
        ok = all(np.allclose(g.float().numpy(), np.asarray(r, dtype=np.float32), rtol=tolerance(g), atol=tolerance(g))
                 for g, r in zip(got, reference))
        measured.append(Measured(decision.tiles, decision.stages, times[f"t{i}"] if ok else None))
    return measured


def tolerance(output) -> float:
    """How far a candidate's output may be from the interpreter's: f32 sums in another order; a 16-bit output
    also rounds once, and an ulp of f32 apart can round to neighbouring 16-bit values."""
    return 2.0**-7 if output.dtype.itemsize == 2 else 1e-3


def interpret_reference(module, inputs, weights) -> list[np.ndarray]:
    """What the kernel computes, by llmc's interpreter on the graph-level IR: the oracle of every candidate."""
    from llmc.interpret import interpret

    return interpret(module, inputs, weights)


def standalone(kop: kernel.KernelOp, decisions: list[TileDecision | None]):
    """A module whose forward runs copies of the kernel (one per decision; None: undecided) on the same
    arguments and returns all their results; with random weights and inputs for it."""
    rng = np.random.default_rng(0)
    block = Block()
    mapping, weights, inputs = {}, {}, []
    bounds = key_bounds(kop)
    for index, value in enumerate(kop.inputs):
        owner = value.owner
        if isinstance(owner, graph.WeightOp | graph.ConstantOp):
            clone = owner.clone()
            block.add_op(clone)
            mapping[value] = clone.results[0]
            if isinstance(owner, graph.WeightOp):
                name = owner.weight_name.data
                quantized = _random_quantized(name, value.type, rng)
                weights[name] = quantized if quantized is not None else _random(value.type, rng)
        else:
            mapping[value] = block.insert_arg(value.type, len(block.args))
            random = _random(value.type, rng)
            inputs.append(np.full_like(random, bounds[index]) if index in bounds else random)
    results = []
    for i, decision in enumerate(decisions):
        copy = kop.clone(value_mapper=dict(mapping))
        undecided(copy, f"t{i}")
        if decision is not None:
            copy.attributes["tiles"] = graph.dense(decision.tiles)
            copy.attributes["stages"] = IntegerAttr(decision.stages, 64)
            copy.attributes[TUNED_ATTR] = StringAttr("candidate")
        block.add_op(copy)
        results += list(copy.results)
    block.add_op(func.ReturnOp(*results))
    forward = func.FuncOp("forward", ([a.type for a in block.args], [r.type for r in results]), Region(block))
    return builtin.ModuleOp([forward]), weights, inputs


def key_bounds(kop: kernel.KernelOp) -> dict[int, int]:
    """Inputs of the kernel that bound an attention's keys at run time (its `positions`, through reshapes and
    expands), with the last key's index. The tuner times such a kernel over all its keys, the most a call can
    read: at the zeros integer inputs otherwise get, a decode step's attention read one tile of its cache (12 us
    measured for a GPT-2 step's 80 us), and its stages were chosen on that."""
    bounds = {}
    args = kop.body.block.args
    for op in kop.body.walk():
        if not isinstance(op, graph.AttentionOp) or op.positions is None:
            continue
        value = op.positions
        while isinstance(value.owner, graph.ReshapeOp | graph.ExpandOp):
            value = value.owner.operands[0]
        if value in args:
            bounds[args.index(value)] = op.key.type.get_shape()[-2] - 1
    return bounds


def _random_quantized(name: str, typ, rng) -> np.ndarray | None:
    """Random codes (int8 in +-127, int4 any byte: two nibbles), scales (positive) or zero points (0..15) for a
    quantized weight's part; None for any other weight."""
    derived = parse_derived(name)
    if derived is None:
        return None
    shape = tuple(typ.get_shape())
    if derived.part == "codes":
        low, high = (-127, 128) if derived.format.bits == 8 else (-128, 128)
        return rng.integers(low, high, shape).astype(np.int8)
    if derived.part == "scales":
        return rng.uniform(0.005, 0.02, shape).astype(np.float32)
    return rng.integers(0, 16, shape).astype(np.float32)


def _random(typ, rng) -> np.ndarray:
    """Random values of a float type (held in float32); zeros for integers (indices always in range) and bools."""
    shape = tuple(typ.get_shape())
    if is_float(typ.element_type):
        return round_to(rng.standard_normal(shape).astype(np.float32), typ.element_type)
    return np.zeros(shape, storage_dtype(typ.element_type))

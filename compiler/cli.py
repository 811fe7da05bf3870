"""The `llmc` command line: `llmc compile model.py`, `llmc opt FILE.mlir -p PASSES`, `llmc bench`,
`llmc generate MODEL`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmc.errors import LlmcError, MalformedIRError, OutputError, PassOptionError, write_output
from llmc.pipeline import DumpOptions, PassRunner
from llmc.progress import Progress


def _names(value: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip()) if value else frozenset()


def _dump_options(args: argparse.Namespace) -> DumpOptions:
    from llmc.registry import available_passes

    known = available_passes()
    for flag, value in (("--print-ir-after", args.print_ir_after), ("--print-ir-before", args.print_ir_before)):
        unknown = sorted(_names(value) - set(known))
        if unknown:  # a typo would otherwise print nothing and succeed
            raise PassOptionError(f"unknown pass {', '.join(repr(u) for u in unknown)} in {flag}; "
                                  f"known passes: {', '.join(known)}")
    return DumpOptions(
        print_after_all=args.print_ir_after_all,
        print_after=_names(args.print_ir_after),
        print_before=_names(args.print_ir_before),
        dump_dir=Path(args.dump_dir) if args.dump_dir else None,
    )


def _add_dump_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--print-ir-after", metavar="PASS[,PASS]", help="print the IR after these passes")
    parser.add_argument("--print-ir-before", metavar="PASS[,PASS]", help="print the IR before these passes")
    parser.add_argument("--dump-dir", metavar="DIR", help="write one numbered .mlir file per pass into DIR")
    parser.add_argument("--timing", action="store_true", help="print how long each pass took")


def _add_compile_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="cpu",
                        help="cpu (this host: its widest vector ISA and its cores; also c, native), cpu-avx2, "
                             "cpu-avx512, cpu-neon, cpu-scalar, gpu (= triton)")
    parser.add_argument("--backend", choices=["c", "triton", "interpret"],
                        help="default: c for CPU targets, triton for GPU targets")
    parser.add_argument("-p", "--passes", help="pass pipeline in xDSL syntax (default: the full pipeline)")
    parser.add_argument("--cc", help="C compiler (default: $CC or cc)")
    parser.add_argument("--cflags", help="C compiler flags (default: $LLMC_CFLAGS or -O3 -march=native -fopenmp ...)")
    parser.add_argument("--no-autotune", action="store_true",
                        help="take the cost model's tile decisions without measuring (autotuning is on by default "
                             "on the host target: measured once per kernel shape and host, cached)")
    parser.add_argument("--autotune-budget", type=float, metavar="SECONDS",
                        help="seconds of autotuning per compile (default 60; cached kernels cost nothing)")
    parser.add_argument("--matmul-precision", choices=["f32", "bf16"], default="f32",
                        help="bf16: an fp32 model's linear layers read bf16-rounded operands and accumulate in f32 "
                             "(AMX or vdpbf16ps where the host has them), as torch's 'medium' float32 matmul "
                             "precision allows; default f32")


def build_options(args: argparse.Namespace):
    from llmc.backends.c.build import BuildOptions

    return BuildOptions.from_environment(compiler=args.cc, flags=args.cflags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmc", description="An MLIR-style compiler for transformer graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="compile the model a Python file defines")
    comp.add_argument("model", help="a model file defining `model` and `example_inputs`")
    _add_compile_flags(comp)
    comp.add_argument("-o", "--output", help="write the final IR to this file")
    comp.add_argument("--out-dir", help="where the C source, library, IR and report go (default llmc-out/<model>)")
    comp.add_argument("--run", action="store_true", help="run the compiled model, compare with PyTorch eager, time each kernel")
    comp.add_argument("--quantize", metavar="FORMAT",
                      help="weight-only quantization of the linear layers: int8 (per channel), int4 (groups of 32), "
                           "int4:64, int4:128, int4:channel, each int4 optionally :asym and :a8 (int8 activations, "
                           "integer dot products)")
    comp.add_argument("--json", metavar="FILE", help="write the report as data: kernels, decisions, costs, "
                                                     "measured times, the host's ceilings, pass timings")
    comp.add_argument("--explain", action="store_true",
                      help="say which ops torch.compile(backend='llmc') runs in llmc kernels and which in eager, and why")
    _add_dump_flags(comp)
    bench = sub.add_parser("bench", help="time eager PyTorch, torch.compile (Inductor) and llmc side by side")
    bench.add_argument("model", help="a model file defining `model` and `example_inputs`")
    _add_compile_flags(bench)
    bench.add_argument("--repeats", type=int, default=30, help="timed calls per contender (median reported)")
    bench.add_argument("--no-inductor", action="store_true", help="skip torch.compile (its cold compile is slow)")
    bench.add_argument("--remeasure-peak", action="store_true", help="re-run the machine peak probe")
    bench.add_argument("--out-dir", help="where roofline.svg goes (default llmc-out/<model>)")
    bench.add_argument("--json", metavar="FILE", help="write the results as data")
    gen = sub.add_parser("generate", help="greedy generation with a static KV cache: TTFT, TPOT, tokens/s and "
                                          "decode GB/s for eager, Inductor and llmc side by side")
    gen.add_argument("model", help="a model file defining `model` (a Hugging Face causal LM, or a module in "
                                   "llmc's generation contract) or a built-in family with random weights: "
                                   "gpt2, llama, qwen2, mistral, phi, tinyllama")
    gen.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (random ids)")
    gen.add_argument("--new-tokens", type=int, default=128, help="tokens to generate")
    gen.add_argument("--batch", type=int, default=1, help="prompts per batch")
    gen.add_argument("--layers", type=int, default=4, help="decoder layers of a built-in family")
    gen.add_argument("--target", default="cpu", help="cpu (the host's widest vector ISA)")
    gen.add_argument("--only", help="comma-separated contenders to run (default eager,inductor,llmc)")
    gen.add_argument("--rounds", type=int, default=1, help="generations per contender, in rotation (medians over all)")
    gen.add_argument("--quantize", metavar="FORMAT[,FORMAT]",
                     help="also run llmc with quantized weights: int8, int4 (groups of 32), int4:64, int4:128:asym, "
                          "int4:channel, int4:32:a8 (int8 activations) (each a contender llmc-FORMAT)")
    opt = sub.add_parser("opt", help="replay passes on an IR dump, mlir-opt style")
    opt.add_argument("file", help="an .mlir file (- for standard input)")
    opt.add_argument("-p", "--passes", help="pass pipeline, e.g. 'pipeline{stages=3},coalesce' (none: parse, verify "
                                           "and print, as mlir-opt does)")
    opt.add_argument("-o", "--output", help="write the result here instead of standard output")
    opt.add_argument("--emit", choices=["ir", "c", "triton"], default="ir",
                     help="what to write: the IR (default), or the C translation unit or Triton module the backends "
                          "render from tile-level IR")
    opt.add_argument("--target", default="cpu", help="the CPU target whose vector width --emit c renders for")
    _add_dump_flags(opt)
    return parser


def cmd_compile(args: argparse.Namespace) -> int:
    import llmc
    from llmc.quantization import QuantFormat
    from llmc.ir_text import print_ir
    from llmc.model_file import load_model_file

    dumps = _dump_options(args)  # bad flags and pipelines are refused before the model is exported
    if args.passes:
        from llmc.registry import parse_passes

        parse_passes(args.passes)
    model, inputs = load_model_file(args.model)
    if args.explain:
        print(llmc.explain(model, inputs, options={"target": args.target}))
        return 0
    print(f"llmc: compiling {args.model} for {args.target}", file=sys.stderr)
    with Progress(_stage_count(args), "llmc compile") as progress:
        compiled = llmc.compile(
            model, inputs, target=args.target, passes=args.passes, dumps=dumps,
            backend=args.backend, build=build_options(args), quantize=args.quantize, progress=progress.stage,
            autotune=autotune_setting(args), matmul_precision=args.matmul_precision,
        )
    if args.quantize:
        from llmc.passes.quantize import describe_plan, plan_quantization

        fmt = QuantFormat.parse(args.quantize)
        from llmc.exporter import export_model

        print(describe_plan(plan_quantization(export_model(model, inputs).module, fmt)))
    status = compare_with_eager(compiled, model, inputs, args.matmul_precision) if args.run and not args.quantize else 0
    if args.run and args.quantize:
        from llmc.accuracy import quantization_report

        text, ok = quantization_report(compiled, model, inputs, fmt)
        print(text)
        status = 0 if ok else 1
    measured, ceilings = None, None
    if args.run and compiled.backend == "c":
        measured, ceilings = compiled.profile(inputs), host_ceilings(args)
    report = compiled.report(measured, ceilings)
    print(report)
    if args.timing:
        print(compiled.runner.timing_table())
        print("  ".join(f"{stage} {seconds:.3f} s" for stage, seconds in compiled.seconds.items()))
    if args.output:
        write_output(args.output, print_ir(compiled.module))
    directory = Path(args.out_dir or Path("llmc-out") / Path(args.model).stem)
    write_artifacts(compiled, directory, report)
    if measured is not None or args.json:
        write_roofline(compiled, args, directory, measured, ceilings, status)
    return status


def autotune_setting(args: argparse.Namespace) -> bool | float | None:
    if args.no_autotune:
        return False
    return args.autotune_budget  # None: $LLMC_AUTOTUNE, else on


def _stage_count(args: argparse.Namespace) -> int:
    from llmc.registry import default_pipeline, parse_passes

    return 3 + len(parse_passes(args.passes or default_pipeline(args.target))) + bool(args.quantize) + (args.matmul_precision == "bf16")


def host_ceilings(args: argparse.Namespace):
    """The host's measured roofline (the probe: a few seconds the first time, then cached)."""
    from llmc.backends.c.probe import machine_peak
    from llmc.roofline import Ceilings
    from llmc.target import get_target

    lanes = get_target(args.target).lanes
    return Ceilings.from_probe(machine_peak(build_options(args), lanes, getattr(args, "remeasure_peak", False)))


def write_roofline(compiled, args, directory: Path, measured, ceilings, status: int) -> None:
    """roofline.svg beside the other artifacts when kernels were measured; --json FILE always."""
    from llmc.roofline import Ceilings, roofline, write_json, write_svg
    from llmc.target import get_target, host_cpu_name

    kernels = compiled.kernels_ir()
    if kernels is None:
        return
    ceilings = ceilings or Ceilings.from_target(get_target(args.target))
    model = roofline(kernels, ceilings, measured)
    written = []
    if measured is not None:
        write_svg(directory / "roofline.svg", model, f"llmc compile {args.model} on {host_cpu_name()}")
        written.append(directory / "roofline.svg")
    if args.json:
        tiles = {k.kernel_name.data: {"tiles": list(k.tiles.get_values()) if k.tiles else None,
                                      "stages": k.stages.value.data if k.stages else None}
                 for k in kernels.walk() if k.name == "kernel.kernel"}
        data = {"model": args.model, "target": compiled.target, "backend": compiled.backend, "host": host_cpu_name(),
                **model.as_dict(), "decisions": tiles,
                "passes": [{"name": t.name, "seconds": t.seconds} for t in compiled.runner.timings],
                "seconds": compiled.seconds, "matches_eager": status == 0 if args.run else None}
        write_json(Path(args.json), data)
        written.append(Path(args.json))
    if written:
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)


def write_artifacts(compiled, directory: Path, report: str) -> None:
    from llmc.ir_text import print_ir

    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "final.mlir").write_text(print_ir(compiled.module))
        (directory / "report.txt").write_text(report + "\n")
        written = [directory / "final.mlir", directory / "report.txt"]
        if compiled.backend == "c":
            written += compiled.program.write(directory)
        elif compiled.backend == "triton":
            (directory / "kernels_triton.py").write_text(compiled.program.source)
            written.append(directory / "kernels_triton.py")
    except OSError as error:
        raise OutputError(f"cannot write to {directory}: {error.strerror}") from None
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


def tolerance(dtype) -> float:
    """Relative agreement expected with eager: f32 to 1e-4, 16-bit floats to a few units in the last place
    (fused kernels round once at the store where eager rounds after every op)."""
    import torch

    return {torch.bfloat16: 4 * 2.0**-8, torch.float16: 4 * 2.0**-11}.get(dtype, 1e-4)


def compare_with_eager(compiled, model, inputs, matmul_precision: str = "f32") -> int:
    import time

    import torch

    from torch.utils._pytree import tree_leaves

    from llmc.exporter import split_inputs

    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        expected = tree_leaves(model(*args, **kwargs))
    begin = time.perf_counter()
    got = tree_leaves(compiled(*args, **kwargs))
    elapsed = time.perf_counter() - begin
    errors = [float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected)]
    worst = max(errors)
    # products in bf16 are held to bf16's tolerance against the fp32 model
    expected_dtype = (lambda e: torch.bfloat16) if matmul_precision == "bf16" else (lambda e: e.dtype)
    ok = all(error <= tolerance(expected_dtype(e)) * max(1.0, float(e.float().abs().max()))
             for error, e in zip(errors, expected))
    where = {"c": "the C library", "triton": "the Triton kernels"}.get(compiled.backend, "the reference interpreter")
    held = " (linear layers in bf16: bf16's tolerance)" if matmul_precision == "bf16" else ""
    print(f"ran the compiled model in {where} ({elapsed * 1e3:.1f} ms, first call): "
          f"max abs error vs PyTorch eager {worst:.3g} over {len(got)} output(s){held}: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from llmc.bench import bench_model_file

    print(bench_model_file(args.model, args, build_options(args)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from llmc.serving import compare, load_generation_model

    from llmc.quantization import QuantFormat

    quantized = [f"llmc-{QuantFormat.parse(q) and q.strip()}" for q in (args.quantize or "").split(",") if q.strip()]
    contenders = tuple(_names(args.only)) if args.only else ("eager", "inductor", "llmc", *quantized)
    for name in contenders:
        if name.startswith("llmc-"):
            QuantFormat.parse(name.removeprefix("llmc-"))
        elif name not in ("eager", "inductor", "llmc"):
            raise LlmcError(f"unknown contender '{name}': choose from eager, inductor, llmc, llmc-<quantization>")
    if min(args.prompt_len, args.new_tokens, args.batch, args.layers, args.rounds) < 1:
        raise LlmcError("--prompt-len, --new-tokens, --batch, --layers and --rounds must be at least 1")
    model = load_generation_model(args.model, args.layers)
    order = [c for c in ("eager", "inductor", "llmc") if c in contenders] + [c for c in contenders if c.startswith("llmc-")]
    table, _ = compare(model, args.batch, args.prompt_len, args.new_tokens, tuple(order), args.target,
                       rounds=args.rounds)
    print(table)
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    from llmc.ir_text import parse_ir
    from llmc.registry import parse_passes

    passes = parse_passes(args.passes) if args.passes else []
    text = sys.stdin.buffer.read().decode(errors="replace") if args.file == "-" else _read(args.file)
    module = parse_ir(text, args.file)
    runner = PassRunner(passes, _dump_options(args))
    runner.run(module)
    if args.timing:
        print(runner.timing_table(), file=sys.stderr)
    result = emit(module, args.emit, args.target)
    if args.output:
        write_output(args.output, result)
    else:
        sys.stdout.write(result)
    return 0


def emit(module, what: str, target: str) -> str:
    from llmc.ir_text import print_ir
    from llmc.target import get_target

    if what == "c":
        from llmc.backends.c.build import BuildOptions
        from llmc.backends.c.module import render_module
        from llmc.backends.c.probe import bf16_products_on_matrix_unit

        lanes = get_target(target).lanes  # the C the backend would build: the same matrix-unit decision
        return render_module(module, lanes, bf16_products_on_matrix_unit(BuildOptions.from_environment(), lanes)).text
    if what == "triton":
        from llmc.backends.triton import render_triton

        return render_triton(module)[0]
    return print_ir(module)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise LlmcError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise MalformedIRError(f"{path}: not IR text (not UTF-8: {error.reason} at byte {error.start})") from None


def run(argv: list[str] | None = None) -> int:
    """Run one command; an LlmcError propagates (main prints it)."""
    args = build_parser().parse_args(argv)
    commands = {"compile": cmd_compile, "opt": cmd_opt, "bench": cmd_bench, "generate": cmd_generate}
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except LlmcError as error:
        print(f"llmc: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

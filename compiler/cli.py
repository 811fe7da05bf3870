"""The `llmc` command line: `llmc compile model.py`, `llmc opt FILE.mlir -p PASSES`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmc.errors import LlmcError
from llmc.pipeline import DumpOptions, PassRunner


def _names(value: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip()) if value else frozenset()


def _dump_options(args: argparse.Namespace) -> DumpOptions:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmc", description="An MLIR-style compiler for transformer graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="compile the model a Python file defines")
    comp.add_argument("model", help="a model file defining `model` and `example_inputs`")
    comp.add_argument("--target", default="cpu", help="cpu (cpu-avx2), cpu-avx512 or gpu (cuda-h100)")
    comp.add_argument("-p", "--passes", help="pass pipeline in xDSL syntax (default: the full pipeline)")
    comp.add_argument("-o", "--output", help="write the final IR to this file")
    comp.add_argument("--run", action="store_true", help="run the compiled IR and compare it with PyTorch eager")
    _add_dump_flags(comp)
    opt = sub.add_parser("opt", help="replay passes on an IR dump, mlir-opt style")
    opt.add_argument("file", help="an .mlir file (- for standard input)")
    opt.add_argument("-p", "--passes", required=True, help="pass pipeline, e.g. 'pipeline{stages=3},coalesce'")
    opt.add_argument("-o", "--output", help="write the result here instead of standard output")
    _add_dump_flags(opt)
    return parser


def cmd_compile(args: argparse.Namespace) -> int:
    import llmc
    from llmc.ir_text import print_ir
    from llmc.model_file import load_model_file

    model, inputs = load_model_file(args.model)
    print(f"llmc: compiling {args.model} for {args.target}", file=sys.stderr)
    compiled = llmc.compile(model, inputs, target=args.target, passes=args.passes, dumps=_dump_options(args))
    print(compiled.report())
    if args.timing:
        print(compiled.runner.timing_table())
    if args.output:
        Path(args.output).write_text(print_ir(compiled.module))
    if args.run:
        return compare_with_eager(compiled, model, inputs)
    return 0


def compare_with_eager(compiled, model, inputs) -> int:
    import time

    import torch

    with torch.no_grad():
        expected = model(*inputs)
    begin = time.perf_counter()
    got = compiled(*inputs)
    elapsed = time.perf_counter() - begin
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    worst = max(float((g - e).abs().max()) for g, e in zip(got, expected))
    scale = max(float(e.abs().max()) for e in expected)
    ok = worst <= 1e-4 * max(1.0, scale)
    print(f"ran the compiled IR in the reference interpreter ({elapsed:.2f} s): "
          f"max abs error vs PyTorch eager {worst:.3g} over {len(got)} output(s): {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def cmd_opt(args: argparse.Namespace) -> int:
    from llmc.ir_text import parse_ir, print_ir
    from llmc.registry import parse_passes

    passes = parse_passes(args.passes)
    text = sys.stdin.read() if args.file == "-" else _read(args.file)
    module = parse_ir(text, args.file)
    runner = PassRunner(passes, _dump_options(args))
    runner.run(module)
    if args.timing:
        print(runner.timing_table(), file=sys.stderr)
    result = print_ir(module)
    if args.output:
        Path(args.output).write_text(result)
    else:
        sys.stdout.write(result)
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise LlmcError(f"cannot read {path}: {error.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_compile(args) if args.command == "compile" else cmd_opt(args)
    except LlmcError as error:
        print(f"llmc: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

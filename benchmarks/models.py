"""Whole Hugging Face models, side by side: eager PyTorch, torch.compile (Inductor) and llmc in one process.

    python benchmarks/models.py [--seq 128] [--families gpt2,llama,...] [--repeats 20] [--no-inductor]

Each family is the 4-layer, width-256 model of examples/hf_causal_lm.py with random weights, one
prompt of `--seq` tokens with its attention mask. Per family it prints the kernel count after
fusion, the cold compile times (llmc into an empty build cache, Inductor into an empty cache),
the median forward time of each contender timed in rotation, and llmc / the faster of eager and
Inductor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import llmc  # noqa: E402
from llmc.backends.c.build import BuildOptions  # noqa: E402
from llmc.bench import compile_inductor, interleaved_medians  # noqa: E402
from llmc.target import host_cpu_target  # noqa: E402

FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "phi", "bert")


def measure(family: str, seq: int, repeats: int, inductor: bool) -> dict:
    import hf_causal_lm

    model, inputs = hf_causal_lm.build(family, batch=1, seq=seq)
    inputs["attention_mask"][:] = 1  # one unpadded prompt
    with tempfile.TemporaryDirectory(prefix="llmc-cold-") as cache:
        begin = time.perf_counter()
        compiled = llmc.compile(model, inputs, build=replace(BuildOptions.from_environment(), cache_dir=Path(cache)),
                                emit=lambda *_: None)
        llmc_cold = time.perf_counter() - begin
    runs = {"eager": lambda: model(**inputs), "llmc": lambda: compiled(**inputs)}
    row = {"family": family, "kernels": sum(1 for op in compiled.module.walk() if op.name == "tile.kernel"),
           "llmc_compile": llmc_cold}
    if inductor:
        fast, row["inductor_compile"] = compile_inductor(model, inputs)
        runs["inductor"] = lambda: fast(**inputs)
    row.update(interleaved_medians(runs, repeats))
    with torch.no_grad():
        expected = tree_leaves(model(**inputs))[0]
    row["error"] = float((tree_leaves(compiled(**inputs))[0] - expected).abs().max())
    return row


def table(rows: list[dict], inductor: bool) -> str:
    header = f"{'family':<9}{'kernels':>8}{'llmc s':>8}{'ind. s':>8}{'eager ms':>10}{'ind. ms':>9}{'llmc ms':>9}{'llmc/best':>10}{'max err':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        best = min(r["eager"], r.get("inductor", r["eager"]))
        ind_s = f"{r['inductor_compile']:.1f}" if inductor else "-"
        ind_ms = f"{r['inductor']:.2f}" if inductor else "-"
        lines.append(f"{r['family']:<9}{r['kernels']:>8}{r['llmc_compile']:>8.1f}{ind_s:>8}{r['eager']:>10.2f}{ind_ms:>9}"
                     f"{r['llmc']:>9.2f}{r['llmc'] / best:>10.2f}{r['error']:>10.1e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-inductor", action="store_true")
    args = parser.parse_args()
    target = host_cpu_target()
    print(f"whole models, T={args.seq}, batch 1, on {target.name} ({target.cores} cores); medians of "
          f"{args.repeats} rounds in rotation", flush=True)
    rows = []
    for family in args.families.split(","):
        print(f"[{family}] compiling and timing", file=sys.stderr, flush=True)
        rows.append(measure(family, args.seq, args.repeats, not args.no_inductor))
    print(table(rows, not args.no_inductor))


if __name__ == "__main__":
    main()

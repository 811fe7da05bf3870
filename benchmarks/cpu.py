"""The C backend's benchmark suite: every example block plus the kernel yardsticks.

    python benchmarks/cpu.py [--quick] [--only NAME ...]

For each case it times eager PyTorch, torch.compile (Inductor) and llmc in one
process (llmc.bench) and prints the table, then a summary of the project's
CPU bars: blocks prefill <= 0.75x and decode <= 0.5x the faster of eager and
Inductor, GEMM 1024^3 >= 85% of the measured FMA peak, LayerNorm and softmax
beyond the LLC (sized from the host's) >= 80% of the measured memory bandwidth (both ceilings timed in
rotation with the kernel, one probe pass between its runs: a shared host's bandwidth moves by a third within
an hour; the cached probe's figure is printed beside), cold compile <= 1/5 of
Inductor's and warm compile <= 0.5 s; on hosts with AMX, bf16 prefill <= 0.8x the faster of eager bf16
and Inductor bf16. Hosts with bf16 products (AMX, or AVX512_BF16's vdpbf16ps) also run the bf16 blocks
(without AMX, no bar) and an fp32 block with --matmul-precision bf16 against eager and Inductor allowed the
same (torch.set_float32_matmul_precision("medium"): oneDNN's bf16 products). Quantized prefill (int8
activations: AMX int8 tiles or vpdpbusd where the host has them) runs against the float model in eager and
Inductor and against torch's dynamic int8 quantization (no bar).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from llmc.bench import bench  # noqa: E402
from llmc.target import get_target, host_has_amx_bf16, host_has_bf16_dot  # noqa: E402


class Gemm(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.proj = torch.nn.Linear(n, n, bias=False)

    def forward(self, x):
        return self.proj(x)


class Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


def cases(quick: bool):
    import gpt2_block
    import gpt2_decode
    import llama_block
    import llama_decode

    torch.manual_seed(0)
    # beyond the host's last-level cache: input and output each twice its size (16384 rows on a 32 MiB LLC)
    llc = get_target("cpu").llc_bytes
    rows = 4096 if quick else max(16384, 2 * llc // (1024 * 4))
    yield "gpt2_block prefill T=128", "prefill", gpt2_block.model, gpt2_block.example_inputs
    yield "llama_block prefill T=128", "prefill", llama_block.model, llama_block.example_inputs
    yield "gpt2 decode (KV 512)", "decode", gpt2_decode.model, gpt2_decode.example_inputs
    yield "llama decode (KV 512)", "decode", llama_decode.model, llama_decode.example_inputs
    if host_has_bf16_dot(get_target("cpu").lanes):
        for name, module in (("gpt2_block", gpt2_block), ("llama_block", llama_block)):
            bf16 = copy.deepcopy(module.model).to(torch.bfloat16)
            inputs = tuple(x.to(torch.bfloat16) for x in module.example_inputs)
            yield f"{name} prefill T=128 bf16", "bf16", bf16, inputs
        yield "gpt2_block prefill T=128 fp32, matmul precision bf16", "medium", gpt2_block.model, gpt2_block.example_inputs
    for name, module, fmt in (("gpt2_block", gpt2_block, "int8:a8"), ("llama_block", llama_block, "int4:32:a8")):
        yield f"{name} prefill T=128 {fmt}", f"quantized {fmt}", module.model, module.example_inputs
    yield "GEMM 1024^3", "gemm", Gemm(1024).eval(), (torch.randn(1, 1024, 1024),)
    yield f"LayerNorm {rows}x1024", "bandwidth", torch.nn.LayerNorm(1024).eval(), (torch.randn(1, rows, 1024),)
    yield f"softmax {rows}x1024", "bandwidth", Softmax(), (torch.randn(1, rows, 1024),)


def torch_int8(model, inputs) -> dict:
    """torch's own int8 linears for a quantized case: dynamic quantization (int8 weights per channel, each
    input rounded to int8 per tensor at run time; fbgemm / oneDNN kernels), in eager."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    return {"torch int8": lambda: quantized(*inputs)}


def verdict(kind: str, result) -> str:
    llmc = result.get("llmc")
    best = result.best_torch_ms()
    ratio = llmc.median_ms / best
    if kind == "prefill":
        return f"llmc / best(eager, inductor) = {ratio:.2f} (bar <= 0.75): {'met' if ratio <= 0.75 else 'NOT met'}"
    if kind == "bf16":
        if not host_has_amx_bf16(get_target("cpu").lanes):
            return f"llmc / best(eager, inductor) = {ratio:.2f} (vdpbf16ps, no AMX: the bar of 0.80 is for AMX hosts)"
        return f"llmc / best(eager, inductor) = {ratio:.2f} (bar <= 0.80): {'met' if ratio <= 0.8 else 'NOT met'}"
    if kind == "medium":
        return f"llmc / best(eager, inductor), all allowed bf16 products = {ratio:.2f}"
    if kind.startswith("quantized"):
        over_fp32 = llmc.median_ms / min(result.get("eager").median_ms, result.get("inductor").median_ms
                                          if result.get("inductor") else float("inf"))
        int8 = result.get("torch int8")
        return (f"llmc / best fp32 (eager, inductor) = {over_fp32:.2f}"
                + (f"; llmc / torch int8 dynamic = {llmc.median_ms / int8.median_ms:.2f}" if int8 else "") + " (no bar)")
    if kind == "decode":
        # what the step's bytes take at the copy bandwidth measured in the same rounds: the time of a step
        # whose data all comes from memory (in rotation the contenders between two of llmc's steps evict it)
        copy_gbs = result.alongside[1] if result.alongside else result.peak_gbs
        floor = result.bytes / (copy_gbs * 1e6)
        return (f"llmc / best(eager, inductor) = {ratio:.2f} (bar <= 0.50): {'met' if ratio <= 0.5 else 'NOT met'}; "
                f"its {result.bytes / 1e6:.1f} MB at the {copy_gbs:.1f} GB/s copy bandwidth measured alongside take "
                f"{floor:.2f} ms = {floor / best:.2f}x best")
    # kernel bars: llmc's kernel time in steady state (outputs reused, so no first-touch page faults), over the
    # probe's ceiling timed in rotation with it (the same rounds of a shared host); the cached probe's in brackets
    compute, bandwidth = result.shares_alongside()
    if kind == "gemm":
        cached = result.flops / (result.kernel_ms * 1e6) / result.peak_gflops
        speedup = result.get("eager").median_ms / llmc.median_ms  # eager's linear is one torch.mm (oneDNN/MKL)
        return (f"GEMM kernel at {100 * compute:.0f}% of the FMA peak measured alongside ({100 * cached:.0f}% of the "
                f"cached probe's) (bar >= 85%): {'met' if compute >= 0.85 else 'NOT met'}"
                f"; {speedup:.2f}x torch.mm (bar >= 1.1): {'met' if speedup >= 1.1 else 'NOT met'}")
    cached = result.bytes / (result.kernel_ms * 1e6) / result.peak_gbs
    return (f"kernel at {100 * bandwidth:.0f}% of the copy bandwidth measured alongside ({100 * cached:.0f}% of the "
            f"cached probe's) (bar >= 80%): {'met' if bandwidth >= 0.8 else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller bandwidth cases, fewer repeats")
    parser.add_argument("--only", nargs="*", help="run the cases whose title contains one of these words")
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--remeasure-peak", action="store_true", help="re-run the machine probe first")
    args = parser.parse_args()
    repeats = args.repeats or (10 if args.quick else 50)
    summary = []
    remeasure = args.remeasure_peak
    for title, kind, model, inputs in cases(args.quick):
        if args.only and not any(word in title for word in args.only):
            continue
        precision = "bf16" if kind == "medium" else "f32"
        quantize = kind.split()[1] if kind.startswith("quantized") else None
        torch.set_float32_matmul_precision("medium" if kind == "medium" else "highest")
        result = bench(model, inputs, title, repeats=repeats, inductor=not args.no_inductor, remeasure_peak=remeasure,
                       log=lambda message: print(message, file=sys.stderr, flush=True), matmul_precision=precision,
                       quantize=quantize, others=torch_int8(model, inputs) if quantize else None)
        torch.set_float32_matmul_precision("highest")
        remeasure = False
        print(result.format() + "\n", flush=True)
        line = f"{title}: {verdict(kind, result)}"
        inductor, llmc = result.get("inductor"), result.get("llmc")
        if kind in ("prefill", "bf16") and inductor and inductor.compile_s:
            line += (f"; cold compile llmc {llmc.compile_s:.2f} s vs inductor {inductor.compile_s:.2f} s "
                     f"({llmc.compile_s / inductor.compile_s:.2f}), warm {result.llmc_warm_s:.2f} s")
        summary.append(line)
    print("summary\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

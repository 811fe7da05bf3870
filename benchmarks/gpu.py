"""GPU benchmark of the Triton backend: eager, torch.compile (Inductor) and llmc side by side.

    python benchmarks/gpu.py [--only WORD ...] [--repeats N]

Cases: GEMM 4096^3 against torch.mm (cuBLAS), causal attention (batch 4, 32
heads, T=4096, head dim 128) against F.scaled_dot_product_attention, and the
GPT-2 / LLaMA blocks at prefill T=2048 and one decode step. Contenders are
timed in rotation with CUDA events; medians and ratios are printed. llmc
compiles float32 graphs; bf16/fp16 cases are reported as unsupported until the
exporter and the tile IR carry those types.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


class MatMul(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


class CausalAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def cases():
    import gpt2_block
    import gpt2_decode
    import llama_block
    import llama_decode

    n = 4096
    yield "GEMM 4096^3 fp32 (vs torch.mm / cuBLAS)", MatMul(), (torch.randn(n, n), torch.randn(n, n))
    shape = (4, 32, 4096, 128)
    yield "causal attention B4 H32 T4096 D128 fp32 (vs SDPA)", CausalAttention(), tuple(torch.randn(shape) for _ in range(3))
    yield "gpt2 block prefill T=2048", *gpt2_block.build(seq=2048)
    yield "llama block prefill T=2048", *llama_block.build(seq=2048)
    yield "gpt2 decode (KV 512)", gpt2_decode.model, gpt2_decode.example_inputs
    yield "llama decode (KV 512)", llama_decode.model, llama_decode.example_inputs


def cuda_medians(runs: dict, repeats: int) -> dict[str, float]:
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        torch.cuda.synchronize()
        for _ in range(repeats):
            for name, fn in runs.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU; on a CPU use benchmarks/cpu.py", file=sys.stderr)
        return 2
    import llmc

    print(f"device: {torch.cuda.get_device_name()}")
    for title, model, inputs in cases():
        if args.only and not any(word in title for word in args.only):
            continue
        compiled = llmc.compile(model.eval(), inputs, target="triton", emit=lambda *_: None)  # exports on the CPU
        model = copy.deepcopy(model).cuda()
        inputs = tuple(x.cuda() for x in inputs)
        inductor = torch.compile(model)
        runs = {name: (lambda fn=fn, args=inputs: fn(*args))
                for name, fn in (("eager", model), ("inductor", inductor), ("llmc", compiled))}
        medians = cuda_medians(runs, args.repeats)
        best = min(medians["eager"], medians["inductor"])
        print(f"{title}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items())
              + f"; llmc / best = {medians['llmc'] / best:.2f}", flush=True)
    print("bf16/fp16: not supported by llmc yet (the exporter accepts float32 graphs only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark of the Triton backend: eager, torch.compile (Inductor) and llmc side by side.

    python benchmarks/gpu.py [--dtypes bf16,fp16,fp32] [--only WORD ...] [--repeats N] [--pipelining both]
    TRITON_INTERPRET=1 python benchmarks/gpu.py --smoke     # tiny shapes on the CPU: checks the script runs

Cases, per dtype: GEMM 4096^3 against torch.mm (cuBLAS), causal attention
(batch 4, 32 heads, T=4096, head dim 128) against F.scaled_dot_product_attention
(flash for 16-bit), the GPT-2 / LLaMA blocks at prefill T=2048, and one decode
step each. Contenders are timed in rotation with CUDA events, medians printed:
eager, Inductor, llmc as compiled by default (`llmc`: the K/KV loops handed to
Triton's pipeliner, `tl.range(num_stages=N)`) and, with `--pipelining both`,
llmc with its own explicit prologue/body/epilogue (`llmc-explicit`, Triton's
pipeliner off) — the comparison that decides the default. Decode steps are
also replayed as CUDA graphs (llmc and Inductor "reduce-overhead"), since a
step's kernels are shorter than Python's launch overhead; their bytes moved
over time is compared with a device-to-device copy. Bars of the Triton
backend's issue are checked and printed at the end.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:  # Triton reads this when first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class MatMul(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


class CausalAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def cases(smoke: bool):
    """(key, title, model, inputs) in float32 on the CPU; the caller casts and moves them."""
    import gpt2_block
    import gpt2_decode
    import llama_block
    import llama_decode

    n = 64 if smoke else 4096
    yield "gemm", f"GEMM {n}^3 (vs torch.mm / cuBLAS)", MatMul(), (torch.randn(n, n), torch.randn(n, n))
    shape = (1, 2, 64, 32) if smoke else (4, 32, 4096, 128)
    yield "attention", f"causal attention B{shape[0]} H{shape[1]} T{shape[2]} D{shape[3]} (vs SDPA)", \
        CausalAttention(), tuple(torch.randn(shape) for _ in range(3))
    block = dict(d_model=64, n_head=4, seq=32) if smoke else dict(seq=2048)
    yield "prefill", f"gpt2 block prefill T={block['seq']}", *gpt2_block.build(**block)
    llama = dict(d_model=64, n_head=4, n_kv_head=2, hidden=96, seq=32) if smoke else dict(seq=2048)
    yield "prefill", f"llama block prefill T={llama['seq']}", *llama_block.build(**llama)
    decode = dict(d_model=64, n_head=4, past=31) if smoke else dict(past=512)
    yield "decode", f"gpt2 decode step (KV {decode['past']})", *gpt2_decode.build(**decode)
    llama_dec = dict(d_model=64, n_head=4, n_kv_head=2, hidden=96, past=31) if smoke else dict(past=512)
    yield "decode", f"llama decode step (KV {llama_dec['past']})", *llama_decode.build(**llama_dec)


def median_ms(runs: dict, repeats: int, device: str) -> dict[str, float]:
    """Every contender once to warm up, then `repeats` rounds in rotation; medians in milliseconds."""
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        sync(device)
        for _ in range(repeats):
            for name, fn in runs.items():
                if device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize()
                    times[name].append(start.elapsed_time(end))
                else:
                    begin = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - begin) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cuda_graphed(fn, inputs):
    """Replay `fn(*inputs)` as a CUDA graph (static inputs, as a serving loop's decode step has)."""
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*inputs)
    return graph.replay


def copy_bandwidth_gbs(device: str, repeats: int) -> float:
    """What a device-to-device copy of 1 GiB reaches (read + write bytes per second)."""
    count = (1 << 30) // 4
    src, dst = torch.empty(count, device=device), torch.empty(count, device=device)
    ms = median_ms({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * count * 4 / (ms * 1e-3) / 1e9


def bytes_moved(compiled) -> int:
    """What the compiled kernels must read and write at least: the cost model's bytes, summed."""
    from llmc.cost_model import kernel_cost
    from llmc.dialects import kernel

    fused = compiled.runner.snapshots.get("fuse") or compiled.runner.snapshots.get("tile")
    return sum(kernel_cost(op).bytes for op in fused.walk() if isinstance(op, kernel.KernelOp))


def compile_llmc(model, inputs, pipelining: str):
    import llmc
    from llmc.registry import default_pipeline

    passes = default_pipeline("gpu")
    if pipelining == "explicit":
        passes = passes.replace("pipeline{mode=delegate}", "pipeline{mode=expand}")
    return llmc.compile(model, inputs, target="triton", passes=passes, emit=lambda *_: None)


def run_case(key, title, model, inputs, dtype, args, device, results):
    model = model.eval().to(dtype)
    # only float inputs take the case's dtype: a decode step's position stays an integer index
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    with torch.no_grad():
        expected = model(*inputs)  # on the CPU: the reference the llmc outputs are checked against
    compiled = {"llmc": compile_llmc(model, inputs, "delegate")}  # exports on the CPU, runs on `device`
    if args.pipelining == "both":
        compiled["llmc-explicit"] = compile_llmc(model, inputs, "explicit")
    # the compiled graphs read and write the model's buffers (a KV cache): they live where the kernels run
    eager = copy.deepcopy(model).to(device)
    model.to(device)
    inputs = tuple(x.to(device) for x in inputs)
    for name, fn in compiled.items():
        got = fn(*inputs)
        got = got[0] if isinstance(got, tuple) else got
        want = expected[0] if isinstance(expected, tuple) else expected
        error = float((got.float().cpu() - want.float()).abs().max())
        print(f"  {name}: max abs error vs eager on the CPU {error:.3g}", flush=True)
    runs = {"eager": eager}
    if not args.smoke:
        runs["inductor"] = torch.compile(eager)
    runs.update(compiled)
    timed = {name: (lambda fn=fn: fn(*inputs)) for name, fn in runs.items()}
    if key == "decode" and device == "cuda":
        timed["inductor-cudagraphs"] = lambda fn=torch.compile(eager, mode="reduce-overhead"): fn(*inputs)
        timed["llmc-cudagraph"] = cuda_graphed(compiled["llmc"], inputs)
    medians = median_ms(timed, args.repeats, device)
    faster = min(v for k, v in medians.items() if not k.startswith("llmc"))
    print(f"{title} {dtype_name(dtype)}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items())
          + f"; llmc / fastest of the others = {medians['llmc'] / faster:.2f}", flush=True)
    results[(key, title, dtype)] = (medians, compiled["llmc"])


def dtype_name(dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def verdicts(results, copy_gbs: float) -> None:
    print("\nbars (16-bit cases):")
    for (key, title, dtype), (medians, compiled) in results.items():
        if dtype == torch.float32:
            continue
        if key in ("gemm", "attention"):
            speed = medians["eager"] / medians["llmc"]
            bar = 0.9 if key == "gemm" else 0.8
            print(f"  {title} {dtype_name(dtype)}: {speed:.2f}x of {'cuBLAS' if key == 'gemm' else 'SDPA'} "
                  f"(bar >= {bar}) {'met' if speed >= bar else 'NOT met'}")
        elif key == "prefill" and "inductor" in medians:
            ratio = medians["llmc"] / medians["inductor"]
            print(f"  {title} {dtype_name(dtype)}: {ratio:.2f}x Inductor's time (bar <= 1.0) "
                  f"{'met' if ratio <= 1.0 else 'NOT met'}")
        elif key == "decode":
            ms = medians.get("llmc-cudagraph", medians["llmc"])
            gbs = bytes_moved(compiled) / (ms * 1e-3) / 1e9
            share = gbs / copy_gbs
            print(f"  {title} {dtype_name(dtype)}: {gbs:.0f} GB/s = {share:.0%} of the copy's {copy_gbs:.0f} GB/s "
                  f"(bar >= 80%) {'met' if share >= 0.8 else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bf16,fp16,fp32", help="comma-separated: bf16, fp16, fp32")
    parser.add_argument("--only", nargs="*", help="run the cases whose title contains one of these words")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pipelining", choices=("default", "both"), default="both",
                        help="both: also time llmc's explicit prologue/body/epilogue against Triton's num_stages")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = parser.parse_args()
    unknown = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype {unknown[0]}; choose from {', '.join(DTYPES)}")
    if args.smoke:
        device = "cpu"
        args.repeats = min(args.repeats, 2)
    elif torch.cuda.is_available():
        device = "cuda"
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print("benchmarks/gpu.py needs a CUDA GPU (or --smoke); on a CPU use benchmarks/cpu.py", file=sys.stderr)
        return 2
    results = {}
    for name in args.dtypes.split(","):
        for key, title, model, inputs in cases(args.smoke):
            if args.only and not any(word in title for word in args.only):
                continue
            run_case(key, title, model, inputs, DTYPES[name], args, device, results)
    if args.smoke:
        print("smoke run: every case compiled, ran and was checked; the bars are for a GPU run")
        return 0
    verdicts(results, copy_bandwidth_gbs(device, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())

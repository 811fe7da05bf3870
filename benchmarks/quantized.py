"""Low-precision decode benchmark: one greedy decode step of a model whose weights are far beyond the
last-level cache, llmc fp32 / bf16 / int8 / int4 (and int4 with int8 activations) side by side (and eager, and torchao's int8
weight-only quantization when torchao is installed), timed in rotation in one process.

TinyLlama-1.1B's geometry (d=2048, 32 heads, 4 KV heads, FFN 5632; random weights), a static KV cache
at position --position. Prints the median step time of each contender, the weight bytes it streams
(codes and scales for quantized ones), GB/s against the measured main-memory read bandwidth, and the
bars: int8 >= 3.2x and int4 (groups of 32) >= 5x faster than llmc fp32, each >= 85% of the read
bandwidth, bf16 >= 1.8x faster than fp32.

    python benchmarks/quantized.py [--layers 4] [--position 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmc.generation import compile_generation, generation_model, step_inputs
from llmc.serving import builtin_model, measured_read_bandwidth, streamed_bytes
from llmc.target import host_cpu_name, host_cpu_target


def decode_inputs(batch: int, position: int, max_len: int):
    ids = torch.zeros(batch, 1, dtype=torch.long)
    mask, _ = step_inputs(ids, None, max_len)
    return ids, torch.tensor([position]), mask, torch.full((batch, 1), position)


def torchao_step(model, max_len: int):
    """The same model with torchao's int8 weight-only linears under torch.compile (Inductor then calls
    aten._weight_int8pack_mm); None where torchao is not installed."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    import copy

    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig())
    lm = generation_model(quantized, 1, max_len)
    return lm, torch.compile(lm, dynamic=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--position", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--formats", default="int8,int8:a8,int4,int4:32:a8")
    args = parser.parse_args()
    max_len = args.position + 8
    model = builtin_model("tinyllama", args.layers)
    read_gbs = measured_read_bandwidth()
    llc = host_cpu_target().llc_bytes
    inputs = decode_inputs(1, args.position, max_len)
    contenders: dict[str, tuple] = {}  # name -> (step, weight bytes)

    lm32 = generation_model(model, 1, max_len)
    contenders["eager fp32"] = (lm32, streamed_bytes(lm32, args.position)[0])
    contenders["llmc fp32"] = (compile_generation(lm32, 1).decode, streamed_bytes(lm32, args.position)[0])
    for fmt in args.formats.split(","):
        contenders[f"llmc {fmt}"] = (compile_generation(lm32, 1, quantize=fmt).decode,
                                     streamed_bytes(lm32, args.position, fmt)[0])
    model16 = builtin_model("tinyllama", args.layers).to(torch.bfloat16)
    lm16 = generation_model(model16, 1, max_len)
    contenders["eager bf16"] = (lm16, streamed_bytes(lm16, args.position)[0])
    contenders["llmc bf16"] = (compile_generation(lm16, 1).decode, streamed_bytes(lm16, args.position)[0])
    ao = torchao_step(model, max_len)
    if ao is not None:
        contenders["torchao int8 + Inductor"] = (ao[1], streamed_bytes(lm32, args.position, "int8")[0])

    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.no_grad():
        for step, _ in contenders.values():  # warm-up (and torch.compile's compile)
            step(*inputs)
        for _ in range(args.steps):
            for name, (step, _) in contenders.items():
                begin = time.perf_counter()
                step(*inputs)
                times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{host_cpu_name()}, {torch.get_num_threads()} threads; LLC {llc / 2**20:.0f} MiB; "
          f"read bandwidth {read_gbs:.1f} GB/s; TinyLlama geometry, {args.layers} layers, decode at position "
          f"{args.position}; medians of {args.steps} steps in rotation\n")
    print("| contender | step ms | weight MB | weights / LLC | GB/s | % of read bw | x faster than llmc fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = medians["llmc fp32"]
    for name, (_, weights) in contenders.items():
        gbs = weights / medians[name] / 1e9
        print(f"| {name} | {medians[name] * 1e3:.2f} | {weights / 1e6:.1f} | {weights / llc:.1f} | {gbs:.1f} | "
              f"{100 * gbs / read_gbs:.0f}% | {base / medians[name]:.2f} |")
    print("\nbars:")
    for name, bar in (("llmc int8", 3.2), ("llmc int8:a8", 3.2), ("llmc int4", 5.0), ("llmc int4:32:a8", 5.0),
                      ("llmc bf16", 1.8)):
        if name in medians:
            gbs = contenders[name][1] / medians[name] / 1e9
            print(f"  {name}: {base / medians[name]:.2f}x faster than llmc fp32 (>= {bar}); "
                  f"{100 * gbs / read_gbs:.0f}% of read bandwidth{' (>= 85%)' if 'int' in name else ''}")
    if "torchao int8 + Inductor" in medians:
        print(f"  llmc int8 / torchao int8 + Inductor step time: {medians['llmc int8'] / medians['torchao int8 + Inductor']:.2f}")


if __name__ == "__main__":
    main()

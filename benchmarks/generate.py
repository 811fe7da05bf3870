"""Generation benchmark: greedy decoding of a model whose weights are far beyond the last-level cache.

TinyLlama-1.1B's geometry (d=2048, 32 heads, 4 KV heads, FFN 5632; fp32 ~176 MB per layer,
random weights), a 512-token prompt, eager / Inductor / llmc in one process. Prints each
batch's serving table, then the bars: llmc's batch-1 decode step at >= 90% of the measured
main-memory read bandwidth and <= 0.9x the faster of eager's and Inductor's TPOT, TTFT <= 0.9x,
and batch 8's TPOT within 1.5x of batch 1's.

    python benchmarks/generate.py [--layers 4] [--prompt-len 512] [--new-tokens 32] [--batches 1,8] [--rounds 3]
"""

from __future__ import annotations

import argparse

from llmc.serving import builtin_model, compare, measured_read_bandwidth
from llmc.target import host_cpu_name, host_cpu_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--family", default="tinyllama")
    parser.add_argument("--rounds", type=int, default=3, help="generations per contender, in rotation")
    args = parser.parse_args()
    model = builtin_model(args.family, args.layers)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    llc = host_cpu_target().llc_bytes
    read_gbs = measured_read_bandwidth()
    print(f"{host_cpu_name()}: LLC {llc / 2**20:.0f} MiB; model weights {weights / 2**20:.0f} MiB "
          f"({weights / llc:.1f}x the LLC); read bandwidth {read_gbs:.1f} GB/s\n")
    tpot = {}
    for batch in (int(b) for b in args.batches.split(",")):
        table, runs = compare(model, batch, args.prompt_len, args.new_tokens, read_gbs=read_gbs, rounds=args.rounds)
        print(table + "\n")
        tpot[batch] = runs
    first = tpot[min(tpot)]
    llmc, others = first["llmc"].generation, [r.generation for n, r in first.items() if n != "llmc"]
    print("bars (batch 1):")
    print(f"  TPOT llmc / best other = {llmc.tpot_s / min(g.tpot_s for g in others):.2f} (<= 0.90)")
    print(f"  TTFT llmc / best other = {llmc.ttft_s / min(g.ttft_s for g in others):.2f} (<= 0.90)")
    if len(tpot) > 1:
        small, large = min(tpot), max(tpot)
        last = tpot[large]["llmc"].generation
        print(f"  TPOT batch {large} / batch {small}, from the tables above = {last.tpot_s / llmc.tpot_s:.2f} (<= 1.50)")
        ratio, times = batch_scaling(model, small, large, args.prompt_len + args.new_tokens, args.prompt_len)
        print(f"  TPOT batch {large} / batch {small}, llmc decode steps alternated = {ratio:.2f} (<= 1.50; "
              f"medians {times[0] * 1e3:.2f} / {times[1] * 1e3:.2f} ms)")


def batch_scaling(model, small: int, large: int, max_len: int, position: int, steps: int = 40):
    """llmc's decode step at two batch sizes, timed alternately (the host's speed drifts between the
    tables above); the ratio of the medians."""
    import statistics
    import time

    import torch

    from llmc.generation import compile_generation, generation_model, step_inputs

    graphs = []
    for batch in (small, large):
        lm = generation_model(model, batch, max_len)
        compiled = compile_generation(lm, 1)
        ids = torch.zeros(batch, 1, dtype=torch.long)
        mask, _ = step_inputs(ids, None, max_len)
        graphs.append((compiled.decode, (ids, torch.tensor([position]), mask, torch.full((batch, 1), position))))
    times = ([], [])
    for _ in range(steps):
        for index, (graph, inputs) in enumerate(graphs):
            begin = time.perf_counter()
            graph(*inputs)
            times[index].append(time.perf_counter() - begin)
    medians = [statistics.median(t) for t in times]
    return medians[1] / medians[0], medians


if __name__ == "__main__":
    main()

"""Quantized linears on a GPU: llmc's Triton kernels (int8 / int4 codes dequantized in registers before
tl.dot) against eager (cuBLAS) and Inductor in fp16, at decode and prefill row counts, in one run.

A LLaMA-7B MLP pair with its residual (4096 -> 11008 -> 4096, fp16 model). Times are medians of triton.testing.do_bench;
"weight GB/s" is the bytes of weights each contender streams per call over its time.

    python benchmarks/quantized_gpu.py [--rows 1,16,512] [--formats int8,int4:32,int4:128]
"""

from __future__ import annotations

import argparse

import torch


class MLP(torch.nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):  # with its residual, as in a decoder block (so `down` is no output projection)
        return x + self.down(torch.relu(self.up(x)))


def main() -> None:
    import triton.testing

    import llmc
    from llmc.passes.quantize import quantized_bytes
    from llmc.quantization import QuantFormat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,16,512")
    parser.add_argument("--formats", default="int8,int4:32,int4:128")
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=11008)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MLP(args.d, args.hidden).half().eval()
    gpu = MLP(args.d, args.hidden).half().eval().cuda()
    gpu.load_state_dict(model.state_dict())
    inductor = torch.compile(gpu)
    shapes = [(args.hidden, args.d), (args.d, args.hidden)]
    fp16_bytes = sum(n * k * 2 for n, k in shapes)
    print(f"{torch.cuda.get_device_name()}; MLP {args.d} -> {args.hidden} -> {args.d}, fp16 weights "
          f"{fp16_bytes / 1e6:.1f} MB")
    print("| rows | contender | ms | weight MB | weight GB/s | x best of eager/Inductor (lower is faster) | max abs err vs eager |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(rows, args.d).half()
        xc = x.cuda()
        with torch.no_grad():
            expected = gpu(xc)
            times = {"eager fp16 (cuBLAS)": triton.testing.do_bench(lambda: gpu(xc)),
                     "Inductor fp16": triton.testing.do_bench(lambda: inductor(xc))}
            weights = {name: fp16_bytes for name in times}
            errors = {name: 0.0 for name in times}
            for fmt in ["", *args.formats.split(",")]:
                compiled = llmc.compile(model, (x,), target="triton", quantize=fmt or None, emit=lambda *_: None)
                program = compiled.program
                name = f"llmc {fmt or 'fp16'}"
                times[name] = triton.testing.do_bench(lambda: program(xc))
                errors[name] = float((program(xc)[0].float() - expected.float()).abs().max())
                chosen = QuantFormat.parse(fmt) if fmt else None
                weights[name] = sum(quantized_bytes(s, chosen) if chosen else s[0] * s[1] * 2 for s in shapes)
        best = min(times["eager fp16 (cuBLAS)"], times["Inductor fp16"])
        for name, ms in times.items():
            print(f"| {rows} | {name} | {ms:.4f} | {weights[name] / 1e6:.1f} | {weights[name] / ms / 1e6:.0f} | "
                  f"{ms / best:.2f} | {errors[name]:.3g} |")


if __name__ == "__main__":
    main()

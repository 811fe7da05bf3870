"""What the GPU compiler makes of llmc's Triton kernels, without a GPU: compile them for sm_90 ahead of time.

    python benchmarks/triton_aot.py [--arch 90] [--dtype bf16] [--only WORD ...]

For the cases of benchmarks/gpu.py, every kernel is compiled twice, with the
K/KV loops handed to Triton's pipeliner (`delegate`, the default) and with
llmc's explicit prologue/body/epilogue (`expand`), and the cubin's registers,
local memory (spills), shared memory and tensor-core / async-copy
instructions are printed side by side. This is static evidence, not a timing:
benchmarks/gpu.py on a GPU is what decides.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from gpu import DTYPES, cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, 90 for H100/H200")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--only", nargs="*", help="the cases whose title contains one of these words")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes")
    args = parser.parse_args()

    import llmc
    from llmc.backends.triton.aot import compile_for_gpu
    from llmc.registry import default_pipeline

    dtype = DTYPES[args.dtype]
    for _, title, model, inputs in cases(args.smoke):
        if args.only and not any(word in title for word in args.only):
            continue
        model = model.eval().to(dtype)
        inputs = tuple(x.to(dtype) for x in inputs)
        print(f"{title} {args.dtype}, sm_{args.arch}:")
        for mode in ("delegate", "expand"):
            passes = default_pipeline("gpu").replace("mode=delegate", f"mode={mode}")
            compiled = llmc.compile(model, inputs, target="gpu", backend="interpret", passes=passes,
                                    emit=lambda *_: None)
            for binary in compile_for_gpu(compiled.module, args.arch):
                print(f"  {mode:<8} {binary.format()}", flush=True)
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())

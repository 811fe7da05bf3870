"""Build the generated C of every example with AddressSanitizer and UndefinedBehaviorSanitizer, run it and
compare with eager. Odd sizes put every kernel's edge tiles (masked tails) to work; an out-of-bounds read
or undefined behaviour aborts the run with the sanitizer's report.

Run by tests/backends/test_sanitizers.py in a process of its own: an instrumented library loads only into
a process that starts with the sanitizer runtimes preloaded (LD_PRELOAD), which that test arranges.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import torch

import llmc
from llmc.backends.c.build import DEFAULT_FLAGS, BuildOptions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
# odd sizes: every kernel has a partial last tile in rows and in columns
ODD = {
    "gpt2_block": dict(d_model=40, n_head=4, seq=13),
    "gpt2_block_sdpa": dict(d_model=40, n_head=4, seq=13),
    "llama_block": dict(d_model=40, n_head=4, n_kv_head=2, hidden=72, seq=11),
    "gpt2_decode": dict(d_model=40, n_head=4, past=9),
    "llama_decode": dict(d_model=40, n_head=4, n_kv_head=2, hidden=72, past=9),
    "tiny_lm": dict(prompt_len=7),
}

# (format, prompt length): 7 rows take the decode-sized kernels, 21 the prefill-sized ones (AMX int8 tiles
# with int8 activations where the host has them)
QUANTIZED = (("int8", 7), ("int4:32:a8", 7), ("int4:64:asym", 7), ("int4:32:a8", 21), ("int8:a8", 21))


def main(names: list[str]) -> int:
    sys.path.insert(0, str(EXAMPLES))
    failed = 0
    with tempfile.TemporaryDirectory(prefix="llmc-sanitized-") as cache:
        build = BuildOptions(flags=(*[f for f in DEFAULT_FLAGS if f != "-O3"], "-O1", *SANITIZE), cache_dir=Path(cache))
        for name in names or list(ODD):
            model, inputs = importlib.import_module(name).build(**ODD[name])
            args = inputs if isinstance(inputs, tuple) else ()
            kwargs = inputs if isinstance(inputs, dict) else {}
            with torch.no_grad():
                expected = model(*args, **kwargs)
            compiled = llmc.compile(model, inputs, build=build, emit=lambda *_: None)
            library = compiled.program.build.library.read_bytes()
            assert b"__asan_report_load" in library and b"__ubsan_handle" in library, "not instrumented"
            got = compiled(*args, **kwargs)
            pairs = zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected))
            error = max(float((g.float() - e.float()).abs().max()) for g, e in pairs)
            ok = error < 1e-3
            failed += not ok
            print(f"{name}: ran sanitized, max abs error vs eager {error:.2e} {'OK' if ok else 'MISMATCH'}", flush=True)
        for fmt, prompt in QUANTIZED:  # the dequantizing and integer-dot kernels, against llmc's interpreter
            model, inputs = importlib.import_module("tiny_lm").build(prompt_len=prompt)
            reference = llmc.compile(model, inputs, backend="interpret", quantize=fmt, emit=lambda *_: None)
            compiled = llmc.compile(model, inputs, build=build, quantize=fmt, emit=lambda *_: None)
            error = float((compiled(*inputs) - reference(*inputs)).abs().max())
            ok = error < 1e-3
            failed += not ok
            print(f"tiny_lm {fmt} T={prompt}: ran sanitized, max abs error vs the interpreter {error:.2e} "
                  f"{'OK' if ok else 'MISMATCH'}", flush=True)
        # bf16: the matrix-unit kernels where the host has them (matrix.h), against the interpreter
        model, inputs = importlib.import_module("gpt2_block").build(**ODD["gpt2_block"])
        model, inputs = model.to(torch.bfloat16), tuple(x.to(torch.bfloat16) for x in inputs)
        reference = llmc.compile(model, inputs, backend="interpret", emit=lambda *_: None)(*inputs).float()
        got = llmc.compile(model, inputs, build=build, emit=lambda *_: None)(*inputs).float()
        ok = float((got - reference).abs().max()) <= 2.0**-7 * float(reference.abs().max())
        failed += not ok
        print(f"gpt2_block bf16: ran sanitized, {'OK' if ok else 'MISMATCH'} against the interpreter", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

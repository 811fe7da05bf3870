"""Differential fuzzing of whole graphs: random programs (tests/fuzz/programs.py) compiled by llmc and
compared with eager PyTorch. Programs are batched, many to a model, so that one export and one C build
check many graphs; a failing batch shrinks (hypothesis) to one small program, which goes into
test_regressions.py once fixed."""

from __future__ import annotations

import pytest
import torch
from fuzz_counts import COUNTS
from hypothesis import given, settings
from hypothesis import strategies as st
from programs import Batch, make_inputs, programs

import llmc

SCALE = 20  # --fuzz-long multiplies the examples by this


def examples(request, n: int) -> int:
    return n * SCALE if request.config.getoption("--fuzz-long") else n


def check_programs(batch, backend: str = "c", target: str = "cpu") -> None:
    """Compile the programs as one model and compare each program's outputs with eager."""
    model = Batch(list(batch))
    flat = [t for k, p in enumerate(batch) for t in make_inputs(p, seed=k)]
    with torch.no_grad():
        expected = model(*flat)
    compiled = llmc.compile(model, tuple(flat), target=target, backend=backend, emit=lambda *_: None)
    got = compiled(*flat)
    at = 0
    for k, program in enumerate(batch):
        for _ in program.outputs:
            e, g = expected[at], got[at]
            scale = max(1.0, float(e.float().abs().max())) if e.numel() and e.is_floating_point() else 1.0
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * scale, equal_nan=True,
                                       msg=lambda m, k=k, p=program: f"program {k} of the batch, {p!r}:\n{m}")
            at += 1


def test_random_graphs_on_the_c_backend(request):
    @settings(max_examples=examples(request, 20))
    @given(st.lists(programs(), min_size=50, max_size=50))
    def run(batch):
        check_programs(batch)
        COUNTS["graphs compiled to C and compared with eager"] += len(batch)

    run()


def test_random_graphs_on_the_triton_backend(request):
    """A sample under TRITON_INTERPRET=1: the interpreter is slow, so fewer and smaller programs."""
    @settings(max_examples=examples(request, 8))
    @given(st.lists(programs(max_steps=3), min_size=6, max_size=6))
    def run(batch):
        check_programs(batch, backend="triton", target="triton")
        COUNTS["graphs compiled to Triton (interpreted) and compared with eager"] += len(batch)

    pytest.importorskip("triton")
    run()

"""Functions of the C runtime (runtime.h) at every vector width the backend generates, in a harness that includes
the runtime as a generated source does.

`vexp` (behind softmax, attention, SiLU and GELU): within 1.5 ulp of exp in float64 wherever the result is a normal
float, and exactly 0 at and below -88 and for -inf (masked scores), so a masked row never makes denormals.
`vsigmoid`, `vtanh` and the two GELUs (the activations fused into linears): close to float64 over the whole float
range, and no denormal result, where a denormal operand costs a microcode assist in the linear's epilogue.
`llmc_pack_transposed` (attention's K^T): the transpose of the view with zeros past it, whole 8x8 blocks in
registers on AVX2 and the rest column by column."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from llmc.backends.c.build import find_compiler

HARNESS = """
#define LLMC_W {lanes}
#define LLMC_SPLAT(s) {{{splat}}}
{runtime}
void exp_all(const float *x, float *y, long n) {{
    for (long i = 0; i < n; i += LLMC_W) vstore(y + i, vexp(vload(x + i)));
}}
void activation_all(int which, const float *x, float *y, long n) {{
    for (long i = 0; i < n; i += LLMC_W) {{
        vf v = vload(x + i);
        vstore(y + i, which == 0 ? vsigmoid(v) : which == 1 ? vtanh(v) : which == 2 ? vgelu_tanh(v) : vgelu_erf(v));
    }}
}}
void pack_transposed(float *dst, long ld, const float *base, long r0, long c0, long rows, long cols, long height,
                     long width, long s1) {{
    llmc_pack_transposed(dst, ld, base, r0, c0, rows, cols, height, width, s1);
}}
"""


def harness(tmp_path, lanes: int):
    """The runtime as a generated source includes it, with `exp_all` and `pack_transposed` at `lanes` lanes."""
    runtime = resources.files("llmc.backends.c").joinpath("runtime.h").read_text()
    source = tmp_path / f"runtime{lanes}.c"
    source.write_text(HARNESS.format(lanes=lanes, splat=", ".join(["s"] * lanes), runtime=runtime))
    return source


def build(tmp_path, lanes: int) -> ctypes.CDLL:
    source = harness(tmp_path, lanes)
    library = tmp_path / f"runtime{lanes}.so"
    # -march=native: 16 lanes on a host without AVX-512 are GCC's generic vectors, the table read lane by lane
    subprocess.run([find_compiler(os.environ.get("CC", "cc")), "-O2", "-march=native", "-fno-math-errno", "-fno-trapping-math",
                    "-std=gnu11", "-w", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


@pytest.mark.parametrize("lanes", [1, 4, 8, 16])
def test_vexp_is_within_an_ulp_and_a_half_and_flushes_masked_scores_to_zero(tmp_path, lanes):
    exp_all = build(tmp_path, lanes).exp_all
    rng = np.random.default_rng(lanes)
    x = np.concatenate([rng.uniform(-87.3, 88.3, 1 << 20), rng.uniform(-1, 1, 1 << 18),
                        np.log(2) * np.arange(-125, 127), np.log(2) * np.arange(-125, 127) + 1e-3,
                        [0.0, -0.0, 1.0, -1.0, 88.3, 88.37, -88.0, -100.0, -1e30, -np.inf]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)])
    y = np.empty_like(x)
    pointer = ctypes.POINTER(ctypes.c_float)
    exp_all(x.ctypes.data_as(pointer), y.ctypes.data_as(pointer), ctypes.c_long(x.size))

    exact = np.exp(x.astype(np.float64))
    normal = (exact >= np.finfo(np.float32).tiny) & (x <= 88.3)
    ulps = np.abs(y[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert ulps.max() <= 1.5, f"{ulps.max():.2f} ulp at x = {x[normal][ulps.argmax()]}"
    assert y[x == 0].tolist() == [1.0] * int((x == 0).sum())
    assert (y[x <= -88] == 0).all() and np.isfinite(y).all()


def _gelu_erf(x):
    from math import erfc, sqrt

    return x * 0.5 * np.vectorize(erfc)(-x / sqrt(2.0))


def _sigmoid(x):  # in float64 without cancelling or overflowing: e^-|x| is at most 1
    return np.where(x < 0, np.exp(-np.abs(x)), 1.0) / (1.0 + np.exp(-np.abs(x)))


ACTIVATIONS = {  # name: (index in activation_all, float64 reference, relative tolerance, absolute tolerance)
    "sigmoid": (0, _sigmoid, 4e-7, 0.0),
    "tanh": (1, np.tanh, 3e-7, 0.0),
    "gelu_tanh": (2, lambda x: x * _sigmoid(2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)), 2e-6, 1e-7),
    "gelu_erf": (3, _gelu_erf, 4e-6, 5e-7),
}


@pytest.mark.parametrize("lanes", [1, 4, 8, 16])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_are_close_to_float64_and_never_denormal(tmp_path, lanes, name):
    """Inputs over the range a linear's pre-activations reach, and far past it. Every output is 0 or a normal float:
    the sigmoid of -100 was 1 / (1 + e^88) = 4e-39, and a tanh GELU used it below x = -10 (its intermediate
    terms are not observable here; the benchmark's epilogue timings are)."""
    which, reference, rtol, atol = ACTIVATIONS[name]
    rng = np.random.default_rng(which * 16 + lanes)
    x = np.concatenate([rng.uniform(-20, 20, 1 << 17), rng.standard_normal(1 << 16) * 100, rng.uniform(-1, 1, 1 << 14),
                        [0.0, -0.0, 1e-30, -1e-30, 0.625, -0.625, 88.0, -88.0, 1e30, -1e30]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)])
    y = np.empty_like(x)
    pointer = ctypes.POINTER(ctypes.c_float)
    build(tmp_path, lanes).activation_all(ctypes.c_int(which), x.ctypes.data_as(pointer), y.ctypes.data_as(pointer),
                                          ctypes.c_long(x.size))
    assert np.isfinite(y).all()
    tiny = np.finfo(np.float32).tiny
    assert not ((y != 0) & (np.abs(y) < tiny)).any(), f"denormal at x = {x[(y != 0) & (np.abs(y) < tiny)][:4]}"
    # relative accuracy down to where the exponentials' floor (e^-80 = 1.8e-35) starts; below it, within that floor
    # of the input's scale (a GELU's x times the sigmoid's 1.8e-35)
    exact = reference(x.astype(np.float64))
    judged = np.abs(exact) >= 1e-30
    np.testing.assert_allclose(y[judged], exact[judged], rtol=rtol, atol=atol)
    assert (np.abs(y[~judged] - exact[~judged]) <= 2e-35 * np.maximum(1.0, np.abs(x[~judged]))).all()


@pytest.mark.parametrize("lanes, flags", [(8, ["-mavx2", "-mfma"]), (16, ["-mavx512f"])])
def test_the_runtime_builds_with_clang_for_the_vector_isas(tmp_path, lanes, flags):
    """The table lookup is the ISA's permute, not GCC's __builtin_shuffle, which clang lacks, and the 8x8
    transpose is AVX2's shuffles: a user's CC=clang builds the same runtime (zig's clang, compile only, so it runs
    on any CI host)."""
    pytest.importorskip("ziglang", reason="the cross compiler comes with the test extra (ziglang)")
    source = harness(tmp_path, lanes)
    done = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-linux-gnu", "-O2", "-std=gnu11",
                           "-fno-math-errno", *flags, "-c", str(source), "-o", str(tmp_path / "exp.o")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("lanes", [1, 4, 8, 16])
@pytest.mark.parametrize("cols, c0", [(48, 0), (21, 3), (7, 40), (16, 40)])
def test_a_transposed_pack_is_the_views_transpose_with_zeros_past_it(tmp_path, lanes, cols, c0):
    """K^T of attention: `cols` columns from c0 on of a 48x50 view (50 keys of 64 floats, the first 48 of each),
    into a tile of ld 64: whole 8x8 blocks where there are, single columns for the rest (21 = 2 blocks + 5), and
    a block that runs past the view's last key (16 from 40) zero there."""
    pack = build(tmp_path, lanes).pack_transposed
    height, width, s1, rows, ld = 48, 50, 64, 48, 64  # view[r][c] = base[c * s1 + r]
    base = np.random.default_rng(cols).standard_normal(width * s1).astype(np.float32)
    dst = np.full(rows * ld, np.nan, np.float32)
    pointer = ctypes.POINTER(ctypes.c_float)
    pack(dst.ctypes.data_as(pointer), ctypes.c_long(ld), base.ctypes.data_as(pointer), ctypes.c_long(0),
         ctypes.c_long(c0), ctypes.c_long(rows), ctypes.c_long(cols), ctypes.c_long(height), ctypes.c_long(width),
         ctypes.c_long(s1))
    view = base.reshape(width, s1)[:, :height].T  # height x width
    expected = np.zeros((rows, ld), np.float32)
    inside = min(cols, width - c0)
    expected[:, :inside] = view[:rows, c0:c0 + inside]
    np.testing.assert_array_equal(dst.reshape(rows, ld), expected)


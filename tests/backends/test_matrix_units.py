"""The host's matrix instructions: bf16 products on AMX tiles and with vdpbf16ps, quantized products with
int8 activations on AMX int8 tiles and with vpdpbusd (run where the CPU has them), and every ISA path
compiled for the machines the CI host is not (compile-only: AMX, AVX512_BF16 without AMX, VNNI without
AMX, AVX2, NEON through zig's clang for aarch64)."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import small_example

import llmc
from llmc.backends.c.build import DEFAULT_FLAGS, BuildOptions
from llmc.backends.c.module import render_module
from llmc.target import host_has_amx_bf16, host_has_amx_int8, host_has_bf16_dot, host_has_vnni

AMX_HOST = host_has_amx_bf16(16)
AMX_INT8_HOST = host_has_amx_int8(16)


def bf16_model(name: str, **sizes):
    model, inputs = small_example(name, **sizes)
    return model.to(torch.bfloat16), tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)


def run(model, inputs, **options) -> tuple[np.ndarray, object]:
    compiled = llmc.compile(model, inputs, emit=lambda *_: None, autotune=False, **options)
    with torch.no_grad():
        return compiled(*inputs).float().numpy(), compiled


# d_model 40: K = 40 is not a whole AMX tile of k (padded to 64); 13 and 24 rows are not whole 32-row blocks
SIZES = [dict(d_model=64, n_head=4, seq=24), dict(d_model=40, n_head=4, seq=13)]


@pytest.mark.skipif(not AMX_HOST, reason="runs AMX tiles: this CPU has no amx_bf16 (compile-only test below)")
@pytest.mark.parametrize("sizes", SIZES, ids=["d64-T24", "d40-T13"])
@pytest.mark.parametrize("no_amx", [False, True], ids=["amx", "vdpbf16ps"])
def test_bf16_products_on_this_hosts_matrix_units_match_the_interpreter(sizes, no_amx):
    model, inputs = bf16_model("gpt2_block", **sizes)
    flags = " ".join(DEFAULT_FLAGS) + (" -DLLMC_NO_AMX" if no_amx else "")
    got, compiled = run(model, inputs, build=BuildOptions.from_environment(flags=flags))
    assert "llmc_dot_pairs(" in compiled.program.source.text
    reference, _ = run(model, inputs, backend="interpret")
    # both compute exact bf16 products in f32; the outputs round to bf16 (an ulp of f32 can flip one)
    assert np.abs(got - reference).max() <= 2.0**-7 * np.abs(reference).max()


class Prefill(torch.nn.Module):
    """Two quantized linears of prefill-sized products: K = 96 (three blocks of 32, less than one batch of
    four tiles), K = 160 (one batch and a block), N = 160 (five panels)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(96, 160)
        self.down = torch.nn.Linear(160, 96, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.skipif(not AMX_INT8_HOST, reason="runs AMX int8 tiles: this CPU has no amx_int8 (compile-only test below)")
@pytest.mark.parametrize("fmt, rows", [("int8:a8", 45), ("int4:32:a8", 13), ("int4:64:asym:a8", 45),
                                       ("int4:channel:a8", 13)])
@pytest.mark.parametrize("no_amx", [False, True], ids=["amx", "vpdpbusd"])
def test_quantized_prefill_on_this_hosts_int8_tiles_matches_the_interpreter(fmt, rows, no_amx):
    """13 rows: one partial 16-row strip; 45: a whole 32-row pass and a partial one. Without AMX the same
    packed codes go through vpdpbusd several rows at a time, the rest one by one (what runs where the kernel
    refuses the tiles, and on hosts with vpdpbusd alone)."""
    torch.manual_seed(0)
    model, x = Prefill().eval(), (torch.randn(rows, 96),)
    flags = " ".join(DEFAULT_FLAGS) + (" -DLLMC_NO_AMX" if no_amx else "")
    compiled = llmc.compile(model, x, quantize=fmt, emit=lambda *_: None, autotune=False,
                            build=BuildOptions.from_environment(flags=flags))
    calls = [line for line in compiled.program.source.text.splitlines() if "llmc_qdot_act8(" in line and "static" not in line]
    assert len(calls) == 2 and "llmc_round_activations(r" not in compiled.program.source.text
    expected = llmc.compile(model, x, quantize=fmt, backend="interpret", emit=lambda *_: None)(*x)
    np.testing.assert_allclose(compiled(*x).numpy(), expected.numpy(), atol=2e-5, rtol=1e-4)


def test_an_fp32_model_stays_fp32_on_any_host():
    model, inputs = small_example("gpt2_block")
    _, compiled = run(model, inputs)
    assert "llmc_dot_pairs(" not in compiled.program.source.text and "matrix.h" not in compiled.program.source.text


def rendered(target: str, lanes: int, bf16: bool, bf16_dot: bool, tmp_path, name="llama_block", **options) -> str:
    model, inputs = bf16_model(name) if bf16 else small_example(name)
    module = llmc.compile(model, inputs, target=target, backend="interpret", emit=lambda *_: None, **options).module
    path = tmp_path / f"{target}-{lanes}-{bf16_dot}.c"
    path.write_text(render_module(module, lanes=lanes, bf16_dot=bf16_dot, int8_tiles=bf16_dot).text)
    return str(path)


def compile_only(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(sys.platform != "linux" or not __import__("platform").machine() == "x86_64",
                    reason="x86 compile-only builds need an x86-64 gcc")
def test_x86_paths_compile_for_cpus_this_host_is_not(tmp_path, monkeypatch):
    pairs = rendered("cpu-avx512", 16, True, True, tmp_path, "gpt2_block")
    assert "_tile_dpbf16ps" in open(pairs).read() and "llmc_dot_pairs(" in open(pairs).read()
    builds = {
        "AMX (Sapphire Rapids)": ["-march=sapphirerapids"],
        "vdpbf16ps only (Cooper Lake)": ["-march=cooperlake"],
        "vdpbf16ps, AMX left out": ["-march=sapphirerapids", "-DLLMC_NO_AMX"],
    }
    for name, flags in builds.items():
        done = compile_only(["gcc", "-O2", "-std=gnu11", "-fopenmp", *flags, "-c", pairs, "-o", str(tmp_path / "k.o")])
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    refused = compile_only(["gcc", "-O2", "-std=gnu11", "-march=skylake-avx512", "-c", pairs, "-o", str(tmp_path / "k.o")])
    assert refused.returncode != 0 and "packed for bf16 dot products" in refused.stderr
    integer = rendered("cpu-avx512", 16, False, True, tmp_path, "gpt2_block", quantize="int4:32:a8")
    rows = [int(m) for m in re.findall(r"\bllmc_qdot_act8\((\d+),", open(integer).read())]
    assert "_tile_dpbssd" in open(integer).read() and rows and max(rows) > 8  # prefill-sized: the AMX path
    for name, flags in {"AMX int8 (Sapphire Rapids)": ["-march=sapphirerapids"],
                        "vpdpbusd only (Ice Lake server)": ["-march=icelake-server"]}.items():
        done = compile_only(["gcc", "-O2", "-std=gnu11", "-fopenmp", *flags, "-c", integer, "-o", str(tmp_path / "q.o")])
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    refused = compile_only(["gcc", "-O2", "-std=gnu11", "-march=skylake-avx512", "-c", integer, "-o", str(tmp_path / "q.o")])
    assert refused.returncode != 0 and "packed for integer dot products" in refused.stderr
    import llmc.backends.c.module as c_module

    monkeypatch.setattr(c_module, "host_has_integer_dot", lambda lanes: True)  # as an AVX512_VNNI host without AMX
    vnni = rendered("cpu-avx512", 16, False, False, tmp_path, "gpt2_block", quantize="int8:a8")
    assert "llmc_act8_pack(shared" in open(vnni).read()  # prefill-sized: the rows rounded once per launch
    done = compile_only(["gcc", "-O2", "-std=gnu11", "-fopenmp", "-march=icelake-server", "-c", vnni, "-o", str(tmp_path / "v.o")])
    assert done.returncode == 0, done.stderr[-2000:]
    avx2 = rendered("cpu-avx2", 8, False, False, tmp_path)
    done = compile_only(["gcc", "-O2", "-std=gnu11", "-fopenmp", "-march=haswell", "-c", avx2, "-o", str(tmp_path / "a.o")])
    assert done.returncode == 0, done.stderr[-2000:]
    for fmt in ("int8:a8", "int4:32:a8"):  # integer products on vpmaddubsw (quant.h), where VNNI is absent
        integer = rendered("cpu-avx2", 8, False, False, tmp_path, "gpt2_block", quantize=fmt)
        assert "llmc_act8_pack(shared" in open(integer).read() and "llmc_qdot_act8(" in open(integer).read()
        for cpu in ("haswell", "alderlake"):  # alderlake: AVX-VNNI's 8-lane vpdpbusd, activations offset by 128
            done = compile_only(["gcc", "-O2", "-std=gnu11", "-fopenmp", f"-march={cpu}", "-c", integer, "-o",
                                 str(tmp_path / "q.o")])
            assert done.returncode == 0, f"{fmt} on {cpu}: {done.stderr[-2000:]}"


def test_neon_path_compiles_for_aarch64(tmp_path):
    pytest.importorskip("ziglang", reason="the aarch64 cross compiler comes with the test extra (ziglang)")
    for bf16 in (False, True):
        source = rendered("cpu-neon", 4, bf16, False, tmp_path)
        assert "#define LLMC_W 4" in open(source).read()
        out = tmp_path / "neon.o"
        done = compile_only([sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-gnu", "-O2", "-std=gnu11",
                             "-c", source, "-o", str(out)])
        assert done.returncode == 0, done.stderr[-2000:]
        assert out.read_bytes()[18] == 183  # e_machine EM_AARCH64


def test_bf16_products_are_held_to_the_matrix_units_ceiling():
    from llmc.roofline import Ceilings, roofline

    model, inputs = bf16_model("gpt2_block")
    kernels = llmc.compile(model, inputs, backend="interpret", emit=lambda *_: None).kernels_ir()
    ceilings = Ceilings(100.0, 10.0, bf16_gflops=400.0, bf16_unit="AMX")
    points = roofline(kernels, ceilings).kernels
    linear = [p for p in points if "linear" in p.name]
    assert linear and all(p.ceiling == "AMX bf16" for p in linear)
    assert all(p.ceiling == "FMA" for p in points if p.kind in ("row", "pointwise"))
    for p in linear:
        assert p.predicted_us == pytest.approx(max(p.flops / 400e3, p.bytes / 10e3))
    plain = roofline(kernels, Ceilings(100.0, 10.0)).kernels  # a host without one: the FMA peak
    assert all(p.ceiling == "FMA" for p in plain)


def test_int8_products_are_held_to_the_int8_units_ceiling():
    from llmc.roofline import Ceilings, graph_precision, roofline

    torch.manual_seed(0)
    model, x = Prefill().eval(), (torch.randn(45, 96),)
    kernels = llmc.compile(model, x, quantize="int4:32:a8", backend="interpret", emit=lambda *_: None).kernels_ir()
    ceilings = Ceilings(100.0, 10.0, bf16_gflops=400.0, bf16_unit="AMX", int8_gops=1600.0, int8_unit="AMX")
    points = roofline(kernels, ceilings).kernels
    linear = [p for p in points if "linear" in p.name]
    assert linear and all(p.ceiling == "AMX int8" for p in linear)
    for p in linear:
        assert p.predicted_us == pytest.approx(max(p.flops / 1600e3, p.bytes / 10e3))
    assert graph_precision(kernels, ceilings) == "int8"
    plain = Ceilings(100.0, 10.0)  # a host without integer dot products: the FMA peak
    assert all(p.ceiling == "FMA" for p in roofline(kernels, plain).kernels) and graph_precision(kernels, plain) == "f32"


@pytest.mark.skipif(not host_has_vnni(16), reason="measures vpdpbusd / AMX int8: this CPU has no AVX512_VNNI")
def test_the_probe_measures_the_int8_unit_llmc_would_use(tmp_path):
    from llmc.backends.c.probe import measure_int8

    gops, unit = measure_int8(BuildOptions(cache_dir=tmp_path), 16)
    assert gops > 0 and unit == ("AMX" if AMX_INT8_HOST else "vpdpbusd")


@pytest.mark.skipif(not host_has_bf16_dot(16),
                    reason="measures vdpbf16ps / AMX: this CPU has no AVX512_BF16")
def test_the_probe_measures_the_bf16_unit_llmc_would_use(tmp_path):
    from llmc.backends.c.probe import bf16_products_on_matrix_unit, machine_peak

    options = BuildOptions(cache_dir=tmp_path)
    peak = machine_peak(options, 16)
    assert peak.bf16_gflops > 0 and peak.bf16_unit == ("AMX" if AMX_HOST else "vdpbf16ps")
    if AMX_HOST:
        assert peak.bf16_gflops > peak.gflops and bf16_products_on_matrix_unit(options, 16)
    else:  # vdpbf16ps alone: packed for it only if measured faster than the f32 micro-kernel's FMA peak
        assert bf16_products_on_matrix_unit(options, 16) == (peak.bf16_gflops > 1.15 * peak.gflops)

"""Quantized models end to end: C and Triton kernels against the dequantized reference, and a real model
against its float self."""

import re

import numpy as np
import pytest
import torch
from conftest import SMALL, small_example
from hf_models import hf_inputs, hf_model

import llmc
from llmc.accuracy import dequantized_model, quantization_report
from llmc.cli import main as cli_main
from llmc.quantization import QuantFormat
from llmc.target import get_target, host_has_amx_int8, host_has_integer_dot

FORMATS = ["int8", "int4:32", "int4:64:asym", "int4:channel"]


class ThreeLinears(torch.nn.Module):
    """Shapes for every C path: N = 96 (packed panels), N = 8 (too narrow to pack), K = 80 (a partial
    last int4 group of 32), K = 65 (odd: int4 packs half a byte of padding) where the group allows it."""

    def __init__(self, k_in: int):
        super().__init__()
        self.up = torch.nn.Linear(k_in, 96)
        self.narrow = torch.nn.Linear(96, 8, bias=False)
        self.down = torch.nn.Linear(96, k_in, bias=False)

    def forward(self, x):
        h = torch.relu(self.up(x))
        return self.down(h), self.narrow(h)


def check_against_reference(model, inputs, fmt: str, **options) -> None:
    compiled = llmc.compile(model, inputs, quantize=fmt, emit=lambda *_: None, **options)
    reference = dequantized_model(model, compiled.runner.snapshots["quantize"])
    with torch.no_grad():
        expected = reference(*inputs)
    got = compiled(*inputs)
    for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=2e-5, rtol=1e-4)
    return compiled


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [1, 3, 20])
def test_c_kernels_match_the_dequantized_reference(fmt, rows):
    torch.manual_seed(0)
    k_in = 65 if fmt in ("int8", "int4:channel") else 80
    model = ThreeLinears(k_in).eval()
    compiled = check_against_reference(model, (torch.randn(rows, k_in),), fmt)
    source = compiled.program.source.text
    # few rows dequantize in registers, more rows once per tile; the narrow weight is read unpacked
    assert ("llmc_qdot(" in source.split("static void llmc_dequant_view")[1]) == (rows <= 8)
    assert "llmc_dequant_view(v" in source


@pytest.mark.parametrize("fmt", ["int8:a8", "int4:32:a8", "int4:64:asym:a8"])
@pytest.mark.parametrize("rows", [1, 3, 5, 20, 23])
def test_int8_activations_match_the_interpreter(fmt, rows):
    """Integer dot products where the host has them (vpdpbusd, or vpmaddubsw on AVX2: several rows at a time, the rows left over
    one by one, as 1, 3, 5 and 23 leave them; AMX int8 tiles for prefill), the activations rounded into a
    scratch copy otherwise: the IR's semantics either way."""
    torch.manual_seed(0)
    model = ThreeLinears(80).eval()
    x = (torch.randn(rows, 80),)
    compiled = llmc.compile(model, x, quantize=fmt, emit=lambda *_: None)
    expected = llmc.compile(model, x, quantize=fmt, backend="interpret", emit=lambda *_: None)(*x)
    for g, e in zip(compiled(*x), expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=2e-5, rtol=1e-4)
    source = compiled.program.source.text
    calls = [line for line in source.splitlines() if "llmc_qdot_act8(" in line and "static" not in line]
    lanes = get_target("cpu").lanes
    assert bool(calls) == (host_has_integer_dot(lanes) or host_has_amx_int8(lanes))
    # prefill-sized products read the rows rounded once per launch, except where AMX tiles lay them out themselves
    once = rows > 8 and host_has_integer_dot(lanes) and not host_has_amx_int8(lanes)
    assert ("llmc_act8_pack(shared" in source) == once
    assert ("not dequantized: its codes times the int8 activations" in compiled.report()) == bool(calls)
    assert "llmc_round_activations(r" in compiled.program.source.text  # the narrow weight: rounded copy


@pytest.mark.parametrize("fmt", ["int8:a8", "int4:32:a8"])
def test_a_batch_of_inputs_is_rounded_once_per_launch_and_matches_the_interpreter(fmt):
    """Each matrix of a batch rounded to int8 once for all the column tiles that read it (llmc_act8_pack); the
    products find their batch's rows. 20 rows in tiles of 16 (a partial last tile) and K = 80 (a partial last
    block of 32, and K tiles of 32)."""
    torch.manual_seed(0)
    model = ThreeLinears(80).eval()
    x = (torch.randn(2, 20, 80),)
    passes = ("fuse,tile{target=cpu matmul=16,32,32},lower-tile,coalesce{target=cpu},swizzle{target=cpu},"
              "pipeline{stages=2},plan-memory")
    compiled = llmc.compile(model, x, passes=passes, quantize=fmt, emit=lambda *_: None)
    expected = llmc.compile(model, x, passes=passes, quantize=fmt, backend="interpret", emit=lambda *_: None)(*x)
    for g, e in zip(compiled(*x), expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=2e-5, rtol=1e-4)
    lanes = get_target("cpu").lanes
    if host_has_integer_dot(lanes) and not host_has_amx_int8(lanes):
        packs = re.findall(r"for \(long b = 0; b < (\d+); b\+\+\) llmc_act8_pack\(shared", compiled.program.source.text)
        assert packs and all(count == "2" for count in packs), packs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("fmt", ["int8", "int4:32"])
def test_example_blocks_quantized(name, fmt):
    model, inputs = small_example(name)
    with torch.no_grad():  # the examples' sizes are multiples of 32 only in places: partial groups included
        check_against_reference(model, inputs, fmt)


@pytest.mark.slow
def test_a_hugging_face_model_int8_keeps_its_top1_and_int4_its_reference():
    model = hf_model("llama", layers=2, positions=64)
    inputs = hf_inputs(2, 24)
    compiled = llmc.compile(model, inputs, quantize="int8", emit=lambda *_: None)
    report, ok = quantization_report(compiled, model, inputs, QuantFormat.parse("int8"), sequences=6)
    assert ok, report
    share = float(report.split("sequences: ")[1].split("%")[0])
    assert share >= 95.0, report
    for fmt in ("int4", "int4:32:a8"):  # the reference rounds the activations where the IR says so
        compiled4 = llmc.compile(model, inputs, quantize=fmt, emit=lambda *_: None)
        report4, ok4 = quantization_report(compiled4, model, inputs, QuantFormat.parse(fmt), sequences=0)
        assert ok4, report4


def test_the_c_fallback_of_the_triton_target_stays_quantized(no_gpu):
    torch.manual_seed(0)
    model = ThreeLinears(64).eval()
    x = (torch.randn(3, 64),)
    with pytest.warns(UserWarning, match="falling back"):
        compiled = llmc.compile(model, x, target="triton", fallback="c", quantize="int4", emit=lambda *_: None)
    reference = llmc.compile(model, x, quantize="int4", emit=lambda *_: None)(*x)
    for g, r in zip(compiled(*x), reference):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-6, rtol=1e-6)


def test_gpt2s_conv1d_layers_are_quantized_too():
    """GPT-2 stores its projections [K, N] (Conv1D, x @ w): every one is quantized, against its reference."""
    model = hf_model("gpt2", layers=1)
    inputs = hf_inputs(2, 12)
    compiled = llmc.compile(model, inputs, quantize="int4", emit=lambda *_: None)
    quantized = [op.weight_name.data for op in compiled.runner.snapshots["quantize"].walk()
                 if op.name == "graph.weight" and op.weight_name.data.endswith(".codes")]
    assert sum("int4g32t.codes" in name for name in quantized) == 4  # c_attn, c_proj, c_fc, mlp.c_proj
    report, ok = quantization_report(compiled, model, inputs, QuantFormat.parse("int4"), sequences=0)
    assert ok, report


def test_torch_compile_takes_the_quantize_option():
    torch.manual_seed(0)
    model = ThreeLinears(64).eval()
    x = torch.randn(4, 64)
    compiled = torch.compile(model, backend="llmc", options={"quantize": "int8"})
    with torch.no_grad():
        got = compiled(x)
    reference = llmc.compile(model, (x,), quantize="int8", emit=lambda *_: None)(x)
    for g, r in zip(got, reference):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got[0], model(x)[0], atol=1e-6)  # quantized, not the float model
    with pytest.raises(Exception, match="int4 group 48"):
        torch.compile(model, backend="llmc", options={"quantize": "int4:48"})(x)


def test_cli_prints_the_plan_bytes_and_accuracy(tmp_path, capsys):
    status = cli_main(["compile", "examples/hf_causal_lm.py", "--quantize", "int4", "--run", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "lm_head.weight" in out and "output projection: int8 (head)" in out
    assert "vs its dequantized reference" in out and "(OK)" in out and "top-1 agreement" in out
    assert "as f32 ->" in out and "dequantized once per K x N tile" in out
    assert cli_main(["compile", "examples/hf_causal_lm.py", "--quantize", "int5"]) == 1


@pytest.mark.parametrize("fmt", ["int8", "int4:32:asym", "int4:32:a8"])
def test_triton_kernels_match_the_reference(fmt, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs the kernels on CPU tensors
    torch.manual_seed(0)
    model = ThreeLinears(64).eval()
    for rows in (2, 20):
        x = (torch.randn(rows, 64),)
        if not fmt.endswith("a8"):
            check_against_reference(model, x, fmt, target="triton")
            continue
        got = llmc.compile(model, x, quantize=fmt, target="triton", emit=lambda *_: None)(*x)
        expected = llmc.compile(model, x, quantize=fmt, backend="interpret", emit=lambda *_: None)(*x)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.numpy(), e.numpy(), atol=2e-5, rtol=1e-4)

"""`matmul-precision`: IR text, exact semantics in the interpreter, and the products in bf16 on both
backends (the C backend's AMX / vdpbf16ps kernels where the host has them, f32 FMA of the same bf16
values elsewhere; Triton under TRITON_INTERPRET=1)."""

import numpy as np
import pytest
import torch
from conftest import MLP, filecheck, run_ir, run_passes, small_example

import llmc
from llmc.dtypes import round_to
from llmc.errors import LlmcError, PassOptionError
from llmc.ir_text import parse_ir, print_ir
from llmc.quantization import weight_value
from xdsl.dialects.builtin import bf16


def mlp_weights(rng):
    return {"fc.weight": rng.standard_normal((48, 32)).astype(np.float32),
            "fc.bias": rng.standard_normal(48).astype(np.float32),
            "proj.weight": rng.standard_normal((32, 48)).astype(np.float32)}


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def test_ir_text_rounds_each_linears_operands_and_keeps_its_result_f32():
    module = run_passes(parse_ir(MLP), "matmul-precision{precision=bf16}")
    filecheck(print_ir(module), """
// CHECK:      %[[W1:.*]] = graph.weight "fc.weight#bf16" : tensor<48x32xbf16>
// CHECK:      %[[W2:.*]] = graph.weight "proj.weight#bf16" : tensor<32x48xbf16>
// CHECK:      %[[X:.*]] = graph.cast %x : tensor<1x24x32xf32> -> tensor<1x24x32xbf16>
// CHECK-NEXT: %h = graph.linear %[[X]], %[[W1]], %b1 : ({{.*}}xbf16>, tensor<48x32xbf16>, tensor<48xf32>) -> tensor<1x24x48xf32>
// CHECK:      %[[G:.*]] = graph.cast %g : tensor<1x24x48xf32> -> tensor<1x24x48xbf16>
// CHECK-NEXT: %o = graph.linear %[[G]], %[[W2]] : {{.*}} -> tensor<1x24x32xf32>
// CHECK-NOT:  graph.weight "fc.weight" :
""")


def test_the_interpreter_computes_the_bf16_products_exactly():
    rng = np.random.default_rng(0)
    weights, x = mlp_weights(rng), rng.standard_normal((1, 24, 32)).astype(np.float32)
    before = run_ir(parse_ir(MLP), [x], dict(weights))[0]
    after = run_ir(run_passes(parse_ir(MLP), "matmul-precision{precision=bf16}"), [x], dict(weights))[0]
    r = lambda a: round_to(a, bf16)  # noqa: E731
    h = r(x) @ r(weights["fc.weight"]).T + weights["fc.bias"]
    expected = r(gelu_tanh(h)) @ r(weights["proj.weight"]).T + x
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-4)
    assert 1e-4 < np.abs(after - before).max() < 0.05 * np.abs(before).max()  # bf16's error, not f32's


def test_weights_derive_their_bf16_value_and_its_transpose():
    w = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    weights = {"w": w}
    np.testing.assert_array_equal(weight_value(weights, "w#bf16"), round_to(w, bf16))
    np.testing.assert_array_equal(weight_value(weights, "w#bf16t"), round_to(w.T, bf16))
    assert weight_value(weights, "missing#bf16") is None


def test_f32_leaves_the_graph_and_a_bad_precision_is_refused():
    assert print_ir(run_passes(parse_ir(MLP), "matmul-precision{precision=f32}")) == print_ir(parse_ir(MLP))
    with pytest.raises(PassOptionError, match="precision must be one of f32, bf16"):
        run_passes(parse_ir(MLP), "matmul-precision{precision=tf32}")
    with pytest.raises(LlmcError, match="unknown matmul precision"):
        model, inputs = small_example("gpt2_block")
        llmc.compile(model, inputs, emit=lambda *_: None, matmul_precision="fp8")


def compiled_outputs(model, inputs, **options):
    compiled = llmc.compile(model, inputs, emit=lambda *_: None, autotune=False, **options)
    with torch.no_grad():
        return compiled, compiled(*inputs).float().numpy()


@pytest.mark.parametrize("name", ["gpt2_block", "llama_block"])
def test_c_backend_matches_the_interpreter_and_differs_from_f32(name):
    model, inputs = small_example(name)
    compiled, got = compiled_outputs(model, inputs, matmul_precision="bf16")
    _, reference = compiled_outputs(model, inputs, matmul_precision="bf16", backend="interpret")
    _, full = compiled_outputs(model, inputs)
    scale = np.abs(reference).max()
    # the casts round activations the C code computed to an ulp of f32 away: a rare bf16 rounding flips
    assert np.abs(got - reference).max() <= 2e-3 * scale
    assert np.abs(got - full).max() > 1e-4 * scale  # the products really ran in bf16


def test_triton_backend_runs_the_bf16_products(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model, inputs = small_example("gpt2_block", seq=16)
    _, got = compiled_outputs(model, inputs, matmul_precision="bf16", target="gpu")
    _, reference = compiled_outputs(model, inputs, matmul_precision="bf16", backend="interpret")
    assert np.abs(got - reference).max() <= 2e-3 * np.abs(reference).max()


def test_torch_compile_option_and_cli_flag(tmp_path):
    model, inputs = small_example("gpt2_block")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="llmc", options={"matmul_precision": "bf16"})
    with torch.no_grad():
        got, full = compiled(*inputs), model(*inputs)
    error = float((got - full).abs().max())
    assert 1e-5 < error <= 4 * 2.0**-8 * float(full.abs().max())
    torch._dynamo.reset()
    with pytest.raises(Exception, match="matmul_precision must be f32 or bf16"):
        torch.compile(model, backend="llmc", options={"matmul_precision": "fp8"})(*inputs)

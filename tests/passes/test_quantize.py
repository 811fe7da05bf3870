"""The `quantize` pass: decisions, IR text, exact semantics in both interpreters, lowering."""

import numpy as np
import pytest
from conftest import MLP, filecheck, run_ir, run_passes

from llmc.dialects import graph
from llmc.errors import PassOptionError
from llmc.ir_text import parse_ir, print_ir
from llmc.passes.quantize import describe_plan, plan_quantization
from llmc.quantization import QuantFormat, dequantize, derived_name, quantize, weight_value

FORMATS = ["int8", "int4:32", "int4:64:asym", "int4:channel"]


def mlp_weights(rng, k_in=32, hidden=48):
    return {"fc.weight": rng.standard_normal((hidden, k_in)).astype(np.float32),
            "fc.bias": rng.standard_normal(hidden).astype(np.float32),
            "proj.weight": rng.standard_normal((k_in, hidden)).astype(np.float32)}


def spec_of(fmt: str, head: str = "same") -> str:
    from llmc.passes.quantize import pass_spec

    return pass_spec(QuantFormat.parse(fmt), head)


def dequantized_reference(weights: dict, fmt: QuantFormat) -> dict:
    """The float weights replaced by what their codes stand for: the model the quantized IR must equal."""
    out = dict(weights)
    for name in ("fc.weight", "proj.weight"):
        w = weights[name]
        codes, scales, zeros = quantize(w, fmt)
        out[name] = dequantize(codes, scales, zeros, fmt, w.shape[1])
    return out


def test_formats_parse_and_refuse():
    assert QuantFormat.parse("int4") == QuantFormat(4, 32, True)
    assert QuantFormat.parse("int4:128:asym") == QuantFormat(4, 128, False)
    assert QuantFormat.parse("int4:channel").tag == "int4c"
    for bad in ("int3", "int4:48", "int8:32", "int4:32:maybe"):
        with pytest.raises(PassOptionError):
            QuantFormat.parse(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_codes_round_trip_within_half_a_step(fmt):
    f = QuantFormat.parse(fmt)
    w = np.random.default_rng(1).standard_normal((24, 96)).astype(np.float32)
    codes, scales, zeros = quantize(w, f)
    back = dequantize(codes, scales, zeros, f, 96)
    step = np.repeat(scales, f.group_size(96), axis=1)[:, :96]
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-6)
    assert codes.dtype == np.int8 and codes.shape == (24, 96 if f.bits == 8 else 48)


def test_a_partial_last_group_quantizes_its_own_channels():
    f = QuantFormat.parse("int4:32")
    w = np.random.default_rng(2).standard_normal((4, 80)).astype(np.float32)
    codes, scales, _ = quantize(w, f)
    assert scales.shape == (4, 3)  # 32 + 32 + 16 channels
    np.testing.assert_allclose(scales[:, 2], np.abs(w[:, 64:]).max(axis=1) / 7, rtol=1e-6)


def test_quantized_weights_derive_from_the_float_weight_by_name():
    weights = {"w": np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)}
    f = QuantFormat.parse("int4:32:asym")
    codes = weight_value(weights, derived_name("w", f, "codes"))
    assert codes.shape == (8, 32) and derived_name("w", f, "zeros") in weights
    assert weight_value(weights, "w#int4g32.codes") is not None  # the symmetric form, from the same weight
    assert weight_value(weights, "missing#int8.codes") is None


def test_the_plan_keeps_the_output_projection_int8_under_int4():
    module = parse_ir(MLP.replace("func.return %r", "func.return %o"))  # proj's result is the logits
    choices = plan_quantization(module, QuantFormat.parse("int4:32"))
    by_name = {c.weight: c for c in choices}
    assert by_name["fc.weight"].format == QuantFormat(4, 32)
    assert by_name["proj.weight"].format == QuantFormat(8)  # its result is what the function returns
    assert by_name["proj.weight"].reason.startswith("output projection")
    text = describe_plan(choices)
    assert "int4, groups of 32, symmetric" in text and "total" in text
    kept = plan_quantization(module, QuantFormat.parse("int8"), head="float", skip=("fc.*",))
    assert [c.format for c in kept] == [None, None]
    residual = {c.weight: c for c in plan_quantization(parse_ir(MLP), QuantFormat.parse("int4:32"))}
    assert residual["proj.weight"].format == QuantFormat(4, 32)  # a residual follows: not the output projection


def test_ir_text():
    module = run_passes(parse_ir(MLP), spec_of("int4:32:asym"))
    filecheck(print_ir(module), """
// CHECK: graph.weight "fc.weight#int4g32a.codes" : tensor<48x16xi8>
// CHECK: graph.weight "fc.weight#int4g32a.scales" : tensor<48x1xf32>
// CHECK: graph.weight "fc.weight#int4g32a.zeros" : tensor<48x1xf32>
// CHECK: graph.dequantize %{{.*}}, %{{.*}}, %{{.*}} {format = "int4", group = 32 : i64} : {{.*}} -> tensor<48x32xf32>
// CHECK: graph.linear %x, %{{.*}}, %{{.*}}
// CHECK-NOT: "fc.weight" :
""")
    assert print_ir(parse_ir(print_ir(module))) == print_ir(module)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_quantized_graph_equals_its_dequantized_reference_exactly(fmt):
    rng = np.random.default_rng(4)
    weights = mlp_weights(rng)
    x = rng.standard_normal((1, 24, 32)).astype(np.float32)
    quantized = run_passes(parse_ir(MLP), spec_of(fmt))
    (got,) = run_ir(quantized, [x], dict(weights))
    (expected,) = run_ir(parse_ir(MLP), [x], dequantized_reference(weights, QuantFormat.parse(fmt)))
    np.testing.assert_array_equal(got, expected)
    (float_result,) = run_ir(parse_ir(MLP), [x], weights)
    assert not np.array_equal(got, float_result)  # the pass did quantize


@pytest.mark.parametrize("fmt", FORMATS)
def test_lowered_tiles_agree_with_the_graph(fmt):
    rng = np.random.default_rng(5)
    weights = mlp_weights(rng)
    x = rng.standard_normal((1, 24, 32)).astype(np.float32)
    quantized = run_passes(parse_ir(MLP), spec_of(fmt))
    (expected,) = run_ir(quantized, [x], dict(weights))
    lowered = run_passes(quantized, "fuse,tile{matmul=16,32,16},lower-tile,swizzle,pipeline,plan-memory")
    text = print_ir(lowered)
    assert "tile.dequant" in text and "pack = " in text
    (got,) = run_ir(parse_ir(text), [x], dict(weights))
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5)


def test_k_tiles_that_split_a_group():
    """K tiles of 16 over groups of 32: two tiles read one scale row."""
    rng = np.random.default_rng(6)
    weights = mlp_weights(rng, k_in=64)
    text = MLP.replace("x32xf32>", "x64xf32>").replace("48x32", "48x64").replace("32x48", "64x48")
    x = rng.standard_normal((1, 24, 64)).astype(np.float32)
    quantized = run_passes(parse_ir(text), spec_of("int4:32"))
    (expected,) = run_ir(quantized, [x], dict(weights))
    lowered = run_passes(quantized, "fuse,tile{matmul=16,32,16},lower-tile")
    assert "tensor<1x32xf32>) -> tensor<16x32xf32>" in print_ir(lowered)  # one scale row per 16-row tile
    (got,) = run_ir(lowered, [x], dict(weights))
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5)


def test_dequantize_verifies_its_shapes():
    bad = """
func.func @f(%c: tensor<8x16xi8>, %s: tensor<8x2xf32>) -> tensor<8x32xf32> {
  %w = graph.dequantize %c, %s {format = "int8", group = 16 : i64} : (tensor<8x16xi8>, tensor<8x2xf32>) -> tensor<8x32xf32>
  func.return %w : tensor<8x32xf32>
}"""
    with pytest.raises(Exception, match="int8 codes of a \\[8, 32\\] weight"):
        parse_ir(bad).verify()
    assert graph.DequantizeOp in (type(op) for op in parse_ir(bad.replace('"int8"', '"int4"')).walk())


def test_aot_autograds_linear_is_quantized_as_a_linear():
    """torch.compile hands llmc x @ permute(w); the pass quantizes it and it becomes a graph.linear."""
    text = """
func.func @forward(%x: tensor<4x32xf32>) -> tensor<4x48xf32> {
  %w = graph.weight "fc.weight" : tensor<48x32xf32>
  %t = graph.permute %w {perm = array<i64: 1, 0>} : tensor<48x32xf32> -> tensor<32x48xf32>
  %y = graph.matmul %x, %t : (tensor<4x32xf32>, tensor<32x48xf32>) -> tensor<4x48xf32>
  %r = graph.relu %y : tensor<4x48xf32> -> tensor<4x48xf32>
  func.return %r : tensor<4x48xf32>
}"""
    rng = np.random.default_rng(7)
    weights = {"fc.weight": rng.standard_normal((48, 32)).astype(np.float32)}
    x = rng.standard_normal((4, 32)).astype(np.float32)
    quantized = run_passes(parse_ir(text), spec_of("int8"))
    filecheck(print_ir(quantized), """
// CHECK: graph.dequantize
// CHECK-NOT: graph.permute
// CHECK-NOT: graph.matmul
// CHECK: graph.linear %x
""")
    (got,) = run_ir(quantized, [x], dict(weights))
    codes, scales, _ = quantize(weights["fc.weight"], QuantFormat(8))
    np.testing.assert_array_equal(got, np.maximum(x @ dequantize(codes, scales, None, QuantFormat(8), 32).T, 0))


def test_int8_activations_round_per_block_of_32_half_to_even():
    from llmc.quantization import round_activations

    x = np.zeros((2, 40), np.float32)
    x[0, 0], x[0, 1] = 127.0, 2.5  # d = 1: 2.5 rounds to 2 (even), as rint does
    x[0, 32:] = 0.0  # an all-zero block stays zero
    x[1, :] = np.linspace(-1, 1, 40, dtype=np.float32)
    got = round_activations(x)
    assert got[0, 0] == 127.0 and got[0, 1] == 2.0 and not got[0, 32:].any()
    d = np.abs(x[1, 32:]).max() / np.float32(127)
    np.testing.assert_array_equal(got[1, 32:], np.rint(x[1, 32:] * (np.float32(1) / d)) * d)  # the partial last block alone
    assert QuantFormat.parse("int4:64:a8") == QuantFormat(4, 64, True, "int8")
    assert QuantFormat.parse("int8:a8") == QuantFormat(8, 0, True, "int8")
    with pytest.raises(PassOptionError, match="unknown quantization"):
        QuantFormat.parse("int2:a8")


def test_int8_activations_mark_the_linear_and_the_dot():
    from llmc.quantization import round_activations

    rng = np.random.default_rng(8)
    weights = mlp_weights(rng)
    x = rng.standard_normal((1, 24, 32)).astype(np.float32)
    quantized = run_passes(parse_ir(MLP), spec_of("int4:32:a8"))
    assert print_ir(quantized).count('activations = "int8"') == 2
    (got,) = run_ir(quantized, [x], dict(weights))
    reference = dequantized_reference(weights, QuantFormat.parse("int4:32"))
    hidden = round_activations(x) @ reference["fc.weight"].T + reference["fc.bias"]
    g = 0.5 * hidden * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (hidden + np.float32(0.044715) * hidden**3)))
    expected = round_activations(g) @ reference["proj.weight"].T + x
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    lowered = run_passes(quantized, "fuse,tile{matmul=16,32,16},lower-tile")
    text = print_ir(lowered)
    dots = [line for line in text.splitlines() if "tile.dot" in line]
    assert dots and all('activations = "int8"' in line and "(tensor<16x32xf32>, tensor<32x32xf32>" in line for line in dots)
    (tiled,) = run_ir(lowered, [x], dict(weights))
    np.testing.assert_allclose(tiled, got, atol=2e-5, rtol=2e-5)


def test_a_weight_stored_k_by_n_is_quantized_as_its_transpose():
    """GPT-2's Conv1D: x @ w with w [K, N]. The linear of w.T, with codes of the transpose."""
    text = """
func.func @forward(%x: tensor<4x32xf32>) -> tensor<4x48xf32> {
  %w = graph.weight "c_fc.weight" : tensor<32x48xf32>
  %y = graph.matmul %x, %w : (tensor<4x32xf32>, tensor<32x48xf32>) -> tensor<4x48xf32>
  %r = graph.relu %y : tensor<4x48xf32> -> tensor<4x48xf32>
  func.return %r : tensor<4x48xf32>
}"""
    rng = np.random.default_rng(9)
    weights = {"c_fc.weight": rng.standard_normal((32, 48)).astype(np.float32)}
    x = rng.standard_normal((4, 32)).astype(np.float32)
    choices = plan_quantization(parse_ir(text), QuantFormat.parse("int4:32"))
    assert [(c.shape, c.transposed) for c in choices] == [((48, 32), True)] and "transpose" in choices[0].reason
    quantized = run_passes(parse_ir(text), spec_of("int4:32"))
    filecheck(print_ir(quantized), """
// CHECK: graph.weight "c_fc.weight#int4g32t.codes" : tensor<48x16xi8>
// CHECK: graph.dequantize
// CHECK-NOT: graph.matmul
// CHECK: graph.linear %x
""")
    (got,) = run_ir(quantized, [x], dict(weights))
    fmt = QuantFormat.parse("int4:32")
    codes, scales, zeros = quantize(weights["c_fc.weight"].T, fmt)
    np.testing.assert_array_equal(got, np.maximum(x @ dequantize(codes, scales, zeros, fmt, 32).T, 0))

"""bfloat16 / float16 graphs: export, per-op rounding, lowering, memory plan, Triton kernels, refusals."""

import numpy as np
import pytest
import torch
from conftest import MLP, SMALL, filecheck, graph_args, run_ir, run_passes, small_example, user_results

import llmc
from llmc.backends.c.build import BuildOptions
from llmc.backends.c.probe import bf16_products_on_matrix_unit
from llmc.dtypes import bf16_bits, bf16_values, round_to
from llmc.errors import LlmcError
from llmc.exporter import export_model
from llmc.interpret import interpret
from llmc.ir_text import parse_ir, print_ir
from llmc.target import get_target
from xdsl.dialects.builtin import bf16, f16

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # spacing relative to magnitude


def as_dtype(name: str, dtype: torch.dtype, **sizes):
    model, inputs = small_example(name, **sizes)
    return model.to(dtype), tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)


def run_eager(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


def reference_f32(model, inputs) -> list[torch.Tensor]:
    """The same (already rounded) weights and inputs, computed in float32."""
    import copy

    return run_eager(copy.deepcopy(model).float(), [x.float() if x.is_floating_point() else x for x in inputs])


def assert_as_accurate_as_eager(got, model, inputs, dtype, slack=3.0):
    """llmc's error against a float32 computation is of the order of eager's own, never more than a few ulps."""
    for g, e, r in zip(got, run_eager(model, inputs), reference_f32(model, inputs)):
        assert g.dtype == e.dtype and g.shape == e.shape
        scale = float(r.abs().max())
        ours, eagers = float((g.float() - r).abs().max()), float((e.float() - r).abs().max())
        assert ours <= slack * eagers + 2 * ULP[dtype] * scale, (ours, eagers)


def test_bf16_rounding_is_round_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -3.3, 1e30, np.nan], dtype=np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_values(bf16_bits(values))[:5], expected[:5])
    assert np.isnan(round_to(values, bf16)[5])
    np.testing.assert_array_equal(round_to(values[:4], f16), values[:4].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_graph_interpreter_rounds_per_op_like_eager(name):
    model, inputs = as_dtype(name, torch.bfloat16)
    imported = export_model(model, inputs)
    assert "xbf16>" in print_ir(imported.module)
    args = [x.float().numpy() for x in graph_args(model, inputs, imported)]
    got = user_results(interpret(imported.module, args, imported.weights), imported)
    for g, e in zip(got, run_eager(model, inputs)):
        # the same op-by-op rounding: at most an ulp apart where a reduction order differs
        np.testing.assert_allclose(g, e.float().numpy(), atol=2 * ULP[torch.bfloat16] * float(e.float().abs().max()))


def test_casts_are_graph_casts_and_integer_casts_truncate():
    model, inputs = as_dtype("llama_block", torch.bfloat16)
    text = print_ir(export_model(model, inputs).module)
    assert "graph.cast" in text and "-> tensor<1x20x64xf32>" in text  # RMSNorm's x.float()

    class ToInt(torch.nn.Module):
        def forward(self, x):
            return x.to(torch.int32).float()

    x = torch.randn(4, 4) * 10
    imported = export_model(ToInt(), (x,))
    assert "tensor<4x4xi32>" in print_ir(imported.module)
    (got,) = interpret(imported.module, [x.numpy()], imported.weights)
    np.testing.assert_array_equal(got, ToInt()(x).numpy())  # toward zero, as torch truncates


MLP_BF16 = MLP.replace("xf32>", "xbf16>")


def bf16_weights():
    rng = np.random.default_rng(1)
    shapes = {"fc.weight": (48, 32), "fc.bias": (48,), "proj.weight": (32, 48)}
    return {k: round_to(rng.standard_normal(s).astype(np.float32) * 0.2, bf16) for k, s in shapes.items()}


def bf16_input():
    return round_to(np.random.default_rng(0).standard_normal((1, 24, 32)).astype(np.float32), bf16)


def test_lower_tile_keeps_16_bit_dot_operands_and_computes_epilogues_in_f32():
    weights, x = bf16_weights(), bf16_input()
    module = parse_ir(MLP_BF16)
    before = run_ir(module, [x], weights)
    after = run_passes(module, "fuse,tile{matmul=16,16,16},lower-tile")
    filecheck(print_ir(after), """
// CHECK: tile.kernel @k0_linear_gelu
// CHECK: tile.load {{.*}} : memref<1x24x32xbf16> -> tensor<16x16xbf16>
// CHECK: tile.dot {{.*}} : (tensor<16x16xbf16>, tensor<16x16xbf16>, tensor<16x16xf32>) -> tensor<16x16xf32>
// CHECK: graph.cast {{.*}} : tensor<16x16xbf16> -> tensor<16x16xf32>
// CHECK: graph.gelu {{.*}} -> tensor<16x16xf32>
// CHECK: tile.store {{.*}} : tensor<16x16xf32>, memref<1x24x48xbf16>
""")
    got = run_ir(parse_ir(print_ir(after)), [x], weights)
    # fused: the GELU input is not rounded to bf16 first, so the two may differ by an ulp or two
    np.testing.assert_allclose(got[0], before[0], atol=4 * 2.0**-8 * np.abs(before[0]).max())


def test_plan_memory_sizes_16_bit_buffers_at_two_bytes_an_element():
    sizes = {}
    for text, dtype in ((MLP_BF16, "bf16"), (MLP, "f32")):
        module = run_passes(parse_ir(text), "fuse,lower-tile,plan-memory")
        func = next(op for op in module.walk() if op.name == "func.func")
        sizes[dtype] = func.attributes["llmc.arena_bytes"].value.data
    assert sizes["bf16"] * 2 == sizes["f32"] == 24 * 48 * 4  # the one intermediate, [1, 24, 48]
    weights, x = bf16_weights(), bf16_input()
    planned = run_passes(parse_ir(MLP_BF16), "fuse,tile{matmul=16,16,16},lower-tile,plan-memory")
    unplanned = run_passes(parse_ir(MLP_BF16), "fuse,tile{matmul=16,16,16},lower-tile")
    np.testing.assert_array_equal(run_ir(planned, [x], weights)[0], run_ir(unplanned, [x], weights)[0])


def test_pipeline_delegate_marks_the_loop_and_changes_nothing_else():
    weights, x = bf16_weights(), bf16_input()
    module = run_passes(parse_ir(MLP_BF16), "fuse,tile{matmul=16,16,8},lower-tile")
    module = parse_ir(print_ir(module))
    before = run_ir(module, [x], weights)
    after = run_passes(module, "pipeline{stages=3 mode=delegate}")
    text = print_ir(after)
    filecheck(text, """
// CHECK: tile.kernel @k0_linear_gelu
// CHECK: scf.for
// CHECK: tile.load {{.*}}llmc.pipeline = "stage0"
// CHECK: tile.dot
// CHECK-NOT: llmc.pipeline = "body"
// CHECK: } {llmc.pipeline_stages = 3 : i64, llmc.pipeline = "delegated"}
""")
    assert "prologue" not in text and "epilogue" not in text
    np.testing.assert_array_equal(run_ir(parse_ir(text), [x], weights)[0], before[0])


def test_pipeline_rejects_an_unknown_mode():
    from llmc.errors import PassOptionError

    with pytest.raises(PassOptionError, match="mode must be one of expand, delegate"):
        run_passes(parse_ir(MLP_BF16), "fuse,lower-tile,pipeline{mode=sideways}")


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_examples_on_the_triton_backend(name, dtype, interpreted):
    model, inputs = as_dtype(name, DTYPES[dtype])
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    assert compiled.backend == "triton"
    got = compiled(*inputs)
    assert_as_accurate_as_eager(list(got) if isinstance(got, tuple) else [got], model, inputs, DTYPES[dtype])


def test_16_bit_triton_code_uses_tensor_cores_and_narrow_buffers(interpreted):
    model, inputs = as_dtype("gpt2_block", torch.bfloat16, d_model=128, n_head=4, seq=64)
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    source = compiled.program.source
    assert "tl.dot(dot_operand(" in source and 'input_precision="ieee"' not in source
    assert ".to(tl.bfloat16)  # graph.cast" in source  # P narrowed for P @ V, as FlashAttention does
    assert "view(torch.bfloat16)" in source and "dtype=torch.uint8" in source  # a byte arena, 2-byte views
    assert "tl.range(" in source and "num_stages=" in source  # the GPU default delegates the K loop
    assert_as_accurate_as_eager([compiled(*inputs)], model, inputs, torch.bfloat16)


def test_explicit_pipelining_turns_off_tritons_own(interpreted):
    model, inputs = as_dtype("gpt2_block", torch.bfloat16, d_model=128, n_head=4, seq=64)
    passes = "fuse,tile{target=gpu matmul=32,32,32},lower-tile,coalesce{target=gpu},swizzle{target=gpu},pipeline{stages=3},plan-memory"
    compiled = llmc.compile(model, inputs, target="triton", passes=passes, emit=lambda _: None)
    source = compiled.program.source
    assert "software-pipelined by llmc, 3 stages" in source and "'num_stages': 1" in source
    assert "tl.range(" not in source
    assert_as_accurate_as_eager([compiled(*inputs)], model, inputs, torch.bfloat16)


def test_an_input_of_another_dtype_is_refused(interpreted):
    model, inputs = as_dtype("gpt2_block", torch.bfloat16)
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    with pytest.raises(LlmcError, match="compiled for torch.bfloat16"):
        compiled(*(x.float() for x in inputs))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_examples_on_the_c_backend(name, dtype):
    """16-bit storage, f32 arithmetic in registers, one rounding at each store: within a few ulps of eager."""
    model, inputs = as_dtype(name, DTYPES[dtype])
    compiled = llmc.compile(model, inputs, target="cpu", emit=lambda _: None)
    got = compiled(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    assert_as_accurate_as_eager(got, model, inputs, DTYPES[dtype])
    source = compiled.program.source.text
    assert f"llmc_store_vec_{'bf16' if dtype == 'bfloat16' else 'f16'}(" in source
    assert "uint16_t *arg" in source  # activations stay 16-bit in memory


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_torch_compile_runs_a_16_bit_sdpa_block_in_llmc(dtype):
    """After aot_autograd, SDPA is the CPU flash kernel, whose FX node returns (output, logsumexp): the output
    keeps the 16-bit type of the query (it was imported as f32, and the block fell back to eager)."""
    import warnings

    model, inputs = as_dtype("gpt2_block_sdpa", DTYPES[dtype])
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run_eager(torch.compile(model, backend="llmc"), inputs)
    assert not [w for w in caught if "runs in eager" in str(w.message)]
    assert_as_accurate_as_eager(got, model, inputs, DTYPES[dtype])


def test_the_c_fallback_runs_a_16_bit_model(no_gpu):
    model, inputs = as_dtype("gpt2_block", torch.bfloat16)
    with pytest.warns(UserWarning, match="falling back"):
        compiled = llmc.compile(model, inputs, target="triton", fallback="c", emit=lambda _: None)
    got = compiled(*inputs)
    assert got.dtype == torch.bfloat16
    assert_as_accurate_as_eager([got], model, inputs, torch.bfloat16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_decode_step_streams_16_bit_weight_panels(dtype):
    """Few-row products read their weights 16-bit (widened as they stream); larger ones from f32 panels, or
    (bf16 on a host with AMX, or whose vdpbf16ps the probe measured faster than its FMAs) from panels in k
    pairs for the matrix unit."""
    key = "bf16" if dtype == "bfloat16" else "f16"
    model, inputs = as_dtype("llama_decode", DTYPES[dtype])
    compiled = llmc.compile(model, inputs, target="cpu", emit=lambda _: None)
    assert f"llmc_dot_{key}(" in compiled.program.source.text
    packed = [slot for slot in compiled.program.source.weights if slot.pack is not None]
    assert packed and all(slot.pack.half == key for slot in packed)
    prefill_model, prefill_inputs = as_dtype("llama_block", DTYPES[dtype])
    prefill = llmc.compile(prefill_model, prefill_inputs, target="cpu", emit=lambda _: None)
    calls = [line for line in prefill.program.source.text.splitlines() if f"llmc_dot_{key}(" in line and "static" not in line]
    assert calls == []
    pairs = key == "bf16" and bf16_products_on_matrix_unit(BuildOptions.from_environment(), get_target("cpu").lanes)
    assert all(slot.pack.half == ("pairs" if pairs else "") for slot in prefill.program.source.weights
               if slot.pack is not None)

"""Each pass on IR text (FileCheck) and by interpretation before/after on random inputs."""

import numpy as np
import pytest
import torch
from conftest import MLP, assert_close, check_pass, eager, graph_args, run_ir, run_passes

from llmc.exporter import export_model
from llmc.ir_text import parse_ir, print_ir

WRITTEN_OUT_ATTENTION = """
func.func @forward(%q: tensor<1x2x16x8xf32>, %k: tensor<1x2x16x8xf32>, %v: tensor<1x2x16x8xf32>, %x: tensor<1x2x16x8xf32>) -> tensor<1x2x16x8xf32> {
  %kt = graph.permute %k {perm = array<i64: 0, 1, 3, 2>} : tensor<1x2x16x8xf32> -> tensor<1x2x8x16xf32>
  %s = graph.matmul %q, %kt : (tensor<1x2x16x8xf32>, tensor<1x2x8x16xf32>) -> tensor<1x2x16x16xf32>
  %c = graph.constant 0.35 : f32 : tensor<f32>
  %scaled = graph.mul %s, %c : (tensor<1x2x16x16xf32>, tensor<f32>) -> tensor<1x2x16x16xf32>
  %mask = graph.causal_mask : tensor<1x1x16x16xi1>
  %zero = graph.constant 0.0 : f32 : tensor<f32>
  %off = graph.eq %mask, %zero : (tensor<1x1x16x16xi1>, tensor<f32>) -> tensor<1x1x16x16xi1>
  %ninf = graph.constant 0xFF800000 : f32 : tensor<f32>
  %masked = graph.where %off, %ninf, %scaled : (tensor<1x1x16x16xi1>, tensor<f32>, tensor<1x2x16x16xf32>) -> tensor<1x2x16x16xf32>
  %p = graph.softmax %masked {dim = 3 : i64} : tensor<1x2x16x16xf32> -> tensor<1x2x16x16xf32>
  %o = graph.matmul %p, %v : (tensor<1x2x16x16xf32>, tensor<1x2x16x8xf32>) -> tensor<1x2x16x8xf32>
  %r = graph.add %o, %x : (tensor<1x2x16x8xf32>, tensor<1x2x16x8xf32>) -> tensor<1x2x16x8xf32>
  func.return %r : tensor<1x2x16x8xf32>
}
"""



MLP_WEIGHTS = {
    "fc.weight": np.random.default_rng(1).standard_normal((48, 32)).astype(np.float32) * 0.2,
    "fc.bias": np.random.default_rng(2).standard_normal(48).astype(np.float32),
    "proj.weight": np.random.default_rng(3).standard_normal((32, 48)).astype(np.float32) * 0.2,
}


def test_fuse_makes_written_out_attention_one_kernel():
    check_pass(WRITTEN_OUT_ATTENTION, "", "fuse", """
// CHECK: kernel.kernel "k0_attention"
// CHECK-SAME: kind = "attention"
// CHECK: graph.attention %{{.*}} {scale = 3.500000e-01 : f32, causal}
// CHECK-NOT: graph.softmax
// CHECK: kernel.kernel "k1_add"
""")


def test_fuse_puts_epilogues_into_matmul_kernels_without_cycles():
    after = check_pass(MLP, "", "fuse", """
// CHECK: kernel.kernel "k0_linear_gelu"
// CHECK: graph.gelu
// CHECK: kernel.kernel "k1_linear_add"
// CHECK-NOT: kernel.kernel
""", MLP_WEIGHTS)
    kernels = [op for op in after.walk() if op.name == "kernel.kernel"]
    assert kernels[1].inputs[0] is kernels[0].outputs[0]


def test_tile_records_decisions_and_accepts_overrides():
    check_pass(MLP, "fuse", "tile{matmul=16,32,16 stages=3}", """
// CHECK: kernel.kernel "k0_linear_gelu"
// CHECK-SAME: tiles = array<i64: 16, 32, 16>
// CHECK-SAME: stages = 3
""", MLP_WEIGHTS)


def test_lower_tile_emits_a_k_loop_and_fused_epilogue():
    check_pass(MLP, "fuse,tile{matmul=16,16,16}", "lower-tile", """
// CHECK: tile.kernel @k0_linear_gelu
// CHECK: scf.for
// CHECK: tile.dot
// CHECK: graph.gelu
// CHECK: tile.store
// CHECK: func.func @forward
// CHECK: tile.launch @k0_linear_gelu
""", MLP_WEIGHTS)


@pytest.mark.parametrize("stages", [2, 3])
def test_pipeline_has_prologue_body_and_epilogue(stages):
    after = check_pass(MLP, "fuse,tile{matmul=16,16,8},lower-tile", f"pipeline{{stages={stages}}}", """
// CHECK: tile.kernel @k0_linear_gelu
// CHECK: tile.load {{.*}}llmc.pipeline = "prologue"
// CHECK: scf.for
// CHECK: tile.dot {{.*}}llmc.pipeline = "body"
// CHECK: tile.load {{.*}}llmc.pipeline = "body"
// CHECK: scf.yield
// CHECK: } {llmc.pipeline_stages = {{[0-9]}} : i64, llmc.pipeline = "body"}
// CHECK: tile.dot {{.*}}llmc.pipeline = "epilogue"
""", MLP_WEIGHTS)
    text = print_ir(after)
    assert text.count('tile.dot') >= 1 + (stages - 1)


def test_pipeline_of_causal_attention_keeps_a_dynamic_loop():
    check_pass(WRITTEN_OUT_ATTENTION, "fuse,tile{attention=4,4},lower-tile", "pipeline{stages=2}", """
// CHECK: tile.kernel @k0_attention
// CHECK: arith.select
// CHECK: tile.load {{.*}}"prologue"
// CHECK: scf.for
// CHECK: llmc.pipeline = "body"
// CHECK: llmc.loads_past_end
""")


def test_pipeline_of_a_static_loop_loads_nothing_past_its_end():
    check_pass(MLP, "fuse,tile{matmul=8,16,16},lower-tile", "pipeline{stages=2}", """
// CHECK: scf.for
// CHECK-NOT: llmc.loads_past_end
""", MLP_WEIGHTS)


def test_coalesce_marks_unit_stride_vectors():
    check_pass(MLP, "fuse,tile{matmul=16,16,16},lower-tile", "coalesce{target=cpu-avx2}", """
// CHECK: tile.load {{.*}}order = array<i64: 1, 0>, vec = 8
// CHECK: tile.load {{.*}}strides = array<i64: 1, 32>{{.*}}order = array<i64: 0, 1>, vec = 8
""", MLP_WEIGHTS)


def test_swizzle_groups_programs_and_packs_weights():
    check_pass(MLP, "fuse,tile{matmul=8,16,16},lower-tile,coalesce", "swizzle{target=cpu-avx2 group=2}", """
// CHECK: tile.tile_coords {{.*}}group = 2
// CHECK: tile.load {{.*}}swizzle = array<i64:
// CHECK: tile.load {{.*}}pack = 16
""", MLP_WEIGHTS)


def test_plan_memory_reuses_the_arena():
    after = check_pass(MLP, "fuse,lower-tile", "plan-memory", """
// CHECK: func.func @forward
// CHECK-SAME: llmc.arena_bytes =
// CHECK: tile.alloc {offset = 0 : i64}
""", MLP_WEIGHTS)
    assert after is not None


def test_every_pass_preserves_a_real_block(exported):
    model, inputs, imported = exported("llama_decode")
    inputs = graph_args(model, inputs, imported)  # the KV cache buffers the step updates, then its inputs
    expected = run_ir(imported.module, inputs, imported.weights)
    for spec in ["fuse", "tile", "lower-tile", "coalesce", "swizzle", "pipeline{stages=3}", "plan-memory"]:
        run_passes(imported.module, spec)
        assert_close(run_ir(parse_ir(print_ir(imported.module)), inputs, imported.weights), expected)


def test_export_records_weights_by_name(exported):
    _, _, imported = exported("gpt2_block")
    assert "attn.c_attn.weight" in imported.weights


class CrossAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("stages", [2, 3])
def test_pipeline_drains_the_right_iterations_when_the_step_does_not_divide_the_range(stages):
    # 21 keys in KV tiles of 8: three trips, the last one partial; its masks use the epilogue's iv.
    inputs = (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 21, 8), torch.randn(1, 2, 21, 8))
    module = run_passes(export_model(CrossAttention(), inputs).module, "fuse,tile{attention=8,8},lower-tile")
    before = run_ir(module, inputs, {})
    after = run_passes(module, f"pipeline{{stages={stages}}}")
    assert 'llmc.pipeline = "epilogue"' in print_ir(after)
    assert_close(before, eager(CrossAttention(), inputs), tol=1e-5)
    assert_close(run_ir(after, inputs, {}), before, tol=1e-5)


def test_fuse_keeps_a_column_broadcast_of_a_row_reduction_out_of_the_row_kernel():
    check_pass("""
func.func @forward(%x: tensor<4x4xf32>) -> tensor<4x4xf32> {
  %t = graph.tanh %x : tensor<4x4xf32> -> tensor<4x4xf32>
  %s = graph.reduce_sum %t {dim = 1 : i64} : tensor<4x4xf32> -> tensor<4xf32>
  %m = graph.mul %t, %s : (tensor<4x4xf32>, tensor<4xf32>) -> tensor<4x4xf32>
  func.return %m : tensor<4x4xf32>
}""", "", "fuse", """
// CHECK: kernel.kernel "k1_reduce_sum"
// CHECK-NOT: graph.mul
// CHECK: kernel.yield
// CHECK: kernel.kernel "k2_mul"
""")

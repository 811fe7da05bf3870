"""KV-cache ops on IR text through each pass (FileCheck), interpreted before and after: graph.scatter
written in place (or behind a copy), and attention bounded by run-time key positions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_pass, run_ir, run_passes

from llmc.errors import InterpretError
from llmc.ir_text import parse_ir

LOWERED = "fuse,tile,lower-tile,coalesce,swizzle,pipeline,plan-memory"

# one decode step's cache write: the new row goes to row `pos` of the cache argument, and the
# function hands the new cache back for the caller to copy into argument 0 (llmc.writes_back)
WRITE = """
func.func @forward(%cache: tensor<1x2x16x8xf32>, %pos: tensor<1xi64>, %new: tensor<1x2x1x8xf32>) -> (tensor<1x2x16x8xf32>, tensor<1x2x16x8xf32>) attributes {llmc.writes_back = array<i64: RESULT, 0>} {
  %written = graph.scatter %cache[%pos], %new : (tensor<1x2x16x8xf32>, tensor<1xi64>, tensor<1x2x1x8xf32>) -> tensor<1x2x16x8xf32>
  %c = graph.constant 2.0 : f32 : tensor<f32>
  %doubled = graph.mul %written, %c : (tensor<1x2x16x8xf32>, tensor<f32>) -> tensor<1x2x16x8xf32>
  func.return %doubled, %written : tensor<1x2x16x8xf32>, tensor<1x2x16x8xf32>
}
"""


def write_args(position: int):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 2, 16, 8)).astype(np.float32), np.array([position], dtype=np.int64),
            rng.standard_normal((1, 2, 1, 8)).astype(np.float32)]


def test_a_cache_write_back_is_a_scatter_kernel_into_the_argument():
    after = check_pass(WRITE.replace("RESULT", "1"), "", "fuse", """
// CHECK-NOT: graph.cast
// CHECK: kernel.kernel "k0_scatter"(%cache, %pos, %new) {kind = "scatter"}
// CHECK: func.return %{{.*}}, %[[W:.*]] :
""", args=write_args(5))
    lowered = run_passes(after, "tile,lower-tile")
    text = str(lowered)
    # no buffer is allocated for the written cache: the launch writes the argument, which is returned
    assert text.count("tile.alloc") == 1
    func = next(op for op in lowered.walk() if op.name == "func.func")
    assert func.body.block.last_op.operands[1] is func.body.block.args[0]


def test_the_roofline_counts_the_rows_a_scatter_writes_not_the_cache():
    from llmc.cost_model import kernel_cost
    from llmc.dialects import kernel

    fused = run_passes(parse_ir(WRITE.replace("RESULT", "1")), "fuse")
    costs = {k.kernel_name.data: kernel_cost(k) for k in fused.walk() if isinstance(k, kernel.KernelOp)}
    row_bytes = 1 * 2 * 1 * 8 * 4  # the new rows, read once and written once; the position is one int64
    assert costs["k0_scatter"].bytes == 2 * row_bytes + 8
    # the kernel that reads the written cache whole still counts all of it
    assert costs["k1_mul"].bytes == 2 * 1 * 2 * 16 * 8 * 4


def test_a_cache_nobody_writes_back_is_copied_before_the_scatter():
    # result 0 (not the scatter's) is the one written back: the scatter may not clobber argument 0
    check_pass(WRITE.replace("RESULT", "0"), "", "fuse", """
// CHECK: kernel.kernel "k0_cast"(%cache) {kind = "pointwise"}
// CHECK: kernel.kernel "k1_scatter"
""", args=write_args(-3))


@pytest.mark.parametrize("position", [0, 15, -16])
def test_scatter_lowers_to_row_stores_that_agree_with_the_interpreter(position):
    check_pass(WRITE.replace("RESULT", "1"), "", LOWERED, """
// CHECK: tile.kernel @k0_scatter
// CHECK: tile.scatter
// CHECK-SAME: count = 1
""", args=write_args(position))


def test_a_scatter_out_of_range_is_an_error():
    module = run_passes(parse_ir(WRITE.replace("RESULT", "1")), LOWERED)
    with pytest.raises(InterpretError, match="out of range"):
        run_ir(module, write_args(16), {})


# a decode step's attention over a 16-slot cache: keys up to `pos` (an iota compared with it) and a
# padding mask; fuse makes the bound the attention's `positions` operand
BOUNDED = """
func.func @forward(%q: tensor<1x4x1x8xf32>, %k: tensor<1x2x16x8xf32>, %v: tensor<1x2x16x8xf32>, %pos: tensor<1x1x1x1xi64>, %pad: tensor<1x1x1x16xi1>) -> tensor<1x4x1x8xf32> {
  %keys = graph.iota {dim = 3 : i64} : tensor<1x1x1x16xi64>
  %live = graph.le %keys, %pos : (tensor<1x1x1x16xi64>, tensor<1x1x1x1xi64>) -> tensor<1x1x1x16xi1>
  %t = graph.constant 1 : i64 : tensor<i1>
  %m0 = graph.and %t, %live : (tensor<i1>, tensor<1x1x1x16xi1>) -> tensor<1x1x1x16xi1>
  %m = graph.and %m0, %pad : (tensor<1x1x1x16xi1>, tensor<1x1x1x16xi1>) -> tensor<1x1x1x16xi1>
  %o = graph.attention %q, %k, %v, %m {scale = 0.35 : f32} : (tensor<1x4x1x8xf32>, tensor<1x2x16x8xf32>, tensor<1x2x16x8xf32>, tensor<1x1x1x16xi1>) -> tensor<1x4x1x8xf32>
  func.return %o : tensor<1x4x1x8xf32>
}
"""


def bounded_args(position: int):
    rng = np.random.default_rng(1)
    pad = np.ones((1, 1, 1, 16), dtype=bool)
    pad[..., 1] = False
    return [rng.standard_normal((1, 4, 1, 8)).astype(np.float32), rng.standard_normal((1, 2, 16, 8)).astype(np.float32),
            rng.standard_normal((1, 2, 16, 8)).astype(np.float32), np.array(position).reshape(1, 1, 1, 1), pad]


def test_a_key_position_bound_becomes_the_attention_positions_operand():
    check_pass(BOUNDED, "", "fuse", """
// CHECK: kernel.kernel "{{.*}}attention"(%q, %k, %v, %pad, %pos)
// CHECK: graph.attention {{.*}}, %{{.*}} positions %{{.*}} : tensor<1x1x1x1xi64>
""", args=bounded_args(6))


@pytest.mark.parametrize("position", [0, 3, 15])
def test_the_kv_loop_stops_at_the_largest_position(position):
    after = check_pass(BOUNDED, "", LOWERED + "", """
// CHECK: tile.kernel @{{.*}}attention
// CHECK: tile.reduce
// CHECK-SAME: kind = "max"
// CHECK: tile.to_index
// CHECK: scf.for
""", args=bounded_args(position))
    assert "tile.to_index" in str(after)


def test_tile_sizes_of_several_kv_tiles_skip_the_tiles_past_the_position():
    # 4-key tiles over 16 keys: position 5 reads two tiles; the interpreter agrees at every position
    for position in (1, 5, 12):
        check_pass(BOUNDED, "", "fuse,tile{attention=16,4},lower-tile,pipeline", """
// CHECK: scf.for
""", args=bounded_args(position))


def test_decode_gqa_reads_each_kv_head_once_for_its_query_heads():
    # 4 query heads over 2 KV heads, one query each: one program per KV head with a 2-row query tile
    check_pass(BOUNDED, "", "fuse", """
// CHECK: graph.reshape %q{{.*}} : tensor<1x4x1x8xf32> -> tensor<1x2x2x8xf32>
// CHECK: graph.attention {{.*}} : (tensor<1x2x2x8xf32>, tensor<1x2x16x8xf32>, tensor<1x2x16x8xf32>, tensor<1x1x1x16xi1>) -> tensor<1x2x2x8xf32>
""", args=bounded_args(9))
    check_pass(BOUNDED, "", LOWERED, """
// CHECK: tile.kernel @k{{[0-9]+}}_attention attributes {grid = array<i64: 2, 1>
""", args=bounded_args(9))

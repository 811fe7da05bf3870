"""The pure decision functions behind the passes."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from llmc.cost_model import attention_tiles, matmul_tiles, row_tiles
from llmc.dialects.tile_interp import grouped_coords
from llmc.errors import PassOptionError
from llmc.passes.coalesce import access_layout
from llmc.passes.plan_memory import Interval, plan_offsets
from llmc.passes.tile import TilePass
from llmc.target import get_target


def test_plan_offsets_never_overlaps_live_buffers():
    rng = np.random.default_rng(0)
    buffers = [Interval(int(rng.integers(1, 50)) * 64, s, s + int(rng.integers(0, 4))) for s in rng.integers(0, 10, 30)]
    offsets, total = plan_offsets(buffers)
    for (i, a), (j, b) in itertools.combinations(enumerate(buffers), 2):
        if a.start <= b.end and b.start <= a.end:
            assert offsets[i] + a.size <= offsets[j] or offsets[j] + b.size <= offsets[i]
    assert total < sum(b.size for b in buffers)


def test_grouped_order_is_a_permutation():
    for rows, cols, group in [(5, 3, 2), (8, 8, 4), (3, 7, 8)]:
        coords = {grouped_coords(p, rows, cols, group) for p in range(rows * cols)}
        assert coords == {(r, c) for r in range(rows) for c in range(cols)}


def test_access_layout_vectorises_only_unit_stride():
    cpu = get_target("cpu-avx2")
    assert access_layout((64, 64), (64, 1), (16, 16), cpu) == ((1, 0), 8)
    assert access_layout((64, 64), (1, 64), (16, 16), cpu) == ((0, 1), 8)
    assert access_layout((64, 64), (128, 2), (16, 16), cpu)[1] == 1
    assert access_layout((64, 6), (6, 1), (16, 8), cpu)[1] == 2
    gpu = get_target("gpu")  # 16-byte accesses: 4 f32 or 8 bf16 elements
    assert access_layout((64, 64), (64, 1), (16, 16), gpu)[1] == 4
    assert access_layout((64, 64), (64, 1), (16, 16), gpu, item_bytes=2)[1] == 8


def test_matmul_tiles_fit_scratch_and_do_not_exceed_the_problem():
    cpu = get_target("cpu-avx2")
    decision = matmul_tiles(1, 768, 768, cpu)
    assert decision.tiles[0] == 1
    bm, bn, bk = matmul_tiles(1024, 1024, 1024, cpu).tiles
    # CPU operand panels are read in place (one pair in cache at a time), GPU ones staged per stage.
    assert (bm * bk + bk * bn) * 4 + bm * bn * 4 <= cpu.scratch_bytes
    gpu = get_target("gpu")
    for operand_bytes in (2, 4):
        bm, bn, bk = matmul_tiles(4096, 4096, 4096, gpu, operand_bytes).tiles
        # GPU operand tiles are staged in shared memory, one pair per stage; the accumulator is in registers
        assert (bm * bk + bk * bn) * operand_bytes * gpu.default_stages <= gpu.scratch_bytes
        assert bm * bn <= 8 * 32 * 128  # at most 128 registers per thread of an 8-warp program


def test_cpu_matmul_row_tiles_are_whole_micro_kernel_blocks():
    """With 16 vector registers the micro-kernel takes 6 rows: a power-of-two row tile would end in a partial
    block (64 = 10 x 6 + 4) run by the slower narrow kernels, and no launch-wide lhs packing could serve it."""
    for name, rows in (("cpu-avx2", 6), ("cpu-avx512", 8)):
        cpu = get_target(name)
        assert cpu.micro_rows == rows
        for m, n, k in ((128, 768, 768), (1024, 1024, 1024), (40, 96, 100), (300, 2048, 512)):
            bm = matmul_tiles(m, n, k, cpu).tiles[0]
            assert bm % rows == 0 and bm < m + rows, (name, m, bm)
        assert matmul_tiles(7, 768, 768, cpu).tiles[0] == 8  # a decode-sized product: the few-row kernels
    gpu = get_target("gpu")
    assert all(not t & (t - 1) for m in (40, 100, 1024) for t in matmul_tiles(m, 4096, 4096, gpu).tiles)


def test_the_tile_pass_takes_row_tiles_of_whole_blocks_on_the_cpu_only():
    assert TilePass(target="cpu-avx2", matmul=(48, 64, 64)).override("matmul", get_target("cpu-avx2")) == (48, 64, 64)
    assert TilePass(target="cpu-avx512", matmul=(40, 64, 64)).override("matmul", get_target("cpu-avx512"))
    for target, tiles in (("cpu-avx512", (20, 64, 64)), ("gpu", (48, 64, 64)), ("cpu-avx2", (64, 48, 64)),
                          ("cpu-avx2", (20, 64, 64))):
        with pytest.raises(PassOptionError, match="powers of two"):
            TilePass(target=target, matmul=tiles).override("matmul", get_target(target))


def test_a_large_gpu_product_takes_the_widest_tile_its_registers_hold():
    """128x256 ran a 4096^3 bf16 product on an H100 at 0.86x cuBLAS against 0.76x for 128x128."""
    gpu = get_target("gpu")
    assert matmul_tiles(4096, 4096, 4096, gpu, operand_bytes=2).tiles == (128, 256, 64)
    # few column tiles would leave SMs idle: the model keeps 128 wide there
    assert matmul_tiles(2048, 768, 768, gpu, operand_bytes=2).tiles[1] == 128


def test_gpu_attention_with_f32_operands_takes_fewer_query_rows():
    """f32 products run as FMAs on operands in registers, where 128 query rows spill; 16-bit ones go
    to the tensor cores."""
    gpu = get_target("gpu")
    assert attention_tiles((1, 12, 2048, 64), 2048, gpu, operand_bytes=2).tiles == (128, 64)
    assert attention_tiles((1, 12, 2048, 64), 2048, gpu, operand_bytes=4).tiles == (64, 64)
    assert attention_tiles((1, 12, 1, 64), 512, gpu, operand_bytes=4).tiles[0] == 1  # a decode step


def test_row_tiles_keep_the_rows_and_a_materialised_copy_in_half_of_l1():
    for l1 in (32 * 1024, 48 * 1024, 64 * 1024):
        cpu = replace(get_target("cpu-avx512"), l1_bytes=l1)
        for cols in (64, 768, 1024, 4096):
            rows, width = row_tiles((16384, cols), cpu).tiles
            assert width >= cols
            assert rows == 1 or 2 * rows * width * 4 <= l1 // 2
            assert 2 * (rows + 1) * width * 4 > l1 // 2  # and no fewer rows than that
    assert row_tiles((16384, 1024), replace(get_target("cpu-avx512"), l1_bytes=32 * 1024)).tiles == (2, 1024)
    assert row_tiles((3, 1024), get_target("cpu-avx512")).tiles[0] <= 4  # never more rows than there are


def test_the_host_target_takes_the_caches_the_kernel_reports(tmp_path):
    from llmc.target import host_caches, host_cpu_target

    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "64K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32M")]):
        entry = tmp_path / f"index{index}"
        entry.mkdir()
        for name, text in (("level", str(level)), ("type", kind), ("size", size)):
            (entry / name).write_text(text + "\n")
    assert host_caches(str(tmp_path)) == {1: 32 * 1024, 2: 1024 * 1024, 3: 32 * 1024 * 1024}
    host, reported = host_cpu_target(), host_caches()
    if reported:
        assert host.l1_bytes == reported.get(1, host.l1_bytes) and host.llc_bytes == max(reported.values())
        assert host.scratch_bytes == host.l2_bytes // 2


def test_a_product_that_rounds_its_input_to_int8_takes_wider_column_tiles():
    """Every column tile rounds the rows it reads again: the model weighs those re-reads and may go wider."""
    cpu = get_target("cpu")
    plain = matmul_tiles(128, 1024, 1024, cpu)
    rounded = matmul_tiles(128, 1024, 1024, cpu, rounded_lhs=True)
    assert rounded.tiles[1] > plain.tiles[1]
    bm, bn, bk = rounded.tiles
    assert (bm * bk + bk * bn) * 4 + bm * bn * 4 <= cpu.scratch_bytes


def test_divisibility_of_index_arithmetic():
    # coalesce caps a vector width by what provably divides the start of the access
    from llmc.ir_text import parse_ir
    from llmc.passes.coalesce import divisibility

    module = parse_ir("""
func.func @f(%pid: index) {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %c64 = arith.constant 64 : index
  %c768 = arith.constant 768 : index
  %tile = arith.muli %pid, %c64 : index
  %shifted = arith.subi %tile, %c4 : index
  %head = arith.addi %tile, %c768 : index
  scf.for %k = %c0 to %c768 step %c64 {
    %next = arith.addi %k, %c64 : index
    scf.yield
  }
  func.return
}""")
    values = {}
    for op in module.walk():
        for result in op.results:
            values[result.name_hint] = result
        if op.name == "scf.for":
            values["k"] = op.body.block.args[0]
    assert divisibility(values["tile"]) == 64
    assert divisibility(values["shifted"]) == 4
    assert divisibility(values["head"]) == 64  # 768 = 3 * 256
    assert divisibility(values["k"]) == 64 and divisibility(values["next"]) == 64
    assert divisibility(values["c0"]) >= 1 << 16


LINEAR = """
func.func @forward(%x: tensor<1x128x{k}xf32>) -> tensor<1x128x512xf32> {{
  %w = graph.weight "fc.weight" : tensor<512x{k}xf32>
  %y = graph.linear %x, %w : (tensor<1x128x{k}xf32>, tensor<512x{k}xf32>) -> tensor<1x128x512xf32>
  func.return %y : tensor<1x128x512xf32>
}}
"""


@pytest.mark.parametrize("k, deep", [(768, True), (3072, True), (1000, False)])
def test_the_tuners_cpu_candidates_take_k_in_few_even_steps_that_fit_in_l2(k, deep):
    """Past the scratch budget (the operands are read in place): K whole or in even steps of whole blocks of 32,
    the operand blocks together within L2, with no more pipeline stages than steps. K = 1000 has no such split,
    and a GPU's operands are staged in shared memory: neither gets one."""
    from conftest import run_passes

    from llmc.cost_model import candidate_tiles
    from llmc.ir_text import parse_ir

    kop = next(op for op in run_passes(parse_ir(LINEAR.format(k=k)), "fuse").walk() if op.name == "kernel.kernel")
    cpu = get_target("cpu-avx2")
    past_model = [c for c in candidate_tiles(kop, cpu, 8) if c.tiles[2] > 256]
    assert bool(past_model) == deep
    for c in past_model:
        bm, bn, bk = c.tiles
        assert k % bk == 0 and bk % 32 == 0 and (bm + bn) * bk * 4 <= cpu.l2_bytes
        assert c.stages <= k // bk
    assert any(c.tiles[2] == k and c.stages == 1 for c in past_model) == (k == 768)
    assert all(c.tiles[2] <= 64 for c in candidate_tiles(kop, get_target("gpu"), 8))

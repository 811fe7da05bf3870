"""Roofline cost model and tile-size decisions: pure functions over kernel ops.

`kernel_cost` counts FLOPs and the bytes a kernel must move (its operands and
results once each; of a destination written in place, the rows written);
`decide_tiles` picks tile sizes and pipeline depth for a kernel on a target.
Both return plain values the `tile` pass writes into the IR and `llmc compile`
prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmc.dialects import graph, kernel
from llmc.dtypes import element_bytes
from llmc.passes.lowering.emit import as_2d, pow2_at_least
from llmc.target import Target

POINTWISE_FLOPS = 1
ROW_FLOPS = {graph.SoftmaxOp: 5, graph.LayerNormOp: 8}
GPU_WIDE_WARPS = 8  # warps of a program with a wide tile (the Triton renderer's launch options)


@dataclass(frozen=True)
class Cost:
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        return self.flops / max(self.bytes, 1)


@dataclass(frozen=True)
class TileDecision:
    tiles: tuple[int, ...]
    stages: int
    why: str


def _numel(value) -> int:
    return math.prod(graph.shape_of(value))


def op_flops(op) -> int:
    if isinstance(op, graph.MatmulOp | graph.LinearOp):
        return 2 * _numel(op.results[0]) * graph.shape_of(op.operands[0])[-1]
    if isinstance(op, graph.AttentionOp):
        b, h, tq, d = graph.shape_of(op.query)
        tk = graph.shape_of(op.key)[2]
        full = 4 * b * h * tq * tk * d
        return full // 2 if op.causal is not None else full
    if isinstance(op, graph.ROW_OPS):
        return ROW_FLOPS.get(type(op), 1) * _numel(op.operands[0])
    if isinstance(op, (*graph.POINTWISE_OPS, graph.ConcatOp)):
        return POINTWISE_FLOPS * _numel(op.results[0])
    return 0


def _bytes(value) -> int:
    return _numel(value) * element_bytes(value.type.element_type)


def kernel_cost(kop: kernel.KernelOp) -> Cost:
    block = kop.body.block
    flops = sum(op_flops(op) for op in block.ops)
    # a scatter writes its source's rows into its destination's buffer in place (`fuse`) and reads none of
    # it (unless another op of the kernel does): a decode step's KV-cache write moves one row per head, not the
    # cache its attention reads whole
    written = {}
    for op in block.ops:
        if isinstance(op, graph.ScatterOp):
            written[op.result] = _bytes(op.source)
            if all(use.operation is op for use in op.dest.uses):
                written[op.dest] = 0
    moved = sum(written.get(arg, _bytes(v)) for arg, v in zip(block.args, kop.inputs))
    moved += sum(written.get(y, _bytes(v)) for y, v in zip(block.last_op.operands, kop.outputs))
    return Cost(flops, moved)


def anchor_of(kop: kernel.KernelOp):
    for op in kop.body.block.ops:
        if isinstance(op, (graph.MatmulOp, graph.LinearOp, graph.AttentionOp, graph.ScatterOp, *graph.ROW_OPS)):
            return op
    return None


def decide_tiles(kop: kernel.KernelOp, target: Target) -> TileDecision:
    kind = kop.kind.data
    anchor = anchor_of(kop)
    if kind == "matmul":
        shape = graph.shape_of(anchor.results[0])
        operand_bytes = element_bytes(anchor.operands[0].type.element_type)
        return matmul_tiles(shape[-2], shape[-1], graph.shape_of(anchor.operands[0])[-1], target, operand_bytes,
                            rounds_lhs(anchor))
    if kind == "attention":
        return attention_tiles(graph.shape_of(anchor.query), graph.shape_of(anchor.key)[2], target,
                               element_bytes(anchor.query.type.element_type))
    if kind == "row":
        scans = any(isinstance(op, graph.CumsumOp) for op in kop.body.walk())
        return row_tiles(as_2d(graph.shape_of(anchor.operands[0])), target, row_by_row=not scans)
    if kind == "scatter":  # the source rows it writes, not the whole destination
        return pointwise_tiles(as_2d(graph.shape_of(anchor.source)), target)
    return pointwise_tiles(as_2d(graph.shape_of(kop.outputs[0])), target)


# A product with int8 activations on AMX tiles (and on GPUs) rounds its lhs tile again for every column tile
# that reads it: an element rounded costs about as much as this many elements re-read (its max, scale, round
# and store). Other CPUs round a linear's input once per launch and re-read its bytes; the weight stays, which
# keeps their column tiles wide.
ROUNDING_COST = 4.0


def rounds_lhs(anchor) -> bool:
    """Whether a matmul kernel's product rounds its input to int8 first (a linear with int8 activations)."""
    return isinstance(anchor, graph.LinearOp) and anchor.activations is not None


def matmul_tiles(m: int, n: int, k: int, target: Target, operand_bytes: int = 4, rounded_lhs: bool = False) -> TileDecision:
    """Minimise the bytes re-read from memory, with padding waste, within the scratch budget
    (staged operand tiles at their element size plus the f32 accumulator)."""
    (_, tiles, stages) = _matmul_ranked(m, n, k, target, operand_bytes, rounded_lhs)[0]
    return TileDecision(tiles, stages, "least re-read traffic within the scratch budget")


def _matmul_ranked(m: int, n: int, k: int, target: Target, operand_bytes: int, rounded_lhs: bool = False) -> list[tuple]:
    """Every tiling that fits the scratch budget as (score, tiles, stages), best first. An lhs rounded to
    int8 weighs its re-reads by ROUNDING_COST, wider column tiles are candidates, and K tiles hold whole
    blocks of the rounding (the integer dot products need them: with 16 k a tile, a host with a 512 KiB L2
    took 96x512x16 and dequantized every weight tile)."""
    ranked = []
    lhs_cost = ROUNDING_COST if rounded_lhs else 1.0
    gpu = target.kind == "gpu"
    widths = (16, 32, 64, 128, 256, 512) if rounded_lhs else (16, 32, 64, 128, 256) if gpu else (16, 32, 64, 128)
    if not gpu:  # the micro-kernel computes two vectors of columns: a narrower tile computes padding
        widths = tuple(w for w in widths if w >= 2 * target.lanes)
    for bm in _row_candidates(m, target):
        for bn in _candidates(n, widths):
            depths = (16, 32, 64) if gpu else (32, 64, 128, 256) if rounded_lhs else (16, 32, 64, 128, 256)
            for bk in _candidates(k, depths):
                stages = min(target.default_stages, math.ceil(k / bk))
                if not _fits_scratch(bm, bn, bk, stages, operand_bytes, target):
                    continue
                waste = (math.ceil(m / bm) * bm * math.ceil(n / bn) * bn) / (m * n)
                traffic = m * n * k * (lhs_cost / bn + 1 / bm) * waste
                programs = math.ceil(m / bm) * math.ceil(n / bn)
                starved = max(1.0, target.cores / programs)
                ranked.append(((traffic * starved, -bk), (bm, bn, bk), stages))
    return sorted(ranked)


def _fits_scratch(bm: int, bn: int, bk: int, stages: int, operand_bytes: int, target: Target) -> bool:
    """On a GPU every pipeline stage holds an operand pair in shared memory, and the f32 accumulator
    lives in registers: at most 128 per thread of an 8-warp program, about half of the 255 a thread
    may hold (the rest for operand fragments and addresses), so 128x256 and no more. On a CPU the
    stages are cache prefetches of one panel pair, which shares the scratch budget with the accumulator."""
    accumulator = bm * bn * 4
    if target.kind == "gpu":
        per_thread = pow2_at_least(target.vector_registers) // 2
        return (bm * bk + bk * bn) * operand_bytes * stages <= target.scratch_bytes \
            and accumulator <= GPU_WIDE_WARPS * 32 * per_thread * 4
    return (bm * bk + bk * bn) * operand_bytes + accumulator <= target.scratch_bytes


def _row_candidates(m: int, target: Target) -> list[int]:
    """A matmul's row tiles. On a GPU powers of two. On a CPU whole blocks of the micro-kernel's rows,
    2 to 16 of them (16..128 rows with 32 vector registers, 12..96 with 16, where a power of two would end
    in a partial block that the slower narrow kernels compute), at most m rounded up to whole blocks; a
    product of at most 8 rows (a decode step) keeps its power of two, for the few-row kernels."""
    if target.kind == "gpu" or m <= 8:
        return _candidates(m, (16, 32, 64, 128))
    rows = target.micro_rows
    whole = -(-m // rows) * rows
    return sorted({min(rows * blocks, whole) for blocks in (2, 4, 8, 16)})


def _candidates(extent: int, sizes: tuple[int, ...]) -> list[int]:
    cap = pow2_at_least(extent)
    return sorted({min(s, cap) for s in sizes})


def _deep_k_tilings(shapes: list[tuple[int, int]], k: int, target: Target, operand_bytes: int) -> list[tuple]:
    """CPU candidates past the scratch budget: K in the fewest even steps (whole blocks of 32, as quantized and
    bf16-pair weights need) whose operand blocks fit in L2 together. A packed weight and an lhs packed once per
    launch are read in place, not staged in scratch, and a long K step is one long stream per panel where 256
    is many short ones: on a Zen 3 host (512 KiB L2) GPT-2's MLP linears ran 5-7% faster with K 768 than with
    the model's 128 or 256, and 1024^3 5%."""
    tilings = []
    for bm, bn in shapes:
        for steps in range(1, k // 32 + 1):
            bk = k // steps
            if k % steps == 0 and bk % 32 == 0 and (bm + bn) * bk * operand_bytes <= target.l2_bytes:
                tilings.append((bm, bn, bk))
                break
    return tilings


def attention_tiles(q_shape: tuple[int, ...], tk: int, target: Target, operand_bytes: int = 4) -> TileDecision:
    """On a GPU, 16-bit operands go to the tensor cores from shared memory and a program takes 128 query
    rows; f32 operands are multiplied exactly (`input_precision="ieee"`), by FMAs on operands held in
    registers, where 128 rows spill: a 128x64 tile ran the H100's fp32 GPT-2 block 8.5x slower than 64x64."""
    _, _, tq, d = q_shape
    bd = pow2_at_least(d)
    rows = 64 if target.kind == "cpu" or operand_bytes >= 4 else 128
    bm = min(rows, pow2_at_least(tq))
    bn = min(64, pow2_at_least(tk))
    while bn > 16 and (bm * bd + 2 * bn * bd + bm * bn) * 4 > target.scratch_bytes:
        bn //= 2
    stages = min(target.default_stages, math.ceil(tk / bn))
    return TileDecision((bm, bn), stages, "query rows per program x keys per step, fitted to scratch")


def row_tiles(shape: tuple[int, ...], target: Target, row_by_row: bool = False) -> TileDecision:
    """Whole rows per program. Where the C backend renders the program's rows one at a time (`row_by_row`:
    backends/c/row_pipeline.py), a row's passes and its materialised copies (the centred row, the exponentials)
    take one row of L1 whatever the count, and each row's first pass overlaps the previous row's compute except
    the program's first: 8 rows run it alone for one row in 8, and took LayerNorm and softmax 16384x1024 0.80x
    and 0.84x the time of 2 rows rendered pass by pass (Zen 3, beyond the LLC, in rotation), while there are
    still programs for four per core. Rendered pass by pass (a cumsum's scan), a program's rows and their copy
    share half of L1 with room to spare: with each at a quarter, LayerNorm 16384x1024 beyond a 32 MiB LLC ran
    at 41 GB/s with 2 rows per program against 29 GB/s with 4 and 28 with 8 (Zen 4, 32 KiB L1d; in rotation),
    the later passes of more rows reading back from L2."""
    cols = pow2_at_least(shape[-1])
    if target.kind == "cpu" and row_by_row:
        rows = 8
        while rows > 1 and math.prod(shape[:-1]) < rows * 4 * target.cores:
            rows //= 2
        return TileDecision((rows, cols), 1, "whole rows, one at a time: the next row's first pass overlaps this one's")
    share = target.l1_bytes // 4 if target.kind == "cpu" else target.l1_bytes // 2
    rows = max(1, min(pow2_at_least(shape[-2]), share // (cols * 4)))
    return TileDecision((rows, cols), 1, "whole rows: the input and a materialised copy in half of L1")


def pointwise_tiles(shape: tuple[int, ...], target: Target) -> TileDecision:
    cols = min(pow2_at_least(shape[-1]), 256 if target.kind == "cpu" else 1024)
    rows = max(1, min(pow2_at_least(shape[-2]), 4096 // cols))
    return TileDecision((rows, cols), 1, "contiguous blocks of about 4K elements")


def candidate_tiles(kop: kernel.KernelOp, target: Target, count: int) -> list[TileDecision]:
    """What the autotuner measures: the model's decision first, then (matmul) tilings with deep K steps on a CPU
    and the next tilings the model ranks, or neighbours of the decision (the other kinds), and other pipeline
    depths; at most `count`, all valid for lower-tile (row kernels keep whole rows)."""
    decision = decide_tiles(kop, target)
    kind = kop.kind.data
    anchor = anchor_of(kop)
    deep: list[tuple] = []  # (tiles, stages) of the deep-K tilings: no more stages than K steps
    if kind == "matmul":
        shape, k = graph.shape_of(anchor.results[0]), graph.shape_of(anchor.operands[0])[-1]
        operand_bytes = element_bytes(anchor.operands[0].type.element_type)
        ranked = _matmul_ranked(shape[-2], shape[-1], k, target, operand_bytes, rounds_lhs(anchor))
        # deep-K tilings of the four best-ranked (BM, BN), the best tiling of the second and third, then other K
        # depths of the decision's
        shapes: dict[tuple[int, int], tuple] = {}
        for _, t, _ in ranked:
            shapes.setdefault(t[:2], t)
        if target.kind == "cpu":
            deep = [(t, min(decision.stages, math.ceil(k / t[2])))
                    for t in _deep_k_tilings(list(shapes)[:4], k, target, operand_bytes)]
        tilings = list(shapes.values())[1:3] + [t for _, t, _ in ranked if t[:2] == decision.tiles[:2]]
    elif kind == "attention":
        bm, bn = decision.tiles
        tilings = [(m, n) for m in (bm, bm // 2, bm * 2) for n in (bn, bn // 2, bn * 2) if 8 <= m <= 128 and 8 <= n <= 128]
    elif kind == "row":
        rows, cols = decision.tiles
        tilings = [(r, cols) for r in (rows, rows * 2, max(1, rows // 2), max(1, rows // 4), 1)]
    else:
        rows, cols = decision.tiles
        tilings = [(rows, cols), (rows * 2, cols), (max(1, rows // 2), cols), (rows, max(1, cols // 2)),
                   (max(1, rows // 4), cols)]
    depths = [decision.stages] + [d for d in (1, 2, 3) if d != decision.stages] if kind in ("matmul", "attention") \
        else [decision.stages]
    seen, out = set(), []
    for tiles, stages in [(decision.tiles, decision.stages)] + deep + [(t, decision.stages) for t in tilings] + [
            (decision.tiles, d) for d in depths]:
        if (tuple(tiles), stages) not in seen:
            seen.add((tuple(tiles), stages))
            out.append(TileDecision(tuple(tiles), stages, "model" if not out else "candidate"))
    # the ranked tilings first (up to count - the extra depths), then the depths of the decision
    extra = [d for d in out if d.tiles == decision.tiles and d.stages != decision.stages]
    main = [d for d in out if d not in extra]
    return (main[:max(1, count - len(extra[:2]))] + extra[:2])[:count]

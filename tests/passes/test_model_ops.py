"""The ops whole models add — gathers, integer masks, prefix sums, argmax, general attention masks — on
IR text through each pass (FileCheck), with the interpreter agreeing before and after on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import check_pass, run_ir, run_passes

import llmc
from llmc.errors import LlmcError
from llmc.ir_text import parse_ir

LOWERED = "fuse,tile,lower-tile,coalesce,swizzle,pipeline,plan-memory"


def check(text: str, spec: str, checks: str, args: list):
    return check_pass(text, "", spec, checks, args=args)


GATHER = """
func.func @forward(%table: tensor<10x8xf32>, %ids: tensor<2x3xi64>) -> tensor<2x3x8xf32> {
  %flat = graph.reshape %ids : tensor<2x3xi64> -> tensor<6xi64>
  %rows = graph.gather %table[%flat] : (tensor<10x8xf32>, tensor<6xi64>) -> tensor<6x8xf32>
  %c = graph.constant 2.0 : f32 : tensor<f32>
  %scaled = graph.mul %rows, %c : (tensor<6x8xf32>, tensor<f32>) -> tensor<6x8xf32>
  %out = graph.reshape %scaled : tensor<6x8xf32> -> tensor<2x3x8xf32>
  func.return %out : tensor<2x3x8xf32>
}
"""


def test_gather_is_a_kernel_with_its_epilogue():
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((10, 8)).astype(np.float32), np.array([[0, 9, -1], [3, 3, 5]], dtype=np.int64)]
    check(GATHER, "fuse", """
// CHECK: kernel.kernel "k0_gather_mul"
// CHECK-SAME: kind = "gather"
""", args)
    check(GATHER, "fuse,tile,lower-tile", """
// CHECK: tile.kernel @k0_gather_mul
// CHECK: tile.load {{.*}} -> tensor<{{[0-9]+}}x1xi64>
// CHECK: tile.gather
// CHECK: graph.mul
// CHECK: tile.store
""", args)


def test_gather_out_of_range_is_an_error():
    module = run_passes(parse_ir(GATHER), LOWERED)
    bad = [np.zeros((10, 8), np.float32), np.array([[0, 1, 10], [0, 0, 0]], dtype=np.int64)]
    with pytest.raises(LlmcError, match="out of range"):
        run_ir(module, bad, {})


INTEGER_OPS = """
func.func @forward(%x: tensor<3x9xi64>, %m: tensor<3x9xi1>) -> (tensor<3x9xi64>, tensor<3x9xi1>, tensor<3x9xi64>) {
  %one = graph.constant 1 : i64 : tensor<i64>
  %three = graph.constant 3 : i64 : tensor<i64>
  %c = graph.cumsum %x {dim = 1 : i64} : tensor<3x9xi64> -> tensor<3x9xi64>
  %s = graph.sub %c, %one : (tensor<3x9xi64>, tensor<i64>) -> tensor<3x9xi64>
  %q = graph.floordiv %x, %three : (tensor<3x9xi64>, tensor<i64>) -> tensor<3x9xi64>
  %r = graph.rem %x, %three : (tensor<3x9xi64>, tensor<i64>) -> tensor<3x9xi64>
  %sum = graph.add %q, %r : (tensor<3x9xi64>, tensor<3x9xi64>) -> tensor<3x9xi64>
  %pos = graph.gt %x, %one : (tensor<3x9xi64>, tensor<i64>) -> tensor<3x9xi1>
  %both = graph.and %pos, %m : (tensor<3x9xi1>, tensor<3x9xi1>) -> tensor<3x9xi1>
  %not = graph.not %both : tensor<3x9xi1> -> tensor<3x9xi1>
  func.return %s, %not, %sum : tensor<3x9xi64>, tensor<3x9xi1>, tensor<3x9xi64>
}
"""


def test_integer_and_mask_arithmetic_with_a_prefix_sum():
    rng = np.random.default_rng(1)
    args = [rng.integers(-7, 8, (3, 9)).astype(np.int64), rng.integers(0, 2, (3, 9)).astype(bool)]
    check(INTEGER_OPS, "fuse,tile,lower-tile", """
// CHECK: tile.scan
// CHECK: graph.floordiv
// CHECK: graph.rem
// CHECK: graph.and
// CHECK: graph.not
""", args)
    check(INTEGER_OPS, LOWERED, "// CHECK: func.func @forward", args)


ARGMAX = """
func.func @forward(%x: tensor<4x37xf32>) -> tensor<4xi64> {
  %a = graph.argmax %x {dim = 1 : i64} : tensor<4x37xf32> -> tensor<4xi64>
  func.return %a : tensor<4xi64>
}
"""


def test_argmax_is_a_row_reduction():
    x = np.random.default_rng(2).standard_normal((4, 37)).astype(np.float32)
    x[1, 5] = x[1, 20] = 9.0  # ties: the first maximum, as torch
    check(ARGMAX, LOWERED, """
// CHECK: tile.reduce {{.*}}kind = "argmax"
// CHECK-SAME: -> tensor<{{[0-9]+}}x1xi64>
""", [x])


HF_EAGER_ATTENTION = """
func.func @forward(%q: tensor<1x2x6x8xf32>, %k: tensor<1x2x6x8xf32>, %v: tensor<1x2x6x8xf32>) -> tensor<1x2x6x8xf32> {
  %kt = graph.permute %k {perm = array<i64: 0, 1, 3, 2>} : tensor<1x2x6x8xf32> -> tensor<1x2x8x6xf32>
  %s = graph.matmul %q, %kt : (tensor<1x2x6x8xf32>, tensor<1x2x8x6xf32>) -> tensor<1x2x6x6xf32>
  %c = graph.constant 0.35 : f32 : tensor<f32>
  %scaled = graph.mul %s, %c : (tensor<1x2x6x6xf32>, tensor<f32>) -> tensor<1x2x6x6xf32>
  %causal = graph.causal_mask : tensor<1x1x6x6xi1>
  %zero = graph.constant 0.0 : f32 : tensor<f32>
  %min = graph.constant -3.4028234663852886e+38 : f32 : tensor<f32>
  %mask = graph.where %causal, %zero, %min : (tensor<1x1x6x6xi1>, tensor<f32>, tensor<f32>) -> tensor<1x1x6x6xf32>
  %masked = graph.add %scaled, %mask : (tensor<1x2x6x6xf32>, tensor<1x1x6x6xf32>) -> tensor<1x2x6x6xf32>
  %p = graph.softmax %masked {dim = 3 : i64} : tensor<1x2x6x6xf32> -> tensor<1x2x6x6xf32>
  %o = graph.matmul %p, %v : (tensor<1x2x6x6xf32>, tensor<1x2x6x8xf32>) -> tensor<1x2x6x8xf32>
  func.return %o : tensor<1x2x6x8xf32>
}
"""


def test_additive_causal_mask_becomes_the_causal_attribute():
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((1, 2, 6, 8)).astype(np.float32) for _ in range(3)]
    check(HF_EAGER_ATTENTION, "fuse", """
// CHECK: kernel.kernel "k0_attention"
// CHECK: graph.attention %{{[a-z0-9_]+}}, %{{[a-z0-9_]+}}, %{{[a-z0-9_]+}} {scale = 3.500000e-01 : f32, causal}
// CHECK-NOT: graph.softmax
""", args)


PADDED_SDPA = """
func.func @forward(%q: tensor<2x2x5x8xf32>, %k: tensor<2x1x5x8xf32>, %v: tensor<2x1x5x8xf32>, %pad: tensor<2x5xi1>) -> tensor<2x2x5x8xf32> {
  %causal = graph.causal_mask : tensor<1x1x5x5xi1>
  %keys = graph.reshape %pad : tensor<2x5xi1> -> tensor<2x1x1x5xi1>
  %mask = graph.and %causal, %keys : (tensor<1x1x5x5xi1>, tensor<2x1x1x5xi1>) -> tensor<2x1x5x5xi1>
  %o = graph.attention %q, %k, %v, %mask {scale = 0.35 : f32} : (tensor<2x2x5x8xf32>, tensor<2x1x5x8xf32>, tensor<2x1x5x8xf32>, tensor<2x1x5x5xi1>) -> tensor<2x2x5x8xf32>
  func.return %o : tensor<2x2x5x8xf32>
}
"""


def test_padding_and_causal_mask_splits_into_attribute_and_bool_mask():
    rng = np.random.default_rng(4)
    pad = np.ones((2, 5), dtype=bool)
    pad[0, :2] = False  # left padding: query rows 0 and 1 of the first prompt see no key at all
    args = [rng.standard_normal(s).astype(np.float32) for s in ((2, 2, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8))] + [pad]
    after = check(PADDED_SDPA, "fuse", """
// CHECK: graph.attention {{.*}}causal
// CHECK-NOT: graph.and
""", args)
    assert sum(1 for op in after.walk() if op.name == "graph.attention" and op.mask is not None) == 1
    lowered = check(PADDED_SDPA, LOWERED, "// CHECK: tile.kernel @k0_attention", args)
    out = run_ir(lowered, args, {})[0]
    assert np.all(out[0, :, :2] == 0.0)  # fully masked rows give zeros, as SDPA does


REPEAT_KV_RETURNED = """
func.func @forward(%x: tensor<6x8xf32>) -> tensor<1x4x3x4xf32> {
  %c = graph.constant 2.0 : f32 : tensor<f32>
  %y = graph.mul %x, %c : (tensor<6x8xf32>, tensor<f32>) -> tensor<6x8xf32>
  %a = graph.reshape %y : tensor<6x8xf32> -> tensor<1x3x2x8xf32>
  %b = graph.slice %a {dim = 3 : i64, start = 0 : i64, end = 4 : i64, step = 1 : i64} : tensor<1x3x2x8xf32> -> tensor<1x3x2x4xf32>
  %p = graph.permute %b {perm = array<i64: 0, 2, 1, 3>} : tensor<1x3x2x4xf32> -> tensor<1x2x3x4xf32>
  %u = graph.reshape %p : tensor<1x2x3x4xf32> -> tensor<1x2x1x3x4xf32>
  %e = graph.expand %u : tensor<1x2x1x3x4xf32> -> tensor<1x2x2x3x4xf32>
  %r = graph.reshape %e : tensor<1x2x2x3x4xf32> -> tensor<1x4x3x4xf32>
  func.return %r : tensor<1x4x3x4xf32>
}
"""


def test_a_view_chain_that_needs_a_copy_is_materialised_at_each_cut():
    x = np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32)
    check(REPEAT_KV_RETURNED, LOWERED, """
// CHECK: tile.kernel @k0_mul
// CHECK: tile.kernel @k1_copy
""", [x])


class IntegerModel(torch.nn.Module):
    """Token ids through an embedding, integer arithmetic, a prefix sum and a greedy argmax."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(23, 16)
        self.head = torch.nn.Linear(16, 23)

    def forward(self, ids, mask):
        positions = mask.cumsum(-1) - 1
        keep = (positions >= 0) & (ids % 2 == 0)
        h = self.embed(ids) * keep.unsqueeze(-1).float() + positions.unsqueeze(-1).float()
        logits = self.head(h)
        return logits.argmax(-1), positions // 3, torch.remainder(ids - 11, 5), logits


@pytest.mark.parametrize("target", ["c", "triton"])
def test_integer_models_match_eager_on_both_backends(target):
    torch.manual_seed(0)
    model = IntegerModel().eval()
    ids = torch.randint(0, 23, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :3] = 0
    compiled = llmc.compile(model, (ids, mask), target="cpu" if target == "c" else "triton", emit=lambda *_: None)
    with torch.no_grad():
        expected = model(ids, mask)
    got = compiled(ids, mask)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=2e-5, rtol=2e-5)
    with pytest.raises(LlmcError, match="out of range"):
        compiled(torch.full((2, 11), 23), mask)


class PaddedAttention(torch.nn.Module):
    def forward(self, q, k, v, keep):
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril() & keep[:, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("target", ["c", "triton"])
def test_masked_attention_over_several_pipelined_kv_tiles(target):
    """Enough keys for a pipelined KV loop: the mask tile is loaded with its own iteration."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 150, 16) for _ in range(3))
    keep = torch.ones(2, 150, dtype=torch.bool)
    keep[0, :40] = False
    model = PaddedAttention()
    compiled = llmc.compile(model, (q, k, v, keep), target="cpu" if target == "c" else "triton",
                            emit=lambda *_: None)
    if target == "c":
        loop = next(op for op in compiled.module.walk() if op.name == "scf.for" and "llmc.pipeline_stages" in op.attributes)
        assert loop.attributes["llmc.pipeline_stages"].value.data >= 2
    torch.testing.assert_close(compiled(q, k, v, keep), model(q, k, v, keep), atol=2e-5, rtol=2e-5)


class WidthOnePieces(torch.nn.Module):
    """Concats of one-column pieces (GPT-J's rotate_every_two), an in-place add on an intermediate,
    chunk / flatten / repeat_interleave, and a gather from a splat buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kinds", torch.zeros(1, 12, dtype=torch.long))
        self.table = torch.nn.Embedding(2, 3)

    def forward(self, a, b, positions):
        rotated = torch.stack((-b, a), dim=-1).flatten(-2)
        joined = torch.cat([a[..., :1], b, a[..., 1:]], -1)
        h = rotated * 2
        h.add_(1.0)
        first, second = h.chunk(2, dim=-1)
        kinds = torch.gather(self.kinds.expand(2, -1), 1, positions)
        return first.repeat_interleave(2, dim=-1) - second.repeat_interleave(2, dim=-1), joined, self.table(kinds)


@pytest.mark.parametrize("target", ["c", "triton"])
def test_width_one_pieces_in_place_ops_and_splat_gathers(target):
    torch.manual_seed(0)
    model = WidthOnePieces().eval()
    inputs = (torch.randn(2, 9, 4, 2), torch.randn(2, 9, 4, 2), torch.randint(0, 12, (2, 5)))
    compiled = llmc.compile(model, inputs, target="cpu" if target == "c" else "triton", emit=lambda *_: None)
    with torch.no_grad():
        expected = model(*inputs)
    for got, want in zip(compiled(*inputs), expected):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    with pytest.raises(LlmcError, match="out of range"):
        compiled(inputs[0], inputs[1], torch.full((2, 5), 12))

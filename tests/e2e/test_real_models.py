"""Whole Hugging Face models and plain-PyTorch blocks written the way people write them, against eager,
through llmc.compile and torch.compile(backend="llmc")."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import RunningSum
from hf_models import FAMILIES, hf_inputs, hf_model, first_output
from torch.utils._pytree import tree_leaves

import llmc
from llmc.dynamo_backend import dynamo_stats, reset_stats

TOL = 3e-5


def quiet(**kwargs):
    return llmc.compile(emit=lambda *_: None, **kwargs)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    reset_stats()
    yield dynamo_stats()
    torch._dynamo.reset()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llmc_compile_matches_eager(family, attention):
    model = hf_model(family, attention)
    for seq in (7, 16):
        inputs = hf_inputs(2, seq)
        compiled = quiet(model=model, example_inputs=inputs)
        with torch.no_grad():
            expected = model(**inputs)
        got = compiled(**inputs)
        assert type(got) is type(expected)  # a ModelOutput, as the model returns
        torch.testing.assert_close(first_output(got), first_output(expected), atol=TOL, rtol=TOL)
        assert compiled.backend == "c"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_compile_runs_llmc_kernels(family, attention, fresh_dynamo):
    model = hf_model(family, attention)
    compiled = torch.compile(model, backend="llmc", dynamic=False)
    for seq in (7, 16):
        inputs = hf_inputs(2, seq)
        with torch.no_grad():
            got, expected = compiled(**inputs), model(**inputs)
        torch.testing.assert_close(first_output(got), first_output(expected), atol=TOL, rtol=TOL)
    stats = fresh_dynamo
    assert stats.llmc_runs == 2 and stats.compiles == 2  # one graph per length (dynamic=False), each in llmc
    assert all(not g.eager_ops and g.partitions for g in stats.graphs), [g.eager_ops for g in stats.graphs]


def test_torch_compile_five_lengths_never_crashes_or_specialises_silently(fresh_dynamo):
    model = hf_model("llama", "sdpa")
    compiled = torch.compile(model, backend="llmc")  # dynamic=None: the second length makes Dynamo go symbolic
    for seq in (5, 9, 12, 6, 17):
        inputs = hf_inputs(1, seq, padded=False)
        with torch.no_grad():
            torch.testing.assert_close(first_output(compiled(**inputs)), first_output(model(**inputs)),
                                       atol=TOL, rtol=TOL)
    stats = fresh_dynamo
    # Dynamo: a static graph for the first length, then one symbolic graph; llmc: one build per concrete size
    assert len(stats.graphs) == 2
    assert stats.compiles == 5 and stats.llmc_runs == 5


@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic"])
def test_torch_compile_symbolic_from_the_start(how, fresh_dynamo):
    model = hf_model("gpt2", "sdpa")
    settings = {"dynamic": True, "options": {"target": "cpu"}} if how == "dynamic=True" else {"mode": "default"}
    compiled = torch.compile(model, backend="llmc", **settings)
    for seq in (4, 11):
        inputs = hf_inputs(2, seq)
        if how == "mark_dynamic":
            for tensor in inputs.values():
                torch._dynamo.mark_dynamic(tensor, 1)
        with torch.no_grad():
            torch.testing.assert_close(first_output(compiled(**inputs)), first_output(model(**inputs)),
                                       atol=TOL, rtol=TOL)
    assert len(fresh_dynamo.graphs) == 1 and fresh_dynamo.compiles == 2


def test_torch_compile_rejects_unknown_options():
    torch._dynamo.reset()
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="llmc", options={"tile_size": 3})
    with pytest.raises(Exception, match="unknown llmc option"):
        compiled(torch.randn(2, 4))
    torch._dynamo.reset()


def test_parameters_are_frozen_and_a_changed_weight_recompiles(fresh_dynamo):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    compiled = torch.compile(model, backend="llmc")
    x = torch.randn(3, 8)
    with torch.no_grad():
        first = compiled(x)
        model[0].weight.mul_(2)  # in place: the weight's version changes
        second = compiled(x)
        torch.testing.assert_close(second, model(x))
    assert not torch.allclose(first, second)
    assert fresh_dynamo.compiles == 2


@pytest.mark.parametrize("entry", ["llmc.compile", "torch.compile"])
def test_mutated_buffer_is_state_call_after_call(entry):
    torch._dynamo.reset()
    model = RunningSum()
    compiled = quiet(model=model, example_inputs=(torch.ones(4),)) if entry == "llmc.compile" else \
        torch.compile(model, backend="llmc")
    with torch.no_grad():
        results = [compiled(torch.ones(4)) for _ in range(3)]
    assert [r[0].item() for r in results] == [2.0, 4.0, 6.0]
    assert model.acc.tolist() == [3.0] * 4


class ScaleInput(torch.nn.Module):
    def forward(self, x, y):
        x.mul_(2)
        return x + y


@pytest.mark.parametrize("entry", ["llmc.compile", "torch.compile"])
def test_mutated_input_is_written_back(entry):
    torch._dynamo.reset()
    model = ScaleInput()
    compiled = quiet(model=model, example_inputs=(torch.ones(3), torch.ones(3))) if entry == "llmc.compile" else \
        torch.compile(model, backend="llmc")
    x = torch.ones(3)
    with torch.no_grad():
        out = compiled(x, torch.ones(3))
    assert out.tolist() == [3.0] * 3 and x.tolist() == [2.0] * 3


class CachedDecoder(torch.nn.Module):
    """A toy decoder whose key/value cache is a buffer it shifts and refills with float ops each step."""

    def __init__(self, vocab=31, dim=16, window=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.head = torch.nn.Linear(dim, vocab)
        self.register_buffer("keys", torch.zeros(1, window, dim))
        self.register_buffer("values", torch.zeros(1, window, dim))

    def forward(self, token):
        q, k, v = self.qkv(self.embed(token)).chunk(3, dim=-1)
        self.keys.copy_(torch.cat([self.keys[:, 1:], k], dim=1))
        self.values.copy_(torch.cat([self.values[:, 1:], v], dim=1))
        weights = (q @ self.keys.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.head(weights @ self.values).argmax(-1)


@pytest.mark.parametrize("entry", ["llmc.compile", "torch.compile"])
def test_kv_cache_in_buffers_decodes_the_same_tokens(entry):
    torch._dynamo.reset()
    reset_stats()
    torch.manual_seed(0)
    reference, model = CachedDecoder().eval(), CachedDecoder().eval()
    model.load_state_dict(reference.state_dict())
    compiled = quiet(model=model, example_inputs=(torch.tensor([[3]]),)) if entry == "llmc.compile" else \
        torch.compile(model, backend="llmc")
    tokens, expected = torch.tensor([[3]]), torch.tensor([[3]])
    with torch.no_grad():
        produced, wanted = [], []
        for _ in range(12):
            tokens, expected = compiled(tokens), reference(expected)
            produced.append(int(tokens)), wanted.append(int(expected))
    assert produced == wanted and len(set(wanted)) > 1  # the greedy tokens change from step to step
    torch.testing.assert_close(model.keys, reference.keys)
    if entry == "torch.compile":
        stats = dynamo_stats()
        assert stats.llmc_runs >= 12 and all(not g.eager_ops for g in stats.graphs)


class TriuMaskedAttention(torch.nn.Module):
    """A causal mask built as ones(T, T).triu(1) + masked_fill, RoPE tables from arange in forward."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads, self.qkv, self.out = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def rope(self, x):
        t, d = x.shape[-2], x.shape[-1]
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        angles = torch.arange(t).float()[:, None] * inv[None, :]
        cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
        rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in self.qkv(x).split(c, dim=-1))
        q, k = self.rope(q), self.rope(k)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class ParallelPartialRotary(torch.nn.Module):
    """GPT-NeoX style: partial rotary embedding and attention + MLP in parallel on one LayerNorm."""

    def __init__(self, dim=32, heads=4, rotary=4):
        super().__init__()
        self.heads, self.rotary = heads, rotary
        self.norm = torch.nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, c = x.shape
        h = self.norm(x)
        q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in self.qkv(h).chunk(3, dim=-1))
        angles = torch.arange(t)[:, None].float() / (100 ** (torch.arange(self.rotary // 2) / (self.rotary // 2)))
        cos, sin = angles.cos(), angles.sin()

        def rotate(y):
            r, rest = y[..., : self.rotary], y[..., self.rotary:]
            a, b2 = r[..., : self.rotary // 2], r[..., self.rotary // 2:]
            return torch.cat([a * cos - b2 * sin, b2 * cos + a * sin, rest], dim=-1)

        y = torch.nn.functional.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, c)) + self.mlp(h)


class MultiheadBlock(torch.nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(dim, 4, batch_first=True)

    def forward(self, x):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        out, weights = self.attention(x, x, x, attn_mask=mask)
        return out, weights


@pytest.mark.parametrize("block", [TriuMaskedAttention, ParallelPartialRotary, MultiheadBlock])
@pytest.mark.parametrize("entry", ["llmc.compile", "torch.compile"])
def test_blocks_written_differently(block, entry):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = block().eval(), torch.randn(2, 9, 32)
    compiled = quiet(model=model, example_inputs=(x,)) if entry == "llmc.compile" else \
        torch.compile(model, backend="llmc")
    with torch.no_grad():
        got, expected = tree_leaves(compiled(x)), tree_leaves(model(x))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=TOL, rtol=TOL)


def test_causal_masks_become_the_attention_attribute():
    model = TriuMaskedAttention().eval()
    compiled = quiet(model=model, example_inputs=(torch.randn(1, 9, 32),))
    attention = [op for op in compiled.runner.snapshots["fuse"].walk() if op.name == "graph.attention"]
    assert len(attention) == 1 and attention[0].causal is not None and attention[0].mask is None


def test_triton_backend_runs_a_whole_model():
    model = hf_model("llama", "eager")
    inputs = hf_inputs(2, 6)
    compiled = quiet(model=model, example_inputs=inputs, target="triton")
    with torch.no_grad():
        expected = first_output(model(**inputs))
    torch.testing.assert_close(first_output(compiled(**inputs)), expected, atol=TOL, rtol=TOL)


def test_torch_compile_warns_once_per_op_it_leaves_to_eager(fresh_dynamo):
    class Sorted(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=-1).values.softmax(-1) * 2

    compiled = torch.compile(Sorted(), backend="llmc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = compiled(torch.randn(3, 5))
    messages = [str(w.message) for w in caught if "aten.sort" in str(w.message)]
    assert len(messages) <= 1  # once per process (an earlier test may have shown it already)
    report = fresh_dynamo.graphs[-1]
    assert any("aten.sort" in op and "test_real_models.py" in op for op in report.eager_ops)
    assert report.partitions and fresh_dynamo.llmc_runs == 1
    assert out.shape == (3, 5)


def test_explain_says_what_runs_where():
    class Sorted(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=-1).values.softmax(-1) * 2

    text = llmc.explain(Sorted(), (torch.randn(3, 5),))
    assert "llmc  fused_0" in text and "eager aten.sort.default" in text


class AnyDim(torch.nn.Module):
    """Reductions, softmax, concat and splits along dims other than the last; erf GELU; LayerNorm without affine."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(6, elementwise_affine=False)

    def forward(self, x):
        a = x.softmax(dim=1) + x.sum(dim=(0, 2), keepdim=True) + x.amax(dim=1, keepdim=True)
        first, second = a.chunk(2, dim=1)
        parts = torch.cat([second, first, x.mean(dim=0, keepdim=True)[:, :2].expand_as(first)], dim=0)
        rows = torch.stack(parts.unbind(dim=1)[::-1], dim=1)
        return torch.nn.functional.gelu(self.norm(rows)), x.argmax(dim=1)


@pytest.mark.parametrize("entry", ["llmc.compile", "torch.compile"])
def test_ops_along_any_dim(entry):
    torch._dynamo.reset()
    model, x = AnyDim(), torch.randn(3, 4, 6)
    compiled = quiet(model=model, example_inputs=(x,)) if entry == "llmc.compile" else \
        torch.compile(model, backend="llmc")
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=TOL, rtol=TOL)


def other_family(name: str) -> torch.nn.Module:
    """Families outside the main list, each with a pattern of its own: GPT-NeoX partial rotary, Phi-3
    chunked gate/up, Falcon multi-query attention and in-place adds, GPT-J rotate_every_two
    (stack + flatten, repeat_interleave), RoBERTa positions from a cumsum of the ids, Gemma."""
    import transformers as t

    small = dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=64)
    torch.manual_seed(0)
    if name == "gpt_neox":
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(rotary_pct=0.5, **small))
    if name == "phi3":
        return t.Phi3ForCausalLM(t.Phi3Config(num_key_value_heads=2, pad_token_id=0, **small))
    if name == "falcon":
        return t.FalconForCausalLM(t.FalconConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4))
    if name == "gptj":
        return t.GPTJForCausalLM(t.GPTJConfig(vocab_size=97, n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=64))
    if name == "roberta":
        return t.RobertaModel(t.RobertaConfig(**{**small, "max_position_embeddings": 80}))
    return t.GemmaForCausalLM(t.GemmaConfig(num_key_value_heads=1, head_dim=8, **small))


@pytest.mark.parametrize("name", ["gpt_neox", "phi3", "falcon", "gptj", "roberta", "gemma"])
def test_other_families_match_eager(name):
    model = other_family(name).eval()
    inputs = hf_inputs(2, 9)
    inputs["input_ids"] = inputs["input_ids"].clamp_min(3)  # RoBERTa's padding id is 1
    compiled = quiet(model=model, example_inputs=inputs)
    with torch.no_grad():
        expected = first_output(model(**inputs))
    torch.testing.assert_close(first_output(compiled(**inputs)), expected, atol=TOL, rtol=TOL)

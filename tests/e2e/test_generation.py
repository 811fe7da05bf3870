"""Generation with a static KV cache: token-identical greedy output against eager Hugging Face
generate, the cache written in place (only the new rows), one decode graph reused, and bad input
refused before anything is written out of bounds."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from hf_models import VOCAB, hf_model

import llmc
from llmc.dynamo_backend import dynamo_stats, reset_stats
from llmc.generation import CacheLM, PlainCacheLM, compile_generation, greedy, step_inputs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def prompts(batch: int, length: int, padded: bool):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[0, : length // 2] = 0  # the first prompt is left-padded
    return ids, mask


@pytest.mark.parametrize("family, batch", [("gpt2", 1), ("llama", 2), ("qwen2", 1)])
def test_greedy_tokens_match_eager_generate(family, batch):
    model = hf_model(family, layers=2, positions=128)
    ids, mask = prompts(batch, 6, padded=batch > 1)
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=0)
    run = llmc.generate(model, ids, mask, max_new_tokens=64)
    assert torch.equal(run.sequences, expected)
    assert len(run.step_s) == 63 and run.ttft_s > 0


def decode_graph(family="llama", max_len=16, backend=None):
    lm = CacheLM(hf_model(family), batch=1, max_cache_len=max_len).eval()
    return lm, compile_generation(lm, prompt_length=4, backend=backend)


def step_at(compiled, lm, position: int, token: int = 5):
    mask, _ = step_inputs(torch.zeros(1, 1, dtype=torch.long), None, lm.max_cache_len)
    return compiled.step(torch.tensor([[token]]), torch.tensor([position]), mask, torch.tensor([[position]]))


def test_a_decode_step_writes_only_its_rows_into_the_callers_cache():
    lm, compiled = decode_graph()
    source = compiled.decode.program.source
    caches = [b for b in lm.cache_buffers()]
    # every cache output is its input's storage: the forward neither allocates nor copies a cache
    assert len(source.output_aliases) == len(caches)
    assert source.text.count("written in place: no copy") == 2 * len(caches)  # forward, and its timed twin
    scatters = [name for name in source.launches if "scatter" in name]
    assert len(scatters) == len(caches)
    with torch.no_grad():
        for buffer in caches:
            buffer.copy_(torch.arange(buffer.numel(), dtype=torch.float32).view_as(buffer))
    before = [b.clone() for b in caches]
    pointers = [b.data_ptr() for b in caches]
    step_at(compiled, lm, 7)
    for old, new, pointer in zip(before, caches, pointers):
        assert new.data_ptr() == pointer
        changed = (old != new).any(dim=-1).any(dim=0).any(dim=0)  # per cache row
        assert changed.nonzero().flatten().tolist() == [7]


def test_a_position_past_the_cache_is_an_error_and_writes_nothing():
    lm, compiled = decode_graph()
    before = [b.clone() for b in lm.cache_buffers()]
    with pytest.raises(llmc.LlmcError, match="out of range in kernel @k\\d+_scatter"):
        step_at(compiled, lm, 16)
    assert all(torch.equal(a, b) for a, b in zip(before, lm.cache_buffers()))


def test_capacity_batch_and_prompt_length_are_checked():
    model = hf_model("llama")
    ids, _ = prompts(1, 6, padded=False)
    with pytest.raises(llmc.LlmcError, match="does not fit the KV cache of 8 positions"):
        llmc.generate(model, ids, max_new_tokens=4, max_cache_len=8)
    lm, compiled = decode_graph()
    with pytest.raises(llmc.LlmcError, match="a batch of 1; got 2"):
        greedy(compiled.step, lm, torch.zeros(2, 4, dtype=torch.long), None, 2)
    with pytest.raises(llmc.LlmcError, match="compiled for prompts of 4 tokens, got 5"):
        greedy(compiled.step, lm, torch.zeros(1, 5, dtype=torch.long), None, 2)


def test_triton_decode_steps_match_eager():
    lm, compiled = decode_graph(backend="triton")
    reference = CacheLM(lm.model, batch=1, max_cache_len=16).eval()
    ids, _ = prompts(1, 4, padded=False)
    with torch.no_grad():
        got = greedy(compiled.step, lm, ids, None, 4)
        expected = greedy(reference, reference, ids, None, 4)
    assert torch.equal(got.sequences, expected.sequences)
    for mine, theirs in zip(lm.cache_buffers(), reference.cache_buffers()):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_hugging_face_generate_with_llmc_as_compile_backend():
    """The recipe docs/generation.md gives: a static cache and a CompileConfig naming llmc."""
    from transformers import CompileConfig

    model = hf_model("llama", layers=2)
    ids, _ = prompts(1, 5, padded=False)
    expected = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    config = CompileConfig(backend="llmc", fullgraph=False, dynamic=False)
    config._compile_all_devices = True  # on CPU, generate compiles only when told to
    torch._dynamo.reset()
    reset_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no partition may fall back to eager
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, cache_implementation="static",
                             compile_config=config)
    assert torch.equal(out, expected)
    stats = dynamo_stats()
    assert stats.compiles == 1  # one decode graph for every step
    assert stats.llmc_runs == 11 and all(not g.eager_ops for g in stats.graphs)


def test_a_torch_compiled_forward_over_a_static_cache_decodes_greedily():
    from transformers import StaticCache

    model = hf_model("qwen2")
    ids, _ = prompts(1, 5, padded=False)
    expected = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    cache = StaticCache(config=model.config, max_cache_len=16)
    torch._dynamo.reset()
    reset_stats()
    forward = torch.compile(model.forward, backend="llmc", dynamic=False)
    with torch.no_grad():
        logits = model(ids, past_key_values=cache, use_cache=True).logits  # prefill in eager
        token, tokens = logits[:, -1].argmax(-1), []
        for position in range(5, 13):
            tokens.append(int(token))
            logits = forward(token[:, None], past_key_values=cache, use_cache=True,
                             position_ids=torch.tensor([[position]])).logits
            token = logits[:, -1].argmax(-1)
    assert tokens == expected
    assert dynamo_stats().llmc_runs >= 7


def test_a_plain_model_in_the_generation_contract(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        from tiny_lm import build
    finally:
        sys.path.remove(str(EXAMPLES))
    model, (ids, _) = build(prompt_len=6, layers=1, max_cache_len=32)
    reference = PlainCacheLM(build(prompt_len=6, layers=1, max_cache_len=32)[0])
    assert len(reference.cache_buffers()) == 2  # k_cache and v_cache, not the RoPE tables or positions
    run = llmc.generate(model, ids, max_new_tokens=10)
    expected = greedy(reference, reference, ids, None, 10)
    assert torch.equal(run.sequences, expected.sequences)


def test_cli_generate_prints_the_serving_table(capsys):
    from llmc.cli import main

    assert main(["generate", str(EXAMPLES / "tiny_lm.py"), "--prompt-len", "8", "--new-tokens", "5",
                 "--only", "eager,llmc"]) == 0
    out = capsys.readouterr().out
    assert "| contender | compile s | TTFT ms | TPOT ms | tokens/s | decode GB/s | % of read bw | tokens = eager |" in out
    llmc_row = next(line for line in out.splitlines() if line.startswith("| llmc |"))
    assert llmc_row.rstrip().endswith("| yes |")  # the same tokens as eager
    assert "measured main-memory read bandwidth" in out


@pytest.mark.parametrize("argv, message", [
    (["generate", "gpt3"], "unknown model 'gpt3'"),
    (["generate", "llama", "--only", "vllm"], "unknown contender 'vllm'"),
    (["generate", "llama", "--quantize", "int3"], "unknown quantization 'int3'"),
    (["generate", "llama", "--only", "llmc-int4:48"], "int4 group 48 is not supported"),
    (["generate", "llama", "--new-tokens", "0"], "must be at least 1"),
])
def test_cli_generate_refuses_bad_arguments(argv, message, capsys):
    from llmc.cli import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err

"""`llmc generate`: greedy generation timed as a server sees it, eager / Inductor / llmc side by side.

Each contender runs the same loop over the same static-cache model (`generation.CacheLM`):
a warm-up generation compiles its prefill and decode graphs (reported as compile
time), then a timed one gives the serving figures — time to first token (TTFT,
the prefill), time per output token (TPOT, the median decode step), tokens/s
(batch / TPOT) and the decode step's achieved GB/s: the weight bytes the step
streams (every matrix; an embedding table only gathers rows) plus the live KV
cache bytes at the middle position, divided by TPOT, against this host's measured
main-memory read bandwidth. Tokens are compared with eager's.

A contender `llmc-<format>` (llmc-int8, llmc-int4, llmc-int4:128) is llmc with its linear
weights quantized (`llmc.compile(..., quantize=<format>)`); its weight bytes are the codes
and scales it streams, and its tokens are reported as the share equal to eager's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmc.errors import LlmcError, ModelFileError
from llmc.generation import Generation, Step, compile_generation, generation_model, greedy
from llmc.passes.quantize import quantized_bytes
from llmc.quantization import QuantFormat
from llmc.target import host_cpu_name

# built-in models with random weights: (config class, model class, sizes); "tinyllama" is
# TinyLlama-1.1B's geometry (d=2048, 32 heads, 4 KV heads, FFN 5632), fp32 ~176 MB per layer
SMALL = dict(hidden_size=256, num_attention_heads=8, intermediate_size=688, max_position_embeddings=4096)
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=256, n_head=8, n_positions=4096)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(SMALL, num_key_value_heads=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, num_key_value_heads=4)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(SMALL, num_key_value_heads=4)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(SMALL, partial_rotary_factor=0.5)),
    "tinyllama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=2048, num_attention_heads=32,
                                                          num_key_value_heads=4, intermediate_size=5632,
                                                          max_position_embeddings=4096)),
}


def builtin_model(family: str, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    """A Hugging Face causal LM of a built-in family, from its config with random weights."""
    import transformers

    if family not in FAMILIES:
        raise ModelFileError(f"unknown model '{family}': give a model file or one of {', '.join(FAMILIES)}")
    config_name, model_name, sizes = FAMILIES[family]
    vocab = 32000 if family == "tinyllama" else 1000
    depth = {"n_layer": layers} if family == "gpt2" else {"num_hidden_layers": layers}
    config = getattr(transformers, config_name)(vocab_size=vocab, **sizes, **depth)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def load_generation_model(spec: str, layers: int) -> torch.nn.Module:
    """A built-in family name, or a model file defining `model` (a Hugging Face causal LM, or a
    module in the generation contract of `llmc.generation`)."""
    if not spec.endswith(".py"):
        return builtin_model(spec, layers)
    from llmc.model_file import load_module_attribute

    return load_module_attribute(Path(spec), "model")


@dataclass
class Contender:
    name: str
    generation: Generation
    compile_s: float


def quantization_of(contender: str) -> str | None:
    """The quantization a contender's name asks for: llmc-int4:128 -> int4:128."""
    return contender.partition("-")[2] or None if contender.startswith("llmc") else None


def streamed_bytes(lm: torch.nn.Module, position: int, quantize: str | None = None) -> tuple[int, int]:
    """(weight bytes, live KV cache bytes) one decode step at `position` reads; with `quantize`, linear
    weights count as their codes and scales (the output projection int8 under int4, as the pass decides)."""
    fmt = QuantFormat.parse(quantize) if quantize else None
    inner = getattr(lm, "model", lm)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    seen, weights = set(), 0
    for module in lm.modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            conv1d = type(module).__name__ == "Conv1D"  # GPT-2's projections, their weight stored [K, N]
            if fmt is not None and (isinstance(module, torch.nn.Linear) or conv1d) and name == "weight":
                chosen = QuantFormat(8) if module is head and fmt.bits == 4 else fmt
                weights += quantized_bytes(tuple(p.shape)[::-1] if conv1d else tuple(p.shape), chosen)
            else:
                weights += p.numel() * p.element_size()
    kv = sum(b.numel() // b.shape[-2] * (position + 1) * b.element_size() for b in lm.cache_buffers())
    return weights, kv


def prepare(name: str, lm, prompt: torch.Tensor, mask, target: str = "cpu") -> tuple[Step, float]:
    """The contender's step function, compiled (both graphs) by a warm-up generation; its compile time."""
    start = time.perf_counter()
    if name == "eager":
        step = lm
    elif name == "inductor":
        step = torch.compile(lm, dynamic=False)
    else:
        step = compile_generation(lm, prompt.shape[1], target, quantize=quantization_of(name)).step
    greedy(step, lm, prompt, mask, 2 if lm.max_cache_len >= prompt.shape[1] + 2 else 1)
    return step, time.perf_counter() - start


def compare(model: torch.nn.Module, batch: int = 1, prompt_len: int = 128, new_tokens: int = 128,
            contenders: tuple[str, ...] = ("eager", "inductor", "llmc"), target: str = "cpu",
            read_gbs: float | None = None, seed: int = 0, rounds: int = 1) -> tuple[str, dict[str, Contender]]:
    """Each contender's greedy generation on the same random prompt, `rounds` times in rotation (so a
    drift of the machine's speed falls on every contender alike): TTFT is the median over rounds,
    TPOT the median over every decode step. Returns the table and the runs."""
    from tqdm import tqdm

    lm = generation_model(model, batch, prompt_len + new_tokens)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, _vocab(lm), (batch, prompt_len), generator=generator)
    mask = torch.ones(batch, prompt_len, dtype=torch.long)
    steps, runs = {}, {}
    total = len(contenders) * (rounds * (new_tokens - 1) + 1)
    with tqdm(total=total, desc="decode steps", disable=None, leave=False) as bar:
        for name in contenders:
            bar.set_postfix_str(f"compiling {name}")
            steps[name] = prepare(name, lm, prompt, mask, target)
            bar.update(1)
        for _ in range(rounds):
            for name, (step, compile_s) in steps.items():
                bar.set_postfix_str(name)
                run = greedy(step, lm, prompt, mask, new_tokens, bar.update)
                runs.setdefault(name, []).append(run)
    merged = {name: Contender(name, _merged(done), steps[name][1]) for name, done in runs.items()}
    if read_gbs is None:
        read_gbs = measured_read_bandwidth()
    position = prompt_len + new_tokens // 2
    streamed = {name: streamed_bytes(lm, position, quantization_of(name)) for name in merged}
    return _table(merged, batch, prompt_len, new_tokens, streamed, read_gbs), merged


def _merged(runs: list[Generation]) -> Generation:
    first = runs[0]
    ttft = statistics.median(r.ttft_s for r in runs)
    return Generation(first.sequences, first.new_tokens, ttft, [s for r in runs for s in r.step_s])


def measured_read_bandwidth() -> float:
    from llmc.backends.c.build import BuildOptions
    from llmc.backends.c.probe import read_bandwidth
    from llmc.target import host_cpu_target

    target = host_cpu_target()
    return read_bandwidth(BuildOptions.from_environment(), target.lanes, target.llc_bytes)


def _vocab(lm) -> int:
    config = getattr(getattr(lm, "model", None), "config", None)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(lm, "model", lm), "vocab_size", None)
    if vocab is None:
        raise LlmcError("the model has no vocab_size (a config's, or an attribute of a plain model)")
    return int(vocab)


def _table(runs: dict[str, Contender], batch, prompt_len, new_tokens, streamed, read_gbs) -> str:
    others = [r.generation for n, r in runs.items() if not n.startswith("llmc")]
    best = {key: min(getattr(g, key) for g in others) if others else None for key in ("ttft_s", "tpot_s")}
    eager = runs.get("eager")
    weights, kv = streamed[next(iter(runs))] if "llmc" not in streamed else streamed["llmc"]
    lines = [
        f"greedy generation: batch {batch}, prompt {prompt_len}, {new_tokens} new tokens; "
        f"{host_cpu_name()}, {torch.get_num_threads()} threads",
        f"a decode step reads {weights / 1e6:.1f} MB of weights + {kv / 1e6:.1f} MB of live KV cache; "
        f"measured main-memory read bandwidth {read_gbs:.1f} GB/s",
        "",
        "| contender | compile s | TTFT ms | TPOT ms | tokens/s | decode GB/s | % of read bw | tokens = eager |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        g = run.generation
        gbs = sum(streamed[name]) / g.tpot_s / 1e9
        same = "-" if eager is None or name == "eager" else _agreement(g, eager.generation, quantization_of(name))
        lines.append(f"| {name} | {run.compile_s:.1f} | {g.ttft_s * 1e3:.1f} | {g.tpot_s * 1e3:.2f} | "
                     f"{g.tokens_per_s:.1f} | {gbs:.1f} | {100 * gbs / read_gbs:.0f}% | {same} |")
    if "llmc" in runs and best["tpot_s"]:
        g = runs["llmc"].generation
        lines.append("")
        lines.append(f"llmc / best of the others (lower is faster): TTFT {g.ttft_s / best['ttft_s']:.2f}x, "
                     f"TPOT {g.tpot_s / best['tpot_s']:.2f}x")
    for name, run in runs.items():
        if quantization_of(name) and "llmc" in runs:
            speedup = runs["llmc"].generation.tpot_s / run.generation.tpot_s
            lines.append(f"{name}: decode step {speedup:.2f}x faster than llmc float32; weights "
                         f"{streamed[name][0] / 1e6:.1f} MB")
    return "\n".join(lines)


def _agreement(g: Generation, eager: Generation, quantized: str | None) -> str:
    """yes / NO for a float contender; for a quantized one the share of tokens equal to eager's."""
    if quantized is None:
        return "yes" if torch.equal(g.new_tokens, eager.new_tokens) else "NO"
    return f"{float((g.new_tokens == eager.new_tokens).float().mean()):.0%} same"

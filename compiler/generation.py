"""Greedy generation with a static KV cache: prefill once, then one decode graph reused per token.

The cache is state: `CacheLM` holds a Hugging Face model's `StaticCache` as its own
buffers, so a compiled graph binds them at each call and its scatter kernels write
each step's keys and values into them in place (no step copies the cache). A
model is compiled twice: a prefill graph for the prompt's length and a decode
graph for one token; every position-dependent value (RoPE rows, the mask, the
cache rows written) comes from the run-time inputs `cache_position` and
`position_ids`, so the decode graph never recompiles.

    lm = CacheLM(hf_model, batch=1, max_cache_len=256)
    run = generate(lm, input_ids, max_new_tokens=64)      # llmc: compiles, then generates
    run.sequences                                         # prompt + new tokens, as HF's generate returns

A model that is not a Hugging Face one takes part by the same contract: a module
whose `forward(input_ids, cache_position)` returns logits and updates its KV cache
buffers (named `...cache`, such as `k_cache`) in place
(`cache.index_copy_(2, cache_position, k)`), with a `max_cache_len` attribute
(`PlainCacheLM` adapts it; left padding is then not supported).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmc.errors import LlmcError

Step = Callable[..., torch.Tensor]  # (input_ids, cache_position, attention_mask, position_ids) -> logits


class CacheLM(torch.nn.Module):
    """A Hugging Face causal LM with a static KV cache as this module's buffers.

    forward(input_ids [B, T], cache_position [T], attention_mask [B, max_cache_len], position_ids [B, T])
    returns the logits [B, T, V] and writes the T new keys and values at `cache_position`."""

    def __init__(self, model: torch.nn.Module, batch: int, max_cache_len: int):
        super().__init__()
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        config = model.config.get_text_config()
        self.model, self.batch, self.max_cache_len = model, batch, max_cache_len
        self.cache = StaticCache(config=config, max_cache_len=max_cache_len)
        # a sliding-window layer rolls its buffer under data-dependent control flow that export would
        # specialise to one step; a full-length layer plus the model's own window mask is exact
        self.cache.layers = [StaticLayer(max_cache_len) for _ in self.cache.layers]
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = next(model.parameters()).dtype
        self.cache.early_initialization(batch, heads, head_dim, dtype, torch.device("cpu"))
        for i, layer in enumerate(self.cache.layers):
            self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
            self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)
            self.register_buffer(f"cache_length_{i}", layer.cumulative_length, persistent=False)

    def forward(self, input_ids, cache_position, attention_mask, position_ids):
        for i, layer in enumerate(self.cache.layers):
            # the layers read this module's buffers (export swaps buffers for its own tensors while tracing)
            layer.keys, layer.values = self.get_buffer(f"key_cache_{i}"), self.get_buffer(f"value_cache_{i}")
            layer.cumulative_length = self.get_buffer(f"cache_length_{i}")
            layer.cumulative_length.copy_(cache_position[0])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=self.cache, use_cache=True)
        return out.logits

    def cache_buffers(self) -> list[torch.Tensor]:
        return [b for name, b in self.named_buffers() if name.startswith(("key_cache_", "value_cache_"))]


class PlainCacheLM(torch.nn.Module):
    """A plain PyTorch LM in the generation contract: `forward(input_ids, cache_position)` -> logits,
    KV cache buffers (their names end in `cache`) updated in place, `max_cache_len`. Attention masks
    and positions are its own."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        if not hasattr(model, "max_cache_len"):
            raise LlmcError("a model for generation needs `max_cache_len` (its KV cache length) and "
                            "forward(input_ids, cache_position) that writes its cache in place")
        self.model, self.max_cache_len = model, int(model.max_cache_len)
        self.batch = getattr(model, "batch", 1)

    def forward(self, input_ids, cache_position, attention_mask, position_ids):
        return self.model(input_ids, cache_position)

    def cache_buffers(self) -> list[torch.Tensor]:
        """The KV cache (zeroed before a generation, counted in a step's bytes): buffers named `...cache`,
        never another buffer of the model."""
        return [b for name, b in self.model.named_buffers() if name.rsplit(".", 1)[-1].endswith("cache")]


def generation_model(model: torch.nn.Module, batch: int, max_cache_len: int) -> CacheLM | PlainCacheLM:
    """The generation adapter a model needs: Hugging Face models get a static cache, plain ones keep theirs."""
    if isinstance(model, CacheLM | PlainCacheLM):
        return model
    if hasattr(model, "config") and hasattr(model, "generation_config"):
        return CacheLM(model, batch, max_cache_len).eval()
    return PlainCacheLM(model).eval()


@dataclass
class Generation:
    """What one greedy generation produced and how long it took."""

    sequences: torch.Tensor  # prompt + new tokens, [B, T + N]
    new_tokens: torch.Tensor  # [B, N]
    ttft_s: float  # prefill, up to the first new token
    step_s: list[float] = field(default_factory=list)  # each decode step

    @property
    def tpot_s(self) -> float:
        return statistics.median(self.step_s) if self.step_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens.shape[0] / self.tpot_s


def step_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_cache_len: int):
    """(full-length mask [B, L], prompt positions [B, T]) as Hugging Face's generate makes them: a
    left-padded prompt's tokens count from 0, pads sit at position 1."""
    batch, length = input_ids.shape
    mask = torch.ones(batch, length, dtype=torch.long) if attention_mask is None else attention_mask.long()
    full = torch.ones(batch, max_cache_len, dtype=torch.long)
    full[:, :length] = mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return full, positions


def greedy(step: Step, lm: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
           max_new_tokens: int, progress: Callable[[int], None] | None = None) -> Generation:
    """Prefill, then `max_new_tokens - 1` decode steps, each feeding back the argmax token."""
    batch, length = input_ids.shape
    check_capacity(lm, batch, length, max_new_tokens)
    with torch.no_grad():
        for buffer in lm.cache_buffers():
            buffer.zero_()
        full_mask, positions = step_inputs(input_ids, attention_mask, lm.max_cache_len)
        start = time.perf_counter()
        logits = step(input_ids, torch.arange(length), full_mask, positions)
        token = logits[:, -1].argmax(-1)
        ttft = time.perf_counter() - start
        tokens, steps = [token], []
        last = positions[:, -1:]
        for i in range(max_new_tokens - 1):
            begin = time.perf_counter()
            logits = step(token[:, None], torch.tensor([length + i]), full_mask, last + 1 + i)
            token = logits[:, -1].argmax(-1)
            steps.append(time.perf_counter() - begin)
            tokens.append(token)
            if progress is not None:
                progress(1)
    new = torch.stack(tokens, dim=1)
    return Generation(torch.cat([input_ids, new], dim=1), new, ttft, steps)


def check_capacity(lm: torch.nn.Module, batch: int, length: int, new_tokens: int) -> None:
    if new_tokens < 1:
        raise LlmcError(f"max_new_tokens must be at least 1, got {new_tokens}")
    if length + new_tokens > lm.max_cache_len:
        raise LlmcError(f"a prompt of {length} tokens plus {new_tokens} new ones does not fit the KV cache of "
                        f"{lm.max_cache_len} positions; use a longer max_cache_len")
    if batch != lm.batch:
        raise LlmcError(f"the KV cache holds a batch of {lm.batch}; got {batch} prompts")


@dataclass
class CompiledGeneration:
    """The prefill and decode graphs of one model, compiled once each."""

    lm: torch.nn.Module
    prefill: object  # CompiledModel for [B, prompt length]
    decode: object  # CompiledModel for [B, 1]
    prompt_length: int

    def step(self, input_ids, cache_position, attention_mask, position_ids) -> torch.Tensor:
        graph = self.decode if input_ids.shape[1] == 1 else self.prefill
        if graph is self.prefill and input_ids.shape[1] != self.prompt_length:
            raise LlmcError(f"the prefill graph was compiled for prompts of {self.prompt_length} tokens, "
                            f"got {input_ids.shape[1]}")
        return graph(input_ids, cache_position, attention_mask, position_ids)


def compile_generation(lm: torch.nn.Module, prompt_length: int, target: str = "cpu", backend: str | None = None,
                       emit=None, **options) -> CompiledGeneration:
    """llmc.compile the model's prefill graph ([B, prompt_length]) and its decode graph ([B, 1])."""
    import llmc

    def example(length: int):
        ids = torch.zeros(lm.batch, length, dtype=torch.long)
        mask, positions = step_inputs(ids, None, lm.max_cache_len)
        return ids, torch.arange(length), mask, positions[:, :length]

    quiet = emit or (lambda *_: None)
    prefill = llmc.compile(lm, example(prompt_length), target=target, backend=backend, emit=quiet, **options)
    decode = llmc.compile(lm, example(1), target=target, backend=backend, emit=quiet, **options)
    return CompiledGeneration(lm, prefill, decode, prompt_length)


def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 32, max_cache_len: int | None = None, target: str = "cpu",
             backend: str | None = None) -> Generation:
    """Greedy generation with llmc: compile the prefill and decode graphs, then generate.

    `model` is a Hugging Face causal LM (given a static cache of `max_cache_len`, by default prompt +
    new tokens) or a plain module in the generation contract (see this module's docstring)."""
    batch, length = input_ids.shape
    lm = generation_model(model, batch, max_cache_len or length + max_new_tokens)
    check_capacity(lm, batch, length, max_new_tokens)
    compiled = compile_generation(lm, length, target, backend)
    return greedy(compiled.step, lm, input_ids, attention_mask, max_new_tokens)

"""A small LLaMA-style language model written for generation: a static KV cache per layer,
updated in place at run-time positions. `llmc generate examples/tiny_lm.py` runs it.

The generation contract (a plain PyTorch model's side of `llmc generate` / `llmc.generate`):
`forward(input_ids [B, T], cache_position [T])` returns logits [B, T, vocab] and writes the T
new keys and values into the cache buffers at `cache_position` (`index_copy_`); the model
says how many positions its cache holds (`max_cache_len`), its batch (`batch`) and its
`vocab_size`. Masks and RoPE rows come from `cache_position`, so one compiled prefill graph
and one compiled decode graph serve the whole generation. `example_inputs` is a prefill, so
`llmc compile examples/tiny_lm.py --run` works on the same file.
"""

import torch
import torch.nn.functional as F
from torch import nn

from llama_block import LlamaBlock, RMSNorm, apply_rope, repeat_kv


class CachedLayer(nn.Module):
    """A LLaMA block whose attention writes its keys and values into its own static cache."""

    def __init__(self, block: LlamaBlock, batch: int, max_len: int):
        super().__init__()
        self.block = block
        attention = block.attention
        shape = (batch, attention.n_kv_head, max_len, attention.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))

    def forward(self, x, cache_position, live):
        attention = self.block.attention
        B, T, _ = x.shape
        h = self.block.attention_norm(x)
        q = attention.wq(h).view(B, T, attention.n_head, attention.head_dim).transpose(1, 2)
        k = attention.wk(h).view(B, T, attention.n_kv_head, attention.head_dim).transpose(1, 2)
        v = attention.wv(h).view(B, T, attention.n_kv_head, attention.head_dim).transpose(1, 2)
        cos, sin = attention.cos[cache_position], attention.sin[cache_position]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.k_cache.index_copy_(2, cache_position, k)
        self.v_cache.index_copy_(2, cache_position, v)
        n_rep = attention.n_head // attention.n_kv_head
        y = F.scaled_dot_product_attention(q, repeat_kv(self.k_cache, n_rep), repeat_kv(self.v_cache, n_rep),
                                           attn_mask=live)
        h = x + attention.wo(y.transpose(1, 2).reshape(B, T, -1))
        return h + self.block.feed_forward(self.block.ffn_norm(h))


class TinyLM(nn.Module):
    def __init__(self, vocab_size=512, d_model=128, n_head=4, n_kv_head=2, hidden=344, layers=2, batch=1,
                 max_cache_len=256):
        super().__init__()
        self.vocab_size, self.batch, self.max_cache_len = vocab_size, batch, max_cache_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            CachedLayer(LlamaBlock(d_model, n_head, n_kv_head, hidden, max_seq=max_cache_len), batch, max_cache_len)
            for _ in range(layers))
        self.norm = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.register_buffer("key_positions", torch.arange(max_cache_len))

    def forward(self, input_ids, cache_position):
        x = self.embed(input_ids)
        # query i sees the keys up to its own position: the attention kernel reads no key past it
        live = (self.key_positions[None, :] <= cache_position[:, None])[None, None]
        for layer in self.layers:
            x = layer(x, cache_position, live)
        return self.lm_head(self.norm(x))


def build(prompt_len=16, seed=0, **sizes):
    torch.manual_seed(seed)
    lm = TinyLM(**sizes).eval()
    ids = torch.randint(0, lm.vocab_size, (lm.batch, prompt_len))
    return lm, (ids, torch.arange(prompt_len))


model, example_inputs = build()

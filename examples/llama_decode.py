"""LLaMA decode: RoPE at run-time positions, GQA over a static KV cache the step updates in place.

The cache holds the rotated keys and the values of n_kv_head heads for `max_len`
positions; a step writes its tokens' rows at their positions (`index_copy_`: llmc
writes those rows into the buffer, nothing else) and each token attends to keys
0..its position (a run-time bound: the attention kernel reads no key past it). One
compiled step serves every position. `LlamaDecodeStep` takes T tokens at positions
`pos` [T]; the example is one token at position 512.
"""

import torch
import torch.nn.functional as F
from torch import nn

from llama_block import LlamaBlock, apply_rope, repeat_kv


class LlamaDecodeStep(nn.Module):
    def __init__(self, block: LlamaBlock, max_len: int, batch: int = 1):
        super().__init__()
        self.block = block
        attention = block.attention
        shape = (batch, attention.n_kv_head, max_len, attention.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))
        self.register_buffer("key_positions", torch.arange(max_len))

    def forward(self, x, pos):
        attention = self.block.attention
        B, T, _ = x.shape
        h = self.block.attention_norm(x)
        q = attention.wq(h).view(B, T, attention.n_head, attention.head_dim).transpose(1, 2)
        k = attention.wk(h).view(B, T, attention.n_kv_head, attention.head_dim).transpose(1, 2)
        v = attention.wv(h).view(B, T, attention.n_kv_head, attention.head_dim).transpose(1, 2)
        cos, sin = attention.cos[pos], attention.sin[pos]  # these positions' rows of the RoPE tables
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        n_rep = attention.n_head // attention.n_kv_head
        keys, values = repeat_kv(self.k_cache, n_rep), repeat_kv(self.v_cache, n_rep)
        live = (self.key_positions[None, :] <= pos[:, None])[None, None]  # each token sees the keys up to itself
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=live)
        h = x + attention.wo(y.transpose(1, 2).reshape(B, T, -1))
        return h + self.block.feed_forward(self.block.ffn_norm(h))


def build(d_model=768, n_head=12, n_kv_head=4, hidden=2048, past=512, seed=0):
    """A step at position `past` of a cache of `past + 16` positions whose first `past` hold earlier tokens."""
    torch.manual_seed(seed)
    max_len = past + 16
    step = LlamaDecodeStep(LlamaBlock(d_model, n_head, n_kv_head, hidden, max_seq=max_len), max_len).eval()
    with torch.no_grad():
        step.k_cache[:, :, :past] = torch.randn_like(step.k_cache[:, :, :past])
        step.v_cache[:, :, :past] = torch.randn_like(step.v_cache[:, :, :past])
    return step, (torch.randn(1, 1, d_model), torch.tensor([past]))


model, example_inputs = build()

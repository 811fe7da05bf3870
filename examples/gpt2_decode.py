"""One GPT-2 decode step: a new token at position `pos` writes its keys and values into a
static KV cache, in place, and attends to the cache up to itself.

The cache is the step's own state: buffers of `max_len` positions, updated with
`index_copy_` at the run-time position (llmc writes that one row into the buffer,
no copy of the cache), and the attention reads keys 0..pos only (`arange <= pos`
becomes the kernel's run-time loop bound). One compiled step serves every position.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_block import GPT2Block


class GPT2DecodeStep(nn.Module):
    def __init__(self, block: GPT2Block, max_len: int):
        super().__init__()
        self.block = block
        n_head, hd = block.attn.n_head, block.ln_1.normalized_shape[0] // block.attn.n_head
        self.register_buffer("k_cache", torch.zeros(1, n_head, max_len, hd))
        self.register_buffer("v_cache", torch.zeros(1, n_head, max_len, hd))
        self.register_buffer("key_positions", torch.arange(max_len))

    def forward(self, x, pos):
        attn = self.block.attn
        B, T, C = x.size()
        h = self.block.ln_1(x)
        q, k, v = attn.c_attn(h).split(C, dim=2)
        hd = C // attn.n_head
        q = q.view(B, T, attn.n_head, hd).transpose(1, 2)
        k = k.view(B, T, attn.n_head, hd).transpose(1, 2)
        v = v.view(B, T, attn.n_head, hd).transpose(1, 2)
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        att = (q @ self.k_cache.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(~(self.key_positions <= pos), float("-inf"))  # keys written so far
        y = F.softmax(att, dim=-1) @ self.v_cache
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + attn.c_proj(y)
        return x + self.block.mlp(self.block.ln_2(x))


def build(d_model=768, n_head=12, past=512, seed=0):
    """A step at position `past` of a cache of `past + 16` positions whose first `past` hold earlier tokens."""
    torch.manual_seed(seed)
    step = GPT2DecodeStep(GPT2Block(d_model, n_head, max_seq=past + 16), max_len=past + 16).eval()
    with torch.no_grad():
        step.k_cache[:, :, :past] = torch.randn_like(step.k_cache[:, :, :past])
        step.v_cache[:, :, :past] = torch.randn_like(step.v_cache[:, :, :past])
    return step, (torch.randn(1, 1, d_model), torch.tensor([past]))


model, example_inputs = build()

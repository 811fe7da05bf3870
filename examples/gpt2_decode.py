"""One GPT-2 decode step: a single new token attends to a static KV cache.

The cache of the `past` earlier tokens comes in as inputs; the step returns the
block output and the new token's keys and values for the caller to append.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_block import GPT2Block


class GPT2DecodeStep(nn.Module):
    def __init__(self, block: GPT2Block):
        super().__init__()
        self.block = block

    def forward(self, x, k_cache, v_cache):
        attn = self.block.attn
        B, T, C = x.size()
        h = self.block.ln_1(x)
        q, k, v = attn.c_attn(h).split(C, dim=2)
        hd = C // attn.n_head
        q = q.view(B, T, attn.n_head, hd).transpose(1, 2)
        k = k.view(B, T, attn.n_head, hd).transpose(1, 2)
        v = v.view(B, T, attn.n_head, hd).transpose(1, 2)
        keys = torch.cat((k_cache, k), dim=2)
        values = torch.cat((v_cache, v), dim=2)
        att = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        y = F.softmax(att, dim=-1) @ values
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + attn.c_proj(y)
        return x + self.block.mlp(self.block.ln_2(x)), k, v


def build(d_model=768, n_head=12, past=512, seed=0):
    torch.manual_seed(seed)
    step = GPT2DecodeStep(GPT2Block(d_model, n_head, max_seq=past + 1)).eval()
    hd = d_model // n_head
    inputs = (
        torch.randn(1, 1, d_model),
        torch.randn(1, n_head, past, hd),
        torch.randn(1, n_head, past, hd),
    )
    return step, inputs


model, example_inputs = build()

"""One LLaMA decode step: RoPE at position `past`, GQA over a static KV cache.

The cache holds the keys (already rotated) and values of the `past` earlier
tokens for the n_kv_head key/value heads; the step returns the block output and
the new token's keys and values.
"""

import torch
from torch import nn

from llama_block import LlamaBlock


class LlamaDecodeStep(nn.Module):
    def __init__(self, block: LlamaBlock):
        super().__init__()
        self.block = block

    def forward(self, x, k_cache, v_cache):
        attention = self.block.attention
        q, k, v = attention.project(self.block.attention_norm(x), k_cache.shape[2])
        keys = torch.cat((k_cache, k), dim=2)
        values = torch.cat((v_cache, v), dim=2)
        h = x + attention.attend(q, keys, values, causal=False)
        return h + self.block.feed_forward(self.block.ffn_norm(h)), k, v


def build(d_model=768, n_head=12, n_kv_head=4, hidden=2048, past=512, seed=0):
    torch.manual_seed(seed)
    block = LlamaBlock(d_model, n_head, n_kv_head, hidden, max_seq=past + 16)
    hd = d_model // n_head
    inputs = (
        torch.randn(1, 1, d_model),
        torch.randn(1, n_kv_head, past, hd),
        torch.randn(1, n_kv_head, past, hd),
    )
    return LlamaDecodeStep(block).eval(), inputs


model, example_inputs = build()

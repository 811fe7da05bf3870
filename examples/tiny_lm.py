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
from torch import nn

from llama_block import LlamaBlock, RMSNorm
from llama_decode import LlamaDecodeStep


class TinyLM(nn.Module):
    def __init__(self, vocab_size=512, d_model=128, n_head=4, n_kv_head=2, hidden=344, layers=2, batch=1,
                 max_cache_len=256):
        super().__init__()
        self.vocab_size, self.batch, self.max_cache_len = vocab_size, batch, max_cache_len
        self.embed = nn.Embedding(vocab_size, d_model)
        # each layer keeps its own static cache and writes it in place (llama_decode.py)
        self.layers = nn.ModuleList(
            LlamaDecodeStep(LlamaBlock(d_model, n_head, n_kv_head, hidden, max_seq=max_cache_len), max_cache_len, batch)
            for _ in range(layers))
        self.norm = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids, cache_position):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cache_position)
        return self.lm_head(self.norm(x))


def build(prompt_len=16, seed=0, **sizes):
    torch.manual_seed(seed)
    lm = TinyLM(**sizes).eval()
    ids = torch.randint(0, lm.vocab_size, (lm.batch, prompt_len))
    return lm, (ids, torch.arange(prompt_len))


model, example_inputs = build()

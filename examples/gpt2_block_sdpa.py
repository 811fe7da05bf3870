"""The GPT-2 block of gpt2_block.py with attention through F.scaled_dot_product_attention."""

from gpt2_block import build as _build_block


def build(**sizes):
    return _build_block(use_sdpa=True, **sizes)


model, example_inputs = build()

"""Small Hugging Face models built from configs with random weights (no downloads), for the tests."""

from __future__ import annotations

import torch
import transformers

transformers.logging.set_verbosity_error()

FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "phi", "bert")
VOCAB = 97


def hf_model(family: str, attention: str = "sdpa", layers: int = 1, seed: int = 0, positions: int = 64) -> torch.nn.Module:
    small = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=positions)
    if family == "gpt2":
        config, cls = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=positions), \
            transformers.GPT2LMHeadModel
    elif family == "llama":
        config, cls = transformers.LlamaConfig(num_key_value_heads=2, **small), transformers.LlamaForCausalLM
    elif family == "qwen2":
        config, cls = transformers.Qwen2Config(num_key_value_heads=2, **small), transformers.Qwen2ForCausalLM
    elif family == "mistral":
        config, cls = transformers.MistralConfig(num_key_value_heads=2, sliding_window=8, **small), \
            transformers.MistralForCausalLM
    elif family == "phi":
        config, cls = transformers.PhiConfig(partial_rotary_factor=0.5, **small), transformers.PhiForCausalLM
    else:
        config, cls = transformers.BertConfig(**small), transformers.BertModel
    config._attn_implementation = attention
    torch.manual_seed(seed)
    return cls(config).eval()


def hf_inputs(batch: int, seq: int, padded: bool = True, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids and an attention mask; the first prompt left-padded by a quarter of its length."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[0, : max(1, seq // 4)] = 0
    return {"input_ids": ids, "attention_mask": mask}


def first_output(out) -> torch.Tensor:
    """logits of a causal LM, the last hidden state of an encoder."""
    return out[0] if isinstance(out, tuple | list) else out.logits if hasattr(out, "logits") else out[0]

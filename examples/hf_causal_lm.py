"""A whole Hugging Face causal LM, built from its config with random weights (no download).

`model` is `LlamaForCausalLM` by default; `build(family=...)` makes any of the families llmc is
tested on (gpt2, llama, qwen2, mistral, phi, bert). `example_inputs` are keyword inputs: token
ids and the attention mask of a batch of two prompts, the first left-padded.

    llmc compile examples/hf_causal_lm.py --run
    llmc compile examples/hf_causal_lm.py --explain
"""

import torch
import transformers

transformers.logging.set_verbosity_error()

CONFIGS = {
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, dict(n_embd=256, n_layer=4, n_head=8, n_positions=512)),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(num_key_value_heads=4)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(num_key_value_heads=4)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(num_key_value_heads=4)),
    "phi": (transformers.PhiConfig, transformers.PhiForCausalLM, dict(partial_rotary_factor=0.5)),
    "bert": (transformers.BertConfig, transformers.BertModel, dict()),
}
LLAMA_LIKE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=688,
                  max_position_embeddings=512)


def config(family: str, vocab: int = 1000, attention: str = "sdpa", **overrides):
    """The small config of a family: 4 layers, width 256, random weights."""
    config_class, _, extra = CONFIGS[family]
    sizes = {} if family == "gpt2" else dict(LLAMA_LIKE)
    if family == "bert":
        sizes["intermediate_size"] = 1024
    cfg = config_class(vocab_size=vocab, **{**sizes, **extra, **overrides})
    cfg._attn_implementation = attention
    return cfg


def build(family: str = "llama", batch: int = 2, seq: int = 32, attention: str = "sdpa", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config(family, attention=attention, **overrides)
    model = CONFIGS[family][1](cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, : seq // 4] = 0  # the first prompt is left-padded
    return model, {"input_ids": ids, "attention_mask": mask}


model, example_inputs = build()

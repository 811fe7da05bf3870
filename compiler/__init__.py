"""llmc: an MLIR-style compiler for transformer graphs, on xDSL.

Public surface: `llmc.compile`, `llmc.explain`, `llmc.generate`, the `llmc` CLI, the
torch.compile backend "llmc" and the pass registry (`llmc.registry`).
"""

from llmc.errors import LlmcError


def __getattr__(name: str):
    # torch loads only when the API is used: `llmc opt` on an IR file starts without it
    import importlib

    if name in ("compile", "CompiledModel"):
        return getattr(importlib.import_module("llmc.api"), name)
    try:  # llmc.dynamo_backend, llmc.exporter, ...: submodules load on first use
        return importlib.import_module(f"llmc.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'llmc' has no attribute '{name}'") from None


def explain(model, example_inputs, **compile_options) -> str:
    """Which ops run in llmc kernels and which in eager under torch.compile(backend="llmc"), and why."""
    from llmc.explanation import explain as run

    return run(model, example_inputs, **compile_options)


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = 32, **options):
    """Greedy generation with a static KV cache: the prefill and decode graphs compiled by llmc once
    each, the cache written in place. Returns a `Generation` (`.sequences`, `.ttft_s`, `.tpot_s`)."""
    from llmc.generation import generate as run

    return run(model, input_ids, attention_mask, max_new_tokens, **options)


__all__ = ["CompiledModel", "LlmcError", "compile", "explain", "generate"]

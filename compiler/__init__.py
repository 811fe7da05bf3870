"""llmc: an MLIR-style compiler for transformer graphs, on xDSL.

Public surface: `llmc.compile`, `llmc.explain`, the `llmc` CLI, the
torch.compile backend "llmc" and the pass registry (`llmc.registry`).
"""

from llmc.api import CompiledModel, compile
from llmc.errors import LlmcError


def explain(model, example_inputs, **compile_options) -> str:
    """Which ops run in llmc kernels and which in eager under torch.compile(backend="llmc"), and why."""
    from llmc.explanation import explain as run

    return run(model, example_inputs, **compile_options)


__all__ = ["CompiledModel", "LlmcError", "compile", "explain"]

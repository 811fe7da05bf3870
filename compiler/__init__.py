"""llmc: an MLIR-style compiler for transformer graphs, on xDSL.

Public surface: `llmc.compile`, the `llmc` CLI, the torch.compile backend
"llmc" and the pass registry (`llmc.registry`).
"""

from llmc.api import CompiledModel, compile
from llmc.errors import LlmcError

__all__ = ["CompiledModel", "LlmcError", "compile"]

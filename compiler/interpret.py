"""Run any llmc IR dump on numpy inputs with xDSL's interpreter.

Every dialect level registers its functions here, so a module straight from the
exporter, after fusion, or at tile level runs the same way: `forward` is called
with the inputs, weights are looked up by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.interpreter import Interpreter
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.func import FuncFunctions
from xdsl.interpreters.scf import ScfFunctions

from llmc.dialects.graph_interp import GraphFunctions
from llmc.dtypes import decode
from llmc.errors import InterpretError


def interpret(
    module: ModuleOp, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray], entry: str = "forward"
) -> list[np.ndarray]:
    """Execute `entry` of the module; returns its results as numpy arrays."""
    from llmc.dialects.kernel_interp import KernelFunctions
    from llmc.dialects.tile_interp import TileFunctions

    interpreter = Interpreter(module, index_bitwidth=64)
    for functions in (FuncFunctions(), ArithFunctions(), ScfFunctions(), GraphFunctions(weights),
                      KernelFunctions(), TileFunctions(weights)):
        interpreter.register_implementations(functions)
    args = tuple(_as_input(x) for x in inputs)
    try:
        results = interpreter.call_op(entry, args)
    except InterpretError:
        raise
    except Exception as error:  # an interpreter fault inside an op: report, not a traceback
        raise InterpretError(f"interpreting '{entry}' failed: {error}") from error
    return [decode(np.array(r)) for r in results]


def _as_input(x) -> np.ndarray:
    x = np.asarray(x)
    return np.array(x if x.dtype.kind in "bi" else x.astype(np.float32), order="C")  # keeps 0-d arrays 0-d

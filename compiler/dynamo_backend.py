"""`torch.compile(model, backend="llmc")`: compile Dynamo's FX graph with llmc.

The graph goes through the same exporter and pass pipeline as `llmc.compile`.
A graph llmc cannot import (an unsupported op) falls back to eager with a
warning naming the op, as torch.compile backends are expected to.
"""

from __future__ import annotations

import warnings

import torch

from llmc.errors import LlmcError


def llmc_backend(gm: torch.fx.GraphModule, example_inputs: list, **options):
    import llmc

    try:
        compiled = llmc.compile(gm, tuple(example_inputs), target=options.get("target", "cpu"), emit=lambda _: None)
    except LlmcError as error:
        warnings.warn(f"llmc: running this graph in eager mode: {error}", stacklevel=2)
        return gm.forward

    def run(*args):
        result = compiled(*args)
        return result if isinstance(result, tuple) else (result,)

    return run

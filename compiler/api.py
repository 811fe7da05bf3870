"""The Python API: `llmc.compile(model, example_inputs, target=...)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from llmc.exporter import ImportedModel, export_model
from llmc.interpret import interpret
from llmc.pipeline import DumpOptions, PassRunner
from llmc.registry import default_pipeline, parse_passes
from llmc.report import kernel_table
from llmc.target import get_target


@dataclass
class CompiledModel:
    """The compiled graph. Calling it runs the final tile IR in llmc's reference interpreter
    (numpy); the C and Triton backends turn the same IR into native code."""

    module: ModuleOp
    imported: ImportedModel
    runner: PassRunner
    target: str

    def __call__(self, *inputs: torch.Tensor):
        arrays = [x.detach().cpu().numpy() for x in inputs]
        outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in interpret(self.module, arrays, self.imported.weights)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def report(self) -> str:
        kernels = self.runner.snapshots.get("tile") or self.runner.snapshots.get("fuse")
        return kernel_table(kernels, self.module, get_target(self.target)) if kernels else "(not fused)"


def compile(
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    target: str = "cpu",
    passes: str | None = None,
    dumps: DumpOptions | None = None,
    emit=print,
) -> CompiledModel:
    """Export, run the pass pipeline (default: all passes for `target`) and return the compiled model."""
    get_target(target)
    imported = export_model(model, tuple(example_inputs))
    runner = PassRunner(parse_passes(passes or default_pipeline(target)), dumps or DumpOptions(), emit)
    module = runner.run(imported.module)
    return CompiledModel(module, imported, runner, target)

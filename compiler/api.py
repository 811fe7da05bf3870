"""The Python API: `llmc.compile(model, example_inputs, target=...)`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from llmc.errors import LlmcError
from llmc.exporter import ImportedModel, export_model
from llmc.interpret import interpret
from llmc.pipeline import DumpOptions, PassRunner
from llmc.registry import default_pipeline, parse_passes
from llmc.report import kernel_table
from llmc.target import get_target

BACKENDS = ("c", "interpret")


@dataclass
class CompiledModel:
    """The compiled graph. Calling it runs the native code of its backend (the C library for
    CPU targets) or, with backend="interpret", the final tile IR in llmc's numpy interpreter."""

    module: ModuleOp
    imported: ImportedModel
    runner: PassRunner
    target: str
    backend: str = "interpret"
    program: object | None = None  # llmc.backends.c.CProgram for backend "c"
    seconds: dict[str, float] = field(default_factory=dict)  # export / passes / build wall time

    def __call__(self, *inputs: torch.Tensor):
        if self.program is not None:
            outputs = list(self.program.library(*inputs))
        else:
            arrays = [x.detach().cpu().numpy() for x in inputs]
            results = interpret(self.module, arrays, self.imported.weights)
            outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in results]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def profile(self, inputs: Sequence[torch.Tensor], repeats: int = 20) -> dict[str, float]:
        """Measured microseconds per kernel (C backend only)."""
        if self.program is None:
            raise LlmcError(f"per-kernel timing needs a native backend; this model runs on '{self.backend}'")
        return self.program.library.profile(tuple(inputs), repeats)

    def report(self, measured: dict[str, float] | None = None) -> str:
        kernels = self.runner.snapshots.get("tile") or self.runner.snapshots.get("fuse")
        if not kernels:
            return "(not fused)"
        return kernel_table(kernels, self.module, get_target(self.target), measured, self.backend)


def compile(
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    target: str = "cpu",
    passes: str | None = None,
    dumps: DumpOptions | None = None,
    emit=print,
    backend: str | None = None,
    build=None,
) -> CompiledModel:
    """Export, run the pass pipeline (default: all passes for `target`) and build the backend.

    `backend` defaults to "c" on CPU targets; "interpret" runs the IR in numpy (for debugging).
    `build` is a `llmc.backends.c.build.BuildOptions` (compiler, flags, cache directory).
    """
    chosen = get_target(target)
    backend = backend or ("c" if chosen.kind == "cpu" else "interpret")
    if backend not in BACKENDS:
        raise LlmcError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    seconds = {}
    begin = time.perf_counter()
    imported = export_model(model, tuple(example_inputs))
    seconds["export"] = time.perf_counter() - begin
    runner = PassRunner(parse_passes(passes or default_pipeline(target)), dumps or DumpOptions(), emit)
    begin = time.perf_counter()
    module = runner.run(imported.module)
    seconds["passes"] = time.perf_counter() - begin
    compiled = CompiledModel(module, imported, runner, target, backend, seconds=seconds)
    if backend == "c":
        from llmc.backends.c import compile_c
        from llmc.backends.c.build import BuildOptions

        begin = time.perf_counter()
        compiled.program = compile_c(module, imported.weights, chosen, build or BuildOptions.from_environment())
        seconds["build"] = time.perf_counter() - begin
    return compiled

"""The Python API: `llmc.compile(model, example_inputs, target=...)`."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from llmc.dtypes import to_numpy, torch_dtype
from llmc.errors import LlmcError
from llmc.exporter import ImportedModel, export_model
from llmc.interpret import interpret
from llmc.pipeline import DumpOptions, PassRunner
from llmc.registry import default_pipeline, parse_passes
from llmc.report import kernel_table
from llmc.target import get_target

BACKENDS = ("c", "triton", "interpret")


@dataclass
class CompiledModel:
    """The compiled graph. Calling it runs the native code of its backend (the C library for
    CPU targets) or, with backend="interpret", the final tile IR in llmc's numpy interpreter."""

    module: ModuleOp
    imported: ImportedModel
    runner: PassRunner
    target: str
    backend: str = "interpret"
    program: object | None = None  # CProgram (backend "c") or TritonProgram (backend "triton")
    seconds: dict[str, float] = field(default_factory=dict)  # export / passes / build wall time
    fallback: Callable[[], Callable] | None = None  # builds what runs instead when the backend fails

    def _fall_back(self, error: LlmcError):
        if self.fallback is None:
            raise error
        warnings.warn(f"llmc: {self.backend} backend failed, falling back: {error}", stacklevel=3)
        runner, self.fallback = self.fallback(), None
        self.backend, self.program = "fallback", runner
        return runner

    def __call__(self, *inputs: torch.Tensor):
        if self.backend in ("triton", "fallback"):
            try:
                outputs = list(self.program(*inputs))
            except LlmcError as error:
                outputs = list(self._fall_back(error)(*inputs))
        elif self.program is not None:
            outputs = list(self.program.library(*inputs))
        else:
            results = interpret(self.module, [to_numpy(x) for x in inputs], self.imported.weights)
            dtypes = [torch_dtype(t.element_type) for t in self.imported.output_types]
            outputs = [torch.from_numpy(np.ascontiguousarray(o)).to(d) for o, d in zip(results, dtypes)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def profile(self, inputs: Sequence[torch.Tensor], repeats: int = 20) -> dict[str, float]:
        """Measured microseconds per kernel (C backend only)."""
        if self.backend != "c":
            raise LlmcError(f"per-kernel timing is measured by the C backend; this model runs on '{self.backend}'")
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
    fallback: str | None = None,
) -> CompiledModel:
    """Export, run the pass pipeline (default: all passes for `target`) and build the backend.

    `backend` defaults to "c" on CPU targets and "triton" on GPU targets (on a machine without a
    GPU, Triton's interpreter runs the kernels when TRITON_INTERPRET=1); "interpret" runs the
    IR in llmc's numpy interpreter (for debugging).
    `build` is a `llmc.backends.c.build.BuildOptions` (compiler, flags, cache directory).
    `fallback` ("c" or "eager") is what runs, with a warning, when the Triton backend cannot
    build or run a kernel; without it such a failure is an error naming the kernel and its IR.
    """
    if fallback not in (None, "c", "eager"):
        raise LlmcError(f"unknown fallback '{fallback}'; choose c or eager")
    chosen = get_target(target)
    backend = backend or ("c" if chosen.kind == "cpu" else "triton")
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
    elif backend == "triton":
        output_dtypes = [torch_dtype(t.element_type) for t in imported.output_types]
        compiled.fallback = _fallback_factory(fallback, model, example_inputs, build, output_dtypes)
        try:
            compiled.program = _build_triton(module, imported, build, seconds)
        except LlmcError as error:
            compiled._fall_back(error)
    return compiled


def _build_triton(module, imported, build, seconds):
    from llmc.backends.c.build import BuildOptions
    from llmc.backends.triton import compile_triton

    begin = time.perf_counter()
    program = compile_triton(module, imported.weights, (build or BuildOptions.from_environment()).cache_dir)
    seconds["build"] = time.perf_counter() - begin
    return program


def _fallback_factory(fallback, model, example_inputs, build, output_dtypes):
    if fallback == "eager":
        def run_eager(*inputs):
            with torch.no_grad():
                result = model(*inputs)
            return result if isinstance(result, tuple) else (result,)

        return lambda: run_eager
    if fallback == "c":
        def build_c():
            # the C backend computes in float32: a 16-bit model falls back as a float32 copy of itself
            def widen(tensors):
                return tuple(x.float() if x.is_floating_point() else x for x in tensors)

            wide = copy.deepcopy(model).float()
            library = compile(wide, widen(example_inputs), target="cpu", build=build, emit=lambda *_: None).program.library

            def run_c(*inputs):
                return tuple(o.to(d) for o, d in zip(library(*widen(inputs)), output_dtypes))

            return run_c
        return build_c
    return None

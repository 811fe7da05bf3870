"""The Python API: `llmc.compile(model, example_inputs, target=...)`.

A `CompiledModel` is called like the model: the same positional and keyword
inputs, the same output structure (a tensor, a tuple, or a Hugging Face
`ModelOutput`). Buffers the model mutates are read from the model at each
call and written back after it, so state lives where eager keeps it.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from xdsl.dialects.builtin import ModuleOp

from llmc.dtypes import to_numpy, torch_dtype
from llmc.errors import LlmcError
from llmc.exporter import ImportedModel, Source, export_model, split_inputs
from llmc.interpret import interpret
from llmc.ir_text import print_ir
from llmc.passes.matmul_precision import PRECISIONS
from llmc.passes.quantize import pass_spec
from llmc.pipeline import DumpOptions, PassRunner
from llmc.quantization import QuantFormat
from llmc.registry import default_pipeline, parse_passes
from llmc.report import kernel_table
from llmc.reproducer import backend_reproducer, internal_error
from llmc.target import get_target
from llmc.backends.c.build import BuildOptions

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
    model: torch.nn.Module | None = None  # the model whose mutated buffers the graph reads and writes

    def _fall_back(self, error: LlmcError):
        if self.fallback is None:
            raise error
        warnings.warn(f"llmc: {self.backend} backend failed, falling back: {error}", stacklevel=3)
        runner, self.fallback = self.fallback(), None
        self.backend, self.program = "fallback", runner
        return runner

    def __call__(self, *args, **kwargs):
        if self.backend == "fallback":
            return self.program(*args, **kwargs)
        try:
            user = self.run_flat(self.flat_inputs(args, kwargs))
        except LlmcError as error:
            if self.backend != "triton":
                raise
            return self._fall_back(error)(*args, **kwargs)
        if self._one_tensor:
            return user[0]
        if self.imported.out_spec is not None:
            return tree_unflatten(user, self.imported.out_spec)
        return tuple(user)

    def run_flat(self, flat: Sequence) -> list[torch.Tensor]:
        """Run on the flattened model inputs: bind the graph's arguments (state buffers included), run,
        write mutated buffers and inputs back; returns the model's own outputs.

        A decode step's kernels stream the model's weights and leave the interpreter's own state out of cache, so
        every Python operation here misses: binding each argument through a lookup per call, and comparing every
        write-back, cost GPT-2's decode step 45-60 us more than the prepared `_binding` below."""
        arguments = self._graph_arguments(flat)
        try:
            outputs = self.run_graph(arguments)
        except LlmcError as error:
            raise self._explained(error, arguments) from None
        for index, at, buffers, name in self._binding[1]:
            target = flat[at] if buffers is None else buffers.get(name)
            if outputs[index].data_ptr() != target.data_ptr():
                with torch.no_grad():
                    target.copy_(outputs[index])
        return [outputs[i] for i in self.imported.user_outputs]

    def _graph_arguments(self, flat: Sequence) -> list:
        """The compiled graph's arguments for these flat inputs: each input, or a model buffer as its module holds
        it now (a cache the caller replaced is the one read and written)."""
        return [flat[at] if buffers is None else buffers.get(name) for at, buffers, name in self._binding[0]]

    def _explained(self, error: LlmcError, arguments: list) -> LlmcError:
        """A refused call's error, naming the model buffer that is gone where that is why."""
        gone = [source.name for source, value in zip(self.imported.arguments, arguments)
                if source.kind == "buffer" and value is None]
        if not gone:
            return error
        return LlmcError(f"{error}: the model no longer has its buffer '{gone[0]}', which the compiled graph reads")

    @functools.cached_property
    def _binding(self) -> tuple[list, list]:
        """Where each graph argument comes from (`_slot`), and the write-backs to make after a call: (result index,
        *its target's slot) for each one the graph does not write in place (a C library writes a KV cache into
        the caller's buffer; a Hugging Face cache's length counter is copied)."""
        imported = self.imported
        library = self.program.library if self.backend == "c" and self.program is not None else None
        aliases = library.source.output_aliases if library is not None else {}
        sources = [self._slot(source) for source in imported.arguments]
        copies = [(index, *self._slot(target)) for index, target in imported.writebacks
                  if index not in aliases or imported.arguments[aliases[index]] != target]
        return sources, copies

    def _slot(self, source: Source) -> tuple[int, dict | None, str]:
        """(flat input index, None, "") for an input; (-1, its module's buffer dict, attribute) for a model buffer,
        read from that dict at each call. The module is found once: `get_buffer`'s walk from the root cost a
        decode step a few microseconds a buffer."""
        if source.kind == "input":
            return source.index, None, ""
        if self.model is None:
            raise LlmcError(f"the compiled graph reads the model's buffer '{source.name}', and was built without "
                            "the model")
        path, _, attribute = source.name.rpartition(".")
        try:
            owner = self.model.get_submodule(path) if path else self.model
        except AttributeError:
            owner = None
        if owner is None or attribute not in owner._buffers:
            raise LlmcError(f"the model no longer has its buffer '{source.name}', which the compiled graph reads")
        return -1, owner._buffers, attribute

    @functools.cached_property
    def _one_tensor(self) -> bool:
        """Whether the model returns one tensor (no output tree to rebuild at each call)."""
        spec = self.imported.out_spec
        return len(self.imported.user_outputs) == 1 and (spec is None or spec.is_leaf())

    def graph_inputs(self, *args, **kwargs) -> list[torch.Tensor]:
        """The tensors the compiled graph takes for these model inputs (state buffers included)."""
        return self._graph_arguments(self.flat_inputs(args, kwargs))

    @functools.cached_property
    def _positional_tensors(self) -> int:
        """How many tensors the model takes when its inputs are positional tensors only (then a call's
        tensors are its flat inputs as they are: no tree to flatten and compare), else -1."""
        spec = self.imported.in_spec
        if spec is None or spec.num_children != 2:
            return -1
        args, kwargs = spec.child(0), spec.child(1)
        if args.type is not tuple or kwargs.type is not dict or kwargs.num_children:
            return -1
        return args.num_children if all(args.child(i).is_leaf() for i in range(args.num_children)) else -1

    def flat_inputs(self, args: tuple, kwargs: dict) -> Sequence:
        if not kwargs and len(args) == self._positional_tensors:
            for arg in args:  # (not isinstance: torch.Tensor's metaclass answers that in Python)
                if type(arg) is not torch.Tensor:
                    break  # a subclass, or not a tensor: checked against the input tree below
            else:
                return args
        spec = self.imported.in_spec
        if spec is None:
            if kwargs:
                raise LlmcError("this compiled graph takes positional inputs only")
            return list(args)
        if kwargs and spec.num_children == 2:
            order = spec.child(1).context
            if set(kwargs) != set(order):
                raise LlmcError(f"the model was compiled with keyword inputs {list(order)}, got {list(kwargs)}")
            kwargs = {name: kwargs[name] for name in order}
        flat, given = tree_flatten((tuple(args), kwargs))
        if given != spec:
            raise LlmcError(f"the model was compiled for inputs shaped like {spec}; got {given}")
        return flat

    def run_graph(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Run the compiled graph on its own inputs; returns every function result."""
        if self.backend == "triton":
            return list(self.program(*inputs))
        if self.program is not None:
            return self.program.library.run(inputs)
        results = interpret(self.module, [to_numpy(x) for x in inputs], self.imported.weights)
        dtypes = [torch_dtype(t.element_type) for t in self.imported.output_types]
        return [torch.from_numpy(np.array(o, order="C")).to(d) for o, d in zip(results, dtypes)]

    def profile(self, inputs, repeats: int = 20, between=None) -> dict[str, float]:
        """Measured microseconds per kernel (C backend only), on the model's inputs; `between` runs after each
        of the `repeats` calls (CLibrary.profile)."""
        if self.backend != "c":
            raise LlmcError(f"per-kernel timing is measured by the C backend; this model runs on '{self.backend}'")
        args, kwargs = split_inputs(inputs)
        return self.program.library.profile(tuple(self.graph_inputs(*args, **kwargs)), repeats, between)

    def report(self, measured: dict[str, float] | None = None, ceilings=None) -> str:
        """The per-kernel table; `ceilings` (llmc.roofline.Ceilings) are the host's measured ones."""
        kernels = self.kernels_ir()
        if not kernels:
            return "(not fused)"
        return kernel_table(kernels, self.module, get_target(self.target), measured, self.backend, ceilings)

    def kernels_ir(self) -> ModuleOp | None:
        """The IR after `tile` (after `fuse` when not tiled): one kernel op per kernel, with its decisions."""
        return self.runner.snapshots.get("tile") or self.runner.snapshots.get("fuse")


def compile(
    model: torch.nn.Module,
    example_inputs,
    target: str = "cpu",
    passes: str | None = None,
    dumps: DumpOptions | None = None,
    emit=print,
    backend: str | None = None,
    build=None,
    fallback: str | None = None,
    quantize: str | None = None,
    progress: Callable[[str], None] | None = None,
    autotune: bool | float | None = None,
    matmul_precision: str = "f32",
) -> CompiledModel:
    """Export, run the pass pipeline (default: all passes for `target`) and build the backend.

    `example_inputs` is a tuple of positional inputs or a dict of keyword inputs (token ids,
    attention masks: integer and bool tensors are fine). `backend` defaults to "c" on CPU
    targets and "triton" on GPU targets (on a machine without a GPU, Triton's interpreter runs
    the kernels when TRITON_INTERPRET=1); "interpret" runs the IR in llmc's numpy interpreter
    (for debugging). `build` is a `llmc.backends.c.build.BuildOptions` (compiler, flags, cache
    directory). `fallback` ("c" or "eager") is what runs, with a warning, when the Triton
    backend cannot build or run a kernel; without it such a failure is an error naming the
    kernel and its IR. `quantize` ("int8", "int4", "int4:128", "int4:64:asym", "int4:channel") runs
    the `quantize` pass first: weight-only quantization of the linear layers (llmc.quantization).
    `progress` is told the name of each stage (export, each pass, build) as it starts. `autotune`
    (True, False, or a budget in seconds; default: $LLMC_AUTOTUNE, else on with 60 s) measures tile
    decisions on this host for the C backend on the host target, cached on disk (passes/autotune.py).
    `matmul_precision` "bf16" lets the linear layers of an fp32 model compute in bf16 with f32
    accumulation (the `matmul-precision` pass; AMX or vdpbf16ps where the host has them), as
    torch.set_float32_matmul_precision("medium") lets oneDNN; "f32" (default) keeps them fp32.
    """
    if fallback not in (None, "c", "eager"):
        raise LlmcError(f"unknown fallback '{fallback}'; choose c or eager")
    begin = time.perf_counter()
    try:
        if progress:
            progress("export")
        imported = export_model(model, example_inputs)
        export_seconds = time.perf_counter() - begin
        compiled = compile_imported(imported, target, passes, dumps, emit, backend, build,
                                    _fallback_factory(fallback, model, example_inputs, build, quantize,
                                                      matmul_precision),
                                    quantize, progress, autotune, matmul_precision)
    except LlmcError:
        raise
    except Exception as error:  # the stages wrap their own failures with a reproducer; this is the rest
        raise internal_error("llmc.compile", error) from error
    compiled.seconds = {"export": export_seconds, **compiled.seconds}
    compiled.model = model
    return compiled


def compile_imported(imported: ImportedModel, target: str = "cpu", passes: str | None = None,
                     dumps: DumpOptions | None = None, emit=print, backend: str | None = None, build=None,
                     fallback: Callable[[], Callable] | None = None, quantize: str | None = None,
                     progress: Callable[[str], None] | None = None,
                     autotune: bool | float | None = None, matmul_precision: str = "f32") -> CompiledModel:
    """Run the pass pipeline on an imported graph and build its backend."""
    chosen = get_target(target)
    backend = backend or ("c" if chosen.kind == "cpu" else "triton")
    if backend not in BACKENDS:
        raise LlmcError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    cache = str((build or BuildOptions.from_environment()).cache_dir)
    spec = passes or default_pipeline(target, autotune_budget(autotune, target, backend), cache)
    spec = f"{front_passes(quantize, matmul_precision)}{spec}"
    runner = PassRunner(parse_passes(spec), dumps or DumpOptions(), emit, progress=progress)
    begin = time.perf_counter()
    module = runner.run(imported.module)
    seconds = {"passes": time.perf_counter() - begin}
    compiled = CompiledModel(module, imported, runner, target, backend, seconds=seconds)
    if backend == "c":
        from llmc.backends.c import compile_c

        begin = time.perf_counter()
        if progress:
            progress("build C")
        try:
            compiled.program = compile_c(module, imported.weights, chosen, build or BuildOptions.from_environment())
        except LlmcError:
            raise
        except Exception as error:
            raise backend_reproducer("c", error, print_ir(module)) from error
        seconds["build"] = time.perf_counter() - begin
    elif backend == "triton":
        compiled.fallback = fallback
        try:
            compiled.program = _build_triton(module, imported, build, seconds)
        except LlmcError as error:
            compiled._fall_back(error)
    return compiled


DEFAULT_AUTOTUNE_SECONDS = 60.0


def autotune_budget(autotune: bool | float | None, target: str, backend: str) -> float | None:
    """Seconds of autotuning, or None for the cost model alone. Only the C backend on the host target
    tunes: it runs what it builds. None means $LLMC_AUTOTUNE: 0/off, on, or a budget in seconds."""
    from llmc.target import HOST_ALIASES

    if backend != "c" or target not in HOST_ALIASES:
        return None
    if autotune is None:
        setting = os.environ.get("LLMC_AUTOTUNE", "on").strip().lower()
        if setting in ("0", "off", "false", "no"):
            return None
        try:
            autotune = True if setting in ("", "1", "on", "true", "yes") else float(setting)
        except ValueError:
            raise LlmcError(f"LLMC_AUTOTUNE must be on, off or a budget in seconds, not '{setting}'") from None
    if autotune is False:
        return None
    return DEFAULT_AUTOTUNE_SECONDS if autotune is True else float(autotune)


def _build_triton(module, imported, build, seconds):
    from llmc.backends.c.build import BuildOptions
    from llmc.backends.triton import compile_triton

    begin = time.perf_counter()
    try:
        program = compile_triton(module, imported.weights, (build or BuildOptions.from_environment()).cache_dir)
    except LlmcError:
        raise
    except Exception as error:
        raise backend_reproducer("triton", error, print_ir(module)) from error
    seconds["build"] = time.perf_counter() - begin
    return program


def front_passes(quantize: str | None, matmul_precision: str = "f32") -> str:
    """The graph-level passes the options ask for, ahead of the pipeline: quantization, then bf16 products."""
    if matmul_precision not in PRECISIONS:
        raise LlmcError(f"unknown matmul precision '{matmul_precision}'; choose {' or '.join(PRECISIONS)}")
    spec = f"{pass_spec(QuantFormat.parse(quantize))}," if quantize else ""
    return spec + ("matmul-precision{precision=bf16}," if matmul_precision == "bf16" else "")


def _fallback_factory(fallback, model, example_inputs, build, quantize: str | None, matmul_precision: str = "f32"):
    if fallback == "eager":
        def run_eager(*args, **kwargs):
            with torch.no_grad():
                return model(*args, **kwargs)

        return lambda: run_eager
    if fallback == "c":
        # the same graph on the CPU: quantized as asked
        return lambda: compile(model, example_inputs, target="cpu", build=build, emit=lambda *_: None, quantize=quantize,
                                   matmul_precision=matmul_precision)
    return None

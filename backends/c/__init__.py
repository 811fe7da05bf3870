"""The SIMD C backend: tile IR → one C translation unit → a shared library loaded in-process."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from llmc.backends.c.build import BuildOptions, BuildResult, build_library
from llmc.backends.c.module import CSource, render_module
from llmc.backends.c.probe import bf16_products_on_matrix_unit
from llmc.backends.c.runtime import CLibrary
from llmc.errors import BuildError
from llmc.target import Target


@dataclass
class CProgram:
    """A compiled graph: its C source, the built library and a loaded context."""

    source: CSource
    build: BuildResult
    library: CLibrary

    def write(self, directory: Path) -> list[Path]:
        """Copy the generated source and the library into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        source, library = directory / "kernels.c", directory / "kernels.so"
        source.write_text(self.source.text)
        shutil.copyfile(self.build.library, library)
        return [source, library]


def compile_c(module: ModuleOp, weights: Mapping[str, np.ndarray], target: Target, options: BuildOptions) -> CProgram:
    source = render_c(module, target, options)
    return load_c(source, build_library(source.text, options), weights, options)


def render_c(module: ModuleOp, target: Target, options: BuildOptions) -> CSource:
    """The C translation unit of a tiled module (what `build_library` compiles)."""
    if target.kind != "cpu":
        raise BuildError(f"the C backend builds for CPU targets; {target.name} is a {target.kind}")
    return render_module(module, lanes=target.lanes, bf16_dot=bf16_products_on_matrix_unit(options, target.lanes))


def load_c(source: CSource, built: BuildResult, weights: Mapping[str, np.ndarray], options: BuildOptions) -> CProgram:
    """The built library loaded with its weights."""
    try:
        library = CLibrary(built.library, source, weights)
    except BuildError:
        # A library that passed its checksum but will not load (e.g. a foreign build): rebuild once.
        built = build_library(source.text, options, force=True)
        library = CLibrary(built.library, source, weights)
    return CProgram(source, built, library)

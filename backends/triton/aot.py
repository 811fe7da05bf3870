"""Compile the generated Triton kernels for a GPU architecture without a GPU (ahead of time).

Triton lowers a kernel to PTX and cubin on any machine; what needs the device
is loading and running it. This is how llmc checks, on a CPU-only machine,
that every generated kernel is valid Triton for a real GPU (the interpreter
accepts things the compiler does not), and what the GPU compiler made of it:
registers, local (spill) memory and shared memory from the cubin, and which
instructions the kernel uses (wgmma or mma.sync tensor-core ops, cp.async /
TMA copies). Pointer arguments are compiled as 16-byte aligned, which is what
a launch specialises them to (torch allocations are, and `plan-memory` aligns
arena buffers to 64 bytes); without that Triton cannot vectorise a load into
an asynchronous copy and does not pipeline the loop.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp, bf16, f16, f32, i1, i8, i32, i64

from llmc.backends.triton import import_generated, render_triton
from llmc.backends.triton.render import launch_options, python_name
from llmc.dialects import tile
from llmc.errors import BuildError

POINTER_TYPES = {f32: "*fp32", bf16: "*bf16", f16: "*fp16", i1: "*i1", i64: "*i64", i32: "*i32", i8: "*i8"}
FEATURES = {"wgmma": "wgmma.mma_async", "mma.sync": "mma.sync", "cp.async": "cp.async.ca",
            "cp.async.cg": "cp.async.cg", "tma": "cp.async.bulk.tensor"}


@dataclass
class KernelBinary:
    name: str
    options: dict[str, int]
    registers: int
    local_bytes: int  # per-thread local memory: register spills
    shared_bytes: int
    instructions: dict[str, int]  # feature name -> count in the PTX

    def format(self) -> str:
        used = ", ".join(f"{k} x{v}" for k, v in self.instructions.items() if v) or "no tensor-core or async-copy ops"
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        return (f"{self.name:<28} {opts:<26} {self.registers:>4} regs  {self.local_bytes:>5} B local  "
                f"{self.shared_bytes // 1024:>4} KB shared  {used}")


def compile_for_gpu(module: ModuleOp, arch: int = 90) -> list[KernelBinary]:
    """Every tile.kernel of a final tile-IR module compiled for `sm_<arch>`, with ptxas's figures."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise BuildError("ahead-of-time compilation needs Triton's compiler; unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source, _ = render_triton(module)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "llmc_aot_kernels.py"
        path.write_text(source)
        generated = import_generated(path, "llmc_aot_kernels")
        binaries = []
        for kernel in (op for op in module.ops if isinstance(op, tile.KernelOp)):
            name = kernel.sym_name.data
            args = kernel.body.block.args
            signature = {f"arg{i}": POINTER_TYPES[a.type.element_type] for i, a in enumerate(args)}
            signature["status"] = "*i32"
            aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(args) + 1)}
            options = launch_options(kernel)
            try:
                compiled = triton.compile(ASTSource(getattr(generated, python_name(name)), signature, {}, aligned),
                                          target=GPUTarget("cuda", arch, 32), options=dict(options))
            except Exception as error:  # the compiler's message is the useful part
                raise BuildError(f"Triton kernel @{name} does not compile for sm_{arch}: {error}") from error
            registers, local, static_shared = resource_usage(compiled.asm["cubin"], folder)
            counts = {feature: compiled.asm["ptx"].count(text) for feature, text in FEATURES.items()}
            binaries.append(KernelBinary(name, options, registers, local, static_shared + compiled.metadata.shared,
                                         counts))
    return binaries


def resource_usage(cubin: bytes, folder: str) -> tuple[int, int, int]:
    """(registers per thread, local-memory bytes (spills), static shared bytes), from `cuobjdump -res-usage`."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = Path(folder) / "kernel.cubin"
    path.write_bytes(cubin)
    report = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", report))
    return int(fields.get("REG", -1)), int(fields.get("LOCAL", 0)), int(fields.get("SHARED", 0))

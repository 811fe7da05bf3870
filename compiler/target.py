"""Target descriptions: the machine facts the cost model and the tile pass use.

Numbers are nominal figures for the class of machine; a measured probe can
replace peak compute and bandwidth (the SIMD C backend measures its host).
`cpu` (alias `c`, `native`) means this host, like -march=native: the widest
vector ISA its CPU reports and its own core count.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from dataclasses import dataclass, replace
from functools import lru_cache

from llmc.errors import PassOptionError


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "cpu" or "gpu"
    peak_gflops: float  # fp32 FMA throughput, all cores
    bandwidth_gbs: float  # main memory (DRAM or HBM)
    cores: int  # CPU cores, or GPU SMs
    vector_bytes: int  # SIMD register width; for GPUs the widest vectorised access
    vector_registers: int
    l1_bytes: int
    l2_bytes: int
    scratch_bytes: int  # shared memory per SM on GPUs; L2 share per core on CPUs
    default_stages: int
    llc_bytes: int = 32 * 1024 * 1024  # last-level cache, all cores

    @property
    def lanes(self) -> int:
        """float32 lanes of a vector register (1 for scalar code)."""
        return max(1, self.vector_bytes // 4)

    @property
    def micro_rows(self) -> int:
        """Rows of the C micro-kernel; a CPU matmul's row tile is a whole number of them."""
        return micro_rows(self.lanes)


def micro_rows(lanes: int) -> int:
    """LLMC_MR in runtime.h: 8 with 32 vector registers (AVX-512), else 6 (12 accumulators, 2 B vectors and
    a broadcast in 16)."""
    return 8 if lanes >= 16 else 6


TARGETS = {
    "cpu-avx2": Target("cpu-avx2", "cpu", 2 * 2 * 2 * 8 * 3.0, 20.0, 2, 32, 16, 32 * 1024, 1024 * 1024, 512 * 1024, 2),
    "cpu-avx512": Target("cpu-avx512", "cpu", 16 * 2 * 2 * 16 * 2.5, 100.0, 16, 64, 32, 48 * 1024, 2 * 1024 * 1024, 1024 * 1024, 2),
    "cpu-neon": Target("cpu-neon", "cpu", 4 * 2 * 2 * 4 * 3.0, 30.0, 4, 16, 32, 64 * 1024, 1024 * 1024, 512 * 1024, 2),
    "cpu-scalar": Target("cpu-scalar", "cpu", 2 * 2 * 3.0, 20.0, 2, 4, 16, 32 * 1024, 1024 * 1024, 512 * 1024, 2),
    "cuda-h100": Target("cuda-h100", "gpu", 67000.0, 3350.0, 132, 16, 255, 256 * 1024, 50 * 1024 * 1024, 228 * 1024, 3),
}
ALIASES = {"gpu": "cuda-h100", "cuda": "cuda-h100", "triton": "cuda-h100"}
HOST_ALIASES = ("cpu", "c", "native")


@lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (the machine type where it does not)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


@lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset[str]:
    """The feature flags /proc/cpuinfo lists for this CPU (empty where it lists none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_key() -> str:
    """This machine as cached measurements must tell it apart: the CPU model and its feature flags."""
    return f"{host_cpu_name()} {' '.join(sorted(host_cpu_flags()))}"


def host_has_vnni(lanes: int) -> bool:
    """Whether a -march=native build at this vector width has integer dot products (vpdpbusd)."""
    flags = host_cpu_flags()
    return (lanes == 16 and {"avx512f", "avx512_vnni"} <= flags) or (lanes == 8 and "avx_vnni" in flags)


def host_has_integer_dot(lanes: int) -> bool:
    """Whether this host multiplies int8 vectors into int32 sums at `lanes`: vpdpbusd (VNNI), or on AVX2
    vpmaddubsw with vpmaddwd (quant.h)."""
    return host_has_vnni(lanes) or (lanes == 8 and "avx2" in host_cpu_flags())


def host_has_amx_int8(lanes: int) -> bool:
    """Whether a -march=native build at this vector width has AMX int8 tiles (and vpdpbusd, their fallback
    where the kernel refuses the tile state)."""
    return host_has_vnni(lanes) and lanes == 16 and {"amx_tile", "amx_int8"} <= host_cpu_flags()


def host_has_bf16_dot(lanes: int) -> bool:
    """Whether a -march=native build at this vector width has bf16 dot products (vdpbf16ps)."""
    return lanes == 16 and {"avx512f", "avx512_bf16"} <= host_cpu_flags()


def host_has_amx_bf16(lanes: int) -> bool:
    """Whether a -march=native build at this vector width has AMX bf16 tiles (and vdpbf16ps, their fallback
    where the kernel refuses the tile state). Whether vdpbf16ps alone pays is measured by the probe
    (llmc.backends.c.probe.bf16_products_on_matrix_unit)."""
    return host_has_bf16_dot(lanes) and {"amx_tile", "amx_bf16"} <= host_cpu_flags()


@lru_cache(maxsize=4)
def host_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict[int, int]:
    """Bytes of CPU 0's data (or unified) cache at each level the kernel reports: {1: L1d, 2: L2, 3: L3};
    empty where it reports none."""
    sizes: dict[int, int] = {}
    for index in Path(root).glob("index*"):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text().strip())
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": 1024 * 1024, "G": 1024**3}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if kind != "Instruction" and digits.isdigit():
            sizes[level] = int(digits) * scale
    return sizes


def host_cpu_target() -> Target:
    """The CPU target matching this machine's vector ISA, with its usable core count."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        base = TARGETS["cpu-neon"]
    else:
        try:
            with open("/proc/cpuinfo") as info:
                flags = set(next(line for line in info if line.startswith("flags")).split())
        except (OSError, StopIteration):
            flags = set()
        name = "cpu-avx512" if "avx512f" in flags else "cpu-avx2" if {"avx2", "fma"} <= flags else "cpu-scalar"
        base = TARGETS[name]
    cores = len(os.sched_getaffinity(0))
    caches = host_caches()
    l2 = caches.get(2, base.l2_bytes)
    # nominal per-core throughput and bandwidth share, scaled to the cores this process may use; the
    # caches as the host reports them (the scratch budget is half of L2, as on every nominal target)
    return replace(
        base,
        cores=cores,
        l1_bytes=caches.get(1, base.l1_bytes),
        l2_bytes=l2,
        scratch_bytes=l2 // 2,
        llc_bytes=max(caches.values(), default=base.llc_bytes),
        peak_gflops=base.peak_gflops / base.cores * cores,
        bandwidth_gbs=base.bandwidth_gbs * min(1.0, max(cores, 4) / base.cores),
    )


def get_target(name: str) -> Target:
    if name in HOST_ALIASES:
        return host_cpu_target()
    key = ALIASES.get(name, name)
    if key not in TARGETS:
        known = ", ".join(sorted([*TARGETS, *ALIASES, *HOST_ALIASES]))
        raise PassOptionError(f"unknown target '{name}'; known targets: {known}")
    return TARGETS[key]

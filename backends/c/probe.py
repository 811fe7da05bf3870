"""Measure this machine's peak FMA throughput, bf16 and int8 matrix-unit throughput and memory bandwidth
once, and cache them.

The figures are the yardsticks `llmc bench` reports achieved GFLOP/s and GB/s
against. The probe is C built with the same compiler and flags as the kernels:
independent FMA chains on every core, and a STREAM-style copy over arrays far
larger than the last-level cache.
"""

from __future__ import annotations

import ctypes
import json
from datetime import datetime, timezone
from dataclasses import asdict, dataclass

import numpy as np

from llmc.backends.c.build import BuildOptions, build_library, cache_key, compiler_identity, find_compiler
from llmc.backends.c.build import atomic_write
from llmc.errors import BuildError
from llmc.target import (host_cpu_flags, host_cpu_target, host_has_amx_bf16, host_has_bf16_dot, host_has_vnni,
                          host_key)

# the flags code generation can use, as /proc/cpuinfo spells them (asimd: NEON on AArch64)
ISA_FEATURES = frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                          "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve"})

PROBE_SOURCE = r"""
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#define W %(lanes)d
typedef float vf __attribute__((vector_size(W * 4)));

/* FLOP per second: 12 independent accumulator chains per thread hide FMA latency. */
double llmc_probe_fma(long iterations) {
    double begin = omp_get_wtime();
    float sink = 0.0f;
    #pragma omp parallel reduction(+ : sink)
    {
        volatile float scale = 1.0000001f, shift = 0.9999999f; /* opaque to the optimiser */
        vf acc[12], x = (vf){0} + scale, y = (vf){0} + shift;
        for (int i = 0; i < 12; i++) acc[i] = (vf){0} + (float)i;
        for (long it = 0; it < iterations; it++) {
            #pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = acc[i] * x + y;
        }
        for (int i = 0; i < 12; i++) for (int j = 0; j < W; j++) sink += acc[i][j];
    }
    double seconds = omp_get_wtime() - begin;
    return sink == 12345.0f ? 0.0 : 2.0 * 12 * W * iterations * omp_get_max_threads() / seconds;
}

/* Bytes per second of a parallel copy (read + write counted, as STREAM does). */
double llmc_probe_copy(long floats, int repeats) {
    float *a = aligned_alloc(64, floats * sizeof(float)), *b = aligned_alloc(64, floats * sizeof(float));
    if (!a || !b) return 0.0;
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < floats; i++) { a[i] = 1.0f; b[i] = 0.0f; }
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double begin = omp_get_wtime();
        #pragma omp parallel for schedule(static)
        for (long i = 0; i < floats; i++) b[i] = a[i];
        double t = omp_get_wtime() - begin;
        if (t < best) best = t;
    }
    free(a);
    free(b);
    return 2.0 * floats * sizeof(float) / best;
}

/* Seconds of one parallel copy of `floats` floats from a to b, buffers the caller keeps: the bench times it
 * between a kernel's runs, so that both see the same minutes of a shared host (RotationProbe). */
double llmc_probe_copy_pass(const float *a, float *b, long floats) {
    double begin = omp_get_wtime();
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < floats; i++) b[i] = a[i];
    return omp_get_wtime() - begin;
}

/* Bytes per second of a copy that stays in a cache level: each thread copies its own share back and
 * forth `repeats` times inside one parallel region (no fork/join per pass, which would dominate). */
double llmc_probe_copy_resident(long floats, int repeats) {
    float *a = aligned_alloc(64, floats * sizeof(float)), *b = aligned_alloc(64, floats * sizeof(float));
    if (!a || !b) return 0.0;
    double seconds = 0.0;
    #pragma omp parallel reduction(max : seconds)
    {
        long share = floats / omp_get_num_threads();
        float *x = a + omp_get_thread_num() * share, *y = b + omp_get_thread_num() * share;
        for (long i = 0; i < share; i++) { x[i] = 1.0f; y[i] = 0.0f; }
        for (int r = 0; r < 8; r++) for (long i = 0; i < share; i++) y[i] = x[i];  /* warm */
        #pragma omp barrier
        double begin = omp_get_wtime();
        for (int r = 0; r < repeats; r++) {
            float *from = r & 1 ? y : x, *to = r & 1 ? x : y;
            for (long i = 0; i < share; i++) to[i] = from[i] + 0.0f;
            __asm__ volatile("" : : "r"(to) : "memory");
        }
        seconds = omp_get_wtime() - begin;
    }
    free(a);
    free(b);
    return 2.0 * floats * sizeof(float) * repeats / seconds;
}

/* Bytes per second of a parallel read: each thread sums its share as 8 interleaved streams,
 * prefetched ahead, as a memory-bound matrix-vector product reads weights (one stream per core
 * keeps too few lines in flight to reach the memory's bandwidth). Nothing is written. */
double llmc_probe_read(long floats, int repeats) {
    long vectors = floats / W;
    vf *a = aligned_alloc(64, vectors * sizeof(vf));
    if (!a) return 0.0;
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < vectors; i++) a[i] = (vf){0} + 1.0f;
    double best = 1e30;
    float sink = 0.0f;
    for (int r = 0; r < repeats; r++) {
        double begin = omp_get_wtime();
        #pragma omp parallel reduction(+ : sink)
        {
            long share = vectors / omp_get_num_threads(), part = share / 8;
            const vf *base = a + omp_get_thread_num() * share;
            vf acc[8];
            for (int k = 0; k < 8; k++) acc[k] = (vf){0};
            for (long i = 0; i < part; i++) {
                #pragma GCC unroll 8
                for (int k = 0; k < 8; k++) {
                    __builtin_prefetch(base + k * part + i + 48);
                    acc[k] += base[k * part + i];
                }
            }
            for (int k = 0; k < 8; k++) for (int j = 0; j < W; j++) sink += acc[k][j];
        }
        double t = omp_get_wtime() - begin;
        if (t < best) best = t;
    }
    free(a);
    long read = vectors / omp_get_max_threads() / 8 * 8 * omp_get_max_threads();
    return sink == 1.5f ? 0.0 : (double)read * sizeof(vf) / best;
}
"""


# bf16 products: built only where the CPU has AVX512_BF16 (the AMX loop only where -march=native gives AMX)
BF16_PROBE_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

/* FLOP per second of vdpbf16ps: 12 independent chains per thread, 64 FLOP each (16 lanes x 2 pairs x 2). */
double llmc_probe_dpbf16(long iterations) {
    double begin = omp_get_wtime();
    float sink = 0.0f;
    #pragma omp parallel reduction(+ : sink)
    {
        volatile float scale = 1.0f;
        __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(scale), _mm512_set1_ps(scale));
        __m512 acc[12];
        for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
        for (long it = 0; it < iterations; it++) {
            #pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
        }
        for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(acc[i]);
    }
    double seconds = omp_get_wtime() - begin;
    return sink == 12345.0f ? 0.0 : 64.0 * 12 * iterations * omp_get_max_threads() / seconds;
}

"""

# The AMX probe loop, for either unit: one tile instruction on four accumulator tiles per thread.
# %(guard)s: the ISA macro; %(name)s, %(instruction)s, %(out)s: the function, the tile product and its result
# type; %(ops)s: operations per instruction. 0 where the kernel refuses the tile state.
AMX_PROBE_LOOP = r"""
#ifdef %(guard)s
#include <sys/syscall.h>
#include <unistd.h>
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) probe_tiles;
static const probe_tiles tiles = {.palette = 1, .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
                                  .rows = {16, 16, 16, 16, 16, 16, 16, 16}};

double %(name)s(long iterations) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) return 0.0;
    double begin = omp_get_wtime();
    double sink = 0.0;
    #pragma omp parallel reduction(+ : sink)
    {
        %(out)s out[256] __attribute__((aligned(64)));
        _tile_loadconfig(&tiles);
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
        for (long it = 0; it < iterations; it++) {
            %(instruction)s(0, 4, 6);
            %(instruction)s(1, 4, 7);
            %(instruction)s(2, 5, 6);
            %(instruction)s(3, 5, 7);
        }
        _tile_stored(0, out, 64);
        _tile_release();
        sink += out[0];
    }
    double seconds = omp_get_wtime() - begin;
    return sink == 12345.0 ? 0.0 : 4.0 * %(ops)s * iterations * omp_get_max_threads() / seconds;
}
#else
double %(name)s(long iterations) { return 0.0 * iterations; }
#endif
"""
BF16_PROBE_SOURCE += AMX_PROBE_LOOP % {"guard": "__AMX_BF16__", "name": "llmc_probe_amx",  # 16x16x32 products
                                      "instruction": "_tile_dpbf16ps", "out": "float", "ops": 16384}


# int8 products: built only where the CPU has integer dot products (the AMX loop only where -march=native
# gives AMX int8)
INT8_PROBE_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

/* Integer operations per second of vpdpbusd: 12 independent chains per thread, 4 multiply-adds a lane. */
double llmc_probe_dpbusd(long iterations) {
    double begin = omp_get_wtime();
    unsigned sink = 0; /* unsigned: the sums wrap, they are only kept alive */
    #pragma omp parallel reduction(+ : sink)
    {
        volatile int seed = 0x01010101;
#if defined(__AVX512VNNI__)
        __m512i x = _mm512_set1_epi32(seed), acc[12];
        for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_epi32(i);
        for (long it = 0; it < iterations; it++) {
            #pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], x, x);
        }
        /* one lane each, as below: a reduction's signed adds overflow on long runs */
        for (int i = 0; i < 12; i++) sink += (unsigned)_mm_cvtsi128_si32(_mm512_castsi512_si128(acc[i]));
#define LANES 16
#else
        __m256i x = _mm256_set1_epi32(seed), acc[12];
        for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_epi32(i);
        for (long it = 0; it < iterations; it++) {
            #pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], x, x);
        }
        for (int i = 0; i < 12; i++) sink += (unsigned)_mm256_extract_epi32(acc[i], 0);
#define LANES 8
#endif
    }
    double seconds = omp_get_wtime() - begin;
    return sink == 12345 ? 0.0 : 8.0 * LANES * 12 * iterations * omp_get_max_threads() / seconds;
}

"""
INT8_PROBE_SOURCE += AMX_PROBE_LOOP % {"guard": "__AMX_INT8__", "name": "llmc_probe_amx_int8",  # 16x16x64 products
                                      "instruction": "_tile_dpbssd", "out": "int32_t", "ops": 32768}


@dataclass(frozen=True)
class MachinePeak:
    gflops: float  # fp32 FMA throughput, all cores
    bandwidth_gbs: float  # main-memory copy bandwidth, all cores
    threads: int
    measured_at: str = ""  # UTC, "2026-11-22 14:05": a probe taken under load reads low; say when it ran
    l2_gbs: float = 0.0  # copy bandwidth with each core's share resident in its L2
    llc_gbs: float = 0.0  # copy bandwidth with the data resident in the last-level cache
    features: tuple[str, ...] = ()  # the ISA features code generation uses, from the CPU's flags
    bf16_gflops: float = 0.0  # bf16 products on the matrix unit llmc would use (bf16_unit), all cores
    bf16_unit: str = ""  # "AMX" (tdpbf16ps), "vdpbf16ps", or "" where the CPU has neither
    int8_gops: float = 0.0  # int8 products (integer operations per second) on AMX tiles or vpdpbusd, all cores
    int8_unit: str = ""  # "AMX" (tdpbssd), "vpdpbusd", or "" where the CPU has neither


def _fastest_unit(source: str, probes: tuple, options: BuildOptions) -> tuple[float, str]:
    """The first of `probes` ((function, unit, iterations), the preferred unit first) that measures above 0,
    in G operations/s; (0, "") when none does, or when the probe does not build: flags without
    -march=native (say -O2 alone) give the compiler none of these instructions, so no build with them has
    the unit."""
    try:
        lib = ctypes.CDLL(str(build_library(source, options).library))
    except BuildError:
        return 0.0, ""
    for name, unit, iterations in probes:
        probe = getattr(lib, name)
        probe.restype, probe.argtypes = ctypes.c_double, [ctypes.c_long]
        probe(iterations // 10)
        rate = max(probe(iterations) for _ in range(3)) / 1e9
        if rate > 0:
            return round(rate, 1), unit
    return 0.0, ""


def measure_bf16(options: BuildOptions, lanes: int) -> tuple[float, str]:
    """GFLOP/s of bf16 products on AMX tiles, else with vdpbf16ps; (0, "") on CPUs without AVX512_BF16."""
    if not host_has_bf16_dot(lanes):
        return 0.0, ""
    return _fastest_unit(BF16_PROBE_SOURCE, (("llmc_probe_amx", "AMX", 2_000_000),
                                             ("llmc_probe_dpbf16", "vdpbf16ps", 20_000_000)), options)


def measure_int8(options: BuildOptions, lanes: int) -> tuple[float, str]:
    """G operations/s of int8 products on AMX tiles, else with vpdpbusd; (0, "") on CPUs without them."""
    if not host_has_vnni(lanes):
        return 0.0, ""
    return _fastest_unit(INT8_PROBE_SOURCE, (("llmc_probe_amx_int8", "AMX", 2_000_000),
                                             ("llmc_probe_dpbusd", "vpdpbusd", 20_000_000)), options)


# PROBE_SOURCE's functions: (argument types), each returning a double
PROBE_SIGNATURES = {
    "llmc_probe_fma": (ctypes.c_long,),
    "llmc_probe_copy": (ctypes.c_long, ctypes.c_int),
    "llmc_probe_copy_pass": (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long),
    "llmc_probe_copy_resident": (ctypes.c_long, ctypes.c_int),
    "llmc_probe_read": (ctypes.c_long, ctypes.c_int),
}


def probe_library(options: BuildOptions, lanes: int) -> ctypes.CDLL:
    """PROBE_SOURCE built with the kernels' compiler and flags (cached), its functions' signatures declared."""
    lib = ctypes.CDLL(str(build_library(PROBE_SOURCE % {"lanes": lanes}, options).library))
    for name, arguments in PROBE_SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = ctypes.c_double, list(arguments)
    return lib


def measure(options: BuildOptions, lanes: int) -> MachinePeak:
    lib = probe_library(options, lanes)
    lib.llmc_probe_fma(2_000_000)  # warm up the cores' clocks
    gflops = max(lib.llmc_probe_fma(20_000_000) for _ in range(3)) / 1e9
    bandwidth = lib.llmc_probe_copy(64 * 1024 * 1024, 5) / 1e9
    target = host_cpu_target()
    # two arrays filling half of each level: each core's share of L2, or the whole LLC
    l2 = max(lib.llmc_probe_copy_resident(target.l2_bytes // 4 // 4 * target.cores, 2000) for _ in range(3)) / 1e9
    llc = max(lib.llmc_probe_copy_resident(target.llc_bytes // 4 // 4, 40) for _ in range(3)) / 1e9
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return MachinePeak(round(gflops, 1), round(bandwidth, 1), target.cores, when, round(l2, 1), round(llc, 1),
                       tuple(sorted(host_cpu_flags() & ISA_FEATURES)), *measure_bf16(options, lanes),
                       *measure_int8(options, lanes))


class RotationProbe:
    """The copy and FMA probes, one short pass each, to be timed between a kernel's runs: on a shared host the
    copy bandwidth moved by a third within an hour, so a kernel is set against the ceilings of the same rounds
    rather than against a probe taken minutes before (llmc.bench)."""

    def __init__(self, options: BuildOptions, lanes: int, llc_bytes: int):
        self.lib = probe_library(options, lanes)
        floats = max(2 * llc_bytes, 64 << 20) // 4  # each array twice the LLC: a copy from memory to memory
        self.source, self.target = np.ones(floats, np.float32), np.zeros(floats, np.float32)
        self.copy_gbs()  # first touch of the target's pages

    def copy_gbs(self) -> float:
        seconds = self.lib.llmc_probe_copy_pass(self.source.ctypes.data, self.target.ctypes.data, self.source.size)
        return 2 * self.source.nbytes / seconds / 1e9

    def fma_gflops(self) -> float:
        return self.lib.llmc_probe_fma(2_000_000) / 1e9  # a few milliseconds


def read_bandwidth(options: BuildOptions, lanes: int, llc_bytes: int) -> float:
    """GB/s of a parallel read over 4x the last-level cache (at least 256 MB): main-memory reads,
    the yardstick of a memory-bound decode step. Measured each time (about a second)."""
    floats = max(4 * llc_bytes, 256 * 1024 * 1024) // 4
    return round(probe_library(options, lanes).llmc_probe_read(floats, 5) / 1e9, 1)


def machine_peak(options: BuildOptions, lanes: int, remeasure: bool = False) -> MachinePeak:
    """Cached per host, compiler and flags; measured (a few seconds) the first time."""
    identity = compiler_identity(find_compiler(options.compiler))
    # the host is part of the key: a cache folder may outlive the machine (or be shared by several)
    key = cache_key(f"probe-v6-{lanes}-{host_cpu_target().cores}-{host_key()}", identity, options.flags)
    path = options.cache_dir / f"probe-{key[:24]}.json"
    if not remeasure:
        try:
            fields = json.loads(path.read_text())
            return MachinePeak(**{**fields, "features": tuple(fields.get("features", ()))})
        except (OSError, ValueError, TypeError):
            pass
    peak = measure(options, lanes)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(peak)).encode())
    return peak


def bf16_products_on_matrix_unit(options: BuildOptions, lanes: int) -> bool:
    """Whether bf16 weights of prefill-sized products are packed for the matrix unit (matrix.h): on AMX hosts
    always; with vdpbf16ps alone only where the probe measured it 15% above the f32 FMA peak (on a Sapphire
    Rapids core it ran at half of it)."""
    if host_has_amx_bf16(lanes):
        return True
    if not host_has_bf16_dot(lanes):
        return False
    peak = machine_peak(options, lanes)
    return peak.bf16_unit == "vdpbf16ps" and peak.bf16_gflops > 1.15 * peak.gflops

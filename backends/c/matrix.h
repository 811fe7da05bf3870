/* llmc SIMD C runtime, bf16 matrix products (included after half.h when a bf16 weight of a
 * prefill-sized product was packed for them).
 *
 * The weight is packed at compile time in pairs of k: panel p of 32 columns holds, for each k pair
 * kk, the 64 values b[2kk][n], b[2kk+1][n] for n = 0..31 interleaved (element (k, n) at
 * p * ps + (k / 2) * 64 + n * 2 + k % 2), with K padded to a multiple of 32. That is both the B
 * tile layout of AMX's tdpbf16ps (16 rows of k pairs x 16 columns, 64 bytes a row) and the
 * operand of AVX512_BF16's vdpbf16ps (a vector of 16 column pairs). The activations are rounded
 * to bf16 once per call (to nearest even), into a per-thread row-major copy; the products
 * accumulate in f32.
 *
 * AMX tiles run where the kernel grants the process their state (arch_prctl(ARCH_REQ_XCOMP_PERM),
 * asked once); otherwise, in builds without AMX and with -DLLMC_NO_AMX, the vdpbf16ps micro-kernel runs. */
#ifndef __AVX512BF16__
#error "llmc: these weights were packed for bf16 dot products (AVX512_BF16 / AMX); build with -march=native on the compiling host"
#endif
#include <immintrin.h>

#define LLMC_PAIR_K 32 /* k per AMX tile (16 pairs); K is padded to a multiple of it */

/* The lhs rows rounded to bf16: a row-major copy of rows_padded x K_padded, zero outside M x K. */
static uint16_t *llmc_bf16_rows(llmc_tile a, long M, long K, long rows_padded, long k_padded) {
    static __thread void *rows;
    static __thread size_t capacity;
    uint16_t *buffer = llmc_thread_buffer(&rows, &capacity, (size_t)(rows_padded * k_padded) * sizeof *buffer);
    for (long m = 0; m < rows_padded; m++) {
        uint16_t *row = buffer + m * k_padded;
        if (m >= M) {
            memset(row, 0, (size_t)k_padded * sizeof *row);
            continue;
        }
        const float *src = a.p + m * a.ld;
        long k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
            _mm512_storeu_si512(row + k, (__m512i)pair);
        }
        for (; k < k_padded; k++) row[k] = k < K ? (uint16_t)llmc_bf16_bits(vsplat(src[k]))[0] : 0;
    }
    return buffer;
}

/* vdpbf16ps: c[MR x 32] (+)= a[MR x 2*pairs] * one panel, the accumulators in registers over all k pairs. */
#define LLMC_PAIRS_UKERNEL(MR)                                                                                  \
    static inline void llmc_pairs_rows_##MR(long pairs, const uint16_t *a, long lda, const uint16_t *b, float *c, \
                                            long ldc, int accumulate) {                                         \
        __m512 acc0[MR], acc1[MR];                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                                                 \
            acc0[i] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();                          \
            acc1[i] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();                     \
        }                                                                                                       \
        for (long kk = 0; kk < pairs; kk++) {                                                                   \
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kk * 64);                                            \
            __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kk * 64 + 32);                                       \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                                             \
                uint32_t both; /* a k pair of one row: one 32-bit lane */                                       \
                memcpy(&both, a + i * lda + 2 * kk, sizeof both);                                               \
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)both);                                           \
                acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);                                                    \
                acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);                                                    \
            }                                                                                                   \
        }                                                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                                                 \
            _mm512_storeu_ps(c + i * ldc, acc0[i]);                                                             \
            _mm512_storeu_ps(c + i * ldc + 16, acc1[i]);                                                        \
        }                                                                                                       \
    }
LLMC_PAIRS_UKERNEL(1)
LLMC_PAIRS_UKERNEL(2)
LLMC_PAIRS_UKERNEL(3)
LLMC_PAIRS_UKERNEL(4)
LLMC_PAIRS_UKERNEL(5)
LLMC_PAIRS_UKERNEL(6)
LLMC_PAIRS_UKERNEL(7)
LLMC_PAIRS_UKERNEL(8)

/* a: the rows in bf16 (row step lda, k_padded of them read, zero past K); N a multiple of 32. */
static void llmc_pairs_dpbf16(long M, long N, long k_padded, const uint16_t *a, long lda, const uint16_t *b,
                              long ps, llmc_tile c, int accumulate) {
    long pairs = k_padded / 2;
    for (long n = 0; n < N; n += 32) {
        const uint16_t *panel = b + (n / 32) * ps;
        long m = 0;
        for (; m + 8 <= M; m += 8)
            llmc_pairs_rows_8(pairs, a + m * lda, lda, panel, c.p + m * c.ld + n, c.ld, accumulate);
        const uint16_t *am = a + m * lda;
        float *cm = c.p + m * c.ld + n;
        switch (M - m) {
        case 7: llmc_pairs_rows_7(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 6: llmc_pairs_rows_6(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 5: llmc_pairs_rows_5(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 4: llmc_pairs_rows_4(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 3: llmc_pairs_rows_3(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 2: llmc_pairs_rows_2(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        case 1: llmc_pairs_rows_1(pairs, am, lda, panel, cm, c.ld, accumulate); break;
        default: break;
        }
    }
}

#if defined(__AMX_BF16__) && defined(LLMC_AMX)
/* Every tile 16 rows x 64 bytes: tmm0-3 the 2x2 f32 accumulators of a 32x32 block, tmm4-5 two 16-row
 * strips of A (32 bf16 of k each), tmm6-7 two 16-column strips of B (16 k pairs each). */
static const llmc_amx_config llmc_amx_tiles = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* A 32x32 block of c (+)= a[32 x k_padded] (row step lda) * panel, accumulators in tmm0-3. */
static inline void llmc_amx_block(long k_padded, const uint16_t *a, long lda, const uint16_t *panel, float *c,
                                  long ldc, int load) {
    long stride = ldc * (long)sizeof(float);
    if (load) {
        _tile_loadd(0, c, stride);
        _tile_loadd(1, c + 16, stride);
        _tile_loadd(2, c + 16 * ldc, stride);
        _tile_loadd(3, c + 16 * ldc + 16, stride);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (long k = 0; k < k_padded; k += LLMC_PAIR_K) {
        _tile_loadd(4, a + k, lda * 2);
        _tile_loadd(5, a + 16 * lda + k, lda * 2);
        _tile_loadd(6, panel + k * 32, 128);
        _tile_loadd(7, panel + k * 32 + 32, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, stride);
    _tile_stored(1, c + 16, stride);
    _tile_stored(2, c + 16 * ldc, stride);
    _tile_stored(3, c + 16 * ldc + 16, stride);
}

/* Whole 32-row blocks on AMX tiles; the rows after the last whole block (a holds zeros up to a whole
 * block) through a 32x32 staging tile. */
static void llmc_pairs_amx(long M, long N, long k_padded, const uint16_t *a, long lda, const uint16_t *b, long ps,
                           llmc_tile c, int accumulate) {
    _tile_loadconfig(&llmc_amx_tiles);
    float staged[32 * 32] __attribute__((aligned(64)));
    for (long n = 0; n < N; n += 32) {
        const uint16_t *panel = b + (n / 32) * ps;
        long m = 0;
        for (; m + 32 <= M; m += 32)
            llmc_amx_block(k_padded, a + m * lda, lda, panel, c.p + m * c.ld + n, c.ld, accumulate);
        if (m < M) {
            long rows = M - m;
            memset(staged, 0, sizeof staged);
            if (accumulate)
                for (long r = 0; r < rows; r++) memcpy(staged + r * 32, c.p + (m + r) * c.ld + n, 32 * sizeof(float));
            llmc_amx_block(k_padded, a + m * lda, lda, panel, staged, 32, 1);
            for (long r = 0; r < rows; r++) memcpy(c.p + (m + r) * c.ld + n, staged + r * 32, 32 * sizeof(float));
        }
    }
    _tile_release();
}
#endif

/* acc[M x N] (+)= a[M x K] * b[K x N]: a in bf16 (row step lda; zeros past K up to whole 32s of k and,
 * for AMX, past M up to whole blocks of 32 rows), b packed in pairs, N a multiple of 32. */
static void llmc_dot_pairs_bits(long M, long N, long K, const uint16_t *a, long lda, const uint16_t *b, long ps,
                                llmc_tile c, int accumulate) {
    long k_padded = (K + LLMC_PAIR_K - 1) / LLMC_PAIR_K * LLMC_PAIR_K;
#if defined(__AMX_BF16__) && defined(LLMC_AMX)
    if (llmc_amx_permitted()) {
        llmc_pairs_amx(M, N, k_padded, a, lda, b, ps, c, accumulate);
        return;
    }
#endif
    llmc_pairs_dpbf16(M, N, k_padded, a, lda, b, ps, c, accumulate);
}

/* The same with an f32 lhs (a value computed in the kernel): rounded to bf16 first, into a per-thread copy. */
static void llmc_dot_pairs(long M, long N, long K, llmc_tile a, const uint16_t *b, long ps, llmc_tile c,
                           int accumulate) {
    long k_padded = (K + LLMC_PAIR_K - 1) / LLMC_PAIR_K * LLMC_PAIR_K;
    const uint16_t *rows = llmc_bf16_rows(a, M, K, (M + 31) / 32 * 32, k_padded);
    llmc_dot_pairs_bits(M, N, K, rows, k_padded, b, ps, c, accumulate);
}

/* A bf16 view's block as bits into a row-major tile of `ld` columns, zero outside the view, in the columns
 * up to ld and in the rows up to rows_padded. */
static void llmc_copy_bits(uint16_t *dst, long ld, const uint16_t *base, long r0, long c0, long rows, long rows_padded,
                           long cols, long height, long width, long s0, long s1) {
    for (long r = 0; r < rows_padded; r++) {
        uint16_t *out = dst + r * ld;
        long row = r0 + r, c = 0;
        if (r < rows && row >= 0 && row < height) {
            const uint16_t *src = base + row * s0;
            if (s1 == 1 && c0 >= 0 && c0 + cols <= width) {
                memcpy(out, src + c0, (size_t)cols * sizeof *out);
                c = cols;
            } else
                for (; c < cols; c++) out[c] = c0 + c >= 0 && c0 + c < width ? src[(c0 + c) * s1] : 0;
        }
        memset(out + c, 0, (size_t)(ld - c) * sizeof *out);
    }
}

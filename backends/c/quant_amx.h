/* llmc SIMD C runtime, integer products of quantized weights (included after quant.h and amx.h when codes
 * were packed for integer dot products): llmc_qdot_act8 multiplies int8 activations with the codes.
 *
 * A product of more than 8 rows (prefill) runs on AMX int8 tiles where the build has them and the kernel
 * grants them. Per 32x32 block of the output and block of 32 k, tdpbssd multiplies two 16-row strips of
 * int8 activations with two 16-column strips of codes into four int32 tiles, which are stored and scaled
 * into the f32 output: c += (sum_k qa_k q_k - z * sum_k qa_k) * d_row * scale_column. Every block of 32 k
 * has its own activation scale, so an int32 sum never runs over more k than one block (as llama.cpp's
 * AMX kernels do for its Q8_0 activations). The int8 codes' integer-dot layout (4 k in a 32-bit lane,
 * 16 columns a vector, the panel's two vectors a row of 128 bytes) is the B tile layout with a row
 * stride of 128 bytes; int4 codes are widened into an int8 staging tile per block.
 * Elsewhere (a few rows, no AMX, the tiles refused) llmc_qdot_vnni runs them with vpdpbusd, or on AVX2
 * without VNNI with vpmaddubsw and vpmaddwd. */

#ifdef LLMC_INT_DOT
#if defined(__AMX_INT8__) && defined(LLMC_AMX) && LLMC_W == 16
#define LLMC_AMX_INT8 1
#define LLMC_AMX_ROWS 32 /* rows of activations per pass over the codes: two 16-row strips */

/* tmm0-3 the int32 sums [16 x 16] of four blocks of 32 k, tmm4-5 strips of A [16 rows x 32 k], tmm6-7
 * strips of B [8 rows of 4 k x 16 columns]. */
static const llmc_amx_config llmc_amx_int8_tiles = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 32, 32, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 8, 8},
};

/* A panel's int4 codes (rows of 8 k, nibbles) as int8 B strips (rows of 4 k), less the zero point 8 where
 * the format is symmetric, so the products need no zero-point term. */
static const int8_t *llmc_widen_panel(const int8_t *codes, long K, int symmetric) {
    static __thread void *buffer;
    static __thread size_t capacity;
    int8_t *staged = llmc_thread_buffer(&buffer, &capacity, (size_t)K * LLMC_NR);
    const __m512i low = _mm512_set1_epi8(0x0F), zero = _mm512_set1_epi8(symmetric ? 8 : 0);
    for (long j = 0; j < K / 8; j++)
        for (int h = 0; h < 2; h++) {
            __m512i x = _mm512_loadu_si512(codes + j * 128 + h * 64);
            _mm512_store_si512(staged + 2 * j * 128 + h * 64, _mm512_sub_epi8(_mm512_and_si512(x, low), zero));
            _mm512_store_si512(staged + (2 * j + 1) * 128 + h * 64,
                               _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi32(x, 4), low), zero));
        }
    return staged;
}

/* part[r] += sums[r] * d[r] for one block of 32 k (d, sa: the block's 16 row scales and code sums, side by
 * side); the scale, the same for every block of a group, and the zero-point term (z * sum_b d_b sum_k qa_k,
 * a number per row) wait for the group's end. */
static inline void llmc_amx8_part(__m512 part[16], float zterm[16], const int32_t *sums, const float *d,
                                  const int32_t *sa, int zero_point) {
    _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) {
        part[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums + r * 16)), _mm512_set1_ps(d[r]), part[r]);
        if (zero_point) zterm[r] += (float)sa[r] * d[r];
    }
}

/* c[r] += (part[r] - z * zterm[r]) * s at the end of a group, and the group's sums start again. */
static inline void llmc_amx8_group(__m512 part[16], float zterm[16], long rows, const float *s, const float *z,
                                   float *c, long ldc) {
    __m512 sv = _mm512_loadu_ps(s), zv = z ? _mm512_loadu_ps(z) : _mm512_setzero_ps();
    for (int r = 0; r < 16; r++) {
        if (r < rows) {
            __m512 x = z ? _mm512_fnmadd_ps(zv, _mm512_set1_ps(zterm[r]), part[r]) : part[r];
            _mm512_storeu_ps(c + r * ldc, _mm512_fmadd_ps(x, sv, _mm512_loadu_ps(c + r * ldc)));
        }
        part[r] = _mm512_setzero_ps();
        zterm[r] = 0.0f;
    }
}

/* int32 tile T = A strip of block `blk` (tile TA) x B strip (tile TB): tiles are not renamed, so four blocks
 * go to four tiles before any is read back, and their products overlap. */
#define LLMC_AMX8_BLOCK(T, TA, TB, blk)                                                                    \
    do {                                                                                                   \
        _tile_zero(T);                                                                                     \
        _tile_loadd(TA, qa + (blk) * LLMC_AMX_ROWS * LLMC_ACT_BLOCK, LLMC_ACT_BLOCK);                       \
        _tile_loadd(TB, strip + (blk) * 1024, 128);                                                        \
        _tile_dpbssd(T, TA, TB);                                                                           \
    } while (0)

/* c[rows x 16] += round8(a) * dequant(16 columns of codes), each group's sums in registers. strip: the
 * codes' B strips (row stride 128 bytes); s and z (NULL: none) the columns' scales and zero points, rows of
 * LLMC_NR. */
static void llmc_amx8_columns(long rows, long K, const int8_t *qa, const float *da, const int32_t *sa,
                              const int8_t *strip, const float *s, const float *z, long kpg, float *c, long ldc) {
    int32_t sums[4][256] __attribute__((aligned(64)));
    __m512 part[16];
    float zterm[16];
    long blocks = K / LLMC_ACT_BLOCK, per_group = kpg / LLMC_ACT_BLOCK, b = 0, group = 0, filled = 0;
    for (int r = 0; r < 16; r++) {
        part[r] = _mm512_setzero_ps();
        zterm[r] = 0.0f;
    }
    for (; b < blocks; b += 4) {
        int count = blocks - b < 4 ? (int)(blocks - b) : 4;
        LLMC_AMX8_BLOCK(0, 4, 6, b);
        if (count > 1) LLMC_AMX8_BLOCK(1, 5, 7, b + 1);
        if (count > 2) LLMC_AMX8_BLOCK(2, 4, 6, b + 2);
        if (count > 3) LLMC_AMX8_BLOCK(3, 5, 7, b + 3);
        _tile_stored(0, sums[0], 64);
        if (count > 1) _tile_stored(1, sums[1], 64);
        if (count > 2) _tile_stored(2, sums[2], 64);
        if (count > 3) _tile_stored(3, sums[3], 64);
        for (int j = 0; j < count; j++) {
            long at = (b + j) * LLMC_AMX_ROWS;
            llmc_amx8_part(part, zterm, sums[j], da + at, sa + at, z != NULL);
            if (++filled == per_group || b + j + 1 == blocks) {
                llmc_amx8_group(part, zterm, rows, s + group * LLMC_NR, z ? z + group * LLMC_NR : NULL, c, ldc);
                group++;
                filled = 0;
            }
        }
    }
}

/* acc[M x N] (+)= round8(a)[M x K] * dequant(codes) on AMX tiles, 32 rows of a at a time. */
static void llmc_qdot_amx8(long M, long N, long K, llmc_tile a, const int8_t *q, long qps, int bits, const float *s,
                           long sps, const float *z, long kpg, llmc_tile c, int accumulate) {
    _tile_loadconfig(&llmc_amx_int8_tiles);
    long blocks = K / LLMC_ACT_BLOCK;
    for (long m = 0; m < M; m += LLMC_AMX_ROWS) {
        long rows = M - m < LLMC_AMX_ROWS ? M - m : LLMC_AMX_ROWS;
        llmc_tile strip = {a.p + m * a.ld, a.ld, a.ps};
        llmc_act8 act = llmc_act8_rows(strip, rows, LLMC_AMX_ROWS, K, 1);
        for (long n = 0; n < N; n += LLMC_NR) {
            float *out = c.p + m * c.ld + n;
            if (!accumulate)
                for (long r = 0; r < rows; r++) memset(out + r * c.ld, 0, LLMC_NR * sizeof(float));
            const int8_t *codes = LLMC_VNNI_AT(q, qps, n);
            if (bits == 4) codes = llmc_widen_panel(codes, K, z == NULL);
            const float *sn = LLMC_PANEL_AT(s, sps, n), *zn = z ? LLMC_PANEL_AT(z, sps, n) : NULL;
            for (long i = 0; i < rows; i += 16)
                for (int h = 0; h < 2; h++)
                    llmc_amx8_columns(rows - i < 16 ? rows - i : 16, K, act.q + i * LLMC_ACT_BLOCK, act.d + i,
                                      act.sum + i, codes + h * 64, sn + h * 16, zn ? zn + h * 16 : NULL, kpg,
                                      out + i * c.ld + h * 16, c.ld);
        }
    }
    _tile_release();
}
#endif

/* acc[M x N] (+)= round8(a)[M x K] * dequant(codes), the codes in the integer-dot layout, K a multiple of 32,
 * N of LLMC_NR. */
static void llmc_qdot_act8(long M, long N, long K, llmc_tile a, const int8_t *q, long qps, int bits, const float *s,
                           long sps, const float *z, long kpg, llmc_tile c, int accumulate) {
#ifdef LLMC_AMX_INT8
    if (M > 8 && a.ld >= 0 && llmc_amx_permitted()) { /* (ld < 0: rows rounded once per launch, llmc_qdot_vnni's) */
        llmc_qdot_amx8(M, N, K, a, q, qps, bits, s, sps, z, kpg, c, accumulate);
        return;
    }
#endif
    llmc_qdot_vnni(M, N, K, a, q, qps, bits, s, sps, z, kpg, c, accumulate);
}
#endif

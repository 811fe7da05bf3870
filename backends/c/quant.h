/* llmc SIMD C runtime, quantized weights (included after runtime.h when a kernel reads one).
 *
 * A quantized weight is packed at compile time into K-major panels of LLMC_NR
 * columns, like a float weight: int8 codes one byte per (k, column), int4 codes
 * one byte per (k pair, column), k even in the low nibble; its scales (and zero
 * points) are f32 panels of one row per group. w = (code - zero) * scale.
 *
 * Products with a few rows (decode) dequantize in registers: codes are widened
 * to f32 lanes, multiplied with the activation and summed per group, and each
 * group's sum is scaled once (sum_k a_k (q_k - z) s = s (sum_k a_k q_k - z sum_k a_k)).
 * Larger products dequantize each [K x N] tile once into scratch and run the
 * float micro-kernel over it (llmc_dequant_panels). */

/* W codes widened to W int32 lanes (int8 sign-extended, int4 bytes zero-extended): one instruction where
 * the ISA has it (GCC scalarises a byte -> int vector conversion). */
#if defined(__AVX512F__) && LLMC_W == 16
static inline vi llmc_widen_s8(const int8_t *p) { return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vi llmc_widen_u8(const int8_t *p) { return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
#elif defined(__AVX2__) && LLMC_W == 8
static inline vi llmc_widen_s8(const int8_t *p) { return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vi llmc_widen_u8(const int8_t *p) { return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
#else
static inline vi llmc_widen_s8(const int8_t *p) {
    vi w;
    for (int j = 0; j < LLMC_W; j++) w[j] = p[j];
    return w;
}
static inline vi llmc_widen_u8(const int8_t *p) {
    vi w;
    for (int j = 0; j < LLMC_W; j++) w[j] = (uint8_t)p[j];
    return w;
}
#endif

static inline vf llmc_q8(const int8_t *p) { return __builtin_convertvector(llmc_widen_s8(p), vf); }

static inline void llmc_q4(const int8_t *p, vf *lo, vf *hi) {
    vi w = llmc_widen_u8(p);
    *lo = __builtin_convertvector(w & 15, vf);
    *hi = __builtin_convertvector(w >> 4, vf);
}

/* Vectors of columns one pass over K covers: one row keeps 2 x V accumulators in registers. */
#if LLMC_W >= 16
#define LLMC_QV 8
#else
#define LLMC_QV 4
#endif

/* c[R x n .. n + V*W) (+)= a[R x K] * dequant(codes), for R <= 2 rows (V vectors) or R <= 4 (V / 2). */
/* One k of int8 codes (one k pair of int4 codes) against V vectors of columns, summed into part[][]. */
#define LLMC_Q8_STEP(ROWS, V, K)                                                                           \
    do {                                                                                                   \
        vf w[V];                                                                                           \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) w[j] = llmc_q8(qp[j] + (K) * LLMC_NR);          \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++) {                                           \
            if (r >= R) break;                                                                             \
            vf av = vsplat(a[r * lda + (K)]);                                                              \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) part[r][j] += av * w[j];                   \
        }                                                                                                  \
    } while (0)
#define LLMC_Q4_STEP(ROWS, V, K)                                                                           \
    do {                                                                                                   \
        vf lo[V], hi[V];                                                                                   \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) llmc_q4(qp[j] + ((K) / 2) * LLMC_NR, &lo[j], &hi[j]); \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++) {                                           \
            if (r >= R) break;                                                                             \
            float a0 = a[r * lda + (K)], a1 = (K) + 1 < g1 ? a[r * lda + (K) + 1] : 0.0f;                  \
            asum[r] += a0 + a1;                                                                            \
            vf av0 = vsplat(a0), av1 = vsplat(a1);                                                         \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) part[r][j] += av0 * lo[j] + av1 * hi[j];   \
        }                                                                                                  \
    } while (0)

#define LLMC_QROWS(NAME, ROWS, V)                                                                          \
    static inline void NAME(long R, long K, const float *a, long lda, const int8_t *q, long qps, int bits,  \
                            const float *s, long sps, const float *z, long kpg, long n, float *c, long ldc, \
                            int accumulate) {                                                             \
        const int8_t *qp[V];                                                                               \
        vf acc[ROWS][V], part[ROWS][V];                                                                    \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) qp[j] = LLMC_PANEL_AT(q, qps, n + j * LLMC_W); \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                             \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++)                                           \
                acc[r][j] = accumulate && r < R ? vload(c + r * ldc + j * LLMC_W) : vsplat(0.0f);          \
        for (long g0 = 0; g0 < K; g0 += kpg) {                                                             \
            long g1 = g0 + kpg < K ? g0 + kpg : K;                                                         \
            float asum[ROWS] = {0};                                                                        \
            _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                         \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) part[r][j] = vsplat(0.0f);             \
            /* one prefetch per cache line: a panel row of codes is LLMC_NR bytes, two vectors' worth */       \
            long k = g0;                                                                                   \
            if (bits == 8) {                                                                               \
                for (; k + 2 <= g1; k += 2) {                                                              \
                    _Pragma("GCC unroll 8") for (int j = 0; j < V; j += 2)                                 \
                        __builtin_prefetch(qp[j] + (k + 64) * LLMC_NR);                                    \
                    LLMC_Q8_STEP(ROWS, V, k);                                                              \
                    LLMC_Q8_STEP(ROWS, V, k + 1);                                                          \
                }                                                                                          \
                for (; k < g1; k++) LLMC_Q8_STEP(ROWS, V, k);                                              \
            } else {                                                                                       \
                for (; k + 4 <= g1; k += 4) {                                                              \
                    _Pragma("GCC unroll 8") for (int j = 0; j < V; j += 2)                                 \
                        __builtin_prefetch(qp[j] + (k / 2 + 64) * LLMC_NR);                                \
                    LLMC_Q4_STEP(ROWS, V, k);                                                              \
                    LLMC_Q4_STEP(ROWS, V, k + 2);                                                          \
                }                                                                                          \
                for (; k < g1; k += 2) LLMC_Q4_STEP(ROWS, V, k);                                           \
            }                                                                                              \
            long row = g0 / kpg;                                                                           \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                          \
                long col = n + j * LLMC_W;                                                                 \
                vf sv = vload(LLMC_PANEL_AT(s, sps, col) + row * LLMC_NR);                                 \
                vf zv = z ? vload(LLMC_PANEL_AT(z, sps, col) + row * LLMC_NR) : vsplat(bits == 4 ? 8.0f : 0.0f); \
                _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                     \
                    if (r < R) acc[r][j] += (part[r][j] - zv * asum[r]) * sv;                               \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                             \
            if (r < R)                                                                                     \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) vstore(c + r * ldc + j * LLMC_W, acc[r][j]); \
    }
LLMC_QROWS(llmc_qrows1, 1, LLMC_QV)
LLMC_QROWS(llmc_qrows4, 4, LLMC_QV / 4)

/* acc[M x N] (+)= a[M x K] * dequant(codes) for M <= 8 (N a multiple of LLMC_NR; K whole k-tile rows).
 * q, s, z point at the tile's first panel, row 0; qps / sps are their panel strides. */
static void llmc_qdot(long M, long N, long K, llmc_tile a, const int8_t *q, long qps, int bits, const float *s,
                      long sps, const float *z, long kpg, llmc_tile c, int accumulate) {
    long n = 0;
    if (M == 1)
        for (; n + LLMC_QV * LLMC_W <= N; n += LLMC_QV * LLMC_W)
            llmc_qrows1(1, K, a.p, a.ld, q, qps, bits, s, sps, z, kpg, n, c.p + n, c.ld, accumulate);
    for (; n < N; n += (LLMC_QV / 4) * LLMC_W)
        for (long m = 0; m < M; m += 4)
            llmc_qrows4(M - m < 4 ? M - m : 4, K, a.p + m * a.ld, a.ld, q, qps, bits, s, sps, z, kpg, n,
                        c.p + m * c.ld + n, c.ld, accumulate);
}

/* dst[K x N] (row-major, ld) = dequant(codes) from panels: a tile of a large product, dequantized once. */
static void llmc_dequant_panels(float *dst, long ld, long K, long N, const int8_t *q, long qps, int bits,
                                const float *s, long sps, const float *z, long kpg) {
    for (long n = 0; n < N; n += LLMC_W) {
        const int8_t *qn = LLMC_PANEL_AT(q, qps, n);
        const float *sn = LLMC_PANEL_AT(s, sps, n), *zn = z ? LLMC_PANEL_AT(z, sps, n) : NULL;
        for (long k = 0; k < K; k += (bits == 8 ? 1 : 2)) {
            long row = (k / kpg) * LLMC_NR;
            vf sv = vload(sn + row), zv = zn ? vload(zn + row) : vsplat(bits == 4 ? 8.0f : 0.0f);
            if (bits == 8) {
                vstore(dst + k * ld + n, (llmc_q8(qn + k * LLMC_NR) - zv) * sv);
            } else {
                vf lo, hi;
                llmc_q4(qn + (k / 2) * LLMC_NR, &lo, &hi);
                vstore(dst + k * ld + n, (lo - zv) * sv);
                if (k + 1 < K) vstore(dst + (k + 1) * ld + n, (hi - zv) * sv);
            }
        }
    }
}

/* The same from unpacked strided views (codes[r][c] at cb[r*cs0 + c*cs1], scales likewise), element by
 * element, reading 0 outside them: the general case, for weights too small to pack. */
static void llmc_dequant_view(float *dst, long ld, long K, long N, int bits, const int8_t *cb, long r0, long c0,
                              long ch, long cw, long cs0, long cs1, const float *sb, long sr0, long sh, long ss0,
                              long ss1, const float *zb, long kpg) {
    for (long k = 0; k < K; k++)
        for (long n = 0; n < ld; n++) {
            long r = bits == 8 ? r0 + k : r0 + k / 2, cn = c0 + n, sr = sr0 + k / kpg;
            int inside = n < N && r < ch && cn < cw && sr < sh;
            float code = 0.0f, scale = 0.0f, zero = bits == 4 ? 8.0f : 0.0f;
            if (inside) {
                int8_t byte = cb[r * cs0 + cn * cs1];
                code = bits == 8 ? (float)byte : (float)(((uint8_t)byte >> (k % 2 ? 4 : 0)) & 15);
                scale = sb[sr * ss0 + cn * ss1];
                if (zb) zero = zb[sr * ss0 + cn * ss1];
            }
            dst[k * ld + n] = (code - zero) * scale;
        }
}

/* Int8 activations (a linear marked activations = "int8"): each row of the activation tile is rounded
 * to int8 per block of 32 columns (d = max|a| / 127, q = rint(a * (1 / d)), round half to even). */
#define LLMC_ACT_BLOCK 32
static inline float llmc_rint(float x) { return (x + 12582912.0f) - 12582912.0f; } /* |x| <= 2^22: half to even */

static void llmc_quantize_block(const float *a, long n, int8_t *q, float *d, int32_t *sum) {
#if defined(__AVX512F__) && LLMC_W == 16
    if (n == LLMC_ACT_BLOCK) { /* two vectors; the conversion rounds half to even (the default MXCSR mode) */
        __m512 x0 = _mm512_loadu_ps(a), x1 = _mm512_loadu_ps(a + 16);
        float dd = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1))) / 127.0f;
        __m512 inv = _mm512_set1_ps(1.0f / (dd > 0.0f ? dd : 1.0f));
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inv));
        _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(q1));
        *d = dd;
        *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        return;
    }
#elif LLMC_W >= 8
    if (n == LLMC_ACT_BLOCK) { /* the whole block in vectors: one division per lane, no scalar loop */
        vf amaxv = vsplat(0.0f);
        for (int k = 0; k < LLMC_ACT_BLOCK; k += LLMC_W) amaxv = vmax(amaxv, (vf)((vi)vload(a + k) & 0x7FFFFFFF));
        float dd = vhmax(amaxv) / 127.0f;
        vf inv = vsplat(1.0f / (dd > 0.0f ? dd : 1.0f)), magic = vsplat(12582912.0f);
        vi v[LLMC_ACT_BLOCK / LLMC_W], total = (vi)LLMC_SPLAT(0);
        for (int k = 0; k < LLMC_ACT_BLOCK / LLMC_W; k++) {
            v[k] = __builtin_convertvector((vload(a + k * LLMC_W) * inv + magic) - magic, vi);
            total += v[k];
        }
#if defined(__AVX2__) && LLMC_W == 8
        /* narrowed with saturating packs (the codes are within [-127, 127]), which work per 128-bit half:
         * the 4-byte groups come out as v0 v1 v2 v3 low halves, then high halves; one permutation orders them */
        __m256i w01 = _mm256_packs_epi32((__m256i)v[0], (__m256i)v[1]), w23 = _mm256_packs_epi32((__m256i)v[2], (__m256i)v[3]);
        __m256i bytes = _mm256_packs_epi16(w01, w23);
        _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
        for (int k = 0; k < LLMC_ACT_BLOCK / LLMC_W; k++)
            for (int j = 0; j < LLMC_W; j++) q[k * LLMC_W + j] = (int8_t)v[k][j];
#endif
        *d = dd;
        *sum = 0;
        for (int j = 0; j < LLMC_W; j++) *sum += total[j];
        return;
    }
#endif
    float amax = 0.0f;
    for (long k = 0; k < n; k++) amax = fabsf(a[k]) > amax ? fabsf(a[k]) : amax;
    float dd = amax / 127.0f, inv = 1.0f / (dd > 0.0f ? dd : 1.0f);
    int32_t total = 0;
    for (long k = 0; k < LLMC_ACT_BLOCK; k++) {
        int8_t v = k < n ? (int8_t)llmc_rint(a[k] * inv) : 0;
        q[k] = v;
        total += v;
    }
    *d = dd;
    *sum = total;
}

/* dst = the activation tile as the linear reads it: each row rounded per block (the general path). */
static void llmc_round_activations(llmc_tile dst, llmc_tile a, long M, long K) {
    int8_t q[LLMC_ACT_BLOCK];
    for (long r = 0; r < M; r++)
        for (long k0 = 0; k0 < K; k0 += LLMC_ACT_BLOCK) {
            long n = K - k0 < LLMC_ACT_BLOCK ? K - k0 : LLMC_ACT_BLOCK;
            float d;
            int32_t sum;
            llmc_quantize_block(a.p + r * a.ld + k0, n, q, &d, &sum);
            for (long k = 0; k < n; k++) dst.p[r * dst.ld + k0 + k] = (float)q[k] * d;
        }
}

/* Rows 0..rows_padded of an activation tile rounded to int8 per block of 32 k (zero from `rows` on), for
 * integer products: codes q, row-major [rows_padded x K] or, `blocked`, block-major [K/32 x rows_padded x 32]
 * (a tile's strip of rows is then contiguous), and per row and block the scale d and the codes' sum (row-major,
 * or block-major where `blocked`). */
typedef struct {
    int8_t *q;
    float *d;
    int32_t *sum;
} llmc_act8;
static llmc_act8 llmc_act8_rows(llmc_tile a, long rows, long rows_padded, long K, int blocked) {
    static __thread void *buffer;
    static __thread size_t capacity;
    long blocks = K / LLMC_ACT_BLOCK;
    size_t codes = (size_t)(rows_padded * K + 63) / 64 * 64, per_block = (size_t)(rows_padded * blocks);
    char *p = llmc_thread_buffer(&buffer, &capacity, codes + per_block * (sizeof(float) + sizeof(int32_t)));
    llmc_act8 act = {(int8_t *)p, (float *)(p + codes), (int32_t *)(p + codes + per_block * sizeof(float))};
    for (long m = 0; m < rows_padded; m++)
        for (long b = 0; b < blocks; b++) {
            int8_t *q = act.q + (blocked ? b * rows_padded + m : m * (K / LLMC_ACT_BLOCK) + b) * LLMC_ACT_BLOCK;
            long at = blocked ? b * rows_padded + m : m * blocks + b;
            if (m < rows) {
                llmc_quantize_block(a.p + m * a.ld + b * LLMC_ACT_BLOCK, LLMC_ACT_BLOCK, q, &act.d[at], &act.sum[at]);
            } else {
                memset(q, 0, LLMC_ACT_BLOCK);
                act.d[at] = 0.0f;
                act.sum[at] = 0;
            }
        }
    return act;
}

/* Integer dot products, 4 bytes per 32-bit lane: llmc_dpbusd(acc, u, s) adds sum_i u_i s_i (u unsigned, s
 * signed) to each lane, llmc_dpbusd2 two such products. llmc_dot_act8(acc, a, q) adds sum_i a_i q_i of int8
 * activations and int8 codes; LLMC_ACT_OFFSET says whether `a` comes as a + 128 (unsigned bytes, with
 * llmc_code_sums giving the sums that correct for it) or as it is. */
#if defined(__AVX512VNNI__) && defined(__AVX512F__) && LLMC_W == 16
#define LLMC_INT_DOT 1
static inline vi llmc_dpbusd(vi acc, vi u, vi s) { return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)u, (__m512i)s); }
#elif defined(__AVXVNNI__) && LLMC_W == 8
#define LLMC_INT_DOT 1
static inline vi llmc_dpbusd(vi acc, vi u, vi s) { return (vi)_mm256_dpbusd_avx_epi32((__m256i)acc, (__m256i)u, (__m256i)s); }
#elif defined(__AVX2__) && LLMC_W == 8
/* AVX2 without VNNI: vpmaddubsw multiplies unsigned by signed bytes into 16-bit sums of pairs, which
 * saturate, and vpmaddwd adds pairs of those into 32 bits. Exact for the operands given here: an int4 code
 * (at most 15) against an activation, or the magnitude of an activation (at most 127) against an int8 code
 * that carries the activation's sign (vpsignb; codes are in [-127, 127], where -128 would wrap), so no sum of
 * pairs leaves int16, nor do two int4 ones added. */
#define LLMC_INT_DOT 1
#define LLMC_ACT_OFFSET 0
static inline vi llmc_madd_pairs(__m256i pairs) { return (vi)_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)); }
static inline vi llmc_dpbusd(vi acc, vi u, vi s) {
    return acc + llmc_madd_pairs(_mm256_maddubs_epi16((__m256i)u, (__m256i)s));
}
static inline vi llmc_dpbusd2(vi acc, vi u0, vi s0, vi u1, vi s1) {
    return acc + llmc_madd_pairs(_mm256_add_epi16(_mm256_maddubs_epi16((__m256i)u0, (__m256i)s0),
                                                  _mm256_maddubs_epi16((__m256i)u1, (__m256i)s1)));
}
static inline vi llmc_dot_act8(vi acc, vi a, vi q) {
    return llmc_dpbusd(acc, (vi)_mm256_abs_epi8((__m256i)a), (vi)_mm256_sign_epi8((__m256i)q, (__m256i)a));
}
static inline vi llmc_code_sums(vi acc, vi q) {
    (void)q;
    return acc;
}
#endif
#if defined(LLMC_INT_DOT) && !defined(LLMC_ACT_OFFSET)
/* vpdpbusd wants one unsigned operand: the activations go in as a + 128, and each block subtracts 128 *
 * sum_k q_k, the column sums coming from one more vpdpbusd of the codes with ones. */
#define LLMC_ACT_OFFSET 1
static inline vi llmc_dpbusd2(vi acc, vi u0, vi s0, vi u1, vi s1) { return llmc_dpbusd(llmc_dpbusd(acc, u0, s0), u1, s1); }
static inline vi llmc_dot_act8(vi acc, vi a, vi q) { return llmc_dpbusd(acc, a, q); }
static inline vi llmc_code_sums(vi acc, vi q) { return llmc_dpbusd(acc, (vi)LLMC_SPLAT(0x01010101), q); }
#endif

#ifdef LLMC_INT_DOT
/* Integer dot products of int4 codes with int8 activations (what the fastest CPU engines do for decode).
 * The codes are packed for it: per panel and 8 rows of k, each column's 32-bit lane holds its codes for
 * k0..k0+3 in the low nibbles and k0+4..k0+7 in the high ones, so one vpdpbusd multiplies 4 k of 16
 * columns. Per block of 32 k: c += (sum_k qa_k q_k - z sum_k qa_k) * d_block * scale. */
/* Where the vector of LLMC_W columns starting at `col` starts in codes packed for integer dot products
 * (4 bytes a column, the panel's two vectors side by side). */
#define LLMC_VNNI_AT(q, qps, col) ((q) + ((col) / LLMC_NR) * (qps) + (((col) % LLMC_NR) / LLMC_W) * LLMC_W * 4)
#define LLMC_QROW_VNNI(V)                                                                                   \
    static inline void llmc_qrow_vnni_##V(long K, const int8_t *qa, const float *da, const int32_t *sa,    \
                                          const int8_t *q, long qps, const float *s, long sps, const float *z, \
                                          long kpg, long n, float *c, int accumulate) {                    \
        const int8_t *qp[V];                                                                               \
        vf acc[V];                                                                                         \
        const vi low = (vi)LLMC_SPLAT(0x0F0F0F0F);                                                         \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                              \
            long col = n + j * LLMC_W;                                                                     \
            qp[j] = LLMC_VNNI_AT(q, qps, col);                                                             \
            acc[j] = accumulate ? vload(c + j * LLMC_W) : vsplat(0.0f);                                    \
        }                                                                                                  \
        for (long b = 0; b < K / LLMC_ACT_BLOCK; b++) {                                                    \
            vi isum[V];                                                                                    \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) isum[j] = (vi)LLMC_SPLAT(0);               \
            _Pragma("GCC unroll 4") for (long k8 = b * 4; k8 < b * 4 + 4; k8++) {                          \
                int32_t lo4, hi4;                                                                          \
                memcpy(&lo4, qa + 8 * k8, 4);                                                              \
                memcpy(&hi4, qa + 8 * k8 + 4, 4);                                                          \
                vi alo = (vi)LLMC_SPLAT(lo4), ahi = (vi)LLMC_SPLAT(hi4);                                   \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                      \
                    vi x;                                                                                  \
                    memcpy(&x, qp[j] + k8 * LLMC_NR * 4, sizeof x);                                        \
                    __builtin_prefetch(qp[j] + (k8 + 16) * LLMC_NR * 4);                                   \
                    isum[j] = llmc_dpbusd2(isum[j], x & low, alo, (x >> 4) & low, ahi);                    \
                }                                                                                          \
            }                                                                                              \
            long row = (b * LLMC_ACT_BLOCK) / kpg;                                                         \
            vf sumv = vsplat((float)sa[b]), dv = vsplat(da[b]);                                            \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                          \
                long col = n + j * LLMC_W;                                                                 \
                vf sv = vload(LLMC_PANEL_AT(s, sps, col) + row * LLMC_NR);                                 \
                vf zv = z ? vload(LLMC_PANEL_AT(z, sps, col) + row * LLMC_NR) : vsplat(8.0f);              \
                acc[j] += (__builtin_convertvector(isum[j], vf) - zv * sumv) * (sv * dv);                  \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) vstore(c + j * LLMC_W, acc[j]);               \
    }
LLMC_QROW_VNNI(8)
LLMC_QROW_VNNI(4)
LLMC_QROW_VNNI(2)

/* int8 codes (signed) against int8 activations (as LLMC_ACT_OFFSET says), the codes packed 4 k to a lane. */
#define LLMC_QROW_VNNI8(V)                                                                                  \
    static inline void llmc_qrow_vnni8_##V(long K, const uint8_t *qau, const float *da, const int8_t *q,   \
                                           long qps, const float *s, long sps, long kpg, long n, float *c,  \
                                           int accumulate) {                                                \
        const int8_t *qp[V];                                                                               \
        vf acc[V];                                                                                         \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                              \
            long col = n + j * LLMC_W;                                                                     \
            qp[j] = LLMC_VNNI_AT(q, qps, col);                                                             \
            acc[j] = accumulate ? vload(c + j * LLMC_W) : vsplat(0.0f);                                    \
        }                                                                                                  \
        for (long b = 0; b < K / LLMC_ACT_BLOCK; b++) {                                                    \
            vi isum[V], wsum[V];                                                                           \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) isum[j] = wsum[j] = (vi)LLMC_SPLAT(0);     \
            _Pragma("GCC unroll 8") for (long k4 = b * 8; k4 < b * 8 + 8; k4++) {                          \
                int32_t a4;                                                                                \
                memcpy(&a4, qau + 4 * k4, 4);                                                              \
                vi av = (vi)LLMC_SPLAT(a4);                                                                \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                      \
                    vi x;                                                                                  \
                    memcpy(&x, qp[j] + k4 * LLMC_NR * 4, sizeof x);                                        \
                    __builtin_prefetch(qp[j] + (k4 + 16) * LLMC_NR * 4);                                   \
                    isum[j] = llmc_dot_act8(isum[j], av, x);                                               \
                    wsum[j] = llmc_code_sums(wsum[j], x);                                                  \
                }                                                                                          \
            }                                                                                              \
            long row = (b * LLMC_ACT_BLOCK) / kpg;                                                         \
            vf dv = vsplat(da[b]);                                                                         \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) {                                          \
                vf sv = vload(LLMC_PANEL_AT(s, sps, n + j * LLMC_W) + row * LLMC_NR);                      \
                acc[j] += __builtin_convertvector(isum[j] - (wsum[j] << 7), vf) * (sv * dv);               \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) vstore(c + j * LLMC_W, acc[j]);               \
    }
LLMC_QROW_VNNI8(8)
LLMC_QROW_VNNI8(4)
LLMC_QROW_VNNI8(2)
/* The same for R rows at once, over two vectors of columns: each vector of codes is loaded once for all
 * the rows, and for int8 codes their column sums (the -128 correction) are taken once too. The integer sums
 * of a block of 32 k stay in registers; the float sums are the output tile's (in L1), scaled in once per
 * block, which leaves the registers to the integer sums, the codes and the activations (with them in
 * registers, AVX2's 16 spilled and reloaded the codes for every row). */
#if LLMC_W >= 16
#define LLMC_VNNI_ROWS8 4 /* 4 rows x 2 vectors: 8 sums and the codes in 32 registers */
#define LLMC_VNNI_ROWS4 4
#elif !LLMC_ACT_OFFSET
/* AVX2's vpmaddubsw form in 16 registers, on a Zen 3 host against 3 rows with the float sums in registers:
 * GPT-2 int8:a8 prefill 0.85x the kernel time with 4 rows, LLaMA int4:32:a8 0.91x with 3 (its nibbles take
 * four more registers; 4 rows were 0.98x) */
#define LLMC_VNNI_ROWS8 4
#define LLMC_VNNI_ROWS4 3
#else
#define LLMC_VNNI_ROWS8 2 /* 16 registers */
#define LLMC_VNNI_ROWS4 2
#endif
/* c[r][0..2W) (= or +=, as `accumulate` says) for the first time: zeros where the sums start afresh. */
static inline void llmc_rows_clear(int rows, float *c, long ldc, int accumulate) {
    if (!accumulate)
        for (int r = 0; r < rows; r++) {
            vstore(c + r * ldc, vsplat(0.0f));
            vstore(c + r * ldc + LLMC_W, vsplat(0.0f));
        }
}
/* c[r] += (integer sums - offset) * scale, for one block of 32 k. */
static inline void llmc_rows_scale_in(float *c, vi isum0, vi isum1, vf off0, vf off1, vf scale0, vf scale1) {
    vstore(c, vload(c) + (__builtin_convertvector(isum0, vf) - off0) * scale0);
    vstore(c + LLMC_W, vload(c + LLMC_W) + (__builtin_convertvector(isum1, vf) - off1) * scale1);
}
static inline void llmc_qrows_vnni8(long K, const uint8_t *qau, long ldq, const float *da, long ldd, const int8_t *q,
                                    long qps, const float *s, long sps, long kpg, long n, float *c, long ldc,
                                    int accumulate) {
    enum { R = LLMC_VNNI_ROWS8 };
    const int8_t *qp0 = LLMC_VNNI_AT(q, qps, n), *qp1 = LLMC_VNNI_AT(q, qps, n + LLMC_W);
    const float *s0 = LLMC_PANEL_AT(s, sps, n), *s1 = LLMC_PANEL_AT(s, sps, n + LLMC_W);
    llmc_rows_clear(R, c, ldc, accumulate);
    /* the scale row of block b, b * 32 / kpg, without a division per block (groups hold whole blocks) */
    long row = 0, left = kpg;
    for (long b = 0; b < K / LLMC_ACT_BLOCK; b++) {
        vi isum[R][2], wsum0 = (vi)LLMC_SPLAT(0), wsum1 = (vi)LLMC_SPLAT(0);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) isum[r][0] = isum[r][1] = (vi)LLMC_SPLAT(0);
        _Pragma("GCC unroll 8") for (long k4 = b * 8; k4 < b * 8 + 8; k4++) {
            vi x0, x1;
            memcpy(&x0, qp0 + k4 * LLMC_NR * 4, sizeof x0);
            memcpy(&x1, qp1 + k4 * LLMC_NR * 4, sizeof x1);
            __builtin_prefetch(qp0 + (k4 + 16) * LLMC_NR * 4);
            __builtin_prefetch(qp1 + (k4 + 16) * LLMC_NR * 4);
            wsum0 = llmc_code_sums(wsum0, x0);
            wsum1 = llmc_code_sums(wsum1, x1);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                int32_t a4;
                memcpy(&a4, qau + r * ldq + 4 * k4, 4);
                vi av = (vi)LLMC_SPLAT(a4);
                isum[r][0] = llmc_dot_act8(isum[r][0], av, x0);
                isum[r][1] = llmc_dot_act8(isum[r][1], av, x1);
            }
        }
        vf sv0 = vload(s0 + row * LLMC_NR), sv1 = vload(s1 + row * LLMC_NR);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
            vf dv = vsplat(da[r * ldd + b]), none = vsplat(0.0f);
            llmc_rows_scale_in(c + r * ldc, isum[r][0] - (wsum0 << 7), isum[r][1] - (wsum1 << 7), none, none, sv0 * dv,
                               sv1 * dv);
        }
        if ((left -= LLMC_ACT_BLOCK) <= 0) row++, left = kpg;
    }
}

/* int4 codes: the nibbles of each vector are split once for all the rows. */
static inline void llmc_qrows_vnni4(long K, const int8_t *qa, long ldq, const float *da, const int32_t *sa, long ldd,
                                    const int8_t *q, long qps, const float *s, long sps, const float *z, long kpg,
                                    long n, float *c, long ldc, int accumulate) {
    enum { R = LLMC_VNNI_ROWS4 };
    const int8_t *qp0 = LLMC_VNNI_AT(q, qps, n), *qp1 = LLMC_VNNI_AT(q, qps, n + LLMC_W);
    const float *s0 = LLMC_PANEL_AT(s, sps, n), *s1 = LLMC_PANEL_AT(s, sps, n + LLMC_W);
    const float *z0 = z ? LLMC_PANEL_AT(z, sps, n) : NULL, *z1 = z ? LLMC_PANEL_AT(z, sps, n + LLMC_W) : NULL;
    const vi low = (vi)LLMC_SPLAT(0x0F0F0F0F);
    llmc_rows_clear(R, c, ldc, accumulate);
    long row = 0, left = kpg;
    for (long b = 0; b < K / LLMC_ACT_BLOCK; b++) {
        vi isum[R][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) isum[r][0] = isum[r][1] = (vi)LLMC_SPLAT(0);
        _Pragma("GCC unroll 4") for (long k8 = b * 4; k8 < b * 4 + 4; k8++) {
            vi x0, x1;
            memcpy(&x0, qp0 + k8 * LLMC_NR * 4, sizeof x0);
            memcpy(&x1, qp1 + k8 * LLMC_NR * 4, sizeof x1);
            __builtin_prefetch(qp0 + (k8 + 16) * LLMC_NR * 4);
            __builtin_prefetch(qp1 + (k8 + 16) * LLMC_NR * 4);
            vi lo0 = x0 & low, hi0 = (x0 >> 4) & low, lo1 = x1 & low, hi1 = (x1 >> 4) & low;
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                int32_t lo4, hi4;
                memcpy(&lo4, qa + r * ldq + 8 * k8, 4);
                memcpy(&hi4, qa + r * ldq + 8 * k8 + 4, 4);
                vi alo = (vi)LLMC_SPLAT(lo4), ahi = (vi)LLMC_SPLAT(hi4);
                isum[r][0] = llmc_dpbusd2(isum[r][0], lo0, alo, hi0, ahi);
                isum[r][1] = llmc_dpbusd2(isum[r][1], lo1, alo, hi1, ahi);
            }
        }
        vf sv0 = vload(s0 + row * LLMC_NR), sv1 = vload(s1 + row * LLMC_NR);
        vf zv0 = z ? vload(z0 + row * LLMC_NR) : vsplat(8.0f), zv1 = z ? vload(z1 + row * LLMC_NR) : vsplat(8.0f);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
            vf dv = vsplat(da[r * ldd + b]), sumv = vsplat((float)sa[r * ldd + b]);
            llmc_rows_scale_in(c + r * ldc, isum[r][0], isum[r][1], zv0 * sumv, zv1 * sumv, sv0 * dv,
                               sv1 * dv);
        }
        if ((left -= LLMC_ACT_BLOCK) <= 0) row++, left = kpg;
    }
}

#if LLMC_QV == 8
#define LLMC_QROW_VNNI_WIDE llmc_qrow_vnni_8
#define LLMC_QROW_VNNI8_WIDE llmc_qrow_vnni8_8
#else
#define LLMC_QROW_VNNI_WIDE llmc_qrow_vnni_4
#define LLMC_QROW_VNNI8_WIDE llmc_qrow_vnni8_4
#endif

/* n int8 activation codes as llmc_dot_act8 takes them, in place: q + 128 as unsigned bytes where
 * LLMC_ACT_OFFSET says so, else as they are. */
static inline const uint8_t *llmc_act8_operand(int8_t *q, long n) {
    uint8_t *u = (uint8_t *)q;
    if (LLMC_ACT_OFFSET)
        for (long k = 0; k < n; k++) u[k] ^= 0x80;
    return u;
}

/* Rows of int8 activations as the integer products read them: codes (row step ldq; for int8 codes already in
 * llmc_dot_act8's form), and per row (step ldd) and block of 32 k the scale d and the codes' sum. */
typedef struct {
    const int8_t *q;
    const float *d;
    const int32_t *sum;
    long ldq, ldd;
} llmc_act8_view;

/* acc[M x N] (+)= act[M x K] * dequant(codes) with the codes in the VNNI layout, LLMC_VNNI_ROWS8 (or 4) rows at
 * a time, each group over every column pair (the pair's codes stay in L1 for the next group), and the rest one
 * by one; K a multiple of 32. */
static void llmc_qdot_vnni_rows(long M, long N, long K, llmc_act8_view act, const int8_t *q, long qps, int bits,
                                const float *s, long sps, const float *z, long kpg, llmc_tile c, int accumulate) {
    long rows = bits == 8 ? LLMC_VNNI_ROWS8 : LLMC_VNNI_ROWS4, grouped = M / rows * rows;
    for (long n = 0; n < N; n += 2 * LLMC_W)
        for (long m = 0; m < grouped; m += rows) {
            float *cm = c.p + m * c.ld + n;
            if (bits == 8)
                llmc_qrows_vnni8(K, (const uint8_t *)act.q + m * act.ldq, act.ldq, act.d + m * act.ldd, act.ldd, q, qps,
                                 s, sps, kpg, n, cm, c.ld, accumulate);
            else
                llmc_qrows_vnni4(K, act.q + m * act.ldq, act.ldq, act.d + m * act.ldd, act.sum + m * act.ldd, act.ldd,
                                 q, qps, s, sps, z, kpg, n, cm, c.ld, accumulate);
        }
    for (long m = grouped; m < M; m++) {
        const int8_t *qa = act.q + m * act.ldq;
        const float *da = act.d + m * act.ldd;
        long n = 0;
        if (bits == 8) {
            const uint8_t *row = (const uint8_t *)qa;
            for (; n + LLMC_QV * LLMC_W <= N; n += LLMC_QV * LLMC_W)
                LLMC_QROW_VNNI8_WIDE(K, row, da, q, qps, s, sps, kpg, n, c.p + m * c.ld + n, accumulate);
            for (; n < N; n += 2 * LLMC_W)
                llmc_qrow_vnni8_2(K, row, da, q, qps, s, sps, kpg, n, c.p + m * c.ld + n, accumulate);
            continue;
        }
        const int32_t *sa = act.sum + m * act.ldd;
        for (; n + LLMC_QV * LLMC_W <= N; n += LLMC_QV * LLMC_W)
            LLMC_QROW_VNNI_WIDE(K, qa, da, sa, q, qps, s, sps, z, kpg, n, c.p + m * c.ld + n, accumulate);
        for (; n < N; n += 2 * LLMC_W)
            llmc_qrow_vnni_2(K, qa, da, sa, q, qps, s, sps, z, kpg, n, c.p + m * c.ld + n, accumulate);
    }
}

/* The same on an activation tile: a view of the rows rounded once per launch (llmc_act8_pack; ld < 0, see there),
 * else f32 rows rounded here (every column tile rounds them again). */
static void llmc_qdot_vnni(long M, long N, long K, llmc_tile a, const int8_t *q, long qps, int bits, const float *s,
                           long sps, const float *z, long kpg, llmc_tile c, int accumulate) {
    if (a.ld < 0) {
        const char *codes = (const char *)a.p;
        const float *d = (const float *)(codes + a.rows);
        llmc_act8_view view = {(const int8_t *)codes, d, (const int32_t *)((const char *)d + a.ps), -a.ld,
                               -a.ld / LLMC_ACT_BLOCK};
        llmc_qdot_vnni_rows(M, N, K, view, q, qps, bits, s, sps, z, kpg, c, accumulate);
        return;
    }
    llmc_act8 act = llmc_act8_rows(a, M, M, K, 0);
    if (bits == 8) llmc_act8_operand(act.q, M * K);
    llmc_act8_view view = {act.q, act.d, act.sum, K, K / LLMC_ACT_BLOCK};
    llmc_qdot_vnni_rows(M, N, K, view, q, qps, bits, s, sps, z, kpg, c, accumulate);
}

/* A linear layer's input rounded once per launch for all of its programs' integer products (shared_lhs.py), into
 * the launch's shared buffer at p: codes row-major [rows_padded x k_padded] (in llmc_dot_act8's form where the
 * codes are int8: `operand`), then the scales d and then the codes' sums, each [rows_padded x k_padded / 32];
 * zero outside height x width. Every thread of the region calls it: the rows are shared out and the barrier
 * that ends the loop lets each program read them all. A tile of it is a descriptor whose p points at its first
 * code, ld is minus the codes' row step, rows the bytes from there to the tile's first scale, and ps the bytes
 * from a scale to its sum. */
static void llmc_act8_pack(float *p, const float *src, long height, long width, long row_stride, long rows_padded,
                           long k_padded, int operand) {
    long blocks = k_padded / LLMC_ACT_BLOCK;
    int8_t *codes = (int8_t *)p;
    float *d = p + (rows_padded * k_padded + 3) / 4;
    int32_t *sum = (int32_t *)(d + rows_padded * blocks);
    #pragma omp for schedule(static)
    for (long m = 0; m < rows_padded; m++) {
        int8_t *row = codes + m * k_padded;
        for (long b = 0; b < blocks; b++) {
            long k0 = b * LLMC_ACT_BLOCK, n = m < height && k0 < width ? (width - k0 < LLMC_ACT_BLOCK ? width - k0 : LLMC_ACT_BLOCK) : 0;
            if (n)
                llmc_quantize_block(src + m * row_stride + k0, n, row + k0, &d[m * blocks + b], &sum[m * blocks + b]);
            else {
                memset(row + k0, 0, LLMC_ACT_BLOCK);
                d[m * blocks + b] = 0.0f;
                sum[m * blocks + b] = 0;
            }
        }
        if (operand) llmc_act8_operand(row, k_padded);
    }
}
#endif

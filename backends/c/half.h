/* llmc SIMD C runtime, 16-bit floats (included after runtime.h when a buffer is bf16 or f16).
 *
 * Buffers hold the bit patterns (uint16_t); tiles compute in f32. A load widens
 * (bf16: the bits shifted up; f16: F16C's vcvtph2ps where the host has it),
 * a store rounds once, to nearest even (bf16: NaN stays a quiet NaN; f16: the
 * host's vcvtps2ph, or the same rounding in software). A cast to a 16-bit type
 * inside a kernel rounds the same way and keeps the value in f32 lanes. */

#if defined(__AVX512F__) && LLMC_W == 16
static inline vi llmc_widen_u16(const uint16_t *p) { return (vi)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)); }
#elif defined(__AVX2__) && LLMC_W == 8
static inline vi llmc_widen_u16(const uint16_t *p) { return (vi)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)); }
#else
static inline vi llmc_widen_u16(const uint16_t *p) {
    vi w;
    for (int j = 0; j < LLMC_W; j++) w[j] = p[j];
    return w;
}
#endif

typedef uint16_t vh __attribute__((vector_size(LLMC_W * 2))); /* a vector's lanes as 16-bit bit patterns */
typedef uint16_t vh_u __attribute__((vector_size(LLMC_W * 2), aligned(2)));

/* bf16 <-> f32, one lane and one vector */
static inline float llmc_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline vf llmc_bf16_vec(const uint16_t *p) { return (vf)(llmc_widen_u16(p) << 16); }
static inline vi llmc_bf16_bits(vf x) {
    vi u = (vi)x;
    vi r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF;
    return vsel_b(x != x, (vi)LLMC_SPLAT(0x7FC0), r);
}
static inline vf llmc_round_bf16(vf x) { return (vf)(llmc_bf16_bits(x) << 16); }

/* f16 <-> f32: F16C where the host has it, else IEEE rounding in software */
static inline float llmc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 1023, u;
    if (exp == 31) u = sign | 0x7F800000 | (man << 13);
    else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) u = sign;
    else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 1024)) { man <<= 1; exp--; }
        u = sign | (exp << 23) | ((man & 1023) << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t llmc_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFF;
    if (a > 0x7F800000) return (uint16_t)(sign | 0x7E00);
    if (a >= 0x477FF000) return (uint16_t)(sign | 0x7C00); /* rounds past the largest half: infinity */
    if (a < 0x38800000) { /* subnormal half: scale to an integer count of 2^-24 and round to even */
        float m;
        uint32_t b = a;
        memcpy(&m, &b, sizeof m);
        return (uint16_t)(sign | (uint32_t)nearbyintf(m * 16777216.0f));
    }
    uint32_t r = a + 0xFFF + ((a >> 13) & 1) - 0x38000000;
    return (uint16_t)(sign | (r >> 13));
}
#if defined(__F16C__) && defined(__AVX512F__) && LLMC_W == 16
static inline vf llmc_f16_vec(const uint16_t *p) { return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vi llmc_f16_bits(vf x) { return (vi)_mm512_cvtepu16_epi32(_mm512_cvtps_ph((__m512)x, _MM_FROUND_TO_NEAREST_INT)); }
#elif defined(__F16C__) && LLMC_W == 8
static inline vf llmc_f16_vec(const uint16_t *p) { return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline vi llmc_f16_bits(vf x) { return (vi)_mm256_cvtepu16_epi32(_mm256_cvtps_ph((__m256)x, _MM_FROUND_TO_NEAREST_INT)); }
#else
static inline vf llmc_f16_vec(const uint16_t *p) {
    vf v;
    for (int j = 0; j < LLMC_W; j++) v[j] = llmc_f16_to_f32(p[j]);
    return v;
}
static inline vi llmc_f16_bits(vf x) {
    vi r;
    for (int j = 0; j < LLMC_W; j++) r[j] = llmc_f32_to_f16(x[j]);
    return r;
}
#endif
#if defined(__F16C__) && defined(__AVX512F__) && LLMC_W == 16
static inline vf llmc_round_f16(vf x) { return (vf)_mm512_cvtph_ps(_mm512_cvtps_ph((__m512)x, _MM_FROUND_TO_NEAREST_INT)); }
#elif defined(__F16C__) && LLMC_W == 8
static inline vf llmc_round_f16(vf x) { return (vf)_mm256_cvtph_ps(_mm256_cvtps_ph((__m256)x, _MM_FROUND_TO_NEAREST_INT)); }
#else
static inline vf llmc_round_f16(vf x) {
    vf v;
    vi bits = llmc_f16_bits(x);
    for (int j = 0; j < LLMC_W; j++) v[j] = llmc_f16_to_f32((uint16_t)bits[j]);
    return v;
}
#endif

/* tile.load / tile.store of a 16-bit view (llmc_load_vec's and llmc_store_vec's semantics), and the
 * zero-padded f32 copy of a block of one (a dot operand). */
#define LLMC_HALF_ACCESS(T)                                                                                    \
    static inline vf llmc_load_vec_##T(const uint16_t *base, long r, long c, long height, long width, long s0, \
                                       long s1, float pad) {                                                   \
        if (r < 0 || r >= height) return vsplat(pad);                                                          \
        const uint16_t *row = base + r * s0;                                                                   \
        if (s1 == 1 && c >= 0 && c + LLMC_W <= width) return llmc_##T##_vec(row + c);                          \
        if (s1 == 1) { /* a vector across the view's edge: its lanes inside are one contiguous run */          \
            long lo = c < 0 ? -c : 0, hi = width - c < LLMC_W ? width - c : LLMC_W;                             \
            uint16_t run[LLMC_W] = {0};                                                                        \
            if (hi > lo) memcpy(run + lo, row + c + lo, (size_t)(hi - lo) * sizeof *run);                     \
            return vsel(vlanes_below(hi) & ~vlanes_below(lo), llmc_##T##_vec(run), vsplat(pad));               \
        }                                                                                                      \
        vf v;                                                                                                  \
        for (int j = 0; j < LLMC_W; j++) {                                                                     \
            long cj = c + j;                                                                                   \
            v[j] = (cj >= 0 && cj < width) ? llmc_##T##_to_f32(row[cj * s1]) : pad;                            \
        }                                                                                                      \
        return v;                                                                                              \
    }                                                                                                          \
    static inline float llmc_load_scalar_##T(const uint16_t *base, long r, long c, long height, long width,    \
                                             long s0, long s1, float pad) {                                    \
        if (r < 0 || r >= height || c < 0 || c >= width) return pad;                                           \
        return llmc_##T##_to_f32(base[r * s0 + c * s1]);                                                       \
    }                                                                                                          \
    static inline void llmc_store_vec_##T(uint16_t *base, long r, long c, long height, long width, long s0,    \
                                          long s1, long lanes, vf v) {                                         \
        if (r < 0 || r >= height) return;                                                                      \
        uint16_t *row = base + r * s0;                                                                         \
        vi bits = llmc_##T##_bits(v);                                                                          \
        if (s1 == 1 && lanes == LLMC_W && c >= 0 && c + LLMC_W <= width) { /* one narrowing vector store */    \
            *(vh_u *)(row + c) = __builtin_convertvector(bits, vh);                                            \
            return;                                                                                            \
        }                                                                                                      \
        for (int j = 0; j < lanes; j++) {                                                                      \
            long cj = c + j;                                                                                   \
            if (cj >= 0 && cj < width) row[cj * s1] = (uint16_t)bits[j];                                       \
        }                                                                                                      \
    }                                                                                                          \
    static void llmc_pack_block_##T(float *dst, long ld, const uint16_t *base, long r0, long c0, long rows,    \
                                    long cols, long height, long width, long s0, long s1) {                    \
        for (long r = 0; r < rows; r++)                                                                        \
            for (long c = 0; c < ld; c += LLMC_W) {                                                            \
                vf v = c < cols ? llmc_load_vec_##T(base, r0 + r, c0 + c, height, width, s0, s1, 0.0f)         \
                                : vsplat(0.0f);                                                                \
                if (c + LLMC_W > cols) v = vsel(vlanes_below(cols - c), v, vsplat(0.0f));                      \
                vstore(dst + r * ld + c, v);                                                                   \
            }                                                                                                  \
    }                                                                                                          \
    /* the transposed block of a view with unit-stride rows (K^T): whole vectors along k, widened */            \
    LLMC_PACK_TRANSPOSED(llmc_pack_transposed_##T, uint16_t, llmc_##T##_vec, llmc_pack_block_##T)
LLMC_HALF_ACCESS(bf16)
LLMC_HALF_ACCESS(f16)

/* Products of a few rows (decode) with a 16-bit weight kept 16-bit in its panels: each vector of
 * weights is widened as it is loaded, so the step streams half the bytes of an f32 weight. */
#if LLMC_W >= 16
#define LLMC_HV 8
#else
#define LLMC_HV 4
#endif
/* c[R x n .. n + V*W) (+)= a[R x K] * b, R <= ROWS */
#define LLMC_HROWS(T, ROWS, V)                                                                                \
    static inline void llmc_hrows_##T##_##ROWS(long R, long K, const float *a, long lda, const uint16_t *b,  \
                                               long ps, long n, float *c, long ldc, int accumulate) {       \
        const uint16_t *p[V];                                                                                 \
        vf acc[ROWS][V];                                                                                      \
        _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) p[j] = LLMC_PANEL_AT(b, ps, n + j * LLMC_W);     \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                                \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++)                                              \
                acc[r][j] = accumulate && r < R ? vload(c + r * ldc + j * LLMC_W) : vsplat(0.0f);             \
        for (long k = 0; k < K; k++) {                                                                        \
            vf w[V];                                                                                          \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j += 2) /* a panel row: two vectors, one line */    \
                __builtin_prefetch(p[j] + (k + 32) * LLMC_NR);                                                \
            _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) w[j] = llmc_##T##_vec(p[j] + k * LLMC_NR);    \
            _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++) {                                          \
                if (r >= R) break;                                                                            \
                vf av = vsplat(a[r * lda + k]);                                                               \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) acc[r][j] += av * w[j];                   \
            }                                                                                                 \
        }                                                                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < ROWS; r++)                                                \
            if (r < R)                                                                                        \
                _Pragma("GCC unroll 8") for (int j = 0; j < V; j++) vstore(c + r * ldc + j * LLMC_W, acc[r][j]); \
    }
/* acc[M x N] (+)= a[M x K] * b[K x N] for M <= 8, b 16-bit panels (N a multiple of LLMC_NR) */
#define LLMC_HDOT(T)                                                                                           \
    LLMC_HROWS(T, 1, LLMC_HV)                                                                                  \
    LLMC_HROWS(T, 4, LLMC_HV / 4)                                                                              \
    static void llmc_dot_##T(long M, long N, long K, llmc_tile a, const uint16_t *b, long ps, llmc_tile c,    \
                             int accumulate) {                                                                 \
        long n = 0;                                                                                            \
        if (M == 1)                                                                                            \
            for (; n + LLMC_HV * LLMC_W <= N; n += LLMC_HV * LLMC_W)                                           \
                llmc_hrows_##T##_1(1, K, a.p, a.ld, b, ps, n, c.p + n, c.ld, accumulate);                      \
        for (; n < N; n += (LLMC_HV / 4) * LLMC_W)                                                             \
            for (long m = 0; m < M; m += 4)                                                                    \
                llmc_hrows_##T##_4(M - m < 4 ? M - m : 4, K, a.p + m * a.ld, a.ld, b, ps, n, c.p + m * c.ld + n, \
                                   c.ld, accumulate);                                                          \
    }
LLMC_HDOT(bf16)
LLMC_HDOT(f16)

/* llmc SIMD C runtime: vector types, math, tile loads/stores and the dot
 * micro-kernel. Included verbatim at the top of every generated source, after
 * `#define LLMC_W <lanes>` (8 for AVX2, 16 for AVX-512, 4 for NEON, 1 scalar) and
 * LLMC_SPLAT(s), the initializer {s, s, ...} of that many lanes.
 *
 * Vectors are GCC/Clang vector extensions, so one source serves every ISA the
 * compiler targets; -march picks the instructions. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else /* a build without OpenMP runs on one thread */
#include <time.h>
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_max_threads(void) { return 1; }
static inline double omp_get_wtime(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}
#endif

#define LLMC_NR (2 * LLMC_W) /* micro-kernel width: two vectors of columns */
/* micro-kernel height: with 16 vector registers (AVX2, NEON) 6 rows = 12
 * accumulators + 2 B vectors + 1 broadcast; AVX-512 has 32, so 8 rows. */
#if LLMC_W >= 16
#define LLMC_MR 8
#else
#define LLMC_MR 6
#endif

typedef float vf __attribute__((vector_size(LLMC_W * 4)));
typedef int32_t vi __attribute__((vector_size(LLMC_W * 4))); /* masks: -1 (true) or 0 lanes */
typedef int64_t vl __attribute__((vector_size(LLMC_W * 8))); /* integer tiles compute in int64 */
typedef float vf_u __attribute__((vector_size(LLMC_W * 4), aligned(4)));

/* A materialised tile: element (r, c) lives at p + r*ld + (c / P)*ps + c % P,
 * P being the panel width the kernel was compiled with (ps = P for row-major). A product's lhs packed
 * once per launch (ld 0, see llmc_dot) also says how many of its rows hold data (0: all of them). */
typedef struct {
    float *p;
    long ld;
    long ps;
    long rows;
} llmc_tile;
/* Where column `col` of a panel-packed operand starts (row 0). */
#define LLMC_PANEL_AT(base, ps, col) ((base) + ((col) / LLMC_NR) * (ps) + (col) % LLMC_NR)
/* Inside a loop `for (c = 0; c < extent; c += LLMC_W)`: where the extent is a multiple of the width (a constant
 * test once the extent is one), every vector of the loop is whole, which lets the compiler drop the edge tests
 * of its loads, stores and reductions. A pure condition: where it cannot be folded it generates no code. */
#define LLMC_WHOLE_VECTORS(c, extent)                                                                  \
    do {                                                                                               \
        if ((extent) % LLMC_W == 0 && (c) + LLMC_W > (extent)) __builtin_unreachable();               \
    } while (0)

/* Streaming (non-temporal) stores for outputs far larger than the caches: no
 * read-for-ownership, and they do not evict what the next kernel reads. */
#if defined(__AVX512F__) && LLMC_W == 16
#include <immintrin.h>
#define LLMC_STREAM(p, v) _mm512_stream_ps((p), (__m512)(v))
#elif defined(__AVX__) && LLMC_W == 8
#include <immintrin.h>
#define LLMC_STREAM(p, v) _mm256_stream_ps((p), (__m256)(v))
#elif defined(__SSE__) && LLMC_W == 4
#include <immintrin.h>
#define LLMC_STREAM(p, v) _mm_stream_ps((p), (__m128)(v))
#endif
#ifdef LLMC_STREAM
#define LLMC_STREAM_FENCE() _mm_sfence()
#else
#define LLMC_STREAM(p, v) (*(vf_u *)(p) = (v))
#define LLMC_STREAM_FENCE() ((void)0)
#endif

typedef int64_t vl_u __attribute__((vector_size(LLMC_W * 8), aligned(8)));
static inline vf vload(const float *p) { return *(const vf_u *)p; }
static inline void vstore(float *p, vf v) { *(vf_u *)p = v; }
static inline vf vsplat(float s) { return (vf)LLMC_SPLAT(s); }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
/* a > b ? a : b and a < b ? a : b: exactly what x86 MAXPS/MINPS compute. */
#if defined(__AVX512F__) && LLMC_W == 16
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
#elif defined(__AVX__) && LLMC_W == 8
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }
#endif
static inline vf viota(long start) {
    vf v;
    for (int j = 0; j < LLMC_W; j++) v[j] = (float)(start + j);
    return v;
}
static inline vl viota_l(long start) {
    vl v;
    for (int j = 0; j < LLMC_W; j++) v[j] = start + j;
    return v;
}
static inline vl vsplat_l(int64_t s) { return (vl)LLMC_SPLAT(s); }
static inline vi vsplat_b(int s) { return (vi)LLMC_SPLAT(s ? -1 : 0); }
static inline vl vsel_l(vi m, vl a, vl b) {
    vl wide = __builtin_convertvector(m, vl);
    return (wide & a) | (~wide & b);
}
static inline vi vsel_b(vi m, vi a, vi b) { return (m & a) | (~m & b); }

/* A per-thread buffer of at least `bytes` (64-byte aligned), grown on demand and kept for the next call:
 * the operand copies a matrix unit reads (int8 / bf16 rows) are larger than a worker thread's stack allows. */
static void *llmc_thread_buffer(void **buffer, size_t *capacity, size_t bytes) {
    if (bytes > *capacity) {
        free(*buffer);
        *buffer = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!*buffer) abort();
        *capacity = bytes;
    }
    return *buffer;
}
#define LLMC_MASK_L(x) __builtin_convertvector((x), vi) /* an int64 comparison as a mask */
static inline vf vfloor(vf x) {
    vf r;
    for (int j = 0; j < LLMC_W; j++) r[j] = floorf(x[j]);
    return r;
}
static inline vl vfloordiv_l(vl a, vl b) { /* rounds toward -inf, as torch's floor_divide */
    vl r;
    for (int j = 0; j < LLMC_W; j++) {
        int64_t q = b[j] ? a[j] / b[j] : 0;
        r[j] = (b[j] && (a[j] % b[j]) && ((a[j] < 0) != (b[j] < 0))) ? q - 1 : q;
    }
    return r;
}
static inline vl vrem_l(vl a, vl b) { /* the sign of the divisor, as torch's remainder */
    vl r;
    for (int j = 0; j < LLMC_W; j++) {
        int64_t m = b[j] ? a[j] % b[j] : 0;
        r[j] = (m && ((m < 0) != (b[j] < 0))) ? m + b[j] : m;
    }
    return r;
}
static inline vl vabs_l(vl x) { return vsel_l(LLMC_MASK_L(x < 0), -x, x); }
static inline vl vmax_l(vl a, vl b) { return vsel_l(LLMC_MASK_L(a > b), a, b); }
static inline vl vmin_l(vl a, vl b) { return vsel_l(LLMC_MASK_L(a < b), a, b); }
static inline int64_t vhsum_l(vl v) {
    int64_t s = 0;
    for (int j = 0; j < LLMC_W; j++) s += v[j];
    return s;
}
static inline int64_t vhmax_l(vl v) {
    int64_t s = v[0];
    for (int j = 1; j < LLMC_W; j++) s = v[j] > s ? v[j] : s;
    return s;
}
/* argmax across lanes: the largest value, the smallest position among equals (torch's first maximum). */
static inline int64_t llmc_argmax_lanes(vf best, vl at) {
    float value = best[0];
    int64_t where = at[0];
    for (int j = 1; j < LLMC_W; j++)
        if (best[j] > value || (best[j] == value && at[j] < where)) {
            value = best[j];
            where = at[j];
        }
    return where;
}
static inline vi vlanes_below(long n) { /* lanes j < n set */
    vi m;
    for (int j = 0; j < LLMC_W; j++) m[j] = j < n ? -1 : 0;
    return m;
}
static inline float vhsum(vf v) {
    float s = 0.0f;
    for (int j = 0; j < LLMC_W; j++) s += v[j];
    return s;
}
static inline float vhmax(vf v) {
    float s = v[0];
    for (int j = 1; j < LLMC_W; j++) s = v[j] > s ? v[j] : s;
    return s;
}

#if LLMC_W == 8 || LLMC_W == 16
/* exp with a table of 2^(j/W), j < W, one vpermps away: x = (W i + j) ln2/W + r, |r| <= ln2/(2W), and
 * e^x = 2^i * 2^(j/W) * e^r with a degree-3 polynomial for e^r - 1 (minimax on that interval, relative
 * error 2.5e-8 for W = 8). Max error 1.14 ulp against 1.02 for the degree-6 form below, in 14 vector
 * instructions instead of 20: the exp pass is what softmax, attention and SiLU/GELU compute most.
 * The rounding constant carries 127 W, so that the bits of 2^i are the shifted constant's bits
 * (i + 127 = those bits' (n + 127 W) / W, which fits the exponent field with no subtraction) and the
 * table index its low bits (vpermps reads only those). Inputs are clamped to [-88, 88.37]: below
 * -87.3 the result would be denormal and i + 127 is 0, so the scale's bits are 0 and the result is
 * exactly 0 (masked scores never make denormals, with no compare and mask). */
#if LLMC_W == 8
#define LLMC_EXP_TABLE {1.0f, 1.0905077326652577f, 1.1892071150027210f, 1.2968395546510096f, 1.4142135623730950f, \
                        1.5422108254079408f, 1.6817928305074290f, 1.8340080864093424f}
#define LLMC_EXP_C2 5.0006479025e-01f /* (c1 rounds to 1) */
#define LLMC_EXP_C3 1.6664297879e-01f
#define LLMC_EXP_SHIFT 20 /* 23 - log2(W) */
#else
#define LLMC_EXP_TABLE {1.0f, 1.0442737824274138f, 1.0905077326652577f, 1.1387886347566916f, 1.1892071150027210f, \
                        1.2418578120734840f, 1.2968395546510096f, 1.3542555469368927f, 1.4142135623730950f,      \
                        1.4768261459394993f, 1.5422108254079408f, 1.6104903319492543f, 1.6817928305074290f,      \
                        1.7562521603732995f, 1.8340080864093424f, 1.9152065613971474f}
#define LLMC_EXP_C2 5.0001621246e-01f
#define LLMC_EXP_C3 1.6666074097e-01f
#define LLMC_EXP_SHIFT 19
#endif
/* 2^(j/W) for the low log2(W) bits of each lane of j: one vpermps where the ISA has it (GCC's
 * __builtin_shuffle would do, but clang has no variable-index form), a lane loop otherwise. */
static inline vf llmc_exp_table(vi j) {
    static const vf table = LLMC_EXP_TABLE;
#if defined(__AVX512F__) && LLMC_W == 16
    return (vf)_mm512_permutexvar_ps((__m512i)j, (__m512)table);
#elif defined(__AVX2__) && LLMC_W == 8
    return (vf)_mm256_permutevar8x32_ps((__m256)table, (__m256i)j);
#else
    vf t;
    for (int l = 0; l < LLMC_W; l++) t[l] = table[j[l] & (LLMC_W - 1)];
    return t;
#endif
}
static inline vf vexp(vf x) {
    vf xc = vmin(vmax(x, vsplat(-88.0f)), vsplat(88.37f));
    /* rint via 1.5 * 2^23: n + 127 W in the low bits */
    vf shifted = xc * (LLMC_W * 1.44269504088896341f) + (12582912.0f + 127.0f * LLMC_W);
    vf n = shifted - (12582912.0f + 127.0f * LLMC_W);
    vf r = xc - n * (0.693359375f / LLMC_W) + n * (2.12194440e-4f / LLMC_W); /* ln2/W in two parts */
    vf q = (vsplat(LLMC_EXP_C3) * r + LLMC_EXP_C2) * r * r + r;          /* e^r - 1 */
    vi bits = (vi)shifted;
    vf t = llmc_exp_table(bits);                                        /* 2^(j/W) */
    vi scale = (bits << LLMC_EXP_SHIFT) & 0x7F800000;                   /* the bits of 2^i */
    return (t * q + t) * (vf)scale;
}
#else
/* exp: round-to-nearest range reduction (x = n ln2 + r, |r| <= ln2/2) and
 * Cephes' degree-6 polynomial, max rel. error ~1 ulp. Inputs below -87.68
 * give exactly 0: clamped to -88, n is -127 and the scale 2^n's bits are 0, so
 * masked scores (-inf) never produce denormals, without a compare and mask. */
static inline vf vexp(vf x) {
    vf xc = vmin(vmax(x, vsplat(-88.0f)), vsplat(88.37f));
    vf shifted = xc * 1.44269504088896341f + 12582912.0f; /* rint via 1.5 * 2^23: n in the low bits */
    vf n = shifted - 12582912.0f;
    vf r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    vf y = vsplat(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    vi e = ((vi)shifted - (0x4B400000 - 127)) << 23; /* the bits of 2^n, with no conversion */
    return y * (vf)e;
}
#endif
/* The activations' exponentials have their arguments clamped at -80: 1 / (1 + e^-x) is 1 / 2.5e38 = 4e-39
 * below x = -88, a denormal, and an operation on a denormal operand takes a microcode assist (a bf16 linear
 * with a tanh GELU ran 25% slower on Zen 5 when a quarter of its pre-activations were below -10: the GELU's
 * sigmoid argument is 2u, u ~ 0.0357 x^3). At -80 the terms stay normal (e^-80 = 1.8e-35) and the results
 * differ from the exact ones by less than that: sigmoid(x) is 1.8e-35 below x = -80, where it is smaller. */
#define LLMC_ACTIVATION_EXP_FLOOR -80.0f
static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(vmin(-x, vsplat(-LLMC_ACTIVATION_EXP_FLOOR)))); }
static inline vf vgelu_tanh(vf x) { /* 0.5x(1+tanh(u)) == x*sigmoid(2u) */
    vf u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x * vsigmoid(2.0f * u);
}
#define LLMC_LANEWISE(name, fn)                                   \
    static inline vf name(vf x) {                                 \
        vf r;                                                     \
        for (int j = 0; j < LLMC_W; j++) r[j] = fn(x[j]);         \
        return r;                                                 \
    }
/* GELU with erf (torch's default), x Phi(x) with Phi(x) = erfc(z) / 2 at z = -x / sqrt(2), erfc from Numerical
 * Recipes' erfcc (a Chebyshev fit, relative error below 1.2e-7 in double): t = 1 / (1 + |z| / 2),
 * erfc(|z|) = t e^(P(t) - z^2), erfc(-|z|) = 2 - erfc(|z|). Against torch's GELU in double it is within
 * 3.9e-7 absolute and 2.3e-6 relative above x = -5, closer than torch's own f32 GELU, and relative accuracy
 * holds in the negative tail where 1 + erf(x / sqrt(2)) would cancel (down to x = -12, where the exponent
 * meets the activations' floor). One vexp and one division a vector:
 * libm's erff lane by lane made a 768x3072 linear 2-3x slower than the same linear without it. */
static inline vf vgelu_erf(vf x) {
    vf z = x * -0.70710678118654752f;
    vf a = vmax(z, -z);
    vf t = 1.0f / (1.0f + 0.5f * a);
    vf p = vsplat(0.17087277f);
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    vf tail = t * vexp(vmax(p - a * a, vsplat(LLMC_ACTIVATION_EXP_FLOOR)));
    return x * 0.5f * vsel(z < 0.0f, 2.0f - tail, tail);
}
LLMC_LANEWISE(vsqrt, sqrtf)
LLMC_LANEWISE(vlog, logf)
/* tanh without a call per lane: Cephes' odd polynomial below |x| = 0.625 (where the exponential form would
 * cancel), (1 - e^-2|x|) / (1 + e^-2|x|) with the sign above; max rel. error ~2 ulp. GPT-2's and Phi's GELU
 * use it. */
static inline vf vtanh(vf x) {
    vf a = vmax(x, -x);
    vf z = x * x;
    vf p = vsplat(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    vf small = p * z * x + x;
    /* at most 1, where 1 - 2 / (e^2|x| + 1) divided by up to e^88 into a denormal */
    vf e = vexp(vmax(-2.0f * a, vsplat(LLMC_ACTIVATION_EXP_FLOOR)));
    vf big = (1.0f - e) / (1.0f + e);
    big = vsel(x < 0.0f, -big, big);
    return vsel(a < 0.625f, small, big);
}
LLMC_LANEWISE(vsin, sinf)
LLMC_LANEWISE(vcos, cosf)
LLMC_LANEWISE(vabs, fabsf)
static inline vf vrsqrt(vf x) { return 1.0f / vsqrt(x); }
static inline vf vpow(vf x, vf y) {
    vf r;
    for (int j = 0; j < LLMC_W; j++) r[j] = powf(x[j], y[j]);
    return r;
}

/* One vector of a 2-D strided view, lanes at columns c..c+W-1 of row r;
 * lanes outside [0,height) x [0,width) read `pad` (tile.load semantics). */
static inline vf llmc_load_vec(const float *base, long r, long c, long height, long width,
                               long s0, long s1, float pad) {
    /* wholly outside: the half of a rotary embedding's concatenation that the other half's view does not cover */
    if (r < 0 || r >= height || c >= width || c + LLMC_W <= 0) return vsplat(pad);
    const float *row = base + r * s0;
    if (s1 == 1 && c >= 0 && c + LLMC_W <= width) return vload(row + c);
    if (s1 == 0 && c >= 0 && c + LLMC_W <= width) return vsplat(row[0]);
    if (s1 == 1) { /* a vector across the view's edge: its lanes inside are one contiguous run */
        long lo = c < 0 ? -c : 0, hi = width - c < LLMC_W ? width - c : LLMC_W;
        float run[LLMC_W] = {0};
        if (hi > lo) memcpy(run + lo, row + c + lo, (size_t)(hi - lo) * sizeof *run);
        return vsel(vlanes_below(hi) & ~vlanes_below(lo), vload(run), vsplat(pad));
    }
    vf v;
    for (int j = 0; j < LLMC_W; j++) {
        long cj = c + j;
        v[j] = (cj >= 0 && cj < width) ? row[cj * s1] : pad;
    }
    return v;
}

/* Loads and stores of integer and bool buffers: int64 / int32 buffers read as int64 lanes, bool
 * (one byte per element, as torch.bool) as mask lanes; lanes outside the view read 0 / false. */
#define LLMC_TYPED_ACCESS(suffix, ctype, vtype, from_lane, to_lane)                                   \
    static inline vtype llmc_load_vec_##suffix(const ctype *base, long r, long c, long height,       \
                                               long width, long s0, long s1) {                       \
        vtype v;                                                                                      \
        for (int j = 0; j < LLMC_W; j++) {                                                            \
            long cj = c + j;                                                                          \
            int inside = r >= 0 && r < height && cj >= 0 && cj < width;                               \
            v[j] = inside ? from_lane(base[r * s0 + cj * s1]) : 0;                                    \
        }                                                                                             \
        return v;                                                                                     \
    }                                                                                                 \
    static inline void llmc_store_vec_##suffix(ctype *base, long r, long c, long height, long width, \
                                               long s0, long s1, long lanes, vtype v) {              \
        if (r < 0 || r >= height) return;                                                             \
        for (int j = 0; j < lanes; j++) {                                                             \
            long cj = c + j;                                                                          \
            if (cj >= 0 && cj < width) base[r * s0 + cj * s1] = (ctype)to_lane(v[j]);                 \
        }                                                                                             \
    }
#define LLMC_SAME(x) (x)
#define LLMC_BOOL_IN(x) ((x) ? -1 : 0)
#define LLMC_BOOL_OUT(x) ((x) != 0)
LLMC_TYPED_ACCESS(l, int64_t, vl, LLMC_SAME, LLMC_SAME)
LLMC_TYPED_ACCESS(i32, int32_t, vl, LLMC_SAME, LLMC_SAME)
LLMC_TYPED_ACCESS(b, uint8_t, vi, LLMC_BOOL_IN, LLMC_BOOL_OUT)

/* The row a pipelined pass reads ahead (a softmax's or a norm's next row), kept inside the view: past its last row
 * the step reads the last row again instead of padding, and its result is dropped. A row known to be inside
 * lets llmc_load_vec's row test fold away, which the vector loop otherwise makes for every vector (a softmax's
 * exp pass: 0.94-0.96x its time on Zen 3, in rotation). */
static inline long llmc_row_within(long r, long height) { return r < height ? (r < 0 ? 0 : r) : height - 1; }

/* tile.gather's row: a negative index counts from the end; one out of range sets the forward's
 * status to this kernel's code (reported by the caller) and reads row 0 instead. */
/* A scatter's target row, or -1 (nothing is written) when the index is out of range. */
static inline long llmc_scatter_row(int64_t index, long height, int *status, int code) {
    if (index < 0) index += height;
    if (index < 0 || index >= height) {
        __atomic_store_n(status, code, __ATOMIC_RELAXED);
        return -1;
    }
    return (long)index;
}

static inline long llmc_gather_row(int64_t index, long height, int *status, int code) {
    if (index < 0) index += height;
    if (index < 0 || index >= height) {
        __atomic_store_n(status, code, __ATOMIC_RELAXED);
        return 0;
    }
    return (long)index;
}

/* The lanes of a store across a view's edge or along a strided row, one at a time. Out of line: inlined, its
 * lanes would be read from memory, and the hot loop would store every vector to the stack first. */
static __attribute__((noinline, cold)) void llmc_store_lanes(float *row, long c, long width, long s1, long lanes,
                                                            vf v) {
    for (int j = 0; j < lanes; j++) {
        long cj = c + j;
        if (cj >= 0 && cj < width) row[cj * s1] = v[j];
    }
}

static inline void llmc_store_vec(float *base, long r, long c, long height, long width, long s0,
                                  long s1, long lanes, vf v, int stream) {
    if (r < 0 || r >= height) return;
    float *row = base + r * s0;
    if (s1 == 1 && lanes == LLMC_W && c >= 0 && c + LLMC_W <= width) {
        if (stream && ((uintptr_t)(row + c) & (LLMC_W * 4 - 1)) == 0)
            LLMC_STREAM(row + c, v);
        else
            vstore(row + c, v);
        return;
    }
    llmc_store_lanes(row, c, width, s1, lanes, v);
}

/* Copy a rows x cols block of a strided view into a row-major tile buffer with
 * `ld` columns, padding outside the view (and the columns up to ld) with zero. */
static void llmc_pack_block(float *dst, long ld, const float *base, long r0, long c0, long rows,
                            long cols, long height, long width, long s0, long s1) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < ld; c += LLMC_W) {
            vf v = c < cols ? llmc_load_vec(base, r0 + r, c0 + c, height, width, s0, s1, 0.0f)
                            : vsplat(0.0f);
            if (c + LLMC_W > cols) v = vsel(vlanes_below(cols - c), v, vsplat(0.0f));
            vstore(dst + r * ld + c, v);
        }
}

/* Whole 8x8 blocks of a transposed pack go through registers (8 loads, 24 shuffles, 8 stores) instead of
 * 64 scalar stores (attention's K^T copy on AVX2). */
#if defined(__AVX2__) && LLMC_W == 8
static inline void llmc_transpose8(vf v[8]) { /* v[j][i] becomes v[i][j] */
    __m256 t0 = _mm256_unpacklo_ps((__m256)v[0], (__m256)v[1]), t1 = _mm256_unpackhi_ps((__m256)v[0], (__m256)v[1]);
    __m256 t2 = _mm256_unpacklo_ps((__m256)v[2], (__m256)v[3]), t3 = _mm256_unpackhi_ps((__m256)v[2], (__m256)v[3]);
    __m256 t4 = _mm256_unpacklo_ps((__m256)v[4], (__m256)v[5]), t5 = _mm256_unpackhi_ps((__m256)v[4], (__m256)v[5]);
    __m256 t6 = _mm256_unpacklo_ps((__m256)v[6], (__m256)v[7]), t7 = _mm256_unpackhi_ps((__m256)v[6], (__m256)v[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = (vf)_mm256_permute2f128_ps(s0, s4, 0x20); v[1] = (vf)_mm256_permute2f128_ps(s1, s5, 0x20);
    v[2] = (vf)_mm256_permute2f128_ps(s2, s6, 0x20); v[3] = (vf)_mm256_permute2f128_ps(s3, s7, 0x20);
    v[4] = (vf)_mm256_permute2f128_ps(s0, s4, 0x31); v[5] = (vf)_mm256_permute2f128_ps(s1, s5, 0x31);
    v[6] = (vf)_mm256_permute2f128_ps(s2, s6, 0x31); v[7] = (vf)_mm256_permute2f128_ps(s3, s7, 0x31);
}
#define LLMC_TRANSPOSE_BLOCKS(load)                                                                        \
        for (; n0 + 8 <= cols; n0 += 8)                                                                    \
            for (long k = 0; k < rows; k += 8) {                                                           \
                vf v[8];                                                                                   \
                for (int j = 0; j < 8; j++) v[j] = load(base + (c0 + n0 + j) * s1 + r0 + k);              \
                llmc_transpose8(v);                                                                        \
                for (int j = 0; j < 8; j++) vstore(dst + (k + j) * ld + n0, v[j]);                        \
            }
#else
#define LLMC_TRANSPOSE_BLOCKS(load)
#endif

/* The transposed block of a view whose rows are unit-stride (s0 == 1, e.g. K^T
 * of attention): dst[k][n] = view(r0 + k, c0 + n), zero outside. Reads whole
 * source vectors along k instead of gathering element by element. A macro: half.h
 * makes the 16-bit ones (each vector widened as it is read). */
#define LLMC_PACK_TRANSPOSED(name, ctype, load, fallback)                                                 \
    static void name(float *dst, long ld, const ctype *base, long r0, long c0, long rows, long cols,        \
                     long height, long width, long s1) {                                                     \
        if (r0 < 0 || c0 < 0 || r0 + rows > height || c0 + cols > width || rows % LLMC_W) {                \
            fallback(dst, ld, base, r0, c0, rows, cols, height, width, 1, s1);                             \
            return;                                                                                        \
        }                                                                                                  \
        for (long r = 0; r < rows; r++) memset(dst + r * ld + cols, 0, (size_t)(ld - cols) * sizeof(float)); \
        long n0 = 0;                                                                                       \
        LLMC_TRANSPOSE_BLOCKS(load)                                                                        \
        for (long n = n0; n < cols; n++) {                                                                 \
            const ctype *src = base + (c0 + n) * s1 + r0;                                                  \
            for (long k = 0; k < rows; k += LLMC_W) {                                                      \
                vf v = load(src + k);                                                                      \
                for (int j = 0; j < LLMC_W; j++) dst[(k + j) * ld + n] = v[j];                             \
            }                                                                                              \
        }                                                                                                  \
    }
LLMC_PACK_TRANSPOSED(llmc_pack_transposed, float, vload, llmc_pack_block)

/* acc[M x N] (+)= a[M x K] * b[K x N] with b given transposed (bt[n][k], row
 * step bt.ld): dot products along contiguous k. For the few rows of a decode
 * step this streams K straight from the cache, with no transposing copy.
 * LLMC_NT_ROWS dot products at a time, as independent chains of FMAs: one at a
 * time, each waited on its own chain and on a horizontal sum, and that latency
 * set the speed of a decode step's attention (on AVX2 the 8 sums come out of
 * one tree of horizontal adds as a vector: 2.4x faster for a 64x64 tile). The
 * rows ahead are prefetched: with the cache beyond the LLC, GPT-2's decode
 * attention took 0.93x the time on a Zen 3 host (the same with it in cache). */
#if defined(__AVX2__) && LLMC_W == 8
#define LLMC_NT_ROWS 8
static inline vf llmc_hsum8(const vf acc[8]) { /* lane j: the sum of acc[j]'s lanes */
    __m256 h01 = _mm256_hadd_ps((__m256)acc[0], (__m256)acc[1]), h23 = _mm256_hadd_ps((__m256)acc[2], (__m256)acc[3]);
    __m256 h45 = _mm256_hadd_ps((__m256)acc[4], (__m256)acc[5]), h67 = _mm256_hadd_ps((__m256)acc[6], (__m256)acc[7]);
    __m256 low = _mm256_hadd_ps(h01, h23), high = _mm256_hadd_ps(h45, h67); /* per 128-bit half */
    return (vf)_mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
}
#else
#define LLMC_NT_ROWS 4
#endif
static void llmc_dot_nt(long M, long N, long K, llmc_tile a, llmc_tile bt, llmc_tile c, int accumulate) {
    long vk = K / LLMC_W * LLMC_W;
    for (long m = 0; m < M; m++) {
        const float *am = a.p + m * a.ld;
        float *cm = c.p + m * c.ld;
        long n = 0;
        for (; n + LLMC_NT_ROWS <= N; n += LLMC_NT_ROWS) {
            vf acc[LLMC_NT_ROWS];
            _Pragma("GCC unroll 8") for (int j = 0; j < LLMC_NT_ROWS; j++) acc[j] = vsplat(0.0f);
            for (long k = 0; k < vk; k += LLMC_W) {
                vf av = vload(am + k);
                _Pragma("GCC unroll 8") for (int j = 0; j < LLMC_NT_ROWS; j++) acc[j] += av * vload(bt.p + (n + j) * bt.ld + k);
            }
            /* the rows two blocks on, a line at a time, for the first row: K's rows are a stream from memory
             * (a decode step's cache), and the next tile's rows follow this one's */
            for (long line = 0; m == 0 && line < LLMC_NT_ROWS * K; line += 64 / (long)sizeof(float))
                __builtin_prefetch(bt.p + (n + 2 * LLMC_NT_ROWS + line / K) * bt.ld + line % K);
            float sums[LLMC_NT_ROWS];
#if LLMC_NT_ROWS == 8
            vstore(sums, llmc_hsum8(acc));
#else
            for (int j = 0; j < LLMC_NT_ROWS; j++) sums[j] = vhsum(acc[j]);
#endif
            for (int j = 0; j < LLMC_NT_ROWS; j++) {
                const float *bn = bt.p + (n + j) * bt.ld;
                for (long k = vk; k < K; k++) sums[j] += am[k] * bn[k];
                cm[n + j] = accumulate ? cm[n + j] + sums[j] : sums[j];
            }
        }
        for (; n < N; n++) {
            const float *bn = bt.p + n * bt.ld;
            vf acc = vsplat(0.0f);
            for (long k = 0; k < vk; k += LLMC_W) acc += vload(am + k) * vload(bn + k);
            float sum = vhsum(acc);
            for (long k = vk; k < K; k++) sum += am[k] * bn[k];
            cm[n] = accumulate ? cm[n] + sum : sum;
        }
    }
}

/* C[MR x NR] (+)= A[MR x K] * B[K x NR]: A row-major (lda), B as two column
 * vectors per k (b0, b1, row step ldb). The accumulators live in registers for
 * the whole K loop. */
#define LLMC_UKERNEL(MR)                                                                     \
    static inline void llmc_ukernel_##MR(long K, const float *a, long lda, const float *b0,  \
                                         const float *b1, long ldb, float *c, long ldc,      \
                                         int accumulate) {                                   \
        vf acc0[MR], acc1[MR];                                                               \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                               \
            acc0[i] = accumulate ? vload(c + i * ldc) : vsplat(0.0f);                        \
            acc1[i] = accumulate ? vload(c + i * ldc + LLMC_W) : vsplat(0.0f);               \
        }                                                                                    \
        for (long k = 0; k < K; k++) {                                                       \
            vf bv0 = vload(b0 + k * ldb), bv1 = vload(b1 + k * ldb);                         \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                           \
                vf av = vsplat(a[i * lda + k]);                                              \
                acc0[i] += av * bv0;                                                         \
                acc1[i] += av * bv1;                                                         \
            }                                                                                \
        }                                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                               \
            vstore(c + i * ldc, acc0[i]);                                                    \
            vstore(c + i * ldc + LLMC_W, acc1[i]);                                           \
        }                                                                                    \
    }
LLMC_UKERNEL(1)
LLMC_UKERNEL(2)
LLMC_UKERNEL(3)
LLMC_UKERNEL(4)
LLMC_UKERNEL(5)
LLMC_UKERNEL(6)
LLMC_UKERNEL(7)
LLMC_UKERNEL(8)

#if LLMC_MR == 8
#define LLMC_UKERNEL_MR llmc_ukernel_8
#else
#define LLMC_UKERNEL_MR llmc_ukernel_6
#endif

/* The micro-kernel on a packed A: LLMC_MR rows k-major (row i at k: a[k * LLMC_MR + i]), one contiguous
 * stream. Rows of an A view lie a row stride apart (4 KB for K = 1024): read in place, the 8 rows of a
 * block fall in the same L1 sets as each other, and with the B panel there they evict each other. */
static inline __attribute__((always_inline)) void llmc_ukernel_packed_steps(long K, const float *a, const float *b0,
                                                                            const float *b1, long ldb, vf *acc0,
                                                                            vf *acc1) {
    _Pragma("GCC unroll 4") for (long k = 0; k < K; k++) {
        vf bv0 = vload(b0 + k * ldb), bv1 = vload(b1 + k * ldb);
        _Pragma("GCC unroll 8") for (int i = 0; i < LLMC_MR; i++) {
            vf av = vsplat(a[k * LLMC_MR + i]);
            acc0[i] += av * bv0;
            acc1[i] += av * bv1;
        }
    }
}

/* The k loop is unrolled 4 times, and a B that is one panel of 2 * LLMC_W columns (a weight packed at
 * compile time) gets its own copy of it, in which the row step is a constant: its loads take immediate
 * offsets instead of a pointer stepped by a run-time stride. Together 0.95x the time of the LLaMA block and
 * 0.97-0.99x of GEMM 1024^3 on a Zen 3 host (in rotation, against an identical build as control). */
static inline void llmc_ukernel_packed(long K, const float *a, const float *b0, const float *b1, long ldb, float *c,
                                       long ldc, int accumulate) {
    vf acc0[LLMC_MR], acc1[LLMC_MR];
    _Pragma("GCC unroll 8") for (int i = 0; i < LLMC_MR; i++) {
        acc0[i] = accumulate ? vload(c + i * ldc) : vsplat(0.0f);
        acc1[i] = accumulate ? vload(c + i * ldc + LLMC_W) : vsplat(0.0f);
    }
    if (ldb == 2 * LLMC_W && b1 == b0 + LLMC_W)
        llmc_ukernel_packed_steps(K, a, b0, b0 + LLMC_W, 2 * LLMC_W, acc0, acc1);
    else
        llmc_ukernel_packed_steps(K, a, b0, b1, ldb, acc0, acc1);
    _Pragma("GCC unroll 8") for (int i = 0; i < LLMC_MR; i++) {
        vstore(c + i * ldc, acc0[i]);
        vstore(c + i * ldc + LLMC_W, acc1[i]);
    }
}

/* The first R rows of a packed block (the block that holds a matrix's last rows: 128 rows in blocks of 6
 * end with 2), the zeros past them not computed. Their 2R accumulator chains alone would wait on the FMA
 * latency (4 cycles, 2 FMAs a cycle: 8 chains keep the units busy), so S sets of them take alternate k and
 * are summed at the end: a 2-row block costs a third of a whole one instead of two thirds. */
static inline __attribute__((always_inline)) void llmc_ukernel_packed_part(const int R, const int S, long K,
                                                                           const float *a, const float *b0,
                                                                           const float *b1, long ldb, float *c,
                                                                           long ldc, int accumulate) {
    vf acc0[4][LLMC_MR], acc1[4][LLMC_MR];
    _Pragma("GCC unroll 4") for (int s = 0; s < S; s++)
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {
            acc0[s][i] = accumulate && s == 0 ? vload(c + i * ldc) : vsplat(0.0f);
            acc1[s][i] = accumulate && s == 0 ? vload(c + i * ldc + LLMC_W) : vsplat(0.0f);
        }
    long k = 0;
    for (; k + S <= K; k += S)
        _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
            vf bv0 = vload(b0 + (k + s) * ldb), bv1 = vload(b1 + (k + s) * ldb);
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {
                vf av = vsplat(a[(k + s) * LLMC_MR + i]);
                acc0[s][i] += av * bv0;
                acc1[s][i] += av * bv1;
            }
        }
    for (; k < K; k++) {
        vf bv0 = vload(b0 + k * ldb), bv1 = vload(b1 + k * ldb);
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {
            vf av = vsplat(a[k * LLMC_MR + i]);
            acc0[0][i] += av * bv0;
            acc1[0][i] += av * bv1;
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) {
        _Pragma("GCC unroll 4") for (int s = 1; s < S; s++) {
            acc0[0][i] += acc0[s][i];
            acc1[0][i] += acc1[s][i];
        }
        vstore(c + i * ldc, acc0[0][i]);
        vstore(c + i * ldc + LLMC_W, acc1[0][i]);
    }
}

/* llmc_ukernel_packed on the first `rows` (< LLMC_MR) rows of a block. */
static void llmc_ukernel_packed_rows(int rows, long K, const float *a, const float *b0, const float *b1, long ldb,
                                     float *c, long ldc, int accumulate) {
    switch (rows) {
    case 1: llmc_ukernel_packed_part(1, 4, K, a, b0, b1, ldb, c, ldc, accumulate); break;
    case 2: llmc_ukernel_packed_part(2, 2, K, a, b0, b1, ldb, c, ldc, accumulate); break;
    case 3: llmc_ukernel_packed_part(3, 2, K, a, b0, b1, ldb, c, ldc, accumulate); break;
    case 4: llmc_ukernel_packed_part(4, 1, K, a, b0, b1, ldb, c, ldc, accumulate); break;
    case 5: llmc_ukernel_packed_part(5, 1, K, a, b0, b1, ldb, c, ldc, accumulate); break;
#if LLMC_MR > 6 /* (with 6-row blocks these would index past the accumulators, and GCC says so) */
    case 6: llmc_ukernel_packed_part(6, 1, K, a, b0, b1, ldb, c, ldc, accumulate); break;
    case 7: llmc_ukernel_packed_part(7, 1, K, a, b0, b1, ldb, c, ldc, accumulate); break;
#endif
    default: break;
    }
}

/* LLMC_MR rows, row_stride apart, of K columns k-major, as llmc_ukernel_packed reads them. */
static inline void llmc_pack_row_block(float *dst, const float *rows, long row_stride, long K) {
    for (long k = 0; k < K; k++)
        _Pragma("GCC unroll 8") for (int i = 0; i < LLMC_MR; i++) dst[k * LLMC_MR + i] = rows[i * row_stride + k];
}

/* A's first `blocks` blocks of LLMC_MR rows packed for llmc_ukernel_packed, block after block, into a
 * per-thread buffer. */
static const float *llmc_pack_rows(llmc_tile a, long blocks, long K) {
    static __thread void *buffer;
    static __thread size_t capacity;
    float *p = llmc_thread_buffer(&buffer, &capacity, (size_t)(blocks * K * LLMC_MR) * sizeof(float));
    for (long b = 0; b < blocks; b++) llmc_pack_row_block(p + b * K * LLMC_MR, a.p + b * LLMC_MR * a.ld, a.ld, K);
    return p;
}

/* A product's lhs packed once per launch for all of its programs (shared_lhs.py): rows in blocks of LLMC_MR, each
 * block k-major over the whole of k_padded (element (r, k) at p[(r / LLMC_MR) * k_padded * LLMC_MR + k * LLMC_MR +
 * r % LLMC_MR]), zeros outside height x width. Every thread of the region calls it: the blocks are shared out
 * and the barrier that ends the loop lets each program read them all. The blocks after the last that holds a
 * row (rows_padded rounds up to whole row tiles) are left as they are: a packed tile says how many of its rows
 * hold data, and llmc_dot reads no block past them (zeroing them cost LLaMA's block 2% on a Zen 3 host). */
static void llmc_pack_lhs(float *p, const float *src, long height, long width, long row_stride, long k_padded) {
    long blocks = (height + LLMC_MR - 1) / LLMC_MR;
    #pragma omp for schedule(static)
    for (long b = 0; b < blocks; b++) {
        float *block = p + b * k_padded * LLMC_MR;
        const float *rows = src + b * LLMC_MR * row_stride;
        if ((b + 1) * LLMC_MR <= height) {
            llmc_pack_row_block(block, rows, row_stride, width);
        } else {
            for (long k = 0; k < width; k++)
                for (int i = 0; i < LLMC_MR; i++) block[k * LLMC_MR + i] = b * LLMC_MR + i < height ? rows[i * row_stride + k] : 0.0f;
        }
        memset(block + width * LLMC_MR, 0, (size_t)((k_padded - width) * LLMC_MR) * sizeof(float));
    }
}

/* One row against LLMC_GEMV_VECTORS column vectors that may sit in different panels: a decode
 * step's matrix-vector product is bound by how many weight lines are in flight, so it reads that
 * many panel streams at once (one stream per call streams at a fraction of the memory bandwidth). */
#define LLMC_GEMV_VECTORS 8
static inline void llmc_gemv_wide(long K, const float *a, llmc_tile b, long panel, long n, float *c,
                                  int accumulate) {
    const float *p[LLMC_GEMV_VECTORS];
    vf acc[LLMC_GEMV_VECTORS];
    _Pragma("GCC unroll 8") for (int j = 0; j < LLMC_GEMV_VECTORS; j++) {
        long col = n + j * LLMC_W;
        p[j] = b.p + (col / panel) * b.ps + col % panel;
        acc[j] = accumulate ? vload(c + j * LLMC_W) : vsplat(0.0f);
    }
    for (long k = 0; k < K; k++) {
        vf av = vsplat(a[k]);
        _Pragma("GCC unroll 8") for (int j = 0; j < LLMC_GEMV_VECTORS; j++) {
            __builtin_prefetch(p[j] + (k + 24) * b.ld); /* ~3 KB ahead in each stream */
            acc[j] += av * vload(p[j] + k * b.ld);
        }
    }
    _Pragma("GCC unroll 8") for (int j = 0; j < LLMC_GEMV_VECTORS; j++) vstore(c + j * LLMC_W, acc[j]);
}

/* Up to four rows against four column vectors from two panels: a decode batch's product (a few
 * rows) reads two weight streams at once; its second group of four rows finds the panels in cache. */
#define LLMC_SKINNY_VECTORS 4
static inline void llmc_skinny(long R, long K, const float *a, long lda, llmc_tile b, long panel, long n,
                               float *c, long ldc, int accumulate) {
    const float *p[LLMC_SKINNY_VECTORS];
    vf acc[4][LLMC_SKINNY_VECTORS];
    _Pragma("GCC unroll 4") for (int j = 0; j < LLMC_SKINNY_VECTORS; j++) {
        long col = n + j * LLMC_W;
        p[j] = b.p + (col / panel) * b.ps + col % panel;
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 4") for (int j = 0; j < LLMC_SKINNY_VECTORS; j++)
            acc[r][j] = accumulate && r < R ? vload(c + r * ldc + j * LLMC_W) : vsplat(0.0f);
    for (long k = 0; k < K; k++) {
        vf bv[LLMC_SKINNY_VECTORS];
        _Pragma("GCC unroll 4") for (int j = 0; j < LLMC_SKINNY_VECTORS; j++) {
            __builtin_prefetch(p[j] + (k + 24) * b.ld);
            bv[j] = vload(p[j] + k * b.ld);
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {
            if (r >= R) break;
            vf av = vsplat(a[r * lda + k]);
            _Pragma("GCC unroll 4") for (int j = 0; j < LLMC_SKINNY_VECTORS; j++) acc[r][j] += av * bv[j];
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)
        if (r < R)
            _Pragma("GCC unroll 4") for (int j = 0; j < LLMC_SKINNY_VECTORS; j++) vstore(c + r * ldc + j * LLMC_W, acc[r][j]);
}

/* tile.dot: acc[M x N] (+)= a[M x K] * b[K x N]. N is a multiple of LLMC_NR (the
 * buffers are padded); `panel` is the column panel width of b (see llmc_tile). An `a` with ld 0 is
 * already packed (llmc_pack_lhs): M whole blocks of LLMC_MR rows, a.ps floats apart. */
static void llmc_dot(long M, long N, long K, llmc_tile a, llmc_tile b, long panel, llmc_tile c,
                     int accumulate) {
    long start = 0;
    int prepacked = a.ld == 0;
    /* a tile of packed rows past the matrix's last (zeros) computes only the rows that hold data: the
     * rows past them are never stored (with 6-row blocks, 128 rows in tiles of 48 would compute 144, and in
     * whole blocks 132) */
    long held = prepacked && a.rows > 0 && a.rows < M ? a.rows : M;
    if (prepacked) M = (held + LLMC_MR - 1) / LLMC_MR * LLMC_MR;
    if (!prepacked && M == 1)
        for (; start + LLMC_GEMV_VECTORS * LLMC_W <= N; start += LLMC_GEMV_VECTORS * LLMC_W)
            llmc_gemv_wide(K, a.p, b, panel, start, c.p + start, accumulate);
    else if (!prepacked && M <= 8)
        for (; start + LLMC_SKINNY_VECTORS * LLMC_W <= N; start += LLMC_SKINNY_VECTORS * LLMC_W)
            for (long m = 0; m < M; m += 4)
                llmc_skinny(M - m < 4 ? M - m : 4, K, a.p + m * a.ld, a.ld, b, panel, start, c.p + m * c.ld + start,
                            c.ld, accumulate);
    /* A packed once when its row blocks are read by two column panels or more, and its rows are long: rows of
     * at most 128 floats (attention's tiles) lie in distinct L1 sets and are read in place, where packing them
     * cost attention's 64x64 tiles about 5% of their time (Zen 3) */
    long blocks = M / LLMC_MR, block_step = prepacked ? a.ps : K * LLMC_MR;
    const float *packed = prepacked ? a.p
                        : N - start >= 2 * LLMC_NR && blocks && a.ld > 128 ? llmc_pack_rows(a, blocks, K) : NULL;
    for (long n = start; n < N; n += LLMC_NR) {
        const float *b0 = b.p + (n / panel) * b.ps + n % panel;
        const float *b1 = b.p + ((n + LLMC_W) / panel) * b.ps + (n + LLMC_W) % panel;
        long m = 0;
        for (; m + LLMC_MR <= M; m += LLMC_MR) {
            float *cm = c.p + m * c.ld + n;
            if (packed && m + LLMC_MR > held)
                llmc_ukernel_packed_rows((int)(held - m), K, packed + (m / LLMC_MR) * block_step, b0, b1, b.ld, cm,
                                         c.ld, accumulate);
            else if (packed)
                llmc_ukernel_packed(K, packed + (m / LLMC_MR) * block_step, b0, b1, b.ld, cm, c.ld, accumulate);
            else
                LLMC_UKERNEL_MR(K, a.p + m * a.ld, a.ld, b0, b1, b.ld, cm, c.ld, accumulate);
        }
        float *cm = c.p + m * c.ld + n;
        const float *am = a.p + m * a.ld;
        switch (M - m) {
        case 7: llmc_ukernel_7(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 6: llmc_ukernel_6(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 5: llmc_ukernel_5(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 4: llmc_ukernel_4(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 3: llmc_ukernel_3(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 2: llmc_ukernel_2(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        case 1: llmc_ukernel_1(K, am, a.ld, b0, b1, b.ld, cm, c.ld, accumulate); break;
        default: break;
        }
    }
}

static inline void llmc_fill(float *p, long count, float value) {
    for (long i = 0; i < count; i++) p[i] = value;
}

static inline float llmc_load_scalar(const float *base, long r, long c, long height, long width,
                                     long s0, long s1, float pad) {
    if (r < 0 || r >= height || c < 0 || c >= width) return pad;
    return base[r * s0 + c * s1];
}

/* dst[rows x cols] = src[rows x cols], both row-major tiles (ps == panel). */
static inline void llmc_copy_tile(llmc_tile dst, llmc_tile src, long rows, long cols) {
    for (long r = 0; r < rows; r++) memcpy(dst.p + r * dst.ld, src.p + r * src.ld, (size_t)cols * sizeof(float));
}

/* Triton's grouped program order (tile.tile_coords). */
static inline void llmc_tile_coords(long pid, long rows, long cols, long group, long *row, long *col) {
    long per_group = group * cols, first = (pid / per_group) * group;
    long size = rows - first < group ? rows - first : group;
    *row = first + (pid % per_group) % size;
    *col = (pid % per_group) / size;
}

/* Products of float activations with 4-bit weights, on the CPU (model/int4.py builds and calls it).

   Weights: per output row, blocks of 32 inputs, each block a float16 scale and 32 nibbles
   holding the weight's value + 8 (0..15): w = scale * (nibble - 8), llama.cpp's Q4_0 rounding,
   4.5 bits a weight. Two neighbouring blocks share 32 bytes: byte j holds the first block's
   input j in its low nibble and the second's in its high one, so one load, one mask and one
   shift give 64 weights (K is padded to a multiple of 64 with zero blocks).

   Activations are quantized as they come, per block of 32, to 8 bits with one float scale
   (llama.cpp's Q8_0), and each block's sum of quantized activations is kept. A block's dot
   product is then sum(nibble * a) - 8 * sum(a): an unsigned-by-signed 8-bit product, which
   AVX-512 VNNI's vpdpbusd computes in one instruction and AVX2's vpmaddubsw exactly (15 * 127 * 2
   < 32768: no pair saturates), and a correction that is one float dot product per row. The two
   paths give the same integers and, summed in the same order, the same floats. A CPU without
   AVX2 takes the plain C loop (the same integers, summed in another order).

   y[m, n] = sum_b wscale[n, b] * xscale[m, b] * (dot_b(nibbles[n], xq[m]) - 8 * xsum[m, b])

   Rows of activations go four at a time through each pair of blocks, unpacked once for them; a
   decode step (one row) reads each weight once. */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#include <immintrin.h>

#define BLOCK 32

/* IEEE half to float, for the plain path (the vector paths use F16C's vcvtph2ps) */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 1023, bits;
    if (exponent == 0) {
        if (mantissa == 0) bits = sign;
        else {                                            /* subnormal: normalize */
            exponent = 113;
            while (!(mantissa & 1024)) { mantissa <<= 1; exponent--; }
            bits = sign | (exponent << 23) | ((mantissa & 1023) << 13);
        }
    } else if (exponent == 31) bits = sign | 0x7F800000 | (mantissa << 13);
    else bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* -- activations: float -> 8-bit blocks ------------------------------------------------ */
static void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *xs, float *xsum8) {
    int64_t blocks = K / BLOCK;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *v = x + m * K + b * BLOCK;
            float peak = 0.0f;
            for (int i = 0; i < BLOCK; i++) peak = fmaxf(peak, fabsf(v[i]));
            float inverse = peak > 0.0f ? 127.0f / peak : 0.0f;
            int8_t *q = xq + m * K + b * BLOCK;
            int32_t sum = 0;
            for (int i = 0; i < BLOCK; i++) {
                int32_t r = (int32_t)lrintf(v[i] * inverse);
                q[i] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
                sum += q[i];
            }
            xs[m * blocks + b] = peak / 127.0f;
            xsum8[m * blocks + b] = 8.0f * (float)sum;
        }
    }
}

static inline int nibble(const uint8_t *pair, int64_t b, int i) {   /* block b's input i, 0..15 */
    uint8_t byte = pair[i];
    return (b & 1) ? byte >> 4 : byte & 15;
}

/* -- the plain path ----------------------------------------------------------------------- */
static void rows_plain(const uint8_t *w, const uint16_t *ws, int64_t n0, int64_t n1, int64_t K,
                       const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    int64_t blocks = K / BLOCK;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < M; m++) {
            float total = 0.0f;
            for (int64_t b = 0; b < blocks; b++) {
                const uint8_t *pair = w + n * (K / 2) + (b / 2) * 32;
                const int8_t *a = xq + m * K + b * BLOCK;
                int32_t dot = 0;
                for (int i = 0; i < BLOCK; i++) dot += nibble(pair, b, i) * a[i];
                float scale = half_to_float(ws[n * blocks + b]) * xs[m * blocks + b];
                total += scale * (float)dot - scale * xsum8[m * blocks + b];
            }
            y[m * N + n] = total;
        }
}

/* -- the vector paths: one body, two dot products ----------------------------------------- */
#define ROWS_BODY(DOT)                                                                          \
    int64_t blocks = K / BLOCK;                                                                 \
    float scales[4][blocks];                         /* weight scale x activation scale */      \
    for (int64_t n = n0; n < n1; n++) {                                                         \
        const uint8_t *row = w + n * (K / 2);                                                   \
        const uint16_t *wrow = ws + n * blocks;                                                 \
        for (int64_t m0 = 0; m0 < M; m0 += 4) {                                                 \
            int rows = M - m0 < 4 ? (int)(M - m0) : 4;                                          \
            float correction[4];                                                                \
            for (int r = 0; r < rows; r++) {                                                    \
                const float *sx = xs + (m0 + r) * blocks, *s8 = xsum8 + (m0 + r) * blocks;      \
                __m256 fix = _mm256_setzero_ps();                                               \
                int64_t b = 0;                                                                  \
                for (; b + 8 <= blocks; b += 8) {                                               \
                    __m256 both = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wrow + b))), \
                                                _mm256_loadu_ps(sx + b));                       \
                    _mm256_storeu_ps(scales[r] + b, both);                                      \
                    fix = _mm256_fmadd_ps(both, _mm256_loadu_ps(s8 + b), fix);                  \
                }                                                                               \
                float tail = horizontal_sum(fix);                                               \
                for (; b < blocks; b++) {                                                       \
                    scales[r][b] = _cvtsh_ss(wrow[b]) * sx[b];                                  \
                    tail += scales[r][b] * s8[b];                                               \
                }                                                                               \
                correction[r] = tail;                                                           \
            }                                                                                   \
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),    \
                             _mm256_setzero_ps()};                                              \
            for (int64_t b = 0; b < blocks; b += 2) {                                           \
                __m256i packed = _mm256_loadu_si256((const __m256i *)(row + b * 16));           \
                __m256i first = _mm256_and_si256(packed, _mm256_set1_epi8(15));                 \
                __m256i second = _mm256_and_si256(_mm256_srli_epi16(packed, 4), _mm256_set1_epi8(15)); \
                for (int r = 0; r < rows; r++) {                                                \
                    const int8_t *a = xq + (m0 + r) * K + b * BLOCK;                            \
                    __m256i d0 = DOT(first, _mm256_loadu_si256((const __m256i *)a));            \
                    __m256i d1 = DOT(second, _mm256_loadu_si256((const __m256i *)(a + BLOCK))); \
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(scales[r] + b), acc[r]); \
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_broadcast_ss(scales[r] + b + 1), acc[r]); \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < rows; r++)                                                      \
                y[(m0 + r) * N + n] = horizontal_sum(acc[r]) - correction[r];                   \
        }                                                                                       \
    }

__attribute__((target("avx2,fma,f16c")))
static inline float horizontal_sum(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half);
}

__attribute__((target("avx2,fma,f16c")))
static inline __m256i dot_avx2(__m256i nibbles, __m256i acts) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles, acts), _mm256_set1_epi16(1));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static inline __m256i dot_vnni(__m256i nibbles, __m256i acts) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles, acts);
}

__attribute__((target("avx2,fma,f16c")))
static void rows_avx2(const uint8_t *w, const uint16_t *ws, int64_t n0, int64_t n1, int64_t K,
                      const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    ROWS_BODY(dot_avx2)
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static void rows_vnni(const uint8_t *w, const uint16_t *ws, int64_t n0, int64_t n1, int64_t K,
                      const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    ROWS_BODY(dot_vnni)
}

/* -- the entry points ------------------------------------------------------------------- */
typedef void (*rows_fn)(const uint8_t *, const uint16_t *, int64_t, int64_t, int64_t,
                        const int8_t *, const float *, const float *, int64_t, float *, int64_t);

/* 2: AVX-512 VNNI, 1: AVX2, 0: plain C — what `q4_matmul` runs with `path` -1 (best available). */
int q4_best_path(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return 1;
    return 0;
}

/* y (M, N) = x (M, K) @ dequantized(w (N, K/2 bytes), ws (N, K/32))^T; K a multiple of 64.
   `work`: at least M * K + 8 * M * (K / 32) + 4 bytes. Rows of w are shared among `threads`. */
int q4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const uint16_t *ws, int64_t N,
              float *y, void *work, int threads, int path) {
    if (K % (2 * BLOCK)) return -1;
    int64_t blocks = K / BLOCK;
    int8_t *xq = (int8_t *)work;
    float *xs = (float *)(xq + M * K + ((-(M * K)) & 3));
    float *xsum8 = xs + M * blocks;
    quantize_rows(x, M, K, xq, xs, xsum8);
    int chosen = path < 0 ? q4_best_path() : path;
    rows_fn rows = chosen == 2 ? rows_vnni : chosen == 1 ? rows_avx2 : rows_plain;
    if (threads < 1) threads = 1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t n0 = N * t / threads, n1 = N * (t + 1) / threads;
        rows(w, ws, n0, n1, K, xq, xs, xsum8, M, y, N);
    }
    return 0;
}

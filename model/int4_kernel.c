/* Products of float activations with 4-bit weights, on the CPU (model/int4.py builds and calls it).

   Weights: per output row, blocks of 32 inputs, each block a float16 scale and 32 nibbles
   holding the weight's value + 8 (0..15): w = scale * (nibble - 8), llama.cpp's Q4_0 rounding,
   4.5 bits a weight. Rows come in tiles of 8 (N padded with zero rows), and a tile's block is
   128 bytes that one vector instruction multiplies 8 rows at a time with: chunk c (32 bytes)
   holds, for row r and input j of a group of four, byte 4r + j: the nibble of input 8c + j in
   the low half and of input 8c + 4 + j in the high half. One load, a mask and a shift give two
   groups of four inputs for all 8 rows; each group meets its 4 activations (broadcast) in one
   vpdpbusd (AVX-512 VNNI) or vpmaddubsw + vpmaddwd (AVX2), whose 8 lanes are the 8 rows.

   Activations are quantized as they come, per block of 32, to 8 bits with one float scale
   (llama.cpp's Q8_0), and each block's sum of quantized activations is kept: a block's product
   is sum(nibble * a) - 8 * sum(a), unsigned by signed 8-bit integers, exact on both paths
   (15 * 127 * 2 < 32768: no pair saturates) and summed in the same order: the same floats. A
   CPU without AVX2 takes the plain C loop (the same integers, summed in another order).

   y[m, n] = sum_b wscale[n, b] * xscale[m, b] * (dot_b(nibbles[n], xq[m]) - 8 * xsum[m, b])

   Activation rows go four at a time through each tile's block, unpacked once for them. */
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

#define TILE 8                      /* output rows a tile holds */
#define TILE_BLOCK (TILE * BLOCK / 2)   /* bytes of a tile's block: 128 */

static inline int nibble(const uint8_t *tile_block, int r, int i) {   /* row r's input i, 0..15 */
    int c = i / 8, j = i % 8;
    uint8_t byte = tile_block[c * 32 + 4 * r + (j % 4)];
    return j < 4 ? byte & 15 : byte >> 4;
}

/* -- the plain path ----------------------------------------------------------------------- */
static void tiles_plain(const uint8_t *w, const uint16_t *ws, int64_t t0, int64_t t1, int64_t K,
                        const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    int64_t blocks = K / BLOCK;
    for (int64_t t = t0; t < t1; t++)
        for (int r = 0; r < TILE && t * TILE + r < N; r++)
            for (int64_t m = 0; m < M; m++) {
                float total = 0.0f;
                for (int64_t b = 0; b < blocks; b++) {
                    const uint8_t *block = w + (t * blocks + b) * TILE_BLOCK;
                    const int8_t *a = xq + m * K + b * BLOCK;
                    int32_t dot = 0;
                    for (int i = 0; i < BLOCK; i++) dot += nibble(block, r, i) * a[i];
                    float scale = half_to_float(ws[(t * blocks + b) * TILE + r]) * xs[m * blocks + b];
                    total += scale * (float)dot - scale * xsum8[m * blocks + b];
                }
                y[m * N + t * TILE + r] = total;
            }
}

/* -- the vector paths: one body, two dot products ----------------------------------------- */
/* A tile's blocks are read in order. On some machines the products between loads leave too few
   reads in flight for the hardware prefetcher to keep up with memory, and asking for the block 8
   ahead (1 KB) took a thread from 9.9 to 12.4 GB/s and two from 18.9 to 23.3 (expert-sized
   products, 780 MB of weights; 27 GB/s is what summing a buffer read there); on others it makes
   no difference (an AMD EPYC, two threads: 32.0 with, 32.9 GB/s without). So it is a setting,
   `q4_tune`, which model/int4.py sets by measuring both. */
#define PREFETCH_AHEAD (8 * TILE_BLOCK)
static int prefetching = 1;
static inline void prefetch_block(const uint8_t *block, const uint16_t *scales) {
    if (!prefetching) return;
    _mm_prefetch((const char *)(block + PREFETCH_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(block + PREFETCH_AHEAD + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(scales + 8 * TILE), _MM_HINT_T0);
}

#define TILES_BODY(DOT)                                                                         \
    int64_t blocks = K / BLOCK;                                                                 \
    const __m256i low_mask = _mm256_set1_epi8(15);                                              \
    for (int64_t t = t0; t < t1; t++) {                                                         \
        for (int64_t m0 = 0; m0 < M; m0 += 4) {                                                 \
            int rows = M - m0 < 4 ? (int)(M - m0) : 4;                                          \
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),    \
                             _mm256_setzero_ps()};                                              \
            for (int64_t b = 0; b < blocks; b++) {                                              \
                const uint8_t *block = w + (t * blocks + b) * TILE_BLOCK;                       \
                prefetch_block(block, ws + (t * blocks + b) * TILE);                            \
                __m256i groups[8];                                                              \
                for (int c = 0; c < 4; c++) {                                                   \
                    __m256i chunk = _mm256_loadu_si256((const __m256i *)(block + 32 * c));      \
                    groups[2 * c] = _mm256_and_si256(chunk, low_mask);                          \
                    groups[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(chunk, 4), low_mask); \
                }                                                                               \
                __m256 wscale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + (t * blocks + b) * TILE))); \
                for (int r = 0; r < rows; r++) {                                                \
                    const int8_t *a = xq + (m0 + r) * K + b * BLOCK;                            \
                    int32_t four[8];                                                            \
                    memcpy(four, a, sizeof four);                                               \
                    /* four independent chains: one long chain waits on each product's latency */ \
                    __m256i s0 = DOT(_mm256_setzero_si256(), groups[0], _mm256_set1_epi32(four[0])); \
                    __m256i s1 = DOT(_mm256_setzero_si256(), groups[1], _mm256_set1_epi32(four[1])); \
                    __m256i s2 = DOT(_mm256_setzero_si256(), groups[2], _mm256_set1_epi32(four[2])); \
                    __m256i s3 = DOT(_mm256_setzero_si256(), groups[3], _mm256_set1_epi32(four[3])); \
                    s0 = DOT(s0, groups[4], _mm256_set1_epi32(four[4]));                         \
                    s1 = DOT(s1, groups[5], _mm256_set1_epi32(four[5]));                         \
                    s2 = DOT(s2, groups[6], _mm256_set1_epi32(four[6]));                         \
                    s3 = DOT(s3, groups[7], _mm256_set1_epi32(four[7]));                         \
                    __m256i sums = _mm256_add_epi32(_mm256_add_epi32(s0, s1), _mm256_add_epi32(s2, s3)); \
                    float sx = xs[(m0 + r) * blocks + b];                                       \
                    __m256 part = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(sx),  \
                                                  _mm256_set1_ps(-sx * xsum8[(m0 + r) * blocks + b])); \
                    acc[r] = _mm256_fmadd_ps(wscale, part, acc[r]);                             \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < rows; r++) {                                                    \
                float out[TILE];                                                                \
                _mm256_storeu_ps(out, acc[r]);                                                  \
                for (int i = 0; i < TILE && t * TILE + i < N; i++) y[(m0 + r) * N + t * TILE + i] = out[i]; \
            }                                                                                   \
        }                                                                                       \
    }

__attribute__((target("avx2,fma,f16c")))
static inline __m256i dot_avx2(__m256i sums, __m256i nibbles, __m256i acts) {
    return _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles, acts), _mm256_set1_epi16(1)));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static inline __m256i dot_vnni(__m256i sums, __m256i nibbles, __m256i acts) {
    return _mm256_dpbusd_epi32(sums, nibbles, acts);
}

__attribute__((target("avx2,fma,f16c")))
static void tiles_avx2(const uint8_t *w, const uint16_t *ws, int64_t t0, int64_t t1, int64_t K,
                       const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    TILES_BODY(dot_avx2)
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static void tiles_vnni(const uint8_t *w, const uint16_t *ws, int64_t t0, int64_t t1, int64_t K,
                       const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    TILES_BODY(dot_vnni)
}

/* AVX-512 VNNI with 512-bit registers: two tiles (16 rows) at a time, each lane a row; an odd
   last tile goes through the 256-bit body. The same integers and the same order of sums per
   row as the 256-bit paths, so the same floats. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static void tiles_vnni512(const uint8_t *w, const uint16_t *ws, int64_t t0, int64_t t1, int64_t K,
                          const int8_t *xq, const float *xs, const float *xsum8, int64_t M, float *y, int64_t N) {
    int64_t blocks = K / BLOCK;
    const __m512i low_mask = _mm512_set1_epi8(15);
    int64_t t = t0;
    for (; t + 1 < t1; t += 2) {
        for (int64_t m0 = 0; m0 < M; m0 += 8) {   /* eight activation rows per unpacked block: 32 registers hold them */
            int rows = M - m0 < 8 ? (int)(M - m0) : 8;
            __m512 acc[8];
            for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
            for (int64_t b = 0; b < blocks; b++) {
                const uint8_t *first = w + (t * blocks + b) * TILE_BLOCK;
                const uint8_t *second = w + ((t + 1) * blocks + b) * TILE_BLOCK;
                prefetch_block(first, ws + (t * blocks + b) * TILE);
                prefetch_block(second, ws + ((t + 1) * blocks + b) * TILE);
                __m512i groups[8];
                for (int c = 0; c < 4; c++) {
                    __m512i chunk = _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(first + 32 * c))),
                        _mm256_loadu_si256((const __m256i *)(second + 32 * c)), 1);
                    groups[2 * c] = _mm512_and_si512(chunk, low_mask);
                    groups[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(chunk, 4), low_mask);
                }
                __m512 wscale = _mm512_cvtph_ps(_mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ws + (t * blocks + b) * TILE))),
                    _mm_loadu_si128((const __m128i *)(ws + ((t + 1) * blocks + b) * TILE)), 1));
                for (int r = 0; r < rows; r++) {
                    const int8_t *a = xq + (m0 + r) * K + b * BLOCK;
                    const int32_t *four = (const int32_t *)a;   /* broadcast from memory: a load, not a shuffle */
                    __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), groups[0], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 0)));
                    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), groups[1], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 1)));
                    __m512i s2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), groups[2], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 2)));
                    __m512i s3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), groups[3], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 3)));
                    s0 = _mm512_dpbusd_epi32(s0, groups[4], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 4)));
                    s1 = _mm512_dpbusd_epi32(s1, groups[5], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 5)));
                    s2 = _mm512_dpbusd_epi32(s2, groups[6], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 6)));
                    s3 = _mm512_dpbusd_epi32(s3, groups[7], _mm512_broadcastd_epi32(_mm_loadu_si32(four + 7)));
                    __m512i sums = _mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3));
                    float sx = xs[(m0 + r) * blocks + b];
                    __m512 part = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(sx),
                                                  _mm512_set1_ps(-sx * xsum8[(m0 + r) * blocks + b]));
                    acc[r] = _mm512_fmadd_ps(wscale, part, acc[r]);
                }
            }
            for (int r = 0; r < rows; r++) {
                float out[2 * TILE];
                _mm512_storeu_ps(out, acc[r]);
                for (int i = 0; i < 2 * TILE && t * TILE + i < N; i++) y[(m0 + r) * N + t * TILE + i] = out[i];
            }
        }
    }
    if (t < t1)
        tiles_vnni(w, ws, t, t1, K, xq, xs, xsum8, M, y, N);
}

/* -- the entry points ------------------------------------------------------------------- */
typedef void (*tiles_fn)(const uint8_t *, const uint16_t *, int64_t, int64_t, int64_t,
                         const int8_t *, const float *, const float *, int64_t, float *, int64_t);

/* 2: AVX-512 VNNI, 1: AVX2, 0: plain C — the best path this CPU has. */
int q4_best_path(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return 1;
    return 0;
}

/* What `path` -1 runs for one activation row (decode, where a product reads its weights from
   memory): the best path this CPU has, or the one `q4_tune` chose — a narrower vector path can
   read memory faster (AVX2 against AVX-512 on a CPU that splits it in two halves). Several rows
   (prefill) are bound by the arithmetic, where the best path is the fastest: there the tuned
   AVX2 path halved Lite's prefill. */
static int tuned_path = -1;

void q4_tune(int path, int prefetch) {
    tuned_path = path;
    prefetching = prefetch;
}

static int default_path(void) {
    return tuned_path >= 0 ? tuned_path : q4_best_path();
}

static tiles_fn tiles_for(int path) {
    int chosen = path < 0 ? default_path() : path;
    return chosen == 2 ? tiles_vnni512 : chosen == 1 ? tiles_avx2 : tiles_plain;
}

/* The kernel for products of M activation rows (see default_path) */
static tiles_fn tiles_for_rows(int path, int64_t M) {
    return tiles_for(path < 0 && M > 1 ? q4_best_path() : path);
}

/* Quantized activations (M, K): 8-bit values, then per block its scale and 8 * its sum. */
typedef struct { int8_t *q; float *scale, *sum8; } activations;

static size_t activations_bytes(int64_t M, int64_t K) {
    return (size_t)(M * K + 3) / 4 * 4 + 2 * sizeof(float) * (size_t)(M * (K / BLOCK));
}

static activations activations_at(void *work, int64_t M, int64_t K) {
    activations a;
    a.q = (int8_t *)work;
    a.scale = (float *)((char *)work + (M * K + 3) / 4 * 4);
    a.sum8 = a.scale + M * (K / BLOCK);
    return a;
}

/* y (M, N) = the quantized activations (M, K) @ dequantized(w, ws)^T, tiles shared among threads */
static void product(activations a, int64_t M, int64_t K, const uint8_t *w, const uint16_t *ws, int64_t N,
                    float *y, int threads, tiles_fn run) {
    int64_t tiles = (N + TILE - 1) / TILE;
    if (threads < 1) threads = 1;
    if (threads > tiles) threads = (int)tiles;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t first = tiles * t / threads, last = tiles * (t + 1) / threads;
        run(w, ws, first, last, K, a.q, a.scale, a.sum8, M, y, N);
    }
}

/* y (M, N) = x (M, K) @ dequantized(w, ws)^T: w (ceil(N/8), K/32, 128) bytes, ws (ceil(N/8), K/32, 8)
   float16; K a multiple of 32. `work`: at least M * K + 8 * M * (K / 32) + 4 bytes. Tiles are
   shared among `threads`. */
int q4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const uint16_t *ws, int64_t N,
              float *y, void *work, int threads, int path) {
    if (K % BLOCK) return -1;
    activations a = activations_at(work, M, K);
    quantize_rows(x, M, K, a.q, a.scale, a.sum8);
    product(a, M, K, w, ws, N, y, threads, tiles_for_rows(path, M));
    return 0;
}

/* A mixture-of-experts layer's experts for M tokens in one call (decode's per-operation cost is
   the point): y (M, D) = sum_j gates[m, j] * expert_{idx[m, j]}(x[m]), each expert
   w2 @ (silu(gate) * up) with [gate; up] = w13 @ x. Expert e's weights are at the addresses
   w13_at[e], s13_at[e], w2_at[e], s2_at[e] (the routed experts of a stacked tensor, and the
   shared ones, which the caller lists after them with gate 1), laid out as `q4_matmul` takes
   them: w13 (ceil(2I/8), D/32, 128), s13 (ceil(2I/8), D/32, 8), w2 (ceil(D/8), I/32, 128), s2
   (ceil(D/8), I/32, 8). D and I multiples of 32. The
   same integers and, per product, the same sums as `q4_matmul` on each expert; silu is
   computed here (expf), so its floats may differ from PyTorch's in the last bits.

   A token costs two parallel regions, not two an expert: the k experts' w13 tiles are shared
   among the threads as one list, then each thread takes a share of the output's tiles through
   all k experts' w2 and sums its own rows (in expert order: the same floats as one expert at a
   time). Between regions the threads wait and the weight stream restarts; with k = 6 that was
   12 restarts a layer. */
#define AT(table, e, type) ((const type *)(uintptr_t)(table)[e])

/* Float dot products and row updates (the router's scores, the attention's edges): AVX2 + FMA where the CPU has them, plain C elsewhere. */
__attribute__((target("avx2,fma")))
static float dot_avx2f(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float lanes[8], total = 0.0f;
    _mm256_storeu_ps(lanes, _mm256_add_ps(s0, s1));
    for (int j = 0; j < 8; j++) total += lanes[j];
    for (; i < n; i++) total += a[i] * b[i];
    return total;
}

__attribute__((target("avx2,fma")))
static void axpy_avx2f(float *y, float a, const float *x, int64_t n) {   /* y += a * x */
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static float dot_plainf(const float *a, const float *b, int64_t n) {
    float total = 0.0f;
    for (int64_t i = 0; i < n; i++) total += a[i] * b[i];
    return total;
}

/* p (S) -> softmax(p) in place, float32 (the router's scores; the attention's on the plain path) */
static void softmax_plain(float *p, int64_t S) {
    float peak = p[0], sum = 0.0f;
    for (int64_t s = 1; s < S; s++) peak = fmaxf(peak, p[s]);
    for (int64_t s = 0; s < S; s++) sum += (p[s] = expf(p[s] - peak));
    for (int64_t s = 0; s < S; s++) p[s] /= sum;
}

/* One token's k experts (their numbers `chosen`, weights `gates`), into row (D): work holds
   its activations and the experts' intermediate values (`moe_work_bytes`). */
static size_t moe_work_bytes(int64_t D, int64_t I, int64_t k) {
    return activations_bytes(1, D) + activations_bytes(k, I) + sizeof(float) * (size_t)(k * 2 * I + k * I + k * D);
}

static void moe_token(const float *x, int64_t D, const int64_t *chosen, const float *gates, int64_t k,
                      const int64_t *w13_at, const int64_t *s13_at, const int64_t *w2_at, const int64_t *s2_at,
                      int64_t I, float *row, char *work, int threads, tiles_fn run) {
    int64_t tiles13 = (2 * I + TILE - 1) / TILE, tiles2 = (D + TILE - 1) / TILE;
    size_t in_bytes = activations_bytes(1, D), mid_bytes = activations_bytes(k, I);
    activations in = activations_at(work, 1, D), mid = activations_at(work + in_bytes, k, I);
    float *up_gate = (float *)(work + in_bytes + mid_bytes), *hidden = up_gate + k * 2 * I, *out = hidden + k * I;
    int64_t blocks_i = I / BLOCK, total13 = k * tiles13;
    int team = threads < 1 ? 1 : threads;
    quantize_rows(x, 1, D, in.q, in.scale, in.sum8);
    int share13 = team > total13 ? (int)total13 : team;
    #pragma omp parallel for num_threads(share13) schedule(static)
    for (int t = 0; t < share13; t++) {                /* [gate; up] of every chosen expert */
        int64_t first = total13 * t / share13, last = total13 * (t + 1) / share13;
        for (int64_t j = first / tiles13; j < k && j * tiles13 < last; j++) {
            int64_t lo = first > j * tiles13 ? first - j * tiles13 : 0;
            int64_t hi = last < (j + 1) * tiles13 ? last - j * tiles13 : tiles13;
            run(AT(w13_at, chosen[j], uint8_t), AT(s13_at, chosen[j], uint16_t), lo, hi, D, in.q, in.scale,
                in.sum8, 1, up_gate + j * 2 * I, 2 * I);
        }
    }
    for (int64_t j = 0; j < k; j++)
        for (int64_t i = 0; i < I; i++) {
            float g = up_gate[j * 2 * I + i];
            hidden[j * I + i] = g / (1.0f + expf(-g)) * up_gate[j * 2 * I + I + i];
        }
    quantize_rows(hidden, k, I, mid.q, mid.scale, mid.sum8);
    int share2 = team > tiles2 ? (int)tiles2 : team;
    #pragma omp parallel for num_threads(share2) schedule(static)
    for (int t = 0; t < share2; t++) {                 /* down: each thread its rows, all experts */
        int64_t first = tiles2 * t / share2, last = tiles2 * (t + 1) / share2;
        int64_t r0 = first * TILE, r1 = last * TILE < D ? last * TILE : D;
        for (int64_t i = r0; i < r1; i++) row[i] = 0.0f;
        for (int64_t j = 0; j < k; j++) {
            run(AT(w2_at, chosen[j], uint8_t), AT(s2_at, chosen[j], uint16_t), first, last, I, mid.q + j * I,
                mid.scale + j * blocks_i, mid.sum8 + j * blocks_i, 1, out + j * D, D);
            float gate = gates[j];
            for (int64_t i = r0; i < r1; i++) row[i] += gate * out[j * D + i];
        }
    }
}

int q4_moe(const float *x, int64_t M, int64_t D, const int64_t *idx, const float *gates, int64_t k,
           const int64_t *w13_at, const int64_t *s13_at, const int64_t *w2_at, const int64_t *s2_at, int64_t I,
           float *y, int threads, int path) {
    if (D % BLOCK || I % BLOCK) return -1;
    char *work = malloc(moe_work_bytes(D, I, k));
    if (!work) return -2;
    tiles_fn run = tiles_for(path);
    for (int64_t m = 0; m < M; m++)
        moe_token(x + m * D, D, idx + m * k, gates + m * k, k, w13_at, s13_at, w2_at, s2_at, I, y + m * D, work,
                  threads, run);
    free(work);
    return 0;
}

/* A decode token's whole feed-forward with its router: the router's scores of the E routed
   experts (router (E, D) float32 @ x, then softmax), the k best (their weights summed to 1 when
   `normalize`, then times `scaling`), and the `shared` experts E .. E + shared - 1 with weight 1
   after them — model/moe.py's Router (softmax scoring, greedy choice) and MoE.forward — then
   `q4_moe` on them. Ties keep the lower number first (as torch.topk does on CPU); the scores'
   sums run in another order than PyTorch's. */
int q4_moe_routed(const float *x, int64_t D, const float *router, int64_t E, int64_t k, int normalize, float scaling,
                  int64_t shared, const int64_t *w13_at, const int64_t *s13_at, const int64_t *w2_at,
                  const int64_t *s2_at, int64_t I, float *y, int threads, int path) {
    if (D % BLOCK || I % BLOCK || k < 1 || k > E) return -1;
    int chosen_path = path < 0 ? default_path() : path;
    float (*dot)(const float *, const float *, int64_t) = chosen_path >= 1 ? dot_avx2f : dot_plainf;
    char *work = malloc(moe_work_bytes(D, I, k + shared) + sizeof(float) * (size_t)(E + k + shared)
                        + sizeof(int64_t) * (size_t)(k + shared));
    if (!work) return -2;
    float *scores = (float *)(work + moe_work_bytes(D, I, k + shared)), *gates = scores + E;
    int64_t *chosen = (int64_t *)(gates + k + shared);
    int team = threads < 1 ? 1 : threads > E ? (int)E : threads;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int t = 0; t < team; t++)
        for (int64_t e = E * t / team; e < E * (t + 1) / team; e++) scores[e] = dot(router + e * D, x, D);
    softmax_plain(scores, E);
    float picked = 0.0f;
    for (int64_t j = 0; j < k; j++) {                  /* greedy: the best not yet taken */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            int taken = 0;
            for (int64_t i = 0; i < j; i++) taken |= chosen[i] == e;
            if (!taken && (best < 0 || scores[e] > scores[best])) best = e;
        }
        chosen[j] = best;
        gates[j] = scores[best];
        picked += scores[best];
    }
    for (int64_t j = 0; j < k; j++)
        gates[j] = (normalize && k > 1 ? gates[j] / (picked + 1e-20f) : gates[j]) * scaling;
    for (int64_t j = 0; j < shared; j++) {
        chosen[k + j] = E + j;
        gates[k + j] = 1.0f;
    }
    moe_token(x, D, chosen, gates, k + shared, w13_at, s13_at, w2_at, s2_at, I, y, work, threads,
              tiles_for(path));
    free(work);
    return 0;
}

/* Per-head products of multi-head latent attention's absorbed weights: head h's M rows of
   x (H, M, K) through its own N rows of a stacked weight, y (H, M, N). Head h's rows are the
   tiles first_tile + h * head_tiles .. + N / 8 of w (ws), laid out as `q4_matmul` takes them,
   with K / 32 blocks a tile. N a multiple of 8, K of 32. Heads are shared among threads. The
   same integers and sums per row as `q4_matmul` on each head. */
int q4_heads(const float *x, int64_t H, int64_t M, int64_t K, const uint8_t *w, const uint16_t *ws,
             int64_t first_tile, int64_t head_tiles, int64_t N, float *y, int threads, int path) {
    if (K % BLOCK || N % TILE) return -1;
    tiles_fn run = tiles_for_rows(path, M);
    int64_t blocks = K / BLOCK;
    void *work = malloc(activations_bytes(H * M, K));
    if (!work) return -2;
    activations a = activations_at(work, H * M, K);
    quantize_rows(x, H * M, K, a.q, a.scale, a.sum8);
    if (threads < 1) threads = 1;
    if (threads > H) threads = (int)H;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < H; h++) {
        int64_t tile = first_tile + h * head_tiles;
        run(w + tile * blocks * TILE_BLOCK, ws + tile * blocks * TILE, 0, N / TILE, K,
            a.q + h * M * K, a.scale + h * M * blocks, a.sum8 + h * M * blocks, M, y + h * M * N, N);
    }
    free(work);
    return 0;
}

/* -- one decode token's absorbed attention for one layer ----------------------------------- */
/* The attention over the latent rows, for a thread's heads: scores (nh, S) = scale * q (nh, W)
   @ rows (S, W)^T, and latent (nh, R) = probabilities (nh, S) @ rows[:, :R]. AVX2 + FMA where
   the CPU has them (path >= 1): blocks of 4 heads by 2 rows (scores) and 4 heads by 16 latent
   values (the weighted sum), so each load of a row feeds several heads and no sum waits on a
   store; plain C elsewhere and for the edges. */
static void scores_plain(const float *q, int64_t nh, int64_t W, const float *rows, int64_t stride, int64_t S,
                         float scale, float *scores) {
    for (int64_t h = 0; h < nh; h++)
        for (int64_t s = 0; s < S; s++) {
            float total = 0.0f;
            for (int64_t i = 0; i < W; i++) total += q[h * W + i] * rows[s * stride + i];
            scores[h * S + s] = total * scale;
        }
}

static void weigh_plain(const float *p, int64_t nh, int64_t S, const float *rows, int64_t stride, int64_t R,
                        float *latent) {
    for (int64_t h = 0; h < nh; h++) {
        float *out = latent + h * R;
        for (int64_t i = 0; i < R; i++) out[i] = 0.0f;
        for (int64_t s = 0; s < S; s++)
            for (int64_t i = 0; i < R; i++) out[i] += p[h * S + s] * rows[s * stride + i];
    }
}

__attribute__((target("avx2,fma")))
static inline float sum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

__attribute__((target("avx2,fma")))
static void scores_avx2(const float *q, int64_t nh, int64_t W, const float *rows, int64_t stride, int64_t S,
                        float scale, float *scores) {
    int64_t h = 0;
    if (W % 8 == 0)
        for (; h + 4 <= nh; h += 4) {
            int64_t s = 0;
            for (; s + 2 <= S; s += 2) {
                const float *r0 = rows + s * stride, *r1 = r0 + stride;
                __m256 acc[4][2];
                for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
                for (int64_t c = 0; c < W; c += 8) {
                    __m256 a = _mm256_loadu_ps(r0 + c), b = _mm256_loadu_ps(r1 + c);
                    for (int j = 0; j < 4; j++) {
                        __m256 qv = _mm256_loadu_ps(q + (h + j) * W + c);
                        acc[j][0] = _mm256_fmadd_ps(qv, a, acc[j][0]);
                        acc[j][1] = _mm256_fmadd_ps(qv, b, acc[j][1]);
                    }
                }
                for (int j = 0; j < 4; j++) {
                    scores[(h + j) * S + s] = sum8(acc[j][0]) * scale;
                    scores[(h + j) * S + s + 1] = sum8(acc[j][1]) * scale;
                }
            }
            if (s < S)
                for (int j = 0; j < 4; j++) scores[(h + j) * S + s] = dot_avx2f(q + (h + j) * W, rows + s * stride, W) * scale;
        }
    for (; h < nh; h++)
        for (int64_t s = 0; s < S; s++) scores[h * S + s] = dot_avx2f(q + h * W, rows + s * stride, W) * scale;
}

__attribute__((target("avx2,fma")))
static void weigh_avx2(const float *p, int64_t nh, int64_t S, const float *rows, int64_t stride, int64_t R,
                       float *latent) {
    int64_t h = 0;
    if (R % 16 == 0)
        for (; h + 4 <= nh; h += 4)
            for (int64_t c = 0; c < R; c += 16) {
                __m256 acc[4][2];
                for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
                for (int64_t s = 0; s < S; s++) {
                    const float *r = rows + s * stride + c;
                    __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8);
                    for (int j = 0; j < 4; j++) {
                        __m256 pv = _mm256_broadcast_ss(p + (h + j) * S + s);
                        acc[j][0] = _mm256_fmadd_ps(pv, a, acc[j][0]);
                        acc[j][1] = _mm256_fmadd_ps(pv, b, acc[j][1]);
                    }
                }
                for (int j = 0; j < 4; j++) {
                    _mm256_storeu_ps(latent + (h + j) * R + c, acc[j][0]);
                    _mm256_storeu_ps(latent + (h + j) * R + c + 8, acc[j][1]);
                }
            }
    for (; h < nh; h++) {
        memset(latent + h * R, 0, sizeof(float) * (size_t)R);
        for (int64_t s = 0; s < S; s++) axpy_avx2f(latent + h * R, p[h * S + s], rows + s * stride, R);
    }
}

/* softmax_plain's AVX2 form. Its exp: 2^n * e^r with r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]
   and e^r by its Taylor polynomial to degree 7 (error below float32's rounding). */

__attribute__((target("avx2,fma")))
static inline __m256 exp_avx2(__m256 x) {     /* x <= 0 here (after the peak is taken off) */
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.0f / 5040.0f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 720.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

__attribute__((target("avx2,fma")))
static void softmax_avx2(float *p, int64_t S) {
    int64_t s = 0;
    __m256 top = _mm256_set1_ps(-INFINITY);
    for (; s + 8 <= S; s += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(p + s));
    float lanes[8], peak = -INFINITY, sum = 0.0f;
    _mm256_storeu_ps(lanes, top);
    for (int j = 0; j < 8; j++) peak = fmaxf(peak, lanes[j]);
    for (; s < S; s++) peak = fmaxf(peak, p[s]);
    __m256 total = _mm256_setzero_ps(), base = _mm256_set1_ps(peak);
    for (s = 0; s + 8 <= S; s += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + s), base));
        _mm256_storeu_ps(p + s, e);
        total = _mm256_add_ps(total, e);
    }
    for (; s < S; s++) {
        __m256 e = exp_avx2(_mm256_set1_ps(p[s] - peak));
        p[s] = _mm256_cvtss_f32(e);
        sum += p[s];
    }
    sum += sum8(total);
    __m256 inverse = _mm256_set1_ps(1.0f / sum);
    for (s = 0; s + 8 <= S; s += 8) _mm256_storeu_ps(p + s, _mm256_mul_ps(_mm256_loadu_ps(p + s), inverse));
    for (; s < S; s++) p[s] *= 1.0f / sum;
}

/* x (P) rotated by the angles cos, sin (P/2) into y: pairs (x[2i], x[2i+1]) when interleaved
   (DeepSeek's checkpoints), else the halves (x[i], x[i + P/2]) — model/rope.py's apply_rotary */
static void rotate(const float *x, const float *cos, const float *sin, int64_t P, int interleaved, float *y) {
    int64_t half = P / 2;
    for (int64_t i = 0; i < half; i++) {
        int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float x1 = x[a], x2 = x[b];
        y[a] = x1 * cos[i] - x2 * sin[i];
        y[b] = x2 * cos[i] + x1 * sin[i];
    }
}

/* Multi-head latent attention, absorbed, for one new token of one layer — what model/mla.py's
   `MLA.forward` does for it between the query's product and o_proj, in one call:
   - the token's cache row, written at rows[S - 1]: kv's first R values RMS-normed (norm_w,
     eps), its last P rotated;
   - per head h (heads shared among threads): the query's first `nope` values through W_UK
     (uk: W_UK transposed, (H * R, nope), tiles h * R / 8 ..), its last P rotated; scores
     against the S rows (scale), softmax, the weighted sum of the rows' latents, and that
     through W_UV (uv: kv_b_proj's rows, head h's V rows at tile uv_first + h * uv_head_tiles)
     into out[h * V ..].
   q (H, nope + P), kv (R + P), rows (S, stride) float32; out (H * V). nope and R multiples of
   32, V of 8. The int4 products are `q4_heads`'s (the same integers and sums); the float
   attention's sums run in another order than PyTorch's. Returns -1 on a bad shape, -2 when
   memory could not be had. */
int q4_mla_decode(const float *q, const float *kv, const float *norm_w, float eps, const float *cos,
                  const float *sin, int interleaved, float *rows, int64_t S, int64_t stride,
                  const uint8_t *uk_w, const uint16_t *uk_s, const uint8_t *uv_w, const uint16_t *uv_s,
                  int64_t uv_first, int64_t uv_head_tiles, int64_t H, int64_t nope, int64_t P, int64_t R,
                  int64_t V, float scale, float *out, int threads, int path) {
    if (nope % BLOCK || R % BLOCK || V % TILE || P % 2 || S < 1 || stride < R + P) return -1;
    int chosen = path < 0 ? default_path() : path;
    tiles_fn run = tiles_for(chosen);
    void (*scores_of)(const float *, int64_t, int64_t, const float *, int64_t, int64_t, float, float *) =
        chosen >= 1 ? scores_avx2 : scores_plain;
    void (*weigh)(const float *, int64_t, int64_t, const float *, int64_t, int64_t, float *) =
        chosen >= 1 ? weigh_avx2 : weigh_plain;
    void (*softmax)(float *, int64_t) = chosen >= 1 ? softmax_avx2 : softmax_plain;

    float *row = rows + (S - 1) * stride;                    /* the new token's cache row */
    float squares = 0.0f;
    for (int64_t i = 0; i < R; i++) squares += kv[i] * kv[i];
    float inverse = 1.0f / sqrtf(squares / (float)R + eps);
    for (int64_t i = 0; i < R; i++) row[i] = kv[i] * inverse * norm_w[i];
    rotate(kv + R, cos, sin, P, interleaved, row + R);

    size_t query_bytes = activations_bytes(H, nope), latent_bytes = activations_bytes(H, R);
    char *work = malloc(query_bytes + latent_bytes + sizeof(float) * (size_t)(H * nope + H * (R + P) + H * S + H * R));
    if (!work) return -2;
    activations qa = activations_at(work, H, nope), oa = activations_at(work + query_bytes, H, R);
    float *q_nope = (float *)(work + query_bytes + latent_bytes);
    float *q_full = q_nope + H * nope;                       /* (H, R + P): W_UK's query, then the rotated part */
    float *scores = q_full + H * (R + P), *latent = scores + H * S;
    for (int64_t h = 0; h < H; h++) memcpy(q_nope + h * nope, q + h * (nope + P), sizeof(float) * (size_t)nope);
    quantize_rows(q_nope, H, nope, qa.q, qa.scale, qa.sum8);

    int team = threads < 1 ? 1 : threads > H ? (int)H : threads;
    int64_t blocks_nope = nope / BLOCK, blocks_r = R / BLOCK;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int t = 0; t < team; t++) {
        int64_t h0 = H * t / team, h1 = H * (t + 1) / team;
        for (int64_t h = h0; h < h1; h++) {
            run(uk_w + h * (R / TILE) * blocks_nope * TILE_BLOCK, uk_s + h * (R / TILE) * blocks_nope * TILE, 0,
                R / TILE, nope, qa.q + h * nope, qa.scale + h * blocks_nope, qa.sum8 + h * blocks_nope, 1,
                q_full + h * (R + P), R);
            rotate(q + h * (nope + P) + nope, cos, sin, P, interleaved, q_full + h * (R + P) + R);
        }
        scores_of(q_full + h0 * (R + P), h1 - h0, R + P, rows, stride, S, scale, scores + h0 * S);
        for (int64_t h = h0; h < h1; h++) softmax(scores + h * S, S);
        weigh(scores + h0 * S, h1 - h0, S, rows, stride, R, latent + h0 * R);
        for (int64_t h = h0; h < h1; h++) {
            quantize_rows(latent + h * R, 1, R, oa.q + h * R, oa.scale + h * blocks_r, oa.sum8 + h * blocks_r);
            int64_t tile = uv_first + h * uv_head_tiles;
            run(uv_w + tile * blocks_r * TILE_BLOCK, uv_s + tile * blocks_r * TILE, 0, V / TILE, R, oa.q + h * R,
                oa.scale + h * blocks_r, oa.sum8 + h * blocks_r, 1, out + h * V, V);
        }
    }
    free(work);
    return 0;
}

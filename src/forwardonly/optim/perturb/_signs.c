/* forwardonly: the Rademacher perturbation kernel (fp32, CPU).
 *
 *     dst[i] = src[i] + (bit(first + i) ? coef : -coef)     for 0 <= i < n
 *
 * where bit(k) is bit (k & 7) of byte (k >> 3) of `bits`, the random bytes of one
 * direction chunk (forwardonly.optim.perturb.seeds). This is the value that the torch path
 * computes as `torch.add(src, z, alpha=coef)` with z = +-1 from the sign table: coef * z
 * is exact, so both round the same single addition and agree bit for bit. One pass, no
 * sign tensor in memory. `dst == src` (in place) is allowed; partial overlap is not.
 *
 * fo_sign_add2_f32 does two such additions in one pass over the weights (a deferred update written
 * back, then the next perturbation built from the updated value):
 *
 *     w[i]   = w[i] + (bit_a(first + i) ? coef_a : -coef_a)
 *     out[i] = w[i] + (bit_b(first + i) ? coef_b : -coef_b)
 *
 * with the same two roundings as two calls of fo_sign_add_f32, so the same values bit for bit.
 *
 * fo_sign_add_f32_mt / fo_sign_add2_f32_mt split one call into pieces of whole 64-entry words, one
 * per thread of an OpenMP team. The kernel is elementwise, so the values do not depend on the split.
 * native.py links this library against the OpenMP runtime torch itself uses (the libgomp that torch
 * loaded), so the team is torch's own intra-op team: the threads that just ran the previous matmul
 * take the pieces, instead of a second pool of threads competing with torch's spinning workers for
 * the same cores.
 *
 * fo_random_words fills a chunk's random words: the values of torch's CPU generator seeded with `seed`
 * (torch.Generator().manual_seed(seed), then int64 random_ over the full range: MT19937 seeded with the
 * low 32 bits of `seed`, each word two outputs, the first as the high half). native.py checks it against
 * torch at load and uses torch's generator if they ever differ. Written here because torch draws the
 * words one call per word under a lock, three times slower than a loop over whole twists.
 *
 * SIMD: AVX-512 mask blends, AVX2 sign flips (bit l of a random byte shifted to the sign of -coef),
 * else a table of eight signed coefs per random byte.
 *
 * Built at first use by forwardonly.optim.perturb.native with the machine's compiler
 * (-O3 -march=native, -fopenmp where it links); without one, the torch path is used. Plain C, no
 * Python or torch headers: called through ctypes with raw pointers.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define FO_ABI_VERSION 4

int fo_abi_version(void) { return FO_ABI_VERSION; }

int fo_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fo_simd_width(void) {
#if defined(__AVX512F__)
    return 16;
#elif defined(__AVX2__)
    return 8;
#else
    return 1;
#endif
}

static inline float fo_sign(const uint8_t *bits, int64_t k, float coef) {
    return ((bits[k >> 3] >> (k & 7)) & 1) ? coef : -coef;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* Eight signed coefs from the low byte of `byte`: lane l is +coef where bit l is set, else -coef.
 * Bit l is shifted to the sign position and flips the sign of -coef: the same two values, bit for bit,
 * as the scalar select. */
static inline __m256 fo_signs8(uint32_t byte, __m256 neg) {
    const __m256i shifts = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    __m256 flip = _mm256_castsi256_ps(_mm256_sllv_epi32(_mm256_set1_epi32((int)byte), shifts));
    return _mm256_xor_ps(neg, _mm256_and_ps(flip, sign));
}
#endif

/* nbytes: readable bytes at `bits` (the chunk's random words), so wide loads never read past them. */
void fo_sign_add_f32(float *dst, const float *src, int64_t n, const uint8_t *bits, int64_t nbytes,
                     int64_t first, float coef) {
    int64_t i = 0;
    /* scalar head until the bit position is byte aligned */
    while (i < n && ((first + i) & 7) != 0) {
        dst[i] = src[i] + fo_sign(bits, first + i, coef);
        i++;
    }
#if defined(__AVX512F__)
    const __m512 pos = _mm512_set1_ps(coef);
    const __m512 neg = _mm512_set1_ps(-coef);
    /* 64 elements per iteration: one 8-byte word of signs, four 16-lane blends */
    for (; i + 64 <= n && ((first + i) >> 3) + 8 <= nbytes; i += 64) {
        uint64_t w;
        memcpy(&w, bits + ((first + i) >> 3), 8);
        __m512 a0 = _mm512_loadu_ps(src + i);
        __m512 a1 = _mm512_loadu_ps(src + i + 16);
        __m512 a2 = _mm512_loadu_ps(src + i + 32);
        __m512 a3 = _mm512_loadu_ps(src + i + 48);
        a0 = _mm512_add_ps(a0, _mm512_mask_blend_ps((__mmask16)(w), neg, pos));
        a1 = _mm512_add_ps(a1, _mm512_mask_blend_ps((__mmask16)(w >> 16), neg, pos));
        a2 = _mm512_add_ps(a2, _mm512_mask_blend_ps((__mmask16)(w >> 32), neg, pos));
        a3 = _mm512_add_ps(a3, _mm512_mask_blend_ps((__mmask16)(w >> 48), neg, pos));
        _mm512_storeu_ps(dst + i, a0);
        _mm512_storeu_ps(dst + i + 16, a1);
        _mm512_storeu_ps(dst + i + 32, a2);
        _mm512_storeu_ps(dst + i + 48, a3);
    }
    for (; i + 16 <= n && ((first + i) >> 3) + 2 <= nbytes; i += 16) {
        uint16_t w;
        memcpy(&w, bits + ((first + i) >> 3), 2);
        __m512 a = _mm512_loadu_ps(src + i);
        _mm512_storeu_ps(dst + i, _mm512_add_ps(a, _mm512_mask_blend_ps((__mmask16)w, neg, pos)));
    }
#elif defined(__AVX2__)
    const __m256 neg = _mm256_set1_ps(-coef);
    /* 32 elements per iteration: four random bytes, four 8-lane additions */
    for (; i + 32 <= n && ((first + i) >> 3) + 4 <= nbytes; i += 32) {
        uint32_t w;
        memcpy(&w, bits + ((first + i) >> 3), 4);
        __m256 a0 = _mm256_add_ps(_mm256_loadu_ps(src + i), fo_signs8(w, neg));
        __m256 a1 = _mm256_add_ps(_mm256_loadu_ps(src + i + 8), fo_signs8(w >> 8, neg));
        __m256 a2 = _mm256_add_ps(_mm256_loadu_ps(src + i + 16), fo_signs8(w >> 16, neg));
        __m256 a3 = _mm256_add_ps(_mm256_loadu_ps(src + i + 24), fo_signs8(w >> 24, neg));
        _mm256_storeu_ps(dst + i, a0);
        _mm256_storeu_ps(dst + i + 8, a1);
        _mm256_storeu_ps(dst + i + 16, a2);
        _mm256_storeu_ps(dst + i + 24, a3);
    }
#else
    /* portable path: eight elements per random byte through a small table of signed coefs */
    float table[256][8];
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < 8; j++) table[b][j] = ((b >> j) & 1) ? coef : -coef;
    for (; i + 8 <= n; i += 8) {
        const float *t = table[bits[(first + i) >> 3]];
        for (int j = 0; j < 8; j++) dst[i + j] = src[i + j] + t[j];
    }
#endif
    for (; i < n; i++) dst[i] = src[i] + fo_sign(bits, first + i, coef);
}

/* Both sign streams share `first` and `nbytes` (the same slice of the same-sized chunk of two steps). */
void fo_sign_add2_f32(float *w, float *out, int64_t n, const uint8_t *bits_a, const uint8_t *bits_b,
                      int64_t nbytes, int64_t first, float coef_a, float coef_b) {
    int64_t i = 0;
    while (i < n && ((first + i) & 7) != 0) {
        w[i] = w[i] + fo_sign(bits_a, first + i, coef_a);
        out[i] = w[i] + fo_sign(bits_b, first + i, coef_b);
        i++;
    }
#if defined(__AVX512F__)
    const __m512 pa = _mm512_set1_ps(coef_a), na = _mm512_set1_ps(-coef_a);
    const __m512 pb = _mm512_set1_ps(coef_b), nb = _mm512_set1_ps(-coef_b);
    for (; i + 32 <= n && ((first + i) >> 3) + 4 <= nbytes; i += 32) {
        uint32_t ua, ub;
        memcpy(&ua, bits_a + ((first + i) >> 3), 4);
        memcpy(&ub, bits_b + ((first + i) >> 3), 4);
        __m512 a0 = _mm512_loadu_ps(w + i);
        __m512 a1 = _mm512_loadu_ps(w + i + 16);
        a0 = _mm512_add_ps(a0, _mm512_mask_blend_ps((__mmask16)(ua), na, pa));
        a1 = _mm512_add_ps(a1, _mm512_mask_blend_ps((__mmask16)(ua >> 16), na, pa));
        _mm512_storeu_ps(w + i, a0);
        _mm512_storeu_ps(w + i + 16, a1);
        _mm512_storeu_ps(out + i, _mm512_add_ps(a0, _mm512_mask_blend_ps((__mmask16)(ub), nb, pb)));
        _mm512_storeu_ps(out + i + 16, _mm512_add_ps(a1, _mm512_mask_blend_ps((__mmask16)(ub >> 16), nb, pb)));
    }
#elif defined(__AVX2__)
    const __m256 na = _mm256_set1_ps(-coef_a), nb = _mm256_set1_ps(-coef_b);
    for (; i + 16 <= n && ((first + i) >> 3) + 2 <= nbytes; i += 16) {
        uint16_t ua, ub;
        memcpy(&ua, bits_a + ((first + i) >> 3), 2);
        memcpy(&ub, bits_b + ((first + i) >> 3), 2);
        __m256 a0 = _mm256_add_ps(_mm256_loadu_ps(w + i), fo_signs8(ua, na));
        __m256 a1 = _mm256_add_ps(_mm256_loadu_ps(w + i + 8), fo_signs8((uint32_t)ua >> 8, na));
        _mm256_storeu_ps(w + i, a0);
        _mm256_storeu_ps(w + i + 8, a1);
        _mm256_storeu_ps(out + i, _mm256_add_ps(a0, fo_signs8(ub, nb)));
        _mm256_storeu_ps(out + i + 8, _mm256_add_ps(a1, fo_signs8((uint32_t)ub >> 8, nb)));
    }
#endif
    for (; i < n; i++) {
        w[i] = w[i] + fo_sign(bits_a, first + i, coef_a);
        out[i] = w[i] + fo_sign(bits_b, first + i, coef_b);
    }
}

/* The pieces of a split call: [a, b) of thread t among k, in whole 64-entry words (so that every
 * piece but the first starts on a byte of the random bits when `first` does). */
static inline void fo_piece(int64_t n, int t, int k, int64_t *a, int64_t *b) {
    int64_t step = ((n + k - 1) / k + 63) / 64 * 64;
    *a = (int64_t)t * step < n ? (int64_t)t * step : n;
    *b = *a + step < n ? *a + step : n;
}

/* Threads for a call of n elements: at most `threads`, at least `piece` elements each. */
static inline int fo_team(int64_t n, int threads, int64_t piece) {
    int64_t k = piece > 0 ? n / piece : n;
    if (k > threads) k = threads;
    return k < 1 ? 1 : (int)k;
}

/* One piece of either kernel: with bits_b NULL, dst = src + coef_a z_a (fo_sign_add_f32); else
 * dst += coef_a z_a, then out = dst + coef_b z_b (fo_sign_add2_f32, dst being the weights). */
static void fo_run(float *dst, const float *src, float *out, int64_t n, const uint8_t *bits_a,
                   const uint8_t *bits_b, int64_t nbytes, int64_t first, float coef_a, float coef_b) {
    if (bits_b)
        fo_sign_add2_f32(dst, out, n, bits_a, bits_b, nbytes, first, coef_a, coef_b);
    else
        fo_sign_add_f32(dst, src, n, bits_a, nbytes, first, coef_a);
}

static void fo_split(float *dst, const float *src, float *out, int64_t n, const uint8_t *bits_a,
                     const uint8_t *bits_b, int64_t nbytes, int64_t first, float coef_a, float coef_b,
                     int threads, int64_t piece) {
    int k = fo_team(n, threads, piece);
#ifdef _OPENMP
    if (k > 1) {
#pragma omp parallel num_threads(k)
        {
            int64_t a, b;
            fo_piece(n, omp_get_thread_num(), omp_get_num_threads(), &a, &b);
            if (a < b)
                fo_run(dst + a, src ? src + a : 0, out ? out + a : 0, b - a, bits_a, bits_b, nbytes, first + a,
                       coef_a, coef_b);
        }
        return;
    }
#endif
    (void)k;
    fo_run(dst, src, out, n, bits_a, bits_b, nbytes, first, coef_a, coef_b);
}

void fo_sign_add_f32_mt(float *dst, const float *src, int64_t n, const uint8_t *bits, int64_t nbytes,
                        int64_t first, float coef, int threads, int64_t piece) {
    fo_split(dst, src, 0, n, bits, 0, nbytes, first, coef, 0.0f, threads, piece);
}

void fo_sign_add2_f32_mt(float *w, float *out, int64_t n, const uint8_t *bits_a, const uint8_t *bits_b,
                         int64_t nbytes, int64_t first, float coef_a, float coef_b, int threads, int64_t piece) {
    fo_split(w, 0, out, n, bits_a, bits_b, nbytes, first, coef_a, coef_b, threads, piece);
}

/* MT19937, as torch's CPU generator runs it (at::mt19937): the state is seeded from the low 32 bits of
 * the seed, twisted 624 words at a time, and every output tempered. */
#define FO_MT_N 624
#define FO_MT_M 397

static void fo_mt_init(uint32_t *mt, uint64_t seed) {
    mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < FO_MT_N; j++) mt[j] = 1812433253u * (mt[j - 1] ^ (mt[j - 1] >> 30)) + (uint32_t)j;
}

static inline uint32_t fo_mt_mix(uint32_t u, uint32_t v) {
    uint32_t y = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (y >> 1) ^ (-(v & 1u) & 0x9908b0dfu);
}

static void fo_mt_twist(uint32_t *mt) {
    int i = 0;
    for (; i < FO_MT_N - FO_MT_M; i++) mt[i] = mt[i + FO_MT_M] ^ fo_mt_mix(mt[i], mt[i + 1]);
    for (; i < FO_MT_N - 1; i++) mt[i] = mt[i + FO_MT_M - FO_MT_N] ^ fo_mt_mix(mt[i], mt[i + 1]);
    mt[FO_MT_N - 1] = mt[FO_MT_M - 1] ^ fo_mt_mix(mt[FO_MT_N - 1], mt[0]);
}

static inline uint32_t fo_mt_temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

void fo_random_words(uint64_t *out, int64_t nwords, uint64_t seed) {
    uint32_t mt[FO_MT_N];
    fo_mt_init(mt, seed);
    for (int64_t k = 0; k < nwords; k += FO_MT_N / 2) {  /* 624 outputs per twist: 312 whole words */
        fo_mt_twist(mt);
        int64_t m = nwords - k < FO_MT_N / 2 ? nwords - k : FO_MT_N / 2;
        for (int64_t j = 0; j < m; j++)
            out[k + j] = ((uint64_t)fo_mt_temper(mt[2 * j]) << 32) | fo_mt_temper(mt[2 * j + 1]);
    }
}

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
 * Built at first use by forwardonly.optim.perturb.native with the machine's compiler
 * (-O3 -march=native); without one, the torch path is used. Plain C, no Python or torch
 * headers: called through ctypes with raw pointers.
 */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define FO_ABI_VERSION 2

int fo_abi_version(void) { return FO_ABI_VERSION; }

int fo_simd_width(void) {
#if defined(__AVX512F__)
    return 16;
#else
    return 1;
#endif
}

static inline float fo_sign(const uint8_t *bits, int64_t k, float coef) {
    return ((bits[k >> 3] >> (k & 7)) & 1) ? coef : -coef;
}

/* nbytes: readable bytes at `bits` (the chunk's random words), so wide loads never read past them. */
void fo_sign_add_f32(float *dst, const float *src, int64_t n, const uint8_t *bits, int64_t nbytes,
                     int64_t first, float coef) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 pos = _mm512_set1_ps(coef);
    const __m512 neg = _mm512_set1_ps(-coef);
    /* scalar head until the bit position is byte aligned */
    while (i < n && ((first + i) & 7) != 0) {
        dst[i] = src[i] + fo_sign(bits, first + i, coef);
        i++;
    }
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
#else
    /* portable path: eight elements per random byte through a small table of signed coefs */
    float table[256][8];
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < 8; j++) table[b][j] = ((b >> j) & 1) ? coef : -coef;
    while (i < n && ((first + i) & 7) != 0) {
        dst[i] = src[i] + fo_sign(bits, first + i, coef);
        i++;
    }
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
#if defined(__AVX512F__)
    const __m512 pa = _mm512_set1_ps(coef_a), na = _mm512_set1_ps(-coef_a);
    const __m512 pb = _mm512_set1_ps(coef_b), nb = _mm512_set1_ps(-coef_b);
    while (i < n && ((first + i) & 7) != 0) {
        w[i] = w[i] + fo_sign(bits_a, first + i, coef_a);
        out[i] = w[i] + fo_sign(bits_b, first + i, coef_b);
        i++;
    }
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
#endif
    for (; i < n; i++) {
        w[i] = w[i] + fo_sign(bits_a, first + i, coef_a);
        out[i] = w[i] + fo_sign(bits_b, first + i, coef_b);
    }
}

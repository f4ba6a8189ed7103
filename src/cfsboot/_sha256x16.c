/*
 * SHA-256 of sixteen 4096-byte blocks at once, one per 32-bit AVX-512 lane:
 * the SHA-256 twin of _sha512x8.c (see there for why fs-verity suits
 * multi-buffer hashing).  FIPS 180-4 SHA-256, unchanged; used only where the
 * CPU has AVX-512 (F, BW), and compared with OpenSSL by the tests.
 */
#include <stdint.h>
#include <string.h>

#include "_multibuffer.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define TARGET __attribute__((target("avx512f,avx512bw")))

/* Truth tables for _mm512_ternarylogic_epi32(a, b, c, table). */
#define XOR3 0x96
#define CHOOSE 0xCA   /* a ? b : c */
#define MAJORITY 0xE8

TARGET static inline __m512i xor3(__m512i a, __m512i b, __m512i c)
{
    return _mm512_ternarylogic_epi32(a, b, c, XOR3);
}

/* One 64-byte SHA-256 block in every lane (w: the message words, updated). */
TARGET static void compress(__m512i state[8], __m512i w[16])
{
    __m512i a = state[0], b = state[1], c = state[2], d = state[3];
    __m512i e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; t++) {
        __m512i wt;
        if (t < 16) {
            wt = w[t];
        } else {
            __m512i w2 = w[(t - 2) & 15], w15 = w[(t - 15) & 15];
            __m512i s1 = xor3(_mm512_ror_epi32(w2, 17), _mm512_ror_epi32(w2, 19),
                              _mm512_srli_epi32(w2, 10));
            __m512i s0 = xor3(_mm512_ror_epi32(w15, 7), _mm512_ror_epi32(w15, 18),
                              _mm512_srli_epi32(w15, 3));
            wt = _mm512_add_epi32(_mm512_add_epi32(s1, w[(t - 7) & 15]),
                                  _mm512_add_epi32(s0, w[t & 15]));
            w[t & 15] = wt;
        }
        __m512i sigma1 = xor3(_mm512_ror_epi32(e, 6), _mm512_ror_epi32(e, 11),
                              _mm512_ror_epi32(e, 25));
        __m512i choose = _mm512_ternarylogic_epi32(e, f, g, CHOOSE);
        __m512i t1 = _mm512_add_epi32(_mm512_add_epi32(h, sigma1),
                                      _mm512_add_epi32(choose, _mm512_add_epi32(
                                          _mm512_set1_epi32((int)K[t]), wt)));
        __m512i sigma0 = xor3(_mm512_ror_epi32(a, 2), _mm512_ror_epi32(a, 13),
                              _mm512_ror_epi32(a, 22));
        __m512i t2 = _mm512_add_epi32(sigma0, _mm512_ternarylogic_epi32(a, b, c, MAJORITY));
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi32(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi32(t1, t2);
    }
    state[0] = _mm512_add_epi32(state[0], a);
    state[1] = _mm512_add_epi32(state[1], b);
    state[2] = _mm512_add_epi32(state[2], c);
    state[3] = _mm512_add_epi32(state[3], d);
    state[4] = _mm512_add_epi32(state[4], e);
    state[5] = _mm512_add_epi32(state[5], f);
    state[6] = _mm512_add_epi32(state[6], g);
    state[7] = _mm512_add_epi32(state[7], h);
}

TARGET void sha256x16_blocks(const unsigned char *const blocks[16], unsigned char *out)
{
    /* two gathers of eight lanes each, by absolute address (base 0) */
    const __m512i low = _mm512_loadu_si512((const void *)blocks);
    const __m512i high = _mm512_loadu_si512((const void *)(blocks + 8));
    /* big-endian words: reverse the bytes of each 32-bit lane */
    const __m512i swap = _mm512_broadcast_i32x4(
        _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3));
    __m512i state[8], w[16];
    for (int i = 0; i < 8; i++)
        state[i] = _mm512_set1_epi32((int)H0[i]);
    for (int chunk = 0; chunk < 4096 / 64; chunk++) {
        for (int t = 0; t < 16; t++) {
            const __m512i at = _mm512_set1_epi64(chunk * 64 + 4 * t);
            __m256i lo = _mm512_i64gather_epi32(_mm512_add_epi64(low, at), NULL, 1);
            __m256i hi = _mm512_i64gather_epi32(_mm512_add_epi64(high, at), NULL, 1);
            w[t] = _mm512_shuffle_epi8(
                _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), swap);
        }
        compress(state, w);
    }
    /* The padding block, the same for every 4096-byte message:
     * 0x80, zeros, and the length in bits (32768) in the last word. */
    w[0] = _mm512_set1_epi32((int)0x80000000u);
    for (int t = 1; t < 15; t++)
        w[t] = _mm512_setzero_si512();
    w[15] = _mm512_set1_epi32(4096 * 8);
    compress(state, w);
    uint32_t words[8][16]; /* [state word][lane] */
    for (int i = 0; i < 8; i++)
        _mm512_storeu_si512((void *)words[i], _mm512_shuffle_epi8(state[i], swap));
    for (int lane = 0; lane < 16; lane++)
        for (int i = 0; i < 8; i++)
            memcpy(out + 32 * lane + 4 * i, &words[i][lane], 4);
}

#else /* not x86-64 with GCC/Clang: never used (sha512x8_available() says no) */

void sha256x16_blocks(const unsigned char *const blocks[16], unsigned char *out)
{
    (void)blocks;
    (void)out;
}

#endif

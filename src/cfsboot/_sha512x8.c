/*
 * SHA-512 of eight 4096-byte blocks at once, one per AVX-512 lane.
 *
 * fs-verity hashes every 4096-byte block of a file on its own, so the blocks
 * are independent messages of one fixed length: the textbook case for
 * "multi-buffer" hashing.  A single SHA-512 stream is bound by the latency
 * of its round chain; eight streams side by side in the eight 64-bit lanes
 * of a 512-bit register share every instruction, which is where the speed
 * over one-block-at-a-time hashing comes from.  The algorithm is FIPS 180-4
 * SHA-512, unchanged; _native.c uses this when the CPU has AVX-512 (F, BW)
 * and falls back to OpenSSL's one-block SHA512() otherwise, and the tests
 * compare both against an independent reference.
 */
#include <stdint.h>
#include <string.h>

#include "_multibuffer.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static const uint64_t K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

static const uint64_t H0[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

#define TARGET __attribute__((target("avx512f,avx512bw")))

/* Truth tables for _mm512_ternarylogic_epi64(a, b, c, table). */
#define XOR3 0x96
#define CHOOSE 0xCA   /* a ? b : c */
#define MAJORITY 0xE8

TARGET static inline __m512i xor3(__m512i a, __m512i b, __m512i c)
{
    return _mm512_ternarylogic_epi64(a, b, c, XOR3);
}

/* One 128-byte SHA-512 block in every lane: w[16] holds the message words,
 * state[8] the chaining values (updated). */
TARGET static void compress(__m512i state[8], __m512i w[16])
{
    __m512i a = state[0], b = state[1], c = state[2], d = state[3];
    __m512i e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 80; t++) {
        __m512i wt;
        if (t < 16) {
            wt = w[t];
        } else {
            __m512i w2 = w[(t - 2) & 15], w15 = w[(t - 15) & 15];
            __m512i s1 = xor3(_mm512_ror_epi64(w2, 19), _mm512_ror_epi64(w2, 61),
                              _mm512_srli_epi64(w2, 6));
            __m512i s0 = xor3(_mm512_ror_epi64(w15, 1), _mm512_ror_epi64(w15, 8),
                              _mm512_srli_epi64(w15, 7));
            wt = _mm512_add_epi64(_mm512_add_epi64(s1, w[(t - 7) & 15]),
                                  _mm512_add_epi64(s0, w[t & 15]));
            w[t & 15] = wt;
        }
        __m512i sigma1 = xor3(_mm512_ror_epi64(e, 14), _mm512_ror_epi64(e, 18),
                              _mm512_ror_epi64(e, 41));
        __m512i choose = _mm512_ternarylogic_epi64(e, f, g, CHOOSE);
        __m512i t1 = _mm512_add_epi64(_mm512_add_epi64(h, sigma1),
                                      _mm512_add_epi64(choose, _mm512_add_epi64(
                                          _mm512_set1_epi64((long long)K[t]), wt)));
        __m512i sigma0 = xor3(_mm512_ror_epi64(a, 28), _mm512_ror_epi64(a, 34),
                              _mm512_ror_epi64(a, 39));
        __m512i t2 = _mm512_add_epi64(sigma0, _mm512_ternarylogic_epi64(a, b, c, MAJORITY));
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi64(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi64(t1, t2);
    }
    state[0] = _mm512_add_epi64(state[0], a);
    state[1] = _mm512_add_epi64(state[1], b);
    state[2] = _mm512_add_epi64(state[2], c);
    state[3] = _mm512_add_epi64(state[3], d);
    state[4] = _mm512_add_epi64(state[4], e);
    state[5] = _mm512_add_epi64(state[5], f);
    state[6] = _mm512_add_epi64(state[6], g);
    state[7] = _mm512_add_epi64(state[7], h);
}

TARGET void sha512x8_blocks(const unsigned char *const blocks[8], unsigned char *out)
{
    /* lane i reads block i: the gathers take absolute addresses (base 0) */
    const __m512i lanes = _mm512_loadu_si512((const void *)blocks);
    /* big-endian words: reverse the bytes of each 64-bit lane */
    const __m512i swap = _mm512_broadcast_i32x4(
        _mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    __m512i state[8], w[16];
    for (int i = 0; i < 8; i++)
        state[i] = _mm512_set1_epi64((long long)H0[i]);
    for (int chunk = 0; chunk < 4096 / 128; chunk++) {
        for (int t = 0; t < 16; t++)
            w[t] = _mm512_shuffle_epi8(
                _mm512_i64gather_epi64(
                    _mm512_add_epi64(lanes, _mm512_set1_epi64(chunk * 128 + 8 * t)), NULL, 1),
                swap);
        compress(state, w);
    }
    /* The padding block, the same for every 4096-byte message:
     * 0x80, zeros, and the length in bits (32768) in the last word. */
    w[0] = _mm512_set1_epi64((long long)0x8000000000000000ULL);
    for (int t = 1; t < 15; t++)
        w[t] = _mm512_setzero_si512();
    w[15] = _mm512_set1_epi64(4096 * 8);
    compress(state, w);
    uint64_t words[8][8]; /* [state word][lane] */
    for (int i = 0; i < 8; i++)
        _mm512_storeu_si512((void *)words[i], _mm512_shuffle_epi8(state[i], swap));
    for (int lane = 0; lane < 8; lane++)
        for (int i = 0; i < 8; i++)
            memcpy(out + 64 * lane + 8 * i, &words[i][lane], 8);
}

void sha512x8_4k(const unsigned char *blocks, unsigned char *out)
{
    const unsigned char *each[8];
    for (int i = 0; i < 8; i++)
        each[i] = blocks + 4096 * i;
    sha512x8_blocks(each, out);
}

int sha512x8_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

#else /* not x86-64 with GCC/Clang: never used */

void sha512x8_blocks(const unsigned char *const blocks[8], unsigned char *out)
{
    (void)blocks;
    (void)out;
}

void sha512x8_4k(const unsigned char *blocks, unsigned char *out)
{
    (void)blocks;
    (void)out;
}

int sha512x8_available(void) { return 0; }

#endif

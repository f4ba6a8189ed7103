/* SHA-512 of eight consecutive 4096-byte blocks in AVX-512 lanes (_sha512x8.c). */
#ifndef CFSBOOT_SHA512X8_H
#define CFSBOOT_SHA512X8_H

/* Nonzero when this CPU can run sha512x8_4k. */
int sha512x8_available(void);

/* out[64*i .. 64*i+63] = SHA-512 of the 4096 bytes at blocks[i], i = 0..7. */
void sha512x8_blocks(const unsigned char *const blocks[8], unsigned char *out);

/* out[64*i .. 64*i+63] = SHA-512 of blocks[4096*i .. 4096*i+4095], i = 0..7. */
void sha512x8_4k(const unsigned char *blocks, unsigned char *out);

#endif

/* Multi-buffer hashing of 4096-byte blocks in AVX-512 lanes: SHA-512 eight at
 * a time (_sha512x8.c), SHA-256 sixteen at a time (_sha256x16.c). */
#ifndef CFSBOOT_MULTIBUFFER_H
#define CFSBOOT_MULTIBUFFER_H

/* Nonzero when this CPU can run these (AVX-512 F and BW). */
int sha512x8_available(void);

/* out[64*i .. 64*i+63] = SHA-512 of the 4096 bytes at blocks[i], i = 0..7. */
void sha512x8_blocks(const unsigned char *const blocks[8], unsigned char *out);

/* out[64*i .. 64*i+63] = SHA-512 of blocks[4096*i .. 4096*i+4095], i = 0..7. */
void sha512x8_4k(const unsigned char *blocks, unsigned char *out);

/* out[32*i .. 32*i+31] = SHA-256 of the 4096 bytes at blocks[i], i = 0..15. */
void sha256x16_blocks(const unsigned char *const blocks[16], unsigned char *out);

#endif

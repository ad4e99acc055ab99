/*
 * migrate/simd.h - the vectorised helpers of the send path and the wire
 * format that are not public: CRC32C folded into a copy, and the selected
 * zero-check implementation. Internal, not installed.
 */
#ifndef KD_SIMD_H
#define KD_SIMD_H

#include <stdint.h>

/* crc32c.c: CRC32C continued over n bytes copied from src to dst (one read;
 * SSE4.2 when n is a multiple of 32). */
uint32_t kd__crc32c_copy(uint32_t crc, void *dst, const void *src, uint64_t n);

/* zero.c: the zero check kd_simd_select chose (1 = all zero). */
typedef int (*kd_zero_fn)(const void *buf, uint64_t len);
kd_zero_fn kd__zero_check(void);

#endif /* KD_SIMD_H */

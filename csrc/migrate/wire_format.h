/*
 * migrate/wire_format.h - byte order helpers of the wire format (the format
 * itself is documented in wire_encode.c); internal, not installed.
 */
#ifndef KD_WIRE_FORMAT_H
#define KD_WIRE_FORMAT_H

#include <stdint.h>
#include <string.h>

#include "kvmdirty.h"

#define KD_PAGE KD_PAGE_SIZE

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	v = __builtin_bswap64(v); /* one store: the sender writes one per page */
	memcpy(p, &v, 8);
#else
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
#endif
}

#endif /* KD_WIRE_FORMAT_H */

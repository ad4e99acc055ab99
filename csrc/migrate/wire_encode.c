/*
 * migrate/wire_encode.c - the migration wire format, and its encoder: batch
 * sealing and the control records (the sender encodes page records itself,
 * sendpath.c; the decoder is wire_dest.c).
 *
 * Stream = a sequence of batches. All integers big-endian.
 *
 *   batch header (KD_WIRE_BATCH_HEADER = 24 bytes)
 *     0  be32 magic        KD_WIRE_BATCH_MAGIC ("KDB1")
 *     4  be32 payload_len  bytes of records after the header, <= KD_WIRE_MAX_PAYLOAD
 *     8  be64 seq          0, 1, 2, ... per stream (a lost or repeated batch is an error)
 *    16  be32 nrecords     records in the payload
 *    20  be32 crc          CRC32C (Castagnoli) of header bytes 0..19, then the payload
 *
 *   records: be64 header = address | flag (address page aligned, flag in the
 *   low 12 bits, exactly one flag per record, as QEMU's RAM_SAVE_FLAG_*):
 *     KD_WIRE_MEM_SIZE 0x04  address field = total guest bytes; then be32
 *                            nregions, then nregions x (be64 gpa, be64 size).
 *                            Must be the first record of the stream.
 *     KD_WIRE_ZERO     0x02  the page at address is filled with the next byte
 *                            (1 byte follows: 9 bytes in all).
 *     KD_WIRE_PAGE     0x08  the page's 4096 bytes follow (4104 bytes in all).
 *     KD_WIRE_EOS      0x10  end of stream: the last record of the last batch.
 *
 * The decoder checks magic, length, sequence and CRC of a whole batch before
 * applying any of its records, so a corrupted batch changes nothing; records
 * outside the announced regions, unknown flags, data after EOS, or a stream
 * that ends without EOS are errors, never a silent mismatch.
 */
#include <errno.h>

#include "wire_format.h"

#define PAGE KD_PAGE


static void put_batch_header(uint8_t *b, uint64_t payload_len, uint32_t nrecords, uint64_t seq)
{
	put_be32(b, KD_WIRE_BATCH_MAGIC);
	put_be32(b + 4, (uint32_t)payload_len);
	put_be64(b + 8, seq);
	put_be32(b + 16, nrecords);
}

KD_API int kd_wire_seal_batch(void *buf, uint64_t payload_len, uint32_t nrecords, uint64_t seq)
{
	uint8_t *b = buf;
	uint32_t crc;

	if (!buf || payload_len > KD_WIRE_MAX_PAYLOAD)
		return -EINVAL;
	put_batch_header(b, payload_len, nrecords, seq);
	crc = kd_crc32c(0, b, 20);
	crc = kd_crc32c(crc, b + KD_WIRE_BATCH_HEADER, payload_len);
	put_be32(b + 20, crc);
	return 0;
}

KD_API int kd_wire_seal_batch_crc(void *buf, uint64_t payload_len, uint32_t nrecords,
				  uint64_t seq, uint32_t payload_crc)
{
	uint8_t *b = buf;

	if (!buf || payload_len > KD_WIRE_MAX_PAYLOAD)
		return -EINVAL;
	put_batch_header(b, payload_len, nrecords, seq);
	put_be32(b + 20, kd_crc32c_combine(kd_crc32c(0, b, 20), payload_crc, payload_len));
	return 0;
}

KD_API int64_t kd_wire_put_mem_size(void *buf, uint64_t cap, const uint64_t *gpas,
				     const uint64_t *sizes, uint32_t nregions)
{
	uint8_t *b = buf;
	uint64_t need = 12 + 16ull * nregions, total = 0;

	if (!buf || (!gpas || !sizes) || nregions == 0 || nregions > KD_WIRE_MAX_REGIONS)
		return -EINVAL;
	if (cap < need)
		return -ENOSPC;
	for (uint32_t i = 0; i < nregions; i++) {
		if ((gpas[i] | sizes[i]) & (PAGE - 1) || sizes[i] == 0)
			return -EINVAL;
		total += sizes[i];
	}
	put_be64(b, total | KD_WIRE_MEM_SIZE);
	put_be32(b + 8, nregions);
	for (uint32_t i = 0; i < nregions; i++) {
		put_be64(b + 12 + 16 * i, gpas[i]);
		put_be64(b + 20 + 16 * i, sizes[i]);
	}
	return (int64_t)need;
}

KD_API int64_t kd_wire_put_eos(void *buf, uint64_t cap)
{
	if (!buf)
		return -EINVAL;
	if (cap < 8)
		return -ENOSPC;
	put_be64(buf, KD_WIRE_EOS);
	return 8;
}

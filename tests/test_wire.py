"""Wire format: encode with the C sender, decode with the C destination;
corruption, truncation and protocol errors are detected, never applied."""
import numpy as np
import pytest

from pykvmdirty._native import ffi, lib
from pykvmdirty.bindings.wire import WireDest
from pykvmdirty.errors import SinkError

PAGE = 4096


@pytest.fixture(params=[1, 0], ids=["simd", "scalar"])
def simd(request):
    lib.kd_simd_select(request.param)
    yield request.param
    lib.kd_simd_select(1)


def test_crc32c_known_value(simd):
    assert lib.kd_crc32c(0, b"123456789", 9) == 0xE3069283
    # incremental == one shot
    data = np.random.default_rng(1).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    one = lib.kd_crc32c(0, data, len(data))
    two = lib.kd_crc32c(lib.kd_crc32c(0, data[:777], 777), data[777:], len(data) - 777)
    assert one == two


def test_zero_detection_every_position(simd):
    buf = np.zeros(PAGE, dtype=np.uint8)
    p = ffi.from_buffer(buf)
    assert lib.kd_buffer_is_zero(p, PAGE) == 1
    for i in range(PAGE):
        buf[i] = 0x80
        assert lib.kd_buffer_is_zero(p, PAGE) == 0, i
        buf[i] = 0
    assert lib.kd_buffer_is_zero(p, 37) == 1
    pages = np.zeros((8, PAGE), dtype=np.uint8)
    pages[[1, 5], [4095, 17]] = 1
    assert lib.kd_count_zero_pages(ffi.from_buffer(pages), 8) == 6
    assert lib.kd_buffer_is_zero(ffi.NULL, 5) == -22


def _stream(contents, batch=16 * 1024, gpa_base=0, eos=True):
    """Encode pages (npages x 4096 array) with a sender; returns a list of batches."""
    npages = contents.shape[0]
    cfg = ffi.new("struct kd_send_config *")
    sp = ffi.new("kd_sender **")
    assert lib.kd_sender_create(cfg, sp) == 0
    s = ffi.gc(sp[0], lib.kd_sender_destroy)
    buf = np.empty(batch, dtype=np.uint8)
    assert lib.kd_sender_set_buffer(s, ffi.from_buffer(buf), batch) == 0
    reg = ffi.new("struct kd_send_region *")
    reg.memory = ffi.from_buffer(contents)
    reg.base_gfn = gpa_base // PAGE
    reg.npages = npages
    out = []
    ln = ffi.new("uint64_t *")
    gp = np.array([gpa_base], dtype=np.uint64)
    sz = np.array([npages * PAGE], dtype=np.uint64)
    assert lib.kd_sender_put_mem_size(s, ffi.from_buffer("uint64_t[]", gp),
                                      ffi.from_buffer("uint64_t[]", sz), 1) == 0
    pos = ffi.new("uint64_t *")
    while True:
        rc = lib.kd_send_pages(s, reg, ffi.NULL, npages, pos, 0, 0)
        if rc == lib.KD_SEND_FULL:
            lib.kd_sender_flush(s, ln)
            out.append(bytes(buf[:ln[0]]))
            continue
        assert rc == lib.KD_SEND_DONE
        break
    if eos:
        if lib.kd_sender_put_eos(s) == lib.KD_SEND_FULL:
            lib.kd_sender_flush(s, ln)
            out.append(bytes(buf[:ln[0]]))
            assert lib.kd_sender_put_eos(s) == 0
    lib.kd_sender_flush(s, ln)
    if ln[0]:
        out.append(bytes(buf[:ln[0]]))
    return out


def _contents(npages=100, seed=0):
    rng = np.random.default_rng(seed)
    c = np.zeros((npages, PAGE), dtype=np.uint8)
    nonzero = rng.random(npages) < 0.4
    c[nonzero] = rng.integers(0, 256, (int(nonzero.sum()), PAGE), dtype=np.uint8)
    c[nonzero, 0] |= 1
    return c, int((~nonzero).sum())


def test_roundtrip_applies_pages_and_zero_pages(simd):
    c, nzero = _contents()
    batches = _stream(c, gpa_base=1 << 20)
    assert len(batches) > 3
    d = WireDest()
    for b in batches:
        assert d.feed(b) == len(b)
    assert d.eos
    d.finish(0)
    st = d.stats()
    assert st["zero_pages"] == nzero and st["pages"] == 100 - nzero
    assert st["batches"] == len(batches) and st["guest_bytes"] == 100 * PAGE
    (gpa, size), = d.regions()
    assert (gpa, size) == (1 << 20, 100 * PAGE)
    assert np.array_equal(d.memory(0).reshape(100, PAGE), c)


def test_stream_can_arrive_in_pieces():
    c, _ = _contents(40, seed=3)
    data = b"".join(_stream(c))
    d = WireDest()
    have = b""
    for i in range(0, len(data), 777):  # odd-sized pieces
        have += data[i:i + 777]
        used = d.feed(have)
        have = have[used:]
    assert d.eos and have == b""
    assert np.array_equal(d.memory(0).reshape(40, PAGE), c)


@pytest.mark.parametrize("where", [3, 30, 5000, -1])
def test_corrupted_byte_is_detected_and_nothing_applied(where):
    c, _ = _contents(30, seed=4)
    batches = _stream(c, batch=16 * 1024)
    d = WireDest()
    assert d.feed(batches[0]) == len(batches[0])  # the MEM_SIZE batch (and pages)
    bad = bytearray(batches[1])
    bad[where] ^= 0x40
    with pytest.raises(SinkError, match="checksum|magic|sequence|exceeds"):
        d.feed(bytes(bad))
    # sticky: the good batch is refused now too
    with pytest.raises(SinkError):
        d.feed(batches[1])


def test_truncated_stream_is_reported():
    c, _ = _contents(30, seed=5)
    data = b"".join(_stream(c))
    d = WireDest()
    cut = data[:len(data) - 100]
    used = d.feed(cut)
    assert not d.eos
    with pytest.raises(SinkError, match="truncated"):
        d.finish(len(cut) - used)
    # without EOS at all
    d2 = WireDest()
    nb = b"".join(_stream(c, eos=False))
    d2.feed(nb)
    with pytest.raises(SinkError, match="no end-of-stream"):
        d2.finish(0)


def test_missing_batch_is_a_sequence_error():
    c, _ = _contents(30, seed=6)
    batches = _stream(c, batch=16 * 1024)
    d = WireDest()
    d.feed(batches[0])
    with pytest.raises(SinkError, match="sequence number 2, expected 1"):
        d.feed(batches[2])


def _batch(records, seq):
    payload = b"".join(records)
    buf = bytearray(24 + len(payload))
    buf[24:] = payload
    b = ffi.from_buffer(buf)
    assert lib.kd_wire_seal_batch(b, len(payload), len(records), seq) == 0
    return bytes(buf)


def _be64(v):
    return int(v).to_bytes(8, "big")


def _mem_size(gpa, size):
    return _be64(size | 0x04) + (1).to_bytes(4, "big") + _be64(gpa) + _be64(size)


def test_page_outside_regions_unknown_flag_and_data_after_eos():
    d = WireDest()
    d.feed(_batch([_mem_size(0, 4 * PAGE)], 0))
    with pytest.raises(SinkError, match="outside every region"):
        d.feed(_batch([_be64(8 * PAGE | 0x08) + bytes(PAGE)], 1))
    d = WireDest()
    d.feed(_batch([_mem_size(0, 4 * PAGE)], 0))
    with pytest.raises(SinkError, match="unknown flags"):
        d.feed(_batch([_be64(PAGE | 0x40)], 1))
    d = WireDest()
    with pytest.raises(SinkError, match="before the MEM_SIZE"):
        d.feed(_batch([_be64(0 | 0x02) + b"\0"], 0))
    d = WireDest()
    d.feed(_batch([_mem_size(0, 4 * PAGE)], 0))
    with pytest.raises(SinkError, match="after end of stream"):
        d.feed(_batch([_be64(0x10), _be64(0x02) + b"\0"], 1))


def test_zero_record_with_fill_byte_and_hashes():
    d = WireDest()
    d.feed(_batch([_mem_size(0, 2 * PAGE), _be64(PAGE | 0x02) + b"\x07", _be64(0x10)], 0))
    mem = d.memory(0)
    assert (mem[PAGE:] == 7).all() and (mem[:PAGE] == 0).all()
    regions, hashes = d.hashes()
    src = np.zeros(2 * PAGE, dtype=np.uint8)
    src[PAGE:] = 7
    from pykvmdirty.bindings.wire import page_hashes
    assert np.array_equal(page_hashes(src), hashes)
    assert hashes[0] != hashes[1]


def test_bad_arguments_are_errnos():
    assert lib.kd_wire_seal_batch(ffi.NULL, 0, 0, 0) == -22
    buf = bytearray(64)
    assert lib.kd_wire_put_eos(ffi.from_buffer(buf), 4) == -28  # ENOSPC
    cfg = ffi.new("struct kd_send_config *")
    sp = ffi.new("kd_sender **")
    cfg.rate_limit = 1000  # below one page record per window
    assert lib.kd_sender_create(cfg, sp) == -22
    cfg.rate_limit = 0
    cfg.flags = 1 << 7
    assert lib.kd_sender_create(cfg, sp) == -22
    cfg.flags = 0
    cfg.link_bandwidth = 100  # cost model without the virtual clock
    assert lib.kd_sender_create(cfg, sp) == -22


@pytest.mark.parametrize("n", [0, 1, 8, 12287, 12288, 12289, 3 * 4096 * 7 + 13, 1 << 20])
def test_crc32c_interleaved_and_combine_match_the_table(n):
    # long buffers take three interleaved chains joined by a shift: same CRC
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    hw = lib.kd_crc32c(0, data, n)
    lib.kd_crc32c_force_software(1)
    try:
        sw = lib.kd_crc32c(0, data, n)
    finally:
        lib.kd_crc32c_force_software(0)
    assert hw == sw
    for cut in sorted({0, min(1, n), n // 3, n}):
        a = lib.kd_crc32c(0, data, cut)
        b = lib.kd_crc32c(0, data[cut:], n - cut)
        assert lib.kd_crc32c_combine(a, b, n - cut) == hw


def test_sender_checksums_while_encoding_same_as_sealing_afterwards(simd):
    # the sender's running payload CRC (copy + CRC in one read) seals the same
    # header as a CRC over the finished batch
    c, _ = _contents(40, seed=9)
    for b in _stream(c, batch=64 * 1024):
        payload = b[24:]
        buf = bytearray(b)
        nrec = int.from_bytes(b[16:20], "big")
        seq = int.from_bytes(b[8:16], "big")
        assert lib.kd_wire_seal_batch(ffi.from_buffer(buf), len(payload), nrec, seq) == 0
        assert bytes(buf) == bytes(b)
        crc = lib.kd_crc32c(0, payload, len(payload))
        assert lib.kd_wire_seal_batch_crc(ffi.from_buffer(buf), len(payload), nrec, seq,
                                          crc) == 0
        assert bytes(buf) == bytes(b)


def test_zero_record_over_a_written_page_zeroes_it():
    # the destination skips zero records for pages it never wrote (no read, no
    # fault), but a page it wrote must really be zeroed again
    d = WireDest()
    page = bytes([5]) * PAGE
    d.feed(_batch([_mem_size(0, 4 * PAGE), _be64(PAGE | 0x08) + page,
                   _be64(2 * PAGE | 0x08) + page], 0))
    d.feed(_batch([_be64(PAGE | 0x02) + b"\0", _be64(3 * PAGE | 0x02) + b"\0", _be64(0x10)], 1))
    mem = d.memory(0).reshape(4, PAGE)
    assert (mem[[0, 1, 3]] == 0).all() and (mem[2] == 5).all()
    st = d.stats()
    assert st["pages"] == 2 and st["zero_pages"] == 2


@pytest.mark.parametrize("prefault", [0, 64 * PAGE])
def test_destination_with_prefault_thread_applies_the_same(prefault):
    # dense ascending pages (a bulk pass): the thread runs ahead of the writer
    # while the stream is applied (how far it gets before EOS is up to the
    # scheduler), and the result is the same either way
    c = np.random.default_rng(11).integers(0, 256, (600, PAGE), dtype=np.uint8)
    c[:, 0] |= 1
    c[100:150] = 0
    d = WireDest(prefault)
    for b in _stream(c, batch=128 * 1024):
        d.feed(b)
    d.finish(0)
    assert np.array_equal(d.memory(0).reshape(-1, PAGE), c)
    assert d.stats()["prefaulted"] <= c.size if prefault else d.stats()["prefaulted"] == 0
    # only before the stream starts; a size that is not whole pages is EINVAL
    assert lib.kd_wire_dest_set_prefault(d._h, PAGE) == -16
    assert lib.kd_wire_dest_set_prefault(WireDest()._h, 100) == -22


# ---------------------------------------------------------------------------
# kd_wire_dest_peek_mem_size: the claim read by the decoder before it maps

def _regions(*pairs, total=None, count=None):
    body = b"".join(_be64(g) + _be64(s) for g, s in pairs)
    total = sum(s for _, s in pairs) if total is None else total
    count = len(pairs) if count is None else count
    return _be64(total | 0x04) + count.to_bytes(4, "big") + body


def test_peek_reads_the_claim_without_mapping_it():
    d = WireDest()
    first = _batch([_regions((8 * PAGE, 2 * PAGE), (0, 4 * PAGE))], 0)
    assert d.peek_mem_size(first) == (6 * PAGE, 2)
    assert d.regions() == [] and d.stats()["batches"] == 0   # nothing mapped or applied
    assert d.peek_mem_size(first) == (6 * PAGE, 2)           # peeking again: the same
    d.feed(first)
    assert d.regions() == [(0, 4 * PAGE), (8 * PAGE, 2 * PAGE)]
    eos = _batch([_be64(0x10)], 1)
    assert d.peek_mem_size(eos) is None                      # claimed already
    d.feed(eos)
    assert d.eos and d.peek_mem_size(eos) is None


def test_peek_of_a_batch_without_a_claim():
    d = WireDest()
    assert d.peek_mem_size(_batch([], 0)) is None            # an empty batch
    d.feed(_batch([], 0))
    assert d.peek_mem_size(_batch([_mem_size(0, PAGE)], 1)) == (PAGE, 1)
    # another record first: no claim; feed judges it
    d = WireDest()
    page_first = _batch([_be64(0x02) + b"\0"], 0)
    assert d.peek_mem_size(page_first) is None
    with pytest.raises(SinkError, match="before the MEM_SIZE"):
        d.feed(page_first)
    assert WireDest().peek_mem_size(_batch([_be64(0x10)], 0)) is None   # EOS first


def _corrupt(batch, at, value):
    b = bytearray(batch)
    b[at] = value
    return bytes(b)


GOOD = _batch([_mem_size(0, 4 * PAGE)], 0)


@pytest.mark.parametrize("batch,message", [
    (_corrupt(GOOD, 0, 0), "bad magic"),
    (_batch([_mem_size(0, 4 * PAGE)], 1), "sequence number 1, expected 0"),
    (_corrupt(GOOD, len(GOOD) - 1, 1), "checksum mismatch"),
    (_batch([_be64(4 * PAGE | 0x04) + b"\0\0"], 0), "MEM_SIZE record cut short"),
    (_batch([_regions((0, 4 * PAGE), count=0)], 0), "bad region count 0"),
    (_batch([_regions((0, 4 * PAGE), count=2)], 0), "bad region count 2"),
    (_batch([_regions((0, 4 * PAGE), count=1 << 31)], 0), "bad region count"),
    (_batch([_regions((100, 4 * PAGE))], 0), "region 0 not page aligned"),
    (_batch([_regions((0, 0))], 0), "region 0 not page aligned"),
    (_batch([_regions((0, 4 * PAGE), (2 * PAGE, 4 * PAGE))], 0), "regions overlap"),
    (_batch([_regions((0, 4 * PAGE), total=8 * PAGE)], 0), "total 32768 != sum of regions 16384"),
], ids=["magic", "sequence", "crc", "short-record", "count-0", "count-past-payload",
        "count-huge", "unaligned", "empty-region", "overlap", "sum"])
def test_peek_refuses_what_feed_refuses_with_the_same_error(batch, message):
    fed = WireDest()
    with pytest.raises(SinkError, match=message) as by_feed:
        fed.feed(batch)
    peeked = WireDest()
    with pytest.raises(SinkError, match=message) as by_peek:
        peeked.peek_mem_size(batch)
    assert str(by_peek.value) == str(by_feed.value)
    assert peeked.regions() == []
    with pytest.raises(SinkError) as again:   # the error is the stream's: sticky
        peeked.feed(GOOD)
    assert str(again.value) == str(by_feed.value)


def test_peek_needs_a_whole_batch():
    d = WireDest()
    for cut in (0, 10, len(GOOD) - 1):
        with pytest.raises(SinkError, match="needs a whole batch, got %d bytes" % cut):
            d.peek_mem_size(GOOD[:cut])
    assert d.error() is None and d.peek_mem_size(GOOD) == (4 * PAGE, 1)   # not sticky
    rc = lib.kd_wire_dest_peek_mem_size(ffi.NULL, GOOD, len(GOOD), ffi.new("uint64_t *"),
                                        ffi.new("uint32_t *"))
    assert rc == -22

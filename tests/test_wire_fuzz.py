"""Fuzzing the wire decoder (kd_wire_dest, csrc/migrate/wire_dest.c) through the bindings.

Three generators, each bounded (PYKVMDIRTY_FUZZ_EXAMPLES examples per test,
default 150; CI runs more on the ASan/UBSan build, where any memory error
aborts the run):

- raw bytes, fed in random pieces;
- structured streams: records (MEM_SIZE, PAGE, ZERO, EOS, unknown flags,
  cut-short records) in batches sealed with a valid CRC, so the record
  parser itself is reached, with wrong sequence numbers and lengths mixed in;
- valid streams with one mutation (a flipped byte, a cut, a spliced copy of
  a batch), re-sealed or not.

Whatever the input: no crash; a failure is a WireError whose sentence the
decoder also keeps (sticky: later feeds fail too); and a stream the model
accepts is applied exactly: destination memory equals the model's.
"""
import os
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pykvmdirty._native import ffi, lib  # noqa: E402
from pykvmdirty.bindings.wire import WireDest  # noqa: E402
from pykvmdirty.errors import WireError  # noqa: E402

PAGE = 4096
HDR = lib.KD_WIRE_BATCH_HEADER
EXAMPLES = int(os.environ.get("PYKVMDIRTY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seal(payload, nrecords, seq):
    buf = np.zeros(HDR + len(payload), dtype=np.uint8)
    buf[HDR:] = np.frombuffer(payload, dtype=np.uint8)
    assert lib.kd_wire_seal_batch(ffi.from_buffer(buf), len(payload), nrecords, seq) == 0
    return buf.tobytes()


def mem_size(regions):
    total = sum(s for _, s in regions)
    out = struct.pack(">QI", total | lib.KD_WIRE_MEM_SIZE, len(regions))
    return out + b"".join(struct.pack(">QQ", g, s) for g, s in regions)


def page(addr, byte):
    return struct.pack(">Q", addr | lib.KD_WIRE_PAGE) + bytes([byte]) * PAGE


def zero(addr, fill):
    return struct.pack(">QB", addr | lib.KD_WIRE_ZERO, fill)


EOS = struct.pack(">Q", lib.KD_WIRE_EOS)


def feed_all(dest, data, cuts):
    """Feed data in pieces at cuts, as a receiver would (keeping what a feed
    did not consume). Returns ("eos" | "more" | error sentence)."""
    pending = b""
    at = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        pending += data[at:cut]
        at = cut
        try:
            used = dest.feed(pending)
        except WireError as e:
            assert dest.error(), "an error without its sentence"
            with pytest.raises(WireError):  # sticky
                dest.feed(pending or b"\0" * HDR)
            return str(e)
        pending = pending[used:]
        if dest.eos:
            break
    # bytes after EOS count whether or not a cut fell on the EOS batch's end
    # (they were left unfed when it did: a spliced batch passed as "eos")
    pending += data[at:]
    if dest.eos and pending:
        try:
            dest.feed(pending)
        except WireError as e:
            return str(e)
    try:
        dest.finish(len(pending))
    except WireError as e:
        return str(e)
    return "eos" if dest.eos else "more"


def check_stats(dest):
    s = dest.stats()
    assert s["pages"] + s["zero_pages"] <= s["records"]
    assert s["eos"] in (0, 1)
    return s


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=6))
def test_raw_bytes(data, cuts):
    dest = WireDest()
    feed_all(dest, data, cuts)
    check_stats(dest)


# ---- structured streams ------------------------------------------------------

regions_st = st.lists(st.tuples(st.integers(0, 8), st.integers(1, 16)), min_size=1,
                      max_size=3)
# mostly records a correct stream has, some that break it
KINDS = ["page"] * 4 + ["zero"] * 4 + ["outside", "eos", "mem_size", "flag", "cut"]


def draw_records(data, regions):
    """Records as (kind, page index, byte): page/zero inside the regions,
    "outside" past them, the rest malformed; usually ending with EOS."""
    inside = [g // PAGE + i for g, s in regions for i in range(s // PAGE)]
    past = max(g + s for g, s in regions) // PAGE
    records = []
    for _ in range(data.draw(st.integers(0, 10))):
        kind = data.draw(st.sampled_from(KINDS))
        if kind in ("page", "zero"):
            records.append((kind, data.draw(st.sampled_from(inside)),
                            data.draw(st.sampled_from([0, 0, 7, 255]) if kind == "zero"
                                      else st.integers(0, 255))))
        elif kind == "outside":
            records.append((data.draw(st.sampled_from(["page", "zero"])),
                            past + data.draw(st.integers(0, 3)), 1))
        elif kind == "flag":
            records.append((kind, data.draw(st.integers(0, 40)),
                            data.draw(st.integers(0, 4095))))
        elif kind == "cut":
            records.append((kind, data.draw(st.integers(1, 12)), 0))
        else:
            records.append((kind, 0, 0))
    if data.draw(st.integers(0, 3)):
        records.append(("eos", 0, 0))
    return records


def layout(spec):
    """[(gpa, size)] from (gap pages, size pages) pairs, in address order."""
    out, at = [], 0
    for gap, n in spec:
        at += gap * PAGE
        out.append((at, n * PAGE))
        at += n * PAGE
    return out


def encode(regions, records):
    """Record bytes and a model of what a correct decoder ends with:
    (list of (bytes, count) batches-to-be, model memory or None if the
    stream is invalid, eos)."""
    model = {g: bytearray(s) for g, s in regions}
    valid = True
    eos = False
    chunks = [(mem_size(regions), 1)]
    for kind, a, b in records:
        addr = a * PAGE
        if eos:
            valid = False
        if kind == "page":
            chunks.append((page(addr, b), 1))
        elif kind == "zero":
            chunks.append((zero(addr, b), 1))
        elif kind == "eos":
            chunks.append((EOS, 1))
            eos = True
            continue
        elif kind == "mem_size":
            chunks.append((mem_size(regions), 1))
            valid = False
            continue
        elif kind == "flag":
            if b in (lib.KD_WIRE_PAGE, lib.KD_WIRE_ZERO, lib.KD_WIRE_EOS,
                     lib.KD_WIRE_MEM_SIZE):
                b = 0x01
            chunks.append((struct.pack(">Q", addr | b), 1))
            valid = False
            continue
        elif kind == "cut":
            chunks.append((page(0, 1)[:a], 1))
            valid = False
            continue
        hit = [g for g, s in regions if g <= addr < g + s]
        if not hit:
            valid = False
        else:  # a page of byte b, or a zero record filling with b: the same bytes
            model[hit[0]][addr - hit[0]:addr - hit[0] + PAGE] = bytes([b]) * PAGE
    return chunks, (model if valid else None), eos


def batches(chunks, sizes, seq_errors):
    out, seq, i = [], 0, 0
    for k, n in enumerate(sizes + [len(chunks)]):
        group = chunks[i:i + max(1, n)]
        i += len(group)
        if not group:
            break
        payload = b"".join(c for c, _ in group)
        s = seq + (1 if k in seq_errors else 0)
        out.append(seal(payload, sum(n for _, n in group), s))
        seq += 1
        if i >= len(chunks):
            break
    return out


@FUZZ
@given(st.data())
def test_structured_streams_match_the_model(data):
    regions = layout(data.draw(regions_st))
    records = draw_records(data, regions)
    sizes = data.draw(st.lists(st.integers(1, 5), max_size=6))
    seq_errors = data.draw(st.sets(st.integers(0, 6), max_size=1) if data.draw(
        st.integers(0, 4)) == 0 else st.just(set()))
    cuts = data.draw(st.lists(st.integers(0, 60000), max_size=4))
    chunks, model, eos = encode(regions, records)
    stream = b"".join(batches(chunks, sizes, seq_errors))
    dest = WireDest()
    outcome = feed_all(dest, stream, cuts)
    check_stats(dest)
    if model is not None and eos and not seq_errors:
        assert outcome == "eos", outcome
        got = {g: bytes(dest.memory(i)) for i, (g, _) in enumerate(dest.regions())}
        assert got.keys() == model.keys()
        for g in model:
            assert got[g] == bytes(model[g]), "region at %#x differs from the model" % g
    if model is not None and not eos and not seq_errors:
        assert outcome != "eos"
        assert "truncated" in outcome, outcome


# ---- valid streams, one mutation ---------------------------------------------

def valid_stream(n_pages, seed):
    rng = np.random.default_rng(seed)
    regions = [(0, n_pages * PAGE)]
    records = [("page" if rng.random() < 0.5 else "zero", int(i), int(rng.integers(0, 256)))
               for i in rng.permutation(n_pages)[:max(1, n_pages // 2)]]
    records.append(("eos", 0, 0))
    chunks, model, _ = encode(regions, records)
    return batches(chunks, [2, 3, 1, 4], set()), model


@FUZZ
@given(st.integers(1, 12), st.integers(0, 2**32 - 1),
       st.sampled_from(["flip", "cut", "splice", "flip-resealed", "drop"]),
       st.integers(0, 2**31), st.integers(0, 7))
# a batch spliced after EOS with a cut right at the EOS batch's end (CI, once)
@example(n_pages=1, seed=0, how="splice", where=248, bit=0)
def test_one_mutation_of_a_valid_stream(n_pages, seed, how, where, bit):
    parts, model = valid_stream(n_pages, seed)
    data = bytearray(b"".join(parts))
    if how == "flip":
        data[where % len(data)] ^= 1 << bit
    elif how == "cut":
        del data[where % len(data):]
    elif how == "splice":
        k = where % len(parts)
        data += parts[k]
    elif how == "drop" and len(parts) > 1:
        k = where % len(parts)
        data = bytearray(b"".join(p for i, p in enumerate(parts) if i != k))
    elif how == "flip-resealed":
        # corrupt a record inside a batch and seal it again: the CRC passes,
        # the record parser has to catch it (or apply a still-valid record)
        k = where % len(parts)
        batch = bytearray(parts[k])
        if len(batch) > HDR:
            batch[HDR + (where // 7) % (len(batch) - HDR)] ^= 1 << bit
            nrec = struct.unpack(">I", bytes(batch[16:20]))[0]
            seq = struct.unpack(">Q", bytes(batch[8:16]))[0]
            batch = bytearray(seal(bytes(batch[HDR:]), nrec, seq))
        data = bytearray(b"".join(parts[:k]) + bytes(batch) + b"".join(parts[k + 1:]))
    dest = WireDest()
    outcome = feed_all(dest, bytes(data), [where])
    check_stats(dest)
    if how in ("flip", "cut", "splice", "drop") and bytes(data) != b"".join(parts):
        if outcome == "eos" and how == "flip":
            # a flip the CRC cannot see is impossible for one bit: CRC32C
            # detects every single-bit error
            raise AssertionError("a flipped bit was applied")
        assert outcome != "eos" or how == "drop" and len(parts) == 1, (how, outcome)


def test_fuzz_helpers_accept_a_valid_stream():
    """The generators themselves: an unmutated stream is applied exactly."""
    parts, model = valid_stream(8, 1)
    dest = WireDest()
    assert feed_all(dest, b"".join(parts), []) == "eos"
    assert bytes(dest.memory(0)) == bytes(model[0])

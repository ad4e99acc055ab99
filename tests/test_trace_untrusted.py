"""Trace files are untrusted input: every field is type- and range-checked
(values out of range are refused, never wrapped), a corrupt archive is a
TraceError (never zlib.error, a pickle hint or a multi-TiB allocation), and
every error names the file and the field."""
import io
import json
import zipfile

import numpy as np
import pytest

from pykvmdirty.migration import trace as tr
from pykvmdirty.migration.run import migrate

BASE = dict(format=np.array("pykvmdirty-trace"), version=np.array(1), npages=np.array(10),
            t_ns=np.array([0], np.uint64), offsets=np.array([0, 2], np.uint64),
            gfns=np.array([1, 2], np.uint64), vcpus=np.array([0, 0], np.uint16),
            meta=np.array(json.dumps({})))


def save(path, **change):
    arrays = dict(BASE)
    arrays.update(change)
    np.savez(path, **arrays)
    return path


def npy(value):
    b = io.BytesIO()
    np.save(b, value)
    return b.getvalue()


@pytest.mark.parametrize("change,message", [
    (dict(vcpus=np.array([0, 65536], np.int64)), r"vcpus holds 65536, outside \[0, 65535\]"),
    (dict(vcpus=np.array([0, -1], np.int64)), r"vcpus holds -1, outside"),
    (dict(vcpus=np.array([0, 1.0])), "vcpus must hold integers"),
    (dict(gfns=np.array([1, -2], np.int64)), "gfns holds -2, outside"),
    (dict(t_ns=np.array([-5], np.int64)), "t_ns holds -5, outside"),
    (dict(offsets=np.array([0, -2], np.int64)), "offsets holds -2"),
    (dict(npages=np.array([10, 10])), r"npages must be one integer, got shape \(2,\)"),
    (dict(npages=np.array("10")), "npages must be one integer, got a scalar of dtype <U2"),
    (dict(npages=np.array(1500.0)), "npages must be one integer, got a scalar of dtype float64"),
    (dict(npages=np.array(0)), r"npages is 0, outside \[1, "),
    (dict(version=np.array("1")), "version must be one integer"),
    (dict(version=np.array(1.0)), "version must be one integer"),
    (dict(format=np.array(["pykvmdirty-trace"])), "format is"),
    (dict(meta=np.array(["{}"])), "meta is not a JSON object"),
    (dict(gfns=np.array([[1, 2]], np.uint64)), "gfns must be one-dimensional"),
])
def test_bad_fields_name_the_file_and_the_field(tmp_path, change, message):
    p = save(tmp_path / "bad.npz", **change)
    with pytest.raises(tr.TraceError, match=message) as e:
        tr.load(p)
    assert str(p) in str(e.value)


def test_out_of_range_vcpus_never_replay(tmp_path):
    """The old loader wrapped 65536 to 0 and migrate --trace said verified."""
    p = save(tmp_path / "wrap.npz", vcpus=np.array([0, 65536], np.int64))
    with pytest.raises(tr.TraceError, match="vcpus holds 65536"):
        migrate(guest_size="1MiB", slots=1, trace=str(p))


def test_in_memory_traces_are_checked_the_same_way():
    with pytest.raises(tr.TraceError, match="vcpus holds 70000"):
        tr.Trace(10, [0], [0, 1], [1], np.array([70000]))
    with pytest.raises(tr.TraceError, match="npages must be one integer"):
        tr.Trace(10.5, [0], [0, 1], [1], [0])


def test_every_flipped_byte_is_a_trace_error_or_the_same_trace(tmp_path):
    rec = tr.Recorder(1000, {"what": "flip"})
    rec.add(0, np.arange(500), 0)
    rec.add(5, np.arange(500, 900), 1)
    good = tmp_path / "good.npz"
    rec.save(good)
    want = tr.load(good)
    data = good.read_bytes()
    outcomes = {"error": 0, "same": 0}
    for i in range(0, len(data), max(1, len(data) // 400)):  # ~400 of its bytes
        bad = bytearray(data)
        bad[i] ^= 0x40
        p = tmp_path / "flip.npz"
        p.write_bytes(bytes(bad))
        try:
            got = tr.load(p)
        except tr.TraceError as e:
            assert str(p) in str(e)
            outcomes["error"] += 1
            continue
        # a flip in zip metadata (timestamps, comments) changes nothing
        assert got.npages == want.npages and got.meta == want.meta
        for field in ("t_ns", "offsets", "gfns", "vcpus"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), (i, field)
        outcomes["same"] += 1
    assert outcomes["error"] > outcomes["same"]


def test_header_claiming_a_trillion_elements_is_refused_before_allocating(tmp_path):
    p = tmp_path / "huge.npz"
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<u8", "fortran_order": False, "shape": (10 ** 12,)})
    with zipfile.ZipFile(p, "w") as z:
        for key, value in BASE.items():
            if key != "gfns":
                z.writestr(key + ".npy", npy(value))
        z.writestr("gfns.npy", head.getvalue() + bytes(16))
    with pytest.raises(tr.TraceError, match=r"gfns's header claims 1000000000000 elements"):
        tr.load(p)


def test_uncompressed_size_is_bounded_before_reading(tmp_path):
    p = save(tmp_path / "big.npz", gfns=np.zeros(100_000, np.uint64),
             vcpus=np.zeros(100_000, np.uint16),
             offsets=np.array([0, 100_000], np.uint64))
    with pytest.raises(tr.TraceError, match="loading it takes .* more than"):
        tr.load(p, max_bytes=100_000)
    assert tr.load(p).gfns.size == 100_000


def test_narrow_arrays_are_bounded_as_loaded_not_as_stored(tmp_path):
    """uint8 gfns become uint64 when loaded (8x): the bound counts that,
    from the headers, before any array is read (was: checked as stored)."""
    n = 1_000_000
    p = save(tmp_path / "narrow.npz", gfns=np.zeros(n, np.uint8),
             vcpus=np.zeros(n, np.uint8), offsets=np.array([0, n], np.uint32))
    with pytest.raises(tr.TraceError, match="widened to the format's dtypes"):
        tr.load(p, max_bytes=3 * n)  # the members fit, the loaded arrays (~12 MB) do not
    assert tr.load(p, max_bytes=16 * n).gfns.dtype == np.uint64


def test_replay_work_follows_the_vcpus_not_the_intervals():
    """Empty or one-page intervals due together are written in one call per
    vCPU (was: a Python loop per interval: 20M empty intervals took 57 s)."""
    k = 2_000_000
    t_ns = np.repeat(np.arange(k // 1000, dtype=np.uint64), 1000)  # 1000 intervals per ns
    offsets = np.arange(k + 1, dtype=np.uint64) // 2  # every other interval empty
    gfns = np.arange(k // 2, dtype=np.uint64) % 4096
    vcpus = (np.arange(k // 2) % 2).astype(np.uint16)
    trace = tr.Trace(4096, t_ns, offsets, gfns, vcpus)

    class FakeVM:
        vcpus = 2
    calls = []
    w = tr.TraceWorkload(FakeVM(), trace, lambda v, g, value, t: calls.append((v, g.size)))
    first = w.advance(0, k // 2000)  # the intervals due by t1 = 1000 ns
    assert first == (k // 2000 + 1) * 500
    assert first + w.advance(0, 1 << 62) == k // 2
    assert len(calls) == 4  # one per vCPU per advance, however many intervals
    assert sum(n for _, n in calls) == w.writes == k // 2


@pytest.mark.parametrize("content", [b"PK" + bytes(range(256)) * 2,
                                     b"PK\x03\x04" + bytes(range(256)) * 2],
                         ids=["PK", "PK0304"])
def test_pk_garbage_never_suggests_pickle(tmp_path, content):
    p = tmp_path / "pk.npz"
    p.write_bytes(content)
    with pytest.raises(tr.TraceError) as e:
        tr.load(p)
    assert "pickle" not in str(e.value) and str(p) in str(e.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    p = tmp_path / "obj.npz"
    with zipfile.ZipFile(p, "w") as z:
        for key, value in BASE.items():
            if key != "meta":
                z.writestr(key + ".npy", npy(value))
        z.writestr("meta.npy", npy(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(tr.TraceError, match="meta holds Python objects"):
        tr.load(p)


def test_migrate_bounds_a_trace_file_by_the_users_max_memory(tmp_path):
    # 2 MiB of uint8 gfns load as 16 MiB of uint64: refused under --max-memory 8MiB
    # before anything is read, and accepted with the default limit
    n = 2 << 20
    p = save(tmp_path / "t.npz", npages=np.array(256), gfns=np.zeros(n, np.uint8),
             vcpus=np.zeros(n, np.uint16), offsets=np.array([0, n], np.uint64))
    with pytest.raises(tr.TraceError, match="more than the 8.0 MiB"):
        migrate(guest_size="1MiB", slots=1, trace=str(p), workload="idle", max_memory="8MiB")
    assert tr.load(p).gfns.size == n

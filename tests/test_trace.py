"""Trace files: format v1, validation with clear errors, record + replay."""
import json

import numpy as np
import pytest

from pykvmdirty.migration import trace as tr
from pykvmdirty.migration import migrate


def _trace():
    rec = tr.Recorder(1000, {"what": "test"})
    rec.add(0, [1, 2, 3], 0)
    rec.add(0, [4], 1)
    rec.add(10_000_000, [], 0)
    rec.add(20_000_000, [999, 5], 1)
    return rec.trace()


def test_roundtrip(tmp_path):
    t = _trace()
    p = tmp_path / "t.npz"
    t.save(p)
    u = tr.load(p)
    assert u.npages == 1000 and u.meta == {"what": "test"}
    assert u.t_ns.tolist() == [0, 10_000_000, 20_000_000]
    assert u.offsets.tolist() == [0, 4, 4, 6]
    assert u.gfns.tolist() == [1, 2, 3, 4, 999, 5]
    assert u.vcpus.tolist() == [0, 0, 0, 1, 1, 1]


def _save_raw(path, **arrays):
    base = dict(format=np.array("pykvmdirty-trace"), version=np.array(1), npages=np.array(10),
                t_ns=np.array([0], np.uint64), offsets=np.array([0, 2], np.uint64),
                gfns=np.array([1, 2], np.uint64), vcpus=np.array([0, 0], np.uint16),
                meta=np.array(json.dumps({})))
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    np.savez(path, **base)


@pytest.mark.parametrize("change,message", [
    (dict(version=np.array(2)), "unsupported trace version 2"),
    (dict(format=np.array("other")), "format is 'other'"),
    (dict(vcpus=None), "missing arrays vcpus"),
    (dict(offsets=np.array([0, 3], np.uint64)), r"offsets\[-1\] is 3 but there are 2 gfns"),
    (dict(offsets=np.array([1, 2], np.uint64)), r"offsets\[0\] is 1"),
    (dict(gfns=np.array([1, 10], np.uint64)), "gfn 10 is outside the guest"),
    (dict(t_ns=np.array([0, 1], np.uint64)), "offsets has 2 entries, expected"),
    (dict(meta=np.array("{nope")), "meta is not a JSON object"),
    (dict(gfns=np.array([1.0, 2.0])), "gfns must hold integers"),
])
def test_invalid_files_name_the_problem(tmp_path, change, message):
    p = tmp_path / "bad.npz"
    _save_raw(p, **change)
    with pytest.raises(tr.TraceError, match=message):
        tr.load(p)


def test_not_npz_truncated_and_missing(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(b"hello world")
    with pytest.raises(tr.TraceError, match="not an .npz archive"):
        tr.load(p)
    good = tmp_path / "g.npz"
    _trace().save(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(tr.TraceError, match="truncated or corrupt"):
        tr.load(cut)
    with pytest.raises(tr.TraceError, match="cannot open"):
        tr.load(tmp_path / "missing.npz")
    assert issubclass(tr.TraceError, ValueError)


def test_record_then_replay_gives_the_same_dirty_sets(tmp_path):
    p = tmp_path / "run.npz"
    kw = dict(guest_size="32MiB", slots=2, rate=4000, bandwidth=16 << 20, seed=3)
    a = migrate(record=str(p), **kw)
    t = tr.load(p)
    assert t.gfns.size == a.workload_writes > 0
    b = migrate(trace=str(p), workload="idle", **kw)
    assert a.verified and b.verified
    assert [x.dirty_found for x in a.passes] == [x.dirty_found for x in b.passes]
    assert [x.pages_sent for x in a.passes] == [x.pages_sent for x in b.passes]


def test_replay_checks(tmp_path):
    p = tmp_path / "t.npz"
    _trace().save(p)
    with pytest.raises(ValueError, match="virtual mode"):
        migrate(guest_size="8MiB", trace=str(p), mode="realtime")
    with pytest.raises(ValueError, match="covers 1000 pages but the guest has 256"):
        migrate(guest_size="1MiB", slots=1, trace=str(p))

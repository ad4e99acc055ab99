"""The content-free page model (``pages="versions"``): a 64-bit version per
guest page instead of its 4 KiB. It must give the figures real contents give
on the same run (every backend that allows both), verify the destination page
by page, refuse what it cannot model, and decode only its own records."""
import json

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty.bindings.constants import PAGE_SIZE, SEND_DONE
from pykvmdirty.bindings.sender import Sender, SendRegion
from pykvmdirty.bindings.vm import VM
from pykvmdirty.bindings.wire import WireDest, versions_diff
from pykvmdirty.errors import WireError
from pykvmdirty.migration.config import MigrationConfig
from pykvmdirty.migration.controller import verify_destination
from pykvmdirty.migration.sinks import DestinationResult

#: what may differ between the two models: the configuration (it names the
#: model), the destination decoder's byte count (16-byte version records
#: stand for 4104-byte page records) and the VM's counters of guest memory
PER_MODEL = ("config", "destination", "vm_stats")


def figures(report):
    d = report.as_dict()
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in d.items()
            if k not in PER_MODEL}


@pytest.mark.parametrize("size,backend,strategy,extra", [
    ("1GiB", "flat", "global", {}),
    ("1GiB", "twolevel", "per-slot", {}),
    ("1GiB", "hier", "global", {}),
    ("1GiB", "bytemap", "global", {}),
    ("1GiB", "ring", "ring", {}),
    ("1GiB", "flat", "chunked-clear", {}),
    ("1GiB", "flat", "global", dict(fill="random", populate=0.5, policy="passes")),
    ("1GiB", "twolevel", "global", dict(workload="uniform", rate=50000, auto_converge=True)),
    ("4GiB", "flat", "global", dict(bandwidth="1GiB", rate=100000)),
])
def test_versions_give_the_figures_contents_give(size, backend, strategy, extra):
    runs = {pages: kd.migrate(guest_size=size, backend=backend, strategy=strategy,
                              pages=pages, **extra)
            for pages in ("contents", "versions")}
    assert runs["contents"].config["pages"] == "contents"
    assert runs["versions"].config["pages"] == "versions"
    for r in runs.values():
        assert r.verified is True and r.status == "completed"
    a, b = figures(runs["contents"]), figures(runs["versions"])
    assert a == b, [k for k in a if a[k] != b.get(k)]
    # the destination applied the same records: pages and zero pages alike
    da, db = runs["contents"].destination, runs["versions"].destination
    assert (da["pages"], da["zero_pages"], da["records"]) == \
        (db["pages"], db["zero_pages"], db["records"])


def test_a_wrong_version_at_the_destination_is_found():
    vm = VM("flat", guest_memory=True, page_model="versions")
    npages = 1 << 20
    vm.set_user_memory_region(0, 0, npages * PAGE_SIZE, 0)
    written = np.array([5, 70000, npages - 1], dtype=np.uint64)
    vm.write(written, 0, 42)
    src = vm.slot_memory(0)
    assert src.dtype == np.uint64 and src.size == npages
    assert list(np.flatnonzero(src)) == [5, 70000, npages - 1]

    class Slot:
        slot, base_gfn = 0, 0
    Slot.npages = npages
    dst = np.zeros(npages, dtype=np.uint64)
    dst[written] = 42
    ok = DestinationResult([(0, npages * PAGE_SIZE)], None, {}, versions=[dst])
    assert verify_destination(vm, [Slot], ok) == (True, [])
    dst[70000] = 41            # an old version arrived last
    dst[900000] = 7            # a page the source never wrote
    assert verify_destination(vm, [Slot], ok) == (False, [70000, 900000])


def test_versions_diff_skips_nothing_that_differs():
    rng = np.random.default_rng(3)
    n = 3 << 20   # 24 MiB of entries: several mincore windows
    a = np.zeros(n, dtype=np.uint64)
    b = np.zeros(n, dtype=np.uint64)
    idx = rng.choice(n, 2000, replace=False)
    a[idx] = rng.integers(1, 1 << 60, idx.size, dtype=np.uint64)
    b[idx] = a[idx]
    flip = np.sort(rng.choice(idx, 37, replace=False))
    b[flip] += np.uint64(1)
    extra = np.sort(rng.choice(np.setdiff1d(np.arange(n), idx), 5, replace=False))
    b[extra] = 9   # written on one side only
    want = np.sort(np.concatenate([flip, extra]))
    count, first = versions_diff(a, b, cap=64)
    assert count == want.size and first == [int(x) for x in want]
    # an unaligned view (no block skipping) gives the same answer
    count, first = versions_diff(a[1:], b[1:], cap=4)
    assert count == want.size - int(want[0] == 0)
    with pytest.raises(ValueError, match="one length"):
        versions_diff(a, b[:-1])
    with pytest.raises(TypeError, match="uint64"):
        versions_diff(a.view(np.int64), b)


def test_what_versions_cannot_model_is_refused():
    with pytest.raises(ValueError, match="needs an emulated backend"):
        MigrationConfig(backend="kvm", pages="versions")
    with pytest.raises(ValueError, match="unknown pages 'bytes'"):
        MigrationConfig(pages="bytes")
    with pytest.raises(ValueError, match="local or null sink"):
        kd.migrate(guest_size="64MiB", pages="versions", sink="tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="needs guest_memory=True"):
        VM("flat", page_model="versions")
    with pytest.raises(ValueError, match="unknown page_model"):
        VM("flat", guest_memory=True, page_model="bits")


def test_auto_picks_versions_only_where_contents_are_not_needed():
    big = MigrationConfig(guest_size="128GiB")
    assert big.page_model("local") == "versions" and big.page_model("null") == "versions"
    assert big.page_model("tcp://10.0.0.1:4444") == "contents"
    assert MigrationConfig(guest_size="64GiB").page_model("null") == "contents"
    assert MigrationConfig(guest_size="128GiB", pages="contents").page_model() == "contents"
    assert MigrationConfig(guest_size="1GiB", pages="versions").page_model() == "versions"


def test_a_destination_decodes_only_its_own_page_model():
    d = WireDest(page_model="versions")
    assert d.page_model == "versions"
    with pytest.raises(ValueError, match="no page contents to hash"):
        d.hashes()
    # a contents stream on a versions destination, and the other way round
    for sender_model, dest_model in (("contents", "versions"), ("versions", "contents")):
        stream = _encode(sender_model)
        dest = WireDest(page_model=dest_model)
        with pytest.raises(WireError, match="a %s record on a destination of page %s"
                           % ("page" if sender_model == "contents" else "version", dest_model)):
            dest.feed(stream)
    ok = WireDest(page_model="versions")
    ok.feed(_encode("versions"))
    ok.finish()
    mem = ok.memory(0)
    assert mem.dtype == np.uint64 and list(np.flatnonzero(mem)) == [3, 9]
    assert int(mem[3]) == 77


def _encode(page_model, npages=64):
    """A whole stream of a small guest (pages 3 and 9 written with 77)."""
    vm = VM("flat", guest_memory=True, page_model=page_model)
    vm.set_user_memory_region(0, 0, npages * PAGE_SIZE, 0)
    vm.write(np.array([3, 9], dtype=np.uint64), 0, 77)
    region = SendRegion(vm, 0, 0, npages)
    s = Sender()
    s.set_buffer(1 << 20)
    out = bytearray()
    s.put_control(lambda: s.put_mem_size([0], [npages * PAGE_SIZE]), out.extend, "MEM_SIZE")
    assert s.send_pages(region, None, npages, 0) == SEND_DONE
    s.put_control(s.put_eos, out.extend, "EOS")
    out += s.flush()
    return bytes(out)


def test_the_c_core_refuses_versions_on_real_backends():
    from pykvmdirty._native import ffi, lib
    cfg = ffi.new("struct kd_vm_config *")
    out = ffi.new("kd_vm **")
    cfg.nvcpus = 1
    for backend, flags in ((lib.KD_BACKEND_KVM, lib.KD_VM_GUEST_MEMORY),
                           (lib.KD_BACKEND_UFFD, lib.KD_VM_GUEST_MEMORY),
                           (lib.KD_BACKEND_FLAT, 0)):
        cfg.backend = backend
        cfg.flags = flags | lib.KD_VM_PAGE_VERSIONS
        assert lib.kd_vm_create(cfg, out) == -22
    d = ffi.new("kd_wire_dest **")
    assert lib.kd_wire_dest_create(d) == 0
    assert lib.kd_wire_dest_set_page_versions(ffi.NULL, 1) == -22
    lib.kd_wire_dest_destroy(d[0])

"""Per-slot polling vs global sync (the 2010 proposal "divide memory into
more slots and collect each just before scanning it").

A 64 GiB guest with scattered dirty pages, as one slot or as 64 slots of
1 GiB. Timed: collecting every slot back to back (global sync) vs the polling
loop, which collects a slot then "sends" its pages (a vectorised read of
their first words from a page-index array, standing in for the send) before
polling the next. extra_info carries the modelled mean age of the dirty
information when a page is sent at 128 MiB/s (QEMU's default max-bandwidth):
global sync samples everything at the start of the pass, polling samples each
slot just before its pages go, so the age shrinks with the slot size."""
import numpy as np
import pytest


from benchutil import GIB_PAGES, make_vm, rounds, scattered, untimed

SIZE_GIB = 64
SLOTS = {"one-slot": 1, "64-slots": 64}
DIRTY = [1000, 100000]
SEND_NS_PER_PAGE = 4096 / (128 << 20) * 1e9  # 128 MiB/s


def modelled_mean_age_ns(per_slot_counts, polling):
    """Mean time from sampling a page's dirty bit to sending it."""
    counts = np.asarray(per_slot_counts, dtype=np.float64)
    total = counts.sum()
    if not total:
        return 0.0
    if not polling:  # sampled at t0; page k leaves at k * send time
        return (total - 1) / 2 * SEND_NS_PER_PAGE
    return float(((counts - 1).clip(0) / 2 * counts).sum() / total * SEND_NS_PER_PAGE)


@pytest.mark.parametrize("backend", ["flat", "twolevel"])
@pytest.mark.parametrize("dirty", DIRTY)
@pytest.mark.parametrize("layout", list(SLOTS))
@pytest.mark.parametrize("strategy", ["global-sync", "per-slot-polling"])
def test_sync(benchmark, strategy, layout, dirty, backend):
    nslots = SLOTS[layout]
    npages = SIZE_GIB * GIB_PAGES
    pages = scattered(npages, dirty)
    vm = make_vm(backend, npages, slots=nslots)
    sink = np.zeros(npages // 512 + 1, dtype=np.uint64)  # stand-in for the send
    benchmark.group = "polling %s %d dirty" % (backend, dirty)
    per = npages // nslots
    counts = np.bincount((pages // np.uint64(per)).astype(np.intp), minlength=nslots)
    benchmark.extra_info.update(
        backend=backend, dirty=dirty, slots=nslots, strategy=strategy,
        modelled_mean_age_us=modelled_mean_age_ns(counts, strategy == "per-slot-polling")
        / 1e3)

    def send(gfns):
        np.add.at(sink, (gfns >> np.uint64(9)).astype(np.intp), np.uint64(1))

    def global_sync():
        got = [vm.collect(s) for s in range(nslots)]
        for g in got:
            send(g)
        return sum(g.size for g in got)

    def polling():
        n = 0
        for s in range(nslots):
            g = vm.collect(s)
            send(g)
            n += g.size
        return n

    try:
        n = benchmark.pedantic(global_sync if strategy == "global-sync" else polling,
                               setup=lambda: untimed(vm.write, pages), rounds=rounds(),
                               iterations=1)
        assert n == dirty
    finally:
        vm.close()

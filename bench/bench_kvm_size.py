"""The real KVM_GET_DIRTY_LOG (classic) at large slot sizes, on the kvm backend:
one slot of 1, 64, 512 GiB, 1, 4, 6 and 8 TiB (8 TiB = 2^31-1 pages, the largest
slot the kernel takes), plus one slot of 2^31 pages (the kernel refuses it),
guest memory MAP_NORESERVE and untouched except the pages written.

Per size it prints: the slot's creation time, the kernel memory it took
(VmallocUsed before/after), the median time of a GET with nothing dirty and
with 1000 scattered pages dirtied by the guest before each round, and µs per
GiB; where the kernel refuses a size, the errno and its message.

Why the sizes are bounded. Creating a slot makes the kernel vmalloc and zero
its per-slot metadata at once, dirty logging or not: on this machine (KVM on
PVM, shadow paging) about 10 bytes per 4 KiB page, nearly all the shadow
MMU's reverse map (8 bytes per page): 161 MiB for 64 GiB, ~10 GiB for 4 TiB,
~20 GiB for 8 TiB. That, not the dirty bitmaps (2 x 1 bit per page in the
kernel, 256 MiB at 8 TiB) nor the backend's user-side maps, is what killed
the earlier attempt at 4/8 TiB and what took 17 s at 4 TiB (zeroing 10 GiB).
So every size is first priced with pykvmdirty.limits (kernel metadata +
bitmaps + the backend's maps) and left out, with that reason, when over
--max-memory (default 4 GiB): nothing then asks the kernel for it.

Run: ``nice python bench/bench_kvm_size.py [--max-memory 4GiB] [--rounds 5]``
(about a minute at the default limit; --json FILE keeps the figures).
"""
import argparse
import errno
import fcntl
import json
import os
import struct
import sys
import time

import numpy as np

import pykvmdirty as kd
from pykvmdirty import limits

from benchutil import kvm_reason, raw_get  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from pykvmdirty.analysis import compare as cmp

GIB_PAGES = 1 << 18
MAX_SLOT_PAGES = cmp.MAX_SLOT_PAGES
SIZES = [("1 GiB", GIB_PAGES), ("64 GiB", 64 * GIB_PAGES), ("512 GiB", 512 * GIB_PAGES),
         ("1 TiB", 1024 * GIB_PAGES), ("4 TiB", 4096 * GIB_PAGES), ("6 TiB", 6144 * GIB_PAGES),
         ("8 TiB (2^31-1 pages)", MAX_SLOT_PAGES), ("2^31 pages", MAX_SLOT_PAGES + 1)]
DIRTY = 1000


def vmalloc_used():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("VmallocUsed:"):
                return int(line.split()[1]) * 1024
    return 0


KVM_CREATE_VM = 0xAE01
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)


def kernel_probe(npages):
    """Ask the kernel itself (raw ioctl, no backend in between) for a slot of
    npages pages at an unmapped but page-aligned user address; returns
    (errno name or None, message). Only for sizes the kernel refuses before
    allocating (over KVM_MEM_MAX_NR_PAGES): a slot it accepts would be
    allocated here in full."""
    if npages <= MAX_SLOT_PAGES:
        raise ValueError("kernel_probe is only for sizes over the cap")
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        vmfd = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        try:
            region = struct.pack("=IIQQQ", 0, 0, 0, npages << 12, 1 << 40)
            try:
                fcntl.ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, region)
            except OSError as e:
                return errno.errorcode.get(e.errno), os.strerror(e.errno)
            return None, "accepted"
        finally:
            os.close(vmfd)
    finally:
        os.close(kvm)


def estimate(npages):
    """What a kvm slot of npages commits: kernel metadata and bitmaps, the
    backend's maps, the GET buffer here, the pages the guest writes."""
    est = limits.Estimate()
    est.add("kernel slot metadata (rmap)", limits.kvm_slot_metadata([npages]))
    est.add("kvm dirty logs", limits.log_memory("kvm", [npages]))
    est.add("GET buffer", 8 * -(-npages // 64))
    est.add("guest pages written", DIRTY * (4096 + limits.PTE_BYTES))
    return est


def timed(fn, rounds, setup=None):
    times = []
    out = None
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter_ns()
        out = fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)), out


def measure(label, npages, limit, rounds):
    row = {"size": label, "npages": npages, "gib": npages / GIB_PAGES}
    est = estimate(npages)
    row["estimate_bytes"] = est.total
    if npages > MAX_SLOT_PAGES:  # refused before any allocation: ask the kernel itself
        name, msg = kernel_probe(npages)
        row.update(status="refused by the kernel" if name else "accepted?!", errno=name,
                   reason="KVM_SET_USER_MEMORY_REGION: %s (over KVM_MEM_MAX_NR_PAGES = "
                   "2^31-1)" % msg)
        try:  # and what the backend says before it
            with kd.VM("kvm") as vm:
                vm.set_user_memory_region(0, 0, npages << 12, kd.MEM_LOG_DIRTY_PAGES)
        except (OSError, ValueError) as e:
            row["backend_says"] = "%s: %s" % (type(e).__name__, e)
        return row
    try:
        limits.check(est, limit, "a kvm slot of %s" % label)
    except limits.MemoryLimitError as e:
        row.update(status="not run", reason=str(e))
        return row
    v0 = vmalloc_used()
    with kd.VM("kvm") as vm:
        t0 = time.perf_counter()
        try:
            vm.set_user_memory_region(0, 0, npages << 12, kd.MEM_LOG_DIRTY_PAGES)
        except OSError as e:
            row.update(status="refused by the kernel", errno=errno.errorcode.get(e.errno),
                       reason=str(e))
            return row
        row["create_s"] = time.perf_counter() - t0
        row["kernel_vmalloc_bytes"] = vmalloc_used() - v0
        get = raw_get(vm, npages)
        pages = cmp.dirty_pages(npages, DIRTY, 0)
        if vm.write(pages).applied != DIRTY:
            row.update(status="error", reason="the guest did not write its pages")
            return row
        get()  # clean start: every page written so far collected and re-protected
        row["get_clean_ns"], out = timed(get, rounds)
        if int(np.unpackbits(out.view(np.uint8)).sum()) != 0:
            row.update(status="error", reason="clean GET found dirty pages")
            return row
        row["get_dirty_ns"], out = timed(get, rounds, lambda: vm.write(pages))
        found = int(np.unpackbits(out.view(np.uint8)).sum())
        if found != DIRTY:
            row.update(status="error", reason="GET found %d of %d dirty pages" % (found, DIRTY))
            return row
        t0 = time.perf_counter()
    row["destroy_s"] = time.perf_counter() - t0
    row["status"] = "ok"
    row["get_clean_us_per_gib"] = row["get_clean_ns"] / 1e3 / row["gib"]
    row["get_dirty_us_per_gib"] = row["get_dirty_ns"] / 1e3 / row["gib"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-memory", default="4GiB",
                   help="leave out sizes estimated above this (default 4GiB)")
    p.add_argument("--rounds", type=int, default=5, help="GETs per measurement (median)")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1, got %d" % args.rounds)
    why = kvm_reason()
    if why:
        print("kvm backend unavailable here: %s" % why)
        return 0
    limit = limits.resolve_limit(args.max_memory, "--max-memory")
    rows = []
    print("%-22s %9s %10s %12s %12s %12s %12s %9s" % (
        "slot", "create s", "kernel MiB", "GET clean µs", "µs/GiB", "GET 1000 µs",
        "µs/GiB", "est. MiB"))
    for label, npages in SIZES:
        row = measure(label, npages, limit, args.rounds)
        rows.append(row)
        if row["status"] == "ok":
            print("%-22s %9.2f %10.0f %12.1f %12.2f %12.1f %12.2f %9.0f" % (
                label, row["create_s"], row["kernel_vmalloc_bytes"] / 2**20,
                row["get_clean_ns"] / 1e3, row["get_clean_us_per_gib"],
                row["get_dirty_ns"] / 1e3, row["get_dirty_us_per_gib"],
                row["estimate_bytes"] / 2**20))
        else:
            print("%-22s %s%s: %s%s" % (label, row["status"],
                                        (" (%s)" % row["errno"]) if row.get("errno") else "",
                                        row["reason"],
                                        ("; the kvm backend: %s" % row["backend_says"])
                                        if row.get("backend_says") else ""))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        print("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

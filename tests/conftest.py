"""Shared fixtures: backend lists, and skips with a reason where a real backend is missing."""
import numpy as np
import pytest

import pykvmdirty as kd

GIB = 1 << 30
MIB = 1 << 20
LOG = kd.MEM_LOG_DIRTY_PAGES

#: every emulated (backend, dirty_tracking) combination
EMULATED = [(b, t) for b in kd.EMULATED_BACKENDS for t in ("write_protect", "pml")]


def make_vm(backend, tracking="write_protect", **kw):
    if backend in ("kvm", "uffd"):
        ok, why = kd.backend_available(backend)
        if not ok:
            pytest.skip("%s backend unavailable here: %s" % (backend, why))
    if backend == "ring" and "ring_entries" not in kw:
        kw["ring_entries"] = 65536
    return kd.VM(backend=backend, dirty_tracking=tracking, **kw)


def bits_to_set(bitmap, base=0):
    """Set of base + i for each set bit i of a KVM-layout bitmap."""
    bits = np.unpackbits(np.asarray(bitmap, dtype="<u8").view(np.uint8), bitorder="little")
    return set((np.flatnonzero(bits) + base).tolist())


def set_to_bits(pages, npages):
    bm = np.zeros((npages + 63) // 64, dtype=np.uint64)
    for p in pages:
        bm[p // 64] |= np.uint64(1 << (p % 64))
    return bm


@pytest.fixture(params=EMULATED, ids=lambda p: "%s-%s" % p)
def emulated_vm(request):
    backend, tracking = request.param
    vm = make_vm(backend, tracking, vcpus=2)
    yield vm
    vm.close()


def strongly_connected(adjacency):
    """The circles of a directed graph {node: iterable of nodes}: its
    strongly connected components of more than one node, and the nodes with
    an edge to themselves, each as a sorted list (Tarjan, iterative: the
    import and call graphs are deeper than the recursion limit allows)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def succ(v):
        return iter(sorted(adjacency.get(v, ())))

    for root in sorted(adjacency):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        work = [(root, succ(root))]
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, succ(w)))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in adjacency.get(node, ()):
                        out.append(sorted(comp))
    return out


def is_qemu(pid):
    """Whether process pid is a QEMU (the QEMU tests check none is left)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"qemu-system" in f.read()
    except OSError:
        return False

"""Every backend reports the same dirty set for the same operation sequence,
and that set is what a simple model (a set of pages written since they were
last collected) says. Hypothesis drives random slots, writes, get/clear/collect."""
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import pykvmdirty as kd
from conftest import EMULATED, LOG, bits_to_set

SLOTS = [(0, 0, 700), (1, 1024, 64), (2, 4096, 1536 + 5)]  # (id, base_gfn, npages)


def gfn_strategy():
    return st.one_of(*[st.integers(b, b + n - 1) for _, b, n in SLOTS])


op = st.one_of(
    st.tuples(st.just("write"), st.lists(gfn_strategy(), max_size=40), st.integers(0, 1)),
    st.tuples(st.just("collect"), st.sampled_from([s[0] for s in SLOTS]),
              st.integers(0, 2000), st.integers(0, 2000)),
    st.tuples(st.just("get"), st.sampled_from([s[0] for s in SLOTS])),
    st.tuples(st.just("clear"), st.sampled_from([s[0] for s in SLOTS]),
              st.integers(0, 30), st.integers(0, 30), st.integers(0, 2**64 - 1)),
)


class Model:
    def __init__(self):
        self.dirty = {sid: set() for sid, _, _ in SLOTS}

    def write(self, gfns):
        for g in gfns:
            for sid, b, n in SLOTS:
                if b <= g < b + n:
                    self.dirty[sid].add(g - b)


def run(backend, tracking, manual, ops):
    """Apply ops; return the list of observations (collect/get results)."""
    vm = kd.VM(backend, vcpus=2, dirty_tracking=tracking,
               ring_entries=65536 if backend == "ring" else None)
    if manual:
        vm.enable_manual_protect()
    for sid, b, n in SLOTS:
        vm.set_user_memory_region(sid, b << 12, n << 12, LOG)
    out = []
    for o in ops:
        if o[0] == "write":
            r = vm.write(o[1], vcpu=o[2])
            assert r.applied == len(o[1]) and r.exit_reason == 0
        elif o[0] == "collect":
            sid, a, c = o[1], o[2], o[3]
            n = dict((s, n) for s, _, n in SLOTS)[sid]
            first = min(a, n)
            num = min(c, n - first)
            out.append(("collect", sid, first, vm.collect(sid, first, num).tolist()))
        elif backend != "ring" and o[0] == "get":
            out.append(("get", o[1], sorted(bits_to_set(vm.get_dirty_log(o[1])))))
        elif backend != "ring" and o[0] == "clear" and manual:
            sid = o[1]
            n = dict((s, n) for s, _, n in SLOTS)[sid]
            first = min(o[2] * 64, (n // 64) * 64)
            num = min(o[3] * 64, n - first)
            if (num & 63) and first + num != n:
                num &= ~63
            mask = np.full((num + 63) // 64, o[4], dtype=np.uint64)
            vm.clear_dirty_log(sid, first, num, mask)
            out.append(("clear", sid))
    for sid, _, _ in SLOTS:
        out.append(("final", sid, vm.collect(sid).tolist()))
    vm.close()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), manual=st.booleans())
def test_backends_agree(ops, manual):
    # The ring (no GET/CLEAR: ENXIO) and the byte map (a collect drains the
    # kernel log into the user-side byte map, so a later GET differs) keep
    # user-side state: they are compared with each other on collects, and
    # with the kernel-bitmap backends when the sequence has no GET/CLEAR.
    groups = {}
    for backend, tracking in EMULATED:
        obs = run(backend, tracking, manual, ops)
        key = backend if backend in ("ring", "bytemap") else "kernel"
        if key != "kernel":
            obs = [o for o in obs if o[0] in ("collect", "final")]
        groups.setdefault(key, []).append(((backend, tracking), obs))
    for _key, results in groups.items():
        (name0, first), rest = results[0], results[1:]
        for name, obs in rest:
            assert obs == first, (name, name0)
    if not any(o[0] in ("get", "clear") for o in ops):
        kernel = [o for o in groups["kernel"][0][1] if o[0] in ("collect", "final")]
        assert groups["ring"][0][1] == kernel
        assert groups["bytemap"][0][1] == kernel


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=25))
def test_collect_matches_model(ops):
    """Classic mode, collects only: the flat backend equals the set model."""
    model = Model()
    vm = kd.VM("flat")
    for sid, b, n in SLOTS:
        vm.set_user_memory_region(sid, b << 12, n << 12, LOG)
    for o in ops:
        if o[0] == "write":
            vm.write(o[1])
            model.write(o[1])
        elif o[0] == "collect":
            sid = o[1]
            n = dict((s, n) for s, _, n in SLOTS)[sid]
            b = dict((s, b) for s, b, _ in SLOTS)[sid]
            first = min(o[2], n)
            num = min(o[3], n - first)
            want = sorted(p for p in model.dirty[sid] if first <= p < first + num)
            model.dirty[sid] -= set(want)
            assert vm.collect(sid, first, num).tolist() == [b + p for p in want]
        elif o[0] == "get":
            sid = o[1]
            assert bits_to_set(vm.get_dirty_log(sid)) == model.dirty[sid]
            model.dirty[sid] = set()

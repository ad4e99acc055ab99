"""Write traces: a documented, versioned file of which pages were written when,
a recorder that writes one from any migration run, and replay.

File format, version 1: a numpy ``.npz`` archive (``numpy.savez_compressed``)
holding exactly these arrays:

========== ========= =====================================================
key        dtype     meaning
========== ========= =====================================================
format     str       ``"pykvmdirty-trace"``
version    int64     ``1``
npages     uint64    guest size in pages (every gfn is below it)
t_ns       uint64[k] start of interval i in ns from the start of the run,
                     non-decreasing
offsets    uint64    k + 1 offsets into gfns: interval i wrote
           [k+1]     ``gfns[offsets[i]:offsets[i+1]]``; offsets[0] = 0,
                     non-decreasing, offsets[k] = len(gfns)
gfns       uint64[m] the pages written, in order
vcpus      uint16[m] the vCPU that wrote each page
meta       str       JSON object: free-form description (workload, source)
========== ========= =====================================================

A deterministic run records what its workload wrote at each step; a
real-time run (C writer threads, or a real guest) records what each sync
collected, which is what the dirty log saw. Replay writes interval i at
virtual time t_ns[i]. Loading checks every rule above and raises
:class:`TraceError` (a ValueError) naming the problem.
"""
import json
import zipfile

import numpy as np

FORMAT = "pykvmdirty-trace"
VERSION = 1
KEYS = ("format", "version", "npages", "t_ns", "offsets", "gfns", "vcpus", "meta")


class TraceError(ValueError):
    """An invalid, truncated or unsupported trace file."""


class Trace:
    """A loaded (validated) trace."""

    def __init__(self, npages, t_ns, offsets, gfns, vcpus, meta=None):
        self.npages = int(npages)
        self.t_ns = np.asarray(t_ns, dtype=np.uint64)
        self.offsets = np.asarray(offsets, dtype=np.uint64)
        self.gfns = np.asarray(gfns, dtype=np.uint64)
        self.vcpus = np.asarray(vcpus, dtype=np.uint16)
        self.meta = dict(meta or {})
        validate(self, "trace")

    @property
    def intervals(self):
        return self.t_ns.size

    def interval(self, i):
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.t_ns[i], self.gfns[lo:hi], self.vcpus[lo:hi]

    def save(self, path):
        with open(path, "wb") as f:
            np.savez_compressed(
                f, format=np.array(FORMAT), version=np.array(VERSION, dtype=np.int64),
                npages=np.array(self.npages, dtype=np.uint64), t_ns=self.t_ns,
                offsets=self.offsets, gfns=self.gfns, vcpus=self.vcpus,
                meta=np.array(json.dumps(self.meta)))


def validate(tr, where):
    def bad(msg):
        raise TraceError("%s: %s" % (where, msg))
    k = tr.t_ns.size
    if tr.t_ns.ndim != 1 or tr.offsets.ndim != 1 or tr.gfns.ndim != 1 or tr.vcpus.ndim != 1:
        bad("t_ns, offsets, gfns and vcpus must be one-dimensional")
    if tr.offsets.size != k + 1:
        bad("offsets has %d entries, expected len(t_ns) + 1 = %d" % (tr.offsets.size, k + 1))
    if tr.offsets[0] != 0:
        bad("offsets[0] is %d, expected 0" % tr.offsets[0])
    if int(tr.offsets[-1]) != tr.gfns.size:
        bad("offsets[-1] is %d but there are %d gfns" % (tr.offsets[-1], tr.gfns.size))
    if k and np.any(np.diff(tr.offsets.astype(np.int64)) < 0):
        bad("offsets are not non-decreasing")
    if k > 1 and np.any(tr.t_ns[1:] < tr.t_ns[:-1]):
        bad("t_ns is not non-decreasing")
    if tr.vcpus.size != tr.gfns.size:
        bad("vcpus has %d entries but there are %d gfns" % (tr.vcpus.size, tr.gfns.size))
    if tr.npages <= 0:
        bad("npages must be positive, got %d" % tr.npages)
    if tr.gfns.size and int(tr.gfns.max()) >= tr.npages:
        bad("gfn %d is outside the guest (%d pages)" % (int(tr.gfns.max()), tr.npages))


def load(path):
    """Load and validate a trace file; TraceError names what is wrong."""
    where = "trace file %s" % path
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TraceError("%s: cannot open: %s" % (where, e.strerror or e)) from None
    if head[:2] != b"PK":
        raise TraceError("%s: not a pykvmdirty trace (not an .npz archive)" % where)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [key for key in KEYS if key not in z.files]
            if missing:
                raise TraceError("%s: missing arrays %s (is it a pykvmdirty trace?)"
                                 % (where, ", ".join(missing)))
            fmt = str(z["format"])
            if fmt != FORMAT:
                raise TraceError("%s: format is %r, expected %r" % (where, fmt, FORMAT))
            version = int(z["version"])
            if version != VERSION:
                raise TraceError("%s: unsupported trace version %d (this reader knows %d)"
                                 % (where, version, VERSION))
            arrays = {key: z[key] for key in KEYS}
    except TraceError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise TraceError("%s: truncated or corrupt archive (%s)" % (where, e)) from None
    for key in ("t_ns", "offsets", "gfns", "vcpus"):
        if arrays[key].dtype.kind not in "ui":
            raise TraceError("%s: %s must hold integers, got dtype %s"
                             % (where, key, arrays[key].dtype))
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        raise TraceError("%s: meta is not a JSON object" % where) from None
    return Trace(int(arrays["npages"]), arrays["t_ns"], arrays["offsets"], arrays["gfns"],
                 arrays["vcpus"], meta if isinstance(meta, dict) else {"meta": meta})


class Recorder:
    """Collects (time, gfns, vcpu) intervals; ``save(path)`` writes a trace.
    Consecutive add() calls with the same time join one interval."""

    def __init__(self, npages, meta=None):
        self.npages = int(npages)
        self.meta = dict(meta or {})
        self._t = []
        self._gfns = []
        self._vcpus = []

    def add(self, t_ns, gfns, vcpu=0):
        gfns = np.asarray(gfns, dtype=np.uint64).copy()
        if self._t and self._t[-1] == int(t_ns):
            self._gfns[-1].append(gfns)
            self._vcpus[-1].append(np.full(gfns.size, vcpu, dtype=np.uint16))
        else:
            self._t.append(int(t_ns))
            self._gfns.append([gfns])
            self._vcpus.append([np.full(gfns.size, vcpu, dtype=np.uint16)])

    def trace(self):
        sizes = [sum(a.size for a in g) for g in self._gfns]
        offsets = np.zeros(len(sizes) + 1, dtype=np.uint64)
        offsets[1:] = np.cumsum(sizes, dtype=np.uint64)
        flat = [a for g in self._gfns for a in g]
        flatv = [a for g in self._vcpus for a in g]
        gfns = np.concatenate(flat) if flat else np.zeros(0, dtype=np.uint64)
        vcpus = np.concatenate(flatv) if flatv else np.zeros(0, dtype=np.uint16)
        return Trace(self.npages, np.array(self._t, dtype=np.uint64), offsets, gfns, vcpus,
                     self.meta)

    def save(self, path):
        self.trace().save(path)


class TraceWorkload:
    """Replays a trace on the virtual clock (same interface as
    workloads.VirtualWorkload): interval i is written when t_ns[i] < t1."""

    def __init__(self, vm, trace, writer):
        if vm.vcpus <= int(trace.vcpus.max(initial=0)):
            raise ValueError("the trace uses vCPU %d but the VM has %d vCPUs"
                             % (int(trace.vcpus.max()), vm.vcpus))
        self.trace = trace
        self.writer = writer  # VirtualWorkload.write_gfns-like callable
        self.throttle = 0
        self._next = 0
        self.writes = 0
        self.ring_full = 0

    def advance(self, t0, t1):
        tr = self.trace
        done = 0
        value = 0
        while self._next < tr.intervals and int(tr.t_ns[self._next]) < t1:
            _, gfns, vcpus = tr.interval(self._next)
            self._next += 1
            value = self._next
            # one write call per vCPU of the interval (vectorised split)
            for v in np.unique(vcpus):
                sel = gfns[vcpus == v]
                self.writer(int(v), sel, value, t1)
                done += sel.size
        self.writes += done
        return done

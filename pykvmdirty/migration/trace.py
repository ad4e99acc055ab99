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

Two optional keys of meta change replay (a measured guest's model uses them,
qemu/linux/model.py):

- ``"prefill": P`` (integer, 0..k): the first P intervals are the guest's
  memory before the migration starts; they are written when the replay is
  set up, before the dirty log is first collected, so they are in the bulk
  pass but never dirty;
- ``"repeat": {"from": F, "period_ns": T}``: after the last interval the
  intervals F..k-1 are replayed again, shifted by T ns each time, for as
  long as the run lasts (a workload's steady state, measured for a while,
  stands for the rest of it); P <= F < k and T > t_ns[k-1] - t_ns[F];
- ``"throttle": "slows"``: auto-converge's CPU throttle slows the replay
  (at p % the trace's time runs at 1 - p/100 of the clock's), as it slows
  the measured guest; without it a trace replays what was recorded,
  unthrottled;
- ``"speed": S`` (a number, 0 < S <= 4; default 1): the trace's time runs at
  S x the clock's (before any throttle): a guest measured alone that runs
  slower while it is migrated (its vCPU shares the host with the sender and
  the destination) replays at the speed a calibration found;
- ``"speed_idle": S0`` (a number, 0 < S0 <= 4; default ``speed``): the
  speed while the migration's sender waits for its rate limit (a guest
  that shares the host's cores with the sender runs faster while the
  sender sleeps). The replay then runs each interval at
  ``speed x (1 - w) + speed_idle x w``, w the share of the interval the
  sender spent waiting (the loop's ``idle_ns`` clock; without one w = 0).
"""
import io
import json
import zipfile

import numpy as np

from .. import limits

FORMAT = "pykvmdirty-trace"
VERSION = 1
KEYS = ("format", "version", "npages", "t_ns", "offsets", "gfns", "vcpus", "meta")


class TraceError(ValueError):
    """An invalid, truncated or unsupported trace file."""


MAX_NPAGES = 1 << 52   # 4 KiB pages of a 2^64-byte address space
MAX_VCPU = 0xFFFF      # vcpus are stored as uint16


def _unsigned(values, field, where, dtype, hi=None):
    """values as a one-dimensional array of dtype, refused (never wrapped) if
    they are not integers or fall outside [0, hi]."""
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=dtype) if arr.ndim == 1 else _bad_shape(arr, field, where)
    if arr.dtype.kind not in "ui":
        raise TraceError("%s: %s must hold integers, got dtype %s" % (where, field, arr.dtype))
    if arr.ndim != 1:
        _bad_shape(arr, field, where)
    top = np.iinfo(dtype).max if hi is None else hi
    lo_v, hi_v = int(arr.min()), int(arr.max())
    if lo_v < 0 or hi_v > top:
        raise TraceError("%s: %s holds %d, outside [0, %d]"
                         % (where, field, lo_v if lo_v < 0 else hi_v, top))
    return arr.astype(dtype, copy=False)


def _bad_shape(arr, field, where):
    raise TraceError("%s: %s must be one-dimensional, got shape %s"
                     % (where, field, arr.shape))


def _scalar_int(value, field, where, lo, hi):
    """A 0-d integer (numpy array or int) within [lo, hi]; never a float,
    string or array."""
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "ui" or isinstance(value, bool):
        raise TraceError("%s: %s must be one integer, got %s of dtype %s"
                         % (where, field, "shape %s" % (arr.shape,) if arr.ndim else "a scalar",
                            arr.dtype))
    v = int(arr)
    if not lo <= v <= hi:
        raise TraceError("%s: %s is %d, outside [%d, %d]" % (where, field, v, lo, hi))
    return v


class Trace:
    """A loaded (validated) trace."""

    def __init__(self, npages, t_ns, offsets, gfns, vcpus, meta=None, where="trace"):
        self.npages = _scalar_int(npages, "npages", where, 1, MAX_NPAGES)
        self.t_ns = _unsigned(t_ns, "t_ns", where, np.uint64)
        self.offsets = _unsigned(offsets, "offsets", where, np.uint64)
        self.gfns = _unsigned(gfns, "gfns", where, np.uint64)
        self.vcpus = _unsigned(vcpus, "vcpus", where, np.uint16, MAX_VCPU)
        self.meta = dict(meta or {})
        validate(self, where)

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
    """The format's rules between fields (each field's type and range are
    checked when the Trace is built)."""
    def bad(msg):
        raise TraceError("%s: %s" % (where, msg))
    k = tr.t_ns.size
    if tr.offsets.size != k + 1:
        bad("offsets has %d entries, expected len(t_ns) + 1 = %d" % (tr.offsets.size, k + 1))
    if tr.offsets[0] != 0:
        bad("offsets[0] is %d, expected 0" % tr.offsets[0])
    if int(tr.offsets[-1]) != tr.gfns.size:
        bad("offsets[-1] is %d but there are %d gfns" % (tr.offsets[-1], tr.gfns.size))
    if k and np.any(tr.offsets[1:] < tr.offsets[:-1]):
        bad("offsets are not non-decreasing")
    if k > 1 and np.any(tr.t_ns[1:] < tr.t_ns[:-1]):
        bad("t_ns is not non-decreasing")
    if tr.vcpus.size != tr.gfns.size:
        bad("vcpus has %d entries but there are %d gfns" % (tr.vcpus.size, tr.gfns.size))
    if tr.gfns.size and int(tr.gfns.max()) >= tr.npages:
        bad("gfns: gfn %d is outside the guest (npages %d)" % (int(tr.gfns.max()), tr.npages))
    prefill = tr.meta.get("prefill", 0)
    if isinstance(prefill, bool) or not isinstance(prefill, int) or not 0 <= prefill <= k:
        bad("meta prefill must be an integer in [0, %d] (intervals), got %r" % (k, prefill))
    if tr.meta.get("throttle", "none") not in ("none", "slows"):
        bad("meta throttle must be \"none\" or \"slows\", got %r" % (tr.meta["throttle"],))
    for key in ("speed", "speed_idle"):
        speed = tr.meta.get(key, 1)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < speed <= 4:
            bad("meta %s must be a number in (0, 4], got %r" % (key, speed))
    rep = tr.meta.get("repeat")
    if rep is not None:
        f = rep.get("from") if isinstance(rep, dict) else None
        period = rep.get("period_ns") if isinstance(rep, dict) else None
        if (isinstance(f, bool) or not isinstance(f, int) or not prefill <= f < k
                or isinstance(period, bool) or not isinstance(period, int)
                or period <= int(tr.t_ns[-1]) - int(tr.t_ns[f])):
            bad("meta repeat must be {\"from\": F, \"period_ns\": T} with %d <= F < %d and "
                "T > t_ns[-1] - t_ns[F], got %r" % (prefill, k, rep))


# What loading keeps per element of each array once converted to the
# format's dtype (_unsigned widens, e.g. uint8 gfns to uint64: 8x).
LOADED_ITEMSIZE = {"t_ns": 8, "offsets": 8, "gfns": 8, "vcpus": 2}


def _read_header(f, key, where):
    """(shape, fortran, dtype) of a .npy stream positioned at its start."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise TraceError("%s: %s has an unsupported .npy version %s" % (where, key, version))
    if dtype.hasobject:
        raise TraceError("%s: %s holds Python objects, which a trace never does"
                         % (where, key))
    return shape, fortran, dtype


def _count(shape):
    count = 1
    for n in shape:
        count *= n
    return count


def _loaded_bytes(zf, where):
    """What loading the archive will hold at its peak, from the members'
    sizes and .npy headers alone (a few hundred bytes read per member): the
    raw members plus each array widened to the format's dtype."""
    total = 0
    for key in KEYS:
        info = zf.getinfo(key + ".npy")
        total += info.file_size
        if key in LOADED_ITEMSIZE:
            with zf.open(info) as f:
                shape, _, dtype = _read_header(f, key, where)
            # a header claiming more than the member holds is refused later
            count = min(_count(shape), info.file_size // max(dtype.itemsize, 1))
            total += count * LOADED_ITEMSIZE[key]
    return total


def _read_array(zf, key, where):
    """One .npy member as an array, its header checked against the member's
    size before anything is allocated; object (pickled) arrays refused."""
    info = zf.getinfo(key + ".npy")
    raw = zf.read(info)  # at most info.file_size bytes (checked by the caller), CRC-checked
    f = io.BytesIO(raw)
    shape, fortran, dtype = _read_header(f, key, where)
    count = _count(shape)
    if count * dtype.itemsize != len(raw) - f.tell():
        raise TraceError("%s: %s's header claims %d elements of %s (%d bytes) but the archive "
                         "holds %d bytes of data" % (where, key, count, dtype,
                                                     count * dtype.itemsize,
                                                     len(raw) - f.tell()))
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def load(path, max_bytes=None):
    """Load and validate a trace file; TraceError names the file and the
    field. max_bytes (the limit the user gave, e.g. --max-memory; default:
    the memory limit of pykvmdirty.limits) bounds what loading holds: the
    uncompressed members plus every array widened to the format's dtype
    (uint8 gfns become uint64), computed from the .npy headers and checked
    before any array is read."""
    where = "trace file %s" % path
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TraceError("%s: cannot open: %s" % (where, e.strerror or e)) from None
    if head != b"PK\x03\x04":
        raise TraceError("%s: not a pykvmdirty trace (not an .npz archive)" % where)
    if max_bytes is None:
        max_bytes = limits.default_limit()[0]
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [key for key in KEYS if key + ".npy" not in names]
            if missing:
                raise TraceError("%s: missing arrays %s (is it a pykvmdirty trace?)"
                                 % (where, ", ".join(missing)))
            size = _loaded_bytes(zf, where)
            if size > max_bytes:
                raise TraceError("%s: loading it takes %s (its arrays uncompressed and "
                                 "widened to the format's dtypes), more than the %s "
                                 "this load may use" % (where, limits.format_bytes(size),
                                                        limits.format_bytes(max_bytes)))
            arrays = {key: _read_array(zf, key, where) for key in KEYS}
    except TraceError:
        raise
    except MemoryError:
        raise TraceError("%s: out of memory reading it" % where) from None
    except Exception as e:  # zipfile, zlib, the .npy header parser: all mean corrupt
        raise TraceError("%s: truncated or corrupt archive (%s: %s)"
                         % (where, type(e).__name__, e)) from None
    fmt = arrays["format"]
    if fmt.dtype.kind != "U" or fmt.ndim != 0 or str(fmt) != FORMAT:
        raise TraceError("%s: format is %r, expected %r"
                         % (where, fmt.tolist() if fmt.size < 8 else fmt.dtype, FORMAT))
    version = _scalar_int(arrays["version"], "version", where, 0, 1 << 31)
    if version != VERSION:
        raise TraceError("%s: unsupported trace version %d (this reader knows %d)"
                         % (where, version, VERSION))
    meta = arrays["meta"]
    try:
        if meta.dtype.kind != "U" or meta.ndim != 0:
            raise ValueError
        meta = json.loads(str(meta))
    except ValueError:
        raise TraceError("%s: meta is not a JSON object" % where) from None
    return Trace(arrays["npages"], arrays["t_ns"], arrays["offsets"], arrays["gfns"],
                 arrays["vcpus"], meta if isinstance(meta, dict) else {"meta": meta},
                 where=where)


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
    workloads.VirtualWorkload): interval i was recorded at the end of the
    interval that wrote it, so it is written when t_ns[i] <= t1."""

    def __init__(self, vm, trace, writer, idle_ns=None):
        if vm.vcpus <= int(trace.vcpus.max(initial=0)):
            raise ValueError("the trace uses vCPU %d but the VM has %d vCPUs"
                             % (int(trace.vcpus.max()), vm.vcpus))
        self.trace = trace
        self.writer = writer  # VirtualWorkload.write_gfns-like callable
        self.throttle = 0
        self._next = 0
        self.writes = 0
        self.ring_full = 0
        self._base = 0          # time shift of the current repetition (meta "repeat")
        self._value = 0         # intervals written so far (the value each write leaves)
        rep = trace.meta.get("repeat")
        self._repeat = (int(rep["from"]), int(rep["period_ns"])) if rep else None
        self.prefilled = 0
        self._slows = trace.meta.get("throttle") == "slows"
        self._speed = float(trace.meta.get("speed", 1))
        self._speed_idle = float(trace.meta.get("speed_idle", self._speed))
        self._idle_ns = idle_ns     # the sender's waiting time so far (callable), or None
        self._idle_seen = idle_ns() if idle_ns is not None else 0
        self._clock = None      # the trace's own time when the throttle or a speed moves it
        self._own_clock = (self._slows or self._speed != 1 or self._speed_idle != self._speed)
        prefill = int(trace.meta.get("prefill", 0))
        if prefill:             # the guest's memory before the migration starts
            self.prefilled = self._write(0, prefill, 0)
            self._next = prefill

    def advance(self, t0, t1):
        """Write every interval due by t1. They all land at t1, so they are
        written together: one call per vCPU over their gfns in order, value
        the number of intervals replayed. The cost follows the gfns due and
        the vCPUs, never the number of intervals (empty ones cost nothing)."""
        tr = self.trace
        done = 0
        speed = self._speed
        if self._speed_idle != self._speed and self._idle_ns is not None:
            # the share of [t0, t1] the sender spent waiting for its rate limit
            idle = self._idle_ns()
            waited, self._idle_seen = idle - self._idle_seen, idle
            w = min(1.0, max(0.0, waited / (t1 - t0))) if t1 > t0 else 0.0
            speed = self._speed * (1 - w) + self._speed_idle * w
        if self._own_clock:
            # the throttle the loop set on the writer (VirtualWorkload.set_throttle)
            pct = (getattr(getattr(self.writer, "__self__", None), "_throttle", 0) or 0
                   if self._slows else 0)
            self._clock = (t0 if self._clock is None else self._clock) + \
                (t1 - t0) * speed * (100 - pct) / 100
            t1 = int(self._clock)
        while True:
            due = t1 - self._base
            end = int(np.searchsorted(tr.t_ns, np.uint64(due), side="right")) if due >= 0 else 0
            if end > self._next:
                done += self._write(self._next, end, t1)
                self._next = end
            if self._repeat is None or self._next < tr.intervals:
                break
            self._next = self._repeat[0]          # the next repetition
            self._base += self._repeat[1]
        self.writes += done
        return done

    def _write(self, lo_i, hi_i, t):
        """Write intervals [lo_i, hi_i) at time t: one call per vCPU."""
        tr = self.trace
        lo, hi = int(tr.offsets[lo_i]), int(tr.offsets[hi_i])
        gfns, vcpus = tr.gfns[lo:hi], tr.vcpus[lo:hi]
        self._value += hi_i - lo_i
        done = 0
        for v in np.unique(vcpus):
            sel = gfns[vcpus == v]
            self.writer(int(v), sel, self._value, t)
            done += sel.size
        return done

"""The Linux guest's workloads, by name: each a real program started by the
initramfs's /init (a busybox shell script, initramfs.py) in the background.

Every workload prints ``pkd-ready`` on the serial console once its program
runs; workloads with iterations print ``pkd-work N`` after each; a
heartbeat prints ``pkd-tick N`` every 0.2 s in all of them (also idle), so
a destination that resumes is seen continuing the count.

- ``idle``: nothing but the kernel (timers, the heartbeat shell);
- ``vm-<method>-<size>``: ``stress-ng --vm 1 --vm-bytes SIZE --vm-keep
  --vm-method METHOD``, the methods flip, incdec, rand-set and write64 over
  16 MiB and 64 MiB (a stressor that maps SIZE once and rewrites it);
- ``pagecache``: a page-cache writer: 8 files of 4 MiB in tmpfs rewritten in
  place (``dd if=/dev/urandom conv=notrunc``), one 256 KiB block at a time,
  round robin;
- ``sort``: busybox ``sort -r`` of a 300,000-line file (2 MB) in tmpfs, over
  and over, each run into a new output file;
- ``gzip``: busybox ``gzip -c`` of the same file, over and over.
"""
from typing import Dict, Tuple

VM_METHODS = ("flip", "incdec", "rand-set", "write64")
VM_SIZES = ("16M", "64M")


def _vm(method, size):
    return ("stress-ng --vm 1 --vm-bytes %s --vm-keep --vm-method %s --timeout 1d "
            "--temp-path /tmp >/dev/null 2>&1 &\necho pkd-ready" % (size, method))


_LOOP = ("(n=0; while :; do %s; n=$((n+1)); echo \"pkd-work $n\"; done) &\n"
         "echo pkd-ready")
_INPUT = "seq 1 300000 > /tmp/in\n"

#: name -> (what it is, the shell lines /init runs for it)
WORKLOADS: Dict[str, Tuple[str, str]] = {
    "idle": ("the kernel alone (and the heartbeat shell)", "echo pkd-ready"),
    "pagecache": ("8 tmpfs files of 4 MiB rewritten in place, 256 KiB at a time",
                  "for f in 0 1 2 3 4 5 6 7; do dd if=/dev/zero of=/tmp/pc$f bs=1M count=4 "
                  "2>/dev/null; done\n" +
                  _LOOP % "dd if=/dev/urandom of=/tmp/pc$((n % 8)) bs=256k count=1 "
                  "seek=$(( (n / 8) % 16 )) conv=notrunc 2>/dev/null"),
    "sort": ("busybox sort -r of a 300,000-line file, repeatedly",
             _INPUT + _LOOP % "sort -r /tmp/in > /tmp/out"),
    "gzip": ("busybox gzip of a 300,000-line file, repeatedly",
             _INPUT + _LOOP % "gzip -c /tmp/in > /tmp/in.gz"),
}
for _m in VM_METHODS:
    for _s in VM_SIZES:
        WORKLOADS["vm-%s-%s" % (_m, _s)] = (
            "stress-ng --vm 1 --vm-bytes %siB --vm-keep --vm-method %s" % (_s, _m), _vm(_m, _s))


def check(name):
    """The workload's shell lines; ValueError naming the choices otherwise."""
    if name not in WORKLOADS:
        raise ValueError("unknown Linux guest workload %r; choose one of %s"
                         % (name, ", ".join(sorted(WORKLOADS))))
    return WORKLOADS[name][1]


def needs_stress_ng(name):
    return name.startswith("vm-")

"""One QEMU process running the Linux guest, and its serial console.

The guest boots with ``-kernel``/``-initrd``/``-append`` (the kernel's own
boot protocol through QEMU's linuxboot option ROM) and writes its console to
a file in the process's private directory (``-serial file:``); the host
reads the lines the guest's /init prints (workloads.py):

- ``pkd-boot UPTIME workload=NAME``, ``pkd-ready`` (the workload runs),
- ``pkd-tick N`` every 0.2 s (the heartbeat: the progress counter that a
  migrated guest must continue on the destination),
- ``pkd-work N`` after each iteration of a looping workload,
- ``pkd-error ...`` (an unknown workload).
"""
import os
import re
from dataclasses import dataclass, replace
from typing import List, Optional

from ..errors import QemuError
from ..process import QemuProcess
from . import initramfs, workloads

_LINE = re.compile(rb"pkd-(tick|work|ready|boot|error)\b ?([^\r\n]*)")


@dataclass
class ConsoleStatus:
    """What the console said so far, shaped like the firmware guest's status
    block for the runner: pages = heartbeat ticks, passes = workload
    iterations, state "running" once the guest printed anything of /init."""
    state: str = "booting"
    valid: bool = False
    passes: int = 0
    pages: int = 0
    tsc_hz: int = 0
    first_tick: Optional[int] = None


class Console:
    """Incremental reader of a serial console file (complete lines only)."""

    def __init__(self, path):
        self.path = path
        self._off = 0
        self._partial = b""
        self.status = ConsoleStatus()
        self.lines: List[str] = []      # the last lines, for error messages
        self.errors: List[str] = []

    def poll(self) -> ConsoleStatus:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return self.status
        self._off += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        st = self.status
        for raw in complete:
            text = raw.decode(errors="replace").strip()
            if text:
                self.lines = (self.lines + [text])[-20:]
            m = _LINE.search(raw)
            if not m:
                continue
            kind, arg = m.group(1).decode(), m.group(2).decode(errors="replace").strip()
            st.state, st.valid = "running", True
            if kind == "tick" and arg.isdigit():
                st.pages = int(arg)
                if st.first_tick is None:
                    st.first_tick = st.pages
            elif kind == "work" and arg.split()[0:1] and arg.split()[0].isdigit():
                st.passes = int(arg.split()[0])
            elif kind == "error":
                self.errors.append(arg)
        return st

    def tail(self):
        return " | ".join(self.lines[-6:])


def kernel_cmdline(workload):
    return "console=ttyS0 quiet loglevel=3 pkd.workload=%s" % workload


class LinuxProcess(QemuProcess):
    """A QEMU booting the Linux guest with `workload`; status() reads its console."""

    def __init__(self, role, kernel, initrd, workload, memory, accel, incoming=False,
                 dirty_ring=0):
        workloads.check(workload)
        super().__init__(role, None, None, memory, accel, incoming=incoming,
                         dirty_ring=dirty_ring)
        self.serial_path = os.path.join(self._dir, "serial")
        self.args += ["-kernel", kernel, "-initrd", initrd, "-append", kernel_cmdline(workload),
                      "-serial", "file:%s" % self.serial_path]
        self.console = Console(self.serial_path)

    async def status(self):
        st = self.console.poll()
        if self.console.errors:
            raise QemuError("%s Linux guest: %s" % (self.role, self.console.errors[0]))
        return replace(st)      # a copy: the runner compares successive readings


def boot_files(kernel: Optional[str] = None, workload: str = "idle"):
    """(kernel, initramfs) paths, building the initramfs at first use."""
    k = initramfs.find_kernel(kernel or None)
    have = any(os.path.isfile(p) for p in initramfs.STRESS_NG_PATHS)
    if workloads.needs_stress_ng(workload) and not have:
        raise initramfs.LinuxGuestError("workload %s needs stress-ng; install it with: %s"
                                        % (workload, initramfs.INSTALL_HINT))
    return k, initramfs.initramfs_path(with_stress_ng=have)

"""One QEMU process running the test guest, driven over QMP (qemu.qmp).

QEMU is started as a child that dies with us (PR_SET_PDEATHSIG), its QMP
connection is a unix socket in a private temporary directory on which we
listen and QEMU connects (so there is no port to race for and no polling for
a socket to appear), and every await on it is guarded by the process: if QEMU
exits, the wait ends with :class:`QemuExited` carrying its exit status and the
tail of its stderr.  :meth:`QemuProcess.kill` is synchronous and idempotent so
that a ``finally`` can always run it, also after Ctrl-C has torn down the
event loop.
"""
import asyncio
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
from typing import Any, Optional

from . import layout
from .errors import QemuError, QemuExited, QemuNotFound

QEMU_BINARY = "qemu-system-x86_64"
_PR_SET_PDEATHSIG = 1
_STDERR_TAIL = 2000


def qemu_binary():
    """The path of qemu-system-x86_64, or raise QemuNotFound."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise QemuNotFound("%s not found; install it with: apt-get install -y "
                           "--no-install-recommends qemu-system-x86" % QEMU_BINARY)
    return path


KVM_CHECK_EXTENSION = 0xAE03        # _IO(KVMIO, 0x03)
KVM_CAP_DIRTY_LOG_RING = 192


def dirty_ring_unavailable(entries=4096):
    """None if QEMU can run a guest with -accel kvm,dirty-ring-size=`entries`
    here (a usable /dev/kvm whose KVM_CHECK_EXTENSION(KVM_CAP_DIRTY_LOG_RING)
    allows a ring that large, 16 bytes per entry), else why not."""
    import fcntl
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return "/dev/kvm is not usable: %s" % (e.strerror or e)
    try:
        max_bytes = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING)
    except OSError as e:
        return "KVM_CHECK_EXTENSION failed: %s" % (e.strerror or e)
    finally:
        os.close(fd)
    if max_bytes <= 0:
        return "this kernel's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING is 0)"
    if max_bytes < entries * 16:
        return ("this kernel's KVM allows a dirty ring of %d entries, fewer than %d"
                % (max_bytes // 16, entries))
    return None


def _qmp_client_class():
    try:
        from qemu.qmp import QMPClient
    except ImportError:
        raise QemuNotFound("the qemu.qmp library is missing: pip install qemu.qmp") from None
    return QMPClient


def die_with_parent():
    """The kernel SIGKILLs the calling process (QEMU, as a preexec_fn; a
    worker, as a pool initializer) if its parent dies first."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _describe_exit(rc):
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit status %d" % rc


class QemuProcess:
    """A QEMU running the test guest. ``role`` names it in messages ("source")."""

    def __init__(self, role, image, params_file, memory, accel, incoming=False, extra_args=(),
                 dirty_ring=0):
        self.role = role
        self.accel = accel
        self._dir = tempfile.mkdtemp(prefix="pkd-qemu-%s-" % role)
        self.qmp_path = os.path.join(self._dir, "qmp.sock")
        self._stderr_path = os.path.join(self._dir, "stderr")
        accel_arg = "tcg,tb-size=64" if accel == "tcg" else accel
        if dirty_ring:
            if accel != "kvm":
                raise QemuError("the dirty ring (dirty-ring-size) needs accel kvm, not %s"
                                % accel)
            accel_arg = "kvm,dirty-ring-size=%d" % dirty_ring
        self.args = [qemu_binary(), "-machine", "pc", "-accel", accel_arg,
                     "-m", "%dM" % (memory >> 20),
                     "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                     "-no-reboot", "-qmp", "unix:%s" % self.qmp_path]
        if image is not None:       # the firmware guest (a Linux guest boots with -kernel)
            self.args += ["-bios", image, "-device", "loader,file=%s,addr=0x%x,force-raw=on"
                          % (params_file, layout.PARAMS_ADDR)]
        if incoming:
            self.args += ["-S", "-incoming", "defer"]
        self.args += list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Any = None  # a qemu.qmp QMPClient once started

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def returncode(self):
        return self.proc.poll() if self.proc else None

    def stderr_tail(self):
        try:
            with open(self._stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _STDERR_TAIL))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def exited_error(self, during):
        assert self.proc is not None, "exited_error before start"
        tail = self.stderr_tail()
        return QemuExited("%s QEMU (pid %d) exited during %s: %s%s" % (
            self.role, self.proc.pid, during, _describe_exit(self.proc.poll()),
            ("; stderr: " + tail.replace("\n", " | ")) if tail else ""))

    async def start(self, timeout=10.0):
        """Spawn QEMU and accept its QMP connection."""
        self.qmp = _qmp_client_class()(self.role)
        await self.qmp.start_server(self.qmp_path)
        with open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         preexec_fn=die_with_parent, close_fds=True)
        await self.guarded(self.qmp.accept(), "startup", timeout)

    async def guarded(self, coro, during, timeout=10.0):
        """Await coro unless QEMU exits first (QemuExited) or timeout passes."""
        proc = self.proc
        assert proc is not None, "guarded() before start"
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    try:
                        return task.result()
                    except (QemuError, asyncio.CancelledError):
                        raise
                    except Exception as e:
                        if proc.poll() is not None:
                            raise self.exited_error(during) from e
                        raise
                if proc.poll() is not None:
                    raise self.exited_error(during)
                if loop.time() > deadline:
                    raise QemuError("%s QEMU did not answer within %.1f s during %s"
                                    % (self.role, timeout, during))
        finally:
            if not task.done():
                # abandon the command: wait until its cancellation lands, and
                # take its outcome (CancelledError, or an error it raised first)
                # so asyncio does not log it. asyncio.wait raises nothing of the
                # task's; Ctrl-C, SystemExit and our own cancellation still
                # propagate.
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()

    async def cmd(self, name, during=None, timeout=10.0, **args):
        """Execute one QMP command; its reply (dict/list/None)."""
        return await self.guarded(self.qmp.execute(name, args or None), during or name, timeout)

    async def hmp(self, line, during=None):
        return await self.cmd("human-monitor-command", during=during or line,
                              **{"command-line": line})

    async def read_qwords(self, addr, count):
        """count little-endian u64 from guest physical addr (monitor `xp`)."""
        out = await self.hmp("xp /%dgx 0x%x" % (count, addr), during="reading guest memory")
        words = [int(w, 16) for line in out.splitlines() if ":" in line
                 for w in re.findall(r"0x[0-9a-fA-F]+", line.split(":", 1)[1])]
        if len(words) != count:
            raise QemuError("%s QEMU: unexpected xp output %r" % (self.role, out[:200]))
        return words

    async def status(self):
        """The guest's status block (layout.GuestStatus)."""
        words = await self.read_qwords(layout.STATUS_ADDR, layout.STATUS_SIZE // 8)
        return layout.parse_status(b"".join(w.to_bytes(8, "little") for w in words))

    async def read_memory(self, addr, size):
        """size bytes of guest physical memory from addr (QMP pmemsave), as bytes."""
        path = os.path.join(self._dir, "mem-%x-%x" % (addr, size))
        try:
            await self.cmd("pmemsave", during="reading guest memory", timeout=60.0,
                           val=addr, size=size, filename=path)
            with open(path, "rb") as f:
                data = f.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)
        if len(data) != size:
            raise QemuError("%s QEMU: pmemsave wrote %d bytes, expected %d"
                            % (self.role, len(data), size))
        return data

    async def close(self, timeout=3.0):
        """Ask QEMU to quit, then kill() whatever is left."""
        if self.proc is not None and self.proc.poll() is None and self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), timeout)
            except Exception:
                pass
        if self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.disconnect(), timeout)
            except Exception:
                pass
        self.kill(grace=timeout)

    def kill(self, grace=0.0):
        """Synchronous and idempotent: the process is reaped and the directory removed."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

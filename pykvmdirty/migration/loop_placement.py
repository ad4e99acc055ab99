"""Where the migration loop runs, and so when it holds the global lock.

``iothread`` (QEMU until 1.2, 2010's discussion): the loop is a handler of
the main loop and runs holding qemu_global_mutex; every iteration (the dirty
bitmap sync, the scan and the send up to the max-wait cap, 50 ms) holds it,
and the lock is dropped only between iterations. A vCPU exit that needs the
lock waits for the rest of the iteration. Every iteration begins with a
sync of the whole dirty log (Controller.iothread_resync, QEMU 0.13's
ram_save_live).

``migration-thread`` (QEMU since 1.3-1.4, 2012-13): the loop runs in a
thread of its own and takes the lock only around the bitmap sync (each
slot's collect with ``per-slot``; every GET with ``chunked-clear``, whose
CLEARs run outside it). With the dirty ring (the ``ring`` backend or
strategy) harvesting and resetting the rings run outside the lock too, as
this project's issue 14 specifies (QEMU's own reaper thread takes the lock
for KVM_RESET_DIRTY_RINGS; the placement here is the proposal's).

The placement is the only code that takes the lock for the loop. Real time:
``GlobalLock.lock/unlock`` (the vCPU threads contend for it). Virtual clock:
the hold's start and end on the virtual clock are recorded and the exits
are played against them after the run. Both placements side by side:
migration/placements.py (two runs, the loops differ).
"""
import contextlib

LOOP_THREADS = ("iothread", "migration-thread")


class LoopPlacement:
    """``LoopPlacement(loop_thread, global_lock, clock, ring_outside)``;
    global_lock None: the loop's structure without a lock (no exits)."""

    def __init__(self, loop_thread, global_lock, clock, ring_outside):
        if loop_thread not in LOOP_THREADS:
            raise ValueError("unknown loop_thread %r; choose from %s"
                             % (loop_thread, ", ".join(LOOP_THREADS)))
        self.loop_thread = loop_thread
        self.gl = global_lock
        self.clock = clock
        self.ring_outside = ring_outside
        self._held = None  # (holder, start ns) while the loop holds the lock
        self._depth = 0    # nested takes (a ring-full reap inside a sync)

    @property
    def iothread(self):
        return self.loop_thread == "iothread"

    def _take(self, holder):
        self._depth += 1
        if self._depth > 1 or self.gl is None:
            return
        if not self.gl.virtual:
            self.gl.lock(holder)
        self._held = (holder, self.clock())

    def _release(self):
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth or self._held is None:
            return
        holder, start = self._held
        self._held = None
        if self.gl is None:
            return
        if self.gl.virtual:
            self.gl.hold(holder, start, self.clock())
        else:
            self.gl.unlock()

    # -- the loop's hooks -------------------------------------------------
    def iteration_begin(self):
        """Start of an iteration (before its sync): iothread takes the lock."""
        if self.iothread:
            self._take("iteration")

    def iteration_end(self):
        """End of an iteration (the send hit the time cap, or the pass ended)."""
        if self.iothread:
            self._release()

    def between_iterations(self):
        """The time cap ended an iteration inside a pass: drop and retake (iothread)."""
        if self.iothread and self._depth == 1:
            self._release()
            self._take("iteration")

    @contextlib.contextmanager
    def sync(self, ring=False):
        """Around one sync call (collect, GET, harvest + reset). migration-thread
        takes the lock unless it is a ring harvest outside it."""
        take = not self.iothread and not (ring and self.ring_outside)
        if take:
            self._take("sync")
        try:
            yield
        finally:
            if take:
                self._release()

    def close(self):
        while self._depth:
            self._release()

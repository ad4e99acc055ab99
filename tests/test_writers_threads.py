"""Writers / workload threads / VM.close() called from several Python threads
at once (issue 20 item 2): every method is safe from any thread.

Each race runs in a subprocess for a bounded time (a heap corruption or a
segfault fails the test instead of killing pytest) and checks outcomes, never
timings: join() returns exact per-thread counts or says "already joined", the
VM ends closed, no thread keeps writing."""
import os
import subprocess
import sys
import textwrap

RACE_S = int(os.environ.get("PYKVMDIRTY_RACE_MS", "300")) / 1000 * 2

PRELUDE = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import pykvmdirty as kd
    from pykvmdirty.bindings.writers import Writers
    seconds = float(sys.argv[1])
    bad = []
    def done():
        print("\\n".join(bad[:20]) if bad else "ok")
        sys.exit(1 if bad else 0)
    def new_vm():
        vm = kd.VM("flat", vcpus=2)
        vm.set_user_memory_region(0, 0, 1024 << 12, kd.MEM_LOG_DIRTY_PAGES)
        return vm
    GFNS = [np.arange(0, 512, dtype=np.uint64), np.arange(512, 1024, dtype=np.uint64)]
""")

STOP_VS_JOIN = PRELUDE + textwrap.dedent("""
    deadline = time.monotonic() + seconds
    vm = new_vm()
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        rounds += 1
        w = Writers(vm, GFNS, loops=10**12)   # never ends unless stopped
        out = {}
        def joiner():
            out["applied"] = w.join()
        t = threading.Thread(target=joiner)
        t.start()
        for _ in range(rounds % 5):
            w.stop()                            # while join() waits
        w.stop()
        t.join()
        a = out.get("applied")
        if a is None or a.shape != (2,) or w.running:
            bad.append("round %d: join gave %r, running %r" % (rounds, a, w.running))
        try:
            w.join()
            bad.append("second join did not raise")
        except ValueError:
            pass
        w.stop()                                # after join: a no-op
        w.stop_and_join()
    vm.set_user_memory_region(0, 0, 0)          # nothing holds the VM any more
    done()
""")

CLOSE_VS_STOP_AND_JOIN = PRELUDE + textwrap.dedent("""
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        rounds += 1
        vm = new_vm()
        ws = [Writers(vm, [GFNS[0]], loops=10**12)]
        errors = []
        def run(f):
            try:
                f()
            except Exception as e:              # noqa: BLE001 - reported below
                errors.append(repr(e))
        calls = [vm.close, ws[0].stop_and_join, vm.close, ws[0].stop_and_join, ws[0].stop]
        ts = [threading.Thread(target=run, args=(calls[(rounds + i) % 5],)) for i in range(5)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors or not vm.closed or ws[0].running:
            bad.append("round %d: errors %s, closed %r, running %r"
                       % (rounds, errors, vm.closed, ws[0].running))
        try:                                     # a pool on a closed VM is refused
            Writers(vm, [GFNS[0]])
            bad.append("Writers on a closed VM started")
        except ValueError:
            pass
    done()
""")

WORKLOAD_STOP_VS_THROTTLE = PRELUDE + textwrap.dedent("""
    from pykvmdirty.bindings.workload import Generator, WorkloadThreads
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        rounds += 1
        vm = new_vm()
        wt = WorkloadThreads(vm, [Generator("uniform", 0, 1024, seed=rounds)], 10**6, 1)
        errors = []
        def throttler():
            try:
                for p in range(200):
                    wt.throttle(p % 100)
            except Exception as e:               # noqa: BLE001
                errors.append(repr(e))
        def stopper():
            try:
                wt.stop()
            except Exception as e:               # noqa: BLE001
                errors.append(repr(e))
        ts = [threading.Thread(target=f) for f in (throttler, stopper, stopper)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        vm.close()
        if errors or wt.running:
            bad.append("round %d: %s running %r" % (rounds, errors, wt.running))
    done()
""")


def _race(script):
    r = subprocess.run([sys.executable, "-c", script, str(RACE_S)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode >= 0, "killed by signal %d:\n%s\n%s" % (
        -r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-3000:] + r.stderr[-3000:]


def test_writers_stop_while_another_thread_joins():
    """stop() from one thread while another join()s (was: heap corruption)."""
    _race(STOP_VS_JOIN)


def test_vm_close_racing_writers_stop_and_join():
    """VM.close() and Writers.stop_and_join() from several threads at once:
    no crash, no exception, the VM ends closed and the writers joined."""
    _race(CLOSE_VS_STOP_AND_JOIN)


def test_workload_threads_stop_racing_throttle():
    """WorkloadThreads.stop() from two threads while a third throttles."""
    _race(WORKLOAD_STOP_VS_THROTTLE)

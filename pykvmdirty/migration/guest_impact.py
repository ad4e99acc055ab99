"""What the guest felt during a migration: the exit waits on the global lock,
its progress against the same guest without migration, the longest stall and
what it waited for, and how the iteration time cap bounds it.

Input: the run's GlobalLock (its C statistics, histogram and event log) and
a baseline (the same exits without the loop's holds: modelled on the virtual
clock, measured before the migration in real time). Output: a plain dict for
the report's JSON, a text block, and a stall-timeline plot.
"""
import numpy as np

from ..bindings.guest_exits import HOLDER_NAMES, HOLDERS
from ..bindings.sender import latency_percentiles
from ..units import NS



def summarize(gl, t0_ns, t1_ns, loop_thread, max_wait_s, baseline=None, progress=None):
    """The guest-impact section of a migration report.

    baseline: dict(blocked_ns, exits, pages_per_s or None) of the same guest
    without the migration loop; progress: measured pages/s during migration
    (real time) or None (virtual: pages/s follow from the time not blocked).
    """
    st = gl.stats()
    hist = gl.histogram()
    p50, p99 = [min(p, st["wait_max_ns"]) for p in  # bucket middles, never past the max
                latency_percentiles(hist, (0.5, 0.99))]
    window = max(t1_ns - t0_ns, 1)
    run_fraction = 1.0 - st["blocked_ns"] / (gl.vcpus * window)
    base_fraction = 1.0
    if baseline is not None and baseline.get("window_ns"):
        base_fraction = 1.0 - baseline["blocked_ns"] / (gl.vcpus * baseline["window_ns"])
    holds = st["holds"]
    longest = max(holds["iteration"]["max_ns"], holds["sync"]["max_ns"])
    sync_max = holds["sync"]["max_ns"]
    out = dict(
        loop_thread=loop_thread, exit_rate=gl.exit_rate, exit_service_ns=gl.service_ns,
        vcpus=gl.vcpus, window_ns=int(window), exits=st["exits"],
        waited_exits=st["waited_exits"], wait_p50_ns=p50, wait_p99_ns=p99,
        wait_max_ns=st["wait_max_ns"], wait_mean_ns=(st["wait_sum_ns"] / st["exits"]
                                                     if st["exits"] else 0.0),
        longest_stall_ns=st["wait_max_ns"] + (gl.service_ns if st["exits"] else 0),
        longest_stall_at_ns=st["wait_max_at_ns"] - t0_ns if st["exits"] else 0,
        longest_stall_waited_for=HOLDERS[st["wait_max_holder"]],
        longest_stall_holder=HOLDER_NAMES[st["wait_max_holder"]],
        blocked_ns=st["blocked_ns"], run_fraction=run_fraction,
        baseline_run_fraction=base_fraction,
        holds=holds, longest_loop_hold_ns=longest, max_wait_cap_ns=int(max_wait_s * NS),
        cap_note=cap_note(loop_thread, longest, sync_max, max_wait_s),
        log_dropped=st["log_dropped"])
    # guest progress: pages/s during migration against the same guest without it
    if progress is not None and baseline is not None and baseline.get("pages_per_s"):
        out["pages_per_s"] = progress
        out["baseline_pages_per_s"] = baseline["pages_per_s"]
        out["progress_measured"] = True
    elif baseline is not None and baseline.get("rate"):
        out["baseline_pages_per_s"] = baseline["rate"] * base_fraction
        out["pages_per_s"] = baseline["rate"] * run_fraction
        out["progress_measured"] = False
    elif baseline is not None:  # the guest wrote nothing alone: nothing to compare with
        out["progress_measured"] = False
    if out.get("baseline_pages_per_s"):
        out["slowdown_pct"] = 100.0 * (1 - out["pages_per_s"] / out["baseline_pages_per_s"])
    return out


def cap_note(loop_thread, longest_hold_ns, sync_max_ns, max_wait_s):
    if loop_thread == "iothread":
        return ("iothread: one iteration holds the lock: its sync plus its send, and the send "
                "stops at the %.0f ms cap; the longest hold was %.1f ms, so a guest exit can "
                "wait that long (the sync part grows with the guest for a global sync of a "
                "flat log, the cap does not bound it)"
                % (max_wait_s * 1e3, longest_hold_ns / 1e6))
    return ("migration-thread: the lock is held only around the bitmap sync (longest %.2f ms); "
            "the %.0f ms send cap does not matter to the guest" % (sync_max_ns / 1e6,
                                                                  max_wait_s * 1e3))


def text(gi):
    """A few lines for the migrate summary."""
    lines = ["guest exits (%s, %g exits/s per vCPU, %.0f us each): %d exits, %d waited; "
             "wait p50 %.3f ms, p99 %.3f ms, max %.3f ms" % (
                 gi["loop_thread"], gi["exit_rate"], gi["exit_service_ns"] / 1e3, gi["exits"],
                 gi["waited_exits"], gi["wait_p50_ns"] / 1e6, gi["wait_p99_ns"] / 1e6,
                 gi["wait_max_ns"] / 1e6),
             "longest stall %.3f ms at +%.3f s, waiting for: %s" % (
                 gi["longest_stall_ns"] / 1e6, gi["longest_stall_at_ns"] / 1e9,
                 gi["longest_stall_waited_for"])]
    if "pages_per_s" in gi:
        lines.append("guest progress %.0f pages/s vs %.0f without migration (%.1f%% slower, %s)"
                     % (gi["pages_per_s"], gi["baseline_pages_per_s"], gi["slowdown_pct"],
                        "measured" if gi["progress_measured"] else
                        "rate x time not blocked in exits"))
    lines.append(gi["cap_note"])
    return "\n".join(lines)


def plot_timeline(ax, events, t0_ns, title=None):
    """Stall timeline: each hold of the lock by the loop as a line (at its start,
    as high as it is long in ms) and each exit that found the lock held as a
    point (arrival, wait)."""
    ev = np.sort(events, order="at_ns")
    holds = ev[ev["type"] == 2]
    waits = ev[ev["type"] == 1]
    colors = {1: "tab:red", 2: "tab:orange", 4: "tab:purple"}
    for h in np.unique(holds["holder"]):
        sel = holds[holds["holder"] == int(h)]
        ax.vlines((sel["at_ns"].astype(np.int64) - t0_ns) / 1e9, 0, sel["dur_ns"] / 1e6,
                  color=colors.get(int(h), "gray"), alpha=0.5, linewidth=1,
                  label="loop holds the lock: %s" % HOLDER_NAMES[int(h)])
    if waits.size:
        ax.plot((waits["at_ns"].astype(np.int64) - t0_ns) / 1e9, waits["dur_ns"] / 1e6, ".",
                markersize=3, color="tab:blue", label="a vCPU exit's wait")
    ax.set_xlabel("time since migration start (s)")
    ax.set_ylabel("ms (hold length, exit wait)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)

"""Both loop placements side by side for the same run settings (issue 14):
``migrate --loop-thread both`` and ``migrate_both_placements()``.

Two runs, not one replay of the other's holds: the placements run different
loops. iothread re-syncs the whole dirty log at every iteration (QEMU 2010's
ram_save_live, see Controller.iothread_resync) and drops the lock while the
rate limit refills; migration-thread syncs once per pass. So the lock holds
one run records are not the holds the other placement would make, and
replaying them would report a loop that did not run.

Virtual clock: the two runs are deterministic with identical settings (same
seed, workload, cost model, exit schedule: a vCPU that waits makes its
later exits later, so the exit counts differ by what the waits cost). Real time:
two separate runs with identical settings, one after the other; their
threads, timing and exit arrivals are not the same, and the output says so.
"""

from .report import dump_json
from .run import migrate

PLACEMENTS = ("iothread", "migration-thread")

_MS = 1e6


class PlacementComparison:
    """The two reports (``reports[placement]``) and their guest-impact rows."""

    def __init__(self, reports, mode):
        self.reports = reports
        self.mode = mode

    @property
    def note(self):
        if self.mode == "virtual":
            return ("both placements: two runs with identical settings on the virtual clock "
                    "(deterministic: same seed, workload and exit schedule); the loops differ "
                    "(iothread re-syncs the dirty log at every iteration), so one run's lock "
                    "holds are not replayed for the other")
        return ("both placements: real time cannot give both from one run (the loop holds "
                "the lock or not while the vCPU threads run); these are two runs with "
                "identical settings, one after the other, so their timing and exits differ")

    def rows(self):
        """One dict per placement: exit waits, longest stall, progress, the loop."""
        out = []
        for lt in PLACEMENTS:
            r = self.reports[lt]
            gi = r.guest_impact
            out.append(dict(
                loop_thread=lt, exits=gi["exits"], waited_exits=gi["waited_exits"],
                wait_p50_ns=gi["wait_p50_ns"], wait_p99_ns=gi["wait_p99_ns"],
                wait_max_ns=gi["wait_max_ns"], longest_stall_ns=gi["longest_stall_ns"],
                longest_stall_at_ns=gi["longest_stall_at_ns"],
                longest_stall_waited_for=gi["longest_stall_waited_for"],
                longest_stall_holder=gi["longest_stall_holder"],
                pages_per_s=gi.get("pages_per_s"),
                baseline_pages_per_s=gi.get("baseline_pages_per_s"),
                slowdown_pct=gi.get("slowdown_pct"),
                progress_measured=gi.get("progress_measured"),
                longest_loop_hold_ns=gi["longest_loop_hold_ns"],
                iothread_resyncs=r.iothread_resyncs, passes=r.npasses,
                total_ns=r.total_ns, downtime_ns=r.downtime_ns, verified=r.verified))
        return out

    def text(self):
        rows = self.rows()
        lines = [self.note, "%-22s %16s %16s" % ("", *PLACEMENTS)]

        def line(label, fmt, key):
            lines.append("%-22s %16s %16s" % ((label,) + tuple(
                "n/a" if r[key] is None else fmt(r[key]) for r in rows)))
        lines.append("%-22s %16s %16s" % (("exits (waited)",) + tuple(
            "%d (%d)" % (r["exits"], r["waited_exits"]) for r in rows)))
        line("exit wait p50 ms", lambda v: "%.3f" % (v / _MS), "wait_p50_ns")
        line("exit wait p99 ms", lambda v: "%.3f" % (v / _MS), "wait_p99_ns")
        line("exit wait max ms", lambda v: "%.3f" % (v / _MS), "wait_max_ns")
        line("longest stall ms", lambda v: "%.3f" % (v / _MS), "longest_stall_ns")
        line("  at (s)", lambda v: "+%.3f" % (v / 1e9), "longest_stall_at_ns")
        line("  waited for", str, "longest_stall_holder")
        line("longest loop hold ms", lambda v: "%.3f" % (v / _MS), "longest_loop_hold_ns")
        line("guest pages/s", lambda v: "%.0f" % v, "pages_per_s")
        line("  without migration", lambda v: "%.0f" % v, "baseline_pages_per_s")
        line("  slowdown %", lambda v: "%.2f" % v, "slowdown_pct")
        line("passes", str, "passes")
        line("iothread re-syncs", str, "iothread_resyncs")
        line("total s", lambda v: "%.3f" % (v / 1e9), "total_ns")
        line("downtime ms", lambda v: "%.1f" % (v / _MS), "downtime_ns")
        line("verified", str, "verified")
        for r in rows:
            lines.append("%s: longest stall waited for %s" % (r["loop_thread"],
                                                              r["longest_stall_waited_for"]))
        return "\n".join(lines)

    def summary(self):
        """Both runs' pass tables, then the side-by-side table."""
        parts = ["== loop thread: %s ==\n%s" % (lt, self.reports[lt].summary())
                 for lt in PLACEMENTS]
        return "\n\n".join(parts + ["== both placements, same settings ==\n" + self.text()])

    @property
    def verified(self):
        vs = [self.reports[lt].verified for lt in PLACEMENTS]
        return False if False in vs else (None if None in vs else True)

    def as_dict(self):
        return dict(loop_thread="both", mode=self.mode, note=self.note,
                    side_by_side=self.rows(),
                    runs={lt: self.reports[lt].as_dict() for lt in PLACEMENTS})

    def to_json(self, path=None):
        return dump_json(self.as_dict(), path)


def migrate_both_placements(**options):
    """Run the migration once per loop placement with otherwise identical
    options (those of ``migrate``; ``loop_thread`` must not be given, and
    exit_rate must be > 0: the comparison is about the guest's exits).
    Returns a PlacementComparison."""
    if "loop_thread" in options:
        raise ValueError("migrate_both_placements runs both loop_thread values; do not pass "
                         "loop_thread (got %r)" % (options["loop_thread"],))
    rate = options.get("exit_rate", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError("loop_thread both compares the guest's exits on the lock: exit_rate "
                         "must be > 0, got %r" % (rate,))
    sink = options.get("sink", "local")
    if not isinstance(sink, str) or sink not in ("local", "null"):
        raise ValueError("loop_thread both runs two migrations: sink must be 'local' or "
                         "'null', got %r" % (sink,))
    if options.get("record"):
        raise ValueError("loop_thread both runs two migrations: record one placement at a "
                         "time (got record=%r)" % (options["record"],))
    reports = {lt: migrate(loop_thread=lt, **options) for lt in PLACEMENTS}
    return PlacementComparison(reports, reports[PLACEMENTS[0]].config.get("mode", "virtual"))

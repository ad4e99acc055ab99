"""What a migration did: per-pass metrics and totals (JSON, text summary, plot)."""
import dataclasses
import json
from typing import List, Optional

import numpy as np

from ..units import MiB


@dataclasses.dataclass(repr=False)
class PassMetrics:
    """One pass: what the sync found and what the loop sent (ns, pages, bytes)."""
    index: int
    kind: str  # "bulk", "iterate", "stop-and-copy"
    dirty_found: int = 0
    pages_sent: int = 0
    zero_pages: int = 0
    bytes: int = 0
    accounted_bytes: int = 0
    redundant: int = 0
    collect_ns: int = 0
    scan_ns: int = 0
    send_ns: int = 0
    duration_ns: int = 0
    latency_p50_ns: int = 0
    latency_p99_ns: int = 0
    latency_mean_ns: float = 0
    latency_max_ns: int = 0
    time_cap_exits: int = 0
    rate_waits: int = 0
    throttle_pct: int = 0
    expected_downtime_ns: int = 0
    bandwidth: float = 0
    guest_writes: int = 0   # page writes the guest got done in this pass (virtual clock)
    guest_tracking_ns: float = 0  # vCPU time the guest spent on dirty tracking in it
    pages_reprotected: int = 0    # pages the pass's sync write-protected again

    def as_dict(self):
        return dataclasses.asdict(self)

    def __repr__(self):
        return "<pass %d %s dirty=%d sent=%d>" % (self.index, self.kind, self.dirty_found,
                                                   self.pages_sent)


class MigrationReport:
    """Per-pass metrics and totals of one migration."""

    def __init__(self, config):
        self.config = config
        self.passes: List[PassMetrics] = []
        self.total_ns = 0
        self.downtime_ns = 0
        self.verified: Optional[bool] = None  # None for the null sink
        self.mismatched_pages: List[int] = []  # gfns (first 16) whose hashes differ
        self.converged = False
        self.auto_converge_triggers = 0
        self.final_throttle_pct = 0
        self.workload_writes = 0
        self.ring_full_events = 0
        self.iothread_resyncs = 0   # iothread: dirty-log syncs at iterations inside a pass
        self.window_log = None      # accounted bytes per closed window (if asked)
        self.window_budget = None
        self.destination = None
        self.vm_stats = None
        self.guest_impact = None    # guest exits on the global lock (migration/guest_impact.py)
        self.guest_events = None    # their waits and the loop's holds (stall timeline)
        self.t_begin_ns = 0         # the loop's clock when migration began / the VM stopped
        self.t_stop_ns = 0
        self.policy = ""            # the convergence policy that ran (migration/policy.py)
        self.status = ""            # "completed", or "timeout" (the policy never converged)
        self.dirty_sync_count = 0   # dirty-log syncs, setup's and the final one included
        self.setup_ns = 0
        self.expected_downtime_ns = 0
        self.dirty_pages_rate = 0.0  # pages newly dirtied per second, last period (qemu-7.2)
        self.guest = None           # the guest's writes and vCPU time (virtual clock)

    @property
    def npasses(self):
        return len(self.passes)

    def total(self, field):
        return sum(getattr(p, field) for p in self.passes)

    @property
    def bytes(self):
        return self.total("bytes")

    def as_dict(self):
        return dict(
            config=self.config, passes=[p.as_dict() for p in self.passes],
            totals=dict(passes=self.npasses, total_ns=self.total_ns,
                        downtime_ns=self.downtime_ns, bytes=self.bytes,
                        accounted_bytes=self.total("accounted_bytes"),
                        pages_sent=self.total("pages_sent"),
                        zero_pages=self.total("zero_pages"),
                        redundant=self.total("redundant"),
                        time_cap_exits=self.total("time_cap_exits"),
                        verified=self.verified, converged=self.converged,
                        auto_converge_triggers=self.auto_converge_triggers,
                        final_throttle_pct=self.final_throttle_pct,
                        workload_writes=self.workload_writes,
                        ring_full_events=self.ring_full_events,
                        iothread_resyncs=self.iothread_resyncs,
                        mismatched_pages=self.mismatched_pages, policy=self.policy,
                        status=self.status, dirty_sync_count=self.dirty_sync_count,
                        setup_ns=self.setup_ns,
                        expected_downtime_ns=self.expected_downtime_ns,
                        dirty_pages_rate=self.dirty_pages_rate),
            guest=self.guest,
            destination=self.destination, vm_stats=self.vm_stats,
            guest_impact=self.guest_impact)

    def to_json(self, path=None):
        return dump_json(self.as_dict(), path)

    def summary(self):
        lines = ["%-5s %-13s %10s %10s %9s %11s %9s %9s %9s %9s %9s %10s %10s" % (
            "pass", "kind", "dirty", "sent", "zero", "MiB", "redund", "reprot", "coll ms",
            "send ms", "guest ms", "lat p50ms", "lat p99ms")]
        for p in self.passes:
            lines.append("%-5d %-13s %10d %10d %9d %11.1f %9d %9d %9.2f %9.1f %9.1f %10.2f "
                         "%10.2f" % (
                             p.index, p.kind, p.dirty_found, p.pages_sent, p.zero_pages,
                             p.bytes / MiB, p.redundant, p.pages_reprotected,
                             p.collect_ns / 1e6, p.send_ns / 1e6, p.guest_tracking_ns / 1e6,
                             p.latency_p50_ns / 1e6, p.latency_p99_ns / 1e6))
        if self.guest:
            lines.append("(reprot: pages write-protected again by the pass's sync; guest ms: "
                         "vCPU time the guest spent on dirty tracking during the pass)")
        lines.append("passes %d, total %.3f s, downtime %.1f ms, %.1f MiB sent, redundant %d, "
                     "verified: %s%s" % (
                         self.npasses, self.total_ns / 1e9, self.downtime_ns / 1e6,
                         self.bytes / MiB, self.total("redundant"),
                         {True: "yes", False: "NO", None: "n/a (null sink)"}[self.verified]
                         + (" (page versions)" if self.config.get("pages") == "versions"
                            and self.verified is not None else ""),
                         ", auto-converge throttle %d%%" % self.final_throttle_pct
                         if self.auto_converge_triggers else ""))
        if self.guest and self.guest.get("requested_writes"):
            g = self.guest
            ev = ", ".join("%s %.1f ms" % (k.replace("_", " "), v / 1e6)
                           for k, v in sorted(g["events_ns"].items()))
            if g["ring_full_wait_ns"]:
                ev += ", ring-full waits %.1f ms" % (g["ring_full_wait_ns"] / 1e6)
            lines.append("guest: %d of %.0f page writes asked for (%.1f%% slower); dirty "
                         "tracking took %.1f%% of its vCPU time (%s)" % (
                             g["writes"], g["requested_writes"], 100 * (1 - g["progress"]),
                             100 * g["tracking_share"], ev or "nothing"))
        if self.iothread_resyncs:
            lines.append("iothread: %d dirty-log syncs at iterations inside passes (QEMU 2010 "
                         "synced at every iteration)" % self.iothread_resyncs)
        if self.guest_impact:
            from .guest_impact import text
            lines.append(text(self.guest_impact))
        return "\n".join(lines)

    def plot(self, path=None):
        """PNG of per-pass dirty pages, sent pages and latency (matplotlib),
        written to path; returns the PNG's bytes."""
        import io
        fig = self.figure()
        import matplotlib.pyplot as plt
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        if path:
            with open(path, "wb") as f:
                f.write(buf.getvalue())
        return buf.getvalue()

    def figure(self):
        """The plot's matplotlib figure (passes on an integer axis)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise RuntimeError("--plot needs matplotlib: pip install 'pykvmdirty[plot]'") \
                from None
        idx = [p.index for p in self.passes]
        if self.guest_events is not None:
            fig, (a, b, g) = plt.subplots(3, 1, figsize=(8, 9))
            from .guest_impact import plot_timeline
            plot_timeline(g, self.guest_events, self.t_begin_ns, "stall timeline (%s)"
                          % self.config.get("loop_thread"))
        else:
            fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        a.plot(idx, [p.dirty_found for p in self.passes], "o-", label="dirty pages found")
        a.plot(idx, [p.pages_sent for p in self.passes], "s-", label="pages sent")
        a.plot(idx, [p.redundant for p in self.passes], "x-", label="redundant sends")
        a.set_yscale("symlog")
        a.set_ylabel("pages")
        a.legend()
        b.plot(idx, [p.latency_p50_ns / 1e6 for p in self.passes], "o-", label="p50")
        b.plot(idx, [p.latency_p99_ns / 1e6 for p in self.passes], "s-", label="p99")
        b.set_ylabel("sample-to-send latency (ms)")
        b.set_xlabel("pass")
        b.legend()
        for ax in (a, b):   # passes are counted: no 1.5, 2.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        c = self.config
        fig.suptitle("%s / %s / %s, %s" % (c["backend"], c["strategy"], c["workload"]["kind"],
                                           c["mode"]))
        fig.tight_layout()
        return fig


def dump_json(obj, path=None):
    """obj as indented JSON text (numpy scalars and arrays as numbers and
    lists), also written to path when given."""
    text = json.dumps(obj, indent=1, default=json_default)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return text


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(repr(o))

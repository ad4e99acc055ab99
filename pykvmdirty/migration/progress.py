"""A text progress bar for the migration loop (``--progress``)."""
import sys

from ..units import MiB


class ProgressPrinter:
    """progress(pass_index, done, total): a bar on one line; end_pass(pm)
    replaces it with the pass's summary line."""

    def __init__(self, stream=None, width=30):
        self.stream = sys.stderr if stream is None else stream   # the current one
        self.width = width

    def __call__(self, pass_index, done, total):
        frac = done / total if total else 1.0
        bar = "#" * int(frac * self.width)
        self.stream.write("\rpass %3d [%-*s] %5.1f%% %d/%d pages" % (
            pass_index, self.width, bar, frac * 100, done, total))
        self.stream.flush()

    def end_pass(self, pm):
        self.stream.write("\r\033[K")
        self.stream.write("pass %3d %-13s dirty %9d sent %9d zero %9d  %8.1f MiB  lat p99 %8.2f "
                          "ms%s\n" % (pm.index, pm.kind, pm.dirty_found, pm.pages_sent,
                                       pm.zero_pages, pm.bytes / MiB, pm.latency_p99_ns / 1e6,
                                       "  throttle %d%%" % pm.throttle_pct
                                       if pm.throttle_pct else ""))
        self.stream.flush()

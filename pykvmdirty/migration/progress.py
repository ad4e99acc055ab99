"""A text progress bar for the migration loop (``--progress``)."""
import sys

from .config import MiB


def progress_printer(stream=sys.stderr, width=30):
    def show(pass_index, done, total):
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        stream.write("\rpass %3d [%-*s] %5.1f%% %d/%d pages" % (
            pass_index, width, bar, frac * 100, done, total))
        stream.flush()

    def end_pass(pm):
        stream.write("\r\033[K")
        stream.write("pass %3d %-13s dirty %9d sent %9d zero %9d  %8.1f MiB  lat p99 %8.2f ms"
                     "%s\n" % (pm.index, pm.kind, pm.dirty_found, pm.pages_sent, pm.zero_pages,
                               pm.bytes / MiB, pm.latency_p99_ns / 1e6,
                               "  throttle %d%%" % pm.throttle_pct if pm.throttle_pct else ""))
        stream.flush()
    show.end_pass = end_pass
    return show

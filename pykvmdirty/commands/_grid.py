"""What compare and sweep share: the grid's options (guest sizes, dirty
counts, backends, layout), the cost-model file, and the progress bar."""
import argparse
import math
import sys

from .. import units
from ..analysis import compare as cmp
from ..costmodel import CostModel
from ._args import add_max_memory, nonneg_int, positive_int


def _list(conv, what):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty %s list %r" % (what, text))
        out = []
        for t in items:
            try:
                v = conv(t)
            except ValueError as e:
                why = str(e)
                detail = (": " + why) if why and why != t and "literal" not in why else ""
                raise argparse.ArgumentTypeError("bad %s %r in %r%s" % (what, t, text, detail)) \
                    from None
            out.append(v)
        return out
    return parse


def gib_size(option):
    """An argparse type: a guest size in GiB — a bare number is GiB (1,64,512),
    anything else a size in pykvmdirty.units' grammar (512GiB, 4096MB)."""
    def parse(text):
        t = text.strip()
        try:
            v = float(t)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):   # a size with a unit, or what units refuses
            try:
                v = units.parse_size(t, option) / units.GiB
            except (ValueError, TypeError) as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if v.is_integer():
            v = int(v)
        try:
            cmp.gib_to_pages(v)  # ValueError names the bad size
        except ValueError as e:
            raise argparse.ArgumentTypeError("%s: %s" % (option, e)) from None
        return v
    parse.__name__ = "size"
    return parse


def gib_sizes(option):
    """A comma-separated list of gib_size values."""
    one = gib_size(option)

    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(units.size_error(option, text))
        return [one(t) for t in items]
    parse.__name__ = "sizes"
    return parse


def _nonneg_int(t):
    v = int(t)
    if v < 0:
        raise ValueError(t)
    return v


def _backend(t):
    if t == "all":
        return t
    if t not in cmp.ALL_BACKENDS:
        raise ValueError(t)
    return t


def add_scenario_options(p, layouts_plural=False):
    """Options shared by compare and sweep."""
    p.add_argument("--sizes", type=gib_sizes("--sizes"),
                   default=list(cmp.DEFAULT_SIZES), metavar="SIZE,...",
                   help="guest sizes: a bare number is GiB (default 1,64,512; fractions "
                   "like 0.25 work), else a size like 512GiB or 4096MB (%s)"
                   % units.SIZE_HELP)
    p.add_argument("--dirty", type=_list(_nonneg_int, "dirty page count"),
                   default=list(cmp.DEFAULT_DIRTY), metavar="N,...",
                   help="scattered dirty pages per cell (default 0,1000,100000)")
    p.add_argument("--backends", type=_list(_backend, "backend"), default=["all"],
                   metavar="NAME,...",
                   help="backends and baselines: %s, or all (default: all; kvm and "
                   "uffd are skipped with the reason where they cannot run)"
                   % ",".join(cmp.ALL_BACKENDS))
    p.add_argument("--repeats", type=positive_int, default=cmp.DEFAULT_REPEATS,
                   help="timed collects per cell; the median is reported (default %d)"
                   % cmp.DEFAULT_REPEATS)
    if layouts_plural:
        p.add_argument("--layouts", type=_list(str, "layout"), default=["one"],
                       metavar="one,many", help="slot layouts to sweep (default one)")
    else:
        p.add_argument("--layout", choices=cmp.LAYOUTS, default="one",
                       help="one big slot, or many slots of --slot-gib GiB (default one)")
    p.add_argument("--slot-gib", type=gib_size("--slot-gib"), default=1, metavar="SIZE",
                   help="slot size for layout 'many': GiB, or a size like 512MiB (default 1)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the dirty pages (default 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="no clocks: report counters and modelled kernel time only, "
                   "identical on every machine and executor")
    p.add_argument("--cost-model", metavar="FILE",
                   help="JSON calibration file overriding the cost model's ns per event")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--plot", metavar="FILE",
                   help="write a PNG: cost vs guest size and vs dirty pages (needs "
                   "matplotlib: pip install 'pykvmdirty[plot]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_memory(p, "the grid")


def expand_backends(names):
    if "all" in names:
        if len(names) != 1:
            raise ValueError("--backends all cannot be combined with other names: %s"
                             % ",".join(names))
        return list(cmp.ALL_BACKENDS)
    return names


def load_cost_model(path):
    return CostModel.load(path) if path else CostModel()


class Progress:
    """tqdm on stderr when it is installed (and stderr a terminal); else a
    simple one-line bar, also only on a terminal."""

    def __init__(self, total, desc, enabled=True):
        self.total, self.n, self.desc = total, 0, desc
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        if self.enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="cell", file=sys.stderr,
                                leave=False)
            except ImportError:
                self.bar = None

    def __call__(self, cell):
        self.n += 1
        if not self.enabled:
            return
        label = "%g GiB %d dirty %s" % (cell["size_gib"], cell["dirty"], cell["backend"])
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
        else:
            width = 30
            done = width * self.n // max(self.total, 1)
            sys.stderr.write("\r%s [%s%s] %d/%d %-30s" % (self.desc, "#" * done,
                                                          "." * (width - done), self.n,
                                                          self.total, label))
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()

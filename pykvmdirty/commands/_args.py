"""argparse value types shared by the subcommands: each names the bad value."""
import argparse
import math
import os

from .. import limits, units


def _int_at_least(text, lo):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
    if v < lo:
        raise argparse.ArgumentTypeError("must be >= %d, got %d" % (lo, v))
    return v


def positive_int(text):
    return _int_at_least(text, 1)


def nonneg_int(text):
    return _int_at_least(text, 0)


def finite_float(text):
    """A finite float (nan and inf are refused with the option's name by argparse)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError("must be a finite number, got %r" % text)
    return v


def size_arg(option, positive=False):
    """An argparse type: a size (pykvmdirty.units' grammar) -> bytes. Its
    error is parse_size's, naming `option` (cli prints it as the one line a
    bad value gets everywhere)."""
    def parse(text):
        try:
            v = units.parse_size(text, option)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if positive and v <= 0:
            raise argparse.ArgumentTypeError("%s must be positive, got %r" % (option, text))
        return v
    parse.__name__ = "size"
    return parse


def rate_arg(option, unlimited=False):
    """An argparse type: a rate (pykvmdirty.units' grammar) -> bytes/s."""
    def parse(text):
        try:
            return units.parse_rate(text, option, unlimited=unlimited)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "rate"
    return parse


def add_max_memory(p, what="the run"):
    p.add_argument("--max-memory", type=size_arg("--max-memory", positive=True), default=None,
                   metavar="SIZE",
                   help="refuse %s, before it starts, if its estimated memory exceeds this "
                   "(default: %d%%%% of the memory available)"
                   % (what, limits.DEFAULT_FRACTION * 100))


def check_output_paths(args, options):
    """Check that every output file given (options: option strings such as
    '--json') can be written, before a run that would only fail at its end.
    Creates nothing that did not exist: an absent file is created, then
    removed; an existing one is opened for appending, not truncated."""
    for option in options:
        path = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if path is None:
            continue
        if not path.strip():
            raise ValueError("%s needs a file name, got an empty one" % option)
        if os.path.isdir(path):
            raise ValueError("%s %s is a directory, not a file" % (option, path))
        existed = os.path.exists(path)
        try:
            with open(path, "a" if existed else "x"):
                pass
        except OSError as e:
            raise ValueError("%s %s cannot be written: %s" % (option, path,
                                                              e.strerror or e)) from None
        if not existed:
            os.unlink(path)


def write_output(option, path, data):
    """Write bytes or text to an output file given on the command line, all of
    it, or raise ValueError naming the option and the file (a full disk
    included: the data is flushed and synced before it counts as written)."""
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    try:
        with open(path, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ValueError("%s %s could not be written: %s" % (option, path, e.strerror or e)) \
            from None


def check_plot_available(path):
    if path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'pykvmdirty[plot]'") from None

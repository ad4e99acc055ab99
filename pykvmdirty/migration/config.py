"""Migration settings: the names of strategies, modes and accountings, sizes,
and the checks of numeric arguments."""
import math
import numbers

STRATEGIES = ("global", "per-slot", "chunked-clear", "ring")
MODES = ("virtual", "realtime")
ZERO_ACCOUNTING = ("header", "full")
NS = 1_000_000_000
MiB = 1 << 20
GiB = 1 << 30
POPULATE_VALUE = 1 << 62  # what populate stores: no workload value collides with it

#: virtual-clock cost model (ns), from the measurements in FACTS.md
COST_MODEL = dict(
    call_ns=1000,          # one ioctl-like call
    word_ns=6.6,           # one 64-bit log word read (27 us per GiB of slot)
    bytemap_byte_ns=0.1,   # 128 MiB byte map in ~12 ms
    reprotect_ns=200,      # one page write-protected again
    flush_ns=2000,         # one remote TLB flush
    harvest_ns=20,         # one ring entry harvested
    reset_ns=100,          # one ring entry reset
    gfn_ns=1,              # one gfn emitted by a scan
    page_ns=341,           # read + zero-check one 4 KiB page (12 GB/s)
)


# argument checks

def check_number(value, name, lo=None, hi=None, integer=False, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    if integer and not float(value).is_integer():
        raise ValueError("%s must be an integer, got %r" % (name, value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("%s must be finite, got %r" % (name, value))
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError("%s must be %s %s, got %r" % (name, ">" if lo_open else ">=", lo, value))
    if hi is not None and value > hi:
        raise ValueError("%s must be <= %s, got %r" % (name, hi, value))
    return int(value) if integer else value


def parse_size(text, name="size"):
    """'4GiB', '512MiB', '4096', '1.5G' -> bytes."""
    if isinstance(text, numbers.Integral) and not isinstance(text, bool):
        return int(text)
    if not isinstance(text, str):
        raise TypeError("%s must be a size like '4GiB', got %r" % (name, text))
    t = text.strip().lower().replace(" ", "")
    units = (("tib", 1 << 40), ("gib", GiB), ("mib", MiB), ("kib", 1 << 10), ("t", 1 << 40),
             ("g", GiB), ("m", MiB), ("k", 1 << 10), ("b", 1), ("", 1))
    for suffix, mult in units:
        if t.endswith(suffix):
            num = t[:len(t) - len(suffix)] if suffix else t
            try:
                return int(float(num) * mult)
            except ValueError:
                break
    raise ValueError("%s must be a size like '4GiB', got %r" % (name, text))

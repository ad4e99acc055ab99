"""One grammar for sizes and rates, on every command and in Python.

A size is a whole number of bytes, written as a number (decimals and
exponents allowed: ``1.5GiB``, ``1e3MB``) and an optional unit; spaces
between them are allowed::

    (none), B               bytes
    KiB MiB GiB TiB         binary: 2^10 .. 2^40 bytes
    K   M   G   T           the same binary units (QEMU's and dd's ``-m 4G``)
    kB  MB  GB  TB          decimal: 10^3 .. 10^12 bytes

Units are case-insensitive (``4gib``, ``512mib``) except for one letter: a
lowercase ``b`` after a prefix (``Gb``, ``mb``) is refused as ambiguous
(bits or bytes?) — write ``GB`` for bytes, ``Gbit`` for bits.  A size has
no bits (``4Gbit`` is refused as a size).

A rate is per second: a size (bytes per second, optionally ending in
``/s``: ``128MiB``, ``1250MB/s``), or bits per second with a decimal prefix,
as link speeds are quoted: ``bit`` ``kbit`` ``Mbit`` ``Gbit`` ``Tbit``
(optionally ``/s``) or ``bps`` ``kbps`` ``Mbps`` ``Gbps`` ``Tbps``; bits are
divided by 8 (``10Gbit`` = ``1250MB`` = 1.25e9 bytes/s).  Where a rate of 0
means "no limit", ``0``, ``none`` and ``unlimited`` are accepted.

Every command's size and rate options and ``migrate()``/``MigrationConfig``
go through parse_size and parse_rate, so a bad value gets the same one-line
error everywhere, naming the option (or parameter) it was given for.
"""
import math
import numbers
import re
from fractions import Fraction
from typing import Union

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
#: nanoseconds per second (every duration in the package is kept in ns)
NS = 1_000_000_000

#: the size units, lowercase -> bytes (a lowercase 'b' after a prefix is refused)
SIZE_UNITS = {
    "": 1, "b": 1,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
#: the bit units (rates only), lowercase -> bits
BIT_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
             "bps": 1, "kbps": 10**3, "mbps": 10**6, "gbps": 10**9, "tbps": 10**12}
UNLIMITED = ("none", "unlimited")

SIZE_HELP = ("B, KiB..TiB (K..T mean the same), kB..TB = 10^3..10^12 bytes")
RATE_HELP = ("bytes/s as a size (B, KiB..TiB, K..T, kB..TB, optional /s) or bits/s "
             "(bit, kbit..Tbit, bps, kbps..Tbps)")

_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.)\s*([A-Za-z/]*)\s*$")


def size_error(name, value):
    return "%s must be a size like '4GiB' (%s), got %r" % (name, SIZE_HELP, value)


def rate_error(name, value):
    return ("%s must be a rate like '128MiB' or '10Gbit' (%s), got %r"
            % (name, RATE_HELP, value))


#: sizes and rates must be below this (2^63 bytes: what an int64 holds)
LIMIT = 1 << 63


def _split(text):
    """'1.5 GiB' -> (Fraction('1.5'), 'GiB'), or None (also for an absurd
    exponent: 1e400 is no size, and 1e99999999 would take minutes to expand)."""
    m = _NUMBER.match(text)
    if not m:
        return None
    exp = re.search(r"[eE]([+-]?[0-9]+)$", m.group(1))
    if exp and abs(int(exp.group(1))) > 30:
        return None
    return Fraction(m.group(1)), m.group(2)


def _bounded(nbytes, name, value, per=""):
    if nbytes >= LIMIT:
        raise ValueError("%s must be below 2^63 bytes%s, got %r" % (name, per, value))
    return int(nbytes)


def _ambiguous(unit):
    """'Gb', 'mb', 'b' after a prefix: bits or bytes?"""
    return (len(unit) >= 2 and unit.endswith("b") and not unit.lower().endswith("ib")
            and unit.lower() in SIZE_UNITS)


def _negative(value):
    if isinstance(value, str):
        return value.strip().startswith("-")
    return isinstance(value, numbers.Real) and value < 0


def parse_size(value: Union[int, str], name: str = "size") -> int:
    """A size (see the module's grammar) -> bytes (int >= 0).

    An int is taken as bytes. Anything else than an int or a string is a
    TypeError; a string outside the grammar, a negative size or a fraction
    of a byte a ValueError; both name `name`."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("%s must not be negative, got %r" % (name, value))
        return _bounded(value, name, value)
    if not isinstance(value, str):
        raise TypeError(size_error(name, value))
    if _negative(value):
        raise ValueError("%s must not be negative, got %r" % (name, value))
    parts = _split(value)
    if parts is None:
        raise ValueError(size_error(name, value))
    num, unit = parts
    if _ambiguous(unit) or unit.lower() not in SIZE_UNITS:
        raise ValueError(size_error(name, value))
    nbytes = num * SIZE_UNITS[unit.lower()]
    if nbytes.denominator != 1:
        raise ValueError("%s must be a whole number of bytes, got %r" % (name, value))
    return _bounded(nbytes, name, value)


def parse_rate(value: Union[int, float, str], name: str = "rate",
               unlimited: bool = False) -> Union[int, float]:
    """A rate (see the module's grammar) -> bytes per second (>= 0).

    A number is taken as bytes/s. A string in bits is divided by 8. With
    unlimited=True, 'none' and 'unlimited' are 0 (no limit). Strings give an
    int (rounded down to whole bytes/s)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(rate_error(name, value))
        if value < 0:
            raise ValueError("%s must not be negative, got %r" % (name, value))
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    if not isinstance(value, str):
        raise TypeError(rate_error(name, value))
    if unlimited and value.strip().lower() in UNLIMITED:
        return 0
    if _negative(value):
        raise ValueError("%s must not be negative, got %r" % (name, value))
    parts = _split(value)
    if parts is None:
        raise ValueError(rate_error(name, value))
    num, unit = parts
    if unit.lower().endswith("/s"):
        unit = unit[:-2]
        if unit.lower().endswith("ps"):   # 'Gbps/s'
            raise ValueError(rate_error(name, value))
    if unit.lower() in BIT_UNITS:
        if "B" in unit:     # 'GBit', 'GBps': bytes or bits?
            raise ValueError(rate_error(name, value))
        return _bounded(num * BIT_UNITS[unit.lower()] / 8, name, value, "/s")
    if _ambiguous(unit) or unit.lower() not in SIZE_UNITS:
        raise ValueError(rate_error(name, value))
    return _bounded(num * SIZE_UNITS[unit.lower()], name, value, "/s")


def format_bytes(n, digits=None):
    """1536 -> '1.5 KiB' (one decimal; below a KiB: '512 bytes').

    With digits, that many significant digits and 'B' below a KiB, as a
    table column shows sizes: format_bytes(2138112, digits=4) -> '2.039 MiB',
    format_bytes(16 << 20, digits=4) -> '16 MiB', 512 -> '512 B'."""
    n = float(n)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            if digits is None:
                return "%.1f %s" % (n / size, unit)
            return "%.*g %s" % (digits, n / size, unit)
    return "%d %s" % (n, "bytes" if digits is None else "B")


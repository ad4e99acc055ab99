"""One grammar for sizes and rates (issue 24 item 3): one table of accepted and
refused spellings, exercised on every command's size and rate options
(through pykvmdirty.cli.main) and in Python (kd.migrate / MigrationConfig,
limits.resolve_limit). A refused value ends as one line, status 2, with the
same text everywhere but for the name of the option or parameter."""
import pytest

import pykvmdirty as kd
from pykvmdirty import cli, limits, units
from pykvmdirty.migration.config import MigrationConfig

GiB, MiB = 1 << 30, 1 << 20

#: spelling -> bytes; every one a valid size for every size option below
SIZES = {
    "1GiB": GiB, "1gib": GiB, "1GIB": GiB, "1G": GiB, "1g": GiB, "1 GiB": GiB,
    "1024MiB": GiB, "1024M": GiB, "1048576KiB": GiB, "1048576k": GiB,
    "1073741824": GiB, "1073741824B": GiB, "0.5GiB": GiB // 2, "2GiB": 2 * GiB,
    "1.5G": 3 * GiB // 2, "4096MB": 4096 * 10**6, "1GB": 10**9, "1e3MB": 10**9,
    "1048576kB": 1048576000,
}
#: spelling -> bytes/s; every size is also a rate (bytes per second)
RATES = dict(SIZES, **{
    "1250MB": 1250 * 10**6, "1250MB/s": 1250 * 10**6, "1.25GB": 1250 * 10**6,
    "10Gbit": 1250 * 10**6, "10Gbit/s": 1250 * 10**6, "10gbit": 1250 * 10**6,
    "10Gbps": 1250 * 10**6, "10000Mbit": 1250 * 10**6, "1Tbit": 125 * 10**9,
    "128MiB/s": 128 * MiB, "8000000kbps": 10**9,
})
#: refused as a size and as a rate
REFUSED = ["", "lots", "4Gb", "4gb", "4mb", "4 G iB", "-1GiB", "-5", "nan", "inf",
           "1e400GiB", "4GiBs", "0x10", "4GBps", "4GBit", "GiB", "1e99999999MiB",
           "10Gbps/s", "4 XB"]
#: refused as a size only: a size has no bits, and no fraction of a byte
REFUSED_SIZES = REFUSED + ["10Gbit", "10Gbps", "1.5B", "0.3"]


def expected_error(parse, value, name):
    with pytest.raises((ValueError, TypeError)) as e:
        parse(value, name)
    return str(e.value)


def test_the_grammar_itself():
    for text, n in SIZES.items():
        assert units.parse_size(text) == n, text
    for text, n in RATES.items():
        assert units.parse_rate(text) == n, text
    for text in REFUSED_SIZES:
        with pytest.raises(ValueError, match="^x must "):
            units.parse_size(text, "x")
    for text in REFUSED:
        with pytest.raises(ValueError, match="^x must "):
            units.parse_rate(text, "x")
    assert units.parse_rate("unlimited", unlimited=True) == 0
    with pytest.raises(ValueError):
        units.parse_rate("unlimited")
    assert units.parse_size(4096) == 4096 and units.parse_rate(1.5e9) == 1.5e9
    for bad in (1.5, True, None, [1]):
        with pytest.raises(TypeError, match="size like '4GiB'"):
            units.parse_size(bad)
    assert limits.format_bytes is units.format_bytes


# -- every command --------------------------------------------------------------------------

class Captured(Exception):
    """Raised in place of a run: carries what the command parsed."""


def capture(monkeypatch):
    """Stop every command just before its run starts, raising Captured with the
    parsed values (bytes)."""
    from pykvmdirty.analysis import compare as cmp
    from pykvmdirty.commands import migrate as migrate_cmd, qemu as qemu_cmd
    from pykvmdirty.migration import receiver as rxm

    def fake_migrate(*, sink, progress, max_memory, **kw):
        cfg = MigrationConfig(**kw)
        raise Captured({"--guest-size": cfg.guest_bytes, "--bandwidth": cfg.bandwidth,
                        "--link-bandwidth": cfg.link_bandwidth,
                        "--max-memory": limits.resolve_limit(max_memory)[0]
                        if max_memory is not None else None})
    monkeypatch.setattr(migrate_cmd, "migrate", fake_migrate)

    def fake_prepare(args):
        (_, cfg), = qemu_cmd._cells(args)
        raise Captured({"--guest-size": cfg.guest_size, "--bandwidth": cfg.bandwidth,
                        "--start": cfg.start, "--end": cfg.end})
    monkeypatch.setattr(qemu_cmd, "_prepare", fake_prepare)

    def fake_refusals(scenario, max_memory=None):
        raise Captured({"--sizes": scenario.sizes_gib[0] * GiB,
                        "--slot-gib": scenario.slot_gib * GiB, "--max-memory": max_memory})
    monkeypatch.setattr(cmp, "memory_refusals", fake_refusals)

    def fake_check_memory(scenario, max_memory=None, copies=1):
        raise Captured({"--sizes": scenario.sizes_gib[0] * GiB, "--max-memory": max_memory})
    monkeypatch.setattr(cmp, "check_memory", fake_check_memory)

    def fake_receiver(listen, prefault=0, max_memory=None, **kw):
        raise Captured({"--prefault": prefault, "--max-memory": max_memory})
    monkeypatch.setattr(rxm, "Receiver", fake_receiver)

    def fake_limit(max_memory, name="max_memory"):
        raise Captured({"--max-memory": max_memory})
    monkeypatch.setattr(limits, "resolve_limit", fake_limit)


#: (command and the other options it needs, option, size or rate)
OPTIONS = [
    (["migrate", "--quiet"], "--guest-size", "size"),
    (["migrate", "--quiet"], "--max-memory", "size"),
    (["migrate", "--quiet"], "--bandwidth", "rate"),
    (["migrate", "--quiet"], "--link-bandwidth", "rate"),
    (["qemu", "--workload", "ab", "--end", "64MiB"], "--guest-size", "size"),
    (["qemu", "--workload", "ab", "--guest-size", "4GiB", "--end", "3GiB"], "--start", "size"),
    (["qemu", "--workload", "ab", "--guest-size", "4GiB", "--start", "1MiB"], "--end", "size"),
    (["qemu", "--workload", "ab"], "--bandwidth", "rate"),
    (["compare"], "--sizes", "size"),
    (["compare", "--layout", "many", "--sizes", "8"], "--slot-gib", "size"),
    (["compare"], "--max-memory", "size"),
    (["sweep"], "--sizes", "size"),
    (["sweep"], "--max-memory", "size"),
    (["receive"], "--prefault", "size"),
    (["receive"], "--max-memory", "size"),
    (["demo", "--gib", "1"], "--max-memory", "size"),
]
OPTION_IDS = ["%s %s" % (argv[0], option) for argv, option, _ in OPTIONS]


def accepted(command, option, kind):
    """The table's spellings of values this option takes (guest sizes are
    whole pages, QEMU's are whole MiB)."""
    table = SIZES if kind == "size" else RATES
    if option in ("--sizes", "--slot-gib"):   # a bare number is GiB there
        table = {t: n for t, n in table.items() if not t.strip().isdigit()}
    if option in ("--sizes", "--slot-gib", "--guest-size"):
        table = {t: n for t, n in table.items() if n % 4096 == 0}
    if command == "qemu" and kind == "size":
        table = {t: n for t, n in table.items() if n % MiB == 0}
    return table


@pytest.mark.parametrize("argv,option,kind", OPTIONS, ids=OPTION_IDS)
def test_every_command_accepts_the_table(argv, option, kind, monkeypatch):
    capture(monkeypatch)
    for text, n in accepted(argv[0], option, kind).items():
        if option == "--start" and n >= 3 * GiB:
            continue
        with pytest.raises(Captured) as got:
            cli.main(argv + [option, text])
        assert got.value.args[0][option] == n, (argv, option, text)


@pytest.mark.parametrize("argv,option,kind", OPTIONS, ids=OPTION_IDS)
def test_every_command_refuses_the_table_in_one_line(argv, option, kind, monkeypatch, capsys):
    capture(monkeypatch)
    parse = units.parse_size if kind == "size" else units.parse_rate
    for text in REFUSED_SIZES if kind == "size" else REFUSED:
        if option in ("--sizes", "--slot-gib") and text == "0.3":
            continue   # a bare number is GiB there: 0.3 GiB is refused, not as a size
        assert cli.main(argv + [option + "=" + text]) == 2, (argv, option, text)
        err = capsys.readouterr().err
        assert err == "pykvmdirty %s: error: %s\n" % (argv[0],
                                                      expected_error(parse, text, option)), err


def test_bare_numbers_are_gib_in_compare_sizes(monkeypatch):
    capture(monkeypatch)
    with pytest.raises(Captured) as got:
        cli.main(["compare", "--sizes", "0.25", "--dirty", "0"])
    assert got.value.args[0]["--sizes"] == GiB // 4


# -- Python ---------------------------------------------------------------------------------

def test_migration_config_takes_the_table():
    for text, n in SIZES.items():
        if n % 4096 == 0:
            assert MigrationConfig(guest_size=text).guest_bytes == n, text
        assert limits.resolve_limit(text)[0] == n, text
    for text, n in RATES.items():
        cfg = MigrationConfig(bandwidth=text, link_bandwidth=text)
        assert cfg.bandwidth == n and cfg.link_bandwidth == n, text
    for text in ("0", "none", "unlimited", None, 0):
        assert MigrationConfig(bandwidth=text).bandwidth == 0


def test_migration_config_refuses_the_table_with_the_same_text():
    for text in REFUSED_SIZES:
        for name in ("guest_size", "workload_start"):
            with pytest.raises(ValueError) as e:
                MigrationConfig(**{name: text})
            assert str(e.value) == expected_error(units.parse_size, text, name)
        with pytest.raises(ValueError) as e:
            limits.resolve_limit(text)
        assert str(e.value) == expected_error(units.parse_size, text, "max_memory")
    for text in REFUSED:
        for name in ("bandwidth", "link_bandwidth"):
            with pytest.raises(ValueError) as e:
                MigrationConfig(**{name: text})
            assert str(e.value) == expected_error(units.parse_rate, text, name)


def test_kd_migrate_runs_with_rate_strings():
    """The issue's kd.migrate(bandwidth="1250MB") (was a TypeError) and bits."""
    for bw in ("1250MB", "10Gbit"):
        r = kd.migrate(guest_size="8MiB", slots=1, bandwidth=bw, link_bandwidth="10Gbps",
                       rate=1000, populate=0.1)
        assert r.verified is True
        assert r.config["bandwidth"] == 1250 * 10**6


def test_cli_migrate_runs_with_any_spelling(capsys):
    assert cli.main(["migrate", "--guest-size", "8388608B", "--slots", "1", "--bandwidth",
                     "10Gbit", "--link-bandwidth", "1250MB/s", "--quiet"]) == 0
    assert "verified: yes" in capsys.readouterr().out

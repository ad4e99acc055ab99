"""What the commands print (issue 24 item 5): no progress bar into a stderr that
is not a terminal, every migrate option's help with its default, --version,
the ring size from the command line, the C example's labelled columns."""
import json
import re

import pytest

import pykvmdirty as kd
from pykvmdirty import cli

TINY = ["migrate", "--guest-size", "8MiB", "--slots", "1", "--rate", "1000"]


def test_migrate_writes_no_progress_bar_into_a_log(capsys):
    assert cli.main(TINY) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "pass " not in err, err


def test_migrate_progress_bar_on_a_terminal(capsys, monkeypatch):
    import sys
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(TINY) == 0
    assert "\rpass " in capsys.readouterr().err
    assert cli.main(TINY + ["--quiet"]) == 0
    assert "\r" not in capsys.readouterr().err


def shown(default, text):
    """The default's value appears in the help text (10e-6 shows 1e-05)."""
    if str(default) in text:
        return True
    for word in re.findall(r"[0-9][0-9.e+-]*", text):
        try:
            if float(word) == float(default):
                return True
        except ValueError:
            pass
    return False


def migrate_options():
    parser = cli.build_parser()
    sub = cli.subcommand_parser(parser, "migrate")
    return [a for a in sub._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("action", migrate_options(), ids=lambda a: a.option_strings[0])
def test_every_migrate_option_has_help_and_its_default(action):
    assert action.help, action.option_strings
    if action.default not in (None, False):
        assert "default" in action.help, (action.option_strings, action.help)
        assert "%(default)s" in action.help or shown(action.default, action.help), \
            (action.option_strings, action.help)


def test_hot_share_help_shows_its_default(capsys):
    assert cli.main(["migrate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("share of the writes that go to the hot pages (default 0.9)",
                  "--populate POPULATE fraction of pages written before migration (default "
                  "0.25)", "--vcpus VCPUS", "--ring-entries N"):
        assert words in text, words


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "pykvmdirty %s\n" % kd.__version__


def test_ring_entries_from_the_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["migrate", "--guest-size", "8MiB", "--slots", "1", "--backend", "ring",
                     "--strategy", "ring", "--ring-entries", "512", "--quiet", "--json",
                     str(out)]) == 0
    assert json.loads(out.read_text())["config"]["ring_entries"] == 512
    capsys.readouterr()
    for bad in ("100", "3000", "131072", "0"):
        assert cli.main(["migrate", "--backend", "ring", "--strategy", "ring",
                         "--ring-entries", bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pykvmdirty migrate: error: "
                                                       "--ring-entries "), err

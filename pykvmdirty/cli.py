"""The ``pykvmdirty`` command: one subcommand per module in pykvmdirty/commands/.

Each module there defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit status).
"""
import argparse
import importlib
import pkgutil
import sys

from . import commands


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pykvmdirty",
        description="Dirty-page-tracking kernel-interface emulator: compare dirty-log "
        "interfaces and run live-migration scan-and-send loops.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module("%s.%s" % (commands.__name__, info.name))
        module.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, TypeError) as e:
        print("pykvmdirty %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

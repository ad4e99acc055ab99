"""The ``pykvmdirty`` command: one subcommand per module in pykvmdirty/commands/.

Each module there defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit status).

Errors a user can cause end as one line on stderr and a nonzero status, never
a traceback: bad options and values (status 2; API parameter names in the
message become the command's option names), failures of the run, the files
or the network (status 1), Ctrl-C (status 130).
"""
import argparse
import importlib
import os
import pkgutil
import re
import sys

from . import commands

#: API parameter names that differ from an option's dest
ALIASES = {"sizes_gib": "--sizes", "max_memory": "--max-memory"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the usage is in --help)."""

    def error(self, message):
        m = re.match(r"argument ([^:]+): (.*)$", message, re.S)
        if m and any(m.group(2).startswith((o + " ", o + ":"))
                                    for o in m.group(1).split("/")):
            # a bad value whose message names its option (units.parse_size,
            # parse_rate): the same line as when the run itself refuses it
            self.exit(2, "%s: error: %s\n" % (self.prog, m.group(2)))
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


def build_parser():
    parser = ArgumentParser(
        prog="pykvmdirty",
        description="Dirty-page-tracking kernel-interface emulator: compare dirty-log "
        "interfaces and run live-migration scan-and-send loops.")
    from . import __version__
    parser.add_argument("--version", action="version", version="pykvmdirty %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module("%s.%s" % (commands.__name__, info.name))
        module.register(sub)
    return parser


def subcommand_parser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def option_names(subparser):
    """{API parameter name: option} for a subcommand's long options."""
    names = dict(ALIASES)
    for action in subparser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names[action.dest] = longs[0]
    return names


def with_option_names(message, names):
    """Name options as the user typed them: ``guest_size`` -> ``--guest-size``
    wherever a parameter name with an underscore appears, a one-word name
    only where it starts the message (elsewhere it may be plain prose)."""
    def swap(m):
        return names.get(m.group(0), m.group(0))
    message = re.sub(r"(?<![\w/.-])[a-z]+(?:_[a-z]+)+(?![\w/-])", swap, message)
    first = re.match(r"[a-z]+(?![\w-])", message)
    if first and first.group(0) in names:
        message = names[first.group(0)] + message[first.end():]
    return message


def describe_os_error(e):
    if getattr(e, "filename", None) and e.strerror:
        return "%s: %s" % (e.filename, e.strerror)
    return str(e)


def main(argv=None):
    command = "pykvmdirty"
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:   # usage errors (2), --help and --version (0)
            return e.code
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = "pykvmdirty %s" % args.command
        names = option_names(subcommand_parser(parser, args.command))
        try:
            return args.func(args) or 0
        except (ValueError, TypeError) as e:
            print("%s: error: %s" % (command, with_option_names(str(e), names)),
                  file=sys.stderr)
            return 2
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # stdout closed (e.g. | head)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 1
            print("%s: error: %s" % (command, describe_os_error(e)), file=sys.stderr)
            return 1
        except MemoryError:
            print("%s: error: out of memory (try a smaller run, see --max-memory)" % command,
                  file=sys.stderr)
            return 1
        except RuntimeError as e:
            print("%s: failed: %s" % (command, e), file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("%s: interrupted" % command, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""argparse value types shared by the subcommands: each names the bad value."""
import argparse


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1, got %d" % v)
    return v

"""Subcommands of the pykvmdirty CLI; each module defines register(subparsers)."""

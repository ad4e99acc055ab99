"""The bindings layer: the only code that touches the cffi extension (``ffi``,
``lib``). One module per C concept; each checks every C return code and
raises typed errors (pykvmdirty.errors). Everything above it (migration/,
analysis/, commands/) works with Python objects and numpy arrays."""

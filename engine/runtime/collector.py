"""Pausing Python's cyclic garbage collector around work that makes many objects and no cycles."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def without_cyclic_gc():
    """Run a block without the cyclic garbage collector. A backtest, or a report reading and
    formatting tens of thousands of rows, allocates many small objects and no reference cycles;
    the collector would rescan everything alive every few hundred allocations, and a full
    collection walks every object of the process (measured: it dominated the Runner's loop and
    a fifth of the report's time, and struck in the middle of fast-path runs). Anything cyclic
    left over is collected once it is enabled again; a block entered with the collector off
    leaves it off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

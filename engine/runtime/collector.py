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
    leaves it off.

    What the block made and keeps (a run's records) would otherwise all be young when the
    collector is back on, and the first allocation after it would walk every one of them (about
    0.14 s after a run of 19,000 trades). They are moved to the oldest generation instead, where
    they would have ended up had the collector run all along (freeze then unfreeze: two list
    splices, no walk); a later full collection still sees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()

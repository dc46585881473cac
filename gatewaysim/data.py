"""Bars the simulator replays: a directory (or file) read with the engine's loader."""

from __future__ import annotations

from pathlib import Path

from engine.diagnostics import DiagnosticError

SAMPLE = Path(__file__).resolve().parents[1] / "strategies" / "data"


class DataError(Exception):
    """--data points at nothing the simulator can replay; the message says what and how to fix it."""


def load_data(path=None):
    """(directory, {symbol: bars}) for `path`, or for the bundled sample when path is None."""
    from engine.market.bars import load_bars

    where = Path(path) if path is not None else SAMPLE
    if path is None and not where.exists():
        raise DataError(f"the bundled sample ({SAMPLE}) is not here: qtrade was installed without its source "
                        f"tree's strategies/data; give --data DIR (a folder of SYMBOL.csv files)")
    if not where.exists():
        raise DataError(f"--data {where}: no such file or directory; give a folder of SYMBOL.csv files "
                        f"(e.g. strategies/data) or leave --data out to replay the bundled sample")
    try:
        frames = load_bars(where)
    except DiagnosticError as exc:
        raise DataError(f"--data {where}: no usable bars:\n{exc}") from None
    frames = {sym: f for sym, f in frames.items() if len(f) > 0}
    if not frames:
        raise DataError(f"--data {where}: the files hold no bars; each needs a header and at least one row")
    return where, frames

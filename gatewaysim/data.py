"""Bars the simulator replays: a directory (or file) read with the engine's loader."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.diagnostics import DiagnosticError

def _sample() -> Path:
    """The bundled sample: the source tree's strategies/data, or the copy installed with the
    package (engine.sample) when qtrade was installed from a wheel."""
    tree = Path(__file__).resolve().parents[1] / "strategies" / "data"
    if tree.exists():
        return tree
    import engine

    return Path(engine.__file__).resolve().parent / "sample"


SAMPLE = _sample()


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
    for line in _named_after_files(where, frames):
        logging.getLogger("gatewaysim").warning(line)
    return where, frames


def _named_after_files(where: Path, frames: dict) -> list[str]:
    """A file without a symbol column is served under its name (spy_daily.csv as SPY_DAILY), which
    no strategy's universe names: said, with the two ways to serve it as the ticker."""
    import re

    from engine.market.bars import _has_symbol_column, _stem_symbol

    files = [where] if where.is_file() else sorted(p for p in where.iterdir() if p.is_file())
    said = []
    for file in files:
        symbol = _stem_symbol(file, None)       # the loader's own naming
        if symbol in frames and re.search(r"[-_ .]", file.stem) and not _has_symbol_column(file):
            ticker = re.split(r"[-_ .]+", file.stem)[0].upper()
            said.append(f"{file} is served as the symbol {symbol}, named after the file; to serve it as {ticker}, "
                        f"rename it {ticker}{file.suffix} or give it a symbol column")
    return said


class VendorChains:
    """Option chain snapshots from a vendor file (engine.market.chains.load_chains): at simulated
    time t an option quotes the latest snapshot taken at or before t (before the first one, the
    first), so an end-of-day file quotes the previous close all day, as its data was."""

    def __init__(self, path, snapshots: dict):
        self.path = path
        chains = sorted(snapshots.values(), key=lambda c: c.quote_time)
        self.chains = chains
        self.underlying = chains[0].underlying.upper()
        self.multiplier = chains[0].multiplier
        self.times = [int(c.quote_time.value) for c in chains]
        self.rows: list[dict] = []
        for c in chains:
            days = [str(d).replace("-", "") for d in c.expiry]
            self.rows.append({(str(tc), ymd, round(float(k), 6), r): i
                              for i, (tc, ymd, k, r) in enumerate(zip(c.trading_class, days, c.strike, c.right))})

    def contracts(self) -> list[tuple[str, str, float, str]]:
        """Every (trading class, YYYYMMDD expiry, strike, right) in any snapshot."""
        keys = set()
        for rows in self.rows:
            keys.update(rows)
        return sorted(keys)

    def at(self, key: tuple, t_ns: int):
        """(chain, row) of the snapshot in force at t, or (chain, None) when it lacks the option."""
        import bisect

        k = max(bisect.bisect_right(self.times, t_ns) - 1, 0)
        return self.chains[k], self.rows[k].get(key)


def load_chain_file(path, symbols) -> dict[str, VendorChains]:
    """The chains of a vendor file per underlying: the file's one underlying, or, for a file of
    several, each of `symbols` (the symbols with bars) that it holds."""
    from engine.market.chains import load_chains

    where = Path(path)
    if not where.is_file():
        raise DataError(f"--chains {where}: no such file; give an option chain CSV (the L2 or iVolatility layout)")
    try:
        snapshots = load_chains(where)
        found = {VendorChains(where, snapshots).underlying: snapshots} if snapshots else {}
    except DiagnosticError as exc:
        if "underlyings" not in str(exc):
            raise DataError(f"--chains {where}: not a usable option chain file:\n{exc}") from None
        found = {}
        for sym in symbols:
            try:
                found[sym] = load_chains(where, underlying=sym)
            except DiagnosticError as inner:
                if f"no rows for underlying {sym!r}" not in str(inner):
                    raise DataError(f"--chains {where}: not a usable option chain file:\n{inner}") from None
        if not found:
            raise DataError(f"--chains {where}: none of its underlyings has bars ({exc.diagnostics[0].message})") from None
    found = {sym: snaps for sym, snaps in found.items() if snaps}
    if not found:
        raise DataError(f"--chains {where}: the file holds no options")
    return {sym: VendorChains(where, snaps) for sym, snaps in found.items()}

"""Bar data from CSV and Parquet files: one symbol per file, a long table of many symbols, or a
directory of files; and resampling of bars to a larger size, anchored at each session's open.

Every loaded frame has the same shape, whatever the file looked like: a tz-aware DatetimeIndex of
bar START times (sorted, unique) and float64 columns open, high, low, close, volume (volume is NaN
when the source has none). Layouts are recognised by header names, never by position, so a file
that says `Date,Open,Close,High,Low,Volume` is read correctly. Bad input raises DiagnosticError
with the file, line and column a user can go to.

A file with a contract-month column (`contract_month`, `contract` or `expiry`: exactly one of
them) holds a futures root's history per contract: its symbol's value is then a
market.futures.ContractHistory, one such frame per contract (times unique within a contract), which
the run stitches into the front month by the root's roll rule (market.futures.stitch).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import numpy as np
import pandas as pd

from engine.diagnostics import DiagnosticError, error

FIELDS = ("open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close")

# Header name (lower-case, spaces/underscores/dashes removed) -> role.
_ROLES = {
    "open": "open", "o": "open",
    "high": "high", "h": "high",
    "low": "low", "l": "low",
    "close": "close", "c": "close", "last": "close",
    "volume": "volume", "vol": "volume", "v": "volume",
    "adjclose": "adj_close", "adjustedclose": "adj_close",
    "date": "date", "day": "date",
    "time": "time",
    "datetime": "datetime", "timestamp": "datetime", "datetimeutc": "datetime_utc",
    "timestamputc": "datetime_utc",
    "symbol": "symbol", "ticker": "symbol",
    "contractmonth": "contract", "contract": "contract", "expiry": "contract",
    "openinterest": "ignore", "oi": "ignore",
}

LAYOUTS_HINT = """accepted layouts (header names, any case, any column order):
  Yahoo:       Date,Open,High,Low,Close,Adj Close,Volume (also the old order ...,Volume,Adj Close)
  backtrader:  Date,Open,High,Low,Close,Volume,OpenInterest
  intraday:    Date,Time,Open,High,Low,Close[,Volume][,OpenInterest]
  timestamped: timestamp|datetime|date|time|datetime_utc,open,high,low,close[,volume]
  pandas:      an unnamed first column holding the dates, then Open,High,Low,Close[,Volume]
  long table:  any of the above plus a symbol (or ticker) column
  futures:     any of the above plus one contract_month (or contract, or expiry) column, YYYYMM
               or YYYYMMDD: a root's history per contract, stitched into its front month
volume is optional; extra columns are ignored"""

_BAR_RE = re.compile(r"^(\d+)([smhdwM])$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0,
                 "M": 365.2425 * 86400.0 / 12}
BARS = ("1s", "5s", "10s", "15s", "30s", "1m", "2m", "3m", "5m", "10m", "15m", "20m", "30m",
        "1h", "2h", "3h", "4h", "8h", "1d", "1w", "1M")
_DATA_SUFFIXES = {".csv", ".txt", ".parquet", ".pq"}


def bar_seconds(bar: str) -> float:
    """Length of a bar string in seconds: '5m' -> 300.0, '1d' -> 86400.0 ('1M' is an average month)."""
    match = _BAR_RE.match(str(bar).strip())
    if not match:
        raise ValueError(f"unknown bar size {bar!r}; expected one of {', '.join(BARS)}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# ---------------------------------------------------------------------------------------- loading

def load_bars(path, *, symbols=None, timezone: str = "America/New_York", adjusted: bool = False,
              start=None, end=None, on_bad_bar: str = "refuse",
              round_adjusted: int | None = None, missing: str = "error") -> dict[str, pd.DataFrame]:
    """Bars per symbol from a CSV/Parquet file or a directory of them.

    The symbol comes from a `symbol`/`ticker` column when the file has one, else from the file
    name (a `symbols` entry found among the stem's `-`/`_` separated parts, else the upper-cased
    stem). For a directory or a long table `symbols` also limits what is returned, and asking for
    a symbol that is not there is an error; for a one-symbol file it only names the symbol. Naive times are local to `timezone`; aware times keep their instants and are shown in
    `timezone`. `adjusted` scales open/high/low/close by adj close / close, and `round_adjusted`
    (with `adjusted`) then rounds them to that many decimals, half to even (numpy.round, as
    Yahoo-style feeds of other tools round adjusted prices to cents); the bad-bar checks see the
    rounded prices. `start`/`end` are inclusive (a date means the whole day). A bar no run could trust (see `_bad_values`) is an
    error at its line, or with `on_bad_bar="skip"` left out: the frame's attrs["bad_bars"] then
    says how many and where the first was. `missing="omit"` returns the `symbols` found instead of
    refusing the ones that are not there (a scanner counts them as having no data).
    """
    if on_bad_bar not in ("refuse", "skip"):
        raise ValueError(f"on_bad_bar must be 'refuse' or 'skip', not {on_bad_bar!r}")
    if round_adjusted is not None and (not adjusted or isinstance(round_adjusted, bool)
                                       or not isinstance(round_adjusted, (int, np.integer)) or round_adjusted < 0):
        raise ValueError(f"round_adjusted must be a whole number of decimals >= 0, with adjusted=True; "
                         f"got {round_adjusted!r} (adjusted={adjusted!r})")
    load = dict(timezone=timezone, adjusted=adjusted, start=start, end=end, on_bad_bar=on_bad_bar,
                round_adjusted=round_adjusted)
    path = Path(path)
    wanted = [str(s).upper() for s in symbols] if symbols is not None else None
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DiagnosticError([error(str(path), 0, 0, "no CSV or Parquet files in this directory",
                                         "expected one file per symbol, e.g. SPY.csv or SPY.parquet")])
        out: dict[str, pd.DataFrame] = {}
        origin: dict[str, Path] = {}
        others: set[str] = set()        # the symbols of the files not asked for (for a message)
        for file in files:
            if wanted is not None and not _has_symbol_column(file) and _stem_symbol(file, wanted) not in wanted:
                others.add(_stem_symbol(file, wanted))
                continue
            for symbol, frame in _load_file(file, wanted, **load).items():
                if symbol in out:
                    raise DiagnosticError([error(str(file), 0, 0,
                                                 f"symbol {symbol} is also in {origin[symbol]}",
                                                 "keep one file (or one table) per symbol")])
                out[symbol], origin[symbol] = frame, file
    elif path.is_file():
        others = set()
        out = _load_file(path, wanted, **load)
        if not _has_symbol_column(path):
            return out  # one symbol per file: `symbols` only helps to name it
    else:
        raise DiagnosticError([error(str(path), 0, 0, "no such file or directory",
                                     "give a CSV or Parquet file, or a directory of them")])
    if wanted is not None:
        absent = [s for s in wanted if s not in out]
        if absent and missing != "omit":
            found = ", ".join(sorted(set(out) | others)) or "none"
            raise DiagnosticError([error(str(path), 0, 0,
                                         f"no bars for {', '.join(absent)} "
                                         f"({'the folder has' if path.is_dir() else 'found'}: {found})",
                                         "check the symbol's spelling in the strategy's universe, or give it a file "
                                         "named after it (SPY.csv) or a symbol column")])
        out = {s: out[s] for s in wanted if s in out}
    return out


def _stem_symbol(path: Path, wanted: list[str] | None) -> str:
    stem = path.stem
    if wanted:
        for part in re.split(r"[-_ ]+", stem):
            if part.upper() in wanted:
                return part.upper()
    return stem.upper()


def _has_symbol_column(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        names = pq.read_schema(path).names
    else:
        names = _split_header(_first_line(path))
    return any(_ROLES.get(_norm(n)) == "symbol" for n in names)


def _norm(name) -> str:
    return re.sub(r"[\s_\-.:]+", "", str(name).strip().lstrip("\ufeff").strip('"').lower())


_MAX_LINE = 64 * 1024   # no header or bar row is this long; a file without newlines is not read whole
_MAX_BLANK = 1000       # blank lines looked past for the first row


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        raw = fh.readline(_MAX_LINE + 1)
    _refuse_long_line(path, raw, 1)
    return raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")


def _refuse_long_line(path: Path, raw: bytes, number: int) -> None:
    if len(raw) > _MAX_LINE:
        raise DiagnosticError([error(str(path), number, 1,
                                     f"line {number} is longer than {_MAX_LINE // 1024} KiB: this is not a "
                                     "CSV file of bars (no line break found)",
                                     "expected a header line such as Date,Open,High,Low,Close,Volume, "
                                     "then one bar per line")])


def _split_header(line: str) -> list[str]:
    return [f.strip().strip('"') for f in line.split(",")]


class _Source:
    """What a file's header says: which column holds which role, and how to report positions."""

    def __init__(self, path: Path, names: list[str]):
        self.path = path
        self.names = names
        self.roles: dict[str, int] = {}
        contracts = []
        for i, name in enumerate(names):
            role = _ROLES.get(_norm(name))
            if role is None and i == 0 and _norm(name) in ("", "index", "unnamed0"):
                role = "datetime"  # pandas' unnamed index column (backtesting.py's GOOG.csv)
            if role == "contract":
                contracts.append(i)
            if role and role != "ignore" and role not in self.roles:
                self.roles[role] = i
        if len(contracts) > 1:
            second = contracts[1]
            col = sum(len(n) + 1 for n in names[:second]) + 1
            raise DiagnosticError([error(str(path), 1, col,
                                         f"two contract columns: {names[contracts[0]]!r} and {names[second]!r} "
                                         "(either could say which futures contract a bar is of)",
                                         "keep one column named contract_month, contract or expiry; rename or "
                                         "delete the other")])
        if "datetime" not in self.roles and "datetime_utc" not in self.roles and "date" not in self.roles \
                and "time" in self.roles:
            self.roles["datetime"] = self.roles.pop("time")
        if "date" in self.roles and "time" not in self.roles and "datetime" not in self.roles:
            self.roles["datetime"] = self.roles.pop("date")

    def check(self) -> None:
        has_time = any(r in self.roles for r in ("datetime", "datetime_utc", "date"))
        missing = [r for r in _PRICES if r not in self.roles]
        if has_time and not missing:
            return
        what = "a date or timestamp column" if not has_time else "columns " + ", ".join(missing)
        found = ",".join(self.names)
        raise DiagnosticError([error(str(self.path), 1, 1,
                                     f"unknown bar layout: no {what}; columns found: {found}",
                                     LAYOUTS_HINT)])


def _load_file(path: Path, wanted, timezone, adjusted, start, end, on_bad_bar="refuse",
               round_adjusted: int | None = None) -> dict[str, pd.DataFrame]:
    if path.suffix.lower() in (".parquet", ".pq"):
        frame, source, lines = _read_parquet(path)
    else:
        frame, source, lines = _read_csv(path)
    if adjusted and "adj_close" not in source.roles:
        raise DiagnosticError([error(str(path), 1, 1,
                                     "adjusted prices asked for, but the file has no adjusted close column; "
                                     f"columns found: {','.join(source.names)}",
                                     "use a file with an 'Adj Close' column, or adjusted: false")])
    times = _parse_times(frame, source, lines, timezone)
    # One 1-D array per column, put in the frame as they are (copy=False): the DataFrame
    # constructor would otherwise copy all columns into one 2-D block (~0.1 s for 1M bars).
    out_cols = {}
    for role in _PRICES + ("volume", "adj_close"):
        if role in source.roles:
            out_cols[role] = _numbers(frame[role], role, source, lines)
        elif role == "volume":
            out_cols[role] = np.full(len(frame), np.nan)
    if adjusted:
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = out_cols["adj_close"] / out_cols["close"]
        for role in _PRICES:
            out_cols[role] = out_cols[role] * factor
            if round_adjusted is not None:
                np.round(out_cols[role], int(round_adjusted), out=out_cols[role])
    # Rows with no prices at all (Yahoo's 'null' rows, blank lines) are gaps, not bars.
    gap = np.isnan(out_cols["close"])
    if gap.any():
        for role in ("open", "high", "low"):
            gap &= np.isnan(out_cols[role])
    keep = ~gap
    _refuse_no_bars(source, keep)
    bad, first_bad = _bad_values(out_cols, keep, source, lines, adjusted)
    if first_bad is not None:
        if on_bad_bar != "skip":
            raise DiagnosticError([first_bad])
        keep &= ~bad
        _refuse_no_bars(source, keep, f" once the bad ones are left out (the first: line {first_bad.line}: "
                                      f"{first_bad.message})")
    columns = {}
    for role in FIELDS:
        values = out_cols[role]
        if not values.flags.writeable:
            # A read-only view of a float64 column of the file's frame: the column itself then
            # (pandas copies it on a first write), else a copy (the bars must be writable).
            column = frame[role] if role in source.roles else None
            values = column if column is not None and column.dtype == np.float64 \
                and np.may_share_memory(values, column.to_numpy()) else values.copy()
        columns[role] = values
    bars = pd.DataFrame(columns, index=frame.index, copy=False)
    bars.index = pd.DatetimeIndex(times).rename(None)
    if "contract" in source.roles:
        return _by_contract(path, frame, bars, lines, keep, source, wanted, timezone, start, end, bad, first_bad)
    if "symbol" in source.roles:
        symbol_values = frame["symbol"].astype(str).str.strip().str.upper().to_numpy()
        groups = {}
        for symbol in pd.unique(symbol_values[keep]):
            if wanted is not None and symbol not in wanted:
                continue
            mask = keep & (symbol_values == symbol)
            groups[symbol] = _finish(bars[mask], lines[mask], source, timezone, start, end)
            if first_bad is not None:
                _note_skipped(groups[symbol], int((bad & (symbol_values == symbol)).sum()), first_bad)
        return groups
    if not keep.all():
        bars, lines = bars[keep], lines[keep]
    frame = _finish(bars, lines, source, timezone, start, end)
    if first_bad is not None:
        _note_skipped(frame, int(bad.sum()), first_bad)
    return {_stem_symbol(path, wanted): frame}


def _by_contract(path: Path, frame, bars, lines, keep, source: _Source, wanted, timezone, start, end, bad,
                 first_bad) -> dict:
    """A futures file: per symbol (the symbol column's, else the file's), its bars per contract."""
    from .futures import ContractHistory, parse_contract

    raw = frame["contract"].astype("string").str.strip().fillna("").to_numpy(dtype=object)
    raw = np.array([v[:-2] if v.endswith(".0") else v for v in raw], dtype=object)
    values = {v: parse_contract(v) for v in pd.unique(raw[keep])}
    for value, parsed in values.items():
        if parsed is None:
            at = int(np.flatnonzero(keep & (raw == value))[0])
            line = int(lines[at])
            col, name = _where(source, line, "contract")
            shown = "an empty field" if value == "" else repr(value)
            raise DiagnosticError([error(str(path), line, col,
                                         f"{shown} is not a contract month (column {name!r})",
                                         "write the contract as YYYYMM (201312) or its last trade date as "
                                         "YYYYMMDD (20131220)")])
    if "symbol" in source.roles:
        symbols = frame["symbol"].astype(str).str.strip().str.upper().to_numpy()
        names = [s for s in pd.unique(symbols[keep]) if wanted is None or s in wanted]
    else:
        symbols, names = None, [_stem_symbol(path, wanted)]
    col, name = _where(source, 1, "contract")
    out = {}
    for symbol in names:
        mine = keep if symbols is None else keep & (symbols == symbol)
        history = ContractHistory(symbol, {}, str(path), col, name)
        for value in sorted(v for v in values if (mine & (raw == v)).any()):
            mask = mine & (raw == value)
            history.first_line[value] = int(lines[int(np.flatnonzero(mask)[0])])
            history.contracts[value] = _finish(bars[mask], lines[mask], source, timezone, start, end,
                                                f" in contract {value}")
        if first_bad is not None:
            history.skipped = {"file": first_bad.path, "count": int((bad if symbols is None else
                                                                     bad & (symbols == symbol)).sum()),
                               "line": first_bad.line, "col": first_bad.col, "message": first_bad.message}
        out[symbol] = history
    return out


def _note_skipped(frame: pd.DataFrame, count: int, first) -> None:
    """With data.on_bad_bar: skip, what was left out, kept with the bars (frame.attrs['bad_bars'];
    resample keeps it) for the run to report."""
    if count:
        frame.attrs["bad_bars"] = {"file": first.path, "count": count, "line": first.line, "col": first.col,
                                   "message": first.message}


def _refuse_no_bars(source: _Source, keep: np.ndarray, after: str = "") -> None:
    if not keep.any():
        csv = getattr(source, "csv", False)
        raise DiagnosticError([error(str(source.path), 1 if csv else 0, 1 if csv else 0,
                                     ("no bars: the file has a header but no rows with prices" if csv
                                      else "no bars: the file has no rows with prices") + after,
                                     "give a file with at least one bar under its header")])


def _bad_values(cols: dict, keep: np.ndarray, source: _Source, lines, adjusted: bool):
    """The bars no run could trust, and a diagnostic at the first one's line and column (None,
    None when there are none): a missing, infinite, zero or negative price in a row that has
    prices, an infinite or negative volume, or a high below the low. All checks are whole-column
    numpy comparisons (a few ms for 1M bars); a row is looked at alone only to name the first."""
    what = "adjusted " if adjusted else ""
    problems = []  # (row index, role, message, hint)
    masks = []
    for role in _PRICES:
        values = cols[role]
        with np.errstate(invalid="ignore"):
            huge = np.isinf(values) & keep
            bad = ~(values > 0) & keep & ~huge   # NaN, zero and negative
        masks += [bad, huge]
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            value = values[at]
            if np.isnan(value):
                message = f"missing {what}{role} price in a bar that has other prices"
            else:
                message = f"{what}{role} price is {_shown(value)}: prices must be above zero"
            problems.append((at, role, message, "fix or delete the row (a row with no prices at all is a gap "
                                                "and is left out)"))
        if huge.any():
            at = int(np.flatnonzero(huge)[0])
            problems.append((at, role, f"{what}{role} price is {_shown(values[at])}",
                             "prices must be finite numbers; fix or delete the row"))
    volume = cols.get("volume")
    if volume is not None and "volume" in source.roles:
        with np.errstate(invalid="ignore"):
            bad = (np.isinf(volume) | (volume < 0)) & keep
        masks.append(bad)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            problems.append((at, "volume", f"volume is {_shown(volume[at])}: volumes must be finite and not negative",
                             "fix the row, or leave the volume field empty when it is not known"))
    with np.errstate(invalid="ignore"):
        crossed = (cols["high"] < cols["low"]) & keep
    masks.append(crossed)
    if crossed.any():
        at = int(np.flatnonzero(crossed)[0])
        problems.append((at, "high", f"{what}high {_shown(cols['high'][at])} is below the low {_shown(cols['low'][at])}",
                         "check the column order in the header, or fix the row"))
    if not problems:
        return None, None
    at, role, message, hint = min(problems, key=lambda p: (p[0], source.roles.get(p[1], 0)))
    line = int(lines[at])
    col, name = _where(source, line, role)
    hint += "; or set data.on_bad_bar: skip to leave such bars out (their count is reported)"
    return np.logical_or.reduce(masks), error(str(source.path), line, col, f"{message} (column {name!r})", hint)


def _shown(value: float) -> str:
    return "nan" if np.isnan(value) else ("inf" if value == np.inf else "-inf" if value == -np.inf else f"{value:g}")


def _finish(bars: pd.DataFrame, lines: np.ndarray, source: _Source, timezone, start, end,
            within: str = "") -> pd.DataFrame:
    """Sort by time, refuse duplicates (naming both lines), apply the start/end filter."""
    index = bars.index
    if not index.is_monotonic_increasing:
        order = np.argsort(index.asi8, kind="stable")
        bars, lines = bars.iloc[order], lines[order]
        index = bars.index
    if index.has_duplicates:
        dup = index.duplicated(keep="first")
        second = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(index == index[second])[0])
        a, b = sorted((int(lines[first]), int(lines[second])))
        col = source.roles.get("datetime", source.roles.get("datetime_utc", source.roles.get("date", 0))) + 1
        hint = "each bar time may appear once per symbol" if within else \
            "each bar time may appear once per symbol; a futures file with one row per contract and time " \
            "needs a contract_month column (YYYYMM or YYYYMMDD)"
        raise DiagnosticError([error(str(source.path), b, col,
                                     f"duplicate bar time {index[second]}{within} (also on line {a})", hint)])
    if start is not None:
        bars = bars[bars.index >= _bound(start, timezone, False)]
    if end is not None:
        bars = bars[bars.index < _bound(end, timezone, True)] if _is_date(end) \
            else bars[bars.index <= _bound(end, timezone, False)]
    return bars


def _is_date(value) -> bool:
    if isinstance(value, _dt.datetime):
        return False
    if isinstance(value, _dt.date):
        return True
    return isinstance(value, str) and bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()))


def _bound(value, timezone, next_day: bool) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        if next_day:
            stamp = stamp + pd.Timedelta(days=1)
        return stamp.tz_localize(timezone)
    return stamp + pd.Timedelta(days=1) if next_day else stamp


# ------------------------------------------------------------------------------------------ CSV

def _read_csv(path: Path):
    header = _first_line(path)
    if not header.strip() and path.stat().st_size <= len(header) + 2:
        raise DiagnosticError([error(str(path), 1, 1, "the file is empty",
                                     "expected a header line such as Date,Open,High,Low,Close,Volume")])
    names = _split_header(header)
    first_row = None
    with open(path, "rb") as fh:
        fh.readline(_MAX_LINE + 1)
        for number in range(2, 2 + _MAX_BLANK):
            raw = fh.readline(_MAX_LINE + 1)
            _refuse_long_line(path, raw, number)
            if not raw:
                break
            if raw.strip():
                first_row = raw.decode("utf-8", errors="replace").rstrip("\r\n").split(",")
                break
    # backtrader's 2006-01-02-volume-min-001.txt: a daily header over rows with date AND time.
    if first_row is not None and len(first_row) == len(names) + 1 and len(names) > 1 \
            and _ROLES.get(_norm(names[0])) == "date" and "time" not in (_ROLES.get(_norm(n)) for n in names) \
            and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", first_row[1].strip()):
        names = [names[0], "Time"] + names[1:]
    source = _Source(path, names)
    source.check()
    if first_row is not None and len(first_row) != len(names):
        raise DiagnosticError([error(str(path), 2, 1,
                                     f"the first row has {len(first_row)} fields but the header on line 1 "
                                     f"names {len(names)}: {','.join(names)}",
                                     "make the header name every field")])
    wanted = {role: i for role, i in source.roles.items()}
    usecols = sorted(wanted.values())
    by_index = {i: role for role, i in wanted.items()}
    text_roles = {"date", "time", "datetime", "datetime_utc", "symbol", "contract"}
    # Text columns keep pandas' inferred type: asking for str costs twice the time on big files.
    dtypes = {i: "float64" for i in usecols if by_index[i] not in text_roles}
    # No usecols: with it the parser silently drops a row's extra fields instead of saying where.
    kwargs = dict(header=None, skiprows=1, names=list(range(len(names))), index_col=False,
                  skip_blank_lines=False, engine="c", encoding="utf-8", encoding_errors="replace")
    try:
        try:
            frame = pd.read_csv(path, dtype=dtypes, **kwargs)
        except ValueError as exc:
            if isinstance(exc, pd.errors.ParserError):
                raise
            # A non-number somewhere: read as text and let _numbers say where.
            frame = pd.read_csv(path, dtype=str, **kwargs)
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            raise DiagnosticError([error(str(path), int(match.group(2)), 1,
                                         f"line has {match.group(3)} fields but the header on line 1 "
                                         f"names {match.group(1)}", "every row needs one field per header name")])
        raise DiagnosticError([error(str(path), 0, 0, f"cannot read as CSV: {exc}")]) from None
    frame = frame[usecols].rename(columns=by_index)
    lines = np.arange(2, len(frame) + 2)
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        frame, lines = frame[~blank], lines[~blank]
    source.csv = True
    return frame, source, lines


# -------------------------------------------------------------------------------------- Parquet

def _read_parquet(path: Path):
    fast = _read_parquet_plain(path)
    if fast is not None:
        return fast
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow's errors are many; all mean "not a readable Parquet file"
        raise DiagnosticError([error(str(path), 0, 0, f"cannot read as Parquet: {exc}")]) from None
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    names = [str(c) for c in frame.columns]
    source = _Source(path, names)
    source.check()
    frame = frame.iloc[:, sorted(source.roles.values())]
    frame.columns = [{i: r for r, i in source.roles.items()}[i] for i in sorted(source.roles.values())]
    source.csv = False
    return frame.reset_index(drop=True), source, np.arange(1, len(frame) + 1)


def _read_parquet_plain(path: Path):
    """The common case read straight with pyarrow, or None to go the general way: no index stored
    (or a plain RangeIndex), no symbol column, a timestamp column and numeric price columns. It
    reads only the columns it uses, and gives the same frame as pd.read_parquet would, without its
    consolidating copy (~0.05 s for 1M bars)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        meta = schema.pandas_metadata or {}
        names = list(schema.names)
        if len(set(names)) != len(names) or len(meta.get("column_indexes") or []) > 1:
            return None
        for index_column in meta.get("index_columns") or []:
            if not isinstance(index_column, dict) or index_column.get("kind") != "range" \
                    or index_column.get("name") is not None:
                return None  # an index pandas would restore (and load_bars would turn into a column)
        if any(str(c.get("name")) != c.get("field_name") for c in meta.get("columns") or []
               if c.get("field_name") in names):
            return None
        source = _Source(path, names)
        if "symbol" in source.roles or "time" in source.roles or "contract" in source.roles:
            return None
        source.check()
        time_role = next(r for r in ("datetime_utc", "datetime", "date") if r in source.roles)
        if not pa.types.is_timestamp(schema.field(source.roles[time_role]).type):
            return None
        for role, i in source.roles.items():
            kind = schema.field(i).type
            if role != time_role and not (pa.types.is_integer(kind) or pa.types.is_float64(kind)
                                          or pa.types.is_float32(kind)):
                return None
        table = file.read(columns=[names[i] for i in sorted(source.roles.values())], use_pandas_metadata=False)
        if table.num_rows == 0:
            return None
        columns = {}
        for role, i in sorted(source.roles.items(), key=lambda item: item[1]):
            column = table.column(names[i])
            if role == time_role:
                columns[role] = column.to_pandas()
            else:
                columns[role] = _writable_float64(column)
        del table
        frame = pd.DataFrame(columns, copy=False)
    except Exception:
        return None
    source.csv = False
    return frame, source, _Lines(1, len(frame))


class _Lines:
    """The line numbers 1, 2, ... n of a file's rows (Parquet's rows), made as an array only when
    indexed by an array (a mask, an order): an error's row number needs no 1M-row array."""

    def __init__(self, first: int, n: int):
        self.first, self.n = first, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            at = int(key) + (self.n if key < 0 else 0)
            if not 0 <= at < self.n:
                raise IndexError(key)
            return self.first + at
        return np.arange(self.first, self.first + self.n)[key]


def _writable_float64(column) -> np.ndarray:
    """A float64 column as a writable array the frame can own: Arrow's freshly decoded buffer
    itself when it is one mutable float64 buffer without nulls (no copy), else a copy."""
    import pyarrow as pa

    if column.num_chunks == 1 and column.type == pa.float64() and column.null_count == 0:
        chunk = column.chunk(0)
        data = chunk.buffers()[1]
        if data is not None and data.is_mutable:
            values = np.frombuffer(data, dtype=np.float64, count=len(chunk), offset=chunk.offset * 8)
            if values.flags.writeable:
                return values
    return np.array(column.to_numpy(), dtype=np.float64)


# ---------------------------------------------------------------------------------- conversions

def _where(source: _Source, line: int, role: str) -> tuple[int, str]:
    """1-based character column of `role`'s field on `line`, and the field's header name."""
    index = source.roles[role]
    name = source.names[index] if index < len(source.names) else role
    if not getattr(source, "csv", False):
        return index + 1, name
    with open(source.path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == line:
                fields = raw.decode("utf-8", errors="replace").rstrip("\r\n").split(",")
                return sum(len(f) + 1 for f in fields[:index]) + 1, name
    return 1, name


def _numbers(values: pd.Series, role: str, source: _Source, lines: np.ndarray) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    text = values.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna().to_numpy() & text.notna().to_numpy() & (text != "").fillna(False).to_numpy()
    bad &= ~text.str.lower().isin(["nan", "null", "na", "n/a", "none", "#n/a"]).fillna(False).to_numpy()
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        line = int(lines[at])
        col, name = _where(source, line, role)
        raise DiagnosticError([error(str(source.path), line, col,
                                     f"{text.iloc[at]!r} is not a number (column {name!r})",
                                     "prices and volumes must be plain numbers, e.g. 123.45")])
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def _parse_times(frame: pd.DataFrame, source: _Source, lines: np.ndarray, timezone: str) -> pd.DatetimeIndex:
    utc_named = "datetime_utc" in source.roles
    role = "datetime_utc" if utc_named else ("datetime" if "datetime" in source.roles else "date")
    raw = frame[role]
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = pd.DatetimeIndex(raw)
    else:
        text = raw.astype("str")
        if role == "date" and "time" in source.roles:
            text = text.str.strip() + " " + frame["time"].astype("str").str.strip()
        parsed = _parse_text(text, source, lines, role)
    if parsed.tz is None:
        zone = "UTC" if utc_named else timezone
        try:
            parsed = parsed.tz_localize(zone, ambiguous="infer", nonexistent="raise")
        except Exception:
            trial = parsed.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
            at = int(np.flatnonzero(trial.isna() & ~parsed.isna())[0])
            line = int(lines[at])
            col, name = _where(source, line, role)
            raise DiagnosticError([error(str(source.path), line, col,
                                         f"{parsed[at]} does not exist or is ambiguous in {zone} "
                                         "(a daylight-saving change)",
                                         "write times with a UTC offset, e.g. 2023-11-05 01:30:00-05:00")]) from None
    return parsed.tz_convert(timezone)


def _parse_text(text: pd.Series, source: _Source, lines: np.ndarray, role: str) -> pd.DatetimeIndex:
    sample = text.dropna()
    first = str(sample.iloc[0]).strip() if len(sample) else ""
    aware = bool(_OFFSET.search(first)) and bool(_ISO_DATE.match(first))
    attempts = []
    if re.fullmatch(r"\d{8}", first):
        attempts.append({"format": "%Y%m%d"})
    if re.fullmatch(r"\d{8} \d{2}:\d{2}", first):
        attempts.append({"format": "%Y%m%d %H:%M"})
    if _ISO_DATE.match(first):
        attempts.append({"format": "ISO8601"})
    attempts.append({})  # pandas infers one format from the first value
    for candidate in (text, text.str.strip()):  # stripping costs time: only when needed
        for kwargs in attempts:
            try:
                parsed = pd.to_datetime(candidate, utc=aware, **kwargs)
            except (ValueError, TypeError, OverflowError):
                continue
            bad = parsed.isna().to_numpy() & candidate.notna().to_numpy() & (candidate != "").fillna(False).to_numpy()
            if not bad.any():
                return pd.DatetimeIndex(parsed)
    text = text.str.strip()
    # Find the first value that the best format cannot read.
    kwargs = attempts[0]
    parsed = pd.to_datetime(text, utc=aware, errors="coerce", **kwargs)
    bad = (parsed.isna().to_numpy() & text.notna().to_numpy()) | text.isna().to_numpy()
    at = int(np.flatnonzero(bad)[0]) if bad.any() else 0
    line = int(lines[at])
    col, name = _where(source, line, role)
    shown = text.iloc[at]
    raise DiagnosticError([error(str(source.path), line, col,
                                 f"{'' if shown is pd.NA else shown!r} is not a date or time "
                                 f"(column {name!r}; earlier rows look like {first!r})",
                                 "write dates as 2024-01-31 or 2024-01-31 09:30:00, one format per file")])


# ------------------------------------------------------------------------------------ resampling

def resample(df: pd.DataFrame, bar: str, *, timezone: str, calendar: str | None = None) -> pd.DataFrame:
    """Bars of size `bar` made from smaller bars: open first, high max, low min, close last,
    volume summed.

    Intraday bins start at each session's open (the calendar's market open, else local midnight);
    day, week and month bars group by trading session and are stamped at midnight local of the
    session date (of the week's Monday, of the month's first day). With a calendar, bars outside
    the sessions' regular hours are dropped. Bins without bars are left out.
    """
    target = bar_seconds(bar)
    if len(df) == 0:
        return df.copy()
    if df.index.tz is None:
        raise ValueError("bar times must be timezone-aware; load them with load_bars")
    index = df.index.tz_convert(timezone)
    source = _source_seconds(index)
    if source is not None and target < source - 1e-9:
        raise ValueError(f"cannot resample to {bar} bars: the data has larger bars "
                         f"({_describe(source)}); resampling only makes bars larger")
    unit = _BAR_RE.match(bar.strip()).group(2)
    if source is not None and unit in "smh" and (target / source) % 1 > 1e-9:
        raise ValueError(f"cannot resample {_describe(source)} bars to {bar}: {bar} is not a whole "
                         "number of source bars")
    t_ns = _utc_ns(index)
    # daily (or larger) source bars are sessions already, stamped at midnight: the calendar's
    # hours would put every one of them outside regular hours
    if calendar is not None and not (source is not None and source >= 86400 - 1e-9):
        session_day, open_ns, inside = _calendar_sessions(index, t_ns, timezone, calendar)
        df, index, t_ns = df[inside], index[inside], t_ns[inside]
        session_day, open_ns = session_day[inside], open_ns[inside]
    else:
        session_day = index.tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        open_ns = _utc_ns(pd.DatetimeIndex(session_day.astype("datetime64[ns]")).tz_localize(
            timezone, ambiguous=True, nonexistent="shift_forward"))
    if unit in "smh":
        step = int(round(target * 1e9))
        keys = open_ns + (t_ns - open_ns) // step * step
        stamps = lambda k: pd.DatetimeIndex(k.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(timezone)
    else:
        days = session_day.astype("datetime64[D]")
        if unit == "d":
            keys = days
        elif unit == "w":
            weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
            keys = days - weekday.astype("timedelta64[D]")
        else:
            keys = days.astype("datetime64[M]").astype("datetime64[D]")
        keys = keys.astype("datetime64[ns]").astype(np.int64)
        stamps = lambda k: pd.DatetimeIndex(k.astype("datetime64[ns]")).tz_localize(
            timezone, ambiguous=True, nonexistent="shift_forward")
    if len(keys) == 0:
        return pd.DataFrame({f: pd.Series(dtype=np.float64) for f in FIELDS},
                            index=pd.DatetimeIndex([], tz=timezone))
    frame = df[list(FIELDS)].reset_index(drop=True)
    grouped = frame.groupby(keys, sort=True)
    out = pd.DataFrame({
        "open": grouped["open"].first(),
        "high": grouped["high"].max(),
        "low": grouped["low"].min(),
        "close": grouped["close"].last(),
        "volume": grouped["volume"].sum(min_count=1),
    })
    out.index = stamps(out.index.to_numpy()).as_unit(index.unit)
    out = out.astype(np.float64)
    out.attrs.update(df.attrs)     # what loading noted (bars skipped) stays with the bars
    return out


# Calendars whose regular session contains 09:30-16:00 New York time on every full trading day.
_NEW_YORK_DAY = frozenset({"NYSE", "XNYS", "NASDAQ", "XNAS", "CBOE_Index_Options", "CBOE_Equity_Options"})


def outside_regular_hours(df: pd.DataFrame, calendar: str, timezone: str = "America/New_York") -> np.ndarray:
    """Which bars start outside the calendar's regular sessions (pre-market, after hours,
    breaks, days it is closed): the bars `data.session: regular` leaves out.

    For the New York exchanges' calendars, bars that all start between 09:30 and 16:00 New
    York time on weekdays are taken as inside without loading the exchange calendar (about
    0.3 s): such a file's bars on a holiday or after an early close are not seen."""
    if len(df) == 0:
        return np.zeros(0, dtype=bool)
    if calendar in _NEW_YORK_DAY:
        wall = df.index.tz_convert("America/New_York").tz_localize(None).as_unit("s").asi8   # local wall seconds
        minute = wall // 60 % 1440
        weekday = (wall // 86400 + 3) % 7                 # 1970-01-01 was a Thursday: Monday is 0
        if minute.min() >= 570 and minute.max() < 960 and weekday.max() < 5:
            return np.zeros(len(df), dtype=bool)
    index = df.index.tz_convert(timezone)
    _, _, inside = _calendar_sessions(index, _utc_ns(index), timezone, calendar)
    return ~inside


def _calendar_sessions(index, t_ns, timezone, calendar):
    """Per bar: its session date, the session's open (UTC ns) and whether it is in regular hours."""
    import pandas_market_calendars as mcal

    cal = mcal.get_calendar(calendar)
    first, last = index[0].date(), index[-1].date()
    schedule = cal.schedule(start_date=first - _dt.timedelta(days=3), end_date=last + _dt.timedelta(days=3))
    opens = _utc_ns(pd.DatetimeIndex(schedule["market_open"]))
    closes = _utc_ns(pd.DatetimeIndex(schedule["market_close"]))
    pos = np.searchsorted(opens, t_ns, side="right") - 1
    safe = np.clip(pos, 0, max(len(opens) - 1, 0))
    inside = (pos >= 0) & (t_ns < closes[safe])
    if "break_start" in schedule and "break_end" in schedule:
        b0 = _utc_ns(pd.DatetimeIndex(schedule["break_start"]))
        b1 = _utc_ns(pd.DatetimeIndex(schedule["break_end"]))
        inside &= ~((t_ns >= b0[safe]) & (t_ns < b1[safe]))
    days = schedule.index.to_numpy().astype("datetime64[D]")
    return days[safe], opens[safe], inside


def _source_seconds(index: pd.DatetimeIndex) -> float | None:
    """The data's own bar size: the most common gap between bars (None for a single bar)."""
    if len(index) < 2:
        return None
    gaps = np.diff(_utc_ns(index))
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    seconds = values[np.argmax(counts)] / 1e9
    # Daily bars have 1-day gaps, or 23/25 hours across a clock change, or 3 days over weekends.
    if seconds >= 20 * 3600:
        seconds = 86400.0 if seconds < 5 * 86400 else seconds
    return float(seconds)


def _describe(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size) % 1 < 1e-9:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _utc_ns(index: pd.DatetimeIndex) -> np.ndarray:
    return pd.DatetimeIndex(index).tz_convert("UTC").tz_localize(None).to_numpy().astype(
        "datetime64[ns]").astype(np.int64)

"""Option chains: one underlying's listed options at one quote time, as numpy columns.

An `OptionChain` is what strike selection, spreads and greeks work on. It is built three ways:
from a vendor file (`load_chains`: the DeltaNeutral / HistoricalOptionData "L2" layout and the
iVolatility layout, recognised by their headers), from a live broker, or made up from an
underlying price (`synthesize`) for backtests that have no option history.

Conventions (the engine's, whatever the source):
  mid       (bid + ask) / 2 only when both sides are finite, bid > 0, ask > 0 and bid <= ask;
            NaN otherwise. A zero bid means nobody buys: half the ask is not a price, so it
            never becomes one (FIELD_NOTES: NaN quotes must never become prices).
  greeks    per unit of underlying in engine.market.options units: theta per year, vega and
            rho per 1.00. Loaders convert vendor units (iVolatility: vega and rho per point,
            theta per day). Vendor values are kept as given otherwise; NaN where missing,
            including iVolatility's "no value" marker (iv -1 with zero greeks).
  time      T = (expiry moment - quote time) / 365 days, never negative (greeks of loaded
            chains); synthesised chains are priced on trading time instead (the regular session
            time left, in years of 252 sessions: `OptionChain.trading_years_to_expiry`), so a
            0DTE option at the open has a day's variance left, not 6.5 of 8,760 hours'. The expiry moment is
            the expiry date at 16:00 America/New_York (PM-settled: SPXW, SPXPM, equity
            options) or 09:30 (AM-settled trading classes, `AM_SETTLED_CLASSES`: SPX monthlies,
            VIX, NDX, RUT, whose settlement value comes from the opening prints).
  EOD files A quote date means that date at 16:00 America/New_York (the close of the
            underlying's regular session), as a tz-aware pandas Timestamp.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from engine.diagnostics import DiagnosticError, error
from engine.market import options as bsm

__all__ = [
    "OptionChain", "load_chains", "synthesize", "Skew", "Spread", "AM_SETTLED_CLASSES",
    "QUOTE_TIMEZONE", "EOD_TIME", "LAYOUTS_HINT",
]

QUOTE_TIMEZONE = "America/New_York"
EOD_TIME = _dt.time(16, 0)
PM_SETTLE = _dt.time(16, 0)
AM_SETTLE = _dt.time(9, 30)
AM_SETTLED_CLASSES = frozenset({"SPX", "VIX", "NDX", "RUT"})
_YEAR_SECONDS = 365.0 * 86400.0
SESSION_OPEN = _dt.time(9, 30)      # the regular session synthesised chains count time in
SESSION_CLOSE = _dt.time(16, 0)
SESSIONS_PER_YEAR = 252.0


@functools.lru_cache(maxsize=256)
def _holidays(first: _dt.date, last: _dt.date) -> tuple:
    """NYSE's weekday holidays from `first` to `last`, as numpy days (for busday counts)."""
    from .calendars import get_calendar

    if last < first:
        return ()
    return tuple(np.datetime64(d, "D") for d in get_calendar("NYSE").holidays(first, last))


def _seconds_of(t: _dt.time) -> float:
    return t.hour * 3600.0 + t.minute * 60.0 + t.second
_GREEKS = ("iv", "delta", "gamma", "theta", "vega", "rho")


def _as_day(value) -> np.datetime64:
    if isinstance(value, pd.Timestamp):
        value = value.date()
    elif isinstance(value, _dt.datetime):
        value = value.date()
    return np.datetime64(value, "D")


# ----------------------------------------------------------------------------------- the chain

class OptionChain:
    """One underlying's options at one quote time; every per-option field is a numpy array.

    Fields: underlying (str), quote_time (tz-aware Timestamp), underlying_price (float),
    multiplier (float), style ('european', 'american' or ''); per option: expiry
    (datetime64[D]), strike, is_call (bool; `right` gives 'C'/'P'), bid, ask, mid (derived,
    see the module doc), iv, delta, gamma, theta, vega, rho, forward (the vendor's forward for
    that expiry, NaN if none), volume, open_interest (float, NaN if unknown), trading_class
    (str) and am_settled (bool).
    """

    _ARRAYS = ("expiry", "strike", "is_call", "bid", "ask", "iv", "delta", "gamma", "theta",
               "vega", "rho", "forward", "volume", "open_interest", "trading_class", "am_settled")

    def __init__(self, *, underlying: str, quote_time, underlying_price: float, expiry, strike,
                 right, bid=None, ask=None, iv=None, delta=None, gamma=None, theta=None, vega=None,
                 rho=None, forward=None, volume=None, open_interest=None, trading_class=None,
                 am_settled=None, multiplier: float = 100.0, style: str = ""):
        quote_time = pd.Timestamp(quote_time)
        if quote_time.tzinfo is None:
            raise ValueError("quote_time must be timezone-aware")
        self.underlying = str(underlying)
        self.quote_time = quote_time
        self.underlying_price = float(underlying_price)
        self.multiplier = float(multiplier)
        self.style = style
        self.expiry = np.asarray(expiry).astype("datetime64[D]").reshape(-1)
        n = self.expiry.shape[0]

        def floats(values):
            if values is None:
                return np.full(n, np.nan)
            out = np.asarray(values, dtype=np.float64).reshape(-1)
            return np.broadcast_to(out, (n,)).copy() if out.shape != (n,) else out

        self.strike = floats(strike)
        self.is_call = np.broadcast_to(bsm.is_call(right), (n,)).copy()
        for name, values in (("bid", bid), ("ask", ask), ("iv", iv), ("delta", delta),
                             ("gamma", gamma), ("theta", theta), ("vega", vega), ("rho", rho),
                             ("forward", forward), ("volume", volume),
                             ("open_interest", open_interest)):
            setattr(self, name, floats(values))
        if trading_class is None:
            trading_class = self.underlying
        self.trading_class = np.broadcast_to(np.asarray(trading_class, dtype=object), (n,)).copy()
        if am_settled is None:
            am_settled = np.isin(self.trading_class.astype(str), list(AM_SETTLED_CLASSES))
        self.am_settled = np.broadcast_to(np.asarray(am_settled, dtype=bool), (n,)).copy()
        self.mid = _mid(self.bid, self.ask)
        self.time = "calendar"   # what iv and greeks are per year of: "calendar" or "trading" (synthesised)

    # -------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return self.expiry.shape[0]

    def __repr__(self) -> str:
        return (f"OptionChain({self.underlying} @ {self.underlying_price:g}, {self.quote_time}, "
                f"{len(self)} options, {len(self.expiries())} expiries)")

    @property
    def right(self) -> np.ndarray:
        """'C' or 'P' per option."""
        return np.where(self.is_call, "C", "P")

    @property
    def spread(self) -> np.ndarray:
        """ask - bid where the quote has a mid, else NaN."""
        return np.where(np.isfinite(self.mid), self.ask - self.bid, np.nan)

    @property
    def quote_date(self) -> _dt.date:
        return self.quote_time.tz_convert(QUOTE_TIMEZONE).date()

    def take(self, which) -> "OptionChain":
        """A chain of the options picked by a boolean mask or an index array."""
        which = np.asarray(which)
        new = object.__new__(OptionChain)
        new.__dict__.update(self.__dict__)
        for name in self._ARRAYS + ("mid",):
            setattr(new, name, getattr(self, name)[which])
        return new

    def expiries(self) -> np.ndarray:
        """Distinct expiry dates, ascending (datetime64[D])."""
        return np.unique(self.expiry)

    def for_expiry(self, date) -> "OptionChain":
        return self.take(self.expiry == _as_day(date))

    def calls(self) -> "OptionChain":
        return self.take(self.is_call)

    def puts(self) -> "OptionChain":
        return self.take(~self.is_call)

    def select(self, *, expiry=None, right=None, strike_min=None, strike_max=None,
               delta_min=None, delta_max=None, trading_class=None, quoted: bool = False,
               dte_min=None, dte_max=None) -> "OptionChain":
        """Options passing every filter given. Deltas compare by absolute value (a 0.10-delta
        put has delta -0.10); `quoted` keeps options with a mid; dte counts calendar days from
        the quote date."""
        keep = np.ones(len(self), dtype=bool)
        if expiry is not None:
            keep &= self.expiry == _as_day(expiry)
        if right is not None:
            keep &= self.is_call == bool(bsm.is_call(right))
        if strike_min is not None:
            keep &= self.strike >= strike_min
        if strike_max is not None:
            keep &= self.strike <= strike_max
        absdelta = np.abs(self.delta)
        if delta_min is not None:
            keep &= absdelta >= delta_min
        if delta_max is not None:
            keep &= absdelta <= delta_max
        if trading_class is not None:
            keep &= self.trading_class == trading_class
        if quoted:
            keep &= np.isfinite(self.mid)
        if dte_min is not None or dte_max is not None:
            dte = self.days_to_expiry()
            if dte_min is not None:
                keep &= dte >= dte_min
            if dte_max is not None:
                keep &= dte <= dte_max
        return self.take(keep)

    def nearest_strike(self, strike: float) -> int:
        """Row of the option whose strike is closest to `strike` (first on ties); -1 if empty."""
        if len(self) == 0:
            return -1
        return int(np.argmin(np.abs(self.strike - strike)))

    def nearest_delta(self, target: float) -> int:
        """Row whose |delta| is closest to |target| among options with a delta; -1 if none."""
        gap = np.abs(np.abs(self.delta) - abs(target))
        if not np.isfinite(gap).any():
            return -1
        return int(np.nanargmin(gap))

    def days_to_expiry(self) -> np.ndarray:
        """Calendar days from the quote date to each expiry date."""
        return (self.expiry - np.datetime64(self.quote_date, "D")).astype(np.int64)

    def years_to_expiry(self) -> np.ndarray:
        """T in years (365-day) from the quote time to each option's settlement moment, >= 0."""
        out = np.empty(len(self))
        quote_ns = self.quote_time.value
        for day in np.unique(self.expiry):
            rows = self.expiry == day
            for am in (False, True):
                sel = rows & (self.am_settled == am)
                if sel.any():
                    moment = pd.Timestamp.combine(pd.Timestamp(day).date(),
                                                  AM_SETTLE if am else PM_SETTLE)
                    ns = moment.tz_localize(QUOTE_TIMEZONE).value
                    out[sel] = max(ns - quote_ns, 0) / 1e9 / _YEAR_SECONDS
        return out

    def model_years_to_expiry(self) -> np.ndarray:
        """T on the clock the chain's iv and greeks are stated in: trading time for synthesised
        chains, calendar time for loaded ones."""
        return self.trading_years_to_expiry() if self.time == "trading" else self.years_to_expiry()

    def trading_years_to_expiry(self) -> np.ndarray:
        """T in trading years from the quote time to each option's settlement moment, >= 0: the
        regular-session time left (09:30-16:00 America/New_York, Monday to Friday) divided by
        a year of SESSIONS_PER_YEAR sessions. This is the variance-time model the synthesised
        chains are priced on: a day's variance accrues while the market trades, so an option
        expiring at today's close has the rest of today's session left (6.5 h at the open, a
        full trading day, 1/252 of a year), not 6.5 of 8,760 calendar hours. NYSE holidays are
        not sessions (the Friday before a Monday holiday expiry has one session to go, not two);
        an early close still counts as a whole session."""
        out = np.empty(len(self))
        now = self.quote_time.tz_convert(QUOTE_TIMEZONE)
        today = np.datetime64(now.date(), "D")
        holidays = _holidays(now.date(), pd.Timestamp(self.expiry.max()).date()) if len(self) else ()
        open_s = _seconds_of(SESSION_OPEN)
        close_s = _seconds_of(SESSION_CLOSE)
        session = close_s - open_s
        clock = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
        weekday = bool(np.is_busday(today, holidays=holidays))
        for day in np.unique(self.expiry):
            rows = self.expiry == day
            for am in (False, True):
                sel = rows & (self.am_settled == am)
                if not sel.any():
                    continue
                settle = _seconds_of(AM_SETTLE if am else PM_SETTLE)
                if day < today:
                    out[sel] = 0.0
                    continue
                if day == today:
                    left = max(0.0, min(settle, close_s) - max(clock, open_s)) if weekday else 0.0
                else:
                    left = max(0.0, close_s - max(clock, open_s)) if weekday else 0.0
                    between = int(np.busday_count(today + 1, day, holidays=holidays))   # whole sessions between
                    left += between * session
                    if np.is_busday(day, holidays=holidays):
                        left += max(0.0, min(settle, close_s) - open_s)  # the expiry day's part
                out[sel] = left / session / SESSIONS_PER_YEAR
        return out

    # -------------------------------------------------------------------------- checks
    def problems(self) -> list[tuple[int, str]]:
        """(row, message) for every quote or field that cannot be right, in row order."""
        found: list[tuple[int, str]] = []

        def flag(mask, message):
            for i in np.flatnonzero(mask):
                found.append((int(i), message))

        with np.errstate(invalid="ignore"):
            flag(self.bid < 0, "negative bid")
            flag(self.ask < 0, "negative ask")
            flag(self.bid > self.ask, "bid above ask (crossed quote)")
            flag(~(self.strike > 0), "strike is not a positive number")
            flag(self.iv < 0, "negative implied volatility")
            flag(np.abs(self.delta) > 1, "delta outside [-1, 1]")
            flag(self.is_call & (self.delta < 0), "call with a negative delta")
            flag(~self.is_call & (self.delta > 0), "put with a positive delta")
            flag(self.gamma < 0, "negative gamma")
            flag(self.expiry < np.datetime64(self.quote_date, "D"), "expiry before the quote date")
        if not (self.underlying_price > 0):
            found.append((-1, f"underlying price {self.underlying_price} is not positive"))
        return sorted(found)

    # -------------------------------------------------------------------------- greeks
    def with_greeks(self, r: float, q=None, *, years=None, overwrite: bool = False) -> "OptionChain":
        """A copy with missing iv and greeks filled from the mid through the BSM solver.

        q is the dividend yield; None takes it from the chain's forward where there is one
        (q = r - ln(F / S) / T) and 0 elsewhere. `years` overrides T (an array, or a callable
        taking the chain). With overwrite=True every iv and greek is recomputed from the mid;
        options with no mid keep NaN there. An iv the solver cannot give (price outside the
        no-arbitrage bounds, expired) stays NaN, and so do the greeks that would need it.
        """
        T = self.model_years_to_expiry() if years is None else (
            np.asarray(years(self), dtype=float) if callable(years) else
            np.broadcast_to(np.asarray(years, dtype=float), (len(self),)))
        S = self.underlying_price
        if q is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                implied = r - np.log(self.forward / S) / T
            q = np.where(np.isfinite(implied), implied, 0.0)
        new = self.take(np.arange(len(self)))
        need_iv = np.ones(len(self), bool) if overwrite else np.isnan(self.iv)
        iv = self.iv.copy()
        if need_iv.any():
            qa = np.broadcast_to(np.asarray(q, dtype=float), (len(self),))
            iv[need_iv] = bsm.implied_volatility(self.mid[need_iv], S, self.strike[need_iv],
                                                 T[need_iv], r, qa[need_iv], self.is_call[need_iv])
        usable = np.isfinite(iv)
        g = bsm.greeks(S, self.strike, T, r, q, np.where(usable, iv, np.nan), self.is_call)
        new.iv = iv
        for name in ("delta", "gamma", "theta", "vega", "rho"):
            old = getattr(self, name)
            fill = np.ones(len(self), bool) if overwrite else np.isnan(old)
            setattr(new, name, np.where(fill, getattr(g, name), old))
        return new

    def to_frame(self) -> pd.DataFrame:
        """The per-option fields as a DataFrame (one row per option)."""
        data = {"expiry": self.expiry, "strike": self.strike, "right": self.right,
                "bid": self.bid, "ask": self.ask, "mid": self.mid}
        for name in _GREEKS + ("forward", "volume", "open_interest", "trading_class", "am_settled"):
            data[name] = getattr(self, name)
        return pd.DataFrame(data)


def _mid(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0) & (bid <= ask)
    return np.where(ok, 0.5 * (bid + ask), np.nan)


# ------------------------------------------------------------------------------- file layouts

@dataclass(frozen=True)
class _Layout:
    name: str
    required: dict[str, str]        # role -> header name (normalised)
    optional: dict[str, str]


def _norm(name: str) -> str:
    return name.strip().strip('"').strip().lower()


_L2 = _Layout("L2 (DeltaNeutral / HistoricalOptionData)", {
    "underlying": "underlying", "underlying_price": "underlying_last", "right": "type",
    "expiry": "expiration", "date": "quotedate", "strike": "strike", "bid": "bid", "ask": "ask",
}, {
    "symbol": "optionroot", "volume": "volume", "open_interest": "openinterest",
    "iv": "impliedvol", "delta": "delta", "gamma": "gamma", "theta": "theta", "vega": "vega",
})
_IVOL = _Layout("iVolatility", {
    "underlying": "symbol", "underlying_price": "stock_price_close", "right": "call/put",
    "expiry": "option_expiration", "date": "date", "strike": "strike", "bid": "bid", "ask": "ask",
}, {
    "symbol": "option_symbol", "style": "style", "volume": "volume",
    "open_interest": "open_interest", "iv": "iv", "delta": "delta", "gamma": "gamma",
    "theta": "theta", "vega": "vega", "rho": "rho", "forward": "forward_price",
})
_LAYOUTS = (_L2, _IVOL)
# Vendor unit -> engine unit (theta per year, vega and rho per 1.00).
_SCALE = {_L2.name: {}, _IVOL.name: {"theta": 365.0, "vega": 100.0, "rho": 100.0}}

LAYOUTS_HINT = "\n".join(
    ["accepted option-chain layouts (header names, any order, extra columns ignored):"]
    + [f"  {lay.name}: {','.join(lay.required.values())}"
       f" [+ {','.join(lay.optional.values())}]" for lay in _LAYOUTS])

_OCC = re.compile(r"^\s*([A-Z0-9]+?)\s*\d{6}[CP]\d{8}\s*$")


class _Table:
    """A CSV read as text columns, remembering each row's line and the raw text for columns."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                reader = csv.reader(fh)
                try:
                    self.header = next(reader)
                except StopIteration:
                    raise DiagnosticError([error(str(path), 1, 1, "the file is empty", LAYOUTS_HINT)])
                rows, lines = [], []
                for row in reader:
                    if not row or all(not f.strip() for f in row):
                        continue
                    if len(row) != len(self.header):
                        raise DiagnosticError([error(
                            str(path), reader.line_num, 1,
                            f"line has {len(row)} fields but the header on line 1 names "
                            f"{len(self.header)}", "every row needs one field per header name")])
                    rows.append(row)
                    lines.append(reader.line_num)
        except FileNotFoundError:
            raise DiagnosticError([error(str(path), 0, 0, "no such file")]) from None
        except UnicodeDecodeError as exc:
            raise DiagnosticError([error(str(path), 0, 0, f"not a UTF-8 text file: {exc}")]) from None
        self.rows = rows
        self.lines = np.asarray(lines, dtype=np.int64)
        self.names = [_norm(h) for h in self.header]

    def column(self, index: int) -> np.ndarray:
        return np.array([row[index] for row in self.rows], dtype=object)

    def where(self, row: int, index: int) -> tuple[int, int]:
        """(line, 1-based character column) of field `index` in data row `row`."""
        line = int(self.lines[row])
        with open(self.path, encoding="utf-8-sig", newline="") as fh:
            for number, text in enumerate(fh, start=1):
                if number == line:
                    return line, _field_offset(text.rstrip("\r\n"), index) + 1
        return line, 1


def _field_offset(text: str, index: int) -> int:
    """0-based offset of the index-th CSV field in `text` (quotes respected)."""
    field, quoted = 0, False
    for pos, ch in enumerate(text):
        if field == index:
            return pos
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            field += 1
    return len(text)


def _detect(table: _Table) -> tuple[_Layout, dict[str, int]]:
    for layout in _LAYOUTS:
        if all(h in table.names for h in layout.required.values()):
            roles = {role: table.names.index(h) for role, h in layout.required.items()}
            roles.update({role: table.names.index(h) for role, h in layout.optional.items()
                          if h in table.names})
            return layout, roles
    found = ",".join(h.strip() for h in table.header)
    raise DiagnosticError([error(str(table.path), 1, 1,
                                 f"unknown option-chain layout; columns found: {found}",
                                 LAYOUTS_HINT)])


_MISSING = {"", "nan", "na", "n/a", "null", "none", "#n/a"}


def _numbers(table: _Table, index: int, what: str) -> np.ndarray:
    text = table.column(index)
    stripped = np.array([t.strip() for t in text], dtype=object)
    values = pd.to_numeric(pd.Series(stripped, dtype=object), errors="coerce").to_numpy(np.float64)
    bad = np.isnan(values)
    if bad.any():
        missing = np.array([s.lower() in _MISSING for s in stripped[bad]])
        candidates = np.flatnonzero(bad)[~missing]
        if candidates.size:
            row = int(candidates[0])
            line, col = table.where(row, index)
            raise DiagnosticError([error(str(table.path), line, col,
                                         f"{text[row]!r} is not a number (column {table.header[index].strip()!r})",
                                         f"{what} must be a plain number such as 12.35")])
    return values


def _dates(table: _Table, index: int) -> np.ndarray:
    text = table.column(index)
    uniq, inverse = np.unique(text, return_inverse=True)
    parsed = pd.to_datetime(pd.Series(uniq).str.strip(), format="%m/%d/%Y", errors="coerce")
    if parsed.isna().any():
        bad_value = uniq[int(np.flatnonzero(parsed.isna().to_numpy())[0])]
        row = int(np.flatnonzero(text == bad_value)[0])
        line, col = table.where(row, index)
        raise DiagnosticError([error(str(table.path), line, col,
                                     f"{bad_value!r} is not a date (column {table.header[index].strip()!r})",
                                     "dates in these files are MM/DD/YYYY, e.g. 01/31/2018")])
    return parsed.to_numpy().astype("datetime64[D]")[inverse]


def _rights(table: _Table, index: int) -> np.ndarray:
    text = np.char.lower(np.char.strip(table.column(index).astype(str)))
    calls = (text == "call") | (text == "c")
    puts = (text == "put") | (text == "p")
    bad = ~(calls | puts)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line, col = table.where(row, index)
        raise DiagnosticError([error(str(table.path), line, col,
                                     f"{table.rows[row][index]!r} is not an option right "
                                     f"(column {table.header[index].strip()!r})",
                                     "write call/put or C/P")])
    return calls


def load_chains(path, *, underlying: str | None = None, multiplier: float = 100.0,
                am_classes: Iterable[str] = AM_SETTLED_CLASSES) -> dict[_dt.date, OptionChain]:
    """End-of-day chain snapshots from a vendor CSV, one `OptionChain` per quote date.

    The layout is recognised from the header (see LAYOUTS_HINT). A file holding several
    underlyings needs `underlying=` to say which one. The trading class comes from each
    option's OCC symbol (SPXW180131C02700000 -> SPXW), else the underlying. Bad numbers,
    dates and rights raise DiagnosticError naming the file, line and column.
    """
    path = Path(path)
    table = _Table(path)
    layout, roles = _detect(table)
    und = np.array([u.strip().upper() for u in table.column(roles["underlying"])], dtype=object)
    found = sorted(set(und))
    if underlying is None:
        if len(found) > 1:
            line, col = table.where(int(np.flatnonzero(und != und[0])[0]), roles["underlying"])
            raise DiagnosticError([error(str(path), line, col,
                                         f"the file holds {len(found)} underlyings: {', '.join(found)}",
                                         "pass underlying=... to load one of them")])
    else:
        if underlying.upper() not in found:
            raise DiagnosticError([error(str(path), 0, 0,
                                         f"no rows for underlying {underlying!r}; the file has {', '.join(found)}")])
    keep = und == (underlying.upper() if underlying else (found[0] if found else ""))
    if not keep.all():
        table.rows = [row for row, k in zip(table.rows, keep) if k]
        table.lines = table.lines[keep]
        und = und[keep]
    if not table.rows:
        return {}
    dates = _dates(table, roles["date"])
    expiry = _dates(table, roles["expiry"])
    calls = _rights(table, roles["right"])
    cols = {"strike": _numbers(table, roles["strike"], "a strike"),
            "underlying_price": _numbers(table, roles["underlying_price"], "an underlying price"),
            "bid": _numbers(table, roles["bid"], "a bid"), "ask": _numbers(table, roles["ask"], "an ask")}
    scale = _SCALE[layout.name]
    for role in ("volume", "open_interest") + _GREEKS + ("forward",):
        if role in roles:
            cols[role] = _numbers(table, roles[role], f"{role.replace('_', ' ')}") * scale.get(role, 1.0)
    if layout is _IVOL and "iv" in cols:
        # iVolatility writes iv -1 (and zero greeks) where it has no value: that is missing.
        sentinel = cols["iv"] == -1.0
        for role in _GREEKS:
            if role in cols:
                cols[role] = np.where(sentinel, np.nan, cols[role])
    if "symbol" in roles:
        symbols = table.column(roles["symbol"])
        classes = np.array([(m.group(1) if (m := _OCC.match(s)) else u) for s, u in zip(symbols, und)],
                           dtype=object)
    else:
        classes = und.copy()
    am = np.isin(classes.astype(str), list(am_classes))
    style = ""
    if "style" in roles:
        first = table.rows[0][roles["style"]].strip().upper()
        style = {"E": "european", "A": "american"}.get(first, "")
    chains: dict[_dt.date, OptionChain] = {}
    for day in np.unique(dates):
        sel = dates == day
        date = pd.Timestamp(day).date()
        quote_time = pd.Timestamp.combine(date, EOD_TIME).tz_localize(QUOTE_TIMEZONE)
        prices = cols["underlying_price"][sel]
        chains[date] = OptionChain(
            underlying=str(und[sel][0]), quote_time=quote_time,
            underlying_price=float(prices[np.isfinite(prices)][0]) if np.isfinite(prices).any() else np.nan,
            expiry=expiry[sel], strike=cols["strike"][sel], right=calls[sel],
            bid=cols["bid"][sel], ask=cols["ask"][sel],
            **{k: cols[k][sel] for k in _GREEKS + ("forward", "volume", "open_interest") if k in cols},
            trading_class=classes[sel], am_settled=am[sel], multiplier=multiplier, style=style)
    return chains


# ------------------------------------------------------------------------------- synthesis

@dataclass(frozen=True)
class Skew:
    """Volatility smile as a multiple of the at-the-money volatility.

    With z = ln(K / F) / (atm sqrt(T)) (log-moneyness in standard deviations),
        sigma(K) = atm * (1 + put * width * tanh(-z / width))    for z < 0 (puts' side)
        sigma(K) = atm * (1 - call * width * tanh(z / width))    for z >= 0
    clipped below at `floor` x atm. Near the money this is linear in log-moneyness with slope
    `put` (per standard deviation) on the downside and the smaller `call` on the upside, as
    index smiles are; beyond about `width` standard deviations it flattens (ratio
    1 + put * width at most), because a smile that keeps rising linearly makes far puts dearer
    than nearer ones (a vertical-spread arbitrage). Defaults: a 25-delta put about 1.25 x ATM,
    a 25-delta call about 0.9 x ATM, roughly SPX in calm markets. Skew(0, 0) is flat.
    """

    put: float = 0.40
    call: float = 0.15
    width: float = 2.0
    floor: float = 0.5

    def __call__(self, z: np.ndarray) -> np.ndarray:
        w = self.width
        ratio = np.where(z < 0, 1.0 + self.put * w * np.tanh(-z / w), 1.0 - self.call * w * np.tanh(z / w))
        return np.maximum(ratio, self.floor)


@dataclass(frozen=True)
class Spread:
    """Bid/ask width around the model mid.

        width = max(min_width, pct * mid) * (1 + wing * max(|z| - 1, 0))
    so cheap options pay at least `min_width` (a wide spread relative to their price) and
    options beyond one standard deviation out of the money widen further. The bid is rounded
    down and the ask up to the tick for its price (see `synthesize`); the bid is never below 0,
    and a bid that rounds to 0 is a no-bid quote (mid NaN).
    """

    pct: float = 0.03
    min_width: float = 0.10
    wing: float = 0.25

    def width(self, mid: np.ndarray, z: np.ndarray) -> np.ndarray:
        base = np.maximum(self.min_width, self.pct * mid)
        return base * (1.0 + self.wing * np.maximum(np.abs(z) - 1.0, 0.0))


def _tick_for(price: np.ndarray, tick) -> np.ndarray:
    if isinstance(tick, (int, float)):
        return np.full(price.shape, float(tick))
    threshold, small, large = tick
    return np.where(price >= threshold, large, small)


def _round(price: np.ndarray, tick, up: bool) -> np.ndarray:
    step = _tick_for(price, tick)
    units = price / step
    # A hair of tolerance so 1.15 / 0.05 = 22.999999999999996 still counts as 23 ticks.
    units = np.ceil(units - 1e-9) if up else np.floor(units + 1e-9)
    return np.round(units * step, 10)


def synthesize(underlying_price: float, quote_time, expiries: Sequence, strike_step: float, *,
               multiplier: float = 100.0, iv_source: float | Callable = 0.20,
               skew: Skew | None = Skew(), spread: Spread = Spread(), r: float = 0.0,
               q: float = 0.0, strike_range: float = 0.25, strikes_each_side: int | None = None,
               tick=(3.0, 0.01, 0.05), underlying: str = "SPX", trading_class: str | None = None,
               am_settled: bool = False, style: str = "european") -> OptionChain:
    """A chain made from an underlying price: strikes on the grid, a smile, BSM prices, quotes.

    Strikes are the multiples of `strike_step` within +-strike_range (a fraction) of the price,
    or `strikes_each_side` grid strikes below and above the at-the-money one; every strike has
    a call and a put for each expiry. `iv_source` is the at-the-money volatility: a number, or
    a callable of T (years, an array) for a term structure, e.g. lambda T: vix / 100. `skew`
    shapes the smile (Skew; None for flat), BSM gives the theoretical mid, `spread` the quote
    width, and quotes are rounded outward to the tick: `tick` is one number or (threshold,
    below, at_or_above), by default 0.01 below 3.00 and 0.05 from 3.00 up (SPX-style). iv and
    greeks are the model's at the skewed volatility; mid is the quoted one (module rule).
    """
    S = float(underlying_price)
    quote_time = pd.Timestamp(quote_time)
    if quote_time.tzinfo is None:
        quote_time = quote_time.tz_localize(QUOTE_TIMEZONE)
    atm_strike = round(S / strike_step) * strike_step
    if strikes_each_side is not None:
        grid = atm_strike + strike_step * np.arange(-strikes_each_side, strikes_each_side + 1)
    else:
        lo = math.ceil(S * (1 - strike_range) / strike_step)
        hi = math.floor(S * (1 + strike_range) / strike_step)
        grid = strike_step * np.arange(lo, hi + 1)
    grid = np.round(grid[grid > 0], 10)
    days = np.array([_as_day(e) for e in expiries], dtype="datetime64[D]")
    expiry = np.repeat(days, 2 * grid.size)
    strike = np.tile(np.repeat(grid, 2), days.size)
    is_call = np.tile(np.array([True, False]), days.size * grid.size)
    chain = OptionChain(underlying=underlying, quote_time=quote_time, underlying_price=S,
                        expiry=expiry, strike=strike, right=is_call,
                        trading_class=trading_class or underlying, am_settled=am_settled,
                        multiplier=multiplier, style=style)
    chain.time = "trading"
    T = chain.trading_years_to_expiry()
    atm = np.asarray(iv_source(T) if callable(iv_source) else np.full(T.shape, float(iv_source)),
                     dtype=float)
    F = S * np.exp((r - q) * T)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(T > 0, np.log(strike / F) / (atm * np.sqrt(T)), 0.0)
    sigma = atm * (skew(z) if skew is not None else 1.0)
    g = bsm.greeks(S, strike, T, r, q, sigma, is_call)
    theo = g.price
    half = 0.5 * spread.width(theo, z)
    bid = np.maximum(_round(np.maximum(theo - half, 0.0), tick, up=False), 0.0)
    ask = _round(theo + half, tick, up=True)
    ask = np.maximum(ask, _tick_for(ask, tick))              # nothing offers below one tick
    chain.bid, chain.ask = bid, ask
    chain.mid = _mid(bid, ask)
    chain.iv = np.where(T > 0, sigma, np.nan)
    for name in ("delta", "gamma", "theta", "vega", "rho"):
        setattr(chain, name, getattr(g, name))
    return chain

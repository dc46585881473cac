"""The equity curve of a run, from the ledger's records: cash and every position marked at each
bar's close (one symbol at a time where it can, the union of all symbols' bars otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..market.series import SymbolBars
from ..portfolio.ledger import Ledger


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for int64 without its hash path (slow on large arrays with numpy 2.x): sort,
    then keep each value that differs from its predecessor."""
    values = np.sort(values, kind="stable")
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


@dataclass
class LedgerColumns:
    """A ledger's fills and trades as arrays, what the equity curve needs (a fast path builds
    them directly; `ledger_columns` extracts them from any ledger)."""

    fill_symbol: list            # per fill: its symbol (a combo's ledger key for combo fills)
    fill_bar: np.ndarray
    fill_cash: np.ndarray        # how each fill moved cash
    trade_symbol: list
    trade_entry_bar: np.ndarray
    trade_exit_bar: np.ndarray
    trade_units: np.ndarray      # signed quantity
    trade_entry_price: np.ndarray
    trade_contract: list | None = None   # per trade: its futures contract where the bars are per contract


def ledger_columns(ledger: Ledger, bars: dict[str, SymbolBars]) -> LedgerColumns:
    cols = getattr(ledger, "columns", None)
    if callable(cols):      # the fast path builds its records when they are first read
        cols = cols()
    if cols is not None:
        return cols
    fills = ledger.fills
    trades = [t for t in ledger.trades if not t.legs]   # option combos are valued from their own marks
    return LedgerColumns([f.symbol for f in fills], np.array([f.bar for f in fills], dtype=np.int64),
                         np.array(_cash_deltas(ledger, bars), dtype=np.float64),
                         [t.symbol for t in trades], np.array([t.entry_bar for t in trades], dtype=np.int64),
                         np.array([t.exit_bar for t in trades], dtype=np.int64),
                         np.array([(1 if t.side == "long" else -1) * t.quantity for t in trades], dtype=np.float64),
                         np.array([t.entry_price for t in trades], dtype=np.float64),
                         [t.contract for t in trades] if any(t.contract for t in trades) else None)


def equity_curve(ledger: Ledger, bars: dict[str, SymbolBars], initial: float,
                 start: pd.Timestamp | None = None, combos: list | None = None,
                 combo_symbol: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Cash and equity at every bar close of every symbol (the union timeline), vectorised.

    A position counts from its entry fill to its exit fill: held at the closes of bars
    [entry bar, exit bar). Stock positions count at market value, futures at unrealised P&L.
    """
    if not bars:
        return np.empty(0, np.int64), np.empty(0), np.empty(0), {}
    if len(bars) == 1:
        times = next(iter(bars.values())).end   # one symbol: already sorted and unique
    else:
        times = sorted_unique(np.concatenate([b.end for b in bars.values()]))
    if start is not None:
        times = times[int(np.searchsorted(times, int(start.value), side="right")):]
    cols = ledger_columns(ledger, bars)
    cols, positions = _at_last_close(cols, ledger.positions, bars, combo_symbol or {})
    # positions kept under a key of their own (a second owner's in one symbol: positions_per_symbol)
    apart = any(k != getattr(p, "symbol", k) for k, p in positions.items() if k not in (combo_symbol or {}))
    if len(bars) == 1 and not combos and not combo_symbol and not apart:
        curve = _one_symbol_curve(cols, next(iter(bars.values())), times, initial, positions)
        if curve is not None:
            marks = {s: float(bars[s].of(p.contract).close[-1]) for s, p in ledger.positions.items() if s in bars}
            return (*curve, marks)
    # cash: each fill's change lands on the first close at or after it
    cash_delta = np.zeros(len(times) + 1)
    # a fill's cash lands at the close of the bar it filled in (an open fill is before that close)
    owner = combo_symbol or {}
    if len(cols.fill_bar):
        if len(bars) == 1 and not owner:
            fill_times = next(iter(bars.values())).end[cols.fill_bar]
        else:
            fill_times = np.array([bars[owner.get(s, s)].end[k] for s, k in zip(cols.fill_symbol, cols.fill_bar.tolist())],
                                  dtype=np.int64)
        np.add.at(cash_delta, np.searchsorted(times, fill_times, side="left"), cols.fill_cash)
    cash = initial + np.cumsum(cash_delta)[: len(times)]
    value = np.zeros(len(times))
    marks = {}
    open_spans: dict[str, list[tuple[int, float, float]]] = {}
    for key, pos in positions.items():
        symbol = getattr(pos, "symbol", key) if key not in owner else key
        if symbol in bars:
            open_spans.setdefault(symbol, []).append((pos.entry_bar, pos.quantity, pos.avg_price))
            marks[key] = float(bars[symbol].of(getattr(pos, "contract", "")).close[-1])
    for combo in combos or []:
        # an option combo is worth its marks (minus the cost to close at mid), held from its entry
        # bar's close to its exit bar (exclusive: closed at that bar's close, its cash is in)
        b = bars[owner[combo.key]]
        keys = sorted(combo.marks)
        if not keys:
            continue
        per_bar = np.zeros(len(b))
        last = keys[-1] if combo.key not in ledger.positions else len(b) - 1
        idx = np.arange(keys[0], last + 1)
        known = np.array(keys)
        pos = np.searchsorted(known, idx, side="right") - 1
        per_bar[keys[0]:last + 1] = np.array([combo.marks[k] for k in keys])[pos]
        if combo.key not in ledger.positions:
            per_bar[keys[-1]] = 0.0
        else:
            marks[combo.key] = combo.last_credit
        k = np.searchsorted(b.end, times, side="right") - 1
        value += np.where(k >= 0, per_bar[np.maximum(k, 0)], 0.0)
    tsym = np.array(cols.trade_symbol, dtype=object)
    for symbol, b in bars.items():
        sel = tsym == symbol
        lo, hi, qty, entry = cols.trade_entry_bar, cols.trade_exit_bar, cols.trade_units, cols.trade_entry_price
        if not sel.all():
            lo, hi, qty, entry = lo[sel], hi[sel], qty[sel], entry[sel]
        held = _held_contracts(cols, sel, [p for k, p in positions.items() if k not in owner and
                                           getattr(p, "symbol", k) == symbol]) if b.front is not None else None
        for e, q, p in open_spans.get(symbol, ()):
            lo, hi = np.append(lo, e), np.append(hi, len(b))
            qty, entry = np.append(qty, q), np.append(entry, p)
        if not len(lo):
            continue
        closes = _held_closes(b, lo, hi, held)
        # spans in order, each entry before its exit (the order a loop over the spans adds them in)
        where = np.column_stack((lo, hi)).ravel()
        u = qty * b.multiplier
        units = np.zeros(len(b) + 1)
        np.add.at(units, where, np.column_stack((u, -u)).ravel())
        units = np.cumsum(units)[:-1]
        if b.margined:
            offset = np.zeros(len(b) + 1)
            ue = u * entry
            np.add.at(offset, where, np.column_stack((ue, -ue)).ravel())
            per_bar = units * closes - np.cumsum(offset)[:-1]
        else:
            per_bar = units * closes
        if len(bars) == 1:   # the timeline is this symbol's closes from the start date
            value += per_bar[len(b) - len(times):]
        else:
            k = np.searchsorted(b.end, times, side="right") - 1
            value += np.where(k >= 0, per_bar[np.maximum(k, 0)], 0.0)
    return times, cash + value, cash, marks


def _held_contracts(cols: LedgerColumns, sel: np.ndarray, positions: list) -> list[str]:
    """The contract of each of a per-contract futures symbol's spans (its trades, then its open positions)."""
    contracts = cols.trade_contract or [""] * len(sel)
    out = [c for c, s in zip(contracts, sel.tolist()) if s]
    out.extend(getattr(p, "contract", "") for p in positions)
    return out


def _held_closes(b: SymbolBars, lo: np.ndarray, hi: np.ndarray, held: list[str] | None) -> np.ndarray:
    """The closes a symbol's positions are valued at: its bars' own, or, for a futures root stitched
    from per-contract history, over each position's span the closes of the contract it is held in."""
    if not held:
        return b.close
    closes = b.close.copy()
    for a, z, contract in zip(lo.tolist(), hi.tolist(), held):
        if contract:
            closes[a:z] = b.of(contract).close[a:z]
    return closes


@dataclass(frozen=True)
class _Held:
    entry_bar: int
    quantity: float
    avg_price: float
    symbol: str = ""


def _at_last_close(cols: LedgerColumns, positions: dict, bars: dict[str, SymbolBars],
                   owner: dict[str, str]) -> tuple[LedgerColumns, dict]:
    """A live run that stops before the forming bar closes has fills in that bar (index
    len(bars)): they, and the spans they open or close, are counted at the last close, so the
    curve's last point is the account as it is at the stop. A backtest's records are returned
    as they are."""
    last = {s: len(b) - 1 for s, b in bars.items()}

    def capped(symbols: list, ks: np.ndarray) -> np.ndarray | None:
        if not len(ks):
            return None
        cap = np.array([last.get(owner.get(sym, sym), -1) for sym in symbols], dtype=np.int64)
        over = (ks > cap) & (cap >= 0)
        return np.where(over, cap, ks) if over.any() else None

    fill_bar = capped(cols.fill_symbol, cols.fill_bar)
    entry_bar = capped(cols.trade_symbol, cols.trade_entry_bar)
    exit_bar = capped(cols.trade_symbol, cols.trade_exit_bar)
    changes = {k: v for k, v in (("fill_bar", fill_bar), ("trade_entry_bar", entry_bar),
                                 ("trade_exit_bar", exit_bar)) if v is not None}
    if changes:
        cols = replace(cols, **changes)
    def held_in(s, p) -> str:
        return getattr(p, "symbol", s) if s not in owner else s

    late = {s: p for s, p in positions.items() if held_in(s, p) in last and p.entry_bar > last[held_in(s, p)] >= 0}
    if late:
        positions = {**positions, **{s: _Held(last[held_in(s, p)], p.quantity, p.avg_price, held_in(s, p))
                                     for s, p in late.items()}}
    return cols, positions


def _one_symbol_curve(cols: LedgerColumns, b: SymbolBars, times: np.ndarray, initial: float,
                      positions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """equity_curve for one symbol without option combos, from piecewise-constant runs instead
    of a cumulative sum over every bar: the same floats (a bar's fills are summed first, then
    added to the running cash; a position's units and entry value are exact between its fills).
    None when the fills or the positions' spans are not in time order (the general way then)."""
    n, m = len(b), len(times)
    off = n - m                      # the timeline is this symbol's closes from the start date
    # cash: constant between the bars where fills land
    if len(cols.fill_bar):
        at = cols.fill_bar - off
        if at[0] < 0 or (at[1:] < at[:-1]).any():
            return None
        first = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
        levels = initial + np.cumsum(np.add.reduceat(cols.fill_cash, first))
        cuts = at[first]
        cash = np.repeat(np.concatenate(([initial], levels)), np.diff(np.concatenate(([0], cuts, [m]))))
    else:
        cash = np.full(m, float(initial))
    # positions: held at the closes of bars [entry bar, exit bar), one at a time
    lo, hi, qty, entry = cols.trade_entry_bar, cols.trade_exit_bar, cols.trade_units, cols.trade_entry_price
    pos = positions.get(b.symbol)
    held = _held_contracts(cols, np.ones(len(lo), dtype=bool), [pos] if pos is not None else []) \
        if b.front is not None else None
    if pos is not None:
        lo, hi = np.append(lo, pos.entry_bar), np.append(hi, n)
        qty, entry = np.append(qty, pos.quantity), np.append(entry, pos.avg_price)
    if not len(lo):
        return times, cash.copy(), cash
    u = qty * b.multiplier
    bounds = np.column_stack((lo, hi)).ravel()
    if (bounds[1:] < bounds[:-1]).any():
        return None
    lengths = np.diff(np.concatenate(([0], bounds, [n])))
    per_bar = _runs(u, lengths)
    np.multiply(per_bar, _held_closes(b, lo, hi, held), out=per_bar)   # the units held at each close, valued there
    if b.margined:
        np.subtract(per_bar, _runs(u * entry, lengths), out=per_bar)
    return times, np.add(cash, per_bar[off:]), cash


def _runs(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0 over each gap, values[i] over span i: gap, span 0, gap, span 1, ..., gap."""
    seq = np.zeros(2 * len(values) + 1)
    seq[1::2] = values
    return np.repeat(seq, lengths)


def _cash_deltas(ledger: Ledger, bars: dict[str, SymbolBars]) -> list[float]:
    """How each fill moved cash, replaying opens and closes per symbol."""
    out = []
    open_price: dict[str, tuple[float, float]] = {}
    for f in ledger.fills:
        b = bars.get(f.symbol)
        signed = f.signed
        if b is None:  # an option combo: premium moves cash like a stock trade
            out.append(-f.commission - signed * f.price * f.multiplier)
            continue
        if f.symbol not in open_price:
            open_price[f.symbol] = (signed, f.price)
            out.append(-f.commission - (0.0 if b.margined else signed * f.price * f.multiplier))
        else:
            qty, entry = open_price.pop(f.symbol)
            if b.margined:
                out.append(-f.commission + (f.price - entry) * qty * f.multiplier)
            else:
                out.append(-f.commission - signed * f.price * f.multiplier)
    return out

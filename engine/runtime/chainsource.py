"""Option chains for a backtest: real end-of-day snapshots, or chains synthesised bar by bar.

Snapshots (`data.chains`, an L2 or iVolatility file) give the chain of each quote date; only
their listed expiries can be traded. Without snapshots each bar gets a Black-Scholes chain around
its close: IV from `backtest.options.iv` (a number, or VIX/100 as of that bar: no look-ahead),
the smile and the spread model of engine.market.chains, strikes on the instrument's grid, and
exactly the expiries the strategy's rules (and its open combos) need.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

import numpy as np
import pandas as pd

from ..diagnostics import DiagnosticError
from ..market.chains import OptionChain, Skew, Spread, synthesize
from ..orders.combos import Side
from .options import OptionSetup, OptionsDesk


class ChainAdapter:
    """An OptionChain seen as the desk needs it: expiries, and each expiry's puts or calls."""

    def __init__(self, chain: OptionChain, trading_class: str | None = None):
        self.chain = chain
        self.underlying = chain.underlying_price
        self.time = int(chain.quote_time.value)     # when it was quoted (ns UTC)
        self._sides: dict[tuple, Side] = {}
        self.trading_class = trading_class

    def expiries(self) -> list[dt.date]:
        return [pd.Timestamp(d).date() for d in self.chain.expiries()]

    def side(self, expiry: dt.date, right: str) -> Side:
        key = (expiry, right)
        if key not in self._sides:
            c = self.chain
            mask = (c.expiry == np.datetime64(expiry, "D")) & (c.is_call == (right == "call"))
            if self.trading_class is not None:
                classes = c.trading_class.astype(str)
                if (classes == self.trading_class).any():
                    mask &= classes == self.trading_class
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(c.strike[idx], kind="stable")]
            self._sides[key] = Side(right, c.strike[idx], c.bid[idx], c.ask[idx], c.delta[idx], c.iv[idx],
                                    c.gamma[idx], c.theta[idx], c.vega[idx])
        return self._sides[key]


def underlying_from_chains(chains: dict[dt.date, OptionChain], timezone: str) -> pd.DataFrame:
    """Daily bars of the underlying from the snapshots' underlying prices (open = high = low =
    close: an end-of-day file has one price per day)."""
    days = sorted(chains)
    price = np.array([chains[d].underlying_price for d in days], dtype=np.float64)
    index = pd.DatetimeIndex([pd.Timestamp(d) for d in days]).tz_localize(timezone)
    return pd.DataFrame({"open": price, "high": price, "low": price, "close": price,
                         "volume": np.full(len(days), np.nan)}, index=index)


def option_problems(prep, simulated: bool) -> list:
    """What a run of the strategy's option orders cannot do, located: in a simulated run
    (backtest, `run --broker sim`, a dry run on the simulator), American-style options unless
    `backtest.options.american_as_european` says to simulate them as European (early exercise
    and assignment are not simulated). A run on IB trades IB's contracts, whatever their style."""
    from ..check.model import options_listing

    problems = []
    where_orders = next((("orders", name) for name, t in prep.orders.items() if t.combo), ("orders",))
    for symbol in prep.symbols:
        listing = options_listing(prep.ws, prep.doc, symbol)
        if simulated and listing.style == "american" and not prep.sim.options.american_as_european:
            at = ""
            if listing.source is not None:
                inst, where = listing.source
                spot = inst.diag((*where, "style") if inst.get((*where, "style")) is not None else where, "")
                at = f" ({spot.path}:{spot.line}:{spot.col})"
            problems.append(prep.doc.diag(
                where_orders, f"{symbol} options are American-style{at}: early exercise and assignment are not "
                              "simulated, so American options are not supported in backtest, run --broker sim "
                              "or dry-run yet",
                "to simulate them as European (Black-Scholes prices, no assignment before expiry), set "
                "backtest: {options: {american_as_european: true}}; paper and live trade IB's contracts",
                key=True))
    return problems


def _desk(prep, listed: bool) -> tuple[OptionsDesk, dict[str, float]]:
    """The desk for the strategy's symbols, with each one's option facts from the instrument map
    (prepare() has refused what a run of them cannot do: option_problems)."""
    from ..check.model import options_listing

    setups: dict[str, OptionSetup] = {}
    grids: dict[str, float] = {}
    for symbol in prep.symbols:
        listing = options_listing(prep.ws, prep.doc, symbol)
        setups[symbol] = OptionSetup(multiplier=listing.multiplier, tick=0.01, settlement=listing.settlement,
                                     settlement_time=listing.settlement_time, cycle=listing.cycle,
                                     calendar=prep.instruments[symbol].calendar or "NYSE", listed=listed)
        grids[symbol] = listing.strike_step
    return OptionsDesk(prep.plan, prep.orders, setups, prep.timezone), grids


def broker_desk(prep, signals, fetch: Callable) -> tuple[OptionsDesk, Callable]:
    """The desk and a `chain_at(symbol, bar)` for a run on a broker: the chain of the expiries the
    rules (and the open combos) need, quoted by the broker when a decision needs it:
    `fetch(symbol, spot, expiries, when) -> OptionChain | None`. One fetch per bar at most."""
    desk, _ = _desk(prep, listed=True)
    combo_orders = [name for name, t in prep.orders.items() if t.combo]
    cache: dict[tuple, ChainAdapter | None] = {}
    runner_ref: dict = {}

    def chain_at(symbol: str, bar: int):
        key = (symbol, bar)
        if key in cache:
            return cache[key]
        b = signals[symbol].bars
        end = pd.Timestamp(int(b.end[bar]), tz="UTC").tz_convert(prep.timezone)
        needed = set()
        for name in combo_orders:
            needed |= desk.expiries_needed(name, symbol, end.to_pydatetime())
        runner = runner_ref.get("runner")
        if runner is not None:
            needed |= {d for k, c in runner.combos.items() if runner.combo_symbol.get(k) == symbol
                       for d in c.expiries()}
        chain = fetch(symbol, float(b.close[bar]), sorted(needed), end) if needed else None
        cache.clear()
        cache[key] = ChainAdapter(chain) if chain is not None else None
        return cache[key]

    chain_at.runner_ref = runner_ref
    return desk, chain_at


def option_desk(prep, signals) -> tuple[OptionsDesk, Callable]:
    """The desk and a `chain_at(symbol, bar)` for a prepared backtest."""
    doc = prep.doc
    snapshots = getattr(prep, "chains", None)
    desk, grids = _desk(prep, listed=snapshots is not None)
    setups = desk.setups
    orders = prep.orders
    if snapshots is not None:
        by_symbol = {s: snapshots for s in prep.symbols}
        cache: dict[tuple, ChainAdapter] = {}

        def from_snapshots(symbol: str, bar: int):
            b = signals[symbol].bars
            day = pd.Timestamp(int(b.start[bar]), tz="UTC").tz_convert(prep.timezone).date()
            chain = by_symbol[symbol].get(day)
            if chain is None:
                return None
            key = (symbol, day)
            if key not in cache:
                cache.clear()
                cache[key] = ChainAdapter(chain)
            return cache[key]

        return desk, from_snapshots

    model = prep.sim.options
    iv_setting = model.iv
    scale = model.iv_scale
    vix = None
    if iv_setting == "vix":
        if "VIX" not in prep.frames:
            raise DiagnosticError([doc.diag(("backtest",), "backtest.options.iv is \"vix\" but the data has no VIX bars",
                                            "add VIX.csv to the data source, or give a number: options: {iv: 0.15}")])
        vix = prep.frames["VIX"]
    skew = Skew(put=model.skew, call=model.skew * 0.375) if model.skew > 0 else None
    spread = Spread(pct=model.spread_pct, min_width=model.spread_min)
    rate, dividend = model.rate, model.dividend_yield
    combo_orders = [name for name, t in orders.items() if t.combo]
    vix_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def atm_vol(symbol: str, bar: int) -> float:
        if vix is None:
            return float(iv_setting) * scale
        if symbol not in vix_cache:
            from .prepare import _ns

            ends = _ns(vix.index) + int(86_400e9)  # a daily VIX close is known once its day is over
            vix_cache[symbol] = (ends, vix["close"].to_numpy(dtype=np.float64))
        ends, closes = vix_cache[symbol]
        k = int(np.searchsorted(ends, int(signals[symbol].bars.end[bar]), side="right")) - 1
        return float(closes[k]) / 100.0 * scale if k >= 0 else float("nan")

    cache: dict[tuple, ChainAdapter] = {}

    def synthetic(symbol: str, bar: int):
        key = (symbol, bar)
        if key in cache:
            return cache[key]
        b = signals[symbol].bars
        end = pd.Timestamp(int(b.end[bar]), tz="UTC").tz_convert(prep.timezone)
        setup = setups[symbol]
        when = end.to_pydatetime() if b.end[bar] - b.start[bar] < 86_400e9 else \
            pd.Timestamp(int(b.start[bar]), tz="UTC").tz_convert(prep.timezone).to_pydatetime()
        needed = set()
        for name in combo_orders:
            needed |= desk.expiries_needed(name, symbol, when)
        needed |= {date for combo in _open_combos(symbol) for date in combo.expiries()}
        sigma = atm_vol(symbol, bar)
        if not needed or not np.isfinite(sigma) or sigma <= 0:
            return None
        chain = synthesize(float(b.close[bar]), end, sorted(needed), grids[symbol], multiplier=setup.multiplier,
                           iv_source=sigma, skew=skew, spread=spread, r=rate, q=dividend, strike_range=0.10,
                           underlying=symbol)
        cache.clear()
        cache[key] = ChainAdapter(chain)
        return cache[key]

    runner_ref: dict = {}

    def _open_combos(symbol: str):
        runner = runner_ref.get("runner")
        if runner is None:
            return []
        return [c for key, c in runner.combos.items() if runner.combo_symbol.get(key) == symbol]

    synthetic.runner_ref = runner_ref
    return desk, synthetic

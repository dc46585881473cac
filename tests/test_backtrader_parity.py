"""Parity with backtrader: the same strategy, the same bars, the same fills and the same money.

(a) backtrader's own unit test (shared/data README section 6): SMA 15 crossover on
    2006-day-001.txt, one unit, stock-like and futures-like, against the published numbers.
(b) backtrader run side by side with qtrade on real daily bars (ORCL, SPY, AAPL) with an SMA
    20/50 crossover, a stop-loss exit (2 x ATR(14) at entry, or a fixed 5%) and commissions
    (a percent of value, or IB-style per share with a minimum): the same trades, to 1e-9 in
    price, and the same final value and cash to the cent.

backtrader is configured to follow qtrade's documented semantics; each alignment is explained
where it is made (see `CrossWithStop`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

bt = pytest.importorskip("backtrader")

from engine.runtime import backtest as qb  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "backtrader").is_dir(), reason="../shared/data is not present")


# ---- (a) backtrader's unit test, section 6 of the data README ------------------------------

BUY_FILLS = [3643.35, 3801.03, 3872.37, 3863.57, 3845.32, 3656.43, 3542.65, 3639.65, 3799.86, 3840.20, 4047.63,
             4052.55]
SELL_FILLS = [3763.95, 3811.85, 3822.35, 3822.57, 3829.82, 3598.58, 3545.92, 3766.80, 3782.15, 3979.73, 4045.05]

SMA15 = """\
kind: strategy
name: backtrader-unit-test
universe: [BT]
data: {{bar: 1d, source: {data}}}
params: {{period: 15}}
entry:
  - name: cross up
    when: crosses_above(close, sma(close, period))
    order: buy
exit:
  - name: cross down
    when: crosses_below(close, sma(close, period))
orders:
  buy: {{action: buy, type: market, quantity: 1}}
backtest: {{cash: 10000, account: cash{extra}}}
"""

INSTRUMENTS = """\
kind: instruments
roots:
  BT: {sec_type: FUT, exchange: EUREX, currency: EUR, multiplier: 10, margin: 1000, trading_class: FESX,
       months: HMUZ, tick_size: 1.0, calendar: NYSE}
"""


def _section6(tmp_path: Path, futures: bool) -> qb.Result:
    text = SMA15.format(data=DATA / "backtrader" / "2006-day-001.txt",
                        extra=", commission: {per_contract: 2.0}" if futures else "")
    if futures:
        (tmp_path / "instruments.yaml").write_text(INSTRUMENTS)
        text = text.replace("universe:", "instruments: instruments.yaml\nuniverse:", 1)
    path = tmp_path / "sma15.yaml"
    path.write_text(text)
    return qb.run(qb.prepare(path))


@pytest.mark.parametrize("futures", [False, True], ids=["stock-like", "futures-like"])
def test_backtrader_unit_test_numbers(tmp_path, futures):
    result = _section6(tmp_path, futures)
    assert [f.price for f in result.ledger.fills if f.action == "buy"] == BUY_FILLS
    assert [f.price for f in result.ledger.fills if f.action == "sell"] == SELL_FILLS
    assert all(f.quantity == 1 for f in result.ledger.fills)
    if futures:
        # backtrader's "cash" for a future is the account less the margin held: available funds
        assert round(result.final_equity, 2) == 12795.00
        assert round(result.available_funds, 2) == 11795.00
        assert all(f.commission == 2.0 for f in result.ledger.fills)
    else:
        assert round(result.final_equity, 2) == 10284.10
        assert round(result.ledger.cash, 2) == 6164.16


@pytest.mark.parametrize("futures", [False, True], ids=["stock-like", "futures-like"])
def test_backtrader_itself_agrees_on_the_unit_test(tmp_path, futures):
    """The published numbers are backtrader's own: run it here too, on the bars qtrade read."""
    result = _section6(tmp_path, futures)
    comm = dict(commission=2.0, mult=10, margin=1000) if futures else dict(commission=0.0)
    run = _run_backtrader(result.prepared.frames["BT"], 10_000.0, comm, fast=0, slow=15, stop=None, quantity=1)
    assert [p for _, a, _, p, _ in run.fills if a == "buy"] == BUY_FILLS
    assert [p for _, a, _, p, _ in run.fills if a == "sell"] == SELL_FILLS
    assert round(run.value, 2) == (12795.00 if futures else 10284.10)
    assert round(run.cash, 2) == (11795.00 if futures else 6164.16)


# ---- (b) side by side with backtrader, with a stop-loss exit and commissions -----------------

CROSS = """\
kind: strategy
name: parity
universe: [{symbol}]
data: {{bar: 1d, source: {data}}}
params: {{fast: 20, slow: 50, atr_n: 14, k: 2.0, pct: 5%}}
indicators:
  fast_ma: sma(close, fast)
  slow_ma: sma(close, slow)
  range: atr(atr_n)
entry:
  - name: golden cross
    when: crosses_above(fast_ma, slow_ma)
    order: buy
exit:
  - name: stop loss
    stop: {stop}
  - name: death cross
    when: crosses_below(fast_ma, slow_ma)
orders:
  buy: {{action: buy, type: market, quantity: {quantity}}}
backtest: {{cash: 100000, account: cash, commission: {commission}}}
"""

ATR_STOP = "position.entry_price - k * at_entry(range)"
PCT_STOP = "position.entry_price * (1 - pct)"
ALL_IN = "{percent_of_equity: 100%}"

# symbol, file, stop (qtrade, backtrader), quantity (qtrade, backtrader; None = all in), commission
CASES = {
    "orcl-atr-stop-percent-all-in": ("ORCL", "backtrader/orcl-1995-2014.txt", (ATR_STOP, ("atr", 2.0)),
                                     (ALL_IN, None), {"percent": "0.1%"}),
    "orcl-5pct-stop-per-share-1000": ("ORCL", "backtrader/orcl-1995-2014.txt", (PCT_STOP, ("pct", 0.05)),
                                      ("1000", 1000), {"per_share": 0.005, "minimum": 1.0}),
    "spy-atr-stop-percent-all-in": ("SPY", "mplfinance/yahoofinance-SPY-20080101-20180101.csv",
                                    (ATR_STOP, ("atr", 2.0)), (ALL_IN, None), {"percent": "0.1%"}),
    "aapl-atr-stop-per-share-all-in": ("AAPL", "mplfinance/yahoofinance-AAPL-20040819-20180120.csv",
                                       (ATR_STOP, ("atr", 2.0)), (ALL_IN, None),
                                       {"per_share": 0.005, "minimum": 1.0}),
}


class QtradeCommission(bt.CommInfoBase):
    """qtrade's stock commission (engine/brokers/costs.py): per share plus a share of value, with
    a minimum per fill. backtrader's built-in schemes have no minimum, hence this subclass."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED), ("percabs", True),
              ("per_share", 0.0), ("percent", 0.0), ("minimum", 0.0))

    def _getcommission(self, size, price, pseudoexec):
        qty = abs(size)
        fee = qty * price * self.p.percent + qty * self.p.per_share
        return max(fee, self.p.minimum) if fee else 0.0


class CrossWithStop(bt.Strategy):
    """Long only: buy when fast crosses above slow, close when it crosses back below, with an
    optional protective stop. Aligned with qtrade as follows.

    - Market orders decided at a bar's close fill at the next bar's open (backtrader's default).
    - All-in sizing: qtrade sizes `percent_of_equity` at the fill price (the next open), whole
      shares, then takes away shares until value + commission fits the cash. backtrader sizes
      when the order is created, so the entry is placed in `next_open` (cheat_on_open) from the
      open that it fills at, with the same loop. The broker's submit-time cash check is off: it
      prices the order at the creation bar's close, which at the open is not known yet; qtrade
      checks the cash at the fill.
    - Stops: qtrade computes a stop rule's level at each bar's close and applies it during the
      next bar, filling at the level, or at the open when the bar gaps through it (no slippage
      configured). backtrader's Stop order does exactly that, so a Stop for the next bar is
      placed at every close with the level computed then (and the previous one cancelled).
      No stop works during the entry bar itself (its level is first known at that bar's close).
      The level is on the instrument's tick grid (a stock's cent), a sell stop's rounded up, as
      qtrade puts every price it sends (IB rejects a price off the grid); backtrader is given the
      same level.
    - `position.entry_price` is the average fill price (backtrader's position.price);
      `at_entry(range)` is ATR(14) at the close of the entry (fill) bar: `self.atr[0]` in the
      `next` of that bar. backtrader's ATR (Wilder, seeded with the mean of the first 14 true
      ranges) is TA-Lib's.
    - A `when` exit at the close of bar k acts at the open of k + 1, before any stop inside
      k + 1: the stop is cancelled when the close order is sent.
    - One position at a time: no entry while long; after a stop fills in bar j an entry signal at
      the close of j may open the next trade (qtrade resumes its entry search at the exit bar).
    """

    params = (("fast", 20), ("slow", 50), ("stop", None), ("quantity", None))

    def __init__(self):
        d = self.data
        fast = d.close if not self.p.fast else bt.ind.SMA(d.close, period=self.p.fast)
        self.cross = bt.ind.CrossOver(fast, bt.ind.SMA(d.close, period=self.p.slow))
        self.atr = bt.ind.ATR(d, period=14)
        self.want_entry = False
        self.stop_order = None
        self.level = None
        self.fills = []

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((bt.num2date(order.executed.dt).date(), "buy" if order.isbuy() else "sell",
                               abs(order.executed.size), order.executed.price, order.executed.comm))

    def next_open(self):
        if self.want_entry and not self.position:
            price = self.data.open[0]
            quantity = self.p.quantity
            if quantity is None:
                cash = self.broker.getcash()
                fee = self.broker.getcommissioninfo(self.data).getcommission
                quantity = math.floor(cash / price + 1e-9)
                while quantity > 0 and quantity * price + fee(quantity, price) > cash + 1e-9:
                    quantity -= 1
            if quantity > 0:
                self.buy(size=quantity)
        self.want_entry = False

    def next(self):
        if not self.position:
            self.level = None
            self.want_entry = self.cross[0] > 0
            return
        if self.stop_order is not None:
            self.cancel(self.stop_order)
            self.stop_order = None
        if self.cross[0] < 0:
            self.close()
            return
        if self.p.stop is None:
            return
        if self.level is None:  # the level is fixed at entry: computed at the entry bar's close
            kind, k = self.p.stop
            entry = self.position.price
            level = entry - k * self.atr[0] if kind == "atr" else entry * (1 - k)
            # on the cent grid, rounded up (towards the market), as qtrade sends a sell stop to IB
            self.level = round(math.ceil(level / 0.01 - 1e-6) * 0.01, 10)
        self.stop_order = self.sell(size=self.position.size, exectype=bt.Order.Stop, price=self.level)


class BacktraderRun:
    def __init__(self, fills, value, cash):
        self.fills, self.value, self.cash = fills, value, cash


def _run_backtrader(frame, cash: float, commission, **params) -> BacktraderRun:
    """backtrader over the very bars qtrade loaded (so both read the same floats: pandas' CSV
    parser and Python's float() may differ in the last bit)."""
    cerebro = bt.Cerebro(stdstats=False, cheat_on_open=True)
    bars = frame[["open", "high", "low", "close", "volume"]].copy()
    bars.index = bars.index.tz_localize(None)
    cerebro.adddata(bt.feeds.PandasData(dataname=bars, openinterest=None))
    cerebro.broker.setcash(cash)
    cerebro.broker.set_checksubmit(False)
    if isinstance(commission, dict):
        cerebro.broker.setcommission(**commission)
    else:
        cerebro.broker.addcommissioninfo(commission)
    cerebro.addstrategy(CrossWithStop, **params)
    strat = cerebro.run()[0]
    return BacktraderRun(strat.fills, cerebro.broker.getvalue(), cerebro.broker.getcash())


def _pairs(fills):
    """Round trips (entry fill, exit fill) from a fill list, one position at a time."""
    return list(zip(fills[0::2], fills[1::2]))


@pytest.mark.parametrize("case", list(CASES))
def test_same_trades_and_money_as_backtrader(tmp_path, case):
    symbol, file, (stop, bt_stop), (quantity, bt_quantity), commission = CASES[case]
    spec = "{" + ", ".join(f"{k}: {v}" for k, v in commission.items()) + "}"
    path = tmp_path / "parity.yaml"
    path.write_text(CROSS.format(symbol=symbol, data=DATA / file, stop=stop, quantity=quantity, commission=spec))
    result = qb.run(qb.prepare(path))
    frame = result.prepared.frames[symbol]
    dates = frame.index.date

    ours = result.ledger.fills
    fees = {k: float(v[:-1]) / 100 if isinstance(v, str) else v for k, v in commission.items()}  # "0.1%"
    theirs = _run_backtrader(frame, 100_000.0, QtradeCommission(**fees), fast=20, slow=50,
                             stop=bt_stop, quantity=bt_quantity)
    assert len(ours) == len(theirs.fills) > 20
    for f, (day, action, qty, price, fee) in zip(ours, theirs.fills):
        assert (dates[f.bar], f.action, f.quantity) == (day, action, qty)
        assert f.price == pytest.approx(price, abs=1e-9)
        assert f.commission == pytest.approx(fee, abs=1e-9)

    # the same round trips, and at the end the same open position (if any)
    trades = result.ledger.trades
    pairs = _pairs(theirs.fills)
    assert len(trades) == len(theirs.fills) // 2
    for t, (entry, exit_) in zip(trades, pairs):
        assert (dates[t.entry_bar], dates[t.exit_bar], t.quantity) == (entry[0], exit_[0], entry[2])
        assert t.entry_price == pytest.approx(entry[3], abs=1e-9)
        assert t.exit_price == pytest.approx(exit_[3], abs=1e-9)
    assert len(result.ledger.positions) == len(theirs.fills) % 2

    assert round(result.final_equity, 2) == round(theirs.value, 2)
    assert round(result.ledger.cash, 2) == round(theirs.cash, 2)

    # the case exercises what it is about: stops hit, some of them through a gap at the open
    b = result.bars[symbol]
    stops = [t for t in trades if t.exit_rule == "stop loss"]
    gaps = [t for t in stops if t.exit_price == b.open[t.exit_bar] > b.low[t.exit_bar]]
    assert stops and gaps, f"{len(stops)} stop exits, {len(gaps)} through a gap"
    assert any(t.exit_rule == "death cross" for t in trades)

"""Issue 15 item 3: the order semantics classic strategies need. Stop and reverse: an exit and
the opposite entry decided at one close fill together (at the next open, the exit first; at
that close with `fill: close`), in a backtest, a `run --broker sim` replay and a dry run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "strategies" / "data"

ALWAYS_IN = """\
kind: strategy
name: always-in
universe: [SPY]
data: {{bar: 1d, source: {data}/}}
indicators:
  fast_ma: sma(close, 10)
  slow_ma: sma(close, 30)
entry:
  - {{name: go long, when: "crosses_above(fast_ma, slow_ma)", order: long}}
  - {{name: go short, when: "crosses_below(fast_ma, slow_ma)", order: short}}
exit:
  - {{name: long over, when: "position.side > 0 and crosses_below(fast_ma, slow_ma)", order: {exit_order}}}
  - {{name: short over, when: "position.side < 0 and crosses_above(fast_ma, slow_ma)", order: {exit_order}}}
orders:
  long: {{action: buy, type: market, quantity: 100}}
  short: {{action: sell, type: market, quantity: 100}}
  at_market: {{action: sell, type: market}}
  at_limit: {{action: sell, type: limit, limit: close}}
schedule: {{timezone: America/New_York}}
backtest: {{cash: 100000, account: margin{fill}}}
"""


def always_in(tmp_path: Path, *, exit_order: str = "at_market", fill: str = "") -> Path:
    path = tmp_path / "always_in.yaml"
    path.write_text(ALWAYS_IN.format(data=DATA, exit_order=exit_order, fill=f", fill: {fill}" if fill else ""))
    return path


def _crosses(prep) -> int:
    import numpy as np

    close = prep.frames["SPY"]["close"].to_numpy()
    fast = np.convolve(close, np.ones(10) / 10, "valid")[20:]
    slow = np.convolve(close, np.ones(30) / 30, "valid")
    above = fast > slow
    crossed = np.flatnonzero(above[1:] != above[:-1]) + 1
    return int(np.count_nonzero(crossed < len(above) - 1))      # a cross on the last bar has no next open


def test_an_exit_and_the_opposite_entry_fill_at_the_same_next_open(tmp_path):
    prep = bt.prepare(always_in(tmp_path))
    ledger = bt.run(prep).ledger
    trades = ledger.trades
    # every cross opens a position; each but the last is closed by the next cross
    assert len(trades) == _crosses(prep) - 1 > 70
    (held,) = ledger.positions.values()
    assert (held.side > 0) == (trades[-1].side == "short")
    sides = [t.side for t in trades]
    assert set(sides) == {"long", "short"}
    assert all(a != b for a, b in zip(sides, sides[1:]))         # long, short, long, ... never flat
    for before, after in zip(trades, trades[1:]):
        assert after.entry_time == before.exit_time                # filled together, at one open
        assert after.entry_price == before.exit_price
        assert after.entry_rule == ("go long" if before.side == "short" else "go short")
    frame = prep.frames["SPY"]
    opens = set(frame["open"].round(6))
    assert all(round(t.entry_price, 6) in opens for t in trades)


def test_with_fill_at_the_close_the_reversal_fills_at_that_close(tmp_path):
    prep = bt.prepare(always_in(tmp_path, fill="close"))
    trades = bt.run(prep).ledger.trades
    assert len(trades) == _crosses(prep) - 1
    closes = set(prep.frames["SPY"]["close"].round(6))
    for before, after in zip(trades, trades[1:]):
        assert after.entry_time == before.exit_time and after.entry_price == before.exit_price
        assert round(after.entry_price, 6) in closes


def test_an_exit_at_a_limit_does_not_reverse(tmp_path):
    """An exit that may not fill at the next open (a limit far from the market) is not followed by
    an entry the other way: that entry could land on top of the open position."""
    prep = bt.prepare(always_in(tmp_path, exit_order="at_limit"))
    trades = bt.run(prep).ledger.trades
    assert len(trades) > 10
    # the cross that closes a long (at a limit) opens no short: flat until the next cross up
    assert {t.side for t in trades} == {trades[0].side}
    for before, after in zip(trades, trades[1:]):
        assert after.entry_time > before.exit_time


@pytest.mark.parametrize("dry", [False, True])
def test_a_sim_run_and_a_dry_run_reverse_as_the_backtest_does(tmp_path, dry):
    path = always_in(tmp_path)
    backtest = bt.run(bt.prepare(path, start="2015-01-01")).ledger.trades
    journal = tmp_path / "j.sqlite"
    args = ["run", str(path), "--broker", "sim", "--from", "2015-01-01", "--journal", str(journal)]
    if dry:
        args.insert(2, "--dry-run")
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(journal)
    rows = db.execute("SELECT entry_rule, exit_rule, entry_price, exit_price, side FROM trades ORDER BY rowid")\
        .fetchall()
    assert rows == [(t.entry_rule, t.exit_rule, t.entry_price, t.exit_price, t.side) for t in backtest]
    if dry:     # the orders it would send: each exit printed before the entry that reverses it
        lines = [x for x in result.output.splitlines() if " SPY " in x and ("BUY" in x or "SELL" in x)]
        assert len(lines) >= 2 * len(rows) - 2


def test_on_a_venue_that_answers_late_the_reversal_waits_for_its_exit(tmp_path, monkeypatch):
    """On IB the exit's fill comes back after the entry behind it would be sent: the entry waits
    for the exit to be booked (never an entry on top of the position), then goes; the trades are
    the simulator's."""
    from engine.brokers import events as E
    from engine.brokers.sim import SimBroker
    from engine.runtime import session

    class _Late(SimBroker):
        """Holds each closing order's events back for one `events()` call, as a slow link does."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.closing, self.held, self.waited = set(), [], 0

        def place(self, order):
            if order.intent == "close":
                self.closing.add(order.ref)
            return super().place(order)

        def events(self):
            now = super().events()
            execs = {ev.exec_id for ev in now if isinstance(ev, E.Execution) and ev.ref in self.closing}
            late = [ev for ev in now if getattr(ev, "ref", None) in self.closing or
                    isinstance(ev, E.CommissionReport) and ev.exec_id in execs]
            out, self.held = self.held + [ev for ev in now if ev not in late], late
            self.waited += bool(late)
            return out

    from engine.runtime.kernel import Kernel
    from venues import simulate_on

    prep = bt.prepare(always_in(tmp_path))
    plain = session.simulate(prep, streaming=False, run_id="p")
    waited = []
    after_exit = Kernel._after_exit
    monkeypatch.setattr(Kernel, "_after_exit", lambda self, st: (waited.append(st.symbol), after_exit(self, st)))
    late = simulate_on(_Late, prep, run_id="l")
    assert not late.runner.errors
    assert [(t.side, t.entry_time, t.entry_price, t.exit_time, t.exit_price) for t in late.ledger.trades] == \
        [(t.side, t.entry_time, t.entry_price, t.exit_time, t.exit_price) for t in plain.ledger.trades]
    assert len(late.ledger.trades) > 70
    assert len(waited) == len(late.ledger.trades)       # every reversal's entry waited for its exit


# ---- pyramiding

PYRAMID = """\
kind: strategy
name: pyramid
universe: [SPY]
data: {{bar: 1d, source: {data}/}}
indicators:
  ma: sma(close, 20)
entry:
  - {{name: above, when: "close > ma", order: buy}}
exit:
  - {{name: below, when: "close < ma"}}
{stop}
orders:
  buy: {{action: buy, type: market, quantity: {quantity}}}
schedule: {{timezone: America/New_York}}
risk: {{pyramiding: {n}{risk}}}
backtest: {{cash: 1000000}}
"""


def pyramid(tmp_path: Path, n: int = 3, *, quantity="10", stop: str = "", risk: str = "") -> Path:
    path = tmp_path / f"pyramid{n}.yaml"
    path.write_text(PYRAMID.format(data=DATA, n=n, quantity=quantity, stop=stop, risk=risk))
    return path


def _by_hand(frame, n: int, quantity: float):
    """The same rules in a plain loop: a signal at a close fills at the next open; up to n
    entries while the condition holds; the exit closes all of it."""
    close, opens = frame["close"].to_numpy(), frame["open"].to_numpy()
    ma = frame["close"].rolling(20).mean().to_numpy()
    trades, held, cost, pending = [], 0, 0.0, None
    for k in range(len(close)):
        if pending == "exit":
            trades.append((held, cost / held, opens[k]))
            held, cost = 0, 0.0
        elif pending == "add":
            held, cost = held + quantity, cost + quantity * opens[k]
        pending = None
        if k == len(close) - 1 or ma[k] != ma[k]:
            continue
        if held and close[k] < ma[k]:
            pending = "exit"
        elif close[k] > ma[k] and held < n * quantity:
            pending = "add"
    return trades


@pytest.mark.parametrize("n", [1, 3])
def test_pyramiding_adds_up_to_n_entries_at_the_average_price(tmp_path, n):
    prep = bt.prepare(pyramid(tmp_path, n))
    ledger = bt.run(prep).ledger
    expected = _by_hand(prep.frames["SPY"], n, 10)
    assert len(ledger.trades) == len(expected) > 50
    for trade, (quantity, avg, exit_price) in zip(ledger.trades, expected):
        assert trade.quantity == quantity and trade.exit_price == pytest.approx(exit_price)
        assert trade.entry_price == pytest.approx(avg)
    if n == 3:
        assert max(t.quantity for t in ledger.trades) == 30 and min(t.quantity for t in ledger.trades) == 10
        entries = [f for f in ledger.fills if f.rule == "above"]
        assert len(entries) == sum(int(q / 10) for q, _, _ in expected) + sum(
            int(abs(p.quantity) / 10) for p in ledger.positions.values())


def test_an_added_entry_is_capped_with_what_the_position_holds(tmp_path):
    """max_position caps the whole position: the second entry of 100k each, capped at 15% of
    1M equity, adds only what fits beside the first."""
    prep = bt.prepare(pyramid(tmp_path, 3, quantity="{percent_of_equity: 10%}", risk=", max_position: 15%"))
    result = bt.run(prep)
    first = result.ledger.trades[0]
    assert first.quantity * first.entry_price == pytest.approx(150_000, rel=0.02)
    decisions = [d for d in result.runner.decisions if d.rule == "above" and "with the" in d.reason]
    assert decisions and "capped by max_position 15.0% of equity (with the" in decisions[0].reason


def test_the_protective_stop_covers_every_entry_and_moves_with_the_average(tmp_path):
    prep = bt.prepare(pyramid(tmp_path, 3, stop='  - {name: stop, stop: "position.entry_price * 0.97"}'))
    result = bt.run(prep)
    stops = [t for t in result.ledger.trades if t.exit_rule == "stop"]
    assert stops
    records = {r.intent.tag: r for r in result.runner.orders}
    for trade in result.ledger.trades:
        assert trade.quantity in (10, 20, 30)
    # a stop that filled closed all of its position: its order was resized with each added entry
    for fill in result.ledger.fills:
        if fill.rule == "stop":
            assert records[fill.order_ref].intent.quantity == fill.quantity
    assert any(f.quantity == 30 for f in result.ledger.fills if f.rule == "stop")


def test_a_sim_run_pyramids_as_the_backtest_does(tmp_path):
    path = pyramid(tmp_path, 3, stop='  - {name: stop, stop: "position.entry_price * 0.97"}')
    backtest = bt.run(bt.prepare(path, start="2014-01-01")).ledger.trades
    journal = tmp_path / "j.sqlite"
    result = CliRunner().invoke(cli.main, ["run", str(path), "--broker", "sim", "--from", "2014-01-01",
                                           "--journal", str(journal)])
    assert result.exit_code == 0, result.output
    rows = sqlite3.connect(journal).execute(
        "SELECT quantity, entry_price, exit_price, exit_rule FROM trades ORDER BY rowid").fetchall()
    assert [(q, round(e, 6), round(x, 6), r) for q, e, x, r in rows] == \
        [(t.quantity, round(t.entry_price, 6), round(t.exit_price, 6), t.exit_rule) for t in backtest]
    assert any(q == 30 for q, *_ in rows)


# ---- options at the quote date nearest a DTE target

SPXW = ROOT.parent / "shared" / "data" / "optopsy_v1" / "test_options_data_full.csv"


def test_a_dte_target_is_the_trading_day_nearest_it_ties_to_the_earlier():
    import datetime as dt

    from engine.market.expiry import NoExpiry, parse_rule, resolve

    listed = [dt.date(2018, 2, 16), dt.date(2018, 3, 16)]

    def on(day):
        try:
            return resolve({"dte": 31}, day, "NYSE", listed=listed)
        except NoExpiry as exc:
            return exc.reason

    # Feb 16 less 31 days is Tuesday Jan 16 (Monday the 15th is a holiday): that day only
    assert on(dt.date(2018, 1, 16)) == dt.date(2018, 2, 16)
    assert "the next: 2018-01-16 for the 2018-02-16 expiry" in on(dt.date(2018, 1, 12))
    assert "the next: 2018-02-13 for the 2018-03-16 expiry" in on(dt.date(2018, 1, 17))
    # Jan 31 less 31 days is Sunday Dec 31: Friday the 29th (33 days) and Tuesday Jan 2 (29) tie,
    # and the earlier wins
    assert resolve({"dte": 31}, dt.date(2017, 12, 29), "NYSE", listed=[dt.date(2018, 1, 31)]) == dt.date(2018, 1, 31)
    assert isinstance(parse_rule({"dte": 31, "prefer": "nearest"}), type(parse_rule({"dte": 31})))
    with pytest.raises(ValueError, match="is a target"):
        parse_rule({"dte": 31, "prefer": "farthest"})


DTE_CONDOR = """\
kind: strategy
name: dte-target
underlying: SPX
universe: [SPX]
data: {{bar: 1d, chains: {chains}}}
orders:
  condor:
    expiry: {{dte: 27}}
    legs:
      short_put:  {{right: put,  action: sell, strike: {{delta: 0.15}}}}
      long_put:   {{right: put,  action: buy,  strike: short_put.strike - 50}}
      short_call: {{right: call, action: sell, strike: {{delta: 0.15}}}}
      long_call:  {{right: call, action: buy,  strike: short_call.strike + 50}}
    quantity: 1
    price: mid
entry:
  - {{name: open, when: credit > 0, order: condor}}
exit:
  - {{name: a week left, when: "abs(position.dte - 7) <= abs(position.next_dte - 7)"}}
risk: {{max_open_positions: 1}}
backtest: {{cash: 100000, options: {{fill_fraction: 1}}}}
"""


@pytest.mark.skipif(not SPXW.is_file(), reason="../shared/data (the SPXW chains) is not present")
def test_options_open_and_close_at_the_quote_dates_nearest_their_dte_targets(tmp_path):
    """On the real SPXW chains (the January 31 expiry quoted in January, February 28 in February):
    27 days before is Thursday Jan 4 and Thursday Feb 1; 7 days before, Wednesday Jan 24 and
    Wednesday Feb 21. Read from the file by hand: every quote date of each expiry, its days to
    expiry, the nearest to each target."""
    import csv
    import datetime as dt

    quotes: dict[dt.date, set] = {}
    with SPXW.open(encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            expiry = dt.datetime.strptime(row["expiration"], "%m/%d/%Y").date()
            quotes.setdefault(expiry, set()).add(dt.datetime.strptime(row["quotedate"], "%m/%d/%Y").date())

    def nearest(expiry, n):
        return min(sorted(quotes[expiry]), key=lambda d: abs((expiry - d).days - n))

    path = tmp_path / "dte.yaml"
    path.write_text(DTE_CONDOR.format(chains=SPXW))
    trades = bt.run(bt.prepare(path)).ledger.trades
    assert len(trades) == 2
    import pandas as pd

    for trade in trades:
        expiry = dt.date.fromisoformat(trade.legs["expiry"])
        opened = pd.Timestamp(trade.entry_time, tz="UTC").tz_convert("America/New_York").date()
        closed = pd.Timestamp(trade.exit_time, tz="UTC").tz_convert("America/New_York").date()
        # dated by the quote it was priced on
        assert opened == nearest(expiry, 27)
        assert closed == nearest(expiry, 7)
        assert trade.exit_rule == "a week left"
    assert [t.legs["expiry"] for t in trades] == ["2018-01-31", "2018-02-28"]
    assert [str(nearest(dt.date(2018, 1, 31), 27)), str(nearest(dt.date(2018, 2, 28), 7))] == \
        ["2018-01-04", "2018-02-21"]


def test_an_exit_without_a_reason_is_journaled_with_its_rules_name(tmp_path):
    """The schema: `reason: null` is the rule's name (it was journaled as "when"), on the fast
    path and in the kernel alike."""
    from engine.runtime import backtest as bt

    text = PYRAMID.format(data=DATA, n=1, quantity="10", stop='  - {name: stop, stop: "position.entry_price * 0.97"}',
                          risk="")
    path = tmp_path / "no_reason.yaml"
    path.write_text(text)
    kernel = bt.run(bt.prepare(path)).ledger.trades                     # a stop: the kernel
    assert {t.exit_reason for t in kernel} == {"below", "stop"}
    path.write_text(PYRAMID.format(data=DATA, n=1, quantity="10", stop="", risk=""))
    fast = bt.run(bt.prepare(path))
    assert fast.timings.get("fast_path") == 1.0 and {t.exit_reason for t in fast.ledger.trades} == {"below"}

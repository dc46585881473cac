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

    prep = bt.prepare(always_in(tmp_path))
    plain = session.simulate(prep, streaming=False, run_id="p")
    waited = []
    after_exit = Kernel._after_exit
    monkeypatch.setattr(Kernel, "_after_exit", lambda self, st: (waited.append(st.symbol), after_exit(self, st)))
    real = session.SimBroker
    session.SimBroker = _Late
    try:
        late = session.simulate(prep, streaming=False, run_id="l")
    finally:
        session.SimBroker = real
    assert not late.runner.errors
    assert [(t.side, t.entry_time, t.entry_price, t.exit_time, t.exit_price) for t in late.ledger.trades] == \
        [(t.side, t.entry_time, t.entry_price, t.exit_time, t.exit_price) for t in plain.ledger.trades]
    assert len(late.ledger.trades) > 70
    assert len(waited) == len(late.ledger.trades)       # every reversal's entry waited for its exit

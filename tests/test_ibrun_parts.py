"""The pure parts of `run --broker ib` (runtime/ibrun.py): IB's bar sizes and durations, the
warm-up's length, what the journal knows of a strategy's orders and positions, restoring them."""

import pandas as pd
import pytest

from engine.runtime.ibrun import history_bars, ib_bar_size, ib_duration, journal_state
from engine.runtime.journal import Journal


@pytest.mark.parametrize("bar, ib", [("1m", "1 min"), ("5m", "5 mins"), ("1h", "1 hour"), ("1d", "1 day"),
                                     ("30s", "30 secs")])
def test_bar_sizes_as_ib_spells_them(bar, ib):
    assert ib_bar_size(bar) == ib


def test_durations_cover_the_bars_asked_for():
    assert ib_duration("1m", 60) == "3 D"          # an hour of minutes, even at the open
    assert ib_duration("1d", 200) == "287 D"       # 200 trading days with weekends, and a week spare
    assert ib_duration("1d", 300) == "2 Y"
    assert ib_duration("1d", 1000) == "4 Y"
    assert ib_duration("5m", 500) == "11 D"        # 500 x 5 min over 6.5 h days, with weekends


class _Node:
    def __init__(self, warmup, market=True):
        self.warmup, self.market = warmup, market


class _Plan:
    nodes = [_Node(29), _Node(9), _Node(400, market=False)]


@pytest.mark.parametrize("history, bar, bars", [(None, "1d", 30), ("300 bars", "1d", 300), ("10 bars", "1d", 30),
                                                 ("2d", "1m", 780), ("1y", "1d", 252), ("3w", "1h", 95)])
def test_the_warm_up_is_data_history_and_at_least_the_plans_warm_up(history, bar, bars):
    assert history_bars(_Plan(), history, bar) == bars


def test_a_history_that_is_neither_bars_nor_a_span_is_refused():
    with pytest.raises(ValueError, match="expected a count of bars or a span"):
        history_bars(_Plan(), "forever", "1d")


def _journal(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    for run, mode, account in (("r1", "paper", "DU1"), ("r2", "dry-run", "DU1"), ("r3", "paper", "DU2")):
        j.start_run(mode, "s", settings={"account": account}, run_id=run)
    t = "2024-01-02T15:00:00+00:00"
    j.order("r1", "qtrade:s:1", t, "SPY", "buy", 100, "market", rule="entry")
    j.order_status("qtrade:s:1", "filled", t)
    j.fill("r1", "qtrade:s:1", t, "SPY", "buy", 60, 100.0, exec_id="e1.01")
    j.fill("r1", "qtrade:s:1", t, "SPY", "buy", 40, 101.0, exec_id="e2.01")
    j.order("r1", "qtrade:s:2", t, "SPY", "sell", 100, "stop", stop_price=95.0, rule="stop")
    j.order_status("qtrade:s:2", "submitted", t)
    j.order("r1", "qtrade:s:3", t, "AAPL", "buy", 10, "market")
    j.fill("r1", "qtrade:s:3", t, "AAPL", "buy", 10, 190.0, exec_id="e3.01")
    j.fill("r1", "qtrade:s:3", t, "AAPL", "sell", 10, 191.0, exec_id="e4.01")
    j.order("r2", "qtrade:s:4", t, "MSFT", "buy", 5, "market")        # a dry run's wallet: no account
    j.fill("r2", "qtrade:s:4", t, "MSFT", "buy", 5, 400.0, exec_id="w1")
    j.order("r3", "qtrade:s:5", t, "QQQ", "buy", 5, "market")         # another account
    j.fill("r3", "qtrade:s:5", t, "QQQ", "buy", 5, 400.0, exec_id="q1")
    j.order("r1", "qtrade:other:1", t, "SPY", "buy", 1, "market")     # another strategy
    return j


def test_the_journal_state_is_the_strategys_on_this_account_in_paper_or_live(tmp_path):
    with _journal(tmp_path) as j:
        state = journal_state(j, "qtrade:s:", "DU1")
    assert [o["order_ref"] for o in state.orders] == ["qtrade:s:2", "qtrade:s:3"]
    assert state.exec_ids == {"e1.01", "e2.01", "e3.01", "e4.01"}
    assert list(state.positions) == ["SPY"]                        # AAPL was closed
    spy = state.positions["SPY"]
    assert spy.quantity == 100 and spy.avg_price == pytest.approx(100.4)
    assert spy.entry_ref == "qtrade:s:1" and spy.rule == "entry"
    assert spy.entry_time == pd.Timestamp("2024-01-02T15:00:00+00:00").value

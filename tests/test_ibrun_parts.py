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
                                                 ("2d", "1m", 780), ("1y", "1d", 252), ("3w", "1h", 95),
                                                 ("1 bar", "1d", 30), ("40 bar", "1d", 40)])
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


def test_a_pyramided_position_counts_its_entries_so_a_restart_adds_no_more_than_allowed(tmp_path):
    """Partial fills of one order are one entry; each order that added to the position is another
    (risk.pyramiding counts them after a restart as before it)."""
    with _journal(tmp_path) as j:
        t = "2024-01-03T15:00:00+00:00"
        j.order("r1", "qtrade:s:6", t, "SPY", "buy", 50, "market", rule="entry")
        j.fill("r1", "qtrade:s:6", t, "SPY", "buy", 50, 104.0, exec_id="e6.01")
        state = journal_state(j, "qtrade:s:", "DU1")
    spy = state.positions["SPY"]
    assert spy.quantity == 150 and spy.avg_price == pytest.approx((6000 + 4040 + 5200) / 150)
    assert spy.entries == 2


CONDOR_LEGS = [{"name": "short_put", "right": "put", "action": "sell", "ratio": 1, "strike": 305.0,
                "expiry": "2019-11-15"},
               {"name": "long_put", "right": "put", "action": "buy", "ratio": 1, "strike": 304.0, "expiry": "2019-11-15"},
               {"name": "short_call", "right": "call", "action": "sell", "ratio": 1, "strike": 311.0,
                "expiry": "2019-11-15"},
               {"name": "long_call", "right": "call", "action": "buy", "ratio": 1, "strike": 312.0,
                "expiry": "2019-11-15"}]


def _condor_journal(tmp_path, quantity=2):
    j = Journal(tmp_path / "j.sqlite")
    j.start_run("paper", "c", settings={"account": "DU1"}, run_id="r1")
    t = "2019-11-08T14:40:00+00:00"
    j.order("r1", "qtrade:c:1", t, "XSP", "sell", quantity, "limit", limit_price=0.3, rule="enter", legs=CONDOR_LEGS)
    j.order_status("qtrade:c:1", "filled", t)
    j.fill("r1", "qtrade:c:1", t, "XSP condor", "sell", quantity, 0.3, 100.0, exec_id="bag.01")
    j.order_ids("qtrade:c:1", broker_order_id=41)
    return j


def _leg(underlying, leg):          # conIds as IB would give them: one per option
    assert underlying == "XSP"
    code = f"{leg['right'][0].upper()}{int(leg['strike'])}"
    return {"P305": 11, "P304": 12, "C311": 13, "C312": 14}[code], f"XSP 191115{code}", 100.0


def test_an_open_combo_is_compared_with_ib_leg_by_leg(tmp_path):
    """IB holds a condor as four legs: the journal's open combo becomes those four positions
    (short legs negative, times the quantity), each leg's conId mapped back to its combo."""
    with _condor_journal(tmp_path) as j:
        state = journal_state(j, "qtrade:c:", "DU1")
    assert state.max_order_id == 41           # the next session's order ids go past it
    pos = state.positions["XSP condor"]
    assert pos.quantity == -2 and pos.underlying == "XSP" and [leg["name"] for leg in pos.legs][0] == "short_put"
    view = state.view(_leg)
    assert {p.con_id: p.quantity for p in view.positions} == {11: -2, 12: 2, 13: -2, 14: 2}
    assert set(view.traded) >= {11, 12, 13, 14}
    assert state.legs_of == {c: {"XSP condor"} for c in (11, 12, 13, 14)}
    assert all(p.con_id != 0 for p in view.positions)           # never a conId-0 position IB cannot hold


def test_combo_flags_tell_a_combo_closed_outside_from_one_whose_legs_disagree(tmp_path):
    from engine.brokers.ib.reconcile import Snapshot, reconcile
    from engine.brokers.ib.account import Holding

    with _condor_journal(tmp_path) as j:
        state = journal_state(j, "qtrade:c:", "DU1")
    view = state.view(_leg)

    def report_for(held):
        positions = tuple(Holding("DU1", con, f"leg{con}", "XSP", "OPT", qty, 30.0, 100.0) for con, qty in held.items())
        return reconcile(Snapshot(positions, (), (), ()), view, "qtrade:c:")

    from engine.brokers.ib.reconcile import combo_flags

    same = report_for({11: -2, 12: 2, 13: -2, 14: 2})
    assert not same.phantom and not same.unknown and not same.mismatch
    assert combo_flags(same, state.legs_of) == (set(), {})
    gone = report_for({})
    assert combo_flags(gone, state.legs_of) == ({"XSP condor"}, {})
    half = report_for({11: -2, 12: 2})
    closed, broken = combo_flags(half, state.legs_of)
    assert closed == set() and sorted(f.con_id for f in broken["XSP condor"]) == [13, 14]
    without = state.view(None)                   # legs unknown: the combo is left out, never a conId 0
    assert without.positions == ()


def test_the_status_line_names_a_position_by_its_contract():
    """One line a minute: positions by the local symbol of the contract held (NQZ3), not the root."""
    from types import SimpleNamespace

    from engine.runtime.ibrun import status_line

    def position(symbol, quantity=1.0, owner="s"):
        return SimpleNamespace(symbol=symbol, quantity=quantity, avg_price=16000.0, multiplier=20.0, owner=owner)

    kernel = SimpleNamespace(ledger=SimpleNamespace(positions={"NQ": position("NQ"), "XSP condor": position(
        "XSP condor")}, trades=[]), orders_by_ref={}, marks=lambda now: {"NQ": 16010.0})
    broker = SimpleNamespace(held_contract=lambda s: SimpleNamespace(local_symbol="NQZ3") if s == "NQ" else None,
                             lines_status=lambda: "lines 2/50", state="ready")
    line = status_line(kernel, broker, pd.Timestamp("2023-12-04T15:00Z").value, "America/New_York")
    assert line == ("2023-12-04 10:00 ready | lines 2/50 | positions: NQZ3 1, XSP condor 1 | working orders: 0 | "
                    "today's P&L +200.00")
    # positions_per_symbol: a second owner's position in NQ (keyed NQ#2) by its contract and its owner
    kernel.ledger.positions["NQ#2"] = position("NQ", 2.0, "contrarian")
    kernel.marks = lambda now: {"NQ": 16010.0, "NQ#2": 16010.0}
    line = status_line(kernel, broker, pd.Timestamp("2023-12-04T15:00Z").value, "America/New_York")
    assert "positions: NQZ3 1, XSP condor 1, NQZ3 2 (contrarian) |" in line and "today's P&L +600.00" in line
    # why no entry can go now: outside the schedule's entry window, or entries stopped
    from engine.check.model import Schedule

    window = Schedule.from_spec({"entry_window": ["09:30", "11:00"]})
    at = pd.Timestamp("2023-12-04T15:00Z").value
    assert status_line(kernel, broker, at, "America/New_York", window).endswith("today's P&L +600.00")
    assert status_line(kernel, broker, at + 7200 * 10**9, "America/New_York", window).endswith(
        "today's P&L +600.00 | entries: outside the entry window 09:30-11:00")
    kernel.entries_refused_now = lambda: "max_daily_loss: down 502.00 today (limit 500.00)"
    assert status_line(kernel, broker, at, "America/New_York", window).endswith(
        " | entries refused: max_daily_loss: down 502.00 today (limit 500.00)")
    kernel.entries_refused_now = lambda: "entries stopped: the close of NQ (exit) was refused by the broker"
    assert status_line(kernel, broker, at + 7200 * 10**9, "America/New_York", window).endswith(
        " | entries stopped: the close of NQ (exit) was refused by the broker")


def test_the_kernel_says_why_an_entry_would_be_refused_now_without_changing_the_account():
    """What the status line reads: the risk limits as a decision would check them now."""
    from pathlib import Path

    from engine.runtime import backtest as bt

    root = Path(__file__).resolve().parents[1]
    kernel = bt.run(bt.prepare(root / "strategies" / "iron_condor.yaml"), fast=False).runner
    assert kernel.entries_refused_now() is None         # flat at the end, nothing reached
    equity = kernel.account_view()[0]
    kernel._day, kernel._day_start = kernel._now // 86_400_000_000_000, equity + 600.0
    said = kernel.entries_refused_now()
    assert said == "max_daily_loss: down 600.00 today (limit 500.00)", said
    assert kernel._day_start == equity + 600.0          # read, not reset
    kernel.halted = "the close of XSP was refused"
    assert kernel.entries_refused_now() == "entries stopped: the close of XSP was refused"


def _owners_journal(tmp_path):
    """positions_per_symbol: follower and contrarian hold SPY at once (100 + 40, with con_id 7),
    contrarian's theta holds a combo journaled under its second lane's key; follower's first
    SPY position was closed before."""
    j = Journal(tmp_path / "j.sqlite")
    j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r1")
    t = "2024-01-02T15:0{}:00+00:00"
    for seq, (symbol, action, qty, price, owner) in enumerate([
            ("SPY", "buy", 10, 99.0, "follower"), ("SPY", "sell", 10, 99.5, "follower"),
            ("SPY", "buy", 100, 100.0, "follower"), ("SPY", "buy", 40, 102.0, "contrarian"),
            ("XSP condor#2", "sell", 1, 0.3, "theta")], start=1):
        ref = f"qtrade:s:{seq}"
        legs = CONDOR_LEGS if symbol.startswith("XSP") else None
        j.order("r1", ref, t.format(seq), symbol, action, qty, "market", rule=f"{owner} rule", owner=owner,
                intent="open" if action == "buy" or legs else "close", legs=legs)
        j.order_status(ref, "filled", t.format(seq))
        j.fill("r1", ref, t.format(seq), symbol, action, qty, price, 100.0 if legs else 1.0, exec_id=f"e{seq}.01",
               con_id=None if legs else 7, local_symbol=None if legs else "SPY")
    return j


def test_each_owners_position_in_one_symbol_is_its_own_and_reconciled_by_their_sum(tmp_path):
    """Two owners' SPY positions are two journal positions (keyed SPY@owner, each its entry and
    its average); a combo journaled under its lane's key (XSP condor#2) is the owner's combo;
    reconciliation compares IB's one netted SPY position with their sum: 140 agrees, 100 is one
    mismatch for the sum, flat is one phantom for the sum."""
    from engine.brokers.ib.account import Holding
    from engine.brokers.ib.reconcile import Snapshot, reconcile

    with _owners_journal(tmp_path) as j:
        state = journal_state(j, "qtrade:s:", "DU1")
    assert set(state.positions) == {"SPY@follower", "SPY@contrarian", "XSP condor"}
    follower, contrarian = state.positions["SPY@follower"], state.positions["SPY@contrarian"]
    assert (follower.symbol, follower.owner, follower.quantity, follower.avg_price, follower.entry_ref) == \
        ("SPY", "follower", 100, 100.0, "qtrade:s:3")
    assert (contrarian.symbol, contrarian.owner, contrarian.quantity, contrarian.avg_price) == \
        ("SPY", "contrarian", 40, 102.0)
    combo = state.positions["XSP condor"]
    assert (combo.symbol, combo.owner, combo.quantity, combo.underlying) == ("XSP condor", "theta", -1, "XSP")
    view = state.view(_leg)
    assert state.legs_of == {c: {"XSP condor"} for c in (11, 12, 13, 14)}
    legs = tuple(Holding("DU1", con, f"leg{con}", "XSP", "OPT", qty, 30.0, 100.0)
                 for con, qty in {11: -1, 12: 1, 13: -1, 14: 1}.items())

    def report_for(spy):
        held = (Holding("DU1", 7, "SPY", "SPY", "STK", spy, 101.0, 1.0),) if spy else ()
        return reconcile(Snapshot(held + legs, (), (), ()), view, "qtrade:s:")

    assert report_for(140).clean
    [mismatch] = report_for(100).mismatch
    assert (mismatch.journal_quantity, mismatch.ib_quantity) == (140, 100)
    assert mismatch.journal_avg_price == pytest.approx((100 * 100.0 + 40 * 102.0) / 140)
    flat = report_for(0)
    assert [(f.con_id, f.journal_quantity) for f in flat.phantom] == [(7, 140)] and not flat.mismatch


def test_a_phantom_under_two_owners_closes_each_in_the_journal_and_says_so_once(tmp_path):
    from engine.brokers.ib.account import Holding
    from engine.brokers.ib.reconcile import Snapshot, reconcile
    from engine.runtime.ibrun import apply_report

    said = []
    with _owners_journal(tmp_path) as j:
        state = journal_state(j, "qtrade:s:", "DU1")
        view = state.view(_leg)
        legs = tuple(Holding("DU1", con, f"leg{con}", "XSP", "OPT", qty, 30.0, 100.0)
                     for con, qty in {11: -1, 12: 1, 13: -1, 14: 1}.items())
        report = reconcile(Snapshot(legs, (), (), ()), view, "qtrade:s:")
        j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r2")
        apply_report(j, "r2", report, state, "qtrade:s:", pd.Timestamp("2024-01-03T15:00Z").value, said.append)
        notes = j._rows("SELECT kind, subject, message FROM notes")
        fills = j._rows("SELECT quantity, price, action, exec_id FROM fills WHERE order_ref = 'qtrade:s:external'")
        after = journal_state(j, "qtrade:s:", "DU1")
    assert [(n["kind"], n["subject"]) for n in notes] == [("phantom", "SPY")]
    assert notes[0]["message"] == ("the journal held 140 SPY (follower 100, contrarian 40), IB holds none: closed "
                                   "externally, no exit sent")
    assert sorted((f["quantity"], f["price"], f["action"], f["exec_id"]) for f in fills) == \
        [(40, 102.0, "sell", "external:r2:7@contrarian"), (100, 100.0, "sell", "external:r2:7@follower")]
    assert set(after.positions) == {"XSP condor"}           # both SPY positions closed, the combo kept


def test_a_position_opened_by_a_roll_is_restored_with_its_back_adjustment(tmp_path):
    """Two rolls journaled (NQZ3 -> NQH4 -> NQM4): the restart reads the position's carried move
    (the price it made in each contract it left, per unit) and when its first entry filled, so its
    rules read the same back-adjusted entry price as before the restart; unfinished_rolls finds
    nothing to send (each roll's open is journaled)."""
    from engine.runtime.ibrun import unfinished_rolls

    j = Journal(tmp_path / "j.sqlite")
    j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r1")
    legs = [("1", "2023-12-01T15:00:00+00:00", "cross up", "open", "buy", 15800.0, "NQZ3"),
            ("2", "2023-12-08T15:00:00+00:00", "roll", "close", "sell", 15900.0, "NQZ3"),
            ("3", "2023-12-08T15:00:00+00:00", "roll", "open", "buy", 16000.0, "NQH4"),
            ("4", "2024-03-08T15:00:00+00:00", "roll", "close", "sell", 16500.0, "NQH4"),
            ("5", "2024-03-08T15:00:00+00:00", "roll", "open", "buy", 16560.0, "NQM4")]
    for seq, t, rule, intent, action, price, local in legs:
        ref = f"qtrade:s:{seq}"
        j.order("r1", ref, t, "NQ", action, 1, "market", rule=rule, intent=intent)
        j.order_status(ref, "filled", t)
        j.fill("r1", ref, t, "NQ", action, 1, price, 20.0, 2.25, exec_id=f"e{seq}", local_symbol=local)
    state = journal_state(j, "qtrade:s:", "DU1")
    nq = state.positions["NQ"]
    assert (nq.avg_price, nq.local_symbol, nq.rule) == (16560.0, "NQM4", "roll")
    assert nq.carried == (15900.0 - 15800.0) + (16500.0 - 16000.0)
    assert nq.avg_price - nq.carried == 15800.0 + (16000.0 - 15900.0) + (16560.0 - 16500.0)   # entry + both gaps
    assert nq.origin_time == pd.Timestamp("2023-12-01T15:00:00+00:00").value
    assert unfinished_rolls(j, state, "qtrade:s:") == []
    # the second roll's open never journaled: the restart sends it, once, as a buy of 1
    j.db.execute("DELETE FROM fills WHERE order_ref = 'qtrade:s:5'")
    j.db.execute("DELETE FROM orders WHERE order_ref = 'qtrade:s:5'")
    state = journal_state(j, "qtrade:s:", "DU1")
    assert "NQ" not in state.positions
    (due,) = unfinished_rolls(j, state, "qtrade:s:")
    assert (due["action"], due["quantity"], due["closed_in"], due["price"]) == ("buy", 1.0, "NQH4", 16500.0)
    j.close()


@pytest.mark.parametrize("sec_type, mapped, at_ib, taken", [
    ("FUT", 0.25, 0.5, 0.5),        # IB's grid coarser: the map's quarter ticks would be refused (110)
    ("FUT", 0.25, 0.1, 0.1),        # the map's 0.25 is not on IB's 0.1 grid (0.35 would be off it)
    ("STK", 0.01, 0.0001, 0.01),    # finer at IB and the cent lies on it: the cent stays valid at any price
    ("STK", 0.01, 0.01, 0.01),      # the same: nothing to say
    ("IND", 0.01, 0.05, 0.01),      # an index is not traded itself (its options' combos price their own ticks)
])
def test_an_ib_run_takes_ibs_minimum_price_variation_where_the_maps_is_not_on_its_grid(sec_type, mapped, at_ib,
                                                                                      taken):
    from types import SimpleNamespace

    from engine.check.model import Instrument
    from engine.runtime.ibrun import use_ib_tick

    prep = SimpleNamespace(instruments={"X": Instrument("X", sec_type, tick_size=mapped)})
    ib = SimpleNamespace(resolved=lambda symbol: SimpleNamespace(min_tick=at_ib))
    said = []
    use_ib_tick(prep, ib, "X", said.append)
    assert prep.instruments["X"].tick_size == taken
    assert bool(said) == (taken != mapped)
    if said:
        assert said == [f"X: IB's minimum price variation is {at_ib:g}, the instrument map's tick_size {mapped:g}: "
                        "limit and stop prices go on IB's grid"]


def test_a_symbol_ib_cannot_resolve_keeps_the_maps_tick():
    from types import SimpleNamespace

    from engine.brokers.ib.contracts import ContractError
    from engine.check.model import Instrument
    from engine.runtime.ibrun import use_ib_tick

    def resolved(symbol):
        raise ContractError("IB 200")

    prep = SimpleNamespace(instruments={"X": Instrument("X", "STK", tick_size=0.01)})
    said = []
    use_ib_tick(prep, SimpleNamespace(resolved=resolved), "X", said.append)
    assert prep.instruments["X"].tick_size == 0.01 and not said


def test_the_runs_totals_are_its_round_trips_its_commission_and_its_open_positions_at_the_last_prices():
    """run_totals, the last line of an IB run, on a real kernel's run (the SMA crossover on the
    simulator, one position open at the end): the trades' P&L net of commission, the fills'
    commission, the open position at the last close."""
    from engine.runtime import backtest as bt
    from engine.runtime.ibrun import run_totals

    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "strategies" / "sma_crossover.yaml"
    result = bt.run(bt.prepare(path, overrides={"fast": "5"}), fast=False)
    kernel = result.runner
    trades, positions = kernel.ledger.trades, kernel.ledger.positions
    assert trades and positions
    end = max(int(b.end[-1]) for b in (s.bars for s in kernel.syms.values()))
    marks = kernel.marks(end)
    open_pnl = sum((marks[s] - p.avg_price) * p.quantity * p.multiplier for s, p in positions.items())
    fees = sum(f.commission for f in kernel.ledger.fills)
    line = run_totals(kernel, end)
    assert line == (f"{len(trades)} round trips: P&L {sum(t.pnl for t in trades):+,.2f} net of their commission; "
                    f"commission paid {fees:,.2f}; open position {open_pnl:+,.2f} at the last prices")
    assert not kernel.commission_pending()


def test_fills_of_another_journals_orders_and_this_runs_own_make_one_position(tmp_path):
    """A run on a new journal reconciles in the fills of the strategy's orders another journal
    sent (no order row here, so no owner); its own orders' fills have the strategy as owner. They
    are one position at IB, and one in the journal's state: a restart restores the lot its own
    last order opened (15818), not the other journal's closed one (15856, once restored so and
    its next exit's P&L wrong by 760)."""
    with Journal(tmp_path / "j.sqlite") as j:
        j.start_run("paper", "nq-cross", settings={"account": "DU1"}, run_id="r1")
        t = "2023-12-04T{}+00:00"
        # reconciled in: the other journal's buy, with no order row
        j.fill("r1", "qtrade:nq-cross:47", t.format("17:40:09"), "NQ", "buy", 1, 15856.0, 20.0, exec_id="x47.01")
        for seq, action, price, at in ((48, "sell", 15820.25, "20:13:14"), (49, "buy", 15818.0, "20:19:10")):
            j.order("r1", f"qtrade:nq-cross:{seq}", t.format(at), "NQ", action, 1, "market", rule="cross",
                    owner="nq-cross")
            j.order_status(f"qtrade:nq-cross:{seq}", "filled", t.format(at))
            j.fill("r1", f"qtrade:nq-cross:{seq}", t.format(at), "NQ", action, 1, price, 20.0, exec_id=f"x{seq}.01")
        state = journal_state(j, "qtrade:nq-cross:", "DU1")
    assert list(state.positions) == ["NQ"]
    nq = state.positions["NQ"]
    assert nq.quantity == 1 and nq.avg_price == 15818.0 and nq.entry_ref == "qtrade:nq-cross:49"
    assert nq.owner == "nq-cross"


def test_a_day_of_another_journals_fills_is_said_in_a_few_lines_and_journaled_each(tmp_path):
    """Twelve fills of the strategy's orders this journal never held (another journal's day):
    each journaled with its note, the first and last three said and the rest counted."""
    from ibbroker.test_reconcile import NQZ5, ex, journal as view, snap

    from engine.brokers.ib.reconcile import reconcile
    from engine.runtime.ibrun import apply_report

    fills = [ex(f"e{i}.01.01", f"qtrade:s:{i}", con=NQZ5, qty=1, perm=100 + i, price=15800 + i / 4,
                action="buy" if i % 2 else "sell", local="NQZ5", mult=20.0, t=i * 10**9) for i in range(1, 13)]
    report = reconcile(snap(executions=fills), view())
    said: list[str] = []
    with Journal(tmp_path / "j.sqlite") as j:
        j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r1")
        apply_report(j, "r1", report, journal_state(j, "qtrade:s:", "DU1"), "qtrade:s:", 0, said.append)
        notes = [n for n in j._rows("SELECT * FROM notes") if n["kind"] == "missed_fill"]
    assert len(notes) == 12 and "@ 15800.25 (e1.01.01)" in notes[0]["message"]
    lines = [s for s in said if s.startswith("reconcile: fill ") or s.startswith("reconcile: ... ")]
    assert len(lines) == 7 and lines[3] == "reconcile: ... 6 more fills, each journaled (notes: missed_fill)"
    assert lines[0].endswith("at 15800.25") and lines[-1].startswith("reconcile: fill e12.01.01")


def test_a_missed_fill_past_its_orders_quantity_is_an_error_not_booked_to_it(tmp_path):
    """Two runs on two journals both sent `qtrade:s:2` (sell 10): at the restart, IB's executions
    of that ref add up to twice the order. The second is not booked to this journal's order (it
    is another run's): journaled as an error and a note, with why; the first, the order's own,
    is booked as ever."""
    from ibbroker.test_reconcile import NQZ5, ex, journal as view, snap

    from engine.brokers.ib.reconcile import reconcile
    from engine.runtime.ibrun import apply_report, overfills

    with Journal(tmp_path / "j.sqlite") as j:
        j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r1")
        t = "2024-01-02T15:00:00+00:00"
        j.order("r1", "qtrade:s:2", t, "NQ", "sell", 10, "market", rule="exit")
        fills = [ex(f"e{i}.01.01", "qtrade:s:2", con=NQZ5, qty=10, perm=100 + i, price=15800.0, action="sell",
                    local="NQZ5", mult=20.0, t=i * 10**9) for i in (1, 2)]
        report = reconcile(snap(executions=fills), view())
        assert len(report.fills) == 2
        over = overfills(j, report)
        assert list(over) == ["e2.01.01"]
        said: list[str] = []
        j.start_run("paper", "s", settings={"account": "DU1"}, run_id="r2")
        apply_report(j, "r2", report, journal_state(j, "qtrade:s:", "DU1"), "qtrade:s:", 0, said.append)
        booked = j._rows("SELECT exec_id, quantity FROM fills WHERE order_ref = 'qtrade:s:2'")
        errors = j._rows("SELECT message FROM errors")
        notes = [n["kind"] for n in j._rows("SELECT kind FROM notes")]
    assert booked == [{"exec_id": "e1.01.01", "quantity": 10.0}]
    assert len(errors) == 1 and errors[0]["message"].startswith(
        "execution e2.01.01 (sell 10 NQZ5) carries the ref qtrade:s:2, whose order for 10 has 10 filled already")
    assert "Two runs traded this strategy on this account" in errors[0]["message"]
    assert "overfill" in notes and notes.count("missed_fill") == 1

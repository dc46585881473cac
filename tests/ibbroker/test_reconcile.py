"""engine/brokers/ib/reconcile.py's pure half: reconcile(snapshot, journal, prefix) on plain data."""

from __future__ import annotations

import time

import pytest

from engine.brokers.ib.account import Holding
from engine.brokers.ib.reconcile import (Adopt, IBExecution, IBOrder, JournalOrder, JournalPosition, JournalView, Report,
                                         Snapshot, confirmed_lost, effective, reconcile)

SPY, AAPL, MSFT, NQZ5 = 756733, 265598, 272093, 563947738
LEGS = (101, 102, 103, 104)          # a condor: long put, short put, short call, long call
BAG = 28812380


def ex(exec_id, ref, con=SPY, qty=100.0, price=260.0, action="buy", sec="STK", perm=1, t=0, commission=1.0,
       local=None, mult=1.0):
    local = local or {SPY: "SPY", AAPL: "AAPL", MSFT: "MSFT"}.get(con, str(con))
    return IBExecution(exec_id, ref, perm, 7, 1, con, local, "SPY", sec, action, qty, price, t, mult, commission)


def order(ref, perm=1, status="Submitted", qty=100.0, filled=0.0, sec="STK", con=SPY, legs=(), action="buy"):
    return IBOrder(ref, perm, 7, 1, con, "SPY" if sec == "STK" else "", "SPY", sec, action, qty, filled, status,
                   "LMT", 250.0, None, legs)


def pos(con, qty, avg_cost, local, mult=1.0, sec="STK"):
    return Holding("DU1234567", con, local, local, sec, qty, avg_cost, mult)


def snap(positions=(), open_orders=(), completed=(), executions=()):
    return Snapshot(tuple(positions), tuple(open_orders), tuple(completed), tuple(executions))


def journal(orders=(), exec_ids=(), positions=(), commissions=None, traded=()):
    return JournalView(tuple(orders), frozenset(exec_ids), tuple(positions), commissions or {}, frozenset(traded))


def jo(tag, status="submitted", qty=100.0, perm=0, legs=(), symbol="SPY", con=SPY, combo=False):
    return JournalOrder(tag, symbol, "buy", qty, status, "SPY", con, 7, perm, combo, legs)


def jp(con, qty, avg, local, mult=1.0):
    return JournalPosition(con, local, local, qty, avg, mult)


# ---- orders ----------------------------------------------------------------------------------
def test_a_journaled_order_working_at_ib_is_adopted_and_nothing_else_is_proposed():
    working = order("qtrade:s:1", perm=11)
    report = reconcile(snap(open_orders=[working]), journal([jo("qtrade:s:1")]))
    assert report == Report(adopt=(Adopt("qtrade:s:1", working, jo("qtrade:s:1")),))
    assert report.clean and report.blocked == frozenset()


def test_a_created_order_that_reached_ib_is_adopted_not_called_never_sent():
    working = order("qtrade:s:1", perm=11)
    report = reconcile(snap(open_orders=[working]), journal([jo("qtrade:s:1", status="created")]))
    assert [a.tag for a in report.adopt] == ["qtrade:s:1"] and report.never_sent == ()


def test_an_order_of_ours_the_journal_lacks_is_adopted_and_foreign_ones_are_left_alone():
    ours, manual, other = order("qtrade:s:9", perm=12), order("", perm=13), order("thetagang:roll", perm=14)
    report = reconcile(snap(open_orders=[ours, manual, other]), journal())
    assert report.adopt == (Adopt("qtrade:s:9", ours, None),)
    assert report.foreign == (manual, other)
    assert any("not in the journal" in line for line in report.lines())


def test_the_perm_id_identifies_an_order_before_its_ref():
    a, b = order("qtrade:s:1", perm=21), order("qtrade:s:1", perm=22)
    report = reconcile(snap(open_orders=[a, b]), journal([jo("qtrade:s:1", perm=22)]))
    assert report.adopt[0].order is b


def test_an_order_filled_while_disconnected_is_finished_and_its_fill_inserted():
    done = order("qtrade:s:1", perm=11, status="Filled", filled=100)
    fill = ex("e1.01.01", "qtrade:s:1", perm=11, price=261.5, t=5)
    report = reconcile(snap(positions=[pos(SPY, 100, 261.5, "SPY")], completed=[done], executions=[fill]),
                       journal([jo("qtrade:s:1")]))
    assert [(f.tag, f.status, f.filled) for f in report.finished] == [("qtrade:s:1", "filled", 100)]
    [f] = report.fills
    assert (f.exec_id, f.tag, f.symbol, f.quantity, f.price, f.commission, f.time, f.perm_id, f.replaces) == \
        ("e1.01.01", "qtrade:s:1", "SPY", 100, 261.5, 1.0, 5, 11, "")
    assert report.mismatch == () and report.phantom == () and report.clean


def test_an_order_known_only_by_its_executions_is_finished_when_they_cover_it():
    fills = [ex("e1.01.01", "qtrade:s:1", qty=60, perm=11), ex("e2.01.01", "qtrade:s:1", qty=40, perm=11)]
    report = reconcile(snap(positions=[pos(SPY, 100, 260.0, "SPY")], executions=fills), journal([jo("qtrade:s:1")]))
    assert [(f.status, f.filled, f.order) for f in report.finished] == [("filled", 100, None)]
    assert [f.exec_id for f in report.fills] == ["e1.01.01", "e2.01.01"]


def test_a_partial_fill_then_cancel_finishes_cancelled_with_the_filled_quantity():
    done = order("qtrade:s:1", perm=11, status="Cancelled", filled=40)
    report = reconcile(snap(positions=[pos(SPY, 40, 260.0, "SPY")], completed=[done],
                            executions=[ex("e1.01.01", "qtrade:s:1", qty=40, perm=11)]), journal([jo("qtrade:s:1")]))
    assert [(f.status, f.filled) for f in report.finished] == [("cancelled", 40)]
    assert [f.quantity for f in report.fills] == [40] and report.clean


def test_a_rejected_or_inactive_order_finishes_rejected():
    done = order("qtrade:s:1", perm=11, status="Inactive")
    report = reconcile(snap(completed=[done]), journal([jo("qtrade:s:1")]))
    assert [(f.status, f.filled) for f in report.finished] == [("rejected", 0)]


def test_absent_everywhere_created_is_never_sent_and_submitted_is_lost():
    report = reconcile(snap(), journal([jo("qtrade:s:1", status="created"), jo("qtrade:s:2"),
                                        jo("qtrade:s:3", status="partially_filled")]))
    assert report.never_sent == ("qtrade:s:1",)
    assert report.lost == ("qtrade:s:2", "qtrade:s:3")
    assert not report.clean and report.adopt == () and report.fills == ()


def test_a_partly_filled_order_absent_from_the_order_lists_is_lost_with_its_fills_inserted():
    report = reconcile(snap(positions=[pos(SPY, 30, 260.0, "SPY")],
                            executions=[ex("e1.01.01", "qtrade:s:1", qty=30, perm=11)]),
                       journal([jo("qtrade:s:1")]))
    assert report.lost == ("qtrade:s:1",) and [f.quantity for f in report.fills] == [30]
    assert report.mismatch == ()


def test_lost_twice_is_confirmed():
    first = reconcile(snap(), journal([jo("qtrade:s:1"), jo("qtrade:s:2")]))
    second = reconcile(snap(completed=[order("qtrade:s:2", perm=3, status="Cancelled")]),
                       journal([jo("qtrade:s:1"), jo("qtrade:s:2")]))
    assert confirmed_lost(first, second) == ("qtrade:s:1",)


# ---- fills -----------------------------------------------------------------------------------
def test_a_fill_already_journaled_is_not_inserted_twice():
    fills = [ex("e1.01.01", "qtrade:s:1", perm=11), ex("e1.01.01", "qtrade:s:1", perm=11)]   # replayed twice
    report = reconcile(snap(positions=[pos(SPY, 100, 260.0, "SPY")], executions=fills),
                       journal(exec_ids=["e1.01.01"], positions=[jp(SPY, 100, 260.0, "SPY")],
                               commissions={"e1.01.01": 1.0}))
    assert report.fills == () and report.commissions == () and report.clean
    twice = reconcile(snap(positions=[pos(SPY, 100, 260.0, "SPY")], executions=fills), journal())
    assert [f.exec_id for f in twice.fills] == ["e1.01.01"]


def test_a_commission_reported_after_the_fill_updates_the_journaled_row():
    fills = [ex("e1.01.01", "qtrade:s:1", perm=11, commission=1.0),
             ex("e2.01.01", "qtrade:s:1", perm=11, commission=None)]
    report = reconcile(snap(executions=fills, positions=[pos(SPY, 200, 260.0, "SPY")]),
                       journal(exec_ids=["e1.01.01", "e2.01.01"], positions=[jp(SPY, 200, 260.0, "SPY")],
                               commissions={"e1.01.01": 0.0, "e2.01.01": 0.0}))
    assert report.commissions == (("e1.01.01", 1.0),)       # the UNSET one is not an update


def test_a_correction_replaces_the_journaled_execution():
    old, new = ex("e1.01.01", "qtrade:s:1", price=260.0, perm=11), ex("e1.01.02", "qtrade:s:1", price=259.9, perm=11)
    held = [pos(SPY, 100, 259.9, "SPY")]
    report = reconcile(snap(positions=held, executions=[old, new]),
                       journal(exec_ids=["e1.01.01"], positions=[jp(SPY, 100, 260.0, "SPY")]))
    [f] = report.fills
    assert (f.exec_id, f.replaces, f.price) == ("e1.01.02", "e1.01.01", 259.9)
    assert report.clean                                           # the quantity did not change
    assert any("replacing e1.01.01" in line for line in report.lines())


def test_a_correction_the_journal_has_not_seen_either_version_of_is_inserted_once():
    old, new = ex("e1.01.01", "qtrade:s:1", perm=11), ex("e1.01.02", "qtrade:s:1", price=259.9, perm=11)
    report = reconcile(snap(positions=[pos(SPY, 100, 259.9, "SPY")], executions=[new, old]), journal())
    assert [(f.exec_id, f.replaces) for f in report.fills] == [("e1.01.02", "")]
    assert report.clean


def test_a_journaled_correction_is_not_undone_by_the_older_version():
    old, new = ex("e1.01.01", "qtrade:s:1", perm=11), ex("e1.01.02", "qtrade:s:1", price=259.9, perm=11)
    report = reconcile(snap(positions=[pos(SPY, 100, 259.9, "SPY")], executions=[old, new]),
                       journal(exec_ids=["e1.01.01", "e1.01.02"], positions=[jp(SPY, 100, 259.9, "SPY")]))
    assert report.fills == () and report.clean
    only_old = reconcile(snap(positions=[pos(SPY, 100, 259.9, "SPY")], executions=[old]),
                         journal(exec_ids=["e1.01.02"], positions=[jp(SPY, 100, 259.9, "SPY")]))
    assert only_old.fills == ()


def test_a_correction_of_the_quantity_moves_the_expected_position_by_the_difference():
    old, new = ex("e1.01.01", "qtrade:s:1", qty=100, perm=11), ex("e1.01.02", "qtrade:s:1", qty=90, perm=11)
    report = reconcile(snap(positions=[pos(SPY, 90, 260.0, "SPY")], executions=[old, new]),
                       journal(exec_ids=["e1.01.01"], positions=[jp(SPY, 100, 260.0, "SPY")]))
    assert [f.quantity for f in report.fills] == [90] and report.mismatch == ()


def test_executions_without_our_prefix_are_not_ours():
    report = reconcile(snap(executions=[ex("e9.01.01", "manual", perm=99), ex("e8.01.01", "", perm=98)],
                            positions=[pos(SPY, 200, 260.0, "SPY")]), journal())
    assert report.fills == ()
    assert [u.local_symbol for u in report.unknown] == ["SPY"]


def test_effective_keeps_the_newest_version_of_each_execution():
    xs = [ex("a.01.02", "r"), ex("a.01.01", "r"), ex("b.01.01", "r"), ex("a.01.03", "r")]
    assert sorted(effective(xs)) == ["a.01.03", "b.01.01"]


# ---- combos ----------------------------------------------------------------------------------
def _condor_execs(ref, n, qty=2.0, t=0, commission=1.3, perm=31):
    prices = (1.12, 1.50, 1.01, 0.39)
    sides = ("buy", "sell", "sell", "buy")
    legs = [ex(f"c{n}{k}.{k:02d}.01", ref, con=con, qty=qty, price=p, action=s, sec="OPT", perm=perm, t=t,
               commission=commission, mult=100.0) for k, (con, p, s) in enumerate(zip(LEGS, prices, sides), 1)]
    bag = ex(f"c{n}5.05.01", ref, con=BAG, qty=qty, price=1.00, action="sell", sec="BAG", perm=perm, t=t,
             commission=0.0)
    return legs, bag


def _condor_order(ref, status="Filled", qty=2.0, filled=2.0, perm=31):
    legs = tuple((con, 1, a) for con, a in zip(LEGS, ("sell", "buy", "buy", "sell")))
    return order(ref, perm=perm, status=status, qty=qty, filled=filled, sec="BAG", con=BAG, legs=legs, action="sell")


def _condor_positions(qty):
    return [pos(con, q, 100 * p, f"XSP{con}", 100.0, "OPT")
            for con, q, p in zip(LEGS, (qty, -qty, -qty, qty), (1.12, 1.50, 1.01, 0.39))]


def test_a_bag_combo_fill_is_its_bag_execution_with_its_legs_and_their_commissions():
    legs, bag = _condor_execs("qtrade:ic:1", 1)
    report = reconcile(snap(positions=_condor_positions(2), completed=[_condor_order("qtrade:ic:1")],
                            executions=legs + [bag]),
                       journal([jo("qtrade:ic:1", symbol="XSP iron_condor", qty=2, con=0)]))
    [f] = report.fills
    assert (f.exec_id, f.symbol, f.action, f.quantity, f.price) == (bag.exec_id, "XSP iron_condor", "sell", 2, 1.00)
    assert f.legs == tuple(legs) and f.commission == pytest.approx(4 * 1.3)
    assert [(x.status, x.filled) for x in report.finished] == [("filled", 2)]
    assert report.clean                                  # the legs' positions are what IB holds


def test_a_combo_filled_in_two_parts_gives_each_bag_execution_its_own_legs():
    legs1, bag1 = _condor_execs("qtrade:ic:1", 1, qty=1.0, t=1)
    legs2, bag2 = _condor_execs("qtrade:ic:1", 2, qty=1.0, t=2)
    report = reconcile(snap(positions=_condor_positions(2), completed=[_condor_order("qtrade:ic:1")],
                            executions=legs2 + [bag2] + legs1 + [bag1]), journal())
    assert [(f.exec_id, [x.exec_id for x in f.legs]) for f in report.fills] == \
        [(bag1.exec_id, [x.exec_id for x in legs1]), (bag2.exec_id, [x.exec_id for x in legs2])]
    assert report.clean


def test_a_combos_commission_is_unknown_until_every_leg_has_reported():
    legs, bag = _condor_execs("qtrade:ic:1", 1)
    legs[2] = ex(legs[2].exec_id, "qtrade:ic:1", con=LEGS[2], qty=2, price=1.01, action="sell", sec="OPT", perm=31,
                 commission=None, mult=100.0)
    report = reconcile(snap(positions=_condor_positions(2), executions=legs + [bag]), journal())
    assert report.fills[0].commission is None


def test_a_journaled_combo_fill_is_found_by_its_bag_execution():
    legs, bag = _condor_execs("qtrade:ic:1", 1)
    held = [jp(con, q, p, f"XSP{con}", 100.0) for con, q, p in zip(LEGS, (2, -2, -2, 2), (1.12, 1.5, 1.01, 0.39))]
    report = reconcile(snap(positions=_condor_positions(2), executions=legs + [bag]),
                       journal(exec_ids=[bag.exec_id], positions=held, commissions={bag.exec_id: 5.2}))
    assert report.fills == () and report.commissions == () and report.clean


def test_combo_legs_without_their_bag_execution_are_not_journaled():
    legs, _ = _condor_execs("qtrade:ic:1", 1)
    report = reconcile(snap(positions=_condor_positions(2), completed=[_condor_order("qtrade:ic:1")], executions=legs),
                       journal([jo("qtrade:ic:1", qty=2, con=0, legs=tuple((c, 1) for c in LEGS))]))
    assert report.fills == () and report.unmatched_legs == tuple(legs)
    assert not report.clean
    assert len(report.mismatch) == 4                     # the legs are held at IB and not in the journal


def test_leg_executions_of_a_journaled_combo_are_not_single_fills_even_without_leg_con_ids():
    legs, _ = _condor_execs("qtrade:ic:1", 1)
    report = reconcile(snap(positions=_condor_positions(2), executions=legs),
                       journal([jo("qtrade:ic:1", qty=2, con=0, combo=True)]))
    assert report.fills == () and report.unmatched_legs == tuple(legs) and report.lost == ("qtrade:ic:1",)


def test_a_combo_is_known_by_its_journal_legs_when_ib_lists_no_order():
    legs, bag = _condor_execs("qtrade:ic:1", 1)
    report = reconcile(snap(positions=_condor_positions(2), executions=legs + [bag]),
                       journal([jo("qtrade:ic:1", qty=2, con=0, legs=tuple((c, 1) for c in LEGS))]))
    assert [f.exec_id for f in report.fills] == [bag.exec_id] and len(report.fills[0].legs) == 4
    assert [(x.status, x.filled) for x in report.finished] == [("filled", 2)]


# ---- positions -------------------------------------------------------------------------------
def test_scenario_14_phantom_and_unknown_positions():
    report = reconcile(snap(positions=[pos(MSFT, 50, 300.0, "MSFT")]),
                       journal(positions=[jp(AAPL, 100, 180.0, "AAPL")], traded=[AAPL]))
    [phantom] = report.phantom
    assert (phantom.local_symbol, phantom.journal_quantity, phantom.ib_quantity, phantom.journal_avg_price) == \
        ("AAPL", 100, 0, 180.0)
    [unknown] = report.unknown
    assert (unknown.local_symbol, unknown.ib_quantity, unknown.ib_avg_price) == ("MSFT", 50, 300.0)
    assert report.mismatch == () and report.fills == () and report.adopt == ()
    assert report.blocked == frozenset({"MSFT"})
    assert any(line.startswith("phantom AAPL") for line in report.lines())


def test_a_quantity_mismatch_blocks_the_symbol():
    report = reconcile(snap(positions=[pos(AAPL, 60, 180.0, "AAPL")]),
                       journal(positions=[jp(AAPL, 100, 180.0, "AAPL")]))
    [m] = report.mismatch
    assert (m.journal_quantity, m.ib_quantity) == (100, 60) and report.blocked == frozenset({"AAPL"})


def test_a_contract_the_journal_traded_and_closed_but_ib_holds_is_a_mismatch_not_unknown():
    report = reconcile(snap(positions=[pos(AAPL, 10, 180.0, "AAPL")]), journal(traded=[AAPL]))
    assert [m.local_symbol for m in report.mismatch] == ["AAPL"] and report.unknown == ()


def test_a_close_filled_while_disconnected_leaves_nothing_to_flag():
    sell = ex("e5.01.01", "qtrade:s:2", con=AAPL, action="sell", qty=100, perm=12)
    report = reconcile(snap(executions=[sell], completed=[order("qtrade:s:2", perm=12, status="Filled", filled=100,
                                                                con=AAPL, action="sell")]),
                       journal([jo("qtrade:s:2", con=AAPL)], positions=[jp(AAPL, 100, 180.0, "AAPL")], traded=[AAPL]))
    assert report.phantom == () and report.mismatch == () and [f.action for f in report.fills] == ["sell"]


def test_a_future_compares_quantities_and_reports_the_per_unit_average():
    report = reconcile(snap(positions=[pos(NQZ5, 3, 501_327.25 * 1.5, "NQZ5", 20.0, "FUT")]),
                       journal(positions=[jp(NQZ5, 2, 25_066.3625, "NQZ5", 20.0)]))
    [m] = report.mismatch
    assert (m.journal_quantity, m.ib_quantity, m.multiplier) == (2, 3, 20.0)
    assert m.ib_avg_price == pytest.approx(25_066.3625 * 1.5)


def test_flat_rows_at_ib_are_flat():
    report = reconcile(snap(positions=[pos(SPY, 0.0, 0.0, "SPY")]), journal())
    assert report.clean and report.unknown == ()


def test_a_hundred_journaled_orders_reconcile_in_milliseconds():
    orders = [jo(f"qtrade:s:{i}", perm=1000 + i) for i in range(100)]
    working = [order(f"qtrade:s:{i}", perm=1000 + i) for i in range(0, 100, 2)]
    done = [order(f"qtrade:s:{i}", perm=1000 + i, status="Filled", filled=100) for i in range(1, 100, 2)]
    fills = [ex(f"e{i}.01.01", f"qtrade:s:{i}", perm=1000 + i) for i in range(1, 100, 2)]
    started = time.perf_counter()
    report = reconcile(snap(positions=[pos(SPY, 5000, 260.0, "SPY")], open_orders=working, completed=done,
                            executions=fills), journal(orders))
    took = time.perf_counter() - started
    print(f"figure: pure reconcile of 100 journaled orders {took * 1000:.2f} ms")
    assert len(report.adopt) == 50 and len(report.finished) == 50 and len(report.fills) == 50 and report.clean
    assert took < 0.5


def test_a_fills_price_is_said_as_ib_reported_it():
    """15842.75 is said so (':g' made it 15842.8, in the run's lines and the journal's notes)."""
    from engine.brokers.ib.reconcile import price_text

    done = order("qtrade:s:1", perm=11, status="Filled", filled=1, qty=1, con=NQZ5)
    fill = ex("e1.01.01", "qtrade:s:1", con=NQZ5, qty=1, perm=11, price=15842.75, local="NQZ5", mult=20.0)
    report = reconcile(snap(positions=[pos(NQZ5, 1, 15842.75 * 20, "NQZ5", 20.0, "FUT")], completed=[done],
                            executions=[fill]), journal([jo("qtrade:s:1", qty=1, con=NQZ5, symbol="NQ")]))
    assert "fill e1.01.01 of qtrade:s:1: buy 1 NQZ5 at 15842.75" in report.lines()
    assert [price_text(p) for p in (15842.75, 0.1 + 0.2, 260.0, 0.00004, 1.23456)] == \
        ["15842.75", "0.3", "260", "0", "1.2346"]

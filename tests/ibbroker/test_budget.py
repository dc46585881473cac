"""LineBudget (pure): priorities, TTL eviction, the reserve for positions, never above the
budget; and the quote rules (NaN, -1, size 0, one-sided, crossed, indices)."""

import math
import random

import pytest

from engine.brokers.ib.marketdata import LineBudget, Priority, quote_from

P, TOP, PICK, OTHER = Priority.POSITION, Priority.TOP_PICK, Priority.PICK, Priority.OTHER


def test_a_full_budget_evicts_the_weakest_lower_priority_line_first():
    b = LineBudget(3, ttl_seconds=100)
    assert b.request("A", OTHER, 0).granted
    assert b.request("B", PICK, 1).granted
    assert b.request("C", OTHER, 2).granted
    g = b.request("D", TOP, 3)
    assert g.granted and g.evict == ("A",)  # the lowest priority; of the two OTHERs the longer idle
    assert b.held() == {"B": PICK, "C": OTHER, "D": TOP}
    g = b.request("E", PICK, 4)
    assert g.granted and g.evict == ("C",)
    refused = b.request("F", PICK, 5)  # only equal or higher priority lines left, none idle
    assert not refused.granted and refused.evict == ()
    assert refused.reason == ("all 3 lines are held by lines of equal or higher priority (1 top pick, 2 picks); "
                              "an idle line is freed after 100 s")
    assert len(b) == 3


def test_ties_break_by_idle_time_then_symbol():
    b = LineBudget(2, ttl_seconds=100)
    b.request("M", OTHER, 0)
    b.request("K", OTHER, 0)
    assert b.request("Z", PICK, 1).evict == ("K",)  # same priority, same idle time: by symbol
    b.touch("M", 5)
    assert b.request("Y", PICK, 6).evict == ("M",)   # the only OTHER left
    b.touch("Z", 9)
    assert b.request("X", TOP, 10).evict == ("Y",)  # both picks: Y was used longer ago


def test_positions_are_never_evicted_and_a_full_house_of_them_refuses_everything():
    b = LineBudget(2, ttl_seconds=1)
    assert b.request("P1", P, 0).granted and b.request("P2", P, 0).granted
    assert b.expire(1000) == []
    for prio in Priority:
        g = b.request("X", prio, 1000)
        assert not g.granted and g.reason == "all 2 lines hold open positions"
    assert b.held() == {"P1": P, "P2": P}


def test_lines_reserved_for_positions_are_kept_free_of_other_lines():
    b = LineBudget(4, reserved_for_positions=2, ttl_seconds=100)
    assert b.request("A", TOP, 0).granted and b.request("B", TOP, 0).granted
    g = b.request("C", TOP, 1)
    assert not g.granted and g.reason.startswith("the 2 lines not reserved for positions are held by lines of equal "
                                                 "or higher priority (2 top picks)")
    assert b.request("P1", P, 2).granted and b.request("P2", P, 2).granted
    g = b.request("P3", P, 3)  # a third position takes a line from the others
    assert g.granted and g.evict == ("A",)
    assert b.held() == {"B": TOP, "P1": P, "P2": P, "P3": P}


def test_ttl_expires_idle_lines_and_lets_anyone_take_an_idle_line():
    b = LineBudget(2, ttl_seconds=10)
    b.request("A", TOP, 0)
    b.request("B", OTHER, 0)
    b.touch("B", 8)
    g = b.request("C", OTHER, 10)  # A is idle for the TTL: even an OTHER may take its line
    assert g.granted and g.evict == ("A",)
    assert b.expire(17) == []
    assert b.expire(18) == ["B"]
    assert b.held() == {"C": OTHER}


def test_asking_again_updates_the_priority_and_a_demotion_past_the_room_gives_the_line_up():
    b = LineBudget(3, reserved_for_positions=1, ttl_seconds=100)
    b.request("P", P, 0)
    b.request("A", TOP, 0)
    b.request("B", TOP, 0)
    assert b.request("A", TOP, 5).granted and b.priority("A") == TOP
    g = b.request("P", OTHER, 6)  # the position was closed: it is now only a watched symbol
    assert not g.granted and g.evict == ("P",)
    assert b.held() == {"A": TOP, "B": TOP}
    assert b.request("B", P, 7) == b.request("B", P, 7)  # promoting never needs room


def test_random_requests_never_go_above_the_budget_or_evict_a_position():
    rng = random.Random(7)
    b = LineBudget(5, reserved_for_positions=2, ttl_seconds=3)
    symbols = [f"S{k}" for k in range(12)]
    positions: set[str] = set()
    held_before = set()
    for step in range(3000):
        now = step * 0.1
        sym = rng.choice(symbols)
        prio = Priority(rng.randrange(4))
        action = rng.random()
        if action < 0.7:
            g = b.request(sym, prio, now)
            for gone in g.evict:
                assert b.priority(gone) is None and gone not in positions or gone == sym
            if g.granted:
                assert b.priority(sym) == prio
        elif action < 0.85:
            b.touch(sym, now)
        else:
            b.expire(now)
        held = b.held()
        positions = {s for s, p in held.items() if p == P}
        assert len(held) <= 5
        assert sum(1 for p in held.values() if p != P) <= 3
        # a position line only ever leaves by being asked for at a lower priority
        for s in held_before - set(held):
            assert s == sym
        held_before = positions


def test_the_pre_run_report_says_how_many_lines_a_run_needs():
    b = LineBudget(50, reserved_for_positions=5, ttl_seconds=300)
    assert b.report(12) == "needs 12 lines, budget 50 (5 reserved for positions)"
    assert b.report(60, positions=3) == ("needs 60 lines, budget 50 (5 reserved for positions): 12 more than fit at "
                                         "once; they take turns, an idle line is freed after 300 s")
    assert LineBudget(2).report(3, positions=3).endswith("3 open positions need more lines than the budget has; "
                                                         "raise max_lines")
    assert b.fits(5, 45) and not b.fits(0, 46) and not b.fits(10, 41)


def test_budget_arguments_are_checked():
    with pytest.raises(ValueError):
        LineBudget(0)
    with pytest.raises(ValueError):
        LineBudget(3, reserved_for_positions=4)
    with pytest.raises(ValueError):
        LineBudget(3, ttl_seconds=0)


# ---------------------------------------------------------------------------- quotes
NAN = math.nan
UNSET = 1.7976931348623157e308


@pytest.mark.parametrize("bid, bsz, ask, asz, last, why", [
    (-1, 0, -1, 0, NAN, "no market: IB sent no bid and no ask (price -1 or NaN, size 0) and no last trade"),
    (NAN, NAN, NAN, NAN, 101.0, "no market: IB sent no bid and no ask (price -1 or NaN, size 0)"),
    (100.0, 5, -1, 0, 100.1, "one-sided market: no ask"),
    (100.0, 0, 100.2, 3, 100.1, "one-sided market: no bid"),
    (UNSET, 5, 100.2, 3, 100.1, "one-sided market: no bid"),
    (100.3, 5, 100.2, 3, 100.1, "crossed market: bid 100.3 above ask 100.2"),
])
def test_no_quote_is_made_of_nan_minus_one_unset_or_a_one_sided_market(bid, bsz, ask, asz, last, why):
    q, reason = quote_from("SPY", "STK", bid, bsz, ask, asz, last, 1)
    assert q is None and reason.startswith(why)


def test_a_two_sided_market_is_a_quote_and_the_mid_stands_in_for_a_missing_last():
    q, _ = quote_from("SPY", "STK", 100.0, 5, 100.2, 3, 100.1, 7)
    assert (q.bid, q.ask, q.last, q.time) == (100.0, 100.2, 100.1, 7)
    q, _ = quote_from("SPY", "OPT", 1.0, 5, 1.2, 3, NAN, 7)
    assert q.last == pytest.approx(1.1)


def test_an_index_is_its_value_and_has_no_bid_or_ask_at_ib():
    q, _ = quote_from("SPX", "IND", -1, 0, -1, 0, 4500.25, 3)
    assert (q.bid, q.ask, q.last) == (4500.25, 4500.25, 4500.25)
    q, why = quote_from("SPX", "IND", -1, 0, -1, 0, -1, 3)
    assert q is None and why == "no index value yet (IB sent none)"


def test_the_classes_numbers_order_the_budget_not_their_names():
    """data.subscriptions.priorities: by default a top pick (50) gives way to a watched name
    (90); with top_signals 95 and watchlist 40 the watched name gives way to the top pick."""
    from engine.brokers.ib.marketdata import ranks_from

    WATCH = Priority.WATCHLIST
    default = LineBudget(2, ttl_seconds=100)
    default.request("W1", WATCH, 0)
    default.request("W2", WATCH, 0)
    assert not default.request("T", TOP, 1).granted
    numbered = LineBudget(2, ttl_seconds=100, ranks=ranks_from({"top_signals": 95, "watchlist": 40}))
    numbered.request("W1", WATCH, 0)
    numbered.request("W2", WATCH, 0)
    g = numbered.request("T", TOP, 1)
    assert g.granted and g.evict == ("W1",)
    assert numbered.rank(TOP) == 95 and numbered.rank(WATCH) == 40 and numbered.rank(PICK) == 25
    # a scanner name of 30 outranks a top signal of 20
    low = LineBudget(1, ttl_seconds=100, ranks=ranks_from({"top_signals": 20, "scanner": 30}))
    low.request("T", TOP, 0)
    assert low.request("S", PICK, 1).evict == ("T",)
    # positions stay the highest class: anything else is refused
    with pytest.raises(ValueError, match="highest"):
        LineBudget(2, ranks=ranks_from({"positions": 50, "watchlist": 60}))

"""Leg selection, combo pricing and the chase, on hand-made quotes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.brokers.matching import marketable, run_chase
from engine.orders.combos import Chase, ComboQuote, NoStrike, Side, leg_quote, pick_by_delta, pick_by_premium, pick_strike

STRIKES = np.array([380.0, 381, 382, 383, 384, 385, 386, 387, 388, 389, 390])
PUTS = Side("put", STRIKES, bid=np.array([.01, .02, .03, .05, .07, .10, .14, .20, .28, .40, .55]),
            ask=np.array([.03, .04, .05, .07, .09, .12, .17, .23, .31, .44, .60]),
            delta=-np.array([.02, .03, .04, .06, .08, .10, .13, .17, .22, .29, .37]),
            iv=np.full(11, 0.18))
CALLS = Side("call", STRIKES + 12, bid=np.array([.60, .45, .33, .24, .17, .12, .09, .06, .04, .02, .01]),
             ask=np.array([.65, .49, .36, .27, .19, .14, .11, .08, .06, .04, .03]),
             delta=np.array([.40, .32, .25, .19, .14, .10, .10, .06, .04, .03, .02]),
             iv=np.full(11, 0.17))


def test_pick_by_delta_nearest_within_band_and_ties_go_further_out():
    assert PUTS.strike[pick_by_delta(PUTS, 0.10)] == 385
    assert PUTS.strike[pick_by_delta(PUTS, 0.10, 0.05, 0.15)] == 385
    # two calls have delta 0.10 (397 and 398): the one further out of the money wins
    assert CALLS.strike[pick_by_delta(CALLS, 0.10)] == 398
    with pytest.raises(NoStrike, match="within"):
        pick_by_delta(PUTS, 0.50, 0.45, 0.60)


def test_pick_by_premium_and_by_offset():
    assert PUTS.strike[pick_by_premium(PUTS, 0.30)] == 388       # mid 0.295
    assert PUTS.strike[pick_strike(PUTS, 383.0)] == 383
    assert PUTS.strike[pick_strike(PUTS, 382.5)] == 382           # not listed: further from the money
    assert CALLS.strike[pick_strike(CALLS, 399.5)] == 400
    with pytest.raises(NoStrike):
        pick_strike(PUTS, 379.0)


def condor(short_put=385, long_put=383, short_call=397, long_call=399) -> ComboQuote:
    def leg(name, side, strike, action):
        return leg_quote(name, side, int(np.flatnonzero(side.strike == strike)[0]), action, 1, "2019-11-05")
    return ComboQuote((leg("short_put", PUTS, short_put, "sell"), leg("long_put", PUTS, long_put, "buy"),
                       leg("short_call", CALLS, short_call, "sell"), leg("long_call", CALLS, long_call, "buy")),
                      100, 391.0)


def test_iron_condor_credit_risk_and_margin():
    q = condor()
    assert q.credit == pytest.approx(0.11 - 0.06 + 0.13 - 0.07)          # mids
    assert q.natural == pytest.approx(0.10 - 0.07 + 0.12 - 0.08)           # sell at bid, buy at ask
    assert q.max_loss == pytest.approx((2.0 - q.credit) * 100)             # 2-wide wings
    assert q.max_profit == pytest.approx(q.credit * 100)
    assert q.margin == pytest.approx(q.max_loss)                            # defined risk: margin = max loss
    assert q.missing is None


def test_naked_short_put_margin_is_reg_t():
    q = ComboQuote((leg_quote("p", PUTS, 5, "sell", 1, "2019-11-05"),), 100, 391.0)
    assert math.isinf(q.max_loss) is False                                  # a put's loss is bounded by the strike
    naked_call = ComboQuote((leg_quote("c", CALLS, 5, "sell", 1, "2019-11-05"),), 100, 391.0)
    assert math.isinf(naked_call.max_loss)
    # 20% of 391 less 6 OTM plus the 0.13 premium, per share, x 100
    assert naked_call.margin == pytest.approx((0.2 * 391 - (397 - 391) + 0.13) * 100)


def test_a_leg_without_a_two_sided_quote_blocks_pricing():
    puts = Side("put", STRIKES, PUTS.bid.copy(), PUTS.ask.copy(), PUTS.delta, PUTS.iv)
    puts.bid[3] = np.nan
    q = ComboQuote((leg_quote("long_put", puts, 3, "buy", 1, "2019-11-05"),), 100, 391.0)
    assert "long_put" in q.missing and "no two-sided quote" in q.missing


def test_chase_prices_step_down_to_the_floor():
    q = condor()
    assert q.credit == pytest.approx(0.11)
    assert Chase(step=0.01, steps=4).prices(q) == [0.11, 0.10, 0.09, 0.08]
    assert Chase(step=0.01, steps=4, floor=0.10).prices(q) == [0.11, 0.10]
    # closing pays a little more each step, never above the floor given as a debit cap
    assert Chase(step=0.01, steps=3).prices(q, opening=False) == [0.11, 0.12, 0.13]


def test_a_limit_at_mid_of_a_wide_market_does_not_fill():
    wide = Side("put", np.array([100.0]), np.array([0.05]), np.array([1.00]), np.array([-0.1]), np.array([0.3]))
    q = ComboQuote((leg_quote("p", wide, 0, "sell", 1, "x"),), 100, 110.0)
    assert q.credit == pytest.approx(0.525)
    assert not marketable(0.52, q, 0.5)          # mid-ish on a 0.05 x 1.00 market
    assert marketable(0.28, q, 0.5)              # natural + half the way to mid = 0.2875


def test_chase_fills_on_step_k_or_times_out_cleanly():
    q = condor()       # mid 0.11, natural 0.07: fills at or below 0.07 + 0.5 * 0.04 = 0.09
    result = run_chase(Chase(step=0.01, steps=4, every=15), q, fill_fraction=0.5)
    assert result.filled and result.price == pytest.approx(0.09) and result.step == 2
    assert result.tried == (0.11, 0.10, 0.09) and result.seconds == 30
    timeout = run_chase(Chase(step=0.01, steps=2, every=15), q, fill_fraction=0.5)
    assert not timeout.filled and timeout.cancelled and timeout.tried == (0.11, 0.10)
    assert "cancelled, cancel confirmed" in timeout.reason
    floor = run_chase(Chase(step=0.01, steps=4, every=15, floor=0.10), q, fill_fraction=0.5)
    assert not floor.filled and floor.tried == (0.11, 0.10)


# ---- one sign convention: every trade direction --------------------------------------------------

def call(bid: float, ask: float, strike: float = 400.0) -> Side:
    return Side("call", np.array([strike]), np.array([bid]), np.array([ask]), np.array([0.5]), np.array([0.2]))


def test_buying_a_debit_combo_fills_at_or_above_the_spread_models_price_and_never_beyond_natural():
    from engine.brokers.matching import combo_fill_price
    q = ComboQuote((leg_quote("c", call(1.00, 1.40), 0, "buy", 1, "x"),), 100, 400.0)
    assert (q.credit, q.debit, q.opening_action) == (pytest.approx(-1.20), pytest.approx(1.20), "buy")
    assert q.natural_debit() == pytest.approx(1.40) and q.mid_debit() == pytest.approx(1.20)
    # buying pays at least natural - f x (natural - mid) = 1.40 - 0.5 x 0.20 = 1.30
    assert marketable(1.30, q, 0.5) and not marketable(1.29, q, 0.5)
    assert not marketable(0.05, q, 0.5)                       # a 0.05 limit buys nothing
    assert marketable(2.00, q, 0.5)                           # a limit above mid is a buyer
    assert combo_fill_price(2.00, q, 0.5, True, "buy") == pytest.approx(1.40)   # at the natural, not at 2.00
    assert combo_fill_price(1.35, q, 0.5, True, "buy") == pytest.approx(1.35)   # at its limit
    assert combo_fill_price(1.25, q, 0.5, True, "buy") is None
    assert marketable(1.20, q, 1.0) and not marketable(1.19, q, 1.0)           # fill_fraction 1: mid
    assert marketable(1.40, q, 0.0) and not marketable(1.39, q, 0.0)           # fill_fraction 0: natural


def test_selling_a_debit_combo_to_close_receives_at_most_the_spread_models_price():
    from engine.brokers.matching import combo_fill_price
    q = ComboQuote((leg_quote("c", call(1.00, 1.40), 0, "buy", 1, "x"),), 100, 400.0)
    # closing sells the call: natural credit 1.00 (its bid), mid 1.20; as debits -1.00 and -1.20
    assert q.natural_debit(opening=False) == pytest.approx(-1.00) and q.mid_debit(opening=False) == pytest.approx(-1.20)
    # selling receives at most natural + f x (mid - natural) = 1.00 + 0.5 x 0.20 = 1.10
    assert marketable(1.10, q, 0.5, opening=False) and not marketable(1.11, q, 0.5, opening=False)
    assert combo_fill_price(0.05, q, 0.5, False, "sell") == pytest.approx(1.00)   # at the bid, not at 0.05
    assert marketable(1.20, q, 1.0, opening=False, action="sell")


def test_a_credit_combo_closes_against_its_mid_as_a_debit():
    q = condor()           # mid credit 0.11; closing buys the shorts at the ask and sells the wings at the bid
    closing = (0.12 - 0.05) + (0.14 - 0.06)
    assert q.closing_natural == pytest.approx(closing) and q.natural_debit(opening=False) == pytest.approx(closing)
    assert q.mid_debit(opening=False) == pytest.approx(0.11)
    threshold = closing - 0.5 * (closing - 0.11)                               # 0.13
    assert marketable(threshold, q, 0.5, opening=False) and not marketable(threshold - 0.01, q, 0.5, opening=False)
    assert not marketable(0.11, q, 0.5, opening=False)         # a closing limit at mid of a 0.11 x 0.15 market
    assert marketable(0.11, q, 1.0, opening=False)


def test_order_prices_are_in_the_direction_of_the_action():
    from engine.orders.combos import debit_of, flip, order_price
    assert order_price(1.5, "buy") == 1.5 and order_price(-1.5, "sell") == 1.5      # pay 1.5; receive 1.5
    assert debit_of(1.5, "buy") == 1.5 and debit_of(1.5, "sell") == -1.5
    assert flip("buy") == "sell" and flip("sell") == "buy"


def test_a_debit_combos_chase_pays_more_each_step_and_its_close_takes_less():
    q = ComboQuote((leg_quote("c", call(1.00, 1.40), 0, "buy", 1, "x"),), 100, 400.0)
    assert Chase(step=0.05, steps=4).prices(q) == [1.20, 1.25, 1.30, 1.35]
    assert Chase(step=0.05, steps=4, floor=1.30).prices(q) == [1.20, 1.25, 1.30]      # never pays above 1.30
    assert Chase(step=0.05, steps=3).prices(q, opening=False) == [1.20, 1.15, 1.10]
    assert Chase(step=0.05, steps=3, floor=1.15).prices(q, opening=False) == [1.20, 1.15]   # never takes below
    assert Chase(start="natural", steps=1).prices(q) == [1.40]
    assert Chase(start="natural", steps=1).prices(q, opening=False) == [1.00]
    assert Chase(start=0.05, steps=1).prices(q) == [0.05]                            # a number is the limit
    # the closing action is the opening one reversed, whatever the combo's mid is by then
    assert Chase(step=0.05, steps=2).prices(q, opening=False, action="sell") == [1.20, 1.15]
    result = run_chase(Chase(step=0.05, steps=4, every=10), q, fill_fraction=0.5)
    assert result.filled and result.price == pytest.approx(1.30) and result.step == 2
    closed = run_chase(Chase(step=0.05, steps=4, every=10), q, fill_fraction=0.5, opening=False)
    assert closed.filled and closed.price == pytest.approx(1.10) and closed.step == 2


def test_a_limit_rounds_to_the_tick_towards_the_marketable_side():
    from engine.orders.combos import round_limit
    assert round_limit(14.975, 0.01, "buy") == 14.98 and round_limit(14.975, 0.01, "sell") == 14.97
    assert round_limit(6.05, 0.01, "buy") == 6.05 == round_limit(6.05, 0.01, "sell")        # on the grid: kept
    assert round_limit(0.11 - 0.06 + 0.13 - 0.07, 0.01, "buy") == 0.11                      # float noise: kept
    assert round_limit(1.02, 0.05, "buy") == 1.05 and round_limit(1.02, 0.05, "sell") == 1.00


@pytest.mark.parametrize("action", ["sell", "buy"])
def test_a_mid_of_14_975_fills_at_mid_with_fill_fraction_1(action):
    # one put quoted 14.90 x 15.05: mid 14.975, half a cent off the grid
    put = Side("put", np.array([2650.0]), np.array([14.90]), np.array([15.05]), np.array([-0.3]), np.array([0.2]))
    q = ComboQuote((leg_quote("p", put, 0, action, 1, "x"),), 100, 2700.0)
    assert abs(q.credit) == pytest.approx(14.975) and q.opening_action == action
    limit = 14.97 if action == "sell" else 14.98          # a sell rounds down, a buy up: never beyond mid
    assert Chase(start="mid", steps=1).prices(q) == [limit]
    assert marketable(limit, q, 1.0)
    # the half-to-even rounding it replaces put a sell's limit above mid, a buy's below: never filled at mid
    beyond = 14.98 if action == "sell" else 14.97
    assert not marketable(beyond, q, 1.0)
    result = run_chase(Chase(start="mid", steps=1), q, fill_fraction=1.0)
    assert result.filled and result.price == limit and result.step == 0
    # closing rounds the other way: the closing order has the other action
    close = 14.98 if action == "sell" else 14.97
    assert Chase(start="mid", steps=1).prices(q, opening=False) == [close]
    assert marketable(close, q, 1.0, opening=False)


@pytest.mark.parametrize("action", ["sell", "buy"])
def test_a_chase_can_start_at_the_combos_bid_or_ask(action):
    """One put quoted 14.90 x 15.05: selling it, the bid (14.90) fills at once and the ask
    (15.05) is the most passive price; buying it, the other way round."""
    put = Side("put", np.array([2650.0]), np.array([14.90]), np.array([15.05]), np.array([-0.3]), np.array([0.2]))
    q = ComboQuote((leg_quote("p", put, 0, action, 1, "x"),), 100, 2700.0)
    bid, ask = Chase(start="bid", steps=1).prices(q), Chase(start="ask", steps=1).prices(q)
    assert (bid, ask) == ([14.90], [15.05])
    natural = Chase(start="natural", steps=1).prices(q)
    assert natural == (bid if action == "sell" else ask)
    # a two-legged vertical: 2 x 2.10 and 1 x 1.20 (bid x ask): selling the put spread brings
    # 2.00 - 1.20 = 0.80 at once, and asks at most 2.10 - 1.00 = 1.10
    puts = Side("put", np.array([2600.0, 2650.0]), np.array([1.00, 2.00]), np.array([1.20, 2.10]),
                np.array([-0.2, -0.3]), np.array([0.2, 0.2]))
    spread = ComboQuote((leg_quote("s", puts, 1, "sell", 1, "x"), leg_quote("l", puts, 0, "buy", 1, "x")), 100,
                        2700.0)
    assert spread.opening_action == "sell"
    assert Chase(start="bid", steps=1).prices(spread) == [0.80]
    assert Chase(start="ask", steps=1).prices(spread) == [1.10]
    # closing it (a buy): its ask 2.10 - 1.00 = 1.10 at once, its bid 0.80 the passive side
    assert Chase(start="ask", steps=1).prices(spread, opening=False) == [1.10]
    assert Chase(start="bid", steps=1).prices(spread, opening=False) == [0.80]


def test_a_defined_risk_combos_margin_moves_with_the_credit_it_fills_at_and_a_naked_ones_stays():
    from engine.orders.combos import ComboQuote, LegQuote, held_margin

    def leg(name, right, action, strike, bid, ask):
        return LegQuote(name, right, action, 1, strike, "2024-01-19", bid, ask, 0.2, 0.2)

    condor = (leg("sp", "put", "sell", 100, 1.0, 1.2), leg("lp", "put", "buy", 95, 0.4, 0.5),
              leg("sc", "call", "sell", 110, 1.0, 1.2), leg("lc", "call", "buy", 115, 0.4, 0.5))
    q = ComboQuote(condor, 100.0, 105.0)
    assert q.credit == pytest.approx(1.3) and q.margin == pytest.approx(370.0)     # (5 - 1.30) x 100
    assert q.margin_at(1.0) == pytest.approx(400.0) and q.margin_at(1.5) == pytest.approx(350.0)
    assert held_margin(condor, 100.0, q.margin, 1.0) == pytest.approx(400.0)
    spread = (leg("lc", "call", "buy", 100, 3.0, 3.2), leg("sc", "call", "sell", 105, 1.0, 1.2))   # bought for a debit
    d = ComboQuote(spread, 100.0, 102.0)
    assert d.margin == pytest.approx(200.0) and d.margin_at(-2.3) == pytest.approx(230.0)
    naked = (leg("sc", "call", "sell", 110, 1.0, 1.2),)       # unbounded: Reg-T's margin, at mid
    n = ComboQuote(naked, 100.0, 105.0)
    assert n.margin_at(0.5) == n.margin and held_margin(naked, 100.0, 777.0, 0.5) == 777.0

"""The kernel's parts with plain values: the matching rule for one bar against the history
search, the SimBroker venue's events (partial fills, OCA, expiry, rejections), and the order
tracker's handling of events it cannot place."""

from __future__ import annotations

from venues import refused, simulate_on

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.brokers import events as E
from engine.brokers.costs import Commission, Slippage
from engine.brokers.dryrun import DryRunBroker
from engine.brokers.matching import FillModel, first_touch_any, match_bar
from engine.brokers.protocol import Broker
from engine.brokers.sim import SimBroker
from engine.market.series import SymbolBars
from engine.orders.intent import OrderIntent


def bars(opens, highs, lows, closes, sessions=None, symbol="X") -> SymbolBars:
    n = len(opens)
    start = np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return SymbolBars(symbol, start, start + 86_400 * 10**9, np.array(opens, float), np.array(highs, float),
                      np.array(lows, float), np.array(closes, float),
                      np.array(sessions if sessions is not None else np.zeros(n), dtype=float))


@st.composite
def random_bars(draw):
    n = draw(st.integers(3, 12))
    price = 100.0
    o, h, l, c = [], [], [], []
    for _ in range(n):
        op = price + draw(st.floats(-3, 3))
        cl = op + draw(st.floats(-3, 3))
        o.append(op), c.append(cl)
        h.append(max(op, cl) + draw(st.floats(0, 2))), l.append(min(op, cl) - draw(st.floats(0, 2)))
        price = cl
    return bars(o, h, l, c)


def _venue_fill(b, intent, fills):
    """Place at the close of bar 0 on a venue and step the bars: the first execution."""
    venue = SimBroker({"X": b}, fills, 1e9)
    venue.open_bar("X", 0)
    venue.close_bar("X", 0)
    venue.place(E.Order("r", "X", intent.action, 1.0, intent.order_type, intent.limit, intent.stop, "gtc"))
    for k in range(1, len(b)):
        venue.open_bar("X", k)
        venue.close_bar("X", k)
        for ev in venue.events():
            if isinstance(ev, E.Execution):
                return ev.bar, ev.price
    return None


@settings(max_examples=200, deadline=None)
@given(b=random_bars(), kind=st.sampled_from(["market", "limit", "stop", "stop_limit"]), buy=st.booleans(),
       offset=st.floats(-4, 4), gap=st.floats(-2, 2))
def test_the_venue_bar_by_bar_fills_as_the_history_search(b, kind, buy, offset, gap):
    """One rule: SimBroker stepping bars with match_bar and FillModel.execute searching the
    history give the same fill bar and price for every order type."""
    fills = FillModel(Commission(), Slippage(fixed=0.01))
    ref = float(b.close[0])
    limit = ref + offset if kind in ("limit", "stop_limit") else None
    stop = ref - offset if kind == "stop" else (ref + gap if kind == "stop_limit" else None)
    intent = OrderIntent("X", "buy" if buy else "sell", kind, 1.0, None, limit, stop, "gtc")
    want = fills.execute(b, intent, 0)
    got = _venue_fill(b, intent, fills)
    assert (None if want is None else (want.bar, want.price)) == got


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.floats(-1, 1), min_size=1, max_size=60), lo=st.integers(0, 59), width=st.integers(0, 60),
       stop=st.floats(-2, 2), target=st.floats(-2, 2), long=st.booleans())
def test_the_protective_search_finds_the_first_bar_that_touches_a_level(steps, lo, width, stop, target, long):
    """first_touch_any (its first bars compared one by one, the rest as arrays) is the first bar
    whose range reaches the stop or the target, each bar's high and low compared with the level."""
    close = 100.0 + np.cumsum(steps)
    b = bars(close, close + 0.5, close - 0.5, close)
    lo = min(lo, len(b))
    hi = min(lo + width, len(b))
    levels = [(100.0 + stop, not long), (100.0 + target, long)]
    touched = [j for j in range(lo, hi) if any(b.high[j] >= level if rising else b.low[j] <= level
                                               for level, rising in levels)]
    assert first_touch_any(b, lo, hi, levels) == (touched[0] if touched else None)


def _excursion(b, lo, hi, entry, exit_, long, units):
    """MAE and MFE of one round trip, as defined: the worst and best of the bars' range over
    [lo, hi) and the exit price, against the entry, in account currency."""
    worst = min([float(x) for x in b.low[lo:hi]] + [exit_])
    best = max([float(x) for x in b.high[lo:hi]] + [exit_])
    if long:
        return min((worst - entry) * units, 0.0), max((best - entry) * units, 0.0)
    return min((entry - best) * units, 0.0), max((entry - worst) * units, 0.0)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.floats(-1, 1), min_size=1, max_size=40),
       trips=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.floats(95, 105), st.floats(95, 105),
                                st.booleans(), st.sampled_from([1.0, 3.0, 50.0])), min_size=1, max_size=8))
def test_the_excursions_of_many_round_trips_at_once_are_each_ones_own(steps, trips):
    """records.excursions_of (one pass of the bars for every round trip) gives each trade the
    MAE and MFE of its own bars, to the bit: overlapping trades, one held to the last bar, one
    opened and closed in one bar (no bar between: its exit price alone), shorts."""
    from engine.runtime.records import excursions_of

    close = 100.0 + np.cumsum(steps)
    b = bars(close, close + 0.7, close - 0.4, close)
    n = len(b)
    rows = [(min(a, c, n), min(max(a, c), n), entry, exit_, long, units) for a, c, entry, exit_, long, units in trips]
    lo, hi, entry, exit_, long, units = (np.array(col) for col in zip(*rows))
    mae, mfe = excursions_of(b, lo.astype(np.int64), hi.astype(np.int64), entry, exit_, units, long)
    assert list(zip(mae.tolist(), mfe.tolist())) == [_excursion(b, *row) for row in rows]


def test_match_bar_gaps_fill_at_the_open():
    s = Slippage()
    assert match_bar("limit", True, 10.0, None, 9.5, 10.2, 9.4, 10.0, s, 0.01).price == 9.5   # opened below
    assert match_bar("stop", False, None, 10.0, 9.0, 9.6, 8.8, 9.2, s, 0.01).price == 9.0    # gapped through
    m = match_bar("stop_limit", True, 10.1, 10.0, 10.5, 10.6, 10.4, 10.5, s, 0.01)
    assert m.price is None and m.triggered                                                   # beyond the limit


B = bars([10, 10, 9, 12, 11], [11, 10.5, 10, 13, 12], [9.5, 9.8, 8.5, 11.5, 10.5], [10, 10, 9.5, 12, 11],
         sessions=[0, 1, 2, 3, 4])


def test_partial_fills_arrive_as_several_executions_with_unique_ids():
    venue = SimBroker({"X": B}, FillModel(Commission(per_unit=0.01), Slippage()), 100_000, partial=0.25)
    venue.open_bar("X", 0)
    venue.close_bar("X", 0)
    venue.place(E.Order("a", "X", "buy", 10.0, "limit", limit=10.4, tif="gtc"))
    seen = []
    for k in range(1, 5):
        venue.open_bar("X", k)
        venue.close_bar("X", k)
        seen += venue.events()
    execs = [e for e in seen if isinstance(e, E.Execution)]
    # 25% of 10, whole units, in each bar whose low reaches 10.4 (bars 1 and 2; 3 and 4 stay above)
    assert [e.quantity for e in execs] == [2.0, 2.0]
    assert len({e.exec_id for e in execs}) == 2
    partial = [e for e in seen if isinstance(e, E.OrderStatus) and e.status == E.PARTIAL]
    assert [p.remaining for p in partial] == [8.0, 6.0]
    assert venue.positions()["X"].quantity == 4.0
    assert [o.ref for o in venue.open_orders()] == ["a"]          # gtc: still working for the rest
    assert venue.account().cash == pytest.approx(100_000 - sum(e.quantity * e.price for e in execs) - 0.04)


def test_one_cancels_all_and_day_orders_expire_at_the_session_end():
    venue = SimBroker({"X": B}, FillModel(Commission(), Slippage()), 100_000)
    venue.open_bar("X", 0)
    venue.close_bar("X", 0)
    venue.place(E.Order("stop", "X", "sell", 1, "stop", stop=9.0, tif="gtc", oca="p"))
    venue.place(E.Order("target", "X", "sell", 1, "limit", limit=12.5, tif="gtc", oca="p"))
    venue.place(E.Order("day", "X", "buy", 1, "limit", limit=5.0, tif="day"))
    venue.open_bar("X", 1)
    venue.close_bar("X", 1)
    statuses = {e.ref: e.status for e in venue.events() if isinstance(e, E.OrderStatus)}
    assert statuses["day"] == E.EXPIRED
    venue.open_bar("X", 2)
    venue.close_bar("X", 2)           # the low of 8.5 takes the stop at 9.0
    statuses = {e.ref: (e.status, e.reason) for e in venue.events() if isinstance(e, E.OrderStatus)}
    assert statuses["stop"][0] == E.FILLED
    assert statuses["target"] == (E.CANCELLED, "one-cancels-all: stop filled")
    assert venue.open_orders() == []


def test_the_venue_rejects_what_it_cannot_trade():
    venue = SimBroker({"X": B}, FillModel(Commission(), Slippage()), 100_000)
    venue.place(E.Order("u", "NOPE", "buy", 1))
    venue.place(E.Order("z", "X", "buy", 0))
    events = venue.events()
    assert [(e.ref, e.code) for e in events if isinstance(e, E.BrokerError)] == [("u", 200), ("z", 201)]
    assert [e.status for e in events if isinstance(e, E.OrderStatus)] == [E.REJECTED, E.REJECTED]
    venue.cancel("never")
    assert [e.code for e in venue.events()] == [161]


def test_sim_and_dry_run_brokers_implement_the_protocol():
    venue = SimBroker({"X": B}, FillModel(Commission(), Slippage()), 1)
    assert isinstance(venue, Broker)
    assert isinstance(DryRunBroker(venue, SimBroker({"X": B}, FillModel(Commission(), Slippage()), 1)), Broker)


class _Noisy(SimBroker):
    """A venue that also reports what the kernel never sent, and one execution twice."""

    def events(self):
        out = super().events()
        extra = []
        for ev in out:
            if isinstance(ev, E.Execution):
                extra += [ev, E.Execution("qtrade:elsewhere:1", "x.1", ev.symbol, "buy", 5, ev.price, ev.time)]
        return out + extra


def test_events_the_tracker_cannot_place_are_errors_that_stop_new_entries(tmp_path):
    from engine.runtime import backtest as bt
    from engine.runtime import kernel

    prep = bt.prepare("strategies/sma_crossover.yaml")
    result = simulate_on(_Noisy, prep, run_id="t")
    runner = result.runner
    assert isinstance(runner, kernel.Kernel)
    assert any("did not send (qtrade:elsewhere:1)" in m for _, m in runner.errors)
    assert runner.halted.startswith("execution x.1")
    # the duplicate execution was ignored (the entry's quantity is what was ordered); exits still
    # manage the open position, and no entry follows
    entry, exit_ = result.ledger.fills
    assert entry.quantity == result.runner.orders[0].intent.quantity == exit_.quantity
    assert not result.ledger.positions and len(result.ledger.trades) == 1
    blocked = [d for d in runner.decisions if d.outcome == "blocked"]
    assert blocked and all(d.reason.startswith("entries stopped: execution x.1") for d in blocked)


def test_the_wall_clock_waits_for_each_step_and_the_run_is_the_same():
    """A WallClock at `speed` sleeps until each step is due (here with a fake clock); the kernel
    driven by it trades exactly as on the SimClock."""
    from engine.runtime import backtest as bt
    from engine.runtime import session
    from engine.runtime.clock import WallClock

    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    clock = WallClock(speed=2.0, sleep=sleep, monotonic=lambda: now[0])
    order = []
    clock.at(10 * 10**9, lambda: order.append("b"))
    clock.at(4 * 10**9, lambda: order.append("a"))
    clock.at(12 * 10**9, lambda: order.append("c"))
    clock.run()
    assert order == ["a", "b", "c"] and slept == [3.0, 1.0]      # 6 s and 2 s of clock time at 2x

    prep = bt.last_days(bt.prepare("strategies/sma_crossover.yaml"), 60)
    fast = session.simulate(prep, run_id="w")
    walled = session.simulate(prep, run_id="w", speed=86_400.0 * 5_000)   # 5,000 days a second
    assert [f.price for f in walled.ledger.fills] == [f.price for f in fast.ledger.fills]
    assert walled.final_equity == fast.final_equity
    with pytest.raises(ValueError):
        WallClock(speed=0)


class _Correcting(SimBroker):
    """A venue that reports each execution, then corrects it (IB's `.02` for `.01`: a cent
    better), and reports commissions twice (a zero first, the real one after)."""

    def events(self):
        out = []
        for ev in super().events():
            if isinstance(ev, E.Execution):
                out.append(E.Execution(ev.ref, ev.exec_id, ev.symbol, ev.action, ev.quantity, ev.price - 0.01, ev.time,
                                       ev.broker_id, ev.bar))
                out.append(E.CommissionReport(ev.exec_id, 0.0))
                out.append(E.Execution(ev.ref, ev.exec_id + "c", ev.symbol, ev.action, ev.quantity, ev.price, ev.time,
                                       ev.broker_id, ev.bar, corrects=ev.exec_id))
            elif isinstance(ev, E.CommissionReport):
                out.append(E.CommissionReport(ev.exec_id + "c", ev.commission))
            else:
                out.append(ev)
        return out


def test_a_corrected_execution_replaces_the_first_and_a_later_commission_replaces_the_earlier():
    from engine.runtime import backtest as bt
    from engine.runtime import session

    prep = bt.prepare("strategies/sma_crossover.yaml")
    plain = session.simulate(prep, streaming=False, run_id="p")
    corrected = simulate_on(_Correcting, prep, run_id="c")
    assert not corrected.runner.errors
    assert [(f.quantity, f.price, f.commission) for f in corrected.ledger.fills] == \
        [(f.quantity, f.price, f.commission) for f in plain.ledger.fills]
    assert round(corrected.ledger.cash, 6) == round(plain.ledger.cash, 6)


class _LateCommissions(SimBroker):
    """A venue whose commission reports come after the order's final status (as IB's do)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._held: list = []

    def events(self):
        out = [ev for ev in super().events()]
        late = [ev for ev in out if isinstance(ev, E.CommissionReport)]
        rest = [ev for ev in out if not isinstance(ev, E.CommissionReport)]
        held, self._held = self._held, late
        return held + rest


def test_a_commission_reported_after_the_order_is_booked_still_reaches_cash_and_the_trade():
    from engine.runtime import backtest as bt
    from engine.runtime import session

    prep = bt.prepare("strategies/sma_crossover.yaml")
    plain = session.simulate(prep, streaming=False, run_id="p")
    late = simulate_on(_LateCommissions, prep, run_id="l")
    late.runner._drain()
    assert plain.ledger.trades and not late.runner.errors
    assert [round(t.pnl, 6) for t in late.ledger.trades] == [round(t.pnl, 6) for t in plain.ledger.trades]
    assert [f.commission for f in late.ledger.fills] == [f.commission for f in plain.ledger.fills]
    assert round(late.ledger.cash, 6) == round(plain.ledger.cash, 6)


class _Refusing(SimBroker):
    """A venue that refuses every order of one type (IB's 201), as IB refuses an order it will
    not take for the account."""

    refuse = "stop"

    def place(self, order):
        if order.order_type != self.refuse or order.legs:
            return super().place(order)
        self._events += refused(self, order, "Order rejected - reason: stop orders are not allowed for this account")
        return order.ref


class _RefusesTargets(_Refusing):
    refuse = "limit"


def _crossover_with_stop_and_target(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "strategies" / "sma_crossover.yaml").read_text().replace(
        "source: data/", f"source: {root / 'strategies' / 'data'}").replace(
        "exit:\n", "exit:\n  - {name: stop, stop: position.entry_price * 0.97}\n"
                   "  - {name: target, target: position.entry_price * 1.05}\n")
    path = tmp_path / "protected.yaml"
    path.write_text(text)
    return path


def test_a_refused_stop_is_not_placed_again_and_its_position_is_closed_at_market(tmp_path):
    """IB refuses the protective stop (201, final): it is not sent again at the next close (no
    retry loop); the position is not held without it: its target is cancelled and it is closed at
    market at the next open, the trade and the decision saying why. Entries go on."""
    from engine.runtime import backtest as bt

    prep = bt.prepare(_crossover_with_stop_and_target(tmp_path))
    plain = bt.run(prep, fast=False)
    assert {t.exit_rule for t in plain.ledger.trades} >= {"stop", "target"}
    result = simulate_on(_Refusing, prep, run_id="r")
    trades, orders = result.ledger.trades, result.runner.orders
    assert not result.ledger.positions
    refused = [t for t in trades if t.exit_rule == "stop refused"]
    assert len(refused) > 3 and all(t.exit_bar == t.entry_bar + 1 for t in trades)   # out at the next open
    # (but where the death cross fired at the entry's first close, before any stop was placed)
    assert {t.exit_rule for t in trades} - {"stop refused"} <= {"death cross"}
    assert all("its stop (stop) was refused by the broker: Order rejected - reason: stop orders" in t.exit_reason
               for t in refused)
    stops = [o for o in orders if o.intent.order_type == "stop"]
    assert len(stops) == len(refused) and all(o.status == "rejected" for o in stops)    # once a position
    targets = [o for o in orders if o.intent.order_type == "limit"]
    assert len(targets) == len(refused) and all(o.status == "cancelled" for o in targets)
    assert not result.runner.halted
    fired = [d for d in result.runner.decisions if d.rule == "stop refused"]
    assert len(fired) == len(refused) and all(d.outcome == "fired" for d in fired)


def test_a_refused_target_is_not_placed_again_and_the_position_keeps_its_stop(tmp_path):
    from engine.runtime import backtest as bt

    prep = bt.prepare(_crossover_with_stop_and_target(tmp_path))
    result = simulate_on(_RefusesTargets, prep, run_id="t")
    trades, orders = result.ledger.trades, result.runner.orders
    assert trades and {t.exit_rule for t in trades} <= {"stop", "death cross"} and "stop" in {t.exit_rule for t in trades}
    targets = [o for o in orders if o.intent.order_type == "limit"]
    stops = [o for o in orders if o.intent.order_type == "stop"]       # one a position, resting till it ends
    assert len(targets) == len(stops) > 3 and all(o.status == "rejected" for o in targets)   # once a position
    blocked = [d for d in result.runner.decisions if d.rule == "target" and d.outcome == "blocked"]
    assert len(blocked) == len(targets)
    assert all("its target order was refused by the broker" in d.reason and "keeps its stop" in d.reason
               for d in blocked)


class _RefusesStopMoves(SimBroker):
    """A venue that takes stops but no change to their price (as IB answers a modify with 110 or
    105 and keeps the order as it was); every modify asked is logged."""

    asked: list = []

    def modify(self, ref, *, quantity=None, limit=None, stop=None):
        w = self._working.get(ref)
        if w is None or stop is None:
            return super().modify(ref, quantity=quantity, limit=limit, stop=stop)
        type(self).asked.append((ref, stop))
        now = self.clock if self.clock is not None else self._now(w.order.symbol)
        why = "The price does not conform to the minimum price variation for this contract."
        o = w.order
        self._events += [E.BrokerError(ref, 110, why, now),
                         E.ModifyRefused(ref, why, o.quantity, o.limit, o.stop, now, final=True)]


def test_a_stop_move_the_broker_refuses_leaves_the_kernel_at_the_stop_the_broker_holds(tmp_path):
    """A stop that follows the close (to the dollar) on a venue that refuses every move: the
    kernel's view of each stop stays what the venue holds (its first level), the refusal is
    journaled as an error that does not stop the strategy, the same move is not asked for again
    while the level stays, and stops fill at the venue's level."""
    from engine.runtime import backtest as bt

    path = _crossover_with_stop_and_target(tmp_path)
    path.write_text(path.read_text().replace("stop: position.entry_price * 0.97", "stop: 'round(close * 0.97, 0)'"))
    prep = bt.prepare(path)
    moved = [o for o in bt.run(prep, fast=False).runner.orders if o.intent.order_type == "stop"]
    _RefusesStopMoves.asked = []
    result = simulate_on(_RefusesStopMoves, prep, run_id="m")
    asked, runner = _RefusesStopMoves.asked, result.runner
    assert len(asked) > 10 and len(set(asked)) == len(asked)          # each refused move asked once
    stops = {o.intent.tag: o for o in runner.orders if o.intent.order_type == "stop"}
    placed = {o.ref: o.stop for o in result.broker.placed if o.order_type == "stop"}
    assert set(placed) == set(stops) and all(stops[ref].intent.stop == stop for ref, stop in placed.items())
    assert {ref for ref, _ in asked} <= set(placed)
    fills = {e.ref: e.price for e in result.broker.executions()}
    stopped = [ref for ref, o in stops.items() if o.status == "filled"]
    assert stopped and all(fills[ref] <= placed[ref] + 1e-9 for ref in stopped)    # at its own level (or a gap)
    refusals = [m for _, m in runner.errors if "was not changed to stop" in m]
    assert len(refusals) == len(asked) and "it stays at" in refusals[0] and "minimum price variation" in refusals[0]
    assert not runner.halted
    assert len(moved) > 3                        # on a venue that takes the moves, the same stops do move


class _RefusesTheFirstClose(SimBroker):
    """Refuses the first market sell it is sent (IB's 201), takes every other order."""

    took: list = []

    def place(self, order):
        if order.order_type == "market" and order.action == "sell" and not type(self).took:
            type(self).took.append(order.ref)
            self._events += refused(self, order, "Order rejected - reason: Insufficient margin")
            return order.ref
        return super().place(order)


def test_entries_stopped_by_a_refused_close_go_on_once_that_position_is_closed():
    """The first death cross's close is refused: new entries stop (the position is open against
    the strategy's decision); the next death cross closes it, and from then entries go on, the
    journal saying so. (They once stayed stopped for the rest of the run, flat or not.)"""
    from pathlib import Path

    from engine.runtime import backtest as bt

    root = Path(__file__).resolve().parents[1]
    prep = bt.prepare(root / "strategies" / "sma_crossover.yaml")
    _RefusesTheFirstClose.took = []
    result = simulate_on(_RefusesTheFirstClose, prep, run_id="f")
    runner, trades = result.runner, result.ledger.trades
    assert len(_RefusesTheFirstClose.took) == 1
    assert any(m.startswith("the close of SPY (death cross) was refused by the broker") for _, m in runner.errors)
    resumed = [(t, m) for t, m in runner.errors if m.startswith("SPY is flat (") and "entries go on" in m]
    assert len(resumed) == 1 and not runner.halted
    later = [t for t in trades if t.entry_time > resumed[0][0]]
    assert len(later) > 5 and len(trades) >= 30          # it trades on (39 round trips on every venue)


class _RefusesStopsAndCloses(_Refusing):
    """Refuses stops, and market sells (the close that replaces a refused stop among them)."""

    def place(self, order):
        if order.order_type == "market" and order.action == "sell":
            self._events += refused(self, order, "Order rejected - reason: the account may not sell")
            return order.ref
        return super().place(order)


def test_a_refused_close_is_an_error_that_stops_new_entries_and_the_refused_stop_stays_unsent(tmp_path):
    """The close of a position whose stop was refused is refused too: an error, which stops new
    entries; the stop is not sent again; the position keeps its target (placed again at the next
    close, the one it had having been cancelled for the close) and its exit rules."""
    from engine.runtime import backtest as bt

    prep = bt.prepare(_crossover_with_stop_and_target(tmp_path))
    result = simulate_on(_RefusesStopsAndCloses, prep, run_id="c")
    runner, orders = result.runner, result.runner.orders
    assert runner.halted.startswith("the close of SPY (stop refused) was refused by the broker: Order rejected - "
                                    "reason: the account may not sell; the position is still open")
    assert [o.intent.rule for o in orders[:4]] == ["golden cross", "stop", "target", "stop refused"]
    assert [o.status for o in orders[:4]] == ["filled", "rejected", "cancelled", "rejected"]
    assert sum(o.intent.order_type == "stop" for o in orders) == 1
    # the target is placed again at the next close, and after each refused close of a death cross
    targets = [o for o in orders if o.intent.rule == "target"]
    assert orders[4] is targets[1] and targets[1].time > orders[3].time
    assert result.ledger.trades[0].exit_rule == "target"        # which at last closed the position
    assert not any(o.intent.rule == "golden cross" for o in orders[4:])          # no entry after the error
    blocked = [d for d in runner.decisions if d.kind == "entry" and d.outcome == "blocked"]
    assert blocked and all(d.reason.startswith("entries stopped: the close of SPY") for d in blocked)

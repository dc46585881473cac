"""The live loop (runtime/live.py): the kernel fed bars one at a time as a broker hands them
over, on the venue's clock. Here the source is a replay of real bars over the simulator venue,
so the loop's results can be held against the backtest's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.brokers.dryrun import DryRunBroker
from engine.brokers.sim import SimBroker
from engine.runtime import backtest as bt
from engine.runtime.live import Bar, LiveRun, append_bar, live_kernel

ROOT = Path(__file__).resolve().parents[1]


class Replay:
    """A LiveSource over known bars: each pump moves the venue's time on by `step` and releases
    the bars completed by then."""

    def __init__(self, frames: dict[str, pd.DataFrame], bar: pd.Timedelta, start: pd.Timestamp, step: pd.Timedelta):
        self.frames, self.bar = frames, bar
        self.t = start.value
        self.step = step.value
        self.next = {s: int(np.searchsorted(f.index.as_unit("ns").asi8 + bar.value, self.t, side="right"))
                     for s, f in frames.items()}
        self.pumps = 0

    def pump(self, seconds: float) -> None:
        self.t += self.step
        self.pumps += 1

    def now(self) -> int:
        return self.t

    def done(self) -> bool:
        return all(self.next[s] >= len(f) for s, f in self.frames.items())

    def completed(self, symbol: str) -> list[Bar]:
        f = self.frames[symbol]
        starts = f.index.as_unit("ns").asi8
        out = []
        i = self.next[symbol]
        while i < len(f) and starts[i] + self.bar.value <= self.t:
            r = f.iloc[i]
            out.append(Bar(int(starts[i]), float(r.open), float(r.high), float(r.low), float(r.close),
                           float(r.volume)))
            i += 1
        self.next[symbol] = i
        return out


def _fixed_quantity_copy(tmp_path: Path) -> Path:
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    text = text.replace("quantity: {percent_of_equity: 100%}", "quantity: 50")
    text = text.replace("source: data/", f"source: {ROOT / 'strategies' / 'data'}/")
    path = tmp_path / "sma_fixed.yaml"
    path.write_text(text)
    return path


def _split(prep, first_live: str):
    """The prepared strategy holding only the bars before `first_live` (the warm-up a broker's
    history would give) and, apart, the bars after it (what the broker hands over live)."""
    cut = pd.Timestamp(first_live, tz=prep.timezone)
    full = {s: f[f.index < prep.end] for s, f in prep.frames.items()}
    prep.frames = {s: f[f.index < cut] for s, f in full.items()}
    prep.arrays.clear()
    return full, cut


def _live(prep, full, cut, *, dry_run=False):
    bars = {}
    from engine.runtime.prepare import _symbol_bars

    for s in prep.symbols:
        bars[s] = _symbol_bars(prep, s)[0]
    from engine.runtime.session import run_settings

    settings, fills = run_settings(prep, "live")
    venue = SimBroker(dict(bars), fills, settings.cash, settings.account, session="live.venue")
    broker = venue
    if dry_run:
        broker = DryRunBroker(venue, SimBroker(dict(bars), fills, settings.cash, settings.account,
                                               session="live.wallet"))
    kernel, feed, timers = live_kernel(prep, broker, run_id="live")
    source = Replay(full, pd.Timedelta(prep.bar.replace("d", "D")), cut, pd.Timedelta("6h"))
    loop = LiveRun(kernel, feed, source, timers, stop=lambda: "replayed" if source.done() else None)
    assert loop.run() == "replayed"
    kernel._drain()
    return kernel, loop


def test_the_live_loop_trades_as_the_backtest_does_on_the_same_bars(tmp_path):
    path = _fixed_quantity_copy(tmp_path)
    back = bt.run(bt.prepare(path, start="2015-01-02", end="2016-12-30"), fast=False)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    kernel, loop = _live(prep, full, cut)
    want = [(t.entry_time, t.exit_time, round(t.entry_price, 6), round(t.exit_price, 6), t.quantity, round(t.pnl, 2))
            for t in back.ledger.trades]
    got = [(t.entry_time, t.exit_time, round(t.entry_price, 6), round(t.exit_price, 6), t.quantity, round(t.pnl, 2))
           for t in kernel.ledger.trades]
    assert len(want) >= 5
    assert got == want
    assert loop.stepped == sum(len(f[f.index >= cut]) for f in full.values())
    assert not kernel.errors


def test_a_dry_run_on_the_live_loop_sends_nothing_and_trades_its_wallet_the_same(tmp_path):
    path = _fixed_quantity_copy(tmp_path)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    paper, _ = _live(prep, full, cut)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    dry, _ = _live(prep, full, cut, dry_run=True)
    assert dry.venue.inner.placed == []
    assert [o.describe() for o in dry.venue.would_send] == [o.describe() for o in paper.venue.placed]
    assert [round(t.pnl, 2) for t in dry.ledger.trades] == [round(t.pnl, 2) for t in paper.ledger.trades]


def test_an_entry_is_refused_with_the_gates_reason_and_nothing_is_sent(tmp_path):
    path = _fixed_quantity_copy(tmp_path)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    from engine.runtime.prepare import _symbol_bars
    from engine.runtime.session import run_settings

    settings, fills = run_settings(prep, "live")
    venue = SimBroker({"SPY": _symbol_bars(prep, "SPY")[0]}, fills, settings.cash, session="gate")
    kernel, feed, timers = live_kernel(prep, venue, run_id="live", gate=lambda s: "kill switch file qtrade.kill exists")
    source = Replay(full, pd.Timedelta("1D"), cut, pd.Timedelta("6h"))
    LiveRun(kernel, feed, source, timers, stop=lambda: "done" if source.done() else None).run()
    assert venue.placed == []
    blocked = [d for d in kernel.decisions if d.outcome == "blocked"]
    assert blocked and all("kill switch" in d.reason for d in blocked)


def test_a_bar_that_cannot_be_traded_on_is_refused_and_said(tmp_path):
    path = _fixed_quantity_copy(tmp_path)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    from engine.runtime.session import run_settings
    from engine.runtime.prepare import _symbol_bars

    settings, fills = run_settings(prep, "live")
    venue = SimBroker({"SPY": _symbol_bars(prep, "SPY")[0]}, fills, settings.cash, session="bad")
    kernel, feed, _ = live_kernel(prep, venue, run_id="live")
    n = len(kernel.syms["SPY"].bars)
    assert feed.add("SPY", Bar(cut.value, math.nan, 1.0, 1.0, 1.0)) is None
    assert feed.add("SPY", Bar(cut.value, 10.0, 9.0, 9.5, 9.5)) is None     # high below the low
    assert len(kernel.syms["SPY"].bars) == n
    assert len(feed.refused_bars) == 2 and "not finite" in feed.refused_bars[0][2]
    assert kernel.errors and "refused" in kernel.errors[0][1]
    assert not kernel.halted          # said, not a reason to stop trading


def test_appending_a_bar_indexes_it_as_the_loader_does():
    idx = pd.DatetimeIndex([pd.Timestamp("2024-01-02", tz="America/New_York")], name="time")
    frame = pd.DataFrame({"open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5], "volume": [10.0]}, index=idx)
    start = pd.Timestamp("2024-01-03 09:30", tz="America/New_York").value
    grown = append_bar(frame, Bar(start, 1.5, 2.5, 1.0, 2.0, 5.0), "America/New_York", daily=True)
    assert list(grown.index) == [idx[0], pd.Timestamp("2024-01-03", tz="America/New_York")]
    assert append_bar(grown, Bar(start, 1.5, 2.5, 1.0, 2.0), "America/New_York", daily=True) is grown


def synthetic_chain_fetch(full_prep, *, at_a_close: bool = False):
    """A broker's chain_fetch for a live loop over a strategy with option combos: the chains the
    backtest's desk synthesises over `full_prep`'s bars (each asked for at a bar's end: with
    `at_a_close`, asserted to be one, at that bar's close). Returns (fetch, the desk's synthesiser,
    whose runner_ref the loop's kernel goes into)."""
    from engine.runtime.chainsource import option_desk
    from engine.runtime.prepare import _symbol_bars

    class _Sig:
        def __init__(self, bars):
            self.bars = bars

    full_bars = {s: _symbol_bars(full_prep, s)[0] for s in full_prep.symbols}
    _, synthetic = option_desk(full_prep, {s: _Sig(b) for s, b in full_bars.items()})

    def fetch(symbol, spot, expiries, when):
        b = full_bars[symbol]
        k = int(np.searchsorted(b.end, when.value, side="left"))
        if at_a_close:
            assert b.end[k] == when.value and b.close[k] == spot
        adapter = synthetic(symbol, k)
        return adapter.chain if adapter is not None else None

    return fetch, synthetic


def _condor_loop(stop=None):
    """The iron condor on the live loop from 2019-11-05: the chain from a fetch (a broker's
    quotes; here the backtest's own synthesised chains), the chase on the loop's timers. `stop`
    (given the venue) says when the loop stops; by default at the replay's end."""
    from engine.runtime.prepare import _symbol_bars
    from engine.runtime.session import run_settings

    path = ROOT / "strategies" / "iron_condor.yaml"
    fetch, synthetic = synthetic_chain_fetch(bt.prepare(path, end="2019-11-08"), at_a_close=True)
    prep = bt.prepare(path, end="2019-11-08")
    full, cut = _split(prep, "2019-11-05")
    settings, fills = run_settings(prep, "live")
    venue = SimBroker({s: _symbol_bars(prep, s)[0] for s in prep.symbols}, fills, settings.cash, settings.account,
                      session="condor", fill_fraction=settings.fill_fraction)
    kernel, feed, timers = live_kernel(prep, venue, run_id="live", chain_fetch=fetch)
    source = Replay(full, pd.Timedelta("1min"), cut, pd.Timedelta("20s"))
    synthetic.runner_ref["runner"] = kernel
    until = (lambda: stop(venue)) if stop is not None else (lambda: "replayed" if source.done() else None)
    return kernel, venue, LiveRun(kernel, feed, source, timers, stop=until)


def test_the_iron_condor_on_the_live_loop_trades_as_the_backtest_with_its_chase():
    """Combos on the live loop trade as the backtest does, with the chase stepping."""
    path = ROOT / "strategies" / "iron_condor.yaml"
    back = bt.run(bt.prepare(path, start="2019-11-05", end="2019-11-08"))
    kernel, _, loop = _condor_loop()
    loop.run()
    kernel._drain()
    want = [(t.entry_time, t.exit_time, round(t.pnl, 2)) for t in back.ledger.trades]
    got = [(t.entry_time, t.exit_time, round(t.pnl, 2)) for t in kernel.ledger.trades]
    assert len(want) >= 2
    assert got == want
    assert any(len(tr.chase_prices) > 1 for tr in kernel.orders_by_ref.values())    # the chase stepped


class _RefusesStopsLater(SimBroker):
    """A venue that refuses stop orders (201) a moment after they are placed, as IB answers: the
    refusal comes with the events asked for after the next ones, not with the placing."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._later: list = []
        self._next: list = []

    def place(self, order):
        if order.order_type != "stop":
            return super().place(order)
        from venues import refused

        self._next += refused(self, order, "Order rejected - reason: stop orders are not allowed for this account")
        return order.ref

    def events(self):
        out = self._later + super().events()
        self._later, self._next = self._next, []
        return out


def test_a_close_for_a_stop_refused_between_bars_is_sent_then_not_at_the_next_bar(tmp_path):
    """Live, the broker's refusal of a protective stop arrives after the bar's orders went out: the
    market close that replaces the stop is sent as the loop takes the refusal (it fills at the next
    bar's open), not held until the symbol's next bar completes (a day later on daily bars)."""
    text = _fixed_quantity_copy(tmp_path).read_text().replace(
        "exit:\n", "exit:\n  - {name: stop, stop: position.entry_price * 0.97}\n")
    path = tmp_path / "stopped.yaml"
    path.write_text(text)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    from engine.runtime.prepare import _symbol_bars
    from engine.runtime.session import run_settings

    settings, fills = run_settings(prep, "live")
    venue = _RefusesStopsLater({"SPY": _symbol_bars(prep, "SPY")[0]}, fills, settings.cash, session="late")
    kernel, feed, timers = live_kernel(prep, venue, run_id="live")
    source = Replay(full, pd.Timedelta("1D"), cut, pd.Timedelta("6h"))
    LiveRun(kernel, feed, source, timers, stop=lambda: "done" if source.done() else None).run()
    refused = [t for t in kernel.ledger.trades if t.exit_rule == "stop refused"]
    assert len(refused) >= 3
    assert [t.exit_bar - t.entry_bar for t in refused] == [1] * len(refused)      # at the open after the refusal
    stops = [o for o in kernel.orders if o.intent.order_type == "stop"]
    assert len(stops) == len(refused) and all(o.status == "rejected" for o in stops)


@pytest.mark.parametrize("dry_run", [False, True])
def test_marks_follow_the_bars_the_broker_hands_over(tmp_path, dry_run):
    """The kernel's marks (the status line's P&L, the run's last lines, the equity a dry run's
    wallet sizes its entries by) and the simulated account's are the last closes of the bars
    handed over live, not of the warm-up's last bar: the position open at the end is marked at
    the last bar's close, by the kernel and by the venue (the dry run's wallet)."""
    path = _fixed_quantity_copy(tmp_path)
    back = bt.run(bt.prepare(path, start="2015-01-02", end="2016-12-30"), fast=False)
    prep = bt.prepare(path, end="2016-12-30")
    full, cut = _split(prep, "2015-01-02")
    kernel, _ = _live(prep, full, cut, dry_run=dry_run)
    want = [(t.entry_time, t.quantity, round(t.pnl, 2)) for t in back.ledger.trades]
    assert len(want) >= 3
    assert [(t.entry_time, t.quantity, round(t.pnl, 2)) for t in kernel.ledger.trades] == want
    last = {s: float(f["close"].iloc[-1]) for s, f in full.items()}
    now = max(int(b.end[-1]) for b in kernel.bars.values())
    marks = kernel.marks(now)
    assert kernel.ledger.positions and all(marks[s] == last[s] for s in kernel.ledger.positions)
    venue = kernel.venue.wallet if dry_run else kernel.venue
    venue.at(now)
    assert all(venue.mark(s) == last[s] for s in kernel.ledger.positions)
    assert venue.account().equity == pytest.approx(kernel.ledger.equity(marks))


def test_a_stop_during_a_combos_chase_cancels_it_and_sends_nothing_more():
    """The run stopped (SIGTERM, --for) while a condor's chase works: the order is cancelled and
    the cancel confirmed, its outcome says it was cancelled by the stop after the one price sent
    (not that the chase timed out after all of its prices), and no chase step, no close at the
    natural price, is sent after the stop."""
    kernel, venue, loop = _condor_loop(lambda venue: "stopped" if any(w.order.legs for w in venue._working.values())
                                       else None)
    assert loop.run() == "stopped"
    placed = len(venue.placed)
    assert loop.shutdown() == []
    assert len(venue.placed) == placed                       # nothing sent after the stop
    tr = next(tr for tr in kernel.orders_by_ref.values() if tr.combo is not None and tr.done)
    assert tr.filled == 0 and tr.record.status == "cancelled"
    assert tr.record.reason.startswith("cancelled after 1 price (") and "the run stopped" in tr.record.reason, \
        tr.record.reason
    assert not kernel.errors


def test_a_daily_bar_is_complete_at_its_sessions_close_not_at_midnight():
    """bar_done_ns: a daily bar (midnight to midnight in the strategy's zone) is complete at its
    calendar's close: 16:00 New York on NYSE, 13:00 on an early close, 17:00 for CME equity
    futures; at its end on a day without a session and for an intraday bar. bar_done: a cash
    index's daily bar at NYSE's close, although its calendar (its options') runs to 16:15."""
    from engine.check.model import Instrument
    from engine.market.calendars import bar_done_ns
    from engine.runtime.live import bar_done

    def ns(text):
        return pd.Timestamp(text, tz="America/New_York").value

    tz = "America/New_York"
    day = ns("2019-11-06"), ns("2019-11-07")
    assert bar_done_ns(*day, "NYSE", tz) == ns("2019-11-06 16:00")
    assert bar_done_ns(*day, "CBOE_Index_Options", tz) == ns("2019-11-06 16:15")
    assert bar_done_ns(*day, "CME_Equity", tz) == ns("2019-11-06 17:00")
    assert bar_done_ns(ns("2019-11-29"), ns("2019-11-30"), "NYSE", tz) == ns("2019-11-29 13:00")
    assert bar_done_ns(ns("2019-11-28"), ns("2019-11-29"), "NYSE", tz) == ns("2019-11-29")   # Thanksgiving
    assert bar_done_ns(*day, None, tz) == day[1]
    minute = ns("2019-11-06 15:59"), ns("2019-11-06 16:00")
    assert bar_done_ns(*minute, "NYSE", tz) == minute[1]

    class Prep:
        timezone = tz
        instruments = {"XSP": Instrument("XSP", sec_type="IND", calendar="CBOE_Index_Options"),
                       "ES": Instrument("ES", sec_type="FUT", calendar="CME_Equity")}

    done = bar_done(Prep())
    assert done("XSP", *day) == ns("2019-11-06 16:00")
    assert done("ES", *day) == ns("2019-11-06 17:00")
    assert done("SPY", *day) == ns("2019-11-06 16:00")       # not in the map: NYSE, as the map's default

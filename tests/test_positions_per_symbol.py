"""Issue 13 item 1's last part: `arbitration.positions_per_symbol` lets different agents each hold
their own position in one symbol at once. Each position is its owner's (its exits only), the
ledger and the journal keep them apart, the risk caps count each, shares against another agent's
are refused with the reason journaled, and the simulated modes trade alike. Runs on IB refuse it
at its line (not built there yet)."""

from __future__ import annotations

import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main
from engine.portfolio.ledger import Fill, Ledger
from engine.runtime import backtest as bt
from engine.runtime import session

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import cases  # noqa: E402
from test_agents import mixed, write  # noqa: E402


def per_symbol(n: int, extra: str = "") -> str:
    return f"arbitration: {{positions_per_symbol: {n}}}\n{extra}"


def agents(tmp_path: Path, n: int, open_positions: int = 4, risk: str = "", name: str = "s.yaml",
           extra: str = "") -> Path:
    """test_agents' two agents on SPY and AAPL, `n` positions a symbol, `open_positions` in the account."""
    path = write(tmp_path, extra=per_symbol(n, extra), risk=risk, name=name)
    path.write_text(path.read_text().replace("max_open_positions: 2", f"max_open_positions: {open_positions}"))
    return path


def overlaps(trades) -> list[tuple]:
    """Pairs of trades in one symbol open at the same time."""
    out = []
    for i, a in enumerate(trades):
        for b in trades[i + 1:]:
            if a.symbol == b.symbol and a.entry_time < b.exit_time and b.entry_time < a.exit_time:
                out.append((a, b))
    return out


def owner_rules(prep) -> dict[str, str | None]:
    return {r.name: r.agent for r in prep.plan.rules}


def test_two_agents_hold_their_own_positions_in_one_symbol_at_once(tmp_path):
    prep = bt.prepare(agents(tmp_path, 2, 4))
    result = bt.run(prep, run_id="t")
    trades = result.ledger.trades
    pairs = overlaps(trades)
    assert len(pairs) > 10                                          # held together, on SPY and on AAPL
    assert {a.symbol for a, _ in pairs} == {"SPY", "AAPL"}
    assert all(a.owner != b.owner for a, b in pairs)                 # never two by one agent
    agent_of = owner_rules(prep)
    for t in trades:                    # each closed by its own agent's exits only
        assert agent_of[t.entry_rule] == t.owner == agent_of[t.exit_rule]
    one = bt.run(bt.prepare(agents(tmp_path, 1, 4, name="one.yaml")),
                 run_id="t")
    assert not overlaps(one.ledger.trades)
    assert len(trades) > len(one.ledger.trades)


def test_one_is_the_default_and_trades_as_without_the_key(tmp_path):
    plain = cases.record(bt.run(bt.prepare(write(tmp_path)), run_id="g"))
    one = cases.record(bt.run(bt.prepare(write(tmp_path, extra=per_symbol(1), name="one.yaml")), run_id="g"))
    assert one == plain


@pytest.mark.parametrize("extra", ["", "arbitration: {positions_per_symbol: 2, policy: priority}",
                                   "arbitration: {positions_per_symbol: 2, max_active_agents: 1}"])
def test_backtest_run_and_dry_run_trade_alike(tmp_path, extra):
    path = agents(tmp_path, 2, 4) if not extra else write(tmp_path, extra=extra)
    path.write_text(path.read_text().replace("max_open_positions: 2", "max_open_positions: 4"))
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="g")
    want = cases.record(result)
    assert len(want["trades"]) > 20
    for streaming, dry in ((True, False), (False, False), (True, True)):
        got = session.simulate(prep, streaming=streaming, dry_run=dry, run_id="g")
        assert cases.record(got) == want, (streaming, dry)
        assert [(d.symbol, d.rule, d.reason) for d in got.runner.decisions] == \
            [(d.symbol, d.rule, d.reason) for d in result.runner.decisions]
    if "max_active_agents: 1" in extra:
        assert not overlaps(result.ledger.trades)       # one agent at a time: never two positions together


def test_the_ledger_keeps_two_owners_apart_and_nets_the_account():
    ledger = Ledger(10_000)
    ledger.open(Fill("SPY", "buy", 10, 100.0, 1.0, 1, 0, "a"), owner="follower")
    ledger.open(Fill("SPY", "buy", 5, 110.0, 1.0, 2, 1, "b"), owner="contrarian", key="SPY#2")
    assert {k: (p.symbol, p.owner, p.quantity) for k, p in ledger.positions.items()} == \
        {"SPY": ("SPY", "follower", 10), "SPY#2": ("SPY", "contrarian", 5)}
    # cash paid 1,000 + 550 + 2 commission; both marked at 120
    assert ledger.equity({"SPY": 120.0, "SPY#2": 120.0}) == pytest.approx(10_000 - 2 + 10 * 20 + 5 * 10)
    with pytest.raises(Exception):
        ledger.open(Fill("SPY", "buy", 1, 100.0, 0.0, 3, 2, "c"), key="SPY#2")     # one position a key
    t2 = ledger.close(Fill("SPY", "sell", 5, 120.0, 1.0, 4, 3, "d"), key="SPY#2")
    assert (t2.owner, t2.quantity, t2.pnl) == ("contrarian", 5, pytest.approx(5 * 10 - 2))
    assert set(ledger.positions) == {"SPY"} and ledger.positions["SPY"].quantity == 10


def test_the_journal_keeps_each_owners_trades_and_orders(tmp_path):
    path = agents(tmp_path, 2, 4)
    journal = tmp_path / "j.sqlite"
    result = CliRunner().invoke(main, ["backtest", str(path), "--journal", str(journal)])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(journal)
    trades = db.execute("SELECT symbol, owner, entry_ts, exit_ts FROM trades").fetchall()
    together = [(a, b) for a in trades for b in trades if a[0] == b[0] and a[1] < b[1] and a[2] < b[3]
                and b[2] < a[3]]
    assert together, "no two owners held one symbol at once"
    # every order of a trade is its owner's
    owners = {o for (o,) in db.execute("SELECT DISTINCT owner FROM orders")}
    assert owners == {"follower", "contrarian"}


def test_max_open_positions_counts_each_owners_position(tmp_path):
    result = bt.run(bt.prepare(agents(tmp_path, 2, 1)), run_id="t")
    trades = result.ledger.trades
    spans = sorted((t.entry_time, t.exit_time) for t in trades)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))          # one at a time over the account
    assert any(d.reason.startswith("max_open_positions") for d in result.runner.decisions)


def test_max_position_caps_what_the_symbols_positions_hold_together(tmp_path):
    # each entry sizes 40% of equity; max_position 50% leaves the second agent the remainder
    prep = bt.prepare(agents(tmp_path, 2, 4, risk=", max_position: 50%"))
    result = bt.run(prep, run_id="t")
    capped = [d for d in result.runner.decisions if d.kind == "entry" and "capped by max_position" in d.reason]
    assert len(capped) > 10
    trades = result.ledger.trades
    for d in capped:
        # what it says is held is the other agent's position open in the symbol when it was decided
        held = float(d.reason.split("(with the ")[1].split(" held)")[0])
        others = [t for t in trades if t.symbol == d.symbol and t.owner != d.agent and t.entry_time <= d.time < t.exit_time]
        assert others and held == pytest.approx(sum(t.quantity for t in others)), d
    free = bt.run(bt.prepare(agents(tmp_path, 2, 4, name="free.yaml")), run_id="t")
    assert not [d for d in free.runner.decisions if "capped by max_position" in d.reason]


SHORT = """\
  seller:
    active: "true"
    score: 0.2
    entry: [{{name: fade, when: r > 55, order: sell}}]
    exit: [{{name: faded, when: r < 50}}]
"""


def test_shares_against_another_agents_are_refused_with_the_holder(tmp_path):
    text = agents(tmp_path, 3, 6).read_text()
    text = text.replace("arbitration:", SHORT.format() + "arbitration:", 1).replace(
        "orders:\n", "orders:\n  sell: {action: sell, type: market, quantity: {percent_of_equity: 20%}}\n", 1)
    text = text.replace("risk:", "backtest: {account: margin}\nrisk:", 1)
    path = tmp_path / "short.yaml"
    path.write_text(text)
    check = CliRunner().invoke(main, ["validate", str(path)])
    assert check.exit_code == 0, check.output
    result = bt.run(bt.prepare(path), run_id="t")
    trades = result.ledger.trades
    assert {"seller", "follower", "contrarian"} <= {t.owner for t in trades}
    for a, b in overlaps(trades):
        assert a.side == b.side, (a, b)              # never long and short in one symbol at once
    refused = [d for d in result.runner.decisions if "agents hold a symbol's shares on one side only" in d.reason]
    assert refused
    assert any(d.rule == "fade" and " long:" in d.reason for d in refused)
    assert all(d.reason.split(" hold")[0] in ("follower", "contrarian", "seller", "contrarian, follower",
                                              "follower, contrarian") for d in refused)


def test_an_options_agent_and_a_stock_agent_hold_one_symbol_together(tmp_path):
    one = bt.run(bt.prepare(mixed(tmp_path, theta_active="true", name="one.yaml")), run_id="t")
    assert not overlaps(one.ledger.trades)
    path = mixed(tmp_path, theta_active="true", extra=per_symbol(2)).read_text().replace(
        "max_open_positions: 1", "max_open_positions: 2")
    (tmp_path / "two.yaml").write_text(path)
    prep = bt.prepare(tmp_path / "two.yaml")
    result = bt.run(prep, run_id="g")
    pairs = overlaps(result.ledger.trades)
    assert pairs and all({a.owner, b.owner} == {"dipper", "theta"} for a, b in pairs)
    assert all(bool(a.legs) != bool(b.legs) for a, b in pairs)       # a combo beside shares
    agent_of = owner_rules(prep)
    for t in result.ledger.trades:
        assert agent_of.get(t.exit_rule, t.owner) == t.owner
    want = cases.record(result)
    for streaming, dry in ((True, False), (False, False), (True, True)):
        assert cases.record(session.simulate(prep, streaming=streaming, dry_run=dry, run_id="g")) == want


@pytest.mark.parametrize("value, message", [
    ("0", "arbitration.positions_per_symbol must be >= 1"),
    ("1.5", "arbitration.positions_per_symbol"),
])
def test_a_value_below_one_is_a_located_error(tmp_path, value, message):
    path = write(tmp_path, extra=f"arbitration: {{positions_per_symbol: {value}}}")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    line = next(i for i, t in enumerate(path.read_text().splitlines(), start=1) if "positions_per_symbol" in t)
    assert f"s.yaml:{line}:" in result.output and message in result.output, result.output


def test_more_than_one_without_agents_is_a_located_error(tmp_path):
    text = write(tmp_path).read_text()
    start, end = text.index("agents:\n"), text.index("orders:\n")
    plain = text[:start] + "entry: [{name: dip, when: r < 45, order: buy}]\narbitration: {positions_per_symbol: 2}\n" \
        + text[end:]
    path = tmp_path / "plain.yaml"
    path.write_text(plain)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    line = next(i for i, t in enumerate(plain.splitlines(), start=1) if "positions_per_symbol" in t)
    assert f"plain.yaml:{line}:" in result.output
    assert "positions_per_symbol 2: more than one position a symbol is one each for different agents, and this " \
           "strategy has no agents" in result.output
    assert "Traceback" not in result.output


def test_an_ib_run_takes_more_than_one_and_goes_on_to_connect(tmp_path):
    """IB runs build positions_per_symbol (tests/e2e/test_positions_per_symbol_ib.py): the key
    is no longer refused; with nothing listening the run gets as far as the connect."""
    path = write(tmp_path, extra=per_symbol(2))
    result = CliRunner().invoke(main, ["run", str(path), "--broker", "ib", "--port", "1",
                                       "--journal", str(tmp_path / "j.sqlite")])
    assert result.exit_code != 0
    assert "positions_per_symbol" not in result.output, result.output
    assert "Traceback" not in result.output
    assert "nothing is listening on 127.0.0.1:1" in result.output, result.output
    assert "gateway-sim" in result.output           # a paper run may use the simulator
    live = CliRunner().invoke(main, ["run", str(path), "--broker", "ib", "--port", "1", "--live", "--yes",
                                     "--journal", str(tmp_path / "j2.sqlite")])
    assert live.exit_code != 0 and "Traceback" not in live.output
    assert "nothing is listening on 127.0.0.1:1" in live.output, live.output
    assert "live account" in live.output and "gateway-sim" not in live.output, live.output


def test_trades_by_agent_figure(tmp_path):
    """The figure the report quotes: trades by agent with one and with two positions a symbol."""
    counts = {}
    for n in (1, 2):
        prep = bt.prepare(agents(tmp_path, n, 4, name=f"n{n}.yaml"))
        counts[n] = Counter(t.owner for t in bt.run(prep, run_id="t").ledger.trades)
    assert sum(counts[2].values()) > sum(counts[1].values())
    assert counts[2]["contrarian"] > counts[1]["contrarian"]      # no longer shut out while the follower holds


def test_regime_agents_with_two_positions_a_symbol_trades_alike_in_every_simulated_mode(tmp_path):
    """The seven-agent example with positions_per_symbol: 2 (its data is bundled): more trades than
    with one, agents held together on a symbol, and run --broker sim and the dry run equal to it."""
    root = Path(__file__).resolve().parent.parent / "strategies"
    src = (root / "regime_agents.yaml").read_text()
    assert "arbitration: {policy: highest_confidence}" in src
    # a copy in tmp_path (never beside the examples, where a test listing them would see it), its
    # data and risk file named by their absolute paths
    assert "source: data/}" in src and "extends: risk/small_account.yaml" in src
    src = src.replace("source: data/}", f"source: {root / 'data'}/}}").replace(
        "extends: risk/small_account.yaml", f"extends: {root / 'risk' / 'small_account.yaml'}")
    path = tmp_path / "two.yaml"
    path.write_text(src.replace("arbitration: {policy: highest_confidence}",
                                "arbitration: {policy: highest_confidence, positions_per_symbol: 2}"))
    try:
        prep = bt.prepare(path)
        result = bt.run(prep, run_id="g")
        one = bt.run(bt.prepare(root / "regime_agents.yaml"), run_id="g")
        assert len(result.ledger.trades) > len(one.ledger.trades)
        assert overlaps(result.ledger.trades) and not overlaps(one.ledger.trades)
        want = cases.record(result)
        for streaming, dry in ((True, False), (False, False), (True, True)):
            assert cases.record(session.simulate(prep, streaming=streaming, dry_run=dry, run_id="g")) == want
    finally:
        path.unlink()


def _fixed(tmp_path: Path, name: str = "fixed.yaml") -> Path:
    """The two agents, two positions a symbol, each entry a fixed 20 shares (a live run sizes on
    the quote, a backtest on the bar: fixed quantities trade alike in both)."""
    path = agents(tmp_path, 2, 4, name=name)
    path.write_text(path.read_text().replace("quantity: {percent_of_equity: 40%}", "quantity: 20"))
    return path


def _live_loop(prep, full, cut):
    from test_live_loop import Replay

    from engine.brokers.sim import SimBroker
    from engine.runtime.live import LiveRun, live_kernel
    from engine.runtime.prepare import _symbol_bars

    settings, fills = session.run_settings(prep, "live")
    venue = SimBroker({s: _symbol_bars(prep, s)[0] for s in prep.symbols}, fills, settings.cash, settings.account,
                      session="live.venue")
    kernel, feed, timers = live_kernel(prep, venue, run_id="live")
    source = Replay(full, pd.Timedelta("1D"), cut, pd.Timedelta("6h"))
    return kernel, feed, timers, source, LiveRun


def test_the_live_loop_steps_every_lane_as_the_backtest_does(tmp_path):
    """The loop IB runs use (runtime/live.py) feeds each bar to every lane of the symbol: the two
    owners' positions in SPY and AAPL are the backtest's, trade for trade."""
    from test_live_loop import _split

    path = _fixed(tmp_path)
    back = bt.run(bt.prepare(path, start="2012-01-03", end="2014-12-31"), fast=False)
    prep = bt.prepare(path, end="2014-12-31")
    full, cut = _split(prep, "2012-01-03")
    kernel, feed, timers, source, LiveRun = _live_loop(prep, full, cut)
    LiveRun(kernel, feed, source, timers, stop=lambda: "replayed" if source.done() else None).run()
    kernel._drain()

    def key(trades):
        return [(t.symbol, t.owner, t.entry_time, t.exit_time, round(t.entry_price, 6), t.quantity, t.exit_rule,
                 t.entry_states) for t in trades]

    want = sorted(key(back.ledger.trades))
    assert len(overlaps(back.ledger.trades)) > 3          # owners held a symbol together
    assert sorted(key(kernel.ledger.trades)) == want
    assert not kernel.errors


def test_positions_restored_into_lanes_trade_on_as_if_never_stopped(tmp_path):
    """A restart in the middle of the live loop: the positions open at the stop, read back as the
    journal holds them (each owner's, keyed SPY@owner when two share a symbol), are restored each
    into its own lane with its entry states, and the second loop closes them with their own
    exits at the same bars and prices as an uninterrupted loop."""
    from test_live_loop import _split

    from engine.runtime.ibrun import JournalPosition, restore_positions

    path = _fixed(tmp_path)
    prep = bt.prepare(path, end="2014-12-31")
    full, cut = _split(prep, "2012-01-03")
    kernel, feed, timers, source, LiveRun = _live_loop(prep, full, cut)
    LiveRun(kernel, feed, source, timers, stop=lambda: "replayed" if source.done() else None).run()
    kernel._drain()
    whole = kernel.ledger.trades
    # the moment to stop: a day both owners hold SPY, and no order of any position fills at its
    # open (one decided at the close before the stop would be working, not held, at the stop)
    fills_at = {t.entry_time for t in whole} | {t.exit_time for t in whole}
    days = full["SPY"].index
    stop_at = next(day for a, b in overlaps(whole) if a.symbol == b.symbol == "SPY"
                   for day in days if max(a.entry_time, b.entry_time) < day.value < min(a.exit_time, b.exit_time)
                   and day.value not in fills_at)
    first_prep = bt.prepare(path, end="2014-12-31")
    full1, cut1 = _split(first_prep, "2012-01-03")
    until = {s: f[f.index < stop_at] for s, f in full1.items()}
    k1, f1, t1, s1, _ = _live_loop(first_prep, until, cut1)
    LiveRun(k1, f1, s1, t1, stop=lambda: "stopped" if s1.done() else None).run()
    k1._drain()
    held = {key: p for key, p in k1.ledger.positions.items()}
    spy = [p for p in held.values() if p.symbol == "SPY"]
    assert len(spy) == 2 and {p.owner for p in spy} == {"follower", "contrarian"}
    journaled = {}        # as journal_state gives them: SYMBOL@owner for a symbol two owners hold
    holders = Counter(p.symbol for p in held.values())
    for p in held.values():
        name = f"{p.symbol}@{p.owner}" if holders[p.symbol] > 1 else p.symbol
        journaled[name] = JournalPosition(p.symbol, p.quantity, p.avg_price, p.multiplier, p.entry_time, "r",
                                          p.entry_rule, owner=p.owner)
    second = bt.prepare(path, end="2014-12-31")
    full2, cut2 = _split(second, str(stop_at.date()))
    k2, f2, t2, s2, _ = _live_loop(second, full2, cut2)
    restored = restore_positions(k2, journaled)
    assert set(restored) == set(journaled)
    assert sorted(restored.values()) == sorted(held)            # each into a lane: SPY, SPY#2, ...
    said = []       # the same journal again: every owner holds its lane now, and each is said, none doubled
    assert restore_positions(k2, journaled, said.append) == {}
    assert len(said) == len(journaled) and all("not restored" in line and "lanes are all held" in line
                                               for line in said)
    assert sorted(k2.ledger.positions) == sorted(held)
    before = {(p.symbol, p.owner): p for p in held.values()}
    for name, slot in restored.items():
        pos = k2.ledger.positions[slot]
        assert pos.owner == journaled[name].owner
        assert pos.states == before[(pos.symbol, pos.owner)].states and pos.states      # its entry states
    LiveRun(k2, f2, s2, t2, stop=lambda: "replayed" if s2.done() else None).run()
    k2._drain()
    reopened = [t for t in k2.ledger.trades if t.entry_time < stop_at.value]
    assert len(reopened) == len(held)
    want = {(t.symbol, t.owner, t.entry_time, t.exit_time, round(t.exit_price, 6), t.exit_rule, t.entry_states)
            for t in whole if t.entry_time < stop_at.value <= t.exit_time}
    got = {(t.symbol, t.owner, t.entry_time, t.exit_time, round(t.exit_price, 6), t.exit_rule, t.entry_states)
           for t in reopened}
    assert got == want


def _combo_loop(prep, full, cut, full_prep):
    """_live_loop for a strategy with option combos: the chains the backtest's desk prices,
    handed over as a broker's chain_fetch would (as tests/test_live_loop.py's condor does)."""
    from test_live_loop import Replay, synthetic_chain_fetch

    from engine.brokers.sim import SimBroker
    from engine.runtime.live import LiveRun, live_kernel
    from engine.runtime.prepare import _symbol_bars

    fetch, synthetic = synthetic_chain_fetch(full_prep)
    settings, fills = session.run_settings(prep, "live")
    venue = SimBroker({s: _symbol_bars(prep, s)[0] for s in prep.symbols}, fills, settings.cash, settings.account,
                      session="live.venue")
    kernel, feed, timers = live_kernel(prep, venue, run_id="live", chain_fetch=fetch)
    synthetic.runner_ref["runner"] = kernel
    source = Replay(full, pd.Timedelta("1D"), cut, pd.Timedelta("6h"))
    return kernel, LiveRun(kernel, feed, source, timers, stop=lambda: "replayed" if source.done() else None)


def test_a_combo_and_shares_restored_into_their_lanes_close_as_if_never_stopped(tmp_path):
    """The options agent's put spread beside the stock agent's shares in one symbol: a restart
    in the middle gives each its own lane back (the combo under its lane's key), and each is
    closed by its own agent's exit at the same bar as in an uninterrupted loop."""
    from test_live_loop import _split

    from engine.runtime.ibrun import JournalPosition, restore_combos, restore_positions

    text = mixed(tmp_path, theta_active="true", extra=per_symbol(2)).read_text().replace(
        "max_open_positions: 1", "max_open_positions: 2").replace("percent_of_equity: 50%", "percent_of_equity: 20%")
    path = tmp_path / "two.yaml"
    path.write_text(text)
    end = "2016-12-30"

    def prepared(first_live):
        prep = bt.prepare(path, end=end)
        full, cut = _split(prep, first_live)
        return prep, full, cut

    prep, full, cut = prepared("2015-01-02")
    kernel, loop = _combo_loop(prep, full, cut, bt.prepare(path, end=end))
    loop.run()
    kernel._drain()
    whole = kernel.ledger.trades
    fills_at = {t.entry_time for t in whole} | {t.exit_time for t in whole}
    pairs = [(a, b) for a, b in overlaps(whole) if bool(a.legs) != bool(b.legs)]
    assert pairs, "the combo and the shares were never held together"
    # (and nothing fills from the close of the last bar before the stop to the end of its day: an
    # order decided at that close, or a combo's chase after it, would be working at the stop)
    days = full["SPY"].index
    day_ns = pd.Timedelta("1D").value
    stop_at = next(day for a, b in pairs for prev, day in zip(days, days[1:])
                   if max(a.entry_time, b.entry_time) < day.value < min(a.exit_time, b.exit_time)
                   and not any(prev.value + day_ns <= t < day.value + day_ns for t in fills_at))
    prep1, full1, cut1 = prepared("2015-01-02")
    k1, loop1 = _combo_loop(prep1, {s: f[f.index < stop_at] for s, f in full1.items()}, cut1,
                            bt.prepare(path, end=end))
    loop1.run()
    k1._drain()
    assert len(k1.ledger.positions) == 2 and len(k1.combos) == 1
    journaled = {}
    for key, p in k1.ledger.positions.items():
        combo = k1.combos.get(key)
        if combo is None:
            journaled["SPY@dipper"] = JournalPosition("SPY", p.quantity, p.avg_price, p.multiplier, p.entry_time,
                                                      "r1", p.entry_rule, owner=p.owner)
        else:        # journaled as its fills were: the key without the lane's suffix, the legs as sent
            journaled["SPY put_spread@theta"] = JournalPosition(
                "SPY put_spread", -combo.quantity if combo.action == "sell" else combo.quantity, combo.entry_credit,
                combo.multiplier, combo.entry_time, "r2", combo.rule, legs=tuple(leg.to_json() for leg in combo.legs),
                owner=p.owner)
    prep2, full2, cut2 = prepared(str(stop_at.date()))
    k2, loop2 = _combo_loop(prep2, full2, cut2, bt.prepare(path, end=end))
    restored = restore_positions(k2, journaled)
    restored.update(restore_combos(k2, journaled))
    assert set(restored) == set(journaled)
    assert {k2.ledger.positions[key].owner for key in restored.values()} == {"dipper", "theta"}
    # the shares restored first take the symbol's first lane; the combo the second, under its key there
    assert restored == {"SPY@dipper": "SPY", "SPY put_spread@theta": "SPY put_spread#2"}
    assert "SPY put_spread#2" in k2.combos and k2.combo_symbol["SPY put_spread#2"] == "SPY"
    loop2.run()
    k2._drain()

    def closes(trades):
        return {(t.owner, t.entry_time, t.exit_time, t.exit_rule, t.entry_states) for t in trades
                if t.entry_time < stop_at.value}

    want = {c for c in closes(whole) if c[2] >= stop_at.value}
    assert closes(k2.ledger.trades) == want and len(want) == 2


def test_the_positions_left_open_are_journaled_each_with_its_owner(tmp_path):
    """A backtest that ends while two agents hold SPY: the journal's snapshot of the positions
    left open has a row for each, with its owner and its last price (not two anonymous SPY rows)."""
    path = agents(tmp_path, 2, 4)
    whole = bt.run(bt.prepare(path), run_id="t").ledger.trades
    a, b = next((a, b) for a, b in overlaps(whole) if a.symbol == "SPY")
    entered = pd.Timestamp(max(a.entry_time, b.entry_time), tz="UTC").tz_convert("America/New_York")
    end = entered.normalize() + pd.Timedelta(days=1)
    while end.value >= min(a.exit_time, b.exit_time) or end.weekday() >= 5:     # a weekday before either exit
        end -= pd.Timedelta(days=1)
    assert end.value > max(a.entry_time, b.entry_time), "the pair is not held over a close"
    journal = tmp_path / "j.sqlite"
    out = CliRunner().invoke(main, ["backtest", str(path), "--to", f"{end:%Y-%m-%d}", "--journal", str(journal),
                                    "--no-progress"])
    assert out.exit_code == 0, out.output
    rows = sqlite3.connect(journal).execute("SELECT symbol, owner, quantity, market_price FROM positions "
                                            "WHERE symbol = 'SPY'").fetchall()
    assert sorted(r[1] for r in rows) == sorted({a.owner, b.owner}) and a.owner != b.owner
    assert all(r[2] != 0 and r[3] is not None and r[3] > 0 for r in rows)

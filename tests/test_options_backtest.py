"""Options end to end: an iron condor on real SPXW 2018 chains, checked leg by leg against the
file's quotes; chases, NaN legs, settlement, the bundled XSP condor, dry runs and the report."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPXW = SHARED / "optopsy_v1" / "test_options_data_full.csv"

needs_chains = pytest.mark.skipif(not SPXW.is_file(), reason="../shared/data is not present")

CONDOR = """kind: strategy
name: spxw-condor
underlying: SPX
universe: [SPX]
data: {{bar: 1d, chains: {chains}}}
params: {{short_delta: 0.15, wing: {wing}}}
orders:
  condor:
    expiry: {{dte: [25, 35]}}
    legs:
      short_put:  {{right: put,  action: sell, strike: {{delta: short_delta}}}}
      long_put:   {{right: put,  action: buy,  strike: short_put.strike - wing}}
      short_call: {{right: call, action: sell, strike: {{delta: short_delta}}}}
      long_call:  {{right: call, action: buy,  strike: short_call.strike + wing}}
    quantity: 1
    price: {price}
entry:
  - name: open condor
    when: credit > 0
    order: condor
exit:
{exits}
backtest: {{cash: 100000, commission: {{per_contract: 0.65}}, options: {{fill_fraction: {fraction}}}}}
"""


def condor(tmp_path, *, wing=50, price="market", fraction=0.0,
           exits="  - name: a week left\n    when: position.dte <= 7\n", name="ic.yaml") -> Path:
    path = tmp_path / name
    path.write_text(CONDOR.format(chains=SPXW, wing=wing, price=price, fraction=fraction, exits=exits))
    return path


@pytest.fixture(scope="module")
def quotes() -> pd.DataFrame:
    df = pd.read_csv(SPXW, encoding="utf-8-sig")
    df.columns = [c.strip() for c in df.columns]
    df["quotedate"] = pd.to_datetime(df["quotedate"], format="%m/%d/%Y").dt.date
    df["expiration"] = pd.to_datetime(df["expiration"], format="%m/%d/%Y").dt.date
    return df


def row(quotes, day, right, strike, expiry):
    hit = quotes[(quotes.quotedate == day) & (quotes.type == right) & (quotes.strike == strike)
                 & (quotes.expiration == expiry)]
    assert len(hit) == 1, (day, right, strike)
    return hit.iloc[0]


@needs_chains
def test_condor_legs_by_delta_and_prices_from_the_file(tmp_path, quotes):
    result = bt.run(bt.prepare(condor(tmp_path)))
    trades = result.ledger.trades
    assert len(trades) == 2
    first = trades[0]
    legs = first.legs
    entry_day = pd.Timestamp("2018-01-02").date()
    expiry = pd.Timestamp(legs["expiry"]).date()
    assert expiry == pd.Timestamp("2018-01-31").date()          # {dte: [25, 35]} on 2018-01-02: 29 days
    # each short leg is the strike whose |delta| is nearest 0.15 on the entry date
    day = quotes[(quotes.quotedate == entry_day) & (quotes.expiration == expiry)]
    for leg in legs["legs"]:
        if leg["action"] != "sell":
            continue
        side = day[day.type == leg["right"]]
        quoted = side[(side.bid > 0) | (side.ask > 0)]
        best = quoted.iloc[(quoted.delta.abs() - 0.15).abs().argsort().iloc[0]]
        assert leg["strike"] == best.strike
    by_name = {leg["name"]: leg for leg in legs["legs"]}
    assert by_name["long_put"]["strike"] == by_name["short_put"]["strike"] - 50
    assert by_name["long_call"]["strike"] == by_name["short_call"]["strike"] + 50
    # at the market (fill fraction 0): sold legs at the file's bid, bought legs at its ask
    entry_credit = 0.0
    for leg in legs["legs"]:
        r = row(quotes, entry_day, leg["right"], leg["strike"], expiry)
        assert (leg["bid"], leg["ask"]) == (r.bid, r.ask)
        entry_credit += r.bid if leg["action"] == "sell" else -r.ask
    assert legs["credit"] == pytest.approx(entry_credit)
    # the exit: the first quote date with 7 or fewer days to expiry, buying back at the ask
    exit_day = pd.Timestamp("2018-01-24").date()
    # each fill is dated by the chain it was priced on, at that quote date's 16:00 close (not the
    # midnight its daily bar ends at, which is the next day)
    ny = "America/New_York"
    assert pd.Timestamp(first.entry_time, tz="UTC").tz_convert(ny) == pd.Timestamp("2018-01-02 16:00", tz=ny)
    assert pd.Timestamp(first.exit_time, tz="UTC").tz_convert(ny) == pd.Timestamp("2018-01-24 16:00", tz=ny)
    exit_debit = 0.0
    for leg in legs["legs"]:
        r = row(quotes, exit_day, leg["right"], leg["strike"], expiry)
        exit_debit += r.ask if leg["action"] == "sell" else -r.bid
    assert legs["debit"] == pytest.approx(exit_debit)
    commission = 2 * 4 * 0.65
    assert first.pnl == pytest.approx((entry_credit - exit_debit) * 100 - commission)
    assert first.commission == pytest.approx(commission)
    # greeks, IV and the underlying were journaled at entry and exit
    assert all(leg["delta"] is not None and leg["iv"] is not None for leg in legs["legs"])
    assert legs["underlying_entry"] == pytest.approx(2695.79) and legs["exit_legs"]


@needs_chains
def test_a_leg_with_a_missing_bid_blocks_the_entry_with_that_reason(tmp_path):
    # the vendor file with the 2565 put's bid missing on 2018-01-02: the long put of that day
    lines = SPXW.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split(",")
    bid = header.index("bid")
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split(",")
        if fields[5] == "put" and fields[7] == "01/02/2018" and fields[8] == "2565" and fields[6] == "01/31/2018":
            fields[bid] = ""
        out.append(",".join(fields))
    holed = tmp_path / "holed.csv"
    holed.write_text("\n".join(out) + "\n")
    path = tmp_path / "ic.yaml"
    path.write_text(CONDOR.format(chains=holed, wing=50, price="market", fraction=0.0,
                                  exits="  - name: a week left\n    when: position.dte <= 7\n"))
    result = bt.run(bt.prepare(path))
    first = [d for d in result.runner.decisions if d.symbol == "SPX"][0]
    assert first.outcome == "blocked"
    assert first.reason.startswith("leg long_put (put 2565 2018-01-31) has no two-sided quote (no bid")
    assert pd.Timestamp(result.ledger.trades[0].entry_time, tz="UTC").tz_convert("America/New_York").date() > \
        pd.Timestamp("2018-01-02").date()                   # the next day it could be priced and opened
    # a zero bid on a leg we buy is a real market (we pay the ask); a zero bid on one we sell is not
    from engine.orders.combos import LegQuote
    assert LegQuote("w", "call", "buy", 1, 2890, "2018-01-31", 0.0, 0.10, 0.01, 0.2).quoted
    assert not LegQuote("s", "call", "sell", 1, 2890, "2018-01-31", 0.0, 0.10, 0.01, 0.2).quoted


@needs_chains
def test_chase_fills_on_the_step_the_spread_model_allows(tmp_path, quotes):
    chase = "{chase: {start: mid, step: 0.05, steps: 20, every: 10s, floor: 0.5}}"
    result = bt.run(bt.prepare(condor(tmp_path, price=chase, fraction=0.5)))
    first = result.ledger.trades[0]
    day = pd.Timestamp("2018-01-02").date()
    expiry = pd.Timestamp("2018-01-31").date()
    mid = natural = 0.0
    for leg in first.legs["legs"]:
        r = row(quotes, day, leg["right"], leg["strike"], expiry)
        sign = 1 if leg["action"] == "sell" else -1
        mid += sign * (r.bid + r.ask) / 2
        natural += r.bid if sign > 0 else -r.ask
    threshold = natural + 0.5 * (mid - natural)
    # a sell's limits: mid rounded down to the cent (towards the marketable side), then 0.05 less each step
    start = math.floor(round(mid / 0.01, 6)) * 0.01
    prices = [round(start - k * 0.05, 2) for k in range(20)]
    expected = next(p for p in prices if p <= threshold + 1e-9)
    assert first.entry_price == pytest.approx(expected)
    step = prices.index(expected)
    orders = [o for o in result.runner.orders if o.intent.intent == "open" and o.status == "filled"]
    assert f"filled at {expected:.2f} on step {step + 1} of {len(prices)}" in orders[0].reason
    # a chase that gives up too early times out, cancels, and leaves nothing open
    short = "{chase: {start: mid, step: 0.05, steps: 2, every: 10s, floor: 0.5}}"
    result = bt.run(bt.prepare(condor(tmp_path, price=short, fraction=0.5, name="short.yaml")))
    assert not result.ledger.trades and not result.ledger.positions
    assert any("chase timed out after 2 prices" in d.reason and "cancel confirmed" in d.reason
               for d in result.runner.decisions)
    cancelled = [o for o in result.runner.orders if o.status == "cancelled"]
    assert cancelled and all(o.intent.intent == "open" for o in cancelled)


@needs_chains
def test_a_condors_margin_is_its_max_loss_at_the_credit_it_filled_at_and_the_cap_holds_at_the_chases_floor(
        tmp_path):
    """A condor chased below its mid fills for less credit, so it can lose more: its margin (the
    trade's, the venue's, the return on margin) is the max loss at the fill's credit, not at mid;
    and max_margin_per_trade holds at the worst price the chase may take (its last), so a cap
    between the mid's margin and that one blocks the entry, saying so."""
    chase = "{chase: {start: mid, step: 0.05, steps: 20, every: 10s, floor: 0.5}}"
    result = bt.run(bt.prepare(condor(tmp_path, price=chase, fraction=0.5)))
    first = result.ledger.trades[0]
    credit = first.entry_price
    assert first.legs["margin"] == pytest.approx((50 - credit) * 100)          # the wing less the credit taken
    assert first.return_pct == pytest.approx(100 * first.pnl / ((50 - credit) * 100))
    opened = [d for d in result.runner.decisions if d.rule == "open condor" and d.outcome == "fired"][0]
    mid_margin = None
    for o in result.runner.orders:
        if o.intent.intent == "open" and o.status == "filled":
            legs = o.legs
            mid = sum((1 if leg["action"] == "sell" else -1) * (leg["bid"] + leg["ask"]) / 2 for leg in legs)
            mid_margin = (50 - mid) * 100
            break
    assert mid_margin is not None and mid_margin < first.legs["margin"] - 1        # it filled below mid
    # the cap just above the mid's margin: the chase could fill at its floor, 50 - 0.5 a point lower
    capped = condor(tmp_path, price=chase, fraction=0.5, name="capped.yaml")
    capped.write_text(capped.read_text().replace("backtest:", f"risk: {{max_margin_per_trade: {mid_margin + 1:.2f}}}\n"
                                                              "backtest:"))
    result = bt.run(bt.prepare(capped))
    blocked = [d for d in result.runner.decisions if d.rule == "open condor" and d.outcome == "blocked"
               and d.time == opened.time]
    assert blocked and "if filled at the chase's last price" in blocked[0].reason, [d.reason for d in blocked]
    assert "above max_margin_per_trade" in blocked[0].reason
    assert all(t.entry_time != first.entry_time for t in result.ledger.trades)


@needs_chains
def test_held_to_expiry_is_cash_settled_at_the_close(tmp_path, quotes):
    exits = "  - name: never\n    when: position.dte < -1000\n"
    result = bt.run(bt.prepare(condor(tmp_path, exits=exits)))
    settled = [t for t in result.ledger.trades if t.exit_rule == "expiry settlement"]
    assert settled
    trade = settled[0]
    expiry = pd.Timestamp(trade.legs["expiry"]).date()
    spot = quotes[quotes.quotedate == expiry].underlying_last.iloc[0]
    intrinsic = 0.0
    for leg in trade.legs["legs"]:
        value = max(spot - leg["strike"], 0) if leg["right"] == "call" else max(leg["strike"] - spot, 0)
        intrinsic += value if leg["action"] == "sell" else -value
    assert trade.legs["debit"] == pytest.approx(intrinsic)
    assert trade.pnl == pytest.approx((trade.legs["credit"] - intrinsic) * 100 - 4 * 0.65)  # no fee to settle


def test_bundled_xsp_condor_runs_on_synthesised_chains(tmp_path):
    path = ROOT / "strategies" / "iron_condor.yaml"
    result = bt.run(bt.prepare(path, {"min_credit": "0.10"}))
    trades = result.ledger.trades
    assert trades, [d.reason for d in result.runner.decisions][:5]
    for t in trades:
        entry = pd.Timestamp(t.entry_time, tz="UTC").tz_convert("America/New_York")
        exit_ = pd.Timestamp(t.exit_time, tz="UTC").tz_convert("America/New_York")
        assert t.legs["expiry"] == entry.date().isoformat()           # 0DTE: today's expiry
        assert entry.date() == exit_.date() and (exit_.hour, exit_.minute) <= (15, 51)
        assert (entry.hour, entry.minute) <= (11, 1)
        strikes = {leg["name"]: leg["strike"] for leg in t.legs["legs"]}
        assert strikes["short_put"] - strikes["long_put"] == 2 and strikes["long_call"] - strikes["short_call"] == 2
        assert t.legs["credit"] >= 0.10 - 1e-9
    assert not result.ledger.positions
    # the equity curve prices open combos at mid and ends where the trades say
    assert result.final_equity == pytest.approx(10_000 + sum(t.pnl for t in trades))


def test_dry_run_prints_the_combo_it_would_send(tmp_path):
    out = CliRunner().invoke(cli.main, ["run", str(ROOT / "strategies" / "iron_condor.yaml"), "--dry-run",
                                        "--broker", "sim", "--set", "min_credit=0.10",
                                        "--journal", str(tmp_path / "j.sqlite")])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "SELL 1 XSP condor combo [calm market, enough credit]" in text
    assert "legs: SELL 1 PUT" in text and "BUY 1 CALL" in text
    assert "price: limit" in text and "every 15s" in text and "floor 0.10" in text
    assert "credit" in text and "max loss" in text and "margin" in text
    # the max loss the risk checks hold is the one at the chase's last price (a condor sold below
    # mid can lose more), said beside the mid's: a 2-wide XSP condor sold for c loses (2 - c) x 100
    import re

    said = re.findall(r"credit ([\d.]+) at mid .*max loss and margin ([\d,.]+) at mid, ([\d,.]+) if filled at the "
                      r"chase's last price ([\d.]+)", text)
    assert said, text
    for credit, at_mid, at_worst, worst in said:
        assert float(at_mid) == pytest.approx((2 - float(credit)) * 100)
        assert float(at_worst) == pytest.approx((2 - float(worst)) * 100) and float(worst) < float(credit)
    assert "would have been sent" in text
    db = sqlite3.connect(tmp_path / "j.sqlite")
    # the dry run's simulated wallet trades as the paper run would: the condor's chase fills or
    # times out (cancelled, confirmed), and its exits close what it opened; nothing is transmitted
    assert db.execute("SELECT mode FROM runs").fetchone()[0] == "dry-run"
    statuses = {r[0] for r in db.execute("SELECT status FROM orders")}
    assert "filled" in statuses and statuses <= {"filled", "cancelled"}
    opened = db.execute("SELECT count(*) FROM orders WHERE intent = 'open' AND status = 'filled'").fetchone()[0]
    assert opened >= 1 and db.execute("SELECT count(*) FROM trades").fetchone()[0] == opened
    assert "max_open_positions" not in text and text.count("combo [calm market") <= 10
    legs = json.loads(db.execute("SELECT legs FROM orders LIMIT 1").fetchone()[0])
    assert {leg["name"] for leg in legs} == {"short_put", "long_put", "short_call", "long_call"}


@needs_chains
def test_report_lists_option_trades_with_legs_and_credit(tmp_path):
    journal = tmp_path / "j.sqlite"
    report = tmp_path / "r.html"
    out = CliRunner().invoke(cli.main, ["backtest", str(condor(tmp_path)), "--journal", str(journal),
                                        "--report", str(report)])
    assert out.exit_code == 0, out.output
    html = report.read_text()
    db = sqlite3.connect(journal)
    legs = json.loads(db.execute("SELECT legs FROM trades LIMIT 1").fetchone()[0])
    for leg in legs["legs"]:
        assert f"{leg['strike']:g}" in html
    assert "credit" in html.lower()


@needs_chains
def test_example_spx_condor_on_real_chains_through_the_cli(tmp_path):
    out = CliRunner().invoke(cli.main, ["backtest", str(ROOT / "strategies" / "spxw_condor.yaml"), "--chains",
                                        str(SPXW), "--journal", str(tmp_path / "j.sqlite"), "--format", "json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)["summary"]
    assert summary["trades"] >= 1 and summary["commission"] > 0
    db = sqlite3.connect(tmp_path / "j.sqlite")
    symbol, legs = db.execute("SELECT symbol, legs FROM trades").fetchone()
    assert symbol == "SPX" and len(json.loads(legs)["legs"]) == 4
    # with no flags it reads its data.chains (the same file, beside the clone): the same summary
    again = CliRunner().invoke(cli.main, ["backtest", str(ROOT / "strategies" / "spxw_condor.yaml"),
                                          "--journal", str(tmp_path / "j.sqlite"), "--format", "json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["summary"] == summary
    # with neither chains nor data.source the run says what is missing, at the data line
    bare = tmp_path / "bare.yaml"
    bare.write_text((ROOT / "strategies" / "spxw_condor.yaml").read_text().replace(
        "data: {bar: 1d, chains: ../../shared/data/optopsy_v1/test_options_data_full.csv}", "data: {bar: 1d}"))
    out = CliRunner().invoke(cli.main, ["backtest", str(bare), "--journal", str(tmp_path / "j.sqlite")])
    assert out.exit_code == 1 and "no bar data: data.source is not set" in out.output and "--chains" in out.output


def test_a_close_at_the_natural_price_that_does_not_fill_is_cancelled_and_the_exit_decided_again(monkeypatch):
    """The iron condor's close goes to the natural price when its chase times out. A natural
    price that does not fill (the quotes moved, or were stale: seen on IB) rests one chase step,
    is cancelled and the cancel confirmed, the exit is journaled as blocked with why, and the
    exit is decided again at the next close on new quotes: the position is closed then, never
    left with an order resting unwatched, and never two closes working at once."""
    from engine.brokers.sim import SimBroker
    from engine.runtime.kernel import Kernel

    refused: list[str] = []         # the first natural-price close, which this venue does not fill
    armed = []
    natural = Kernel._close_at_natural
    match = SimBroker._match_combo

    def close_at_natural(self, *args, **kwargs):
        armed.append(not refused)
        try:
            natural(self, *args, **kwargs)
        finally:
            armed.pop()

    def match_combo(self, w, quote=None):
        if armed and armed[-1] and not refused and w.order.intent == "close":
            refused.append(w.order.ref)
        if w.order.ref in refused:
            return          # this venue's quotes do not meet it
        match(self, w, quote)

    prep = bt.prepare(ROOT / "strategies" / "iron_condor.yaml")   # its last close times out to natural
    base = bt.run(prep, fast=False)
    monkeypatch.setattr(Kernel, "_close_at_natural", close_at_natural)
    monkeypatch.setattr(SimBroker, "_match_combo", match_combo)
    result = bt.run(prep, fast=False)
    assert refused, "the example no longer closes at the natural price"
    rec = next(o for o in result.runner.orders if o.intent.tag == refused[0])
    assert rec.status == "cancelled"
    assert rec.reason.startswith(f"not filled at the natural price {rec.intent.limit:.2f} in 15s: cancelled, "
                                 "cancel confirmed; the exit is decided again at the next close"), rec.reason
    assert any(d.outcome == "blocked" and d.kind == "exit" and d.reason == rec.reason for d in result.runner.decisions)
    # the close that follows is a new order, sent after the cancel was confirmed, and it fills
    later = [o for o in result.runner.orders if o.intent.intent == "close" and o.time > rec.time]
    assert later and later[0].time >= rec.status_time and any(o.status == "filled" for o in later)
    assert len(result.ledger.trades) == len(base.ledger.trades) and not result.runner.combos


def test_a_close_at_the_natural_price_says_so_in_the_trades_exit_reason():
    """An exit rule reads the combo's mid; when its chase times out the close goes at the natural
    price, which may turn a take-profit into a loss. The trade's exit reason says how it closed
    ("...; closed at the natural price"), so neither the trades table nor P&L by exit reason
    shows a losing trade as the rule's take-profit; a close filled by its chase keeps the
    rule's reason alone."""
    prep = bt.prepare(ROOT / "strategies" / "iron_condor.yaml")
    result = bt.run(prep, fast=False)
    natural = [t for t in result.ledger.trades if "natural" in t.legs["close"]]
    chased = [t for t in result.ledger.trades if t.legs["close"].startswith("filled at")]
    assert natural and chased, [t.legs["close"] for t in result.ledger.trades]
    rules = {r.name: r for r in prep.plan.rules}
    for t in natural:
        assert t.exit_reason == f"{rules[t.exit_rule].reason or t.exit_rule}; closed at the natural price"
    for t in chased:
        assert t.exit_reason == rules[t.exit_rule].reason or t.exit_rule


def test_an_option_trades_mae_and_mfe_are_its_pnl_at_the_marks_it_was_held_at():
    """A combo's MAE and MFE are the worst and best of its P&L at mid at each bar it was held
    (its marks) and at its close, in account currency before commissions, as a share's are the
    worst and best of the bars' range: never missing ("—") for an option trade."""
    prep = bt.prepare(ROOT / "strategies" / "iron_condor.yaml", overrides={"min_credit": "0.10"})
    result = bt.run(prep, fast=False)
    trades = [t for t in result.ledger.trades if t.legs]
    assert trades
    combos = {c.entry_time: c for c in result.runner.closed_combos}
    deeper = 0
    for t in trades:
        combo = combos[t.entry_time]
        units = combo.multiplier * combo.quantity
        held = [combo.entry_credit * units + v for k, v in combo.marks.items() if k != max(combo.marks)]
        gross = t.pnl + t.commission
        assert t.mae <= 0.0 <= t.mfe
        assert t.mae <= gross <= t.mfe
        assert all(t.mae <= p <= t.mfe for p in held)
        deeper += t.mae < min(gross, 0.0)
    assert deeper, "no trade went further under water than it closed"

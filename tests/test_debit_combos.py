"""Debit and credit combos opened and closed at market, at mid and at a limit, every leg's price and
every P&L checked by hand against the chain file's bid and ask.

The combos: long and short iron condors, a long call vertical and a short put vertical, a long
straddle on the real SPXW chains of ../shared/data/optopsy_v1, and a long calendar. That file
has one expiry per quote date (01-31 through January, 02-28 in February), so no calendar can be
built on it: the calendar runs on a small chain file this test writes in the same L2 layout,
with two expiries on every quote date.

The expected figures are read from the CSV with plain csv code and computed here from the rules
the engine states (orders.combos, brokers.matching): the order that opens a combo buys a debit
and sells a credit, the one that closes it has the other action; a limit is what a buy pays and
a sell receives, on the cent grid rounded towards the marketable side; the simulated market
meets a limit `fill_fraction` of the way from the natural price towards mid, and a limit beyond
the natural price fills at the natural price; commission is 0.65 per contract per leg.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPXW = SHARED / "optopsy_v1" / "test_options_data_full.csv"

needs_chains = pytest.mark.skipif(not SPXW.is_file(), reason="../shared/data is not present")

NY = "America/New_York"
FEE = 0.65            # per contract, per leg, per fill
OFFSET = 0.40         # the limit policy gives up this much from mid
ENTRY_DAY = dt.date(2018, 1, 2)
EXIT_DAY = dt.date(2018, 1, 5)       # three daily bars later

STRATEGY = """kind: strategy
name: {name}
underlying: SPX
universe: [SPX]
data: {{bar: 1d, chains: {chains}}}
orders:
  combo:
    expiry: {expiry}
    legs:
{legs}
    quantity: 1
    price: {price}
entry:
  - name: open
    when: {when}
    order: combo
exit:
{exits}
backtest: {{cash: 100000, commission: {{per_contract: 0.65}}, options: {{fill_fraction: {fraction}}}}}
"""

THREE_DAYS = "  - name: three days\n    when: position.bars_held >= 3\n"


@dataclass(frozen=True)
class Combo:
    name: str
    legs: str             # the order's legs, as YAML
    debit: bool           # a debit at mid (bought to open), else a credit (sold to open)
    front: str            # a leg of the front expiry (its dte tells the entry from the exit)
    expiry: str = "{dte: [25, 35]}"
    entry_dte: int = 29   # the front leg's days to expiry on the entry day (three fewer on the exit day)


COMBOS = [
    Combo("long iron condor", """\
      put_in:    {right: put,  action: buy,  strike: {delta: 0.16}}
      put_wing:  {right: put,  action: sell, strike: put_in.strike - 50}
      call_in:   {right: call, action: buy,  strike: {delta: 0.16}}
      call_wing: {right: call, action: sell, strike: call_in.strike + 50}""", True, "put_in"),
    Combo("short iron condor", """\
      put_in:    {right: put,  action: sell, strike: {delta: 0.16}}
      put_wing:  {right: put,  action: buy,  strike: put_in.strike - 50}
      call_in:   {right: call, action: sell, strike: {delta: 0.16}}
      call_wing: {right: call, action: buy,  strike: call_in.strike + 50}""", False, "put_in"),
    Combo("long call vertical", """\
      low:  {right: call, action: buy,  strike: {delta: 0.40}}
      high: {right: call, action: sell, strike: low.strike + 25}""", True, "low"),
    Combo("short put vertical", """\
      high: {right: put, action: sell, strike: {delta: 0.30}}
      low:  {right: put, action: buy,  strike: high.strike - 25}""", False, "high"),
    Combo("long straddle", """\
      put:  {right: put,  action: buy, strike: {delta: 0.50}}
      call: {right: call, action: buy, strike: put.strike}""", True, "put"),
]

CALENDAR = Combo("long calendar", """\
      front: {right: call, action: sell, strike: {delta: 0.50}}
      back:  {right: call, action: buy,  strike: front.strike, expiry: {dte: [40, 50]}}""", True, "front",
                 expiry="{dte: [10, 20]}", entry_dte=17)

POLICIES = ["market", "mid", "limit"]


# ---- the file, read by hand --------------------------------------------------------------------

def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text.strip(), "%m/%d/%Y").date()


def read_chain(path: Path) -> dict:
    """(quote date, right, strike, expiry) -> the row's bid, ask, delta and underlying price."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            key = (_day(row["quotedate"]), row["type"], float(row["strike"]), _day(row["expiration"]))
            out[key] = {"bid": float(row["bid"]), "ask": float(row["ask"]), "delta": float(row["delta"]),
                        "spot": float(row["underlying_last"])}
    return out


@pytest.fixture(scope="module")
def spxw():
    return read_chain(SPXW)


def nearest_delta(chain: dict, day: dt.date, right: str, expiry: dt.date, target: float) -> float:
    """The quoted strike whose |delta| is nearest `target` (ties further out of the money)."""
    rows = [(k[2], v) for k, v in chain.items() if k[0] == day and k[1] == right and k[3] == expiry
            and (v["bid"] > 0 or v["ask"] > 0)]
    best = min(abs(abs(v["delta"]) - target) for _, v in rows)
    ties = [strike for strike, v in rows if abs(abs(v["delta"]) - target) <= best + 1e-12]
    return min(ties) if right == "put" else max(ties)


def cents_up(x: float) -> float:
    return round(math.ceil(round(x * 100, 6)) / 100, 2)


def cents_down(x: float) -> float:
    return round(math.floor(round(x * 100, 6)) / 100, 2)


@dataclass
class Side:
    """One fill worked out by hand: the action, the limit sent, the price, the path."""

    action: str
    limit: float
    price: float
    at_limit: bool         # filled at its own limit (else: at the natural price)


def hand_fill(legs: list[dict], day: dt.date, chain: dict, opening: bool, policy: str, fraction: float,
              debit_combo: bool) -> tuple[Side, float, float]:
    """The fill of opening (or closing) the combo on `day`'s quotes: (the side, the trade's mid
    debit, its natural debit). Legs are traded as written when opening, reversed when closing."""
    mid = natural = 0.0
    for leg in legs:
        q = chain[(day, leg["right"], leg["strike"], dt.date.fromisoformat(leg["expiry"]))]
        buying = (leg["action"] == "buy") == opening
        mid += (q["bid"] + q["ask"]) / 2 * (1 if buying else -1)
        natural += q["ask"] if buying else -q["bid"]
    action = ("buy" if debit_combo else "sell") if opening else ("sell" if debit_combo else "buy")
    buy = action == "buy"
    as_order = (lambda debit: debit) if buy else (lambda debit: -debit)      # a buy pays, a sell receives
    if policy == "market":
        price = round(as_order(natural), 10)
        return Side(action, price, price, False), mid, natural
    if policy == "mid":
        raw = as_order(mid)
    else:
        # the limit expression: the combo's debit (a debit combo) or credit (a credit combo) at that
        # moment, OFFSET towards the market: paying more / taking less
        structure_debit = mid if opening else -mid
        if debit_combo:
            raw = structure_debit + OFFSET if opening else structure_debit - OFFSET
        else:
            raw = -structure_debit - OFFSET if opening else -structure_debit + OFFSET
    limit = cents_up(raw) if buy else cents_down(raw)
    limit_debit = limit if buy else -limit
    threshold = natural - fraction * (natural - mid)
    if limit_debit < threshold - 1e-9:
        return Side(action, limit, math.nan, False), mid, natural          # not marketable
    if limit_debit > natural:
        return Side(action, limit, round(as_order(natural), 10), False), mid, natural
    return Side(action, limit, limit, True), mid, natural


def strategy(tmp_path: Path, combo: Combo, policy: str, chains: Path, exits: str = THREE_DAYS,
             fraction: float | None = None, price: str | None = None) -> Path:
    if price is None:
        if policy == "limit":
            here = "debit + 0.4" if combo.debit else "credit - 0.4"
            there = "debit - 0.4" if combo.debit else "credit + 0.4"
            price = f'{{limit: "if({combo.front}.dte > {combo.entry_dte - 2}, {here}, {there})"}}'
        else:
            price = policy
    if fraction is None:
        fraction = 1.0 if policy == "mid" else 0.5
    # entries on the first two quote dates only (it fills on the first): no second round trip
    when = f"{'debit' if combo.debit else 'credit'} > 0 and {combo.front}.dte >= {combo.entry_dte - 1}"
    path = tmp_path / f"{combo.name.replace(' ', '_')}_{policy}.yaml"
    path.write_text(STRATEGY.format(name=combo.name.replace(" ", "-"), chains=chains, expiry=combo.expiry,
                                    legs=combo.legs, price=price, when=when, exits=exits, fraction=fraction))
    return path


def _date(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, tz="UTC").tz_convert(NY)


def check_round_trip(result, combo: Combo, policy: str, chain: dict, fraction: float) -> dict:
    """Everything about the one trade, by hand; returns the figures for the table."""
    trades = result.ledger.trades
    assert len(trades) == 1 and not result.ledger.positions, [(t.entry_price, t.exit_price) for t in trades]
    trade = trades[0]
    legs = trade.legs["legs"]
    # every leg at the file's quotes on the entry and the exit day
    for day, quoted in ((ENTRY_DAY, legs), (EXIT_DAY, trade.legs["exit_legs"])):
        for leg in quoted:
            q = chain[(day, leg["right"], leg["strike"], dt.date.fromisoformat(leg["expiry"]))]
            assert (leg["bid"], leg["ask"]) == (q["bid"], q["ask"]), (day, leg)
    entry, entry_mid, entry_natural = hand_fill(legs, ENTRY_DAY, chain, True, policy, fraction, combo.debit)
    close, exit_mid, exit_natural = hand_fill(legs, EXIT_DAY, chain, False, policy, fraction, combo.debit)
    assert entry.action == ("buy" if combo.debit else "sell") and entry_mid * (1 if combo.debit else -1) > 0
    assert not math.isnan(entry.price), "the entry must fill on the first day"
    assert trade.side == ("long" if combo.debit else "short")
    # the booked prices are the orders' (a buy pays, a sell receives: both positive here)
    assert trade.entry_price == pytest.approx(entry.price, abs=1e-9)
    entry_credit = entry.price if entry.action == "sell" else -entry.price
    assert trade.legs["credit"] == pytest.approx(entry_credit, abs=1e-9)
    orders = [o for o in result.runner.orders if o.intent.intent == "close"]
    if math.isnan(close.price):
        # the closing limit is not marketable: it times out, is cancelled, and the combo closes at natural
        assert [o.status for o in orders] == ["cancelled", "filled"]
        assert orders[0].intent.limit == pytest.approx(close.limit) and orders[0].intent.action == close.action
        natural = exit_natural if close.action == "buy" else -exit_natural
        close = Side(close.action, close.limit, round(natural, 10), False)
        assert "closed at the natural price" in orders[1].reason
    else:
        assert [o.status for o in orders] == ["filled"]
        assert orders[0].intent.limit == pytest.approx(close.limit) and orders[0].intent.action == close.action
    exit_debit = close.price if close.action == "buy" else -close.price
    assert trade.exit_price == pytest.approx(close.price, abs=1e-9)
    assert trade.legs["debit"] == pytest.approx(exit_debit, abs=1e-9)
    opened = [o for o in result.runner.orders if o.intent.intent == "open"]
    assert [o.status for o in opened] == ["filled"]
    assert opened[0].intent.action == entry.action and opened[0].intent.limit == pytest.approx(entry.limit)
    commission = 2 * len(legs) * FEE
    pnl = (entry_credit - exit_debit) * 100 - commission
    assert trade.commission == pytest.approx(commission)
    assert trade.pnl == pytest.approx(pnl, abs=1e-6)
    assert result.final_equity == pytest.approx(100_000 + pnl, abs=1e-6)
    assert result.broker.cash == pytest.approx(result.ledger.cash, abs=1e-6)      # the venue agrees
    # dated by the quotes they were priced on: each quote date's 16:00 close (plus no chase: one price)
    assert _date(trade.entry_time) == pd.Timestamp(f"{ENTRY_DAY} 16:00", tz=NY)
    assert _date(trade.exit_time) == pd.Timestamp(f"{EXIT_DAY} 16:00", tz=NY)
    return {"combo": combo.name, "policy": policy, "entry": entry.price, "exit": close.price,
            "hand": round(pnl, 2), "booked": round(trade.pnl, 2)}


# ---- the real SPXW chains ----------------------------------------------------------------------

@needs_chains
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("combo", COMBOS, ids=[c.name for c in COMBOS])
def test_round_trip_on_spxw_chains(tmp_path, spxw, combo, policy):
    fraction = 1.0 if policy == "mid" else 0.5
    result = bt.run(bt.prepare(strategy(tmp_path, combo, policy, SPXW), start="2018-01-02", end="2018-01-12"))
    check_round_trip(result, combo, policy, spxw, fraction)
    trade = result.ledger.trades[0]
    legs = {leg["name"]: leg for leg in trade.legs["legs"]}
    expiry = dt.date(2018, 1, 31)                     # {dte: [25, 35]} on 2018-01-02: 29 days
    assert {dt.date.fromisoformat(leg["expiry"]) for leg in legs.values()} == {expiry}
    # the strikes: by delta from the file, the others at their offsets
    if "condor" in combo.name:
        assert legs["put_in"]["strike"] == nearest_delta(spxw, ENTRY_DAY, "put", expiry, 0.16)
        assert legs["call_in"]["strike"] == nearest_delta(spxw, ENTRY_DAY, "call", expiry, 0.16)
        assert legs["put_wing"]["strike"] == legs["put_in"]["strike"] - 50
        assert legs["call_wing"]["strike"] == legs["call_in"]["strike"] + 50
    elif combo.name == "long call vertical":
        assert legs["low"]["strike"] == nearest_delta(spxw, ENTRY_DAY, "call", expiry, 0.40)
        assert legs["high"]["strike"] == legs["low"]["strike"] + 25
    elif combo.name == "short put vertical":
        assert legs["high"]["strike"] == nearest_delta(spxw, ENTRY_DAY, "put", expiry, 0.30)
        assert legs["low"]["strike"] == legs["high"]["strike"] - 25
    else:
        assert legs["put"]["strike"] == nearest_delta(spxw, ENTRY_DAY, "put", expiry, 0.50)
        assert legs["call"]["strike"] == legs["put"]["strike"]


# ---- a calendar, on a chain file with two expiries per quote date ---------------------------------

CAL_DAYS = [dt.date(2018, 1, 2), dt.date(2018, 1, 3), dt.date(2018, 1, 4), dt.date(2018, 1, 5),
            dt.date(2018, 1, 8), dt.date(2018, 1, 9)]
CAL_SPOT = [2700.0, 2712.5, 2706.0, 2721.0, 2717.5, 2730.0]
CAL_EXPIRIES = [dt.date(2018, 1, 19), dt.date(2018, 2, 16)]
HEADER = ("underlying,underlying_last, exchange,optionroot,optionext,type,expiration,quotedate,strike,last,bid,"
          "ask,volume,openinterest,impliedvol,delta,gamma,theta,vega,optionalias")


def write_calendar_chain(path: Path) -> Path:
    """A made-up SPXW chain in optopsy's L2 layout: strikes 2650-2775 every 25, the two expiries on
    every quote date, prices on the 0.05 grid with a 0.30 to 0.80 spread."""
    lines = [HEADER]
    for day, spot in zip(CAL_DAYS, CAL_SPOT):
        for expiry in CAL_EXPIRIES:
            days = (expiry - day).days
            for strike in range(2650, 2800, 25):
                for right in ("call", "put"):
                    intrinsic = max(spot - strike, 0.0) if right == "call" else max(strike - spot, 0.0)
                    value = intrinsic + 1.6 * math.sqrt(days) * math.exp(-((strike - spot) / 90.0) ** 2) + 0.5
                    bid = math.floor(value * 20) / 20
                    spread = 0.30 + 0.05 * ((strike // 25 + days) % 11)
                    ask = round(bid + spread, 2)
                    delta = min(max(0.5 + (spot - strike) / 180.0, 0.01), 0.99)
                    delta = delta if right == "call" else delta - 1.0
                    root = f"SPXW{expiry:%y%m%d}{'C' if right == 'call' else 'P'}{strike * 1000:08d}"
                    lines.append(f"SPXW,{spot},W,{root},,{right},{expiry:%m/%d/%Y},{day:%m/%d/%Y},{strike},0,"
                                 f"{bid:.2f},{ask:.2f},0,0,0.15,{delta:.4f},0,0,0,{root}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("policy", POLICIES)
def test_a_long_calendar_round_trip(tmp_path, policy):
    chains = write_calendar_chain(tmp_path / "calendar.csv")
    chain = read_chain(chains)
    fraction = 1.0 if policy == "mid" else 0.5
    result = bt.run(bt.prepare(strategy(tmp_path, CALENDAR, policy, chains), start="2018-01-02", end="2018-01-09"))
    check_round_trip(result, CALENDAR, policy, chain, fraction)
    legs = {leg["name"]: leg for leg in result.ledger.trades[0].legs["legs"]}
    assert legs["front"]["expiry"] == "2018-01-19" and legs["back"]["expiry"] == "2018-02-16"
    assert legs["front"]["strike"] == legs["back"]["strike"] == \
        nearest_delta(chain, ENTRY_DAY, "call", CAL_EXPIRIES[0], 0.50)


# ---- the issue's own cases on the long condor ------------------------------------------------------

LONG_CONDOR = COMBOS[0]


def opening_debits(chain: dict, legs: list[dict], day: dt.date) -> tuple[float, float]:
    """What opening the combo costs on `day` at mid and crossing every spread (net debits)."""
    mid = natural = 0.0
    for leg in legs:
        q = chain[(day, leg["right"], leg["strike"], dt.date.fromisoformat(leg["expiry"]))]
        sign = 1 if leg["action"] == "buy" else -1
        mid += sign * (q["bid"] + q["ask"]) / 2
        natural += q["ask"] if sign > 0 else -q["bid"]
    return mid, natural


@needs_chains
def test_a_long_condors_limit_is_what_it_pays(tmp_path, spxw):
    def run(price, name):
        folder = tmp_path / name
        folder.mkdir()
        path = strategy(folder, LONG_CONDOR, "limit", SPXW, price=price)
        return bt.run(bt.prepare(path, start="2018-01-02", end="2018-01-12"))

    market = run("market", "m")
    legs = market.ledger.trades[0].legs["legs"]
    mid, natural = opening_debits(spxw, legs, ENTRY_DAY)
    assert mid > 0 and natural > mid
    # 0.05 buys nothing: it is far below what the market meets (natural - 0.5 x (natural - mid))
    cheap = run("{limit: 0.05}", "cheap")
    assert not cheap.ledger.trades and not cheap.ledger.positions
    assert all(o.status == "cancelled" and o.intent.action == "buy" and o.intent.limit == 0.05
               for o in cheap.runner.orders)
    # a limit above the market's threshold fills at that limit ...
    above = cents_up(natural - 0.5 * (natural - mid)) + 0.01
    assert above < natural
    filled = run(f"{{limit: {above}}}", "above")
    assert filled.ledger.trades[0].entry_price == pytest.approx(above)
    # ... and one beyond the natural price at the natural price, not at the limit
    rich = run("{limit: 100}", "rich")
    assert rich.ledger.trades[0].entry_price == pytest.approx(natural)
    # at market: bought at the natural price, sold at the closing natural (each leg's bid/ask)
    trade = market.ledger.trades[0]
    assert trade.entry_price == pytest.approx(natural)
    close_natural = sum(spxw[(EXIT_DAY, leg["right"], leg["strike"], dt.date.fromisoformat(leg["expiry"]))]
                        ["bid" if leg["action"] == "buy" else "ask"] * (1 if leg["action"] == "buy" else -1)
                        for leg in legs)
    assert trade.exit_price == pytest.approx(close_natural) and close_natural > 0
    assert trade.pnl == pytest.approx((close_natural - natural) * 100 - 8 * FEE)


@needs_chains
def test_a_limit_reading_credit_is_evaluated_at_the_exit_on_the_open_combo(tmp_path, spxw):
    short = COMBOS[1]
    path = strategy(tmp_path, short, "limit", SPXW, price="{limit: credit * 0.9}")
    result = bt.run(bt.prepare(path, start="2018-01-02", end="2018-01-12"))
    trade = result.ledger.trades[0]
    legs = trade.legs["legs"]
    credit_then = -opening_debits(spxw, legs, EXIT_DAY)[0]             # the condor's mid credit then
    closing = [o for o in result.runner.orders if o.intent.intent == "close"]
    # the closing buy pays at most 0.9 x the mid credit of that day: below mid, it times out and
    # the condor is bought back at the natural price (each sold leg's ask, each bought leg's bid)
    assert closing[0].intent.action == "buy" and closing[0].intent.limit == pytest.approx(cents_up(0.9 * credit_then))
    assert [o.status for o in closing] == ["cancelled", "filled"]
    closing_natural = sum(spxw[(EXIT_DAY, leg["right"], leg["strike"], dt.date.fromisoformat(leg["expiry"]))]
                          ["ask" if leg["action"] == "sell" else "bid"] * (1 if leg["action"] == "sell" else -1)
                          for leg in legs)
    assert trade.exit_price == pytest.approx(closing_natural)
    opened = cents_down(0.9 * -opening_debits(spxw, legs, ENTRY_DAY)[0])     # sold at 0.9 x the mid credit
    natural_credit = -opening_debits(spxw, legs, ENTRY_DAY)[1]
    assert trade.entry_price == pytest.approx(max(opened, natural_credit))
    assert trade.pnl == pytest.approx((trade.entry_price - closing_natural) * 100 - 8 * FEE)
    assert not result.runner.errors


@needs_chains
@pytest.mark.parametrize("combo", COMBOS[:2], ids=["long", "short"])
def test_a_condor_held_to_expiry_settles_at_intrinsic_value_on_its_expiry_date(tmp_path, spxw, combo):
    never = "  - name: never\n    when: position.dte < -1000\n"
    result = bt.run(bt.prepare(strategy(tmp_path, combo, "market", SPXW, exits=never), start="2018-01-02",
                               end="2018-01-31"))
    trade = result.ledger.trades[0]
    expiry = dt.date(2018, 1, 31)
    spot = next(v["spot"] for k, v in spxw.items() if k[0] == expiry)
    debit = 0.0              # closing: sold legs bought back, bought legs sold, at intrinsic value
    for leg in trade.legs["legs"]:
        value = max(spot - leg["strike"], 0.0) if leg["right"] == "call" else max(leg["strike"] - spot, 0.0)
        debit += value if leg["action"] == "sell" else -value
    assert debit != 0.0                                     # SPX closed January inside a wing: worth something
    assert trade.exit_rule == "expiry settlement"
    assert trade.legs["debit"] == pytest.approx(debit)
    assert trade.pnl == pytest.approx((trade.legs["credit"] - debit) * 100 - 4 * FEE)     # no fee to settle
    assert _date(trade.exit_time).date() == expiry          # the expiry day's close, not the next midnight
    assert result.broker.cash == pytest.approx(result.ledger.cash)       # the venue settled the same way


@needs_chains
def test_an_open_long_condor_is_marked_at_its_mid_value(tmp_path, spxw):
    never = "  - name: never\n    when: position.dte < -1000\n"
    result = bt.run(bt.prepare(strategy(tmp_path, LONG_CONDOR, "market", SPXW, exits=never), start="2018-01-02",
                               end="2018-01-10"))
    assert not result.ledger.trades and len(result.ledger.positions) == 1
    legs = [leg.to_json() for leg in next(iter(result.runner.combos.values())).legs]
    mid_now = opening_debits(spxw, legs, dt.date(2018, 1, 10))[0]        # what the long condor is worth at mid
    value = mid_now * 100
    assert result.final_equity == pytest.approx(result.ledger.cash + value)
    assert result.broker.account().equity == pytest.approx(result.ledger.cash + value)    # the venue's mark too


@needs_chains
def test_a_limit_that_comes_out_negative_is_refused_with_its_reason_not_sent(tmp_path):
    """A long condor is bought: `credit * 0.9` is negative there (a debit), not a price to pay.
    The entry is blocked, saying so, and nothing reaches the venue."""
    path = strategy(tmp_path, COMBOS[0], "limit", SPXW, price="{limit: credit * 0.9}")
    result = bt.run(bt.prepare(path, start="2018-01-02", end="2018-01-12"))
    assert not result.ledger.trades and not result.runner.orders
    blocked = [d for d in result.runner.decisions if d.outcome == "blocked" and "order's limit" in d.reason]
    assert blocked and all("a limit is what the buy pays per combo, a positive price" in d.reason for d in blocked)
    assert blocked[0].reason.startswith("the order's limit is -")
    assert not [d for d in result.runner.decisions if d.outcome == "fired"]

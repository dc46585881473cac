"""Issue 14 item 1: a key that validates does what it says. For every schema property that
engine.check.support does not refuse and tests/test_schema_support.py does not list as read by
nothing, this file holds a pair of small documents (a base, and the same with that one property
changed, added or removed) and the observable that differs between them, in each mode that
reads the key:

  backtest   `qtrade backtest --format json`, then its journal (fills, orders, trades, decisions,
             the run's settings) or its refusal
  run        `qtrade run --broker sim` over the same bars (the kernel, bar by bar, as a live run)
  dry-run    `qtrade run --dry-run --broker sim`: the orders it prints and its journal
  validate   `qtrade validate`: its exit code and messages (keys that decide what is valid)
  ib         what an IB run is handed without a socket: the connection settings
             (runtime.trading.connect_settings), the IB broker's constructor (brokers.ib.broker),
             the margin gate, the kill switch, the contract spec (brokers.ib.contracts), the
             request a scanner's IB source sends (brokers.ib.scanner.subscription_of)
  report     the HTML report of the backtest's journal
  scan       `qtrade scan --format json` at one close (a scanner document, or a strategy's scanner)

EFFECTS maps (schema, pointer) -> Effect; tests/test_schema_support.py requires an entry here
for every property that is neither refused nor listed, so a new property fails until it has
behaviour evidence (or a refusal)."""

from __future__ import annotations

import copy
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "strategies" / "data"
SHARED = ROOT.parent / "shared" / "data"
CHAINS = SHARED / "optopsy_v1" / "test_options_data_full.csv"

RUN_MODES = ("backtest", "run", "dry-run")


# ------------------------------------------------------------------ base documents (file name -> document)

def _load(name: str) -> dict:
    from engine.config.yamlsource import load_yaml

    doc = load_yaml(str(ROOT / "strategies" / name)).data      # YAML 1.2: `off` stays a string
    doc["data"]["source"] = str(DATA) + "/"
    return doc


def sma() -> dict:
    """The SMA 10/30 crossover on SPY daily bars, 2008-2017 (39 trades)."""
    return {"s.yaml": _load("sma_crossover.yaml")}


def sma_adjusted() -> dict:
    """The crossover on SPY's split- and dividend-adjusted prices (data.adjusted: true)."""
    files = sma()
    files["s.yaml"]["data"]["adjusted"] = True
    return files


def trend_2012() -> dict:
    """From 2012 (backtest.start; the runs' --from): long while the close is above the 30-day
    average, which with the bars before 2012 as warm-up it is on the first day."""
    files = sma()
    s = files["s.yaml"]
    s["backtest"] = {"start": "2012-01-01"}
    s["entry"][0]["when"] = "close > slow_ma"
    return files


def sma_plain() -> dict:
    """The crossover with no schedule.every (so the bar size may change) and a stop and a target."""
    files = sma()
    s = files["s.yaml"]
    s["schedule"] = {"timezone": "America/New_York"}
    return files


def sma_margin() -> dict:
    """The crossover selling short (all in) on a margin account."""
    files = sma()
    files["s.yaml"]["backtest"] = {"cash": 100000, "account": "margin"}
    files["s.yaml"]["orders"]["buy_all_in"]["action"] = "sell"
    return files


def two() -> dict:
    """SPY and AAPL, a position each at most (max_open_positions 2), half the equity each."""
    files = sma()
    s = files["s.yaml"]
    s["universe"] = ["SPY", "AAPL"]
    s["orders"]["buy_all_in"]["quantity"] = {"percent_of_equity": "40%"}
    s["risk"] = {"max_open_positions": 2, "margin_check": "off"}
    return files


def two_mondays() -> dict:
    """SPY and AAPL, both entered every Monday and closed on Thursday: two new names each week."""
    files = two()
    s = files["s.yaml"]
    s["entry"] = [{"name": "monday", "when": "dayofweek == 1", "order": "buy_all_in"}]
    s["exit"] = [{"name": "thursday", "when": "dayofweek == 4"}]
    s["orders"]["buy_all_in"]["quantity"] = {"percent_of_equity": "10%"}
    return files


def limit_order() -> dict:
    """The crossover entering with a day limit 1% under the close (some do not fill)."""
    files = sma()
    files["s.yaml"]["orders"]["buy_all_in"] = {"action": "buy", "type": "limit", "limit": "close * 0.99",
                                               "quantity": {"percent_of_equity": "100%"}, "tif": "day"}
    return files


def stop_order() -> dict:
    files = sma()
    files["s.yaml"]["orders"]["buy_all_in"] = {"action": "buy", "type": "stop", "stop": "close * 1.01",
                                               "quantity": {"percent_of_equity": "100%"}, "tif": "day"}
    return files


def risk_sized() -> dict:
    """The crossover sized by the risk to a stop 5 points away, with that stop as an exit."""
    files = sma()
    s = files["s.yaml"]
    s["orders"]["buy_all_in"]["quantity"] = {"risk_percent": "1%", "stop_distance": 5}
    s["exit"].append({"name": "stop", "stop": "position.entry_price - 5"})
    return files


def condor() -> dict:
    """The XSP 0DTE iron condor on the bundled minute bars, chains synthesised from VIX."""
    return {"s.yaml": _load("iron_condor.yaml")}


def condor_at(**data) -> Callable[[], dict]:
    """The condor with some of its data: or schedule: keys set (a base of its own)."""
    def base() -> dict:
        files = condor()
        s = files["s.yaml"]
        for key, value in data.items():
            section, name = key.split("__")
            s[section][name] = value
        return files
    return base


def xsp_cross() -> dict:
    """A 5/20 crossover trading XSP itself on the bundled minute bars (many trades a day)."""
    files = sma()
    s = files["s.yaml"]
    s.update(universe=["XSP"], data={"bar": "1m", "source": str(DATA) + "/"},
             schedule={"timezone": "America/New_York", "every": "1m"})
    s["params"] = {"fast": {"value": 5}, "slow": {"value": 20}}
    s["orders"]["buy_all_in"]["quantity"] = {"fixed": 100}
    return files


def nq() -> dict:
    """A 10/30 crossover on NQ futures, 5-minute bars of ../shared/data (FirstRate sample)."""
    files = sma()
    s = files["s.yaml"]
    s.update(universe=["NQ"], instruments="i.yaml",
             data={"bar": "5m", "session": "extended", "source": str(SHARED / "firstratedata_nq_sample" /
                                                                      "NQ_5min_sample.csv")},
             schedule={"timezone": "America/New_York", "every": "5m"}, backtest={"cash": 100000})
    s["orders"]["buy_all_in"]["quantity"] = {"fixed": 2}
    files["i.yaml"] = {"kind": "instruments", "name": "i", "defaults": {},
                       "roots": {"NQ": {"sec_type": "FUT", "exchange": "CME", "currency": "USD", "multiplier": 20,
                                        "trading_class": "NQ", "months": "HMUZ", "tick_size": 0.25,
                                        "calendar": "CME_Equity", "margin": 20000}}}
    return files


def condor_defaults() -> dict:
    """The condor with XSP given no root of its own: the map's STK defaults describe it."""
    files = condor_instruments()
    xsp = files["i.yaml"]["roots"].pop("XSP")
    files["i.yaml"]["defaults"]["STK"] = {k: v for k, v in xsp.items() if k not in ("sec_type", "description")}
    return files


def condor_held() -> dict:
    """The condor with no flat_by and no exits: each combo is held to its settlement."""
    files = condor_instruments()
    del files["s.yaml"]["schedule"]["flat_by"]
    del files["s.yaml"]["exit"]
    return files


def held() -> dict:
    """The crossover's SPY entering whenever the fast average is above the slow one (a condition
    that holds bar after bar), 100 shares an entry."""
    files = sma()
    s = files["s.yaml"]
    s["entry"][0]["when"] = "fast_ma > slow_ma"
    s["orders"]["buy_all_in"]["quantity"] = 100
    s["risk"] = {"margin_check": "off"}
    return files


def held_file() -> dict:
    files = held()
    _risk_file(files)
    return files


def condor_held_near() -> dict:
    """The held condor with 0.4-delta shorts: some expiries end with a leg in the money."""
    files = condor_held()
    files["s.yaml"]["params"]["short_delta"]["value"] = 0.4
    files["s.yaml"]["params"]["min_credit"]["value"] = 0.05
    return files


def condor_american() -> dict:
    """The condor's XSP listed as American-style in its instrument map, simulated as European by
    backtest.options.american_as_european (without it simulated runs refuse it)."""
    files = condor_instruments()
    files["i.yaml"]["roots"]["XSP"]["options"]["style"] = "american"
    files["s.yaml"].setdefault("backtest", {}).setdefault("options", {})["american_as_european"] = True
    return files


_TRIMMED: Path | None = None


def trimmed_chains() -> str:
    """A copy of the SPXW chains with February 2018's quotes only."""
    global _TRIMMED
    if _TRIMMED is None:
        import atexit
        import shutil
        import tempfile

        _TRIMMED = Path(tempfile.mkdtemp(prefix="qtrade-keys-")) / "chains.csv"
        atexit.register(shutil.rmtree, _TRIMMED.parent, True)
        lines = CHAINS.read_text(encoding="utf-8-sig").splitlines()
        _TRIMMED.write_text("\n".join([lines[0]] + [x for x in lines[1:] if x.split(",")[7].startswith("02/")]) + "\n")
    return str(_TRIMMED)


def spxw() -> dict:
    """The monthly SPX condor on real SPXW 2018 chains (../shared/data)."""
    doc = _load("spxw_condor.yaml")
    doc["data"] = {"bar": "1d", "chains": str(CHAINS)}
    return {"s.yaml": doc}


def condor_nouniverse() -> dict:
    files = condor()
    del files["s.yaml"]["universe"]
    return files


AGENTS = """\
kind: strategy
name: agents
universe: [SPY]
data: {bar: 1d, source: DATA/}
indicators:
  fast: sma(close, 10)
  slow: sma(close, 30)
  r: rsi(close, 14)
classify:
  trend:
    - {name: up, when: fast > slow}
    - {name: down, when: true}
agents:
  follower:
    description: buys dips in an up trend
    active: trend == "up"
    score: 1
    entry: [{name: dip, when: r < 45, order: buy}]
    exit: [{name: rebound, when: r > 60}]
  contrarian:
    description: buys deep dips in any trend
    active: "true"
    score: 0.5
    entry: [{name: deep dip, when: r < 45, order: buy}]
    exit: [{name: bounce, when: r > 50}]
orders:
  buy: {action: buy, type: market, quantity: {percent_of_equity: 100%}}
risk: {max_open_positions: 1, margin_check: "off"}
"""


def agents() -> dict:
    return {"s.yaml": yaml.safe_load(AGENTS.replace("DATA", str(DATA)))}


def agents_ranked() -> dict:
    """The agents with the contrarian (listed second) the more confident: highest_confidence
    and priority take different agents when both fire."""
    files = agents()
    files["s.yaml"]["agents"]["contrarian"]["score"] = 2
    return files


def agents_vote() -> dict:
    """The agents arbitrated by a weighted vote, threshold 0.5 (both long: in an up trend the
    follower's 1 and the contrarian's 0.5 of weight 2; in a down trend the contrarian alone)."""
    files = agents()
    files["s.yaml"]["arbitration"] = {"policy": "weighted_vote", "threshold": 0.5}
    return files


def agents_two() -> dict:
    """The agents on SPY and AAPL, two positions at most, 40% of equity each."""
    files = agents()
    s = files["s.yaml"]
    s["universe"] = ["SPY", "AAPL"]
    s["orders"]["buy"]["quantity"] = {"percent_of_equity": "40%"}
    s["risk"]["max_open_positions"] = 2
    return files


_BAD: Path | None = None


def bad_bar() -> dict:
    """The crossover on a copy of SPY.csv whose close on 2008-01-03 (line 4) is missing, skipped."""
    global _BAD
    if _BAD is None:
        import atexit
        import shutil
        import tempfile

        _BAD = Path(tempfile.mkdtemp(prefix="qtrade-keys-"))
        atexit.register(shutil.rmtree, _BAD, True)
        lines = (DATA / "SPY.csv").read_text().splitlines()
        lines[3] = "2008-01-03,144.910004,145.490005,144.070007,,117.602448,125133300"
        (_BAD / "SPY.csv").write_text("\n".join(lines) + "\n")
    files = sma()
    files["s.yaml"]["data"]["source"] = str(_BAD / "SPY.csv")
    files["s.yaml"]["data"]["on_bad_bar"] = "skip"
    return files


XSP_AGENTS = """\
kind: strategy
name: xsp-agents
universe: [XSP]
data: {bar: 5m, session: regular, source: DATA/}
schedule: {timezone: America/New_York, entry_window: ["09:45", "15:30"], flat_by: "15:50"}
indicators:
  fast: ema(close, 5)
  slow: ema(close, 20)
agents:
  scalper:
    entry: [{name: cross up, when: "crosses_above(fast, slow)", order: buy}]
    exit: [{name: cross down, when: "crosses_below(fast, slow)"}]
  theta:
    active: dayofweek == 2
    score: 2
    entry: [{name: sell spread, when: credit >= 0.1 and time >= 10:00, order: put_spread}]
    exit: [{name: half credit, when: position.pnl >= 0.5 * position.entry_credit}]
orders:
  buy: {action: buy, type: market, quantity: 10}
  put_spread:
    expiry: {dte: [1, 3], prefer: nearest}
    legs:
      short_put: {right: put, action: sell, strike: {delta: 0.20}}
      long_put: {right: put, action: buy, strike: short_put.strike - 2}
    quantity: 1
    price: {chase: {start: mid, step: 0.01, steps: 6, every: 10s, floor: 0.05}}
risk: {max_open_positions: 1, margin_check: "off"}
"""


def xsp_agents() -> dict:
    """A stock agent and an options agent (put spreads 1-3 days out, on Tuesdays) on XSP's
    bundled 5-minute bars, both flat by the schedule's 15:50."""
    return {"s.yaml": yaml.safe_load(XSP_AGENTS.replace("DATA", str(DATA)))}


def agents_file() -> dict:
    files = agents()
    _risk_file(files)
    return files


def xsp_cross_file() -> dict:
    files = xsp_cross()
    _risk_file(files)
    return files


def risk_sized_file() -> dict:
    files = risk_sized()
    _risk_file(files)
    return files


def with_universe() -> dict:
    """The crossover on a universe file u.yaml: groups a [SPY, AAPL] and b [VIX], AA* excluded; v.yaml lists AAPL."""
    files = sma()
    files["s.yaml"]["universe"] = {"file": "u.yaml", "groups": ["a"]}
    files["u.yaml"] = {"kind": "universe", "name": "u", "defaults": {"sec_type": "STK"},
                       "groups": {"a": ["SPY", "AAPL"], "b": ["VIX"]},
                       "exclude": [{"pattern": "AA*", "sec_type": "STK", "reason": "not this one"}]}
    files["v.yaml"] = {"kind": "universe", "name": "v", "symbols": ["AAPL"]}
    return files


def with_instruments() -> dict:
    """The crossover with a slippage of one tick and its own instrument map (SPY's tick 0.25)."""
    files = sma()
    s = files["s.yaml"]
    s["instruments"] = "i.yaml"
    s["backtest"] = {"slippage": {"ticks": 1}}
    files["i.yaml"] = {"kind": "instruments", "name": "i",
                       "defaults": {"STK": {"exchange": "SMART", "currency": "USD", "tick_size": 0.01,
                                            "calendar": "NYSE"}},
                       "roots": {"SPY": {"sec_type": "STK", "exchange": "SMART", "currency": "USD",
                                         "tick_size": 0.25, "calendar": "NYSE"}}}
    return files


def condor_instruments() -> dict:
    """The XSP condor with its own instrument map (XSP's entry as bundled, VIX's too)."""
    from engine.config.yamlsource import load_yaml

    bundled = load_yaml(str(ROOT / "universes" / "instruments.yaml")).data
    files = condor()
    files["s.yaml"]["instruments"] = "i.yaml"
    files["i.yaml"] = {"kind": "instruments", "name": "i", "defaults": copy.deepcopy(bundled["defaults"]),
                       "roots": {k: copy.deepcopy(bundled["roots"][k]) for k in ("XSP", "VIX")}}
    return files


def _risk_file(files: dict) -> None:
    """A base's inline limits moved to r.yaml (the strategy names the file)."""
    inline = files["s.yaml"].get("risk") or {}
    files["r.yaml"] = {"kind": "risk", "name": "r", **inline}
    files["s.yaml"]["risk"] = "r.yaml"


def with_risk_file() -> dict:
    """The two-symbol crossover with its limits in a risk file (r.yaml)."""
    files = two()
    _risk_file(files)
    return files


def condor_risk_file() -> dict:
    files = condor()
    _risk_file(files)
    return files


SCAN_AT = "2012-06-01"      # a close where SPY and AAPL are both scored (INTC's data ended in 2004)


def scanner() -> dict:
    """A scanner document (s.yaml) over SPY, AAPL and INTC's daily bars: three factors, a
    prefilter, grades and classes; SPY and AAPL are scored at SCAN_AT, INTC is stale."""
    return {"s.yaml": {
        "kind": "scanner", "name": "c", "universe": ["SPY", "AAPL", "INTC"],
        "data": {"bar": "1d", "source": str(DATA) + "/"},
        "params": {"min_price": 10, "min_volume": 1_000_000},
        "prefilter": "close >= min_price and volume >= min_volume",
        "factors": {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.5, "normalise": "rank"},
                    "liquidity": {"expr": "log(close * sma(volume, 20))", "weight": 0.3, "normalise": "rank"},
                    "volatility": {"expr": "atr(14) / close", "weight": 0.2, "normalise": "minmax"}},
        "normalise_weights": False, "min_score": 30, "top": 2, "rescan": "1d",
        "grades": {"A": 60, "B": 45},
        "classes": [{"class": "directional", "when": "energy > 0.6"}, {"class": "other", "when": True}]}}


def scanner_unscaled() -> dict:
    """The scanner with weights summing to 1.5, scaled to 1 (normalise_weights: true)."""
    files = scanner()
    c = files["s.yaml"]
    c["normalise_weights"] = True
    c["factors"]["energy"]["weight"] = 1.0
    return files


def _scanned_strategy() -> dict:
    return {"kind": "strategy", "name": "scanned", "universe": ["SPY", "AAPL"],
            "data": {"bar": "1d", "source": str(DATA) + "/"},
            "indicators": {"up": "ema(close, 8) > ema(close, 21)"},
            "entry": [{"name": "directional up", "when": 'scan.class == "directional" and up', "order": "buy"}],
            "exit": [{"name": "dropped", "when": "not scan.picked"}, {"name": "down", "when": "not up"}],
            "orders": {"buy": {"action": "buy", "type": "market", "quantity": {"percent_of_equity": "40%"}}},
            "risk": {"max_open_positions": 2, "margin_check": "off"}}


def scanned() -> dict:
    """A strategy (s.yaml) trading SPY and AAPL when the scanner c.yaml picks them and classes
    them directional (the scanner() document, top 1)."""
    c = scanner()["s.yaml"]
    c["top"] = 1
    return {"s.yaml": {**_scanned_strategy(), "scanner": "c.yaml"}, "c.yaml": c}


def scanned_inline() -> dict:
    """The scanned strategy with its scanner inline (no universe, no data: the strategy's)."""
    c = scanner()["s.yaml"]
    body = {k: v for k, v in c.items() if k not in ("kind", "name", "universe", "data")}
    body["top"] = 1
    return {"s.yaml": {**_scanned_strategy(), "scanner": body}}


def ib_sourced() -> dict:
    """The inline scanned strategy with its candidates from IB's market scanner (runs on IB only)."""
    files = scanned_inline()
    files["s.yaml"]["scanner"]["source"] = {"ib_scanner": {"scan_code": "TOP_PERC_GAIN", "rows": 20,
                                                           "filters": {"price_above": 10}}}
    return files


BASES: dict[str, Callable[[], dict]] = {f.__name__: f for f in (
    scanner, scanner_unscaled, scanned, scanned_inline, ib_sourced,
    sma, sma_adjusted, trend_2012, sma_plain, sma_margin, two, two_mondays, limit_order, stop_order, risk_sized, condor,
    spxw,
    agents, agents_ranked, agents_vote, agents_two, agents_file, xsp_agents, bad_bar,
    condor_american, condor_held_near, held, held_file,
    with_universe, with_instruments, condor_instruments, with_risk_file, condor_risk_file, risk_sized_file,
    condor_nouniverse, xsp_cross, xsp_cross_file, nq, condor_defaults, condor_held)}
BASES["condor_5m_nyse"] = condor_at(data__bar="5m", schedule__every="5m", schedule__calendar="NYSE")
BASES["condor_extended"] = condor_at(data__session="extended")


def condor_dte() -> dict:
    """The XSP condor taking the nearest expiry 0 to 3 days out (daily expiries: today's)."""
    files = condor()
    files["s.yaml"]["orders"]["condor"]["expiry"] = {"dte": [0, 3], "prefer": "nearest"}
    return files


BASES["condor_dte"] = condor_dte
FIRST_DAY = {**{name: "2019-11-05" for name in BASES if "condor" in name or "xsp" in name},
             "spxw": "2018-01-02", "nq": "2023-11-19", "trend_2012": "2012-01-01"}


# ------------------------------------------------------------------ changes

DROP = object()


def _path(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def put(where: str, value, file: str = "s.yaml") -> Callable[[dict], None]:
    """Set (or with DROP remove) the key at dotted path `where` of `file`."""
    def change(files: dict) -> None:
        node = files[file]
        keys = _path(where)
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        if value is DROP:
            del node[keys[-1]]
        else:
            node[keys[-1]] = copy.deepcopy(value)
    change.__doc__ = f"{file}: {where} = {'(removed)' if value is DROP else value!r}"
    return change


def both(*changes) -> Callable[[dict], None]:
    def change(files: dict) -> None:
        for c in changes:
            c(files)
    return change


# ------------------------------------------------------------------ observables

def _write(tmp: Path, files: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        (tmp / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp / "s.yaml"


def _tables(journal: Path) -> dict:
    if not journal.exists():
        return {}
    db = sqlite3.connect(journal)
    out = {}
    cols = {"fills": "ts, symbol, action, quantity, price, multiplier, commission",
            "orders": "ts, symbol, action, quantity, order_type, limit_price, stop_price, tif, rule, intent, legs, "
                      "status, reason",
            "trades": "symbol, side, quantity, multiplier, entry_ts, entry_price, exit_ts, exit_price, "
                      "round(pnl, 6), entry_rule, exit_rule, exit_reason, legs",
            "decisions": "ts, symbol, rule, kind, outcome, reason, detail",
            "equity": "ts, round(cash, 6), round(equity, 6)"}
    for table, columns in cols.items():
        out[table] = db.execute(f"SELECT {columns} FROM {table} ORDER BY rowid").fetchall()
    run = db.execute("SELECT mode, strategy, params, settings, symbols, bar, currency, initial_cash FROM runs").fetchone()
    out["run"] = run
    db.close()
    return out


_CACHE: dict = {}


def observe(mode: str, base: str, files: dict, tmp: Path) -> dict:
    """What `mode` makes of the documents: a dict of views (see VIEWS). Cached by content."""
    key = (mode, base, json.dumps(files, sort_keys=True, default=str))
    if key in _CACHE:
        return _CACHE[key]
    path = _write(tmp, files)
    journal = tmp / "j.sqlite"
    runner = CliRunner()
    out: dict = {}
    if mode in RUN_MODES:
        if mode == "backtest":
            args = ["backtest", str(path), "--journal", str(journal), "--format", "json"]
        else:
            args = ["run", str(path), "--broker", "sim", "--from", FIRST_DAY.get(base, "2008-01-02"),
                    "--journal", str(journal), "--format", "text"]
            if mode == "dry-run":
                args.insert(2, "--dry-run")
        result = runner.invoke(main, args)
        assert result.exit_code in (0, 1, 2), (result.output, result.exception)
        out["exit"] = (result.exit_code, _plain(result.output) if result.exit_code else "")
        out.update(_tables(journal))
        out["said"] = [line for line in _plain(result.output).splitlines() if ": warning: " in line]
        if mode == "dry-run" and result.exit_code == 0:
            out["printed"] = [line for line in _plain(result.output).splitlines() if line.strip()][1:-1]
    elif mode == "validate":
        result = runner.invoke(main, ["validate", str(path)])
        out["exit"] = (result.exit_code, _plain(result.output))
    elif mode.startswith("validate --set "):
        result = runner.invoke(main, ["validate", str(path), "--set", mode.split(" ", 2)[2]])
        out["exit"] = (result.exit_code, _plain(result.output))
    elif mode == "report":
        result = runner.invoke(main, ["backtest", str(path), "--journal", str(journal), "--report",
                                      str(tmp / "r.html")])
        assert result.exit_code == 0, result.output
        html = (tmp / "r.html").read_text()
        out["report"] = re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}|generated [^<]*", "", html)
    elif mode == "scan":
        result = runner.invoke(main, ["scan", str(path), "--format", "json", "--at", SCAN_AT])
        assert result.exit_code in (0, 1, 2), (result.output, result.exception)
        out["exit"] = (result.exit_code, _plain(result.output) if result.exit_code else "")
        out["scan"] = json.loads(result.stdout) if result.exit_code == 0 else None
    elif mode == "ib":
        out.update(_ib(path, tmp))
    else:
        raise ValueError(mode)
    _CACHE[key] = out
    return out


def _plain(text: str) -> str:
    """Output without what differs from run to run (run ids, temporary paths, timings)."""
    text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "RUN", text)
    text = re.sub(r"/[^\s:]*/(s|u|v|i|r)\.yaml", r"\1.yaml", text)
    text = re.sub(r"/[^\s:]*/j\.sqlite", "j.sqlite", text)
    return re.sub(r"\(\d+\.\d+ s\)", "", text)


def _ib(path: Path, tmp: Path) -> dict:
    """What an IB run is handed, built as engine.runtime.ibrun builds it, without a socket."""
    from engine.brokers.ib.broker import IBBroker
    from engine.brokers.ib.contracts import instrument_spec, load_instruments
    from engine.check.model import risk_limits
    from engine.check.model import DataSpec
    from engine.plan.build import build_plan, load_strategy
    from engine.runtime.ibrun import history_bars
    from engine.runtime.trading import KillSwitch, broker_section, connect_settings, margin_gate

    doc, ws = load_strategy(str(path), {})
    connect = connect_settings({}, broker_section(doc), env={})
    limits = risk_limits(doc)
    inst_doc = ws.instruments_for(doc)
    instruments = inst_doc.data if inst_doc is not None else load_instruments()
    ib = IBBroker(connect, instruments=instruments, limits=limits, say=lambda text: None,
                  subscriptions=doc.get(("data", "subscriptions")))
    gate = margin_gate(limits.margin_check, paper=True, live=False, what_if=lambda order: None, funds=lambda: 1e9)
    kill = tmp / "KILL"
    kill.write_text("")
    from engine.check.model import universe_symbols
    from engine.brokers.ib.scanner import subscription_of
    from engine.runtime.scanning import scanner_of

    spec = scanner_of(doc, ws) if doc.get(("scanner",)) is not None else None
    ib_scanner = None
    if spec is not None and spec.source is not None:
        sub, tags = subscription_of(spec.source)
        ib_scanner = (sub.scanCode, sub.instrument, sub.locationCode, sub.numberOfRows,
                      tuple((t.tag, t.value) for t in tags))
    return {"ib_scanner": ib_scanner,
            "connect": (connect.host, connect.port, connect.client_id, connect.account, connect.market_data,
                        connect.connect_timeout),
            "ib_config": (ib.conn.config.host, ib.conn.config.port, ib.conn.config.client_id, ib.conn.config.account,
                          ib.conn.config.connect_timeout),
            "ib_market_data": (ib.md.stale_after, ib.md.allow_delayed),
            "ib_budget": (ib.budget.max_lines, ib.budget.reserved, ib.budget.ttl, tuple(sorted(ib.budget.ranks.items())),
                          ib.md.review_every),
            "margin_gate": gate(None),
            "kill_switch": (lambda k: (str(k.path), k.engaged() is not None))(
                KillSwitch(str(kill) if limits.kill_switch_file == "KILL" else limits.kill_switch_file)),
            "contracts": {s: instrument_spec(instruments, s) for s in universe_symbols(doc)},
            "history_bars": history_bars(build_plan(doc, ws, {}), DataSpec.from_spec(doc.get(("data",))).history,
                                         DataSpec.from_spec(doc.get(("data",))).bar)}


# ------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Effect:
    base: str                       # a name in BASES
    change: Callable[[dict], None]  # the one property changed, added or removed
    view: str                       # what differs: fills, orders, trades, decisions, equity, run, printed, exit, ...
    modes: tuple = RUN_MODES        # every mode that reads the key
    shared: bool = False            # needs ../shared/data
    note: str = ""

    def __post_init__(self):
        assert self.base in BASES, self.base


S = "strategy"
EFFECTS: dict[tuple[str, str], Effect] = {}


def effect(kind: str, pointer: str, *args, **kw) -> None:
    assert (kind, pointer) not in EFFECTS, pointer
    EFFECTS[(kind, pointer)] = Effect(*args, **kw)


V = ("validate",)
IB = ("ib",)

# ---- strategy: the document
effect(S, "/kind", "sma", put("kind", "risk"), "exit", V)
effect(S, "/name", "sma", put("name", "another-name"), "run")
effect(S, "/underlying", "condor_nouniverse", put("underlying", "SPY"), "exit",
       note="with no universe: the underlying is the symbol traded (SPY has no minute bars: refused)")
effect(S, "/universe", "sma", put("universe", ["AAPL"]), "fills")
effect(S, "/instruments", "with_instruments", put("instruments", DROP), "fills")
effect(S, "/data", "sma", put("data", {"bar": "1d", "source": str(DATA / "AAPL.csv")}), "fills")
effect(S, "/schedule", "condor", put("schedule", {"timezone": "America/New_York", "every": "1m"}), "fills")
effect(S, "/params", "sma", put("params", {"fast": {"value": 5}, "slow": {"value": 50}}), "fills")
effect(S, "/indicators", "sma", put("indicators", {"fast_ma": "ema(close, fast)", "slow_ma": "ema(close, slow)"}),
       "fills")
effect(S, "/classify", "agents", put("classify", {"trend": [{"name": "up", "when": "fast < slow"},
                                                             {"name": "down", "when": "true"}]}), "trades")
effect(S, "/agents", "agents", put("agents.follower", DROP), "trades")
effect(S, "/entry", "sma", put("entry", [{"name": "golden cross", "when": "crosses_above(close, slow_ma)",
                                          "order": "buy_all_in"}]), "fills")
effect(S, "/exit", "sma", put("exit", DROP), "trades")
effect(S, "/orders", "sma", put("orders", {"buy_all_in": {"action": "buy", "type": "market",
                                                          "quantity": {"fixed": 10}}}), "fills")
effect(S, "/risk", "two", put("risk", {"max_open_positions": 1, "margin_check": "off"}), "trades")
effect(S, "/broker", "sma", put("broker", {"port": 4002}), "connect", IB)
effect(S, "/backtest", "condor", put("backtest", DROP), "equity")

# ---- strategy: universe file, params
effect(S, "/$defs/universe/anyOf/2/file", "with_universe", put("universe", {"file": "v.yaml"}), "fills")
effect(S, "/$defs/universe/anyOf/2/groups", "with_universe", put("universe.groups", ["b"]), "fills")
effect(S, "/$defs/param/anyOf/1/value", "sma", put("params.fast.value", 12), "fills")
effect(S, "/$defs/param/anyOf/1/min", "sma", put("params.fast.min", 6), "exit", ("validate --set fast=5",))
effect(S, "/$defs/param/anyOf/1/max", "sma", put("params.fast.max", 20), "exit", ("validate --set fast=25",))
effect(S, "/$defs/param/anyOf/1/choices", "sma", put("params.fast.choices", [10, 20]), "exit",
       ("validate --set fast=15",))
effect(S, "/$defs/param/anyOf/1/description", "sma", put("params.fast.description", "another text"), "report",
       ("report",))

# ---- strategy: data
effect(S, "/$defs/data/bar", "sma_plain", put("data.bar", "1w"), "fills")
effect(S, "/$defs/data/history", "sma", put("data.history", "1000 bars"), "history_bars", IB,
       note="backtests and sim runs read every bar of data.source before the start: nothing to ask for")
effect(S, "/$defs/data/session", "condor_5m_nyse", put("data.session", "extended"), "equity",
       note="extended keeps the 16:00 bars that NYSE's regular session leaves out when 1m bars become 5m")
effect(S, "/$defs/data/source", "sma", put("data.source", str(DATA / "AAPL.csv")), "fills")
effect(S, "/$defs/data/adjusted", "sma", put("data.adjusted", True), "fills")
effect(S, "/$defs/adjusted/round", "sma_adjusted", put("data.adjusted", {"round": 2}), "fills",
       note="fills at the adjusted opens rounded to cents; IB runs read IB's bars, as traded: not applicable")
effect(S, "/$defs/data/on_bad_bar", "bad_bar", put("data.on_bad_bar", "refuse"), "exit")
effect(S, "/$defs/data/chains", "spxw", lambda files: files["s.yaml"]["data"].update(chains=trimmed_chains()),
       "fills", shared=True, note="another chains file (February's quotes only)")

# ---- strategy: schedule
effect(S, "/$defs/schedule/timezone", "condor_extended", put("schedule.timezone", "America/Chicago"), "fills")
effect(S, "/$defs/schedule/calendar", "condor", put("schedule.calendar", "NYSE"), "said",
       note="NYSE's regular session ends at 16:00, CBOE_Index_Options' at 16:15: three 16:00 bars are left out, "
            "and the warning says so")
effect(S, "/$defs/schedule/entry_window", "condor", put("schedule.entry_window", ["10:30", "11:00"]), "fills")
effect(S, "/$defs/schedule/flat_by", "condor", put("schedule.flat_by", "12:00"), "fills")
effect(S, "/$defs/schedule/every", "xsp_cross", put("schedule.every", "5m"), "fills",
       note="the crossover's exit is decided at the 5-minute closes only")
effect(S, "/$defs/schedule/scan_every", "xsp_cross", put("schedule.scan_every", "15m"), "fills",
       note="entries (XSP not held) are decided at the 15-minute closes only")
effect(S, "/$defs/schedule/max_new_entries_per_scan", "two_mondays", put("schedule.max_new_entries_per_scan", 1),
       "fills", note="one new name a Monday: SPY, the first listed; AAPL's entries are blocked")

# ---- strategy: quantities
effect(S, "/$defs/quantity/anyOf/2/percent_of_equity", "sma",
       put("orders.buy_all_in.quantity", {"percent_of_equity": "50%"}), "fills")
effect(S, "/$defs/quantity/anyOf/2/risk_percent", "risk_sized",
       put("orders.buy_all_in.quantity.risk_percent", "2%"), "fills")
effect(S, "/$defs/quantity/anyOf/2/stop_distance", "risk_sized",
       put("orders.buy_all_in.quantity.stop_distance", 10), "fills")
effect(S, "/$defs/quantity/anyOf/2/fixed", "sma", put("orders.buy_all_in.quantity", {"fixed": 10}), "fills")
effect(S, "/$defs/quantity/anyOf/2/round", "sma",
       put("orders.buy_all_in.quantity", {"percent_of_equity": "50%", "round": "none"}), "fills")

# ---- strategy: combo prices, expiries, strikes, legs
effect(S, "/$defs/chase/start", "condor", put("orders.condor.price.chase.start", "natural"), "fills")
effect(S, "/$defs/chase/step", "condor", put("orders.condor.price.chase.step", 0.05), "fills")
effect(S, "/$defs/chase/steps", "condor", put("orders.condor.price.chase.steps", 1), "fills")
effect(S, "/$defs/chase/every", "condor", put("orders.condor.price.chase.every", "3m"), "fills")
effect(S, "/$defs/chase/floor", "condor", put("orders.condor.price.chase.floor", 0.3), "fills")
effect(S, "/$defs/price/anyOf/1/limit", "condor", put("orders.condor.price", {"limit": 0.1}), "fills")
effect(S, "/$defs/price/anyOf/1/chase", "condor", put("orders.condor.price.chase", {"start": "natural", "step": 0.01,
                                                                                      "steps": 1, "every": "15s",
                                                                                      "floor": "min_credit"}), "fills")
# the close's price: the base closes by its price's chase from mid without the floor (3 closes
# filled on the chase's 4th price, one timed out and closed at the natural price)
effect(S, "/$defs/combo_order/close_price", "condor", put("orders.condor.close_price", "market"), "fills",
       note="every close at the natural price at once")
effect(S, "/$defs/close_price/anyOf/1/limit", "condor", put("orders.condor.close_price", {"limit": "credit + 0.01"}),
       "fills")
effect(S, "/$defs/close_price/anyOf/1/chase", "condor",
       put("orders.condor.close_price", {"chase": {"start": "natural", "steps": 1}}), "fills")
effect(S, "/$defs/close_chase/start", "condor", put("orders.condor.close_price.chase.start", "natural"), "fills")
effect(S, "/$defs/close_chase/step", "condor", put("orders.condor.close_price.chase.step", 0.02), "fills")
effect(S, "/$defs/close_chase/steps", "condor", put("orders.condor.close_price.chase.steps", 2), "fills")
effect(S, "/$defs/close_chase/every", "condor", put("orders.condor.close_price.chase.every", "3m"), "fills")
effect(S, "/$defs/close_chase/floor", "condor", put("orders.condor.close_price.chase.floor", "credit + 0.01"),
       "fills")
effect(S, "/$defs/expiry/oneOf/1/weekly", "condor", put("orders.condor.expiry", {"weekly": 0}), "fills")
effect(S, "/$defs/expiry/oneOf/2/dte", "spxw", put("orders.condor.expiry.dte", [40, 60]), "fills", shared=True)
effect(S, "/$defs/expiry/oneOf/2/prefer", "condor_dte", put("orders.condor.expiry.prefer", "farthest"), "orders")
effect(S, "/$defs/delta_strike/delta", "condor", put("orders.condor.legs.short_put.strike.delta", 0.15), "fills")
effect(S, "/$defs/delta_strike/min", "condor", put("orders.condor.legs.short_put.strike.min", 0.12), "decisions")
effect(S, "/$defs/delta_strike/max", "condor", put("orders.condor.legs.short_put.strike.max", 0.1), "decisions")
effect(S, "/$defs/premium_strike/premium", "condor", put("orders.condor.legs.short_put.strike", {"premium": 0.2}),
       "fills")
effect(S, "/$defs/leg/right", "condor", put("orders.condor.legs.long_put.right", "call"), "fills")
effect(S, "/$defs/leg/action", "condor", put("orders.condor.legs.long_call.action", "sell"), "fills")
effect(S, "/$defs/leg/strike", "condor", put("orders.condor.legs.long_put.strike", "short_put.strike - 1"), "fills")
effect(S, "/$defs/leg/ratio", "condor", put("orders.condor.legs.long_put.ratio", 2), "fills")
effect(S, "/$defs/leg/expiry", "condor", put("orders.condor.legs.long_call.expiry", {"weekly": 0}), "fills")

# ---- strategy: single orders
effect(S, "/$defs/single_order/action", "sma_margin", put("orders.buy_all_in.action", "buy"), "fills")
effect(S, "/$defs/single_order/type", "sma", put("orders.buy_all_in.type", "moc"), "fills")
effect(S, "/$defs/single_order/quantity", "sma", put("orders.buy_all_in.quantity", {"percent_of_equity": "50%"}),
       "fills")
effect(S, "/$defs/single_order/limit", "limit_order", put("orders.buy_all_in.limit", "close * 0.97"), "fills")
effect(S, "/$defs/single_order/stop", "stop_order", put("orders.buy_all_in.stop", "close * 1.03"), "fills")
effect(S, "/$defs/single_order/tif", "limit_order", put("orders.buy_all_in.tif", "gtc"), "fills")

# ---- strategy: combo orders
effect(S, "/$defs/combo_order/expiry", "condor", put("orders.condor.expiry", {"weekly": 0}), "orders")
effect(S, "/$defs/combo_order/legs", "condor", put("orders.condor.legs.long_call", DROP), "fills")
effect(S, "/$defs/combo_order/quantity", "condor", put("orders.condor.quantity", 2), "fills")
effect(S, "/$defs/combo_order/price", "condor", put("orders.condor.price", {"limit": 0.3}), "fills")
effect(S, "/$defs/combo_order/tif", "condor", put("orders.condor.tif", "gtc"), "orders")

# ---- strategy: rules
effect(S, "/$defs/entry_rule/name", "sma", put("entry.0.name", "crossing up"), "decisions")
effect(S, "/$defs/entry_rule/when", "sma", put("entry.0.when", "crosses_above(close, slow_ma)"), "fills")
effect(S, "/$defs/entry_rule/order", "sma",
       both(put("orders.half", {"action": "buy", "type": "market", "quantity": {"percent_of_equity": "50%"}}),
            put("entry.0.order", "half")), "fills",
       note="the base has no second template; the change adds it and names it (the only way to change `order`)")
effect(S, "/$defs/exit_rule/name", "sma", put("exit.0.name", "crossing down"), "trades")
effect(S, "/$defs/exit_rule/when", "sma", put("exit.0.when", "crosses_below(close, slow_ma)"), "fills")
effect(S, "/$defs/exit_rule/stop", "risk_sized", put("exit.1.stop", "position.entry_price - 2"), "fills")
effect(S, "/$defs/exit_rule/target", "sma", put("exit.0", {"name": "target", "target": "position.entry_price * 1.05"}),
       "fills")
effect(S, "/$defs/exit_rule/reason", "sma", put("exit.0.reason", "another reason"), "trades")
effect(S, "/$defs/exit_rule/order", "sma",
       both(put("orders.out", {"action": "sell", "type": "moc", "quantity": {"percent_of_equity": "100%"}}),
            put("exit.0.order", "out")), "fills")

# ---- strategy: classifications and agents
effect(S, "/$defs/class_case/name", "agents",
       both(put("classify.trend.0.name", "rising"), put("agents.follower.active", 'trend == "up"')), "exit", V,
       note="renaming a case makes the agent's `trend == \"up\"` name a state that no longer exists")
effect(S, "/$defs/class_case/when", "agents", put("classify.trend.0.when", "close > slow"), "trades")
effect(S, "/$defs/agent/active", "agents", put("agents.follower.active", 'trend == "down"'), "trades")
effect(S, "/$defs/agent/score", "agents", put("agents.contrarian.score", 2), "trades")
effect(S, "/$defs/agent/entry", "agents", put("agents.follower.entry.0.when", "r < 40"), "trades")
effect(S, "/$defs/agent/exit", "agents", put("agents.follower.exit.0.when", "r > 70"), "trades")
effect(S, "/$defs/agent/weight", "agents_vote", put("agents.contrarian.weight", 3), "trades",
       note="the contrarian's vote (3 x 0.5) outweighs the follower's (1 x 1): it takes the up-trend dips")
effect(S, "/$defs/agent/flat_by", "xsp_agents", put("agents.theta.flat_by", None), "trades",
       note="null: the options agent's spread opened on Tuesday is held overnight instead of closed at 15:50")
effect(S, "/arbitration", "agents_ranked", put("arbitration", {"policy": "priority"}), "trades")
effect(S, "/properties/arbitration/policy", "agents_ranked", put("arbitration.policy", "priority"), "trades",
       note="priority takes the follower (listed first), highest_confidence the contrarian (score 2)")
effect(S, "/properties/arbitration/threshold", "agents_vote", put("arbitration.threshold", 0.9), "trades",
       note="at 0.9 no side's support passes (0.75 in an up trend, 0.5 in a down one)")
effect(S, "/properties/arbitration/max_active_agents", "agents_two", put("arbitration", {"max_active_agents": 1}),
       "trades", note="while one agent holds a symbol the other takes no position on the other symbol")
effect(S, "/properties/arbitration/positions_per_symbol", "agents_two",
       put("arbitration", {"positions_per_symbol": 2}), "trades",
       note="2: the other agent enters a symbol the first holds, with a position of its own")

# ---- strategy: costs
effect(S, "/$defs/commission/per_share", "sma", put("backtest", {"commission": {"per_share": 0.01}}), "fills")
effect(S, "/$defs/commission/per_contract", "condor", put("backtest.commission.per_contract", 2.0), "fills")
effect(S, "/$defs/commission/percent", "sma", put("backtest", {"commission": {"percent": "0.1%"}}), "fills")
effect(S, "/$defs/commission/per_order", "sma", put("backtest", {"commission": {"per_order": 5}}), "fills")
effect(S, "/$defs/commission/minimum", "sma", put("backtest", {"commission": {"per_share": 0.0001, "minimum": 2}}),
       "fills")
effect(S, "/$defs/commission/maximum", "sma", put("backtest", {"commission": {"per_share": 1, "maximum": "0.1%"}}),
       "fills")
effect(S, "/$defs/slippage/ticks", "sma", put("backtest", {"slippage": {"ticks": 2}}), "fills")
effect(S, "/$defs/slippage/percent", "sma", put("backtest", {"slippage": {"percent": "0.1%"}}), "fills")
effect(S, "/$defs/slippage/fixed", "sma", put("backtest", {"slippage": {"fixed": 0.05}}), "fills")

# ---- strategy: backtest settings
effect(S, "/$defs/backtest/cash", "sma", put("backtest", {"cash": 50000}), "fills")
effect(S, "/$defs/backtest/currency", "sma", put("backtest", {"currency": "EUR"}), "run")
effect(S, "/$defs/backtest/account", "sma_margin", put("backtest.account", "cash"), "decisions",
       note="a short entry is refused on a cash account")
effect(S, "/$defs/backtest/fill", "sma", put("backtest", {"fill": "close"}), "fills")
effect(S, "/$defs/backtest/commission", "sma", put("backtest", {"commission": {"per_order": 1}}), "fills")
effect(S, "/$defs/backtest/slippage", "sma", put("backtest", {"slippage": {"fixed": 0.01}}), "fills")
effect(S, "/$defs/backtest/start", "sma", put("backtest", {"start": "2012-01-01"}), "fills", ("backtest",))
effect(S, "/$defs/backtest/end", "sma", put("backtest", {"end": "2015-01-01"}), "fills", ("backtest",))
effect(S, "/$defs/backtest/warmup", "trend_2012", put("backtest.warmup", "from_start"), "fills",
       note="the 30-day average starts at the start: the first entry comes 30 bars into 2012; IB runs warm up "
            "on IB's history and have no start (not applicable)")
effect(S, "/$defs/backtest/options", "condor", put("backtest.options", {"iv": 0.3}), "fills")
effect(S, "/$defs/option_sim/iv", "condor", put("backtest.options.iv", 0.3), "fills")
effect(S, "/$defs/option_sim/iv_scale", "condor", put("backtest.options.iv_scale", 1.5), "fills")
effect(S, "/$defs/option_sim/skew", "condor", put("backtest.options.skew", 0.0), "fills")
effect(S, "/$defs/option_sim/spread", "condor", put("backtest.options.spread", {"percent": "20%", "minimum": 0.05}),
       "fills")
effect(S, "/$defs/option_sim/fill_fraction", "condor", put("backtest.options.fill_fraction", 1.0), "fills")
effect(S, "/$defs/option_sim/american_as_european", "condor_american",
       put("backtest.options.american_as_european", DROP), "exit",
       note="with it the condor runs as European; without it American options are refused (not simulated)")
effect(S, "/$defs/option_sim/rate", "condor", put("backtest.options.rate", 0.5), "fills")
effect(S, "/$defs/option_sim/dividend_yield", "condor", put("backtest.options.dividend_yield", 0.5), "fills")
effect(S, "/$defs/option_sim/properties/spread/percent", "condor", put("backtest.options.spread.percent", "30%"),
       "fills")
effect(S, "/$defs/option_sim/properties/spread/minimum", "condor", put("backtest.options.spread.minimum", 0.1),
       "fills")

# ---- strategy: broker (IB runs only)
for key, value, view in (("host", "10.0.0.2", "ib_config"), ("port", 4002, "ib_config"), ("client_id", 7, "ib_config"),
                         ("account", "DU999", "ib_config"), ("market_data", "delayed", "ib_market_data"),
                         ("connect_timeout", "30s", "ib_config")):
    effect(S, f"/$defs/broker/{key}", "sma", put(f"broker.{key}", value), view, IB)

# ---- strategy: the market-data line budget (IB runs only; the rotation itself is
# tests/ibbroker/test_broker_ib.py and the run's scenario 15 in tests/ibbroker/test_run_e2e.py)
effect(S, "/$defs/data/subscriptions", "sma", put("data.subscriptions", {"max_lines": 20}), "ib_budget", IB)
for key, value in (("max_lines", 20), ("reserve_for_positions", 2), ("ttl", "30s"), ("check_every", "2m"),
                   ("priorities", {"top_signals": 95})):
    effect(S, f"/$defs/subscriptions/{key}", "sma", put("data.subscriptions", {key: value}),
           "ib_budget", IB)
for key, value in (("positions", 99), ("watchlist", 40), ("top_signals", 60), ("scanner", 10)):
    effect(S, f"/$defs/subscriptions/properties/priorities/{key}", "sma",
           put("data.subscriptions", {"priorities": {key: value}}), "ib_budget", IB)

# ---- universe documents (a strategy's universe: {file: u.yaml})
U = "universe"
effect(U, "/kind", "with_universe", put("kind", "risk", "u.yaml"), "exit", V)
effect(U, "/instruments", "with_universe",
       both(put("instruments", "i.yaml", "u.yaml"), lambda files: files.update(
           {"i.yaml": with_instruments()["i.yaml"]}), put("backtest", {"slippage": {"ticks": 1}})), "fills",
       note="the base has no map of its own (the bundled one: SPY's tick 0.01); the change names one (0.25)")
effect(U, "/defaults", "with_universe", put("defaults", {"sec_type": "FUT"}, "u.yaml"), "exit", V)
effect(U, "/symbols", "with_universe", put("symbols", ["VIX"], "u.yaml"), "fills")
effect(U, "/groups", "with_universe", put("groups.a", ["VIX"], "u.yaml"), "fills")
effect(U, "/exclude", "with_universe", put("exclude", DROP, "u.yaml"), "fills")
effect(U, "/properties/defaults/sec_type", "with_universe", put("defaults.sec_type", "FUT", "u.yaml"), "exit", V,
       note="symbols the instrument map does not list are of this type: a future needs an entry")
effect(U, "/properties/exclude/items/pattern", "with_universe", put("exclude.0.pattern", "SP*", "u.yaml"), "fills")
effect(U, "/properties/exclude/items/sec_type", "with_universe", put("exclude.0.sec_type", "FUT", "u.yaml"),
       "fills")
effect(U, "/properties/exclude/items/reason", "with_universe", put("exclude.0.reason", "another reason", "u.yaml"),
       "said")

# ---- instrument maps (a strategy's instruments: i.yaml)
I = "instruments"
effect(I, "/kind", "with_instruments", put("kind", "risk", "i.yaml"), "exit", V)
effect(I, "/defaults", "with_instruments", put("roots", {}, "i.yaml"), "fills",
       note="SPY falls back to the defaults (tick 0.01) instead of its root (0.25)")
effect(I, "/roots", "with_instruments", put("roots.SPY.tick_size", 0.5, "i.yaml"), "fills")
for where in ("/$defs/root", "/$defs/default_entry"):
    entry = "roots.SPY" if where == "/$defs/root" else "defaults.STK"
    base = "with_instruments"
    prep = put("roots", {}, "i.yaml") if where == "/$defs/default_entry" else (lambda files: None)
    effect(I, f"{where}/tick_size", base, both(prep, put(f"{entry}.tick_size", 0.1, "i.yaml")), "fills")
    effect(I, f"{where}/exchange", base, both(prep, put(f"{entry}.exchange", "ARCA", "i.yaml")), "contracts", IB)
    effect(I, f"{where}/primary_exchange", base, both(prep, put(f"{entry}.primary_exchange", "ARCA", "i.yaml")),
           "contracts", IB)
    effect(I, f"{where}/currency", base, both(prep, put(f"{entry}.currency", "CAD", "i.yaml")), "contracts", IB)
    effect(I, f"{where}/trading_class", base, both(prep, put(f"{entry}.trading_class", "X", "i.yaml")), "contracts",
           IB)
    effect(I, f"{where}/months", base, both(prep, put(f"{entry}.months", "HMUZ", "i.yaml")), "contracts", IB)
    effect(I, f"{where}/multiplier", base, both(prep, put(f"{entry}.multiplier", 10, "i.yaml")), "contracts", IB)
    if where == "/$defs/root":
        effect(I, f"{where}/roll_days", base, put(f"{entry}.roll_days", 5, "i.yaml"), "contracts", IB,
               note="the front month it picks: tests/ibbroker/test_contracts.py's roll offset, against the simulator; "
                    "in backtests, run --broker sim and dry runs the stitched front month and the roll of a held "
                    "position (tests/test_futures.py, tests/test_futures_roll.py), on IB the roll too "
                    "(tests/ibbroker/test_roll_e2e.py)")
        effect(I, f"{where}/calendar", "condor_instruments", put("roots.XSP.calendar", "NYSE", "i.yaml"), "said")
        effect(I, f"{where}/options", "condor_instruments", put("roots.XSP.options.multiplier", 10, "i.yaml"), "fills")
    else:       # the defaults are a stock's (an index must have a root): SPY's, without options data to trade
        effect(I, f"{where}/calendar", base, both(prep, put(f"{entry}.calendar", "CBOE_Equity_Options", "i.yaml")),
               "contracts", IB)
        effect(I, f"{where}/options", base, both(prep, put(f"{entry}.options", {"multiplier": 10}, "i.yaml")),
               "contracts", IB)
effect(I, "/$defs/root/sec_type", "with_instruments", put("roots.SPY.sec_type", "IND", "i.yaml"), "contracts", IB)
effect(I, "/$defs/root/margin", "nq", put("roots.NQ.margin", 60000, "i.yaml"), "fills", shared=True)
effect(I, "/$defs/root/maintenance_margin", "nq", put("roots.NQ.maintenance_margin", 49900, "i.yaml"), "trades",
       shared=True, note="2 x 49,900 of maintenance on 100,000: a loss of about 5 points is a margin call")
for key, value in (("multiplier", 10), ("strike_step", 5), ("settlement_time", "am"),
                   ("expiries", "weekly"), ("trading_class", "SPXW"), ("exchange", "SMART")):
    effect(I, f"/$defs/options/{key}", "condor_held" if key.startswith("settlement") else "condor_instruments", put(f"roots.XSP.options.{key}", value, "i.yaml"),
           "trades" if key == "settlement_time" else "fills" if key not in ("trading_class", "exchange") else "contracts",
           RUN_MODES if key not in ("trading_class", "exchange") else IB)

effect(I, "/$defs/options/style", "condor_instruments", put("roots.XSP.options.style", "american", "i.yaml"), "exit",
       note="simulated runs refuse American options at the map's line unless american_as_european")
effect(I, "/$defs/options/settlement", "condor_held_near", put("roots.XSP.options.settlement", "physical", "i.yaml"),
       "trades", note="a combo that would deliver shares is closed at natural before its expiry's close")

# ---- risk: each limit in a risk file (r.yaml) and inline (a strategy's risk:)
R = "risk"
RISK = [
    ("per_trade_risk", "risk_sized", "0.5%", "fills", RUN_MODES),
    ("max_position", "two", "10%", "fills", RUN_MODES),
    ("max_open_positions", "two", 1, "trades", RUN_MODES),
    ("max_daily_loss", "xsp_cross", 1, "fills", RUN_MODES),
    ("max_drawdown", "two", "5%", "fills", RUN_MODES),
    ("max_margin_per_trade", "condor", 100, "fills", RUN_MODES),
    ("margin_check", "two", "required", "margin_gate", IB),
    ("stale_quote_age", "two", "30s", "ib_market_data", IB),
    ("kill_switch_file", "two", "KILL", "kill_switch", IB),
    ("circuit_breaker", "two", {"consecutive_losses": 2, "pause": "30d"}, "fills", RUN_MODES),
    ("pyramiding", "held", 3, "fills", RUN_MODES),
    ("volatility_scaling", "two", {"target_annual_vol": "5%", "lookback": "20 bars"}, "fills", RUN_MODES),
    ("by_state", "agents", {"trend": {"up": {"size": 0.5}}}, "fills", RUN_MODES),
    ("max_cvar", "two", {"loss": 500, "level": "90%", "days": 30}, "fills", RUN_MODES),
]
FILE_BASE = {"held": "held_file", "two": "with_risk_file", "condor": "condor_risk_file", "risk_sized": "risk_sized_file",
             "xsp_cross": "xsp_cross_file", "agents": "agents_file"}
for key, base, value, view, modes in RISK:
    effect(R, f"/$defs/limits/{key}", base, put(f"risk.{key}", value), view, modes)
    effect(R, f"/{key}", FILE_BASE[base], put(key, value, "r.yaml"), view, modes)
effect(R, "/$defs/state_limits/size", "agents", put("risk.by_state", {"trend": {"down": {"size": 0.25}}}), "fills")
effect(R, "/$defs/state_limits/max_open_positions", "agents",
       put("risk.by_state", {"trend": {"down": {"max_open_positions": 0}}}), "trades",
       note="no entry while the trend is down: the contrarian's down-trend dips go untraded")
effect(R, "/kind", "with_risk_file", put("kind", "universe", "r.yaml"), "exit", V)
effect(R, "/extends", "with_risk_file",
       both(put("extends", "q.yaml", "r.yaml"),
            lambda files: files.update({"q.yaml": {"kind": "risk", "name": "q", "max_position": "10%"}})), "fills",
       note="the change adds q.yaml (max_position 10%) and extends it")
effect(R, "/$defs/limits/extends", "two",
       both(put("risk.extends", "q.yaml"),
            lambda files: files.update({"q.yaml": {"kind": "risk", "name": "q", "max_position": "10%"}})), "fills")


# ---- scanners: a scanner document (qtrade scan at SCAN_AT; its rescan in the runs of a strategy
# naming it), a strategy's scanner and its inline form
C = "scanner"
SCAN = ("scan",)
effect(S, "/scanner", "scanned",
       both(lambda files: files.update({"d.yaml": {**files["c.yaml"], "top": 2}}), put("scanner", "d.yaml")), "trades",
       note="another scanner file: c.yaml's copy picking the top 2 instead of the top 1")
effect(C, "/kind", "scanner", put("kind", "risk"), "exit", V)
effect(C, "/name", "scanner", put("name", "another"), "scan", SCAN)
effect(C, "/universe", "scanner", put("universe", ["SPY", "INTC"]), "scan", SCAN)
effect(C, "/data", "scanner", put("data", {"bar": "1w", "source": str(DATA) + "/"}), "scan", SCAN)
effect(C, "/params", "scanner", put("params", {"min_price": 100, "min_volume": 1_000_000}), "scan", SCAN)
effect(C, "/prefilter", "scanner", put("prefilter", "close >= 100"), "scan", SCAN)
effect(C, "/factors", "scanner", put("factors", {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.6},
                                                 "liquidity": {"expr": "log(close * sma(volume, 20))", "weight": 0.4}}),
       "scan", SCAN)
effect(C, "/normalise_weights", "scanner_unscaled", put("normalise_weights", False), "exit", V,
       note="weights summing to 1.5 are scaled to 1; taken as given they are refused (the score would pass 100)")
effect(C, "/min_score", "scanner", put("min_score", 60), "scan", SCAN)
effect(C, "/top", "scanner", put("top", 1), "scan", SCAN)
effect(C, "/rescan", "scanned", put("rescan", "1w", "c.yaml"), "trades",
       note="a single scan (qtrade scan --at) reads no rescan: runs re-rank on it")
effect(C, "/grades", "scanner", put("grades", {"A": 90, "B": 20}), "scan", SCAN)
effect(C, "/classes", "scanner", put("classes", [{"class": "any", "when": True}]), "scan", SCAN)
effect(C, "/properties/classes/items/class", "scanner", put("classes.0.class", "trending"), "scan", SCAN)
effect(C, "/properties/classes/items/when", "scanner", put("classes.0.when", "volatility > 0.5"), "scan", SCAN)
for key, change in (("expr", put("factors.energy.expr", "roc(close, 20)")),
                    ("weight", both(put("factors.energy.weight", 0.3), put("factors.liquidity.weight", 0.5))),
                    ("normalise", put("factors.liquidity.normalise", "zscore")),
                    ("invert", put("factors.volatility.invert", True)),
                    ("clip", put("factors.liquidity.clip", [0.2, 0.8]))):
    effect(C, f"/$defs/factor/{key}", "scanner", change, "scan", SCAN)
# candidates from IB's market scanner: the request an IB run sends (the e2e test,
# tests/e2e/test_ib_scanner_source.py, shows the run re-requesting it at each rescan)
IB_SRC = {"ib_scanner": {"scan_code": "MOST_ACTIVE"}}
effect(C, "/source", "scanned", put("source", IB_SRC, "c.yaml"), "ib_scanner", IB,
       note="backtests, run --broker sim and qtrade scan without --data refuse it at its line")
effect(C, "/$defs/body/source", "scanned_inline", put("scanner.source", IB_SRC), "ib_scanner", IB,
       note="backtests, run --broker sim and qtrade scan without --data refuse it at its line")
Q = "scanner.source.ib_scanner"
effect(C, "/$defs/source/ib_scanner", "ib_sourced", put(Q, {"scan_code": "TOP_PERC_LOSE"}), "ib_scanner", IB)
effect(C, "/$defs/ib_scanner/scan_code", "ib_sourced", put(f"{Q}.scan_code", "HOT_BY_VOLUME"), "ib_scanner", IB)
effect(C, "/$defs/ib_scanner/instrument", "ib_sourced", put(f"{Q}.instrument", "FUT"), "exit", V,
       note="STK is the only instrument: another is refused at its line")
effect(C, "/$defs/ib_scanner/location", "ib_sourced", put(f"{Q}.location", "STK.NASDAQ"), "ib_scanner", IB)
effect(C, "/$defs/ib_scanner/rows", "ib_sourced", put(f"{Q}.rows", 5), "ib_scanner", IB)
effect(C, "/$defs/ib_scanner/filters", "ib_sourced", put(f"{Q}.filters", {"price_below": 500}), "ib_scanner", IB)
for key, value in (("price_above", 50), ("price_below", 500), ("volume_above", 1_000_000)):
    effect(C, f"/$defs/ib_scanner/properties/filters/{key}", "ib_sourced", put(f"{Q}.filters.{key}", value),
           "ib_scanner", IB)
# the inline form (a strategy's scanner:), scanned with `qtrade scan s.yaml` and run
B = "/$defs/body"
effect(C, f"{B}/universe", "scanned_inline", put("scanner.universe", ["SPY"]), "scan", SCAN,
       note="null: the strategy's universe")
effect(C, f"{B}/data", "scanned_inline", put("scanner.data", {"bar": "1w"}), "scan", SCAN,
       note="null: the strategy's bars")
effect(C, f"{B}/params", "scanned_inline", put("scanner.params.min_price", 100), "scan", SCAN)
effect(C, f"{B}/prefilter", "scanned_inline", put("scanner.prefilter", "close >= 100"), "scan", SCAN)
effect(C, f"{B}/factors", "scanned_inline",
       put("scanner.factors", {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.6},
                               "liquidity": {"expr": "log(close * sma(volume, 20))", "weight": 0.4}}), "scan", SCAN)
effect(C, f"{B}/normalise_weights", "scanned_inline",
       both(put("scanner.factors.energy.weight", 1.0), put("scanner.normalise_weights", True)), "scan", SCAN,
       note="weights summing to 1.5 are refused when taken as given; scaled to 1 they score")
effect(C, f"{B}/min_score", "scanned_inline", put("scanner.min_score", 60), "scan", SCAN)
effect(C, f"{B}/top", "scanned_inline", put("scanner.top", 2), "trades")
effect(C, f"{B}/rescan", "scanned_inline", put("scanner.rescan", "1w"), "trades")
effect(C, f"{B}/grades", "scanned_inline", put("scanner.grades", {"A": 90, "B": 20}), "scan", SCAN)
effect(C, f"{B}/classes", "scanned_inline", put("scanner.classes", [{"class": "directional", "when": True}]),
       "trades")
effect(C, f"{B}/properties/classes/items/class", "scanned_inline", put("scanner.classes.0.class", "trending"),
       "exit", V, note="the strategy's `scan.class == \"directional\"` names a class that no longer exists")
effect(C, f"{B}/properties/classes/items/when", "scanned_inline",
       put("scanner.classes.0.when", "volatility > 0.5"), "trades")


# ------------------------------------------------------------------ the tests

def _cases(kind: str):
    return [pytest.param(pointer, e, id=pointer) for (k, pointer), e in sorted(EFFECTS.items()) if k == kind]


def _shows(tmp_path, e: Effect) -> None:
    if e.shared and not SHARED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing under CI")
        pytest.skip(f"needs {SHARED}")
    base = BASES[e.base]()
    changed = copy.deepcopy(base)
    e.change(changed)
    assert changed != base, "the change changes nothing in the documents"
    for mode in e.modes:
        a = observe(mode, e.base, base, tmp_path / mode / "base")
        b = observe(mode, e.base, changed, tmp_path / mode / "changed")
        if mode in RUN_MODES or mode == "scan":
            if a["exit"] != (0, ""):
                pytest.fail(f"{mode}: the base does not run: {a['exit']}", pytrace=False)
            if e.view != "exit" and b["exit"] != (0, ""):
                pytest.fail(f"{mode}: the changed document does not run: {b['exit']}", pytrace=False)
        assert e.view in a or e.view in b, (mode, e.view, sorted(a))
        if a.get(e.view) == b.get(e.view):
            pytest.fail(f"{mode}: {e.change.__doc__ or 'the change'} leaves {e.view} as it is", pytrace=False)


@pytest.mark.parametrize("pointer, e", _cases("strategy"))
def test_strategy_key_changes_what_each_mode_does(tmp_path, pointer, e):
    _shows(tmp_path, e)


@pytest.mark.parametrize("pointer, e", _cases("universe"))
def test_universe_key_changes_what_each_mode_does(tmp_path, pointer, e):
    _shows(tmp_path, e)


@pytest.mark.parametrize("pointer, e", _cases("instruments"))
def test_instruments_key_changes_what_each_mode_does(tmp_path, pointer, e):
    _shows(tmp_path, e)


@pytest.mark.parametrize("pointer, e", _cases("risk"))
def test_risk_key_changes_what_each_mode_does(tmp_path, pointer, e):
    _shows(tmp_path, e)


@pytest.mark.parametrize("pointer, e", _cases("scanner"))
def test_scanner_key_changes_what_each_mode_does(tmp_path, pointer, e):
    _shows(tmp_path, e)

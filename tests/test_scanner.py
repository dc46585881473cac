"""Issue 12 items 1, 2 and 5: scanners rank a universe at each scan (one pass over the universe,
shared terms once, no look-ahead), explain every name that is not picked, and `qtrade scan`
prints the ranking (table, JSON, CSV, HTML). Values are checked by hand on the bundled bars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from cli import main
from engine.scanner import rank as R

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "strategies" / "data"
COMPOSITE = ROOT / "strategies" / "scanners" / "composite.yaml"
NY = "America/New_York"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def scanner_doc(**changes) -> dict:
    doc = {"kind": "scanner", "name": "hand", "universe": ["SPY", "AAPL", "INTC", "QQQ"],
           "data": {"bar": "1d", "source": str(DATA) + "/"},
           "params": {"min_price": 10, "min_volume": 1_000_000},
           "prefilter": "close >= min_price and volume >= min_volume",
           "factors": {"price": {"expr": "close", "weight": 0.5, "normalise": "rank"},
                       "activity": {"expr": "volume", "weight": 0.3, "normalise": "minmax"},
                       "move": {"expr": "close / close[1] - 1", "weight": 0.2, "normalise": "zscore",
                                "clip": [0, 1]}},
           "normalise_weights": False, "min_score": 0, "top": 1,
           "grades": {"A": 70, "B": 40},
           "classes": [{"class": "pricey", "when": "price > 0.5 and close > 100"}, {"class": "other", "when": True}]}
    doc.update(changes)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def scan_json(path, *args) -> dict:
    result = cli("scan", path, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- the cross-section, by hand ------------------------------------------------------------

def test_percentile_rank_ties_share_their_average_and_a_lone_name_is_half():
    x = np.array([[3.0, 1.0, 2.0, np.nan], [5.0, 5.0, 1.0, 7.0], [4.0, np.nan, 9.0, 9.0]])
    ok = np.isfinite(x)
    ok[2, 2:] = False
    got = R.normalise(x, ok, "rank")
    want = np.array([[1.0, 0.0, 0.5, np.nan], [0.5, 0.5, 0.0, 1.0], [0.5, np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(got, want, equal_nan=True)
    np.testing.assert_allclose(R.normalise(x, ok, "rank", invert=True)[0], [0.0, 1.0, 0.5, np.nan], equal_nan=True)


def test_ranks_agree_with_a_row_by_row_count_on_random_rows_with_ties():
    rng = np.random.default_rng(12)
    x = rng.integers(0, 6, size=(200, 9)).astype(float)
    ok = rng.random(x.shape) > 0.25
    pct, order = R.percentile_rank(x, ok), R.ranks(x, ok)
    for i in range(len(x)):
        cols = np.flatnonzero(ok[i])
        vals = x[i, cols]
        for j, c in enumerate(cols):
            below, equal = (vals < vals[j]).sum(), (vals == vals[j]).sum()
            want = 0.5 if len(cols) == 1 else (below + (equal - 1) / 2) / (len(cols) - 1)
            assert pct[i, c] == pytest.approx(want)
            ahead = (vals > vals[j]).sum() + ((vals == vals[j]) & (cols < c)).sum()
            assert order[i, c] == ahead + 1
        assert np.isnan(pct[i, ~ok[i]]).all() and np.isnan(order[i, ~ok[i]]).all()


def test_zscore_minmax_none_invert_and_clip_by_hand():
    x = np.array([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]])
    ok = np.ones_like(x, dtype=bool)
    mean, std = 3.0, np.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3)
    np.testing.assert_allclose(R.normalise(x, ok, "zscore")[0], [(1 - mean) / std, (2 - mean) / std, (6 - mean) / std])
    np.testing.assert_allclose(R.normalise(x, ok, "zscore")[1], [0.0, 0.0, 0.0])       # all equal
    np.testing.assert_allclose(R.normalise(x, ok, "minmax"), [[0.0, 0.2, 1.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(R.normalise(x, ok, "minmax", invert=True)[0], [1.0, 0.8, 0.0])
    np.testing.assert_allclose(R.normalise(x, ok, "none", invert=True)[0], [-1.0, -2.0, -6.0])
    np.testing.assert_allclose(R.normalise(x, ok, "zscore", clip=(0.0, 1.0))[0], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        R.normalise(x, ok, "rnk")


def test_ranks_best_first_ties_to_the_name_listed_first_grades_and_first_class():
    score = np.array([[40.0, 70.0, 40.0, np.nan]])
    ok = np.isfinite(score)
    np.testing.assert_array_equal(R.ranks(score, ok), [[2.0, 1.0, 3.0, np.nan]])
    assert R.grades(score, ok, (("A", 70.0), ("B", 40.0))).tolist() == [["B", "A", "B", ""]]
    conditions = [np.array([[False, True, True, True]]), True]
    assert R.classes(conditions, ["first", "rest"], ok).tolist() == [["rest", "first", "first", ""]]


def test_a_scan_of_the_bundled_bars_checked_by_hand(tmp_path):
    """At 2012-06-01's close: SPY and AAPL are scored, INTC's data ended in 2004 (stale), QQQ has
    none. Each factor's raw value, score and contribution, the score, rank, pick, grade and
    class, from the bars themselves."""
    from engine.market.bars import load_bars

    data = scan_json(write(tmp_path, scanner_doc()), "--at", "2012-06-01")
    frames = load_bars(DATA, symbols=["SPY", "AAPL"], timezone=NY)
    day = pd.Timestamp("2012-06-01", tz=NY)
    raw = {}
    for s, f in frames.items():
        f = f[f.index <= day]
        raw[s] = {"price": f["close"].iloc[-1], "activity": f["volume"].iloc[-1],
                  "move": f["close"].iloc[-1] / f["close"].iloc[-2] - 1}
    spy, aapl = raw["SPY"], raw["AAPL"]
    hi = max(spy, aapl, key=lambda r: r["price"])
    score = {}
    for s, r in raw.items():
        price = 1.0 if r is hi else 0.0
        lo_v, hi_v = sorted([spy["activity"], aapl["activity"]])
        activity = (r["activity"] - lo_v) / (hi_v - lo_v)
        moves = np.array([spy["move"], aapl["move"]])
        move = float(np.clip((r["move"] - moves.mean()) / moves.std(), 0, 1))
        score[s] = 100 * (0.5 * price + 0.3 * activity + 0.2 * move)
        row = next(x for x in data["rows"] if x["symbol"] == s)
        assert row["factors"]["price"]["raw"] == pytest.approx(r["price"])
        assert row["factors"]["activity"]["score"] == pytest.approx(activity)
        assert row["factors"]["move"]["score"] == pytest.approx(move)
        assert row["factors"]["price"]["contribution"] == pytest.approx(50 * price)
        assert row["score"] == pytest.approx(score[s])
        assert row["grade"] == ("A" if score[s] >= 70 else "B" if score[s] >= 40 else "")
        assert row["class"] == ("pricey" if price > 0.5 and r["price"] > 100 else "other")
    best = max(score, key=score.get)
    rows = {r["symbol"]: r for r in data["rows"]}
    assert rows[best]["rank"] == 1 and rows[best]["picked"] and rows[best]["status"] == "picked"
    other = "AAPL" if best == "SPY" else "SPY"
    assert rows[other]["rank"] == 2 and not rows[other]["picked"]
    assert rows[other]["reason"] == "not in the top 1 (rank 2)"
    assert rows["INTC"]["status"] == "stale data" and rows["INTC"]["reason"].startswith(
        "stale data: its last bar is 2004-04-08, ")
    assert rows["QQQ"]["reason"].startswith("no data: no bars for QQQ in ")
    assert data["explanation"] == "1 of 4 picked: 1 not in the top 1, 1 had stale data, 1 had no data"
    assert [r["symbol"] for r in data["rows"]][:2] == [best, other]


def test_an_empty_scan_says_why_with_counts(tmp_path):
    """Nothing passes the prefilter: the count of each reason, and each name's values."""
    from engine.market.bars import load_bars

    path = write(tmp_path, scanner_doc(params={"min_price": 10, "min_volume": 1_000_000_000}))
    data = scan_json(path, "--at", "2012-06-01")
    assert data["picked"] == 0
    assert data["explanation"] == "0 passed the prefilter: 2 had volume < 1e9, 1 had stale data, 1 had no data"
    spy = load_bars(DATA, symbols=["SPY"], timezone=NY)["SPY"]
    volume = spy[spy.index <= pd.Timestamp("2012-06-01", tz=NY)]["volume"].iloc[-1]
    row = next(x for x in data["rows"] if x["symbol"] == "SPY")
    mantissa, exponent = f"{volume:.3g}".split("e+")
    assert row["reason"] == f"dropped by the prefilter: volume {mantissa}e{int(exponent)} < 1e9"
    table = cli("scan", path, "--at", "2012-06-01").output
    assert "0 passed the prefilter: 2 had volume < 1e9, 1 had stale data, 1 had no data" in table
    assert "no name was scored" in table


def test_a_name_in_its_warm_up_and_before_its_first_bar(tmp_path):
    path = write(tmp_path, scanner_doc(factors={"trend": {"expr": "sma(close, 20)", "weight": 1.0}}, classes=[]))
    data = scan_json(path, "--at", "2008-01-10")
    rows = {r["symbol"]: r for r in data["rows"]}
    # SPY's bars start 2007-12-31: 8 bars by 2008-01-10, sma(close, 20) needs 20
    assert rows["SPY"]["reason"] == "no value for factor trend: warming up (8 of the 20 bars it needs)"
    assert rows["AAPL"]["picked"]
    data = scan_json(path, "--at", "1990-01-02")
    rows = {r["symbol"]: r for r in data["rows"]}
    assert rows["AAPL"]["reason"] == "no data yet: its bars start 2004-08-19"
    assert data["explanation"] == "0 passed the prefilter: 3 had no data yet, 1 had no data"


def test_a_scan_at_after_the_data_says_it_scanned_the_last_close(tmp_path):
    """--at after the data's last close: the scan is that close's (as the first line says), and
    a note on stderr says so; at a close within the data, no note."""
    path = write(tmp_path, scanner_doc())
    late = cli("scan", path, "--at", "2030-01-01")
    assert late.exit_code == 0, late.output
    assert "note: --at 2030-01-01 is after the data's last close (2018-01-19): scanned as of that close" in late.stderr
    assert "scanned at 2018-01-19 close" in late.stdout
    within = cli("scan", path, "--at", "2012-06-01")
    assert within.exit_code == 0 and "after the data's last close" not in within.stderr


# ---- one pass, shared terms once, no look-ahead ---------------------------------------------

def test_the_composite_scanner_is_one_plan_with_shared_terms_once():
    from engine.check import validate
    from engine.runtime.scanning import scanner_of
    from engine.scanner import compile_scanner

    report = validate([str(COMPOSITE)])
    assert not report.errors
    doc = report.workspace.load(COMPOSITE)
    sp = compile_scanner(scanner_of(doc, report.workspace))
    labels = [n.label for n in sp.plan.nodes]
    # one node per distinct term (a constant's type is part of it: `true` is not the number 1)
    assert len(labels) == len(set((n.op, tuple((type(a), a) for a in n.attrs), n.args) for n in sp.plan.nodes))
    assert labels.count("sma(volume, 20)") == 1         # energy, liquidity and options_liquidity share it
    assert labels.count("ema(close, 8)") == 1
    users = sp.plan.users()
    sma = labels.index("sma(volume, 20)")
    assert {"factor.energy", "factor.liquidity", "factor.options_liquidity"} <= set(users[sma])
    assert [name for name, _ in sp.factors] == ["energy", "liquidity", "volatility", "conviction",
                                                "options_liquidity"]


def test_a_scan_at_t_reads_only_bars_closed_by_t():
    """Every scan of the composite over the bundled history equals the scan made from the bars
    cut at that scan's time: no scan sees a later bar."""
    from engine.check import validate
    from engine.market.bars import load_bars
    from engine.runtime.scanning import scanner_of, symbol_inputs
    from engine.scanner import compile_scanner, run_scan

    report = validate([str(COMPOSITE)])
    ws = report.workspace
    spec = scanner_of(ws.load(COMPOSITE), ws)
    sp = compile_scanner(spec)
    frames = load_bars(DATA, symbols=["SPY", "AAPL", "INTC"], timezone=NY)
    full = run_scan(sp, symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws), bar_seconds=86400,
                    universe=spec.universe)
    assert len(full.times) > 5000 and full.picked.any(axis=1).sum() > 2000
    for day in ("2008-02-15", "2011-08-08", "2016-06-24"):
        cut = {s: f[f.index <= pd.Timestamp(day, tz=NY)] for s, f in frames.items()}
        part = run_scan(sp, symbol_inputs(sp, cut, bar="1d", timezone=NY, ws=ws), bar_seconds=86400,
                        universe=spec.universe)
        e = len(part.times) - 1
        assert full.times[e] == part.times[e]
        assert full.rows(e) == part.rows(e), day


def test_rescans_on_the_bar_clock():
    from engine.scanner.workspace import SymbolInput, scan_times

    day = 86_400 * 10**9
    ends = np.array([d * day for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 15)], dtype=np.int64)
    inputs = {"X": SymbolInput("X", ends, None)}
    assert scan_times(inputs, None).tolist() == ends.tolist()
    assert (scan_times(inputs, 7 * 86400) // day).tolist() == [1, 8, 15]
    assert (scan_times(inputs, 300) // day).tolist() == (ends // day).tolist()     # 5m on daily bars: every close


# ---- bad input: located errors from validate and from scan --------------------------------

@pytest.mark.parametrize("change, line_of, message", [
    (lambda d: d["factors"]["price"].update(weight=1.5), "weight: 1.5", "factors.price.weight must be <= 1"),
    (lambda d: d["factors"]["price"].update(normalise="rnk"), "normalise: rnk", "'rnk'"),
    (lambda d: d.update(top=0), "top: 0", "top"),
    (lambda d: d["classes"][0].update(when="price + 1"), "when: price + 1", "must be true or false"),
    (lambda d: d["classes"][0].update(when="sma(price, 3) > 0.5"), "when: sma(price, 3) > 0.5",
     "looks back over 'price'"),
    (lambda d: d["factors"]["move"].update(clip=[1, 0]), "- 1", "clip [1, 0] is empty"),
    (lambda d: d["factors"].update(close={"expr": "close", "weight": 0.1}), "close:", "has the name of a bar field"),
])
def test_bad_scanner_input_is_an_error_at_its_line(tmp_path, change, line_of, message):
    doc = scanner_doc()
    change(doc)
    path = write(tmp_path, doc)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), start=1) if t.strip().startswith(line_of))
    for command in (("validate", path), ("scan", path)):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        found = re.findall(r"s\.yaml:(\d+):(\d+): error: ([^\n]+)", result.output)
        assert found and any(int(ln) == line and message in text for ln, _, text in found), (command, found)


# ---- qtrade scan ----------------------------------------------------------------------------

def test_qtrade_scan_of_the_example_with_no_flags_prints_a_ranked_table():
    result = cli("scan", COMPOSITE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "composite: 67 symbols on 1d bars, scanned at 2018-01-19 close (America/New_York)"
    assert lines[1] == "1 of 67 picked: 2 had stale data, 64 had no data"
    assert re.match(r"rank +symbol +score +grade +class +energy 30% +liquidity 25% +volatility 20% +conviction 15% "
                    r"+options_liquidity 10%", lines[3])
    assert re.match(r" +1 +AAPL +50\.0 +B +unclassified", lines[5])
    assert "64 with no data (no bars in strategies/data): ABBV, ABT," in result.stdout


def test_qtrade_scan_formats_and_report(tmp_path):
    at = ("--at", "2012-06-01")
    data = scan_json(COMPOSITE, *at)
    assert data["when"] == "2012-06-01 close" and data["universe"] == 67 and data["top"] == 25
    scored = [r for r in data["rows"] if r["rank"] is not None]
    assert [r["symbol"] for r in scored] == ["SPY", "AAPL"]
    for r in scored:       # contributions add up to the score
        assert sum(f["contribution"] for f in r["factors"].values()) == pytest.approx(r["score"])
    csv = cli("scan", COMPOSITE, "--format", "csv", *at).stdout.splitlines()
    assert csv[0].startswith("rank,symbol,status,picked,score,grade,class,energy_raw,energy_score,")
    assert csv[1].startswith("1,SPY,picked,yes,")
    out = tmp_path / "scan.html"
    result = cli("scan", COMPOSITE, *at, "--report", out)
    assert result.exit_code == 0 and f"report: {out}" in result.stdout
    html = out.read_text()
    assert '<meta name="generator" content="qtrade">' in html and "http" not in html.replace(
        "http-equiv", "")
    assert html.count('<div class="bar">') == 2 and '<span class="cls">directional</span>' in html
    assert "stale data: its last bar is 2004-04-08" in html
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    result = cli("scan", COMPOSITE, "--report", other)
    assert result.exit_code == 2 and "is not a qtrade report" in result.output and other.read_text() == "mine"


def test_qtrade_scan_takes_set_and_data_and_a_strategy(tmp_path):
    base = scan_json(COMPOSITE, "--at", "2012-06-01")
    raised = scan_json(COMPOSITE, "--at", "2012-06-01", "--set", "min_volume=1e9")
    assert base["picked"] == 1 and raised["picked"] == 0      # AAPL scores 20, below min_score 30
    assert raised["explanation"].startswith("0 passed the prefilter: 2 had volume < 1e9")
    result = cli("scan", COMPOSITE, "--set", "nope=1")
    assert result.exit_code == 2
    only = tmp_path / "only"
    only.mkdir()
    (only / "SPY.csv").write_text((DATA / "SPY.csv").read_text())
    data = scan_json(COMPOSITE, "--at", "2012-06-01", "--data", only)
    assert data["explanation"] == "1 of 67 picked: 66 had no data"
    strategy = scan_json(ROOT / "strategies" / "composite_scanner.yaml", "--at", "2012-06-01")
    assert strategy["rows"] == base["rows"]
    result = cli("scan", ROOT / "strategies" / "sma_crossover.yaml")
    assert result.exit_code == 1 and "this strategy has no scanner" in result.output


@pytest.mark.parametrize("key, value", [("chains", "chains.csv"), ("subscriptions", {"max_lines": 10}),
                                        ("what_to_show", "midpoint")])
def test_what_only_a_strategys_data_means_is_refused_in_a_scanners(tmp_path, key, value):
    from engine.check.support import NOT_SUPPORTED

    doc = scanner_doc()
    doc["data"][key] = value
    path = write(tmp_path, doc)
    lines = path.read_text().splitlines()
    line = next(i for i, t in enumerate(lines, start=1) if t.strip().startswith(f"{key}:"))
    result = cli("validate", path)
    assert result.exit_code == 1
    found = re.findall(r"s\.yaml:(\d+):\d+: error: ([^\n]+)", result.output)
    assert [(int(ln), text.split(":")[0]) for ln, text in found] == [(line, f"data.{key}")]
    assert found[0][1].endswith(NOT_SUPPORTED)
    assert cli("scan", path).exit_code == 1
    assert cli("validate", write(tmp_path, {**doc, "data": {**doc["data"], "what_to_show": "trades"}}) if key ==
               "what_to_show" else path).exit_code == (0 if key == "what_to_show" else 1)


def test_a_factor_may_read_another_symbol_of_the_universe_or_not(tmp_path):
    """Relative strength against SPY (in the universe) and VIX (not in it, so not scanned)."""
    from engine.market.bars import load_bars

    doc = scanner_doc(factors={"relative": {"expr": 'close / symbol("SPY").close', "weight": 0.5},
                               "calm": {"expr": '0 - symbol("VIX").close + close * 0', "weight": 0.5}}, classes=[])
    data = scan_json(write(tmp_path, doc), "--at", "2012-06-01")
    rows = {r["symbol"]: r for r in data["rows"]}
    assert "VIX" not in rows and rows["SPY"]["factors"]["relative"]["raw"] == pytest.approx(1.0)
    frames = load_bars(DATA, symbols=["SPY", "AAPL", "VIX"], timezone=NY)
    day = pd.Timestamp("2012-06-01", tz=NY)
    close = {s: f[f.index <= day]["close"].iloc[-1] for s, f in frames.items()}
    assert rows["AAPL"]["factors"]["relative"]["raw"] == pytest.approx(close["AAPL"] / close["SPY"])
    assert rows["AAPL"]["factors"]["calm"]["raw"] == pytest.approx(-close["VIX"])
    inline = {"kind": "strategy", "name": "t", "universe": ["SPY", "AAPL"], "data": {"bar": "1d", "source": str(DATA) + "/"},
              "scanner": {k: v for k, v in doc.items() if k not in ("kind", "name", "universe", "data")},
              "entry": [{"name": "e", "when": "scan.picked", "order": "buy"}],
              "orders": {"buy": {"action": "buy", "type": "market"}}}
    data = scan_json(write(tmp_path, inline, "t.yaml"), "--at", "2012-06-01")
    assert {r["symbol"] for r in data["rows"] if r["rank"]} == {"SPY", "AAPL"}

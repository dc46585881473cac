"""The HTML report in a real browser: headless Chromium loads it offline, runs its one script
without console errors, and the dumped DOM holds charts with drawn paths. A screenshot is kept
in the test's tmp directory (its path is printed) for a person to look at."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.report.html import write_report
from engine.runtime.journal import Journal

CHROMIUM = Path("/usr/bin/chromium")
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPY_CSV = DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="headless Chromium not installed (/usr/bin/chromium; apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def console_problems(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (`CONSOLE(n)`) that are errors, and any
    uncaught exception or failed load of a page resource."""
    bad = []
    for line in stderr.splitlines():
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line or "Error" in line):
            bad.append(line)
        elif "Uncaught" in line or "net::ERR_" in line:
            bad.append(line)
    return bad


def _iso(index: pd.DatetimeIndex) -> list[str]:
    return list(np.datetime_as_string(index.tz_convert(None).to_numpy().astype("datetime64[s]"), unit="s") + "Z")


def _bars() -> pd.DataFrame:
    if SPY_CSV.exists():
        frame = pd.read_csv(SPY_CSV, parse_dates=["Date"]).set_index("Date")
        frame.index = frame.index.tz_localize("UTC")
        return frame
    # no shared data: a random walk keeps the browser test meaningful
    idx = pd.bdate_range("2015-01-01", periods=1500, tz="UTC")
    close = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0.0003, 0.01, idx.size)))
    return pd.DataFrame({"Open": close, "High": close * 1.01, "Low": close * 0.99, "Close": close}, index=idx)


def build_journal(path: Path) -> None:
    """A long-only 20/50 SMA crossover on SPY closes, all in at the close, journaled."""
    bars = _bars()
    close = bars["Close"].to_numpy(dtype=float)
    sma = lambda n: np.convolve(close, np.ones(n) / n, "full")[: close.size]
    want = np.zeros(close.size, dtype=bool)
    want[49:] = sma(20)[49:] > sma(50)[49:]
    ts = _iso(bars.index)
    cash, qty, entry, equity, trades = 100_000.0, 0, None, [], []
    for i, c in enumerate(close):
        if not qty and want[i]:
            qty, entry = int(cash // c), i
            cash -= qty * c
        elif qty and (not want[i] or i == close.size - 1):
            cash += qty * c
            pnl = qty * (c - close[entry])
            trades.append(("SPY", "long", qty, ts[entry], close[entry], ts[i], c, pnl,
                           pnl / (qty * close[entry]) * 100, i - entry, 0.0, "golden cross", "death cross"))
            qty = 0
        equity.append(cash + qty * c)
    with Journal(path) as j:
        rid = j.start_run("backtest", "sma <cross> \"demo\"", strategy_text="kind: strategy\nname: demo # <b>\n",
                          params={"fast": 20, "slow": 50, "note": "<script>alert(1)</script>"},
                          symbols=["SPY"], bar="1d", initial_cash=100_000.0)
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               zip([rid] * len(ts), ["SPY"] * len(ts), ts, bars["Open"], bars["High"], bars["Low"], bars["Close"]))
        j.many("equity", ["run_id", "ts", "cash", "equity"], zip([rid] * len(ts), ts, equity, equity))
        j.many("trades", ["symbol", "side", "quantity", "entry_ts", "entry_price", "exit_ts", "exit_price", "pnl",
                          "return_pct", "bars_held", "commission", "entry_rule", "exit_rule", "run_id"],
               [t + (rid,) for t in trades])
        j.finish_run(rid, "finished")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    build_journal(tmp / "journal.sqlite")
    return write_report(tmp / "journal.sqlite", tmp / "report.html")


def test_console_check_is_not_vacuous(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>not_defined_anywhere();</script></body></html>")
    result = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert console_problems(result.stderr), result.stderr[-2000:]


def test_report_renders_in_chromium_without_errors(report, tmp_path):
    result = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_problems(result.stderr) == []
    dom = result.stdout
    # the sorting script ran (it marks the table) and the user's text stayed text
    assert re.search(r'<table class="trades sortable"', dom)
    assert "<script>alert(1)</script>" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    # every trade is a row of the table (built in Python, parsed by the browser as the template's were)
    with sqlite3.connect(report.parent / "journal.sqlite") as con:
        trades = con.execute("SELECT COUNT(*) FROM trades").fetchone()[0]
    table = re.search(r'<table class="trades sortable".*?</table>', dom, re.S).group(0)
    assert trades > 10 and table.count("<tr>") == trades + 1 and table.count('<td class="l">SPY</td>') == trades
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table.split("</thead>")[0])
    assert len(headers) == len(set(headers)) and {"Exit", "Exit rule"} <= set(headers), headers   # each says what it is
    svgs = re.findall(r"<svg\b.*?</svg>", dom, re.S)
    assert len(svgs) == 5                                        # equity (linear, log), drawdown, price, P&L histogram
    for chart in svgs:
        if 'class="chart histogram"' in chart:
            assert chart.count('<rect class="bin') >= 3
            continue
        ds = re.findall(r'<path[^>]*\bd="([^"]*)"', chart)
        assert ds and all(len(d) > 20 for d in ds)
    price = next(s for s in svgs if 'class="chart price"' in s)
    assert price.count('class="mark entry"') >= 10 and price.count('class="mark exit"') >= 10


def test_screenshot(report, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, "--window-size=1280,4200", f"--screenshot={shot}", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_problems(result.stderr) == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000    # a blank page compresses to a few kB
    print(f"\nscreenshot: {shot}")


LAYOUT_PROBE = """<script>
(function () {
  // what a person would see as clipped or overlapping: a setup column's content wider than the
  // column (it runs into the next one), a table wider than the box it scrolls in, a metric
  // card's note running out of its card
  var out = {columns: [], tables: [], cards: []};
  document.querySelectorAll(".cols > div").forEach(function (col) {
    var box = col.getBoundingClientRect();
    col.querySelectorAll("table").forEach(function (t) {
      var r = t.getBoundingClientRect();
      out.columns.push({section: col.parentElement.id, table: t.className, right: r.right, limit: box.right + 1});
    });
  });
  document.querySelectorAll(".trades-wrap, .scroll").forEach(function (wrap) {
    var t = wrap.querySelector("table");
    if (t) out.tables.push({table: t.className, width: t.scrollWidth, box: wrap.clientWidth});
  });
  document.querySelectorAll(".metric").forEach(function (card) {
    out.cards.push({metric: card.getAttribute("data-metric"), width: card.scrollWidth, box: card.clientWidth});
  });
  document.body.setAttribute("data-layout", JSON.stringify(out));
})();
</script>"""


def option_journal(path: Path) -> None:
    """An SPX condor run like strategies/spxw_condor.yaml's: four named legs per trade, a long
    data path in the settings, described params (the report that clipped its legs column)."""
    days = pd.bdate_range("2018-01-02", "2018-02-28", tz="America/New_York").tz_convert("UTC")
    ts = _iso(days)
    spx = 2700 + np.cumsum(np.random.default_rng(8).normal(0, 15, days.size))
    legs = lambda k, exp: json.dumps({"legs": [
        {"name": "short_put", "right": "put", "action": "sell", "ratio": 1, "strike": 2620.0 + k, "expiry": exp},
        {"name": "long_put", "right": "put", "action": "buy", "ratio": 1, "strike": 2570.0 + k, "expiry": exp},
        {"name": "short_call", "right": "call", "action": "sell", "ratio": 1, "strike": 2740.0 + k, "expiry": exp},
        {"name": "long_call", "right": "call", "action": "buy", "ratio": 1, "strike": 2790.0 + k, "expiry": exp}],
        "credit": 5.8, "underlying_entry": float(spx[1 + k % 5]), "underlying_exit": float(spx[4 + k % 5])})
    with Journal(path) as j:
        rid = j.start_run("backtest", "spx-monthly-iron-condor", strategy_path="strategies/spxw_condor.yaml",
                          params={"short_delta": 0.16, "wing": 50, "min_credit": 3.0, "take_profit": 0.5,
                                  "stop_multiple": 2, "exit_dte": 7},
                          strategy_text="params:\n  short_delta: {value: 0.16, description: Absolute delta of the "
                                        "short put and call}\n  wing: {value: 50, description: Points between each "
                                        "short strike and its wing}\n",
                          settings={"cash": 100000, "commission": {"per_contract": 0.65},
                                    "data": "/work/shared/data/optopsy_v1/test_options_data_full.csv",
                                    "options": {"fill_fraction": 0.5}, "timezone": "America/New_York"},
                          symbols=["SPX"], bar="1d", initial_cash=100_000.0)
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               [(rid, "SPX", t, c, c, c, c) for t, c in zip(ts, spx)])
        equity = 100_000 + np.cumsum(np.random.default_rng(9).normal(0, 80, days.size))
        j.many("equity", ["run_id", "ts", "cash", "equity"], zip([rid] * len(ts), ts, equity, equity))
        j.many("trades", ["run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price", "exit_ts",
                          "exit_price", "pnl", "return_pct", "bars_held", "commission", "entry_rule", "exit_rule",
                          "exit_reason", "legs"],
               [(rid, "SPX", "short", 1, 100, ts[1 + 8 * k], 5.8, ts[4 + 8 * k], 2.9 + k, 290.0 - 100 * k,
                 (290.0 - 100 * k) / 44.2, 3, 5.2, "enough credit", "take profit", "half the credit earned",
                 legs(k, "2018-02-16")) for k in range(4)])
        j.finish_run(rid, "finished")


def test_nothing_is_clipped_or_overlapping(tmp_path):
    option_journal(tmp_path / "spx.sqlite")
    report = write_report(tmp_path / "spx.sqlite", tmp_path / "spx.html")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"),
                     encoding="utf-8")
    result = chromium(tmp_path, "--window-size=1400,3000", "--dump-dom", probe.as_uri())
    assert result.returncode == 0 and console_problems(result.stderr) == [], result.stderr[-2000:]
    raw = re.search(r'data-layout="([^"]*)"', result.stdout).group(1)
    layout = json.loads(html.unescape(raw))
    assert {c["table"] for c in layout["columns"]} >= {"params", "settings", "counts"}
    for c in layout["columns"]:                 # the settings' long path wraps inside its column
        assert c["right"] <= c["limit"], c
    tables = {t["table"]: t for t in layout["tables"]}
    assert "trades sortable" in tables and "exit-reasons" in tables
    for t in layout["tables"]:                  # at 1400 px every table fits its box, legs and credit too
        assert t["width"] <= t["box"], t
    for card in layout["cards"]:
        assert card["width"] <= card["box"], card
    shot = tmp_path / "spx.png"
    chromium(tmp_path, "--window-size=1400,3000", f"--screenshot={shot}", report.as_uri())
    print(f"\nscreenshot: {shot}")

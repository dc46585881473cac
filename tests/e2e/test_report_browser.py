"""The HTML report in a real browser: headless Chromium loads it offline, runs its one script
without console errors, and the dumped DOM holds charts with drawn paths. A screenshot is kept
in the test's tmp directory (its path is printed) for a person to look at."""

from __future__ import annotations

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
    svgs = re.findall(r"<svg\b.*?</svg>", dom, re.S)
    assert len(svgs) == 3                                        # equity, drawdown, price
    for chart in svgs:
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

"""runtime/livescan.py without a broker: a live scan over the bars as they come gives the same
row as the simulated scan over the same bars, waits for every scanned name's bar of its close,
and after the bounded wait counts a late name as no data with the reason (the end-to-end run on
IB is tests/e2e/test_scanner_on_ib.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from engine.runtime import backtest as bt
from engine.runtime.live import Bar
from engine.runtime.livescan import LiveScan
from engine.scanner.compile import compile_scanner
from engine.scanner.result import NO_DATA
from engine.runtime.scanning import scanner_of
from test_scan_runs import DATA, strategy

CUT = "2012-06-01"


def _cut(tmp_path: Path, through: str | None) -> Path:
    folder = tmp_path / (f"cut-{through}" if through else "all")
    folder.mkdir(exist_ok=True)
    for name in ("SPY", "AAPL"):
        frame = pd.read_csv(DATA / f"{name}.csv")
        if through:
            frame = frame[frame["Date"] <= through]
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def _prep(tmp_path: Path, through: str | None):
    doc = strategy(data={"bar": "1d", "source": str(_cut(tmp_path, through)) + "/"})
    doc.pop("backtest")
    path = tmp_path / f"s-{through}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return bt.prepare(path)


def _bar(frame: pd.DataFrame, day: pd.Timestamp) -> Bar:
    row = frame.loc[day]
    return Bar(int(day.value), float(row.open), float(row.high), float(row.low), float(row.close), float(row.volume))


def _live(prep) -> LiveScan:
    sp = compile_scanner(scanner_of(prep.doc, prep.ws))
    return LiveScan(prep.scan, sp, prep.scan.frames, bar=prep.bar, timezone=prep.timezone, ws=prep.ws,
                    universe=prep.scan.result.symbols, wait=3600)


def test_a_live_scan_equals_the_simulated_scan_and_a_late_name_is_no_data_with_its_reason(tmp_path):
    early, full = _prep(tmp_path, CUT), _prep(tmp_path, None)
    live = _live(early)
    rows_before = len(early.scan.result.times)
    days = [d for d in full.frames["SPY"].index if d > early.frames["SPY"].index[-1]][:3]
    day = pd.Timedelta(days=1).value
    # day 1: both names' bars: the scan at that close runs at once, as the simulated one did
    for name in ("SPY", "AAPL"):
        live.observe(name, _bar(full.frames[name], days[0]))
    end = int(days[0].value) + day
    assert live.holds(end, end + 10**9)              # a traded bar of that close waits for its scan
    assert live.advance(end + 10**9) == 1
    assert not live.holds(end, end + 10**9)
    r, f = early.scan.result, full.scan.result
    e, g = len(r.times) - 1, f.at(end)
    assert e == rows_before and int(r.times[e]) == int(f.times[g]) == end
    for name in ("rank", "score"):
        a, b = getattr(r, name)[e], getattr(f, name)[g]
        assert np.allclose(a, b, equal_nan=True), name
    assert (r.picked[e] == f.picked[g]).all() and list(r.klass[e]) == list(f.klass[g])
    # day 2: only SPY's bar has come: a traded bar of that close waits, and so does the scan
    live.observe("SPY", _bar(full.frames["SPY"], days[1]))
    end = int(days[1].value) + day
    assert live.advance(end + 10**9) == 0 and live.holds(end, end + 10**9)
    # the bounded wait (an hour here) over: the scan runs, AAPL counted as no data, with why
    assert live.advance(end + 3601 * 10**9) == 1 and not live.holds(end, end + 3601 * 10**9)
    e = len(r.times) - 1
    s = r.symbols.index("AAPL")
    assert int(r.times[e]) == end and r.status[e, s] == NO_DATA and not r.picked[e, s]
    assert r.reason(e, s).startswith("no data: its bar closing at ") and "had not come from the broker 3600 s " \
        "after the close (late, or it did not trade)" in r.reason(e, s)
    assert live.runs[-1].late == ("AAPL",)
    # what scan.* reads at SPY's bars is the extended result's latest row
    arrays = early.scan.arrays("SPY", np.array([end]), ["rank", "picked"])
    assert arrays["rank"][0] == r.rank[e, r.symbols.index("SPY")]

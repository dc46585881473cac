"""A scanner's candidates from IB's market scanner (source.ib_scanner), outside an IB run:
validate checks the request (scan codes, rows, filters, a universe or a source), the typed model
carries it, every mode that cannot ask IB refuses it at its line with how to backtest, and
`qtrade scan --data` ranks the universe's files and says so. The live scan's candidates (the rest
of the universe scored no data with the reason) without a broker. The run on IB itself:
tests/e2e/test_ib_scanner_source.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "strategies" / "data"
SOURCE = {"ib_scanner": {"scan_code": "TOP_PERC_GAIN", "location": "STK.US.MAJOR", "rows": 20,
                         "filters": {"price_above": 10, "volume_above": 1_000_000}}}


def scanner_doc(**extra) -> dict:
    return {"kind": "scanner", "name": "c", "universe": ["SPY", "AAPL", "INTC"],
            "data": {"bar": "1d", "source": str(DATA) + "/"},
            "factors": {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.6},
                        "liquidity": {"expr": "log(close * sma(volume, 20))", "weight": 0.4}},
            "top": 1, **extra}


def strategy_doc(scanner) -> dict:
    return {"kind": "strategy", "name": "sourced", "universe": ["SPY", "AAPL"],
            "data": {"bar": "1d", "source": str(DATA) + "/"},
            "scanner": scanner,
            "entry": [{"name": "pick", "when": "close > 0", "order": "buy"}],
            "exit": [{"name": "dropped", "when": "not scan.picked"}],
            "orders": {"buy": {"action": "buy", "type": "market", "quantity": 1}},
            "risk": {"margin_check": "off"}}


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def inline(tmp_path: Path, **ib) -> Path:
    body = {k: v for k, v in scanner_doc().items() if k not in ("kind", "name", "universe", "data")}
    body["source"] = {"ib_scanner": {**SOURCE["ib_scanner"], **ib}}
    return write(tmp_path, "s.yaml", strategy_doc(body))


def test_validate_accepts_the_source_and_refuses_an_unknown_scan_code_rows_over_50_and_unknown_filters(tmp_path):
    assert run("validate", inline(tmp_path)).exit_code == 0
    path = inline(tmp_path, scan_code="TOP_GAINERS", rows=60, filters={"price_abov": 10})
    out = run("validate", path)
    assert out.exit_code != 0
    row = line_of(path, "TOP_GAINERS")
    assert f"s.yaml:{row}:" in out.output
    assert "scan_code: 'TOP_GAINERS' is not allowed" in out.output
    assert "allowed values: TOP_PERC_GAIN, TOP_PERC_LOSE, MOST_ACTIVE, HOT_BY_VOLUME" in out.output
    assert "rows must be <= 50, got 60" in out.output
    assert "unknown key 'price_abov'" in out.output and "did you mean 'price_above'" in out.output
    assert "Traceback" not in out.output


def test_a_scanner_file_needs_a_universe_or_a_source(tmp_path):
    bare = scanner_doc()
    del bare["universe"]
    path = write(tmp_path, "c.yaml", bare)
    out = run("validate", path)
    assert out.exit_code != 0 and "a scanner file needs a universe" in out.output and "c.yaml:1:" in out.output
    assert run("validate", write(tmp_path, "c.yaml", {**bare, "source": SOURCE})).exit_code == 0


def test_the_typed_model_carries_the_request_as_ib_is_sent_it(tmp_path):
    from engine.brokers.ib.scanner import subscription_of
    from engine.plan.build import load_strategy
    from engine.runtime.scanning import scanner_of

    doc, ws = load_strategy(str(inline(tmp_path)), {})
    source = scanner_of(doc, ws).source
    assert (source.scan_code, source.instrument, source.location, source.rows) == ("TOP_PERC_GAIN", "STK",
                                                                                 "STK.US.MAJOR", 20)
    assert source.filters == (("priceAbove", 10.0), ("volumeAbove", 1_000_000.0))
    assert source.where == ("scanner", "source", "ib_scanner")
    sub, tags = subscription_of(source)
    assert (sub.scanCode, sub.numberOfRows, sub.locationCode) == ("TOP_PERC_GAIN", 20, "STK.US.MAJOR")
    assert [(t.tag, t.value) for t in tags] == [("priceAbove", "10"), ("volumeAbove", "1000000")]
    # a scanner file without a universe is bounded by the strategy's: its universe is None
    c = write(tmp_path, "c.yaml", {k: v for k, v in scanner_doc(source=SOURCE).items() if k != "universe"})
    doc, ws = load_strategy(str(write(tmp_path, "t.yaml", strategy_doc(c.name))), {})
    spec = scanner_of(doc, ws)
    assert spec.universe is None and spec.source.where == ("source", "ib_scanner")


@pytest.mark.parametrize("mode", [("backtest",), ("run", "--broker", "sim"), ("run", "--dry-run", "--broker", "sim")])
def test_modes_that_cannot_ask_ib_refuse_the_source_at_its_line(tmp_path, mode):
    path = inline(tmp_path)
    out = run(*mode, path, "--journal", tmp_path / "j.sqlite")
    assert out.exit_code == 1
    row = line_of(path, "scan_code:")
    assert f"s.yaml:{row}:" in out.output
    assert "cannot ask IB's market scanner, which ranks the market now and keeps no history" in out.output
    assert "remove source:" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "j.sqlite").exists() or "fills" not in out.output


def test_the_source_in_a_scanner_file_is_refused_at_its_line_in_that_file(tmp_path):
    c = write(tmp_path, "c.yaml", scanner_doc(source=SOURCE))
    s = write(tmp_path, "s.yaml", strategy_doc("c.yaml"))
    out = run("backtest", s, "--journal", tmp_path / "j.sqlite")
    assert out.exit_code == 1 and f"c.yaml:{line_of(c, 'scan_code:')}:" in out.output


def test_qtrade_scan_refuses_without_data_and_with_data_ranks_the_universe_and_says_so(tmp_path):
    c = write(tmp_path, "c.yaml", scanner_doc(source=SOURCE))
    out = run("scan", c, "--at", "2012-06-01")
    assert out.exit_code == 1 and f"c.yaml:{line_of(c, 'scan_code:')}:" in out.output
    assert "without --data cannot ask IB's market scanner" in out.output
    ranked = run("scan", c, "--at", "2012-06-01", "--data", DATA, "--format", "json")
    assert ranked.exit_code == 0, ranked.output
    assert "note: IB's TOP_PERC_GAIN scanner (STK STK.US.MAJOR, 20 rows, priceAbove 10, volumeAbove 1e+06) is not " \
           "asked: the universe's names in --data are ranked" in ranked.stderr
    plain = run("scan", write(tmp_path, "d.yaml", scanner_doc()), "--at", "2012-06-01", "--format", "json")
    assert json.loads(ranked.stdout) == json.loads(plain.stdout)       # the same ranking as without the source
    bare = write(tmp_path, "e.yaml", {k: v for k, v in scanner_doc(source=SOURCE).items() if k != "universe"})
    out = run("scan", bare, "--data", DATA)
    assert out.exit_code == 1 and "this scanner has none" in out.output


def test_the_live_scan_scores_its_candidates_and_gives_the_rest_of_the_universe_the_reason(tmp_path):
    """LiveScan without a broker: with candidates named, only they are scored (and ranked among
    themselves), the other names are no data with the source's reason."""
    from engine.runtime import backtest as bt
    from engine.runtime.live import Bar
    from engine.runtime.livescan import LiveScan
    from engine.runtime.scanning import scanner_of
    from engine.scanner.compile import compile_scanner
    from engine.scanner.result import NO_DATA
    import pandas as pd

    minute = tmp_path / "m"
    minute.mkdir()
    rng = np.random.default_rng(7)
    idx = pd.date_range("2024-03-04 09:30", periods=60, freq="1min")
    last = {}
    for k, name in enumerate(["SCANA", "SCANB", "SCANC"]):
        close = 100 + np.cumsum(rng.normal(0, 0.2 + 0.1 * k, len(idx)))
        bars = pd.DataFrame({"timestamp": idx.strftime("%Y-%m-%d %H:%M:%S"), "open": close, "high": close + 0.1,
                             "low": close - 0.1, "close": close, "volume": 1000.0 * (k + 1)})
        bars.iloc[:-1].to_csv(minute / f"{name}.csv", index=False)        # the last bar comes live
        last[name] = bars.iloc[-1]
    doc = {"kind": "strategy", "name": "m", "universe": ["SCANA", "SCANB", "SCANC"],
           "data": {"bar": "1m", "source": str(minute) + "/", "session": "extended"},
           "scanner": {"factors": {"momentum": {"expr": "roc(close, 5)", "weight": 1}}, "top": 1},
           "entry": [{"name": "pick", "when": "close > 0", "order": "buy"}],
           "orders": {"buy": {"action": "buy", "type": "market", "quantity": 1}},
           "schedule": {"timezone": "America/New_York"}, "risk": {"margin_check": "off"}}
    path = write(tmp_path, "m.yaml", doc)
    prep = bt.prepare(path)
    spec = scanner_of(prep.doc, prep.ws)
    live = LiveScan(prep.scan, compile_scanner(spec), prep.scan.frames, bar="1m", timezone="America/New_York",
                    ws=prep.ws, universe=prep.scan.result.symbols)
    live.candidates = {"SCANA", "SCANC"}
    live.not_candidate = "not among the candidates of IB's scanner at this scan"
    asked = []
    live.before_scan = asked.append
    assert live.expected() == ["SCANA", "SCANC"]
    for s in ("SCANA", "SCANC"):       # SCANB's bar never comes: it is no candidate, the scan does not wait
        row = last[s]
        start = int(pd.Timestamp(row.timestamp, tz="America/New_York").value)
        live.observe(s, Bar(start, float(row.open), float(row.high), float(row.low), float(row.close),
                            float(row.volume)))
    end = live.latest["SCANA"]
    assert live.advance(end) == 1 and asked == [end]
    r = prep.scan.result
    e = len(r.times) - 1
    b = r.symbols.index("SCANB")
    assert r.status[e, b] == NO_DATA and not r.picked[e, b]
    assert r.reason(e, b) == "not among the candidates of IB's scanner at this scan"
    scored = [s for s in ("SCANA", "SCANC") if r.status[e, r.symbols.index(s)] != NO_DATA]
    assert scored == ["SCANA", "SCANC"] and sorted(int(r.rank[e, r.symbols.index(s)]) for s in scored) == [1, 2]
    assert sum(bool(r.picked[e, r.symbols.index(s)]) for s in scored) == 1

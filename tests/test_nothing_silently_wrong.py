"""Issue 14, "nothing silently wrong": bad data, unbounded inputs, unchecked CLI values, a
journal overwritten by mistake and raw control characters, each tried through the real `qtrade`
command (click's CliRunner) on hand-made files, with the message and the exit code asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
SPY = ROOT / "strategies" / "data" / "SPY.csv"

STRATEGY = """\
kind: strategy
name: t
universe: [SPY]
data: {{bar: 1d, history: 40 bars, source: {source}}}
indicators:
  fast: sma(close, 5)
  slow: sma(close, 20)
entry:
  - name: up
    when: {when}
    order: buy
exit:
  - name: down
    when: crosses_below(fast, slow)
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
schedule: {{timezone: America/New_York, every: 1d}}
risk: {{max_open_positions: 1, margin_check: off}}
"""


def cli(*args, **kw):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True, **kw)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code != 70, result.output  # the "internal error" exit code
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def strategy(tmp_path, source="SPY.csv", when="crosses_above(fast, slow)", name="s.yaml", text=None) -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else STRATEGY.format(source=source, when=when))
    return path


def spy_with(tmp_path, line: int, row: str | None) -> Path:
    """strategies/data/SPY.csv copied with its line `line` replaced by `row` (None: header only)."""
    lines = SPY.read_text().splitlines()
    if row is None:
        lines = lines[:1]
    else:
        lines[line - 1] = row
    path = tmp_path / "SPY.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ item 4: bad data is refused

@pytest.mark.parametrize("row, where, message", [
    (None, ":1:1:", "no bars: the file has a header but no rows with prices"),
    ("2008-01-03,144.910004,145.490005,144.070007,,117.602448,125133300", ":4:45:",
     "missing close price in a bar that has other prices (column 'Close')"),
    ("2008-01-03,144.910004,145.490005,144.070007,nan,117.602448,125133300", ":4:45:",
     "missing close price in a bar that has other prices (column 'Close')"),
    ("2008-01-03,inf,145.490005,144.070007,144.86,117.602448,125133300", ":4:12:",
     "open price is inf (column 'Open')"),
    ("2008-01-03,144.910004,145.490005,0,144.86,117.602448,125133300", ":4:34:",
     "low price is 0: prices must be above zero (column 'Low')"),
    ("2008-01-03,144.910004,-145.49,144.070007,144.86,117.602448,125133300", ":4:23:",
     "high price is -145.49: prices must be above zero (column 'High')"),
    ("2008-01-03,144.910004,140.0,144.070007,144.86,117.602448,125133300", ":4:23:",
     "high 140 is below the low 144.07 (column 'High')"),
])
def test_backtest_refuses_bad_bars_with_file_line_and_column(tmp_path, row, where, message):
    data = spy_with(tmp_path, 4, row)
    result = cli("backtest", strategy(tmp_path), "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1, result.output
    assert f"{data}{where} error: {message}" in result.output
    assert "1 error: nothing was run" in result.output
    assert not (tmp_path / "j.sqlite").exists()

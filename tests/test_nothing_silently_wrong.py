"""Issue 14, "nothing silently wrong": bad data, unbounded inputs, unchecked CLI values, a
journal overwritten by mistake and raw control characters, each tried through the real `qtrade`
command (click's CliRunner) on hand-made files, with the message and the exit code asserted."""

from __future__ import annotations

import re
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


def test_skipping_bad_bars_is_explicit_and_counted(tmp_path):
    import json

    lines = SPY.read_text().splitlines()
    lines[3] = "2008-01-03,144.910004,145.490005,144.070007,,117.602448,125133300"     # line 4: no close
    lines[9] = "2008-01-11,0,145.490005,144.070007,144.86,117.602448,125133300"       # line 10: zero open
    lines[20] = "2008-01-29,138.0,137.0,139.5,138.5,117.602448,125133300"             # line 21: high < low
    (tmp_path / "SPY.csv").write_text("\n".join(lines) + "\n")
    refused = strategy(tmp_path)
    result = cli("backtest", refused, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1
    assert "or set data.on_bad_bar: skip to leave such bars out (their count is reported)" in result.output
    text = STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)").replace(
        "source: SPY.csv}", "source: SPY.csv, on_bad_bar: skip}")
    path = strategy(tmp_path, name="skip.yaml", text=text)
    assert cli("validate", path).exit_code == 0
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    assert (f"{tmp_path / 'SPY.csv'}:4:45: warning: 3 bad bars of SPY left out (data.on_bad_bar: skip); the "
            "first: missing close price in a bar that has other prices (column 'Close')") in result.output
    assert "(2,516 bars)" in result.output
    row = next(line for line in result.output.splitlines() if "Bad bars left out" in line)
    assert row.split() == ["Bad", "bars", "left", "out", "3", "data.on_bad_bar:", "skip"]
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite", "--format", "json")
    summary = json.loads(result.output[result.output.index("{"):])["summary"]
    assert summary["bad_bars_skipped"] == 3 and summary["bars"] == 2516
    bad = strategy(tmp_path, name="bad.yaml", text=text.replace("on_bad_bar: skip", "on_bad_bar: drop"))
    result = cli("validate", bad)
    assert result.exit_code == 1 and "on_bad_bar" in result.output and "skip" in result.output


def test_skipping_every_bar_is_still_an_error(tmp_path):
    from engine.diagnostics import DiagnosticError
    from engine.market.bars import load_bars

    path = tmp_path / "ALL.csv"
    path.write_text("Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,0\n2020-01-03,1,0.5,2,1\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path, on_bad_bar="skip")
    assert excinfo.value.diagnostics[0].message == (
        "no bars: the file has a header but no rows with prices once the bad ones are left out (the first: "
        "line 2: close price is 0: prices must be above zero (column 'Close'))")
    with pytest.raises(ValueError, match="on_bad_bar must be 'refuse' or 'skip'"):
        load_bars(path, on_bad_bar="drop")


# ------------------------------------------------------------------------ item 5: bounded inputs

BOMB = """\
kind: strategy
name: t
x-bomb:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bomb_is_refused_quickly_at_its_key(tmp_path):
    path = strategy(tmp_path, text=BOMB)
    result = cli("validate", path)     # (a bomb expanded in full would not come back: 10^9 values)
    assert result.exit_code == 1
    assert (f"{path}:3:1: error: 'x-bomb' expands to more than 100,000 values through YAML aliases (*name)"
            in result.output)
    # a few aliases are still fine
    small = strategy(tmp_path, name="ok.yaml", text=STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)")
                     + "description: &d one line\ntags: [*d, two]\n")
    shutil.copy(SPY, tmp_path / "SPY.csv")
    assert cli("validate", small).exit_code == 0


@pytest.mark.parametrize("when, col, message", [
    ("not " * 10000 + "close > 1", 10000, "expression is 40,009 characters long, more than the 10,000 allowed"),
    (" + ".join(["close"] * 200000) + " > 1", 10000,
     "expression is 1,600,001 characters long, more than the 10,000 allowed"),
    ("not " * 200 + "close > 1", 400, "expression is nested more than 100 levels deep"),
    ("abs(" * 150 + "close" + ")" * 150 + " > 1", 396, "expression is nested more than 100 levels deep"),
    (" + ".join(["close"] * 150) + " > 1", 408, "expression is nested more than 100 levels deep"),
])
def test_expression_length_and_depth_limits_are_located_errors(tmp_path, when, col, message):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, when=f'"{when}"')
    for command in (("validate", path), ("backtest", path, "--journal", tmp_path / "j.sqlite")):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        # the `when:` value starts at column 11 of line 10, after its opening quote
        assert f"{path}:10:{11 + 1 + col}: error: {message}" in result.output
        assert "split it into named indicators" in result.output


def test_expressions_just_inside_the_limits_run(tmp_path):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    when = "abs(" * 97 + "close" + ")" * 97 + " > 1 and " + " + ".join(["fast"] * 50) + " > 0"
    path = strategy(tmp_path, when=f'"{when}"')
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    assert "Trades" in result.output


def test_indicator_length_beyond_data_and_beyond_the_kernel(tmp_path):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    text = STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)")
    path = strategy(tmp_path, text=text.replace("sma(close, 20)", "sma(close, 5000)"))
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1, result.output
    assert (f"{path}:7:9: error: `sma(close, 5000)` needs 5,000 bars before its first value, but SPY's data "
            "holds 2,519 1d bars (2007-12-31 to 2017-12-29)") in result.output
    assert "1 error: nothing was run" in result.output   # the rules reading it are not named again
    assert not (tmp_path / "j.sqlite").exists()
    path = strategy(tmp_path, text=text.replace("sma(close, 20)", "sma(close, 300000)"))
    for command in (("validate", path), ("run", path, "--dry-run", "--journal", tmp_path / "j.sqlite")):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        assert (f"{path}:7:20: error: `length` of sma() is 300,000 bars, more than the 100,000 an indicator "
                "can look back") in result.output


def test_lag_beyond_the_history_says_what_the_data_holds(tmp_path):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, when="close > close[100000]")
    for command in (("backtest", path, "--journal", tmp_path / "j.sqlite"),
                    ("run", path, "--dry-run", "--journal", tmp_path / "j.sqlite")):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        assert (f"{path}:10:11: error: `close > close[100000]` needs 100,001 bars before its first value, but "
                "SPY's data holds 2,519 1d bars (2007-12-31 to 2017-12-29)") in result.output


@pytest.mark.parametrize("when, col, shown", [
    ("close / 0 > 1", 19, "`0` is 0, so `close / 0`"),
    ("close / (fast - fast) > 1", 20, None),           # not known before the run: no warning
    ("close / (2 - 2) > 1", 20, "`2 - 2` is 0, so `close / (2 - 2)`"),
])
def test_a_zero_divisor_known_before_the_run_warns(tmp_path, when, col, shown):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, when=when)
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    if shown is None:
        assert "division by zero" not in result.output
    else:
        assert f"{path}:10:{col}: warning: division by zero: {shown} has no value on any bar" in result.output
        assert cli("validate", "--strict", path).exit_code == 1


# ------------------------------------------------------------------------ item 6: CLI values checked

SMA = ROOT / "strategies" / "sma_crossover.yaml"


@pytest.mark.parametrize("args, message", [
    (("--cash", "-100"), "Invalid value for '--cash': must be a finite amount above 0, got -100"),
    (("--cash", "0"), "Invalid value for '--cash': must be a finite amount above 0, got 0"),
    (("--cash", "nan"), "Invalid value for '--cash': must be a finite amount above 0, got nan"),
    (("--cash", "inf"), "Invalid value for '--cash': must be a finite amount above 0, got inf"),
    (("--from", "2020-13-45"), "Invalid value for '--from': '2020-13-45' is not a date (month must be in 1..12); "
                               "write YYYY-MM-DD, e.g. 2020-01-31"),
    (("--to", "2015-02-30"), "Invalid value for '--to': '2015-02-30' is not a date (day is out of range for month)"),
    (("--from", "2015-1-1"), "Invalid value for '--from': '2015-1-1' is not a date (expected 10 characters)"),
    (("--from", "2015-01-01", "--to", "2014-01-01"), "--from 2015-01-01 is after --to 2014-01-01: the data (SPY) "
                                                     "runs from 2007-12-31 to 2017-12-29"),
    (("--from", "2019-01-01"), "--from 2019-01-01 is after the end of the data: the data (SPY) runs from "
                               "2007-12-31 to 2017-12-29"),
    (("--to", "2001-01-01"), "--to 2001-01-01 is before the start of the data: the data (SPY) runs from "
                             "2007-12-31 to 2017-12-29"),
    (("--from", "2015-01-03", "--to", "2015-01-04"), "no bars from 2015-01-03 to 2015-01-04: the data (SPY) runs "
                                                     "from 2007-12-31 to 2017-12-29"),
    (("--symbol", "QQQ"), "--symbol QQQ: the run has no bars for it; it has SPY"),
])
def test_backtest_flags_are_checked(tmp_path, args, message):
    result = cli("backtest", SMA, "--journal", tmp_path / "j.sqlite", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "j.sqlite").exists()


@pytest.mark.parametrize("backtest, command, code, message", [
    ("{start: 2020-13-45}", "validate", 1, ":40:19: error: backtest.start: '2020-13-45' is not a date "
                                           "(month must be in 1..12)"),
    ("{start: 2020-13-45}", "backtest", 1, ":40:19: error: backtest.start: '2020-13-45' is not a date"),
    ("{end: 2015-02-30}", "validate", 1, ":40:17: error: backtest.end: '2015-02-30' is not a date"),
    ("{start: 2016-01-01, end: 2015-01-01}", "validate", 1,
     ":40:19: error: backtest.start 2016-01-01 is after backtest.end 2015-01-01"),
    ("{start: 2030-01-01}", "backtest", 1, ":40:19: error: backtest.start 2030-01-01 is after the end of the data: "
                                           "the data (SPY) runs from 2007-12-31 to 2017-12-29"),
    ("{end: 2001-01-01}", "backtest", 1, ":40:17: error: backtest.end 2001-01-01 is before the start of the data"),
])
def test_the_strategys_backtest_dates_are_checked(tmp_path, backtest, command, code, message):
    text = SMA.read_text().replace("source: data/", f"source: {SPY.parent}/") + f"backtest: {backtest}\n"
    path = strategy(tmp_path, text=text)
    assert text.splitlines()[39].startswith("backtest: ")
    args = (command, path) if command == "validate" else (command, path, "--journal", tmp_path / "j.sqlite")
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert f"{path.name}{message}" in result.output
    assert not (tmp_path / "j.sqlite").exists()


def test_cash_beyond_any_account_is_refused(tmp_path):
    result = cli("backtest", SMA, "--journal", tmp_path / "j.sqlite", "--cash", "1e300")
    assert result.exit_code == 2
    assert "Invalid value for '--cash': 1e+300 is more than the 1,000,000,000,000 an account can hold here" \
        in result.output


def test_a_one_day_window_and_a_lower_case_symbol_still_run(tmp_path):
    result = cli("backtest", SMA, "--journal", tmp_path / "j.sqlite", "--from", "2015-01-02", "--to", "2015-01-02",
                 "--symbol", "spy", "--report", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "2015-01-02 to 2015-01-02" in result.output
    assert (tmp_path / "r.html").read_text().count("SPY") > 0


def test_validate_on_a_folder_without_documents(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    result = cli("validate", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"{tmp_path}: error: no YAML documents (*.yaml, *.yml) in this folder or its subfolders" in result.output
    assert ":0:0:" not in result.output
    assert "All clear" not in result.output


def test_a_diagnostic_without_a_location_prints_path_error(tmp_path):
    from engine.diagnostics import error, warning

    assert error("a.yaml", 0, 0, "file not found").format() == "a.yaml: error: file not found"
    assert warning("a.yaml", 3, 4, "x", "fix").format() == "a.yaml:3:4: warning: x\n    fix"
    result = cli("validate", tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert f"{tmp_path / 'missing.yaml'}: error: no such file or directory" in result.output
    result = cli("backtest", strategy(tmp_path, source="nope/"), "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1 and ":0:0:" not in result.output


# ------------------------------------------------- item 7: the journal is never destroyed by mistake

import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """A real journal with one backtest run of the shipped SMA strategy."""
    folder = tmp_path_factory.mktemp("journal")
    path = folder / "j.sqlite"
    result = cli("backtest", SMA, "--journal", path)
    assert result.exit_code == 0, result.output
    return path


def _runs(path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def test_report_out_the_journal_is_refused(journal):
    before = journal.read_bytes()
    for out in (journal, Path(str(journal) + "-wal"), journal.parent / "." / journal.name):
        result = cli("report", journal, "--out", out)
        assert result.exit_code == 2, result.output
        assert f"qtrade: --out {out} is the journal {journal}: writing the report there would destroy every run" \
            in result.output
    assert journal.read_bytes() == before and _runs(journal) == 1


def test_backtest_report_path_the_journal_or_another_file_is_refused_before_the_run(tmp_path, journal):
    copy = tmp_path / "j.sqlite"
    shutil.copy(journal, copy)
    result = cli("backtest", SMA, "--journal", copy, "--report", copy)
    assert result.exit_code == 2, result.output
    assert f"qtrade: --report {copy} is the journal {copy}" in result.output
    assert _runs(copy) == 1
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = cli("backtest", SMA, "--journal", copy, "--report", notes)
    assert result.exit_code == 2, result.output
    assert (f"qtrade: --report {notes} exists and is not a qtrade report: refusing to overwrite it; give another "
            "path or delete it") in result.output
    assert notes.read_text() == "my notes\n" and _runs(copy) == 1
    # an old report is a report: it is overwritten
    report = tmp_path / "r.html"
    assert cli("report", copy, "--out", report).exit_code == 0
    result = cli("backtest", SMA, "--journal", copy, "--report", report)
    assert result.exit_code == 0, result.output
    assert _runs(copy) == 2


@pytest.mark.parametrize("what", ["text", "strategy", "foreign"])
def test_a_file_that_is_not_a_journal_is_refused_before_anything_is_written(tmp_path, what):
    path = tmp_path / "target"
    if what == "text":
        path.write_text("hello\n" * 100)
        message = f"qtrade: --journal {path}: not a journal (not an SQLite file); refusing to write to it"
    elif what == "strategy":
        shutil.copy(SMA, path)
        message = f"qtrade: --journal {path}: not a journal (not an SQLite file)"
    else:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE things (x)")
        con.execute("INSERT INTO things VALUES (1)")
        con.commit()
        con.close()
        message = (f"qtrade: --journal {path} is an SQLite file but not a qtrade journal (its tables: things); "
                   "refusing to write to it")
    before = path.read_bytes()
    for command in (("backtest", SMA), ("run", SMA, "--dry-run")):
        result = cli(*command, "--journal", path)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert path.read_bytes() == before                  # not switched to WAL, no tables added
        assert not Path(str(path) + "-wal").exists()
    if what == "foreign":
        result = cli("report", path, "--out", tmp_path / "r.html")
        assert result.exit_code == 1
        assert f"qtrade: {path} is an SQLite file but not a qtrade journal (its tables: things)" in result.output
        assert path.read_bytes() == before


def test_journal_paths_that_cannot_be_journals(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    result = cli("backtest", SMA, "--journal", folder)
    assert result.exit_code == 2
    assert f"qtrade: --journal {folder} is a folder, not a journal file; give a file name, e.g. {folder}/" \
        in result.output
    missing = tmp_path / "nofolder" / "j.sqlite"
    result = cli("run", SMA, "--dry-run", "--journal", missing)
    assert result.exit_code == 2
    assert (f"qtrade: --journal {missing}: the folder {missing.parent} does not exist; create it or give another "
            "journal path") in result.output
    result = cli("report", folder, "--out", tmp_path / "r.html")
    assert result.exit_code == 1 and f"qtrade: {folder} is a folder, not a file" in result.output
    result = cli("report", tmp_path / "none.sqlite", "--out", tmp_path / "r.html")
    assert result.exit_code == 1 and f"qtrade: {tmp_path / 'none.sqlite'}: no such journal file" in result.output


def test_report_out_paths_that_cannot_be_written(tmp_path, journal):
    folder = tmp_path / "d"
    folder.mkdir()
    result = cli("report", journal, "--out", folder)
    assert result.exit_code == 2 and f"qtrade: --out {folder} is a folder; give a file name" in result.output
    missing = tmp_path / "nofolder" / "r.html"
    result = cli("report", journal, "--out", missing)
    assert result.exit_code == 2
    assert f"qtrade: --out {missing}: the folder {missing.parent} does not exist" in result.output


def test_report_opens_the_journal_read_only(tmp_path, journal):
    copy = tmp_path / "j.sqlite"
    shutil.copy(journal, copy)
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"   # a rollback-journal file
    con.close()
    before = copy.read_bytes()
    result = cli("report", copy, "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert copy.read_bytes() == before           # not switched to WAL, no schema written
    assert not Path(str(copy) + "-wal").exists()
    from engine.runtime.journal import Journal

    with Journal(copy, readonly=True) as j, pytest.raises(sqlite3.OperationalError, match="readonly"):
        j.db.execute("INSERT INTO errors(ts, source, message) VALUES ('t', 's', 'm')")


def test_reading_a_journal_leaves_no_wal_or_shm_files_beside_it(tmp_path, monkeypatch, journal):
    """A reader of a WAL journal makes its -wal and -shm files; SQLite removes them when the last
    connection closes, but only if it could write (a mode=ro one leaves them)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(journal, tmp_path / "j.sqlite")            # WAL mode, nothing beside it
    before = (tmp_path / "j.sqlite").read_bytes()
    for command in (("report", "j.sqlite", "--out", "r.html"), ("why", "j.sqlite")):
        result = cli(*command)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["j.sqlite", "r.html"], command
    assert (tmp_path / "j.sqlite").read_bytes() == before   # read, not written


def test_a_locked_journal_names_the_process_that_holds_it(tmp_path, journal):
    copy = tmp_path / "j.sqlite"
    shutil.copy(journal, copy)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sqlite3, sys, time\n"
                               f"c = sqlite3.connect({str(copy)!r}, isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE')\n"
                               "c.execute(\"INSERT INTO errors(ts, source, message) VALUES ('t', 's', 'm')\")\n"
                               "print('locked', flush=True)\n"
                               "sys.stdin.read()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from engine.runtime.journal import Journal, JournalError

        with pytest.raises(JournalError) as excinfo:
            Journal(copy, timeout=0.2)
        message = str(excinfo.value)
        assert message.startswith(f"{copy} is locked by process {holder.pid} (")
        assert message.endswith("; wait for it to finish or give another journal path")
        # reading is not blocked: the report reads what was committed
        result = cli("report", copy, "--out", tmp_path / "r.html")
        assert result.exit_code == 0, result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert _runs(copy) == 1


# ------------------------------------------------------------- item 10: terminal output is safe

CONTROL_STRATEGY = r"""kind: strategy
name: evil
description: "line\roverwritten \u202egnp.exe"
universe: [SPY]
data: {bar: 1d, history: 40 bars, source: SPY.csv}
indicators:
  fast: sma(close, 5)
  slow: sma(close, 20)
entry:
  - name: "up\e]8;;http://x\e\\click\e]8;;\e\\ \e]0;pwned\a\e[31m\x9b2J"
    when: crosses_above(fast, slow)
    order: buy
exit:
  - name: "down\x08\x08\x08\x08gone"
    when: "crosses_below(fast, slow) and ema(close, '\e[2J') > 0"
orders:
  buy: {action: buy, type: market, quantity: {percent_of_equity: 100%}}
schedule: {timezone: America/New_York, every: 1d}
risk: {max_open_positions: 1, margin_check: off}
"""

RAW_CONTROLS = ("\x1b", "\x07", "\x08", "\x9b", "\r", "\u202e")


def test_control_characters_in_user_text_are_escaped_on_the_terminal(tmp_path):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, text=CONTROL_STRATEGY)
    result = cli("validate", path)     # the bad ema() argument quotes the user's text
    assert result.exit_code == 1
    assert not any(c in result.output for c in RAW_CONTROLS), repr(result.output)
    assert "\\x1b[2J" in result.output
    fixed = strategy(tmp_path, name="ok.yaml", text=CONTROL_STRATEGY.replace(" and ema(close, '\\e[2J') > 0", ""))
    result = cli("run", fixed, "--dry-run", "--days", "200", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    # the order as it is sent (sized at the open), the rule name's escape sequence written out
    assert re.search(r"BUY \d+ SPY MKT DAY \[up\\x1b\]8;;http://x\\x1b\\click", result.output)
    assert "\\x1b]0;pwned\\x07\\x1b[31m\\x9b2J" in result.output
    assert not any(c in result.output for c in RAW_CONTROLS), repr(result.output)
    for command in (("backtest", fixed, "--journal", tmp_path / "j.sqlite"), ("explain", fixed)):
        result = cli(*command)
        assert result.exit_code == 0, result.output
        assert not any(c in result.output for c in RAW_CONTROLS), repr(result.output)
    result = cli("backtest", fixed, "--journal", tmp_path / "j.sqlite", "--symbol", "\x1b]0;x\x07")
    assert result.exit_code == 2
    assert "--symbol \\x1b]0;x\\x07: the run has no bars for it" in result.output
    # line breaks and tabs are still line breaks and tabs
    from cli import _escaped

    assert _escaped("a\tb\nc\x1bd\u2066e") == "a\tb\nc\\x1bd\\u2066e"


# ------------------------------------------------------------ item 8: units and baselines

def _trades_by_rule(path) -> dict[str, tuple[int, float, float]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {rule: (n, lo, hi) for rule, n, lo, hi in con.execute(
            "SELECT exit_rule, COUNT(*), MIN(return_pct), MAX(return_pct) FROM trades GROUP BY exit_rule")}
    finally:
        con.close()


def test_position_pnl_pct_and_percent_literals_agree(tmp_path):
    text = SMA.read_text().replace("source: data/", f"source: {SPY.parent}/").replace("""    reason: trend over
""", """    reason: trend over
  - name: stop
    when: position.pnl_pct <= -3%
  - name: take
    when: position.pnl_pct >= 0.05
""")
    path = strategy(tmp_path, text=text)
    result = cli("validate", path)
    assert result.exit_code == 0 and "0 warnings" in result.output, result.output
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    by_rule = _trades_by_rule(tmp_path / "j.sqlite")
    # return_pct is the trade's return in percent, filled at the next open after the signal
    n, lo, hi = by_rule["stop"]
    assert n >= 5 and hi < -1.9          # only losers of about 3%, never a winner
    n, lo, hi = by_rule["take"]
    assert n >= 5 and lo > 4.0           # only winners of about 5%


def test_pnl_pct_compared_with_percent_units_warns(tmp_path):
    shutil.copy(SPY, tmp_path / "SPY.csv")
    text = STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)").replace(
        "when: crosses_below(fast, slow)", "when: position.pnl_pct <= -3 or position.pnl_pct between 0.5% and 5")
    path = strategy(tmp_path, text=text)
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert (f"{path}:14:31: warning: position.pnl_pct is a fraction of the entry value (3% is 0.03), so `-3` "
            "means -300%") in result.output
    assert f"{path}:14:71: warning: position.pnl_pct is a fraction of the entry value (3% is 0.03), so `5`" \
        in result.output
    assert "write it as a percentage, e.g. -3%" in result.output
    assert result.output.count("warning: position.pnl_pct") == 2   # 0.5% is fine


def _with_exits(exits: str, action: str = "buy") -> str:
    text = STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)")
    text = text.replace("  - name: down\n    when: crosses_below(fast, slow)\n", exits)
    return text.replace("{action: buy,", f"{{action: {action},")


@pytest.mark.parametrize("action, key, level, side", [
    ("buy", "stop", "position.entry_price * 95", "below"),          # 95 meant 95%
    ("buy", "target", "position.entry_price * (1 - 4%)", "above"),
    ("sell", "stop", "position.entry_price - 2", "above"),
    ("sell", "target", "position.entry_price + 0.5 * 3", "below"),
])
def test_a_level_on_the_wrong_side_of_the_entry_is_refused_at_its_line(tmp_path, action, key, level, side):
    """A stop or target fixed at the entry on the wrong side of it would fill at the first bar it
    works in: every trade one bar long, exited as its stop. Refused at its line, with the form a
    5% one takes; the right side passes."""
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, text=_with_exits(f"  - name: hard\n    {key}: {level}\n", action))
    result = cli("validate", path)
    assert result.exit_code == 1, result.output
    long = "long" if action == "buy" else "short"
    assert f"{path}:14:" in result.output and f"error: `{key}` of exit rule 'hard' is at" in result.output
    assert f"a {long} position's {key} must be {side} its entry" in result.output, result.output
    assert f"a 5% {key} of a {long} is `position.entry_price * (1 " in result.output
    assert "Traceback" not in result.output
    fixed = {"below": "position.entry_price * (1 - 5%)", "above": "position.entry_price * (1 + 5%)"}[side]
    path.write_text(_with_exits(f"  - name: hard\n    {key}: {fixed}\n", action))
    result = cli("validate", path)
    assert result.exit_code == 0 and "0 errors" in result.output, result.output


def test_a_level_that_reads_the_market_or_a_mixed_book_is_not_judged(tmp_path):
    """Only a level fixed at the entry, for entries all of one side, is judged: a trailing level
    (it reads the market) or entries both ways pass."""
    shutil.copy(SPY, tmp_path / "SPY.csv")
    path = strategy(tmp_path, text=_with_exits("  - name: trail\n    stop: slow * 1.5\n"))
    assert cli("validate", path).exit_code == 0
    text = _with_exits("  - name: hard\n    stop: position.entry_price * 1.05\n").replace(
        "    order: buy\nexit:", "    order: buy\n  - name: short\n    when: crosses_below(fast, slow)\n"
        "    order: sell\nexit:").replace("orders:\n", "orders:\n  sell: {action: sell, type: market, quantity: 10}\n")
    assert "order: sell" in text and "sell: {action: sell" in text
    path.write_text(text)
    result = cli("validate", path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("mode, share", [("percent_of_equity", "0%"), ("percent_of_equity", 0),
                                         ("risk_percent", "0.0%")])
def test_a_sizing_share_of_zero_is_refused(tmp_path, mode, share):
    """A constant share of 0 sizes every entry at nothing: the backtest would say only 'Entries
    blocked: quantity rounds to 0'. Refused at its value."""
    shutil.copy(SPY, tmp_path / "SPY.csv")
    extra = ", stop_distance: close * 2%" if mode == "risk_percent" else ""
    text = STRATEGY.format(source="SPY.csv", when="crosses_above(fast, slow)").replace(
        "{percent_of_equity: 100%}", f"{{{mode}: {share}{extra}}}")
    path = strategy(tmp_path, text=text)
    result = cli("validate", path)
    assert result.exit_code == 1, result.output
    col = text.splitlines()[15].index(f"{mode}: {share}") + len(mode) + 3      # at the share itself
    assert f"{path}:16:{col}: error: quantity {mode}: {share} sizes every entry at 0 units, so none is ever sent" in result.output
    assert f"a share above 0, e.g. {mode}: 10%" in result.output


FIRST_BAR = """\
kind: strategy
name: first-bar
universe: [SPY]
data: {{bar: 1d, history: 10 bars, source: {source}}}
entry:
  - name: always
    when: close > 0
    order: buy
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 50%}}}}
schedule: {{timezone: America/New_York, every: 1d}}
risk: {{max_open_positions: 1, margin_check: off}}
backtest: {{cash: 10000, fill: close, commission: {{per_order: 25}}}}
"""


def test_returns_are_measured_from_the_starting_cash_and_warm_up_is_not_counted(tmp_path):
    import json

    path = strategy(tmp_path, text=FIRST_BAR.format(source=SPY))
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite", "--from", "2015-01-05", "--to", "2015-03-20",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summary"]
    assert summary["start_equity"] == 10_000.0        # the first row already paid the 25 commission
    assert summary["total_return"] == pytest.approx(summary["end_equity"] / 10_000.0 - 1.0)
    assert summary["start"].startswith("2015-01-05")
    assert summary["bars"] == 53                        # 2015-01-05 .. 2015-03-20 on NYSE days
    assert summary["warmup_bars"] == 1765               # SPY.csv's bars before --from
    con = sqlite3.connect(tmp_path / "j.sqlite")
    first = con.execute("SELECT equity FROM equity ORDER BY ts LIMIT 1").fetchone()[0]
    con.close()
    assert first < 10_000.0                             # the curve's first point includes the fill
    text = cli("backtest", path, "--journal", tmp_path / "j.sqlite", "--from", "2015-01-05", "--to", "2015-03-20")
    assert "2015-01-05 to 2015-03-20 (53 bars, after 1,765 warm-up bars)" in text.output
    assert "from 10,000.00 starting cash" in text.output
    assert "annualised from 74 days: too short to mean much" in text.output


def test_a_long_run_has_no_annualised_caveat(tmp_path):
    result = cli("backtest", SMA, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0
    assert "too short to mean much" not in result.output
    assert "2007-12-31 to 2017-12-29 (2,519 bars)" in result.output


# ------------------------------------------------------------------------- item 9: qtrade why

CONDOR = ROOT / "strategies" / "iron_condor.yaml"


@pytest.fixture(scope="module")
def condor_journal(tmp_path_factory):
    """The shipped iron condor's backtest with 0.01-delta shorts (its entries are blocked: no
    such delta, or no bid that far out) and an SMA run after it."""
    path = tmp_path_factory.mktemp("why") / "j.sqlite"
    result = cli("backtest", CONDOR, "--journal", path, "--set", "short_delta=0.01")
    assert result.exit_code == 0, result.output
    condor_output = result.output
    con = sqlite3.connect(path)
    condor_run = con.execute("SELECT run_id FROM runs").fetchone()[0]
    blocked = dict(con.execute("SELECT reason, COUNT(*) FROM decisions WHERE outcome='blocked' GROUP BY reason"))
    con.close()
    assert cli("backtest", SMA, "--journal", path).exit_code == 0
    return path, condor_run, condor_output, blocked


def test_why_groups_decisions_by_rule_outcome_and_reason(condor_journal):
    path, condor_run, _, blocked = condor_journal
    result = cli("why", path, "--run", condor_run)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    total = sum(blocked.values())
    assert lines[0] == (f"run {condor_run}: xsp-0dte-iron-condor (backtest), {total:,} decisions; "
                        "times in America/New_York")
    assert "entry rule 'calm market, enough credit':" in lines
    delta = "leg short_call: no call has a delta within [0.005, 0.02] (target 0.01)"
    row = next(line for line in lines if line.endswith(delta))
    assert row.split()[:2] == ["blocked", f"{blocked[delta]:,}"]
    assert "2019-11-05 09:32 .. 2019-11-08 10:55" in row            # journaled 14:32Z .. 15:55Z, read in New York
    quotes = {r: n for r, n in blocked.items() if "two-sided quote" in r}
    row = next(line for line in lines if "has no two-sided quote" in line)
    assert row.split()[:2] == ["blocked", str(sum(quotes.values()))]          # one cause, however worded
    assert row.endswith(f"[{len(quotes)} wordings]")


def test_why_newest_run_and_rule_filter(condor_journal):
    path, *_ = condor_journal
    result = cli("why", path)                       # the newest run: the SMA crossover
    assert result.exit_code == 0, result.output
    assert "sma-crossover (backtest), 79 decisions" in result.output
    assert "entry rule 'golden cross':" in result.output and "exit rule 'death cross':" in result.output
    result = cli("why", path, "--rule", "death cross")
    assert result.exit_code == 0
    assert "39 decisions of rule 'death cross'" in result.output and "golden cross" not in result.output
    # on daily bars a close's decision is its bar's day (journaled at the midnight the bar ends
    # at: 2008-03-07 05:00Z is Thursday 2008-03-06's close in New York; 2017-08-18 is a Friday)
    assert "fired          39  2008-03-06 close .. 2017-08-18 close  trend over" in result.output
    assert "times in America/New_York, a daily bar's decisions dated by its day" in result.output
    # the newest of two: the other is named, with the command that shows it; --run shows one alone
    _, condor_run, *_ = condor_journal
    lines = cli("why", path).output.splitlines()
    assert lines[1] == f"the newest of 2 runs in this journal; the other (qtrade why {path} --run RUN_ID):", lines
    assert re.fullmatch(rf"  {condor_run}  xsp-0dte-iron-condor \(backtest\), started \S+ \S+ UTC, finished",
                        lines[2]), lines
    assert "newest of" not in cli("why", path, "--run", condor_run).output


def test_why_bad_input(tmp_path, condor_journal):
    path, *_ = condor_journal
    result = cli("why", path, "--rule", "nope")
    assert result.exit_code == 2
    assert "has no decisions of a rule named 'nope'; its rules: 'death cross', 'golden cross'" in result.output
    result = cli("why", path, "--run", "nope")
    assert result.exit_code == 1 and f"qtrade: {path}: no run 'nope'" in result.output
    result = cli("why", tmp_path / "none.sqlite")
    assert result.exit_code == 1 and "no such journal file" in result.output
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    result = cli("why", notes)
    assert result.exit_code == 1 and "not a journal (not an SQLite file)" in result.output


def test_the_summary_names_the_top_blocked_reasons(condor_journal):
    path, condor_run, output, blocked = condor_journal
    line = next(line for line in output.splitlines() if line.strip().startswith("Entries blocked"))
    delta = "leg short_call: no call has a delta within [0.005, 0.02] (target 0.01)"
    quotes = sum(n for r, n in blocked.items() if "two-sided quote" in r)
    assert f"{sum(blocked.values()):,}   {quotes:,} leg short_put (put " in line
    assert f"has no two-sided quote (bid 0, ask 0.04); {blocked[delta]:,} {delta}; " in line
    assert line.endswith(f"qtrade why {path} --run {condor_run}")


def test_a_reasons_one_varying_value_is_said_as_its_range_and_a_missing_side_as_none():
    from engine.orders.combos import _side
    from engine.report.why import value_range

    assert value_range({"credit = 0.185: 0.185 >= 0.2 no", "credit = 0.145: 0.145 >= 0.2 no",
                        "credit = 0.19: 0.19 >= 0.2 no"}) == "credit from 0.145 to 0.19"
    assert value_range({"taken (confidence 0.6325, this one 0.5)", "taken (confidence 0.7, this one 0.5)"}) == \
        "confidence from 0.6325 to 0.7"
    assert value_range({"decided 3 min ago", "decided 5 min ago"}) == "from 3 to 5"     # no name it says
    # a strike and an expiry moving together: no range that would not say what it is of
    assert value_range({"leg a (put 301 2019-11-06) has no two-sided quote (bid 0, ask 0.03)",
                        "leg a (put 303 2019-11-07) has no two-sided quote (bid 0, ask 0.03)"}) == ""
    assert value_range({"only one wording 0.1"}) == ""
    assert (_side("bid", float("nan")), _side("bid", -1.0), _side("ask", 0.12), _side("bid", 0.0)) == \
        ("no bid", "no bid", "ask 0.12", "bid 0")


def test_reasons_differing_only_in_numbers_are_one_group():
    from engine.report.why import reason_pattern

    a = reason_pattern("leg short_call (call 309 2019-11-06) has no two-sided quote (bid 0, ask 0.03)")
    b = reason_pattern("leg short_call (call 310.5 2019-11-08) has no two-sided quote (bid 0, ask 0.04)")
    assert a == b == "leg short_call (call # #) has no two-sided quote (bid #, ask #)"
    assert reason_pattern("credit 0.12 below min_credit 30%") == "credit # below min_credit #"
    # a date's weekday is part of the date: spxw_condor's "no expiry" reasons were five groups, one a weekday
    monday = reason_pattern("expiry {dte: [25, 35]} on 2018-01-08 (Mon): no expiry between 2018-02-02 and 2018-02-12")
    assert monday == reason_pattern("expiry {dte: [25, 35]} on 2018-01-09 (Tue): no expiry between 2018-02-03 and "
                                    "2018-02-13")


def test_why_dates_a_step_seconds_after_a_daily_close_by_that_close():
    """On daily bars a close is stamped at the midnight the bar ends at; a combo's chase that
    timed out three minutes later is that close's, 180 s on, not 00:03 of the next day."""
    from engine.report.why import _local

    tz = "America/New_York"
    assert _local("2018-02-02T05:00:00Z", tz, daily=True) == "2018-02-01 close"
    assert _local("2018-02-02T05:03:00Z", tz, daily=True) == "2018-02-01 close +180s"
    assert _local("2018-02-02T05:03:00Z", tz, daily=False) == "2018-02-02 00:03"


# ------------------------------------------------- item 3: 0DTE chains priced on trading time

def _chain(quote_time, expiries, am=False):
    from engine.market.chains import synthesize

    return synthesize(300.0, pd_ts(quote_time), expiries, 1.0, iv_source=0.13, am_settled=am, underlying="XSP")


def pd_ts(text):
    import pandas as pd

    return pd.Timestamp(text, tz="America/New_York")


@pytest.mark.parametrize("quote, expiry, am, sessions", [
    ("2019-11-05 09:30", "2019-11-05", False, 1.0),          # 0DTE at the open: a whole session left
    ("2019-11-05 12:45", "2019-11-05", False, 0.5),
    ("2019-11-05 15:59", "2019-11-05", False, 1 / 390),
    ("2019-11-05 16:00", "2019-11-05", False, 0.0),
    ("2019-11-05 08:00", "2019-11-05", False, 1.0),          # before the open: the day's session
    ("2019-11-08 16:00", "2019-11-11", False, 1.0),          # Friday's close to Monday: no weekend time
    ("2019-11-06 16:00", "2019-11-08", False, 2.0),
    ("2019-11-07 12:45", "2019-11-08", True, 0.5),            # AM-settled: settles at Friday's open
    ("2019-11-09 12:00", "2019-11-11", False, 1.0),          # a Saturday quote
    ("2024-01-12 16:00", "2024-01-16", False, 1.0),          # over Martin Luther King Day: not a session
    ("2024-01-15 12:00", "2024-01-16", False, 1.0),          # quoted on the holiday itself
    ("2024-03-28 09:30", "2024-04-01", False, 2.0),          # Good Friday in between: Thursday and Monday
])
def test_trading_time_to_expiry_counts_regular_sessions(quote, expiry, am, sessions):
    chain = _chain(quote, [expiry], am)
    assert chain.time == "trading"
    assert chain.trading_years_to_expiry() == pytest.approx(np.full(len(chain), sessions / 252.0))
    assert np.array_equal(chain.model_years_to_expiry(), chain.trading_years_to_expiry())


import numpy as np  # noqa: E402


def test_a_0dte_chain_at_the_open_prices_a_days_move():
    """VIX 13 is about a 0.8% day for the S&P 500: an XSP 0DTE straddle at the open costs about
    0.8 x sqrt(2/pi) % of the price, and 0.05-0.20 deltas are reachable on the $1 strike grid
    (on calendar time they jumped from 0.3 to 0.03 between neighbouring strikes)."""
    chain = _chain("2019-11-05 09:31", ["2019-11-05"])
    calls, puts = chain.calls(), chain.puts()
    atm = calls.nearest_strike(300.0)
    straddle = calls.mid[atm] + puts.mid[atm]
    day_move = 0.13 / np.sqrt(252.0) * 300.0                  # one standard deviation, in points
    assert straddle == pytest.approx(day_move * np.sqrt(2 / np.pi), rel=0.1)
    otm = calls.strike > 300
    steps = np.abs(np.diff(calls.delta[otm]))
    assert steps.max() < 0.16                                # 0.33, 0.18, 0.07, 0.02 from 301 up
    in_window = otm & (calls.delta >= 0.05) & (calls.delta <= 0.2)
    assert in_window.sum() >= 2
    assert ((puts.delta <= -0.05) & (puts.delta >= -0.2)).sum() >= 2
    loaded = chain.take(np.arange(len(chain)))
    assert loaded.time == "trading"                               # a slice keeps its clock


def test_the_showcase_iron_condor_trades_on_its_defaults(tmp_path):
    result = cli("backtest", CONDOR, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    trades = int(next(line for line in result.output.splitlines() if line.strip().startswith("Trades")).split()[1])
    assert trades >= 3                                           # one a day on the bundled week
    assert "no call has a delta within" not in result.output
    why = cli("why", tmp_path / "j.sqlite")
    assert "entry rule 'calm market, enough credit':" in why.output
    lines = why.output.splitlines()
    assert "times in America/New_York" in lines[0]
    fired = next(line for line in lines if line.strip().startswith("fired") and re.search(r"\d\d:\d\d", line))
    assert int(fired.split()[1]) == trades
    # before each entry, the minutes whose credit was too small: blocked, naming the credit
    blocked = [line for line in lines if line.strip().startswith("blocked")]
    assert blocked and all(re.search(r"credit = [0-9.]+: [0-9.]+ >= 0.2 no", line) for line in blocked), blocked


def test_a_blocked_condor_names_its_real_cause(tmp_path):
    result = cli("backtest", CONDOR, "--journal", tmp_path / "j.sqlite", "--set", "min_credit=0.5")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("Entries blocked"))
    # one cause in many credits: one wording, with the range the credit took
    assert re.search(r"Entries blocked +([0-9,]+) +\1 credit = [0-9.]+: [0-9.]+ >= 0.5 no \(credit from [0-9.]+ to [0-9.]+\); "
                     r"qtrade why ", line), line
    con = sqlite3.connect(tmp_path / "j.sqlite")
    reasons = [r for (r,) in con.execute("SELECT reason FROM decisions WHERE outcome = 'blocked'")]
    con.close()
    assert reasons and all(re.fullmatch(r"credit = [0-9.]+: [0-9.]+ >= 0.5 no", r) for r in reasons)
    assert not any("delta within" in r for r in reasons)


# -------------------------------------------- item 2 (part): `run` takes --chains like backtest

DATA = ROOT.parent / "shared" / "data"
CHAINS = DATA / "optopsy_v1" / "test_options_data_full.csv"


def test_run_takes_option_chains(tmp_path):
    import os

    if not CHAINS.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHAINS} is missing (shared/data must be present in CI)")
        pytest.skip("shared/data is not present")
    strategy_path = ROOT / "strategies" / "spxw_condor.yaml"
    result = cli("run", strategy_path, "--dry-run", "--chains", CHAINS, "--days", "40",
                 "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    assert "spx-monthly-iron-condor: dry-run from 2018-01-02 to the end of the data, SPX" in result.output
    assert "2018-01-02 close  SELL 1 SPX condor combo [enough credit]" in result.output   # a daily bar: its close
    assert "legs: SELL 1 PUT 2620 2018-01-31, BUY 1 PUT 2570 2018-01-31" in result.output
    sent = int(next(line for line in result.output.splitlines() if "would have been sent" in line).split()[0])
    assert sent >= 1
    assert f"all the reasons: qtrade why {tmp_path / 'j.sqlite'} --run " in result.output
    result = cli("run", strategy_path, "--chains", tmp_path / "none.csv", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 2, result.output       # the flag's value: a usage error, named by the flag
    assert f"--chains: error: option chains not found: {tmp_path / 'none.csv'} (looked for " in result.output


def test_report_reads_a_journal_on_a_read_only_file_system(tmp_path, journal):
    """A real read-only mount (root cannot write there either), made in a mount namespace of its
    own; skipped where the machine allows no such namespace."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespaces here (unshare -m)")
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    shutil.copy(journal, source / "j.sqlite")        # WAL mode, and no -shm next to it
    out = tmp_path / "r.html"
    script = (f"mount --bind {source} {mount} && mount -o remount,ro,bind {mount} && "
              f"! touch {mount}/probe 2>/dev/null && "
              f"{sys.executable} -c 'import sys; sys.argv = [\"qtrade\", \"report\", \"{mount}/j.sqlite\", \"--out\", "
              f"\"{out}\"]; import cli; cli.entry()' && "
              f"{sys.executable} -c 'import sys; sys.argv = [\"qtrade\", \"why\", \"{mount}/j.sqlite\"]; import cli; "
              f"cli.entry()'")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"report: {out}" in done.stdout
    assert "sma-crossover (backtest), 79 decisions" in done.stdout
    assert out.read_text().startswith("<!DOCTYPE html>")


# ------------------- item 1 (part): data.session: regular on bars already at the strategy's size

MINUTE = """\
kind: strategy
name: m
universe: [SPY]
data: {{bar: {bar}, source: SPY.csv{session}}}
indicators:
  fast: sma(close, 5)
  slow: sma(close, 20)
entry:
  - name: up
    when: crosses_above(fast, slow)
    order: buy
exit:
  - name: down
    when: crosses_below(fast, slow)
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
schedule: {{timezone: America/New_York, every: {bar}}}
risk: {{max_open_positions: 1, margin_check: off}}
"""


def _minute_file_with_extended_hours(tmp_path) -> int:
    """The bundled XSP minute bars (regular hours) as SPY.csv, with ten pre-market and five
    after-hours bars added on 2019-11-05; returns the number of bars."""
    lines = (ROOT / "strategies" / "data" / "XSP.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    pre = [f"2019-11-05 08:{m:02d}:00,307.0,307.2,306.9,307.1,100" for m in range(10)]
    post = [f"2019-11-05 17:{m:02d}:00,307.0,307.2,306.9,307.1,100" for m in range(5)]
    (tmp_path / "SPY.csv").write_text("\n".join([header] + pre + rows + post) + "\n")
    return len(rows) + 15


def test_session_regular_is_not_silently_ignored_on_bars_at_the_strategys_size(tmp_path):
    n = _minute_file_with_extended_hours(tmp_path)
    path = strategy(tmp_path, text=MINUTE.format(bar="1m", session=""))
    for command in (("backtest", path, "--journal", tmp_path / "j.sqlite"),
                    ("run", path, "--dry-run", "--journal", tmp_path / "j.sqlite")):
        result = cli(*command)
        assert result.exit_code == 0, result.output
        # left out, and said: the 15 added and the three 16:00 bars of the source (NYSE closes at 16:00)
        assert (f"{path.name}:4:7: warning: SPY: 18 of {n:,} bars outside NYSE's regular hours left out (the first "
                "at 2019-11-05 08:00), as data.session: regular says") in result.output
    result = cli("backtest", path, "--journal", tmp_path / "j.sqlite")
    assert f"({n - 18:,} bars)" in result.output                    # regular hours only
    extended = strategy(tmp_path, name="x.yaml", text=MINUTE.format(bar="1m", session=", session: extended"))
    result = cli("backtest", extended, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    assert f"({n:,} bars)" in result.output                        # every bar, as asked
    five = strategy(tmp_path, name="five.yaml", text=MINUTE.format(bar="5m", session=", session: regular"))
    result = cli("backtest", five, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output                    # resampled: regular hours only
    assert "(312 bars" in result.output                            # 1,560 regular minutes / 5


def test_the_report_carries_the_annualised_caveat_of_a_short_run(tmp_path):
    journal_path = tmp_path / "j.sqlite"
    short = cli("backtest", SMA, "--journal", journal_path, "--from", "2015-01-05", "--to", "2015-03-20",
                "--report", tmp_path / "short.html")
    assert short.exit_code == 0, short.output
    html = (tmp_path / "short.html").read_text()
    assert "annualised from 74 days: too short to mean much" in html
    import re

    for metric in ("sortino", "calmar", "alpha"):     # every annualised figure says so, not only CAGR
        card = re.search(rf'data-metric="{metric}">(.*?)</div></div>', html).group(1)
        assert "from 74 days" in card, (metric, card)
    long = cli("backtest", SMA, "--journal", journal_path, "--report", tmp_path / "long.html")
    assert long.exit_code == 0
    assert "too short to mean much" not in (tmp_path / "long.html").read_text()


# -------------------------- item 2 (part): every example runs, or says what it is missing

EXAMPLE_OUTCOMES = {
    "sma_crossover.yaml": "runs",
    "iron_condor.yaml": "runs",
    "composite_scanner.yaml": "runs",      # its scanner ranks the bundled SPY, AAPL and INTC of its 67 names
    "regime_agents.yaml": "runs",     # on the bundled daily SPY and AAPL bars (its comments say why)
    # minute bars of the megacaps: none may be bundled (strategies/data/README.md); with no flags it
    # says it has no bars and how to give them, and with --data (LEAN's SPY minutes) it runs
    "breakout.yaml": "runs with --data",
    # end-of-day SPX chains: the only sample (optopsy's, GPL) cannot be bundled; the example reads it
    # from ../shared/data beside the clone (data.chains), and names the file when it is not there
    "spxw_condor.yaml": "runs on ../shared",
    # futures minute bars: the only real ones at hand (FirstRateData's NQ, LEAN's ES per contract)
    # are internal-test-only, so the futures breakout reads them from ../shared/data (data.source)
    "futures_breakout.yaml": "runs on ../shared",
    "futures_breakout_es.yaml": "runs on ../shared",
}
SHARED_INPUT = {"spxw_condor.yaml": CHAINS,
                "futures_breakout.yaml": DATA / "firstratedata_nq_sample" / "NQ_1min_sample.csv",
                "futures_breakout_es.yaml": DATA / "quantconnect_lean" / "decoded" /
                "es_minute_trade_by_contract_2013-10-07_to_2013-10-11.csv",
                "breakout.yaml": DATA / "quantconnect_lean" / "decoded" / "spy_minute_trade_2013-10-07_to_2013-10-11.csv"}


@pytest.mark.parametrize("name", sorted(EXAMPLE_OUTCOMES))
def test_every_example_runs_with_no_flags_or_says_what_it_misses(tmp_path, name):
    import os

    # (a golden case's copy, .golden-*.yaml, may lie beside them while another worker runs it)
    assert {p.name for p in (ROOT / "strategies").glob("*.yaml") if not p.name.startswith(".")} == set(EXAMPLE_OUTCOMES)
    path = ROOT / "strategies" / name
    outcome = EXAMPLE_OUTCOMES[name]
    flags: tuple = ()
    if outcome == "runs with --data":
        for command in (("backtest", path), ("run", path, "--dry-run", "--broker", "sim")):
            result = cli(*command, "--journal", tmp_path / "j.sqlite")
            assert result.exit_code == 1, result.output
            assert "error: no bar data: data.source is not set and no --data was given" in result.output and "pass --data" in result.output
        flags, outcome = ("--data", SHARED_INPUT[name]), "runs on ../shared"
    if outcome == "runs on ../shared":
        if not SHARED_INPUT[name].is_file():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{SHARED_INPUT[name]} is missing (shared/data must be present in CI)")
            pytest.skip("shared/data is not present")
        outcome = "runs"
    for command in (("backtest", path), ("run", path, "--dry-run", "--broker", "sim")):
        result = cli(*command, *flags, "--journal", tmp_path / "j.sqlite")
        if outcome == "runs":
            assert result.exit_code == 0, result.output
            assert f"journal: {tmp_path / 'j.sqlite'} (run " in result.output
        elif outcome == "not supported":
            assert result.exit_code == 1, result.output
            errors = [line for line in result.output.splitlines() if ": error: " in line]
            assert errors and all(line.endswith(NOT_SUPPORTED) for line in errors), errors


from engine.check.support import NOT_SUPPORTED  # noqa: E402


def test_report_symbol_must_be_in_the_run(tmp_path, journal):
    result = cli("report", journal, "--out", tmp_path / "r.html", "--symbol", "QQQ")
    assert result.exit_code == 2, result.output
    assert "qtrade: --symbol QQQ: run " in result.output and "has no bars or trades of it; it has SPY" in result.output
    assert not (tmp_path / "r.html").exists()
    result = cli("report", journal, "--out", tmp_path / "r.html", "--symbol", "spy")
    assert result.exit_code == 0, result.output


def test_the_spx_example_without_its_chains_names_the_file_and_the_way_out(tmp_path):
    """A clone without ../shared beside it: the chain file the example reads is named at its line
    (nothing is run), with what data.chains is relative to and the --chains flag."""
    copy = tmp_path / "strategies" / "spxw_condor.yaml"
    copy.parent.mkdir()
    copy.write_text((ROOT / "strategies" / "spxw_condor.yaml").read_text())
    line = next(i for i, t in enumerate(copy.read_text().splitlines(), start=1) if t.startswith("data:"))
    result = cli("backtest", copy, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1, result.output
    assert f"spxw_condor.yaml:{line}:" in result.output
    assert "option chains not found: ../../shared/data/optopsy_v1/test_options_data_full.csv (looked for /" \
        in result.output
    assert "fix it, or pass --chains FILE (relative to the current folder)" in result.output
    assert not (tmp_path / "j.sqlite").exists()


@pytest.mark.parametrize("name, source", [
    ("futures_breakout.yaml", "../../shared/data/firstratedata_nq_sample/NQ_1min_sample.csv"),
    ("futures_breakout_es.yaml",
     "../../shared/data/quantconnect_lean/decoded/es_minute_trade_by_contract_2013-10-07_to_2013-10-11.csv")])
def test_the_futures_examples_without_their_bars_name_the_file_and_the_way_out(tmp_path, name, source):
    """qtrade bundles no futures bars (none at hand may be redistributed): a clone without
    ../shared beside it is told which file data.source names, at its line, and nothing runs."""
    copy = tmp_path / "strategies" / name
    copy.parent.mkdir()
    copy.write_text((ROOT / "strategies" / name).read_text())
    line, col = next((i, t.index("source:") + 1) for i, t in enumerate(copy.read_text().splitlines(), start=1)
                     if t.strip().startswith("source:"))
    result = cli("backtest", copy, "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1, result.output
    assert f"{name}:{line}:{col + len('source: ')}: error: data source not found: {source}" in result.output
    assert "relative to" in result.output and not (tmp_path / "j.sqlite").exists()


def test_a_drawdown_from_the_starting_cash_is_dated_by_the_first_bar(tmp_path):
    """spxw_condor is under water from its first bar: the drawdown's start is that bar's day
    (2018-01-02), not the starting-cash point put a bar before it (2018-01-01, a holiday)."""
    import json
    import os

    if not CHAINS.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHAINS} is missing (shared/data must be present in CI)")
        pytest.skip("shared/data is not present")
    result = cli("backtest", ROOT / "strategies" / "spxw_condor.yaml", "--chains", CHAINS, "--format", "json",
                 "--journal", tmp_path / "j.sqlite", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])["summary"]
    assert str(summary["start"])[:10] == "2018-01-02"
    assert str(summary["max_drawdown_start"])[:10] == "2018-01-02", summary["max_drawdown_start"]


def test_a_data_flag_that_does_not_exist_is_named_by_the_flag(tmp_path):
    result = cli("backtest", ROOT / "strategies" / "sma_crossover.yaml", "--data", tmp_path / "nope",
                 "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 2, result.output
    assert f"--data: error: bar data not found: {tmp_path / 'nope'}" in result.output
    assert not (tmp_path / "j.sqlite").exists()


def test_a_dry_run_killed_with_9_is_marked_interrupted_by_the_next_run(tmp_path):
    """A dry run holds no session lock, so nothing else can say it is dead. Its process is
    journaled with the run; the next run on the journal finds a 'running' run whose process is
    gone on this machine, marks it interrupted and says so. A run whose process lives, and one
    of another machine, stay running."""
    import json
    import signal
    import socket
    import time

    path = tmp_path / "j.sqlite"
    runner = subprocess.Popen([sys.executable, "-c", "import sys; sys.argv = ['qtrade'] + sys.argv[1:]; "
                               "import cli; cli.entry()", "run", SMA, "--dry-run", "--broker", "sim", "--days", "30",
                               "--speed", "1", "--journal", str(path)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and _runs(path) == 1:
                break
            time.sleep(0.2)
        assert runner.poll() is None and _runs(path) == 1
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    from engine.runtime.journal import Journal

    with Journal(path) as j:        # a live process's run, and another machine's: left alone
        j.start_run("dry-run", "alive", run_id="alive")
        j.start_run("dry-run", "elsewhere", run_id="elsewhere")
        j.db.execute("UPDATE runs SET settings = json_set(settings, '$.process.host', 'another-machine')"
                     " WHERE run_id = 'elsewhere'")
    con = sqlite3.connect(path)
    killed, settings = con.execute("SELECT run_id, settings FROM runs WHERE strategy = 'sma-crossover'").fetchone()
    con.close()
    assert json.loads(settings)["process"] == {"host": socket.gethostname(), "pid": runner.pid}
    out = cli("run", SMA, "--dry-run", "--broker", "sim", "--days", "5", "--journal", path)
    assert out.exit_code == 0, out.output
    assert (f"note: the dry-run run {killed} of sma-crossover (started " in out.output and
            f"did not close: its process (pid {runner.pid} on this machine) is gone, killed or crashed. It is "
            "marked interrupted in the journal" in out.output), out.output
    con = sqlite3.connect(path)
    status = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    ended = json.loads(con.execute("SELECT summary FROM runs WHERE run_id = ?", (killed,)).fetchone()[0])
    con.close()
    assert status[killed] == "interrupted" and "its process was gone" in ended["ended"]
    assert status["alive"] == status["elsewhere"] == "running"
    assert list(status.values()).count("finished") == 1
    again = cli("run", SMA, "--dry-run", "--broker", "sim", "--days", "5", "--journal", path)
    assert again.exit_code == 0 and "did not close" not in again.output, again.output

"""`qtrade` on the command line: exit codes, output formats, and no tracebacks for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [str(ROOT / "strategies"), str(ROOT / "universes")]
DIAGNOSTIC = re.compile(r"^(?P<path>[^\n]+?):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): ", re.M)

BROKEN = """\
kind: strategy
name: t
universe: [SPY]
data: {bar: 1m, history: 2d}
orders:
  buy: {action: buy, type: market}
entry:
  - order: buy
    when: ema2(close, 8) > 1
"""

WITH_WARNING = """\
kind: strategy
name: t
universe: [SPY]
data: {bar: 1m, history: 2d}
params: {fast: 8, spare: 3}
orders:
  buy: {action: buy, type: market}
entry:
  - order: buy
    when: sma(close, fast) > close
"""


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args, **kw):
    result = runner.invoke(main, list(args), catch_exceptions=True, **kw)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code != 70, result.output  # the "internal error" exit code
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


@pytest.fixture
def warned(tmp_path):
    path = tmp_path / "warned.yaml"
    path.write_text(WITH_WARNING)
    return path


# Every example validates clean: none holds a key nothing reads yet (engine.check.support refuses
# those at their line; tests/test_schema_support.py holds that).


def test_validate_examples_clean(runner):
    result = run(runner, "validate", *EXAMPLES)
    assert result.exit_code == 0, result.output
    assert "14 files checked: 0 errors, 0 warnings. All clear." in result.output
    assert not DIAGNOSTIC.findall(result.output)


def test_validate_broken_file(runner, broken):
    result = run(runner, "validate", str(broken))
    assert result.exit_code == 1
    found = [m.groupdict() for m in DIAGNOSTIC.finditer(result.output)]
    assert found, result.output
    first = found[0]
    assert first["path"].endswith("broken.yaml")
    assert (first["line"], first["col"], first["sev"]) == ("9", "11", "error")
    assert "unknown function 'ema2' (did you mean 'ema'?)" in result.output
    assert "1 error" in result.output


def test_validate_reports_every_problem_not_just_the_first(runner, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(BROKEN.replace("bar: 1m", "bar: 7m"))
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    assert len(DIAGNOSTIC.findall(result.output)) == 2


def test_validate_mixed_directory(runner, tmp_path, broken):
    (tmp_path / "notes.txt").write_text("not yaml")
    result = run(runner, "validate", str(tmp_path))
    assert result.exit_code == 1
    assert "1 file checked" in result.output


@pytest.mark.parametrize("args", [
    ["validate"],
    ["validate", "--set", "fast", "X"],
    ["validate", "--set", "=3", "X"],
    ["validate", "--format", "xml", "X"],
    ["validate", "--bogus", "X"],
    ["nosuchcommand"],
    ["schema", "portfolio"],
    ["functions", "ema2"],
])
def test_usage_errors_exit_2(runner, args):
    args = [str(ROOT / "strategies") if a == "X" else a for a in args]
    result = run(runner, *args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output or "error" in result.output


def test_a_set_value_out_of_its_params_range_is_a_usage_error_said_at_the_params_line(runner, tmp_path):
    path = str(ROOT / "strategies" / "sma_crossover.yaml")
    for command in (["validate"], ["backtest", "--no-progress", "--journal", str(tmp_path / "j.sqlite")]):
        result = run(runner, *command, "--set", "fast=1", path)
        assert result.exit_code == 2, result.output
        assert "sma_crossover.yaml:13:3: error: --set fast=1: 1 is below the minimum 2" in result.output


def test_a_param_out_of_its_range_in_the_file_says_the_range(runner, tmp_path):
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("fast: {value: 10,", "fast: {value: 300,"))
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:13:" in result.output
    assert "error: param 'fast': 300 is above the maximum 200\n    a value from 2 to 200, or widen the param's " \
        "min/max if that is what you meant" in result.output, result.output


def test_a_set_value_that_breaks_an_indicator_names_the_flag(runner):
    """--set fast=2.5 passes its param's range (2 to 200) but is no length of bars: the error at
    the indicator's line says the value came from the flag, and what to give instead."""
    result = run(runner, "validate", "--set", "fast=2.5", str(ROOT / "strategies" / "sma_crossover.yaml"))
    assert result.exit_code == 1
    assert ("error: `length` of sma() must be a whole number of bars >= 1, got 2.5 (from --set fast=2.5)\n"
            "    give fast a whole number, e.g. --set fast=2") in result.output, result.output


def test_unknown_set_param_is_a_usage_error(runner):
    result = run(runner, "validate", "--set", "fsat=3", str(ROOT / "strategies" / "sma_crossover.yaml"))
    assert result.exit_code == 2
    assert "'fsat' is not a param of the strategy or its scanner (did you mean 'fast'?)" in result.output


def test_set_override_checked(runner):
    target = str(ROOT / "strategies" / "sma_crossover.yaml")
    assert run(runner, "validate", "--set", "fast=20", target).exit_code == 0
    result = run(runner, "validate", "--set", "fast=500", target)
    assert result.exit_code == 2        # a flag's value: a usage error, as an unknown --set name
    assert "--set fast=500: 500 is above the maximum 200\n    a value from 2 to 200, or widen the param's " \
        "min/max if that is what you meant" in result.output
    result = run(runner, "validate", "--set", "fast=abc", target)
    assert result.exit_code == 2
    assert "expected a number" in result.output


def test_json_format(runner, broken):
    result = run(runner, "validate", "--format", "json", str(broken))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["errors"] == 1 and data["warnings"] == 0
    assert data["files"] and data["files"][0].endswith("broken.yaml")
    (diag,) = data["diagnostics"]
    assert (diag["line"], diag["col"], diag["severity"]) == (9, 11, "error")
    assert "ema2" in diag["message"] and diag["path"].endswith("broken.yaml")
    assert set(diag) >= {"path", "line", "col", "severity", "message", "hint"}


def test_json_format_clean(runner):
    result = run(runner, "validate", "--format", "json", *EXAMPLES)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data == {**data, "errors": 0, "warnings": 0}
    assert data["diagnostics"] == []
    assert len(data["files"]) == 14
    clean = [str(ROOT / "strategies" / name) for name in ("sma_crossover.yaml", "iron_condor.yaml", "spxw_condor.yaml",
                                                          "futures_breakout.yaml", "futures_breakout_es.yaml")]
    data = json.loads(run(runner, "validate", "--format", "json", *clean).stdout)
    assert data == {**data, "errors": 0, "warnings": 0, "diagnostics": []}


def test_strict_turns_warnings_into_errors(runner, warned):
    result = run(runner, "validate", str(warned))
    assert result.exit_code == 0, result.output
    assert re.search(r"warned\.yaml:5:19: warning: param 'spare' is declared but never used", result.output)
    result = run(runner, "validate", "--strict", str(warned))
    assert result.exit_code == 1
    assert re.search(r"warned\.yaml:5:19: error: param 'spare'", result.output)


@pytest.mark.parametrize("content", [
    b"",
    b"\xff\xfe\x00k\x00i",
    b"kind: strategy\nname: caf\xe9\n",
    b"\x00\x01\x02binary",
    b"kind: strategy\nname: t\ndata:\n\tbar: 1m\n",
    b"kind: [strategy]\n",
    b"kind: strategy\n" + b"name: " + b"[" * 200 + b"\n",
    b"kind: strategy\nname: !!python/object/apply:os.system [echo hi]\n",
    b"kind: strategy\nname: t\nparams: {a: &x [*x]}\n",
    b"kind: strategy\nname: t\nuniverse: ${HOME\n",
    b"kind: strategy\nname: t\nuniverse: [SPY]\ndata: {bar: 1m, history: 2d}\norders: {buy: 3}\n"
    b"entry: [{when: 'close > ((', order: buy}]\nindicators: {a: a, b: [1]}\nparams: [1, 2]\n",
    b"kind: risk\nname: r\nextends: risk.yaml\n",
    b"kind: universe\nname: u\ninclude: [../../../../etc/passwd.yaml]\n",
    b"kind: scanner\nname: s\nfactors: {a: 1}\n",
    b"kind: instruments\nname: i\nroots: {CL: [FUT]}\n",
])
def test_never_a_traceback(runner, tmp_path, content):
    path = tmp_path / "risk.yaml"
    path.write_bytes(content)
    result = run(runner, "validate", str(path))
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert DIAGNOSTIC.search(result.output), result.output


def test_missing_path(runner, tmp_path):
    result = run(runner, "validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2  # a path that does not exist is a usage error
    assert "no such file or directory" in result.output
    for command in (["backtest"], ["run", "--broker", "sim"], ["run", "--broker", "ib", "--port", "1"]):
        result = run(runner, *command[:1], str(tmp_path / "nope.yaml"), *command[1:])
        assert result.exit_code == 2 and "no such file or directory" in result.output, (command, result.output)


def test_schema_prints_json(runner):
    for kind in ("strategy", "universe", "instruments", "scanner", "risk"):
        result = run(runner, "schema", kind)
        assert result.exit_code == 0
        schema = json.loads(result.stdout)
        assert schema["$schema"].startswith("https://json-schema.org/")
        assert "properties" in schema


def test_functions(runner):
    result = run(runner, "functions")
    assert result.exit_code == 0
    assert re.search(r"^ema\(x, length\)\s+Exponential moving average", result.output, re.M)
    assert "crossover = crosses_above" in result.output
    result = run(runner, "functions", "crossover")
    assert result.exit_code == 0
    assert result.output.startswith("crosses_above(a, b)")
    result = run(runner, "functions", "ema2")
    assert "did you mean 'ema'" in result.output


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["validate", "--help"], ["schema", "--help"],
                                  ["functions", "--help"]])
def test_help(runner, args):
    result = run(runner, *args)
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_help_lists_commands(runner):
    result = run(runner, "--help")
    for command in ("validate", "schema", "functions"):
        assert command in result.output


def test_version(runner):
    result = run(runner, "--version")
    assert result.exit_code == 0
    assert result.output.startswith("qtrade ")


def test_a_set_of_the_wrong_type_names_the_param_its_value_and_bounds(tmp_path):
    out = CliRunner().invoke(main, ["backtest", "strategies/sma_crossover.yaml", "--set", "fast=abc",
                                        "--journal", str(tmp_path / "j.sqlite")])
    assert out.exit_code == 2
    assert "--set fast=abc: expected a number, got a string" in out.output
    assert "fast is a number (the file sets 10, min 2, max 200): e.g. --set fast=10" in out.output
    assert "{" not in out.output.split("\n")[1]        # not the YAML mapping, raw


@pytest.mark.parametrize("value, said", [("500%", "must be from 0% to 100%, got '500%'"),
                                         ("-10%", "must be from 0% to 100%, got '-10%'"),
                                         ("1.5", "must be <= 1, got 1.5"),
                                         ("100", "must be <= 1, got 100\n    a share is a fraction (0.25) or a "
                                                 "percentage with its sign: for 100 percent write 100%"),
                                         ("abc%", "'abc%' is not in the expected format"),
                                         ("fifty", "'fifty' is not in the expected format\n    a share: a "
                                                   "percentage (\"25%\") or the fraction it is (0.25)")])
def test_a_share_out_of_range_says_the_range_whether_a_percentage_or_a_fraction(runner, tmp_path, value, said):
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    assert "percent_of_equity: 100%" in text
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("percent_of_equity: 100%", f"percent_of_equity: {value}"))
    result = run(runner, "validate", str(path))
    assert result.exit_code != 0
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "percent_of_equity: 100%" in t)
    assert f"{path}:{line}:" in result.output and said in result.output, result.output


def test_a_misspelt_entry_section_is_one_error_not_three(runner, tmp_path):
    """`entyr:` is the schema's unknown key with its "did you mean 'entry'": not also "the
    strategy has no entry rules" and "order 'buy_all_in' is never used"."""
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("\nentry:", "\nentyr:"))
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    assert "unknown key 'entyr' at the top level (did you mean 'entry'?)" in result.output, result.output
    assert "no entry rules" not in result.output and "never used" not in result.output, result.output
    assert "1 error, 0 warnings" in result.output


def test_a_list_with_an_item_twice_names_the_item(runner, tmp_path):
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("universe: [SPY]", "universe: [SPY, QQQ, SPY, QQQ, IWM]"))
    result = run(runner, "validate", str(path))
    assert result.exit_code != 0
    assert "universe lists 'SPY', 'QQQ' more than once" in result.output, result.output


def test_explain_says_scan_picked_once_where_the_file_says_it_too(runner):
    """breakout.yaml's entry ends `and scan.picked`; the engine adds the scan to every entry of a
    strategy with a scanner, but not a second time."""
    result = run(runner, "explain", str(ROOT / "strategies" / "breakout.yaml"))
    assert result.exit_code == 0, result.output
    when = next(line for line in result.output.splitlines() if line.strip().startswith("when:") and "mfi" in line)
    assert when.count("scan.picked") == 1, when


@pytest.mark.parametrize("command", [["backtest"], ["run", "--broker", "sim"]])
def test_a_run_shows_the_warnings_validate_gives_before_it_runs(command, tmp_path):
    """A rule that divides by zero validates with a warning (it never fires): a backtest or a
    simulated run prints that warning, at its line and column, on stderr, and still runs."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "strategies" / "sma_crossover.yaml").read_text()
    text = text.replace("when: crosses_above(fast_ma, slow_ma)", "when: close / 0 > 1").replace(
        "source: data/", f"source: {root / 'strategies' / 'data'}/")
    path = tmp_path / "div.yaml"
    path.write_text(text)
    out = CliRunner().invoke(main, [*command, str(path), "--journal", str(tmp_path / "j.sqlite"),
                                        "--from", "2017-01-03", "--to", "2017-03-31"])
    assert out.exit_code == 0, out.output
    assert f"{path}:22:19: warning: division by zero" in out.stderr
    plain = CliRunner().invoke(main, [*command, str(root / "strategies" / "sma_crossover.yaml"), "--journal",
                                          str(tmp_path / "k.sqlite"), "--from", "2017-01-03", "--to", "2017-03-31"])
    assert plain.exit_code == 0 and "warning" not in plain.stderr


def test_a_misspelt_section_is_named_where_its_names_are_used_not_guessed_at(runner, tmp_path):
    """`indicatros:` for `indicators:`: the key's error, and each rule's use of an indicator it
    defines says where that indicator is written and what to rename; no 'did you mean' another
    name, and no 'param never used' for the params those indicators read."""
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text().replace("\nindicators:", "\nindicatros:")
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace("source: data/", f"source: {ROOT / 'strategies' / 'data'}/"))
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if t.startswith("indicatros:"))
    result = run(runner, "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:{line}:1: error: unknown key 'indicatros' at the top level (did you mean 'indicators'?)" \
        in result.output
    used = [ln for ln in result.output.splitlines() if "unknown name 'fast_ma'" in ln]
    assert len(used) == 2 and all(f"it is defined under 'indicatros' (line {line}), which is not a section qtrade "
                                  "reads: rename it 'indicators'" in ln for ln in used)
    assert "did you mean 'fast'" not in result.output and "never used" not in result.output


def test_an_internal_error_names_the_debug_flag_where_it_goes(runner, monkeypatch):
    """A bug's one line says how to see its traceback, with --debug before the command (where
    the option is), and that command then shows it."""
    from engine.dsl import registry

    def broken(name):
        raise RuntimeError("boom")

    monkeypatch.setattr(registry, "lookup", broken)
    result = runner.invoke(main, ["functions", "sma"])
    assert result.exit_code == 70
    assert "qtrade: internal error: RuntimeError: boom" in result.output
    assert "rerun as `qtrade --debug functions ...` for the traceback" in result.output
    debug = runner.invoke(main, ["--debug", "functions", "sma"])
    assert isinstance(debug.exception, RuntimeError)


@pytest.mark.parametrize("value", ["10", "2.5", "0s", "soon"])
def test_run_for_wants_a_duration_with_its_unit(value):
    """`--for 10` was taken as 10 seconds unsaid: a bare number (or no duration) is refused at the
    flag, before anything connects."""
    out = CliRunner().invoke(main, ["run", str(ROOT / "strategies" / "sma_crossover.yaml"), "--broker", "ib",
                                    "--for", value])
    assert out.exit_code == 2 and f"--for '{value}': expected a positive duration such as 90s, 30m or 6h" in out.output
    assert "Traceback" not in out.output

"""Issue 14 item 1: every property of every schema is accounted for. Each one either has
behaviour evidence in tests/test_key_effects.py (a pair of documents differing in that property
and the observable that differs in each mode that reads it), is refused by `validate` as not
supported yet (engine.check.support; each refusal is tried below on a hand-made document, at its
line), or is listed here with the reason nothing reads it. A new schema property fails this test
until it has one of the three."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from engine.check.support import CHECKED_APART, NOT_SUPPORTED, UNSUPPORTED
from test_key_effects import EFFECTS
from test_schemas import FILES, SCHEMA, object_definitions

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (270, 10, 14)      # properties with a behaviour test, refused, listed as not read (of 294)

FREE_TEXT = "free text for the reader: no behaviour by design"
# (schema, pointer of the property) -> ("refused", the document path engine.check.support refuses)
#                                    or ("not read", why nothing reads it and it is not refused)
ACCOUNTED = {
    ("strategy", "/tags"): ("not read", "free labels for listing and filtering: no behaviour by design"),
    ("strategy", "/description"): ("not read", FREE_TEXT),
    ("strategy", "/$defs/agent/description"): ("not read", FREE_TEXT),
    ("strategy", "/$defs/data/what_to_show"): ("refused", ("data", "what_to_show")),        # unless trades
    ("strategy", "/$defs/single_order/outside_rth"): ("refused", ("orders", "*", "outside_rth")),   # when true
    ("strategy", "/$defs/entry_rule/quantity"): ("refused", ("entry", "*", "quantity")),
    ("strategy", "/$defs/combo_order/underlying"): ("refused", ("orders", "*", "underlying")),  # unless the symbol
    ("universe", "/contract"): ("refused", ("contract", "roll_days_before_expiry")),
    ("universe", "/properties/contract/roll_days_before_expiry"): ("refused", ("contract", "roll_days_before_expiry")),
    ("universe", "/properties/contract/month"): ("not read", "futures roots are not resolved to contracts yet "
                                                             "(the roll offset next to it is refused)"),
    ("universe", "/properties/defaults/exchange"): ("refused", ("defaults", "exchange")),    # unless SMART
    ("universe", "/properties/defaults/currency"): ("refused", ("defaults", "currency")),    # unless USD
    **{(kind, f"/{k}"): ("not read", FREE_TEXT) for kind in ("universe", "instruments", "risk")
       for k in ("name", "description")},
    **{("instruments", f"/$defs/{d}/description"): ("not read", FREE_TEXT) for d in ("root", "default_entry")},
    ("scanner", "/description"): ("not read", FREE_TEXT),
    ("scanner", "/$defs/factor/description"): ("not read", FREE_TEXT),
    ("risk", "/order_rate_limit"): ("refused", ("order_rate_limit",)),
    ("risk", "/$defs/limits/order_rate_limit"): ("refused", ("order_rate_limit",)),
}


def test_every_schema_property_has_a_behaviour_test_a_refusal_or_a_reason():
    counts = {"behaviour": 0, "refused": 0, "not read": 0}
    unaccounted = []
    refused_paths = {(kind, path) for kind, path, *_ in UNSUPPORTED} | set(CHECKED_APART)
    seen = set()
    for name in FILES:
        kind = name.split(".")[0]
        for pointer, node in object_definitions(SCHEMA[name]):
            for prop in node["properties"]:
                key = (kind, f"{pointer}/{prop}")
                seen.add(key)
                status = ACCOUNTED.get(key)
                if status is not None:
                    assert key not in EFFECTS, f"{key} is {status[0]} and has a behaviour test: which is it?"
                    counts[status[0]] += 1
                    if status[0] == "refused":
                        # the risk schema's properties are also a strategy's inline risk: section
                        assert (kind, status[1]) in refused_paths or ("strategy", ("risk",) + status[1]) \
                            in refused_paths, key
                    continue
                if key in EFFECTS:
                    counts["behaviour"] += 1
                else:
                    unaccounted.append(key)
    assert not unaccounted, f"schema properties with no behaviour test, refusal or reason: {unaccounted}"
    assert not set(EFFECTS) - seen, f"behaviour tests of properties no schema has: {sorted(set(EFFECTS) - seen)}"
    assert not set(ACCOUNTED) - seen, f"listed properties no schema has: {sorted(set(ACCOUNTED) - seen)}"
    assert sum(counts.values()) == 294
    assert counts == {"behaviour": COUNTS[0], "refused": COUNTS[1], "not read": COUNTS[2]}


STRATEGY = """\
kind: strategy
name: t
universe: [SPY]
data: {{bar: 1d, source: {data}{data_extra}}}
{schedule}
indicators:
  fast: sma(close, 5)
  slow: sma(close, 20)
entry:
  - name: up
    when: crosses_above(fast, slow)
    order: buy
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
risk: {{max_open_positions: 1, margin_check: off{risk_extra}}}
{extra}
"""


def _strategy(tmp_path, data_extra="", schedule="schedule: {timezone: America/New_York, every: 1d}",
              risk_extra="", extra=""):
    path = tmp_path / "s.yaml"
    path.write_text(STRATEGY.format(data=ROOT / "strategies" / "data" / "SPY.csv", data_extra=data_extra,
                                    schedule=schedule, risk_extra=risk_extra, extra=extra))
    return path


def _errors(output: str) -> list[tuple[int, int, str]]:
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in re.finditer(r"^[^\n]*?:(\d+):(\d+): error: ([^\n]+)$", output, re.M)]


@pytest.mark.parametrize("kw, key", [
    ({"schedule": "schedule: {timezone: America/New_York, every: 1w}"}, "schedule.every"),
    ({"data_extra": ", what_to_show: midpoint"}, "data.what_to_show"),
])
def test_unsupported_strategy_keys_are_refused_at_their_line(tmp_path, kw, key):
    path = _strategy(tmp_path, **kw)
    lines = path.read_text().splitlines()
    last = key.split(".")[-1] + ":"
    line = next(i for i, text in enumerate(lines, start=1) if last in text)
    col = lines[line - 1].index(last) + 1
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert len(errors) == 1, result.output
    assert errors[0][:2] == (line, col)
    assert errors[0][2].startswith(f"{key}: ") and errors[0][2].endswith(NOT_SUPPORTED)
    result = runner.invoke(main, ["backtest", str(path), "--journal", str(tmp_path / "j.sqlite")])
    assert result.exit_code == 1 and NOT_SUPPORTED in result.output and "nothing was run" in result.output
    assert not (tmp_path / "j.sqlite").exists()


def test_the_defaults_of_what_runs_do_are_accepted(tmp_path):
    path = _strategy(tmp_path, extra="",
                     schedule="schedule: {timezone: America/New_York, every: 1d, scan_every: null}",
                     data_extra=", subscriptions: null, what_to_show: trades", risk_extra=", volatility_scaling: null")
    path.write_text(path.read_text().replace("type: market,", "type: market, outside_rth: false,"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_an_order_outside_regular_hours_is_refused(tmp_path):
    path = _strategy(tmp_path)
    path.write_text(path.read_text().replace("type: market,", "type: market, outside_rth: true,"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert [(line, msg.split(":")[0]) for line, _, msg in errors] == [(14, "orders.buy.outside_rth")]
    assert errors[0][2].endswith(NOT_SUPPORTED)


def test_unsupported_keys_of_risk_and_universe_documents(tmp_path):
    risk = tmp_path / "r.yaml"
    risk.write_text("kind: risk\nname: r\nmax_open_positions: 2\norder_rate_limit:\n  orders: 10\n  per: 1m\n")
    universe = tmp_path / "u.yaml"
    universe.write_text("kind: universe\nname: u\nsymbols: [ES]\ndefaults: {sec_type: FUT, currency: USD}\n"
                        "contract:\n  month: front\n  roll_days_before_expiry: 3\n")
    result = CliRunner().invoke(main, ["validate", str(risk), str(universe)])
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert [(line, col, msg.split(":")[0]) for line, col, msg in errors] == [
        (4, 1, "order_rate_limit"), (7, 3, "contract.roll_days_before_expiry")]
    hint = result.output.split("contract.roll_days_before_expiry:", 1)[1]     # its hint follows it
    assert "roll_days in the instrument map" in hint and "roll of a held position" in hint


def test_a_time_of_day_on_daily_bars_is_refused_at_its_line(tmp_path):
    path = _strategy(tmp_path, schedule='schedule: {timezone: America/New_York, entry_window: ["09:45", "15:30"], '
                                        'flat_by: "15:55"}')
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert [msg.split(":")[0] for _, _, msg in _errors(result.output)] == ["schedule.entry_window",
                                                                           "schedule.flat_by"]
    assert "a 1d bar has no time of day" in result.output


def test_an_exit_order_where_every_entry_opens_a_combo_is_refused_at_its_line(tmp_path):
    text = (ROOT / "strategies" / "iron_condor.yaml").read_text().replace("data/", str(ROOT / "strategies" / "data")
                                                                          + "/")
    assert "reason: took half the credit}" in text
    text = text.replace("reason: took half the credit}", "reason: took half the credit, order: condor}")
    first = next(i for i, line in enumerate(text.splitlines()) if "order: condor}" in line)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert [(line, msg.split(":")[0]) for line, _, msg in errors] == [(first + 1, "exit.0.order")]
    assert "closed whole at the price policy of the order that opened it" in result.output


def test_a_scanner_document_validates_and_its_types_are_checked(tmp_path):
    """Scanners run (`qtrade scan`, and strategies that name one): the document is no longer
    refused at its kind, and its types and expressions are checked at their lines."""
    scanner = tmp_path / "s.yaml"
    scanner.write_text((ROOT / "strategies" / "scanners" / "composite.yaml").read_text()
                       .replace("../../universes/", str(ROOT / "universes") + "/"))
    result = CliRunner().invoke(main, ["validate", str(scanner)])
    assert result.exit_code == 0, result.output
    scanner.write_text(scanner.read_text().replace("top: 25", "top: many"))
    result = CliRunner().invoke(main, ["validate", str(scanner)])
    lines = scanner.read_text().splitlines()
    top = next(i for i, t in enumerate(lines, start=1) if t.startswith("top:"))
    assert [line for line, _, _ in _errors(result.output)] == [top] and "top" in result.output


def test_explain_still_shows_the_plan_and_says_a_run_refuses_it():
    copy = ROOT / "strategies" / ".explain-refused.yaml"      # beside the example: its paths resolve
    copy.write_text((ROOT / "strategies" / "breakout.yaml").read_text().replace("  session: regular",
                                                                                "  session: regular\n  what_to_show: midpoint"))
    try:
        result = CliRunner().invoke(main, ["explain", str(copy)])
    finally:
        copy.unlink()
    assert result.exit_code == 0
    assert result.stdout.startswith("Plan of ema-atr-breakout")
    assert "data.what_to_show: this IB bar type " + NOT_SUPPORTED in result.stderr
    assert "backtest and run refuse this strategy while this key is in it" in result.stderr


# Behaviour, for the keys a backtest of the SMA crossover reads: each changes its result.
import copy  # noqa: E402

import yaml  # noqa: E402

CHANGES = [
    (("backtest", "cash"), 50_000), (("backtest", "fill"), "close"), (("backtest", "commission"), {"per_order": 5}),
    (("backtest", "slippage"), {"percent": "0.1%"}), (("backtest", "start"), "2012-01-01"),
    (("backtest", "end"), "2015-01-01"), (("risk", "max_position"), "10%"), (("risk", "max_drawdown"), "5%"),
    (("risk", "circuit_breaker"), {"consecutive_losses": 2, "pause": "30d"}), (("data", "adjusted"), True),
    (("params", "fast", "value"), 12), (("orders", "buy_all_in", "quantity"), {"percent_of_equity": "50%"}),
]


def _result(tmp_path, doc) -> tuple:
    from engine.report.run_summary import summarize_result
    from engine.runtime import backtest as bt

    path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    summary = summarize_result(bt.run(bt.prepare(path)))
    return round(summary["end_equity"], 6), summary["trades"], summary["blocked"]


def _sma_doc() -> dict:
    from engine.config.yamlsource import load_yaml

    doc = load_yaml(str(ROOT / "strategies" / "sma_crossover.yaml")).data    # YAML 1.2: `off` stays a string
    doc["data"]["source"] = str(ROOT / "strategies" / "data") + "/"
    return doc


@pytest.fixture(scope="module")
def sma_base(tmp_path_factory):
    return _result(tmp_path_factory.mktemp("base"), _sma_doc())


@pytest.fixture(scope="module")
def condor_base(tmp_path_factory):
    return _result(tmp_path_factory.mktemp("base"), _condor_doc())


@pytest.mark.parametrize("path, value", CHANGES, ids=[".".join(p) for p, _ in CHANGES])
def test_each_backtest_key_changes_the_run(tmp_path, path, value, sma_base):
    changed = copy.deepcopy(_sma_doc())
    node = changed
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    assert _result(tmp_path, changed) != sma_base


CONDOR_CHANGES = [
    (("backtest", "options", "iv"), 0.3), (("backtest", "options", "iv_scale"), 1.5),
    (("backtest", "options", "skew"), 0.0), (("backtest", "options", "spread"), {"percent": "20%", "minimum": 0.05}),
    (("backtest", "options", "fill_fraction"), 1.0), (("backtest", "commission"), {"per_contract": 2.0}),
    (("risk", "max_margin_per_trade"), 100), (("schedule", "entry_window"), ["10:30", "11:00"]),
    (("schedule", "flat_by"), "12:00"), (("params", "take_profit", "value"), "90%"),
    (("orders", "condor", "price", "chase", "steps"), 1),
]


def _condor_doc() -> dict:
    from engine.config.yamlsource import load_yaml

    doc = load_yaml(str(ROOT / "strategies" / "iron_condor.yaml")).data
    doc["data"]["source"] = str(ROOT / "strategies" / "data") + "/"
    return doc


@pytest.mark.parametrize("path, value", CONDOR_CHANGES, ids=[".".join(p) for p, _ in CONDOR_CHANGES])
def test_each_options_backtest_key_changes_the_run(tmp_path, path, value, condor_base):
    changed = copy.deepcopy(_condor_doc())
    node = changed
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    assert _result(tmp_path, changed) != condor_base


@pytest.mark.parametrize("subs, line_key, message", [
    ("{max_lines: 5, reserve_for_positions: 5}", "reserve_for_positions:",
     "reserve_for_positions 5 leaves no line of the 5 for names not held"),
    ("{max_lines: 3}", "max_lines:", "reserve_for_positions 5 (the default) leaves no line of the 3 for names not held"),
])
def test_a_line_budget_with_no_room_for_names_not_held_is_refused_at_its_line(tmp_path, subs, line_key, message):
    """data.subscriptions is read by IB runs (engine/brokers/ib/broker.py's LineBudget; the
    rotation itself is tests/ibbroker/test_broker_ib.py and the run's scenario 15): a budget
    whose reserve leaves no line for the names not held is an error at its key."""
    path = _strategy(tmp_path, data_extra=f",\n  subscriptions: {subs}")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert [e[2].split(" (e.g.")[0] for e in errors] == [message], result.output
    lines = path.read_text().splitlines()
    assert errors[0][0] == next(i for i, t in enumerate(lines, start=1) if line_key in t)
    ok = _strategy(tmp_path, data_extra=",\n  subscriptions: {max_lines: 5, reserve_for_positions: 2, ttl: 30s}")
    assert CliRunner().invoke(main, ["validate", str(ok)]).exit_code == 0


@pytest.mark.parametrize("ranks, line_key, message", [
    ("{positions: 60, watchlist: 90}", "positions: 60",
     "priorities: positions (60) must be above every other class (watchlist 90): an open position's line is never "
     "given up"),
    ("{top_signals: 100}", "priorities:",
     "priorities: positions (100, the default) must be above every other class (top_signals 100): an open "
     "position's line is never given up"),
])
def test_line_priorities_where_positions_are_not_the_highest_are_refused_at_their_line(tmp_path, ranks, line_key,
                                                                                      message):
    """data.subscriptions.priorities orders the IB line budget's classes by their numbers
    (tests/ibbroker/test_budget.py); positions must be the highest, at its key (or at the
    priorities when positions is left at its default); an unknown class is the schema's error."""
    path = _strategy(tmp_path, data_extra=f",\n  subscriptions: {{max_lines: 20,\n    priorities: {ranks}}}")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert [e[2] for e in errors] == [message], result.output
    lines = path.read_text().splitlines()
    assert errors[0][0] == next(i for i, t in enumerate(lines, start=1) if line_key in t)
    unknown = _strategy(tmp_path, data_extra=",\n  subscriptions: {priorities: {futures: 80}}")
    result = CliRunner().invoke(main, ["validate", str(unknown)])
    assert result.exit_code == 1 and "futures" in result.output
    ok = _strategy(tmp_path, data_extra=",\n  subscriptions: {check_every: 2m, priorities: {positions: 100, "
                                        "watchlist: 40, top_signals: 95, scanner: 25}}")
    assert CliRunner().invoke(main, ["validate", str(ok)]).exit_code == 0


@pytest.mark.parametrize("old, new, key", [
    ("    order: buy\n", "    order: buy\n    quantity: {fixed: 5}\n", "entry.0.quantity"),
    ("margin_check: off", "margin_check: off, order_rate_limit: {orders: 10, per: 1m}", "risk.order_rate_limit"),
    ("universe: [SPY]\n", "universe: [SPY]\nunderlying: XSP\n", "underlying"),
])
def test_keys_runs_ignored_are_refused_at_their_line(tmp_path, old, new, key):
    path = _strategy(tmp_path)
    path.write_text(path.read_text().replace(old, new, 1))
    lines = path.read_text().splitlines()
    last = key.split(".")[-1] + ":"
    line = next(i for i, text in enumerate(lines, start=1) if last in text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert [(n, msg.split(":")[0]) for n, _, msg in errors] == [(line, key)]
    assert errors[0][1] == lines[line - 1].index(last) + 1 and errors[0][2].endswith(NOT_SUPPORTED)


def test_an_order_underlying_other_than_the_traded_symbol_is_refused(tmp_path):
    from engine.config.yamlsource import load_yaml

    text = (ROOT / "strategies" / "iron_condor.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("    expiry: 0dte\n", "    expiry: 0dte\n    underlying: SPY\n", 1))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    line = path.read_text().splitlines().index("    underlying: SPY") + 1
    assert [(n, msg.split(":")[0]) for n, _, msg in _errors(result.output)] == [(line, "orders.condor.underlying")]
    path.write_text(text.replace("    expiry: 0dte\n", "    expiry: 0dte\n    underlying: XSP\n", 1))
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0   # the traded symbol itself
    assert load_yaml(str(path)).data["underlying"] == "XSP"


def test_universe_defaults_runs_ignore_and_a_rate_limit_in_a_risk_file_are_refused(tmp_path):
    universe = tmp_path / "u.yaml"
    universe.write_text("kind: universe\nname: u\nsymbols: [SPY]\ndefaults:\n  sec_type: STK\n  exchange: ARCA\n"
                        "  currency: CAD\n")
    risk = tmp_path / "r.yaml"
    risk.write_text("kind: risk\nname: r\norder_rate_limit: {orders: 10, per: 1m}\n")
    result = CliRunner().invoke(main, ["validate", str(universe), str(risk)])
    assert result.exit_code == 1
    assert sorted((n, c, msg.split(":")[0]) for n, c, msg in _errors(result.output)) == [
        (3, 1, "order_rate_limit"), (6, 3, "defaults.exchange"), (7, 3, "defaults.currency")]
    assert "r.yaml:3:1: error: order_rate_limit" in result.output and "u.yaml:6:3: error: defaults.exchange" \
        in result.output
    universe.write_text("kind: universe\nname: u\nsymbols: [SPY]\ndefaults: {sec_type: STK, exchange: SMART, "
                        "currency: USD}\n")
    assert CliRunner().invoke(main, ["validate", str(universe)]).exit_code == 0


@pytest.mark.parametrize("kw, line, col, words", [
    ({"data_extra": ",\n  adjusted: {round: -1}"}, 5, 21, "data.adjusted.round must be >= 0, got -1"),
    ({"data_extra": ",\n  adjusted: {round: 1.5}"}, 5, 21, "data.adjusted.round: expected a whole number"),
    ({"data_extra": ",\n  adjusted: {decimals: 2}"}, 5, 14, "unknown key 'decimals' in data.adjusted"),
    ({"extra": "backtest: {warmup: from_the_start}"}, 16, 20, "'from_the_start' is not allowed (did you mean 'from_start'?)"),
    ({"extra": "backtest: {start: 2012-01-01, warmup: true}"}, 16, 39, "backtest.warmup: expected a string"),
])
def test_bad_rounding_and_warmup_values_are_refused_at_their_column(tmp_path, kw, line, col, words):
    """data.adjusted: {round: N} takes a whole number of decimals 0-10, backtest.warmup
    before_start or from_start: anything else is an error at its line and column."""
    path = _strategy(tmp_path, **kw)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert errors and all(e[0] == line for e in errors), result.output
    assert any(e[:2] == (line, col) and words in e[2] for e in errors), result.output


def test_sar_factors_the_wrong_way_round_are_refused_at_their_column(tmp_path):
    path = _strategy(tmp_path)
    path.write_text(path.read_text().replace("slow: sma(close, 20)", "slow: sar(0.3, 0.2)"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    errors = _errors(result.output)
    assert errors[0][:2] == (8, 9) and errors[0][2].startswith("sar(): accel 0.3 is above max 0.2"), result.output

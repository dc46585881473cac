"""Issue 14 item 1 (in part): every property of every schema is accounted for. Each one is
either referenced by the engine's code (a static check: its name appears as a string in engine/
or cli.py, which is evidence it is read, not a proof of its effect), refused by `validate` as
not supported yet (engine.check.support; each refusal is tried below on a hand-made document,
at its line), or listed here with the reason nothing reads it yet. A new schema property that
nothing reads fails this test until it is implemented, refused, or listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from engine.check.support import CHECKED_APART, NOT_SUPPORTED, UNSUPPORTED
from test_schemas import FILES, SCHEMA, object_definitions

ROOT = Path(__file__).resolve().parent.parent

# (schema, pointer of the property) -> ("refused", the document path engine.check.support refuses)
#                                    or ("not read", why nothing reads it and it is not refused)
ACCOUNTED = {
    ("strategy", "/tags"): ("not read", "free labels for listing and filtering: no behaviour by design"),
    ("strategy", "/arbitration"): ("refused", ("arbitration", "policy")),
    ("strategy", "/properties/arbitration/policy"): ("refused", ("arbitration", "policy")),
    ("strategy", "/properties/arbitration/max_active_agents"): ("refused", ("arbitration", "max_active_agents")),
    ("strategy", "/$defs/subscriptions/check_every"): ("refused", ("data", "subscriptions", "check_every")),
    ("strategy", "/$defs/subscriptions/priorities"): ("refused", ("data", "subscriptions", "priorities")),
    **{("strategy", f"/$defs/subscriptions/properties/priorities/{k}"): ("refused", ("data", "subscriptions",
                                                                                     "priorities"))
       for k in ("watchlist", "top_signals")},
    ("strategy", "/$defs/schedule/every"): ("refused", ("schedule", "every")),     # when it is not the bar size
    ("strategy", "/$defs/schedule/scan_every"): ("refused", ("schedule", "scan_every")),
    ("strategy", "/$defs/schedule/max_new_entries_per_scan"): ("refused", ("schedule", "max_new_entries_per_scan")),
    ("strategy", "/$defs/data/what_to_show"): ("refused", ("data", "what_to_show")),        # unless trades
    ("strategy", "/$defs/single_order/outside_rth"): ("refused", ("orders", "*", "outside_rth")),   # when true
    ("universe", "/contract"): ("refused", ("contract", "roll_days_before_expiry")),
    ("universe", "/properties/contract/roll_days_before_expiry"): ("refused", ("contract", "roll_days_before_expiry")),
    ("universe", "/properties/contract/month"): ("not read", "futures roots are not resolved to contracts yet "
                                                             "(the roll offset next to it is refused)"),
    **{("scanner", f"{where}/{k}"): ("not read", "scanner documents are only type-checked: a strategy that names "
                                                 "a scanner is refused (scanner)")
       for where in ("", "/$defs/body") for k in ("min_score", "top", "rescan")},
    **{("scanner", f"/$defs/factor/{k}"): ("not read", "scanner documents are only type-checked: a strategy that "
                                                       "names a scanner is refused (scanner)")
       for k in ("normalise", "invert")},
    ("risk", "/volatility_scaling"): ("refused", ("volatility_scaling",)),
    ("risk", "/$defs/limits/volatility_scaling"): ("refused", ("volatility_scaling",)),
}


def _engine_text() -> str:
    files = [p for p in (ROOT / "engine").rglob("*.py") if p.name != "support.py"] + [ROOT / "cli.py"]
    return "\n".join(p.read_text() for p in files)


def test_every_schema_property_is_read_refused_or_listed():
    text = _engine_text()
    counts = {"referenced": 0, "refused": 0, "not read": 0}
    unaccounted = []
    refused_paths = {(kind, path) for kind, path, *_ in UNSUPPORTED} | set(CHECKED_APART)
    for name in FILES:
        kind = name.split(".")[0]
        for pointer, node in object_definitions(SCHEMA[name]):
            for prop in node["properties"]:
                key = (kind, f"{pointer}/{prop}")
                status = ACCOUNTED.get(key)
                if status is not None:
                    counts[status[0]] += 1
                    if status[0] == "refused":
                        # the risk schema's properties are also a strategy's inline risk: section
                        assert (kind, status[1]) in refused_paths or ("strategy", ("risk",) + status[1]) \
                            in refused_paths, key
                    continue
                if re.search(r"[\"']" + re.escape(prop) + r"[\"']", text):
                    counts["referenced"] += 1
                else:
                    unaccounted.append(key)
    assert not unaccounted, f"schema properties nothing reads, refuses or lists: {unaccounted}"
    assert sum(counts.values()) == 258
    assert counts == {"referenced": 232, "refused": 16, "not read": 10}
    # nothing listed as unread is read after all (then it belongs to the referenced ones)
    for (kind, pointer), (status, _) in ACCOUNTED.items():
        prop = pointer.rsplit("/", 1)[1]
        if status == "not read":
            assert not re.search(r"[\"']" + re.escape(prop) + r"[\"']", text), (kind, pointer)


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
    ({"data_extra": ", subscriptions: {max_lines: 50, check_every: 2m}"}, "data.subscriptions.check_every"),
    ({"data_extra": ", subscriptions: {max_lines: 50, priorities: {positions: 100}}"}, "data.subscriptions.priorities"),
    ({"schedule": "schedule: {timezone: America/New_York, every: 1d, scan_every: 60s}"}, "schedule.scan_every"),
    ({"schedule": "schedule:\n  every: 1d\n  max_new_entries_per_scan: 3"}, "schedule.max_new_entries_per_scan"),
    ({"schedule": "schedule: {timezone: America/New_York, every: 1w}"}, "schedule.every"),
    ({"data_extra": ", what_to_show: midpoint"}, "data.what_to_show"),
    ({"extra": "arbitration: {policy: first}"}, "arbitration.policy"),
    ({"extra": "arbitration:\n  max_active_agents: 2"}, "arbitration.max_active_agents"),
    ({"risk_extra": ", volatility_scaling: {target_annual_vol: 15%}"}, "risk.volatility_scaling"),
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
    path = _strategy(tmp_path, extra="arbitration: {policy: highest_score, max_active_agents: 1}",
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
    risk.write_text("kind: risk\nname: r\nmax_open_positions: 2\nvolatility_scaling:\n  target_annual_vol: 15%\n")
    universe = tmp_path / "u.yaml"
    universe.write_text("kind: universe\nname: u\nsymbols: [ES]\ndefaults: {sec_type: FUT, currency: USD}\n"
                        "contract:\n  month: front\n  roll_days_before_expiry: 3\n")
    result = CliRunner().invoke(main, ["validate", str(risk), str(universe)])
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert [(line, col, msg.split(":")[0]) for line, col, msg in errors] == [
        (4, 1, "volatility_scaling"), (7, 3, "contract.roll_days_before_expiry")]


def test_explain_still_shows_the_plan_and_says_a_run_refuses_it():
    result = CliRunner().invoke(main, ["explain", str(ROOT / "strategies" / "breakout.yaml")])
    assert result.exit_code == 0
    assert result.stdout.startswith("Plan of ema-atr-breakout")
    assert "schedule.scan_every: a scan cadence for names not held " + NOT_SUPPORTED in result.stderr
    assert "backtest and run refuse this strategy while these keys are in it" in result.stderr


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

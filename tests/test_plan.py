"""The Plan compiler and its two evaluators, on real bars from ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from engine.dsl import registry
from engine.dsl.parser import parse
from engine.market.clock import clock_arrays
from engine.plan import nodes as N
from engine.plan.build import plan_from_file
from engine.plan.compiler import Compiler
from engine.plan.evaluate import Bars, Stream, align_asof, evaluate, value_at

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STRATEGIES = sorted(p for p in (ROOT / "strategies").glob("*.yaml") if not p.name.startswith("."))

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def _bars(frame: pd.DataFrame, tz: str, bar_seconds: float, calendar: str | None = None) -> Bars:
    fields = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")}
    return Bars(fields, clock_arrays(frame.index, tz, bar_seconds, calendar))


@pytest.fixture(scope="module")
def spy() -> Bars:
    df = pd.read_csv(DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv", parse_dates=["Date"])
    df = df.rename(columns=str.lower).set_index("date")
    df.index = df.index.tz_localize("America/New_York")
    return _bars(df, "America/New_York", 86400)


@pytest.fixture(scope="module")
def nq() -> Bars:
    df = pd.read_csv(DATA / "firstratedata_nq_sample" / "NQ_1min_sample.csv", parse_dates=["timestamp"])
    df = df.set_index("timestamp")
    df.index = df.index.tz_localize("America/New_York")
    return _bars(df, "America/New_York", 60)


def compile_one(text: str, params=None, named=None):
    c = Compiler(params or {}, {k: parse(v) for k, v in (named or {}).items()})
    return c, c.expr(parse(text))


# ---- compilation ---------------------------------------------------------------------------

def test_structurally_equal_subexpressions_are_one_node():
    c = Compiler({"fast": 8}, {})
    ids = {c.expr(parse(t)) for t in ("ema(close, 8)", "ema(close, length=8)", "ema(close, fast)",
                                      "ema(close, 4 * 2)", "ema( close , 8.0 )")}
    assert len(ids) == 1
    assert c.nodes[ids.pop()].label == "ema(close, 8)"


def test_defaults_are_filled_so_calls_with_and_without_them_match():
    c = Compiler()
    assert c.expr(parse("rsi(close)")) == c.expr(parse("rsi(close, 14)"))
    assert c.expr(parse("bb_upper(close)")) == c.expr(parse("bb_upper(close, 20, mult=2)"))
    assert c.expr(parse("crossover(a, b)".replace("a", "close").replace("b", "open"))) == \
        c.expr(parse("crosses_above(close, open)"))


def test_constant_folding_and_boolean_simplification():
    c, i = compile_one("close > 2 * 3 + 1")
    assert c.nodes[i].label == "close > 7"
    c, i = compile_one("true and close > open")
    assert c.nodes[i].label == "close > open"
    c, i = compile_one("false and close > open")
    assert c.nodes[i].op == N.CONST and c.nodes[i].attrs == (False,)
    c, i = compile_one("not not (close > open)")
    assert c.nodes[i].label == "close > open"
    c, i = compile_one("x between 1 and 2", named={"x": "close"})
    assert c.nodes[i].label == "close >= 1 and close <= 2"


def test_warmup_propagates_through_nested_calls_and_lags():
    c, i = compile_one("sma(ema(close, 10), 5)")
    assert c.nodes[i].warmup == 9 + 4
    c, i = compile_one("highest(high, 20)[1]")
    assert c.nodes[i].warmup == 19 + 1
    c, i = compile_one("close[1][2]")
    assert c.nodes[i].label == "close[3]" and c.nodes[i].warmup == 3
    c, i = compile_one("crosses_above(sma(close, 10), sma(close, 30))")
    assert c.nodes[i].warmup == 30


def test_registry_warmups_match_the_kernels():
    """The DSL registry's warm-up rule and the kernels' measured leading NaNs agree."""
    from engine.indicators import KERNELS

    rng = np.random.default_rng(7)
    x = 100 + np.cumsum(rng.normal(size=400))
    h, l, v = x + 1, x - 1, rng.uniform(1e5, 2e5, size=400)
    sess = np.repeat(np.arange(4), 100).astype(float)
    inputs = {"x": x, "a": x, "b": x[::-1].copy(), "high": h, "low": l, "close": x, "volume": v, "session": sess}
    for name, kernel in KERNELS.items():
        fn = registry.lookup(name)
        consts = [p for p in fn.params if p.kind in (registry.LENGTH, registry.CONSTANT)]
        for length in (2, 5, 14, 30):
            values = {p.name: (p.default if p.kind == registry.CONSTANT and p.default is not None else length)
                      for p in consts}
            if name == "hurst":
                values["length"] = max(length, 22)
            if name.startswith("macd"):
                values = {"fast": 12, "slow": 26, "signal": 9}
            args = [inputs[i] for i in kernel.inputs] + [values[p.name] for p in consts]
            out = kernel.func(*args)
            lead = int(np.argmax(out)) if kernel.boolean else int(np.argmax(~np.isnan(out)))
            expected = fn.warmup(values)
            if kernel.boolean:
                assert lead >= expected, name
            else:
                assert lead == expected == kernel.warmup_for(*[values[p.name] for p in consts]), (name, values)


def test_registry_minimums_are_the_kernels():
    """A length the checker lets through is one the kernel takes, and one below it is refused
    before the run (the kernel would raise in the middle of it)."""
    from engine.indicators import KERNELS

    x = 100 + np.arange(60.0) % 7
    inputs = {"x": x, "a": x, "b": x[::-1].copy(), "high": x + 1, "low": x - 1, "close": x,
              "volume": x * 1000, "session": np.zeros(60)}
    for name, kernel in KERNELS.items():
        fn = registry.lookup(name)
        consts = [p for p in fn.params if p.kind in (registry.LENGTH, registry.CONSTANT)]
        base = {p.name: p.default for p in consts}
        args = [inputs[i] for i in kernel.inputs]
        for p in consts:
            if p.kind != registry.LENGTH:
                continue
            assert p.minimum is not None, (name, p.name)
            ok = dict(base, **{p.name: p.minimum})
            kernel.func(*args, *ok.values())
            if p.minimum > 1:
                with pytest.raises(ValueError):
                    kernel.func(*args, *dict(base, **{p.name: p.minimum - 1}).values())


def test_plan_inputs_are_exactly_what_the_rules_read():
    plan = plan_from_file(ROOT / "strategies" / "iron_condor.yaml")
    assert plan.inputs.fields == {"VIX": {"close"}}
    assert {"credit", "margin", "position.pnl", "position.entry_credit"} <= plan.inputs.context
    plan = plan_from_file(ROOT / "strategies" / "breakout.yaml", unsupported_ok=True)
    assert plan.inputs.fields[None] == {"high", "low", "close", "volume"}
    assert plan.history == plan.warmup + 1


def test_every_example_strategy_compiles_and_shares_nodes():
    for path in STRATEGIES:
        plan = plan_from_file(path, unsupported_ok=True)
        labels = [(n.op, n.attrs, n.args, n.kind) for n in plan.nodes]   # kind: true is not 1
        assert len(labels) == len(set(labels)), f"{path.name}: duplicate nodes"
        for node in plan.nodes:
            assert all(a < node.id for a in node.args), "nodes must be in topological order"


def test_overrides_change_the_plan():
    plan = plan_from_file(ROOT / "strategies" / "sma_crossover.yaml", {"fast": "12", "slow": "50"})
    labels = {n.label for n in plan.nodes}
    assert "sma(close, 12)" in labels and "sma(close, 50)" in labels
    assert plan.warmup == 50


# ---- no look-ahead ---------------------------------------------------------------------------

def test_there_is_no_forward_indexing_in_the_language():
    from engine.dsl.checker import Scope, check
    from engine.dsl import types as T
    from engine.dsl.checker import Binding

    scope = Scope(names={"close": Binding(T.NUMBER_SERIES)})
    _, errors = check(parse("close[-1]"), scope, "close[-1]")
    assert errors and "future" in errors[0].message
    from engine.plan.compiler import CompileError
    with pytest.raises(CompileError):
        Compiler().expr(parse("close[-1]"))


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
def test_values_never_depend_on_later_bars(path, spy):
    """Evaluating on a prefix of the history gives the same values at those bars: no node of any
    example strategy can see a bar after the one it is computed for."""
    plan = plan_from_file(path, unsupported_ok=True)
    full = evaluate(plan, _with_others(plan, spy))
    for cut in (60, 250, 1000):
        part = evaluate(plan, _with_others(plan, _slice(spy, 0, cut)))
        for node in plan.nodes:
            if node.market and np.ndim(full[node.id]):
                _assert_same(full[node.id][:cut], part[node.id], node.label)


def _slice(bars: Bars, start: int, stop: int) -> Bars:
    return Bars({k: v[start:stop] for k, v in bars.fields.items()},
                {k: v[start:stop] for k, v in bars.clock.items()},
                {s: {k: v[start:stop] for k, v in f.items()} for s, f in bars.others.items()},
                {k: v[start:stop] for k, v in bars.scan.items()})


def _with_scan(plan, bars: Bars) -> Bars:
    """Scan results as inputs, when the plan reads them (their own freedom from look-ahead is
    tests/test_scanner.py's): a rank cycling through 1..30, picks the top 25, classes and grades."""
    if not plan.inputs.scan:
        return bars
    i = np.arange(len(bars))
    rank = (i % 30 + 1).astype(float)
    scan = {"rank": rank, "score": 100 - rank * 2, "picked": rank <= 25,
            "class": np.where(i % 3 == 0, "directional", "range_bound"), "grade": np.where(rank <= 5, "A", "B")}
    scan = {name: scan.get(name, rank / 30) for name in plan.inputs.scan}
    return Bars(bars.fields, bars.clock, bars.others, scan)


def _with_others(plan, bars: Bars) -> Bars:
    """Give every other symbol the plan reads a real series (VIX daily, aligned)."""
    bars = _with_scan(plan, bars)
    if not plan.inputs.symbols:
        return bars
    vix = pd.read_csv(DATA / "finance_vix" / "vix-daily.csv", parse_dates=["DATE"])
    spy_days = pd.read_csv(DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv",
                           parse_dates=["Date"])["Date"].to_numpy()[: len(bars)]
    aligned = align_asof(spy_days.astype("datetime64[ns]").astype(np.int64),
                         vix["DATE"].to_numpy().astype("datetime64[ns]").astype(np.int64),
                         vix["CLOSE"].to_numpy())
    others = {s: {"close": aligned} for s in plan.inputs.symbols}
    return Bars(bars.fields, bars.clock, others, bars.scan)


def _assert_same(a, b, label):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=label)
    else:
        assert np.array_equal(a, b), label


def test_other_symbols_are_aligned_by_close_time_without_look_ahead():
    # This symbol's 1-minute bars close at 10:01, 10:02, 16:01; the other symbol's daily bars
    # close at 16:00 each day: a bar sees yesterday's daily close until today's has happened.
    day = 86_400
    closes = np.array([10 * 3600 + 60, 10 * 3600 + 120, 16 * 3600 + 60]) + day
    other_closes = np.array([16 * 3600, 16 * 3600 + day])
    values = np.array([20.0, 30.0])
    np.testing.assert_array_equal(align_asof(closes, other_closes, values), [20.0, 20.0, 30.0])
    np.testing.assert_array_equal(align_asof(np.array([0]), other_closes, values), [np.nan])


# ---- vectorised == streaming ---------------------------------------------------------------

ALL_FUNCTIONS = {
    # one expression per registry function (and the operators), over this symbol's bars
    "sma": "sma(close, 7)", "ema": "ema(close, 9)", "wma": "wma(close, 5)", "rma": "rma(close, 6)",
    "stdev": "stdev(close, 10)", "highest": "highest(high, 12)", "lowest": "lowest(low, 12)",
    "change": "change(close, 3)", "roc": "roc(close, 4)", "zscore": "zscore(close, 15)",
    "percentrank": "percentrank(close, 20)", "hurst": "hurst(close, 40)", "rsi": "rsi(close, 14)",
    "tr": "tr()", "atr": "atr(10)", "adx": "adx(7)", "mfi": "mfi(14)", "vwap": "vwap()",
    "bb_upper": "bb_upper(close, 20, 2)", "bb_lower": "bb_lower(close, 20, 1.5)", "bb_width": "bb_width(close)",
    "macd": "macd(close, 12, 26, 9)", "macd_signal": "macd_signal(close, 5, 13, 4)",
    "macd_hist": "macd_hist(close)", "crosses_above": "crosses_above(ema(close, 5), sma(close, 20))",
    "crosses_below": "crosses_below(close, vwap())", "iv_rank": "iv_rank(atr(5), 30)",
    "abs": "abs(change(close))", "sign": "sign(change(close, 2))", "log": "log(volume)",
    "sqrt": "sqrt(volume)", "round": "round(close / 7, 2)", "min": "min(open, close, sma(close, 3))",
    "max": "max(open, close)", "clamp": "clamp(rsi(close), 30, 70)", "nz": "nz(sma(close, 50), close)",
    "if": "if(close > open, high, low)", "lag": "close[5] - sma(close, 5)[2]",
    "logic": "(close > open or volume > sma(volume, 10)) and not (close < low[1])",
    "between": "rsi(close) between 40 and 60", "in": "dayofweek in [1, 5]",
    "div": "(close - open) / (high - low)", "time": "time >= 10:00",
    "stoch_k": "stoch_k(14, 3)", "stoch_d": "stoch_d(length=9, smooth_d=4)", "willr": "willr(10)",
    "cci": "cci()", "obv": "obv()", "sar": "sar(0.02, 0.2)", "keltner_upper": "keltner_upper(20, 2, 10)",
    "keltner_middle": "keltner_middle(15)", "keltner_lower": "keltner_lower(mult=1.5, atr_length=14)",
    "stoch_cross": "crosses_above(stoch_k(), stoch_d())", "sar_stop": "close < sar()",
    "na": "na(sma(close, 50)) or na((close - open) / (high - low))",
    "defined": "defined(zscore(close, 5)) and not (close < sma(close, 30))",
}


def test_all_functions_covers_the_registry():
    covered = {name for name in ALL_FUNCTIONS}
    missing = set(registry.FUNCTIONS) - covered - {"symbol", "at_entry", "delta", "iv"}
    assert not missing, f"no streaming/vectorised test expression for {missing}"


def _stream_values(plan, bars: Bars, start: int, stop: int):
    stream = Stream(plan)
    rows = []
    names = list(bars.fields)
    for i in range(start, stop):
        values = stream.update({k: bars.fields[k][i] for k in names}, {k: bars.clock[k][i] for k in bars.clock},
                               scan={k: v[i] for k, v in bars.scan.items()})
        rows.append(list(values))
    return rows


def _check_stream_equals_vectorised(plan, bars: Bars, start: int, stop: int):
    sliced = _slice(bars, start, stop)
    vec = evaluate(plan, sliced)
    rows = _stream_values(plan, bars, start, stop)
    ties = _near_ties(plan, vec, stop - start)
    for node in plan.nodes:
        if not node.market or not np.ndim(vec[node.id]):
            continue
        streamed = np.array([row[node.id] for row in rows], dtype=vec[node.id].dtype)
        if vec[node.id].dtype == bool:
            # a streamed value within rounding of the vectorised one may only flip a comparison at a tie
            differ = vec[node.id] != streamed
            assert not (differ & ~ties).any(), (node.label, np.flatnonzero(differ & ~ties)[:5])
            continue
        _assert_same(vec[node.id], streamed, node.label)


def _near_ties(plan, vec: list, n: int) -> np.ndarray:
    """Bars where a comparison's (or a cross's) two sides are equal to within float rounding,
    and the bars after them that a lag can carry a result to: there a streamed indicator one
    ulp away from the vectorised one (TA-Lib's own arithmetic) may decide the other way."""
    tie = np.zeros(n, dtype=bool)
    for node in plan.nodes:
        crosses = node.op == N.CALL and node.attrs[0] in ("crosses_above", "crosses_below")
        if not node.market or not (node.op == N.COMPARE or crosses):
            continue
        a, b = (np.asarray(vec[i]) for i in node.args[:2])
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            continue   # labels (regime == "calm") are never near a tie
        near = np.broadcast_to(np.isclose(a, b, rtol=1e-9, atol=1e-12), (n,))
        tie = tie | near
        if crosses:
            tie[1:] |= near[:-1]
    reach = max([node.attrs[0] for node in plan.nodes if node.op == N.LAG] + [0])
    for k in range(1, reach + 1):
        tie[k:] |= tie[:-k]
    return tie


def _plan_of(exprs: dict[str, str]):
    c = Compiler()
    outputs = {k: c.expr(parse(v)) for k, v in exprs.items()}
    return N.Plan(c.nodes, outputs, [], c.inputs)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_streaming_equals_vectorised_on_random_slices_of_daily_bars(data, spy):
    plan = _plan_of(ALL_FUNCTIONS)
    start = data.draw(st.integers(0, len(spy) - 400))
    length = data.draw(st.integers(1, 350))
    _check_stream_equals_vectorised(plan, spy, start, start + length)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_streaming_equals_vectorised_on_random_slices_of_minute_bars(data, nq):
    plan = _plan_of(ALL_FUNCTIONS)
    start = data.draw(st.integers(0, len(nq) - 1500))
    _check_stream_equals_vectorised(plan, nq, start, start + 1200)


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
def test_streaming_equals_vectorised_for_every_example_strategy(path, spy):
    plan = plan_from_file(path, unsupported_ok=True)
    if plan.inputs.symbols:
        pytest.skip("needs other symbols' streams; covered by the alignment test")
    _check_stream_equals_vectorised(plan, _with_scan(plan, spy), 100, 700)


def test_gaps_are_skipped_identically_by_both_evaluators(spy):
    plan = _plan_of({k: ALL_FUNCTIONS[k] for k in ("sma", "ema", "rsi", "atr", "lag", "crosses_above")})
    holed = _slice(spy, 0, 400)
    for k in ("open", "high", "low", "close"):
        holed.fields[k] = holed.fields[k].copy()
        holed.fields[k][[50, 51, 120, 300]] = np.nan
    vec = evaluate(plan, holed)
    rows = _stream_values(plan, holed, 0, 400)
    sma = plan.outputs["sma"]
    assert math.isnan(vec[sma][50]) and math.isnan(rows[50][sma])
    for node in plan.nodes:
        if np.ndim(vec[node.id]):
            _assert_same(vec[node.id], np.array([r[node.id] for r in rows], dtype=vec[node.id].dtype), node.label)


def test_na_and_defined_gate_the_warm_up_in_both_evaluators(spy):
    """Where an indicator has no value, comparisons with it are false except `!=` (true, as in
    IEEE arithmetic), and `not` of a false comparison is true: `not (close < sma(close, 50))`
    and `sma(close, 50) != close` hold through the warm-up. `defined(x)` (and `na(x)`) say
    whether x has a value, in the vectorised and the streaming evaluator alike."""
    exprs = {"gated": "defined(sma(close, 50)) and close > sma(close, 50)", "plain": "close > sma(close, 50)",
             "trap": "not (close < sma(close, 50))", "ne": "sma(close, 50) != close",
             "gated_trap": "defined(sma(close, 50)) and not (close < sma(close, 50))", "na": "na(sma(close, 50))",
             "folded": "na(5) or defined(1 / 0)", "na_lag": "na(close[3])"}
    plan = _plan_of(exprs)
    bars = _slice(spy, 0, 300)
    vec = evaluate(plan, bars)
    rows = _stream_values(plan, bars, 0, 300)
    for name, node_id in plan.outputs.items():
        if plan.nodes[node_id].series:
            assert vec[node_id].tolist() == [row[node_id] for row in rows], name
    v = {name: vec[i] for name, i in plan.outputs.items()}
    assert not v["gated"][:49].any() and (v["gated"][49:] == v["plain"][49:]).all()
    assert v["trap"][:49].all() and v["ne"][:49].all()       # the traps: true with no average yet
    assert not v["gated_trap"][:49].any() and (v["gated_trap"][49:] == v["trap"][49:]).all()
    assert v["na"][:49].all() and not v["na"][49:].any()
    assert v["na_lag"].tolist() == [True] * 3 + [False] * 297
    # na(x) has a value on every bar; its warm-up stays x's, so runs load x's history
    assert plan.nodes[plan.outputs["na"]].warmup == 49 and plan.nodes[plan.outputs["na"]].kind == "boolean"
    folded = plan.nodes[plan.outputs["folded"]]
    assert folded.label == "defined(1 / 0)" and not folded.series and vec[folded.id] is np.False_
    ctx = {"position.pnl": float("nan")}
    c = Compiler(context_names=set())
    node = c.expr(parse("na(position.pnl)"))
    ctx_plan = N.Plan(c.nodes, {"x": node}, [], c.inputs)
    assert value_at(ctx_plan, node, 0, [None] * len(c.nodes), ctx) is True
    assert value_at(ctx_plan, node, 0, [None] * len(c.nodes), {"position.pnl": 1.0}) is False


def test_a_boolean_constant_is_not_the_number_it_equals():
    """true == 1 and false == 0 in Python: the node table keeps them apart by kind."""
    c = Compiler()
    t = c.expr(parse("close > open or true"))
    one = c.expr(parse("close * 1 + 0"))
    assert c.nodes[t].kind == "boolean" and c.nodes[one].label == "close * 1 + 0"
    assert [c.nodes[a].kind for a in c.nodes[c.nodes[one].args[0]].args] == ["number", "number"]


# ---- values with run context ---------------------------------------------------------------

def test_context_nodes_are_evaluated_at_a_bar_with_the_run_state(spy):
    # the futures breakout: the stock one's rules without its scanner (whose scan.picked needs a scan)
    plan = plan_from_file(ROOT / "strategies" / "futures_breakout.yaml", unsupported_ok=True)
    values = evaluate(plan, spy)
    stop_rule = next(r for r in plan.rules if r.name == "stop")
    entry_bar, i = 300, 310
    ctx = {"position.entry_price": 100.0, "position.entry_bar": entry_bar}
    stop = value_at(plan, stop_rule.stop, i, values, ctx)
    atr_node = plan.outputs["indicator.atr_now"]
    assert stop == pytest.approx(100.0 - 2.0 * values[atr_node][entry_bar])


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.stem)
def test_a_node_read_at_one_bar_as_a_function_is_value_at(path, spy):
    """scalar_at builds value_at as a function once per node: the same value, to the bit, for
    every node of every example at many bars with the position's fields, and the same refusal of
    a field the run does not know."""
    from engine.plan.evaluate import MissingInput, scalar_at

    plan = plan_from_file(path, unsupported_ok=True)
    values = evaluate(plan, _with_others(plan, spy))
    names = {n.attrs[0] for n in plan.nodes if n.op == N.CONTEXT}
    cache: dict = {}
    checked = 0
    for i in (40, 300, 1200, len(spy.fields["close"]) - 1):
        ctx = {name: 0.5 + 0.01 * (i % 97) * (j + 1) for j, name in enumerate(sorted(names))}
        ctx["position.entry_bar"] = 35
        for node in plan.nodes:
            try:
                want = value_at(plan, node.id, i, values, ctx)
            except MissingInput:
                with pytest.raises(MissingInput):
                    scalar_at(plan, node.id, cache)(i, values, ctx)
                continue
            got = scalar_at(plan, node.id, cache)(i, values, ctx)
            assert type(got) is type(want) and (got == want or (got != got and want != want)), node.label
            checked += 1
    assert checked > len(plan.nodes)
    for node in plan.nodes:
        if node.op in (N.CONTEXT, N.AT_ENTRY):       # without the position: both refuse the same way
            with pytest.raises(MissingInput) as want:
                value_at(plan, node.id, 40, values, {})
            with pytest.raises(MissingInput) as got:
                scalar_at(plan, node.id, cache)(40, values, {})
            assert str(got.value) == str(want.value)


# ---- explain ---------------------------------------------------------------------------------

def test_explain_prints_shared_nodes_rules_and_history():
    result = CliRunner().invoke(cli.main, ["explain", str(ROOT / "strategies" / "sma_crossover.yaml")])
    assert result.exit_code == 0, result.output
    assert "warm-up 30 bars" in result.output
    assert "sma(close, 10)" in result.output and "shared by 3" in result.output
    assert "entry 'golden cross'" in result.output


def test_explain_json():
    result = CliRunner().invoke(cli.main, ["explain", str(ROOT / "strategies" / "regime_agents.yaml"),
                                           "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "refuse" not in result.stderr          # every key of it runs now
    copy = ROOT / "strategies" / ".explain-refused.yaml"      # beside the example: its paths resolve
    copy.write_text((ROOT / "strategies" / "breakout.yaml").read_text().replace("  session: regular",
                                                                                "  session: regular\n  what_to_show: midpoint"))
    try:
        refused = CliRunner().invoke(cli.main, ["explain", str(copy), "--format", "json"])
    finally:
        copy.unlink()
    assert refused.exit_code == 0 and json.loads(refused.stdout)["nodes"]
    assert "backtest and run refuse this strategy while this key is in it" in refused.stderr   # what_to_show
    labels = [n["expr"] for n in data["nodes"]]
    assert labels.count("atr(14)") == 1
    assert data["history_bars"] == data["warmup_bars"] + 1
    assert any(r["agent"] == "trend" for r in data["rules"])


def test_explain_refuses_a_broken_strategy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "strategies" / "sma_crossover.yaml").read_text().replace("sma(close, fast)", "sma(close,"))
    result = CliRunner().invoke(cli.main, ["explain", str(bad)])
    assert result.exit_code == 1
    assert "bad.yaml:" in result.output and "Traceback" not in result.output


def test_a_printed_comparison_shows_digits_enough_to_tell_its_sides_apart():
    """The values a dry run's `why:` and the journal's decisions print: plain notation (an NQ
    price is 15761.25, not 1.576e+04), and when the two sides of a comparison differ, digits
    enough to show it (never "169.6 > 169.6 yes")."""
    from engine.plan.evaluate import _show, _show_pair

    assert [_show(v) for v in (15761.25, 169.6123456, 0.235, 3, 1e-7, 2.5e20, float("nan"), "up")] == \
        ["15761.25", "169.6123", "0.235", "3", "1e-07", "2.5e+20", "nan", "up"]
    assert _show_pair(169.61000001, 169.61) == ("169.61000001", "169.61")
    assert _show_pair(1.0, 1.0000000000000002) == ("1", "1.0000000000000002")
    assert _show_pair(15761.25, 15761.25) == ("15761.25", "15761.25")

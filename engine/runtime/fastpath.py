"""The backtest's fast path: simple runs resolved over arrays instead of through the Runner.

A run is simple when one symbol trades, every entry and exit rule is a `when` condition on the
bars alone (no stops, targets, agents, combos or position facts), entries are market orders
sized by a fixed count or a share of equity, exits are market orders, and no risk limit can
bind. Such a run is a chain: an entry signal, its fill, the first exit signal from the fill's
bar, its fill, the next entry signal from the bar after the exit. The chain is followed over
precomputed jump tables (searchsorted over the signal bars), with one tight Python step per
trade for the money (sizing at the fill price, insufficient-cash rejections, commissions,
slippage), then MAE/MFE and the records are built vectorised.

The outcome is exactly the Runner's: the same fills (with the same order_ref tags), trades,
decisions, order records, cash and equity curve; tests/test_fastpath.py checks it against the
Runner on real data. `unsupported()` says why a run is not simple; such runs go to the Runner.

Fills, trades, decisions and order records are kept as rows and built into their dataclasses
only when someone reads them (`RecordList`); the journal and the run summary read the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ..brokers.costs import fraction
from ..brokers.sim import SimBroker, SymbolBars
from ..orders.intent import OrderIntent, Sizing
from ..plan import nodes as N
from ..portfolio.ledger import Fill, Ledger, Position, Trade
from .runner import Decision, OrderRecord, RunSettings, RunState, without_cyclic_gc
from .signals import SymbolSignals


class RecordList(Sequence):
    """A list of records kept as tuples and made into objects (`make(*row)`) when read.
    `columns` (optional) holds the same records as arrays."""

    def __init__(self, rows: list[tuple], make: Callable[..., Any], columns: dict | None = None):
        self.rows = rows
        self.make = make
        self.columns = columns
        self._objects: list | None = None

    def _all(self) -> list:
        if self._objects is None:
            make = self.make
            self._objects = [make(*row) for row in self.rows]
        return self._objects

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"RecordList({len(self.rows)} records)"


def _has_output(plan: N.Plan, order: str | None, what: str) -> bool:
    return order is not None and f"orders.{order}.{what}" in plan.outputs


def unsupported(plan: N.Plan, signals: dict[str, SymbolSignals], broker: SimBroker, settings: RunSettings,
                *, dry_run: bool = False, on_intent: Callable | None = None, desk: Any = None) -> str | None:
    """Why this run needs the Runner, or None when the fast path gives the same outcome."""
    if len(signals) != 1:
        return f"{len(signals)} traded symbols (the fast path trades one)"
    if dry_run or on_intent is not None:
        return "a dry run or an intent callback"
    if desk is not None:
        return "options combos"
    if broker.fill_model not in ("next_open", "close"):
        return f"fill model {broker.fill_model!r}"
    limits = settings.limits
    for name in ("per_trade_risk", "max_position", "max_daily_loss", "max_drawdown", "circuit_breaker",
                 "max_margin_per_trade"):
        if getattr(limits, name) is not None:
            return f"risk limit {name}"
    if limits.max_open_positions is not None and limits.max_open_positions < 1:
        return "max_open_positions below 1"
    sig = next(iter(signals.values()))
    if sig.context_entries or sig.context_exits:
        return "rules that read position or run context"
    entries = [r for r in plan.rules if r.kind == "entry"]
    exits = [r for r in plan.rules if r.kind == "exit"]
    if not entries:
        return "no entry rules"
    for rule in entries:
        if rule.agent is not None:
            return f"entry '{rule.name}' belongs to an agent"
        if rule.when is None or not plan.nodes[rule.when].market or rule.stop is not None or rule.target is not None:
            return f"entry '{rule.name}' is not a market-only condition"
        template = settings.orders.get(rule.order) or {}
        if "legs" in template:
            return f"entry '{rule.name}' trades a combo"
        if template.get("type", "market") != "market":
            return f"entry '{rule.name}' sends a {template.get('type')} order"
        if any(_has_output(plan, rule.order, w) for w in ("limit", "stop", "quantity", "stop_distance")):
            return f"entry '{rule.name}' has order prices or an expression quantity"
        if template.get("action", "buy") not in ("buy", "sell"):
            return f"entry '{rule.name}' action {template.get('action')!r}"
        if _sizing(template) is None:
            return f"entry '{rule.name}' sizing is not a fixed count or percent_of_equity"
    for rule in exits:
        if rule.when is None or not plan.nodes[rule.when].market or rule.stop is not None or rule.target is not None:
            return f"exit '{rule.name}' is not a market-only condition"
        if rule.order and settings.orders.get(rule.order):
            return f"exit '{rule.name}' has an order template"
    return None


def _sizing(template: dict) -> tuple[str, float, bool] | None:
    """("fixed", count, True) or ("percent", fraction, whole), or None (not simple)."""
    spec = template.get("quantity", 1)
    if isinstance(spec, bool):
        return None
    if isinstance(spec, (int, float)):
        return ("fixed", float(spec), True) if float(spec) > 0 else None
    if not isinstance(spec, dict):
        return None
    whole = spec.get("round", "whole") == "whole"
    if "fixed" in spec and spec["fixed"] is not None:
        return ("fixed", float(spec["fixed"]), True) if float(spec["fixed"]) > 0 else None
    if spec.get("percent_of_equity") is not None:
        return "percent", fraction(spec["percent_of_equity"]), whole
    return None


def _slipped(broker: SimBroker, price: np.ndarray, action: str, tick: float) -> np.ndarray:
    """Slippage.apply over an array, with the same float operations."""
    s = broker.slippage
    slip = s.ticks * tick + price * s.percent + s.fixed
    out = price + slip if action == "buy" else price - slip
    return np.where(slip == 0.0, price, out)


class FastRun(RunState):
    """What a Runner leaves behind, for a run resolved by the fast path."""

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> Ledger:
        with without_cyclic_gc():
            return self._run()

    def _run(self) -> Ledger:
        symbol, sig = next(iter(self.signals.items()))
        bars = sig.bars
        settings, broker = self.settings, self.broker
        n = len(bars)
        mult, margined, margin, contracts = bars.multiplier, bars.margined, bars.margin, bars.contracts
        cash_account = settings.account == "cash"
        d = 1 if broker.fill_model == "next_open" else 0
        commission = broker.commission
        free = not (commission.per_unit or commission.per_contract or commission.percent or commission.per_order)

        def fee(q: float, price: float) -> float:
            return 0.0 if free else commission(q, price, mult, contracts)

        # entry candidates: the bars where any entry rule fired (masks, the window and the start folded in)
        rules = [r for r, _, _ in sig.entry_rules]
        E = np.asarray(sig.entry_bars, dtype=np.int64)
        fired = np.column_stack([mask[E] for _, mask, _ in sig.entry_rules]) if len(E) else np.zeros((0, len(rules)), bool)
        first_rule = np.argmax(fired, axis=1) if len(E) else np.zeros(0, np.int64)
        multi = (fired.sum(axis=1) > 1) if len(E) else np.zeros(0, bool)
        templates = [settings.orders.get(r.order) or {} for r in rules]
        actions = [t.get("action", "buy") for t in templates]
        sizings = [_sizing(t) for t in templates]
        sizing_objs = [Sizing("percent_of_equity", sz[1], whole=sz[2]) if sz and sz[0] == "percent" else None
                       for sz in sizings]
        tifs = [t.get("tif", "day") for t in templates]
        # exit candidates: the first rule firing at a bar wins, the schedule's flat-by only alone
        exit_rules = [r for r, _ in sig.market_exits] + [sig.flat_rule]
        exit_at = np.full(n, -1, dtype=np.int64)
        for idx in range(len(sig.market_exits) - 1, -1, -1):
            exit_at[np.asarray(sig.market_exits[idx][1], dtype=np.int64)] = idx
        if sig.flat_bars:
            flat = np.asarray(sig.flat_bars, dtype=np.int64)
            flat = flat[exit_at[flat] < 0]
            exit_at[flat] = len(exit_rules) - 1
        X = np.flatnonzero(exit_at >= 0)
        x_rule = exit_at[X]
        kinds = ["when"] * len(sig.market_exits) + ["flat_by"]
        # jump tables: an entry decided at E[k] fills at E[k] + d and exits at the first exit bar
        # from there; after the exit at X[j] the next entry is the first from X[j] + 1
        nx = np.searchsorted(X, E + d).tolist()
        ne = np.searchsorted(E, X + 1).tolist()
        # prices and times at every candidate's fill
        f_bar = E + d
        ok = f_bar < n
        fb = np.minimum(f_bar, n - 1)
        raw_in = bars.open[fb] if d else bars.close[fb]
        in_price = {a: _slipped(broker, raw_in, a, bars.tick_size).tolist() for a in set(actions)}
        in_time = (bars.start[fb] if d else bars.end[fb]).tolist()
        e_end = bars.end[E].tolist()
        e_next_end = bars.end[np.minimum(E + 1, n - 1)].tolist()
        g_bar = X + d
        gb = np.minimum(g_bar, n - 1)
        raw_out = bars.open[gb] if d else bars.close[gb]
        out_price = {a: _slipped(broker, raw_out, a, bars.tick_size).tolist() for a in ("buy", "sell")}
        out_time = (bars.start[gb] if d else bars.end[gb]).tolist()
        x_end = bars.end[X].tolist()
        last_end = int(bars.end[-1]) if n else 0
        E_l, X_l, f_ok, g_ok = E.tolist(), X.tolist(), ok.tolist(), (g_bar < n).tolist()
        first_l, multi_l, x_rule_l = first_rule.tolist(), multi.tolist(), x_rule.tolist()
        fired_l = fired.tolist() if multi.any() else None

        prefix = f"qtrade:{settings.run_id}:"
        seq = 0
        cash = float(settings.cash)
        decisions: list[tuple] = []   # Decision fields
        orders: list[tuple] = []      # (intent tuple, time, status, status_time, reason)
        fills: list[tuple] = []       # Fill fields
        trades: list[tuple] = []      # (entry fill index, exit fill index, exit rule, exit reason)
        position: Position | None = None
        K, J = len(E_l), len(X_l)
        k = 0
        while k < K:
            b = E_l[k]
            ri = first_l[k]
            rule = rules[ri]
            now = e_end[k]
            if multi_l[k]:
                for other, hit in enumerate(fired_l[k]):
                    if hit and other != ri:
                        decisions.append((now, symbol, rules[other].name, "entry", "blocked",
                                          f"'{rule.name}' fired on the same bar and won"))
            action = actions[ri]
            if action == "sell" and cash_account:
                decisions.append((now, symbol, rule.name, "entry", "blocked", "short selling needs a margin account"))
                k += 1
                continue
            mode, value, whole = sizings[ri]
            seq += 1
            tag = prefix + str(seq)
            fixed = value if mode == "fixed" else None
            sizing = sizing_objs[ri]
            decisions.append((now, symbol, rule.name, "entry", "fired", rule.reason))
            intent = (symbol, action, "market", fixed, sizing, None, None, tifs[ri], "open", rule.name, tag)
            if not f_ok[k]:
                orders.append((intent, now, "expired", e_next_end[k],
                               "not filled before it expired" if b + 1 < n else "the data ended"))
                k += 1
                continue
            price = in_price[action][k]
            t_fill = in_time[k]
            if mode == "percent":
                per_unit = price * mult if not margined else max(margin, 1e-12)
                q = value * cash / per_unit
                q = float(math.floor(q + 1e-9)) if whole else q
                while q > 0 and cash_account and not margined and q * price * mult + fee(q, price) > cash + 1e-9:
                    q -= 1 if whole else q * 1e-6
            else:
                q = value
            if whole:   # cap_quantity without caps: whole units, never below 0
                q = float(math.floor(q + 1e-9))
            q = max(q, 0.0)
            if q <= 0:
                orders.append((intent, now, "rejected", t_fill, "quantity rounds to 0"))
                decisions.append((t_fill, symbol, rule.name, "entry", "blocked", "quantity rounds to 0 at the fill price"))
                k += 1
                continue
            f_fee = fee(q, price)
            if margined:
                need = abs(q) * margin
            else:
                need = abs(q) * price * mult
                need = need if cash_account else 0.5 * need
            if need + f_fee > cash + 1e-6:
                reason = f"insufficient {'cash' if cash_account else 'available funds'}: needs {need + f_fee:,.2f}, " \
                         f"has {cash:,.2f}"
                orders.append((intent, now, "rejected", t_fill, reason))
                decisions.append((t_fill, symbol, rule.name, "entry", "blocked", reason))
                k += 1
                continue
            orders.append((intent, now, "filled", t_fill, "", q))
            signed = q if action == "buy" else -q
            f_bar_k = b + d
            fills.append((symbol, action, q, price, f_fee, t_fill, f_bar_k, tag, mult, rule.name))
            cash -= f_fee
            if not margined:
                cash -= signed * price * mult
            j = nx[k]
            if j >= J:   # no exit before the data ends: the position stays open
                position = Position(symbol, signed, price, mult, margined, t_fill, f_bar_k, f_fee, rule.name,
                                    margin if margined else 0.0, {})
                break
            x = X_l[j]
            xr = exit_rules[x_rule_l[j]]
            seq += 1
            x_tag = prefix + str(seq)
            x_action = "sell" if signed > 0 else "buy"
            decisions.append((x_end[j], symbol, xr.name, "exit", "fired", xr.reason))
            x_intent = (symbol, x_action, "market", abs(signed), None, None, None, "day", "close", xr.name, x_tag,
                        xr.reason)
            if not g_ok[j]:
                orders.append((x_intent, x_end[j], "expired", last_end, "the data ended before it filled"))
                position = Position(symbol, signed, price, mult, margined, t_fill, f_bar_k, f_fee, rule.name,
                                    margin if margined else 0.0, {})
                break
            x_price = out_price[x_action][j]
            x_time = out_time[j]
            x_qty = abs(signed)
            x_fee = fee(x_qty, x_price)
            orders.append((x_intent, x_end[j], "filled", x_time, ""))
            fills.append((symbol, x_action, x_qty, x_price, x_fee, x_time, x + d, x_tag, mult, xr.name))
            gross = (x_price - price) * signed * mult
            cash -= x_fee
            if margined:
                cash += gross
            else:
                x_signed = x_qty if x_action == "buy" else -x_qty
                cash += -x_signed * x_price * mult
            trades.append((len(fills) - 2, gross, xr.reason or kinds[x_rule_l[j]]))
            k = ne[j]
        self.ledger.cash = cash
        if position is not None:
            self.ledger.positions[symbol] = position
        self._records(symbol, bars, decisions, orders, fills, trades)
        return self.ledger

    # ---- the journal -----------------------------------------------------------------------------
    def journal_rows(self, run_id: str, iso_many: Callable[[list], list[str]]) -> dict[str, list[tuple]]:
        """The orders, decisions, fills and trades tables' rows (the columns backtest.write_journal
        writes), straight from the records' rows: the same values as from the objects."""
        orders = self.orders.rows
        o_ts = iso_many([o[1] for o in orders])
        o_st = iso_many([o[3] for o in orders])
        order_rows = []
        for o, t, st in zip(orders, o_ts, o_st):
            it = o[0]
            qty = it[3] if it[3] is not None else (o[5] if len(o) > 5 else None)
            order_rows.append((run_id, it[10], t, it[0], it[1], qty or 0.0, it[2], it[5], it[6], it[7], it[9], it[8],
                               None, o[2], st if o[3] else t, o[4] or (it[11] if len(it) > 11 else "")))
        decisions = self.decisions.rows
        decision_rows = [(run_id, t, d[1], d[2], d[3], d[4], d[5])
                         for d, t in zip(decisions, iso_many([d[0] for d in decisions]))]
        fills = self.ledger.fills.rows
        fill_rows = [(run_id, f[7], t, f[0], f[1], f[2], f[3], f[8], f[4])
                     for f, t in zip(fills, iso_many(self.ledger.fills.columns["time"]))]
        trades = self.ledger.trades.rows
        cols = self.ledger.trades.columns
        trade_rows = [(run_id, t[0], t[1], t[2], t[3], a, t[5], b, t[7], t[8], t[9], t[11] - t[10], t[16], t[17], t[12],
                       t[13], t[14], t[15], None)
                      for t, a, b in zip(trades, iso_many(cols["entry_time"]), iso_many(cols["exit_time"]))]
        return {"orders": order_rows, "decisions": decision_rows, "fills": fill_rows, "trades": trade_rows}

    # ---- records ---------------------------------------------------------------------------------
    def _records(self, symbol: str, bars: SymbolBars, decisions: list, orders: list, fills: list,
                 trades: list) -> None:
        from .backtest import LedgerColumns

        self.decisions = RecordList(decisions, Decision)
        self.orders = RecordList(orders, _order_record)
        nf = len(fills)
        f_cols = {
            "action": [f[1] for f in fills],
            "quantity": np.array([f[2] for f in fills], dtype=np.float64),
            "price": np.array([f[3] for f in fills], dtype=np.float64),
            "commission": np.array([f[4] for f in fills], dtype=np.float64),
            "time": np.array([f[5] for f in fills], dtype=np.int64),
            "bar": np.array([f[6] for f in fills], dtype=np.int64),
        }
        self.ledger.fills = RecordList(fills, Fill, f_cols)
        # trades: entry fill i, exit fill i + 1
        ti = np.array([t[0] for t in trades], dtype=np.int64)
        qty, price, comm = f_cols["quantity"], f_cols["price"], f_cols["commission"]
        buy = np.array([a == "buy" for a in f_cols["action"]], dtype=bool)
        signed_all = np.where(buy, qty, -qty)
        mult = bars.multiplier
        e_price, x_price = price[ti], price[ti + 1]
        e_signed = signed_all[ti]
        gross = np.array([t[1] for t in trades], dtype=np.float64)
        commission = comm[ti] + comm[ti + 1]
        pnl = gross - commission
        basis = np.abs(e_price * e_signed * mult)
        with np.errstate(divide="ignore", invalid="ignore"):
            ret = np.where(basis != 0, 100.0 * pnl / np.where(basis != 0, basis, 1.0), 0.0)
        e_bar, x_bar = f_cols["bar"][ti], f_cols["bar"][ti + 1]
        mae, mfe = _excursions(bars, e_bar, x_bar, e_price, x_price, qty[ti] * mult, e_signed > 0)
        long_l = (e_signed > 0).tolist()
        e_rule = [fills[i][9] for i in ti.tolist()]
        x_rule = [fills[i + 1][9] for i in ti.tolist()]
        rows = list(zip([symbol] * len(ti), ["long" if lg else "short" for lg in long_l], qty[ti].tolist(),
                        [mult] * len(ti), f_cols["time"][ti].tolist(), e_price.tolist(), f_cols["time"][ti + 1].tolist(),
                        x_price.tolist(), pnl.tolist(), ret.tolist(), e_bar.tolist(), x_bar.tolist(),
                        commission.tolist(), e_rule, x_rule, [t[2] for t in trades], mae.tolist(), mfe.tolist()))
        t_cols = {"pnl": pnl, "entry_time": f_cols["time"][ti], "exit_time": f_cols["time"][ti + 1]}
        self.ledger.trades = RecordList(rows, Trade, t_cols)
        # the equity curve's inputs, as backtest._cash_deltas and equity_curve compute them
        cash_delta = np.empty(nf)
        if nf:
            is_open = np.zeros(nf, dtype=bool)
            is_open[::2] = True   # fills alternate: open, close, open, ...
            opened_price = np.repeat(price[::2], 2)[:nf]
            opened_signed = np.repeat(signed_all[::2], 2)[:nf]
            if bars.margined:
                cash_delta = np.where(is_open, -comm - 0.0, -comm + (price - opened_price) * opened_signed * mult)
            else:
                cash_delta = -comm - signed_all * price * mult
        self.ledger.columns = LedgerColumns([symbol] * nf, f_cols["bar"], cash_delta, [symbol] * len(ti), e_bar, x_bar,
                                            np.where(e_signed > 0, 1.0, -1.0) * qty[ti], e_price)


def _order_record(intent: tuple, time: int, status: str, status_time: int, reason: str,
                  filled: float | None = None) -> OrderRecord:
    it = OrderIntent(*intent)
    if filled is not None and it.quantity is None:
        it = OrderIntent(**{**it.__dict__, "quantity": filled})
    rec = OrderRecord(it, time)
    rec.status, rec.status_time, rec.reason = status, status_time, reason
    return rec


def _excursions(bars: SymbolBars, lo: np.ndarray, hi: np.ndarray, entry: np.ndarray, exit_: np.ndarray,
                units: np.ndarray, long: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAE and MFE of trades held over bars [lo, hi), as runner._with_excursions computes them."""
    if not len(lo):
        return np.empty(0), np.empty(0)
    idx = np.column_stack((lo, hi)).ravel()
    held = hi > lo
    safe = np.minimum(idx, len(bars) - 1)
    low = np.minimum.reduceat(bars.low, safe)[::2]
    high = np.maximum.reduceat(bars.high, safe)[::2]
    low = np.where(held, low, exit_)
    high = np.where(held, high, exit_)
    # Python's min(a, b) / max(a, b): b only when strictly beyond a
    worst = np.where(exit_ < low, exit_, low)
    best = np.where(exit_ > high, exit_, high)
    mae = np.where(long, (worst - entry) * units, (entry - best) * units)
    mfe = np.where(long, (best - entry) * units, (entry - worst) * units)
    mae = np.where(0.0 < mae, 0.0, mae)
    mfe = np.where(0.0 > mfe, 0.0, mfe)
    return mae, mfe

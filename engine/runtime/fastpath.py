"""The backtest's fast path: simple runs resolved over arrays instead of through the Runner.

A run is simple when one symbol trades, every entry and exit rule is a `when` condition on the
bars alone (no stops, targets, agents, combos or position facts), entries are market orders
sized by a fixed count or a share of equity, exits are market orders, and no risk limit can
bind. Such a run is a chain: an entry signal, its fill, the first exit signal from the fill's
bar, its fill, the next entry signal from the bar after the exit.

How it is resolved:
1. the chain's links come from jump tables (searchsorted over the signal bars) and are followed
   without touching the money: when entries and exits alternate (a crossover) the chain is every
   candidate, otherwise one list lookup per trade;
2. the money (sizing at the fill price, commissions, cash) is one tight Python step per trade:
   sizing by a share of equity compounds through whole-share rounding, which no vectorised
   formula reproduces to the cent;
3. every record (decisions, orders with their order_ref tags, fills, round trips with MAE/MFE)
   is built as columns, vectorised.
When a step would be refused (a quantity rounding to 0, not enough cash) or an entry is refused
outright (a short in a cash account), the run is resolved by `_sequential` instead: the same
rules one candidate at a time, the order the Runner meets them in.

The outcome is exactly the Runner's: the same fills (with the same order_ref tags), trades,
decisions, order records, cash and equity curve; tests/test_fastpath.py checks it against the
Runner on real data. `unsupported()` says why a run is not simple; such runs go to the Runner.

Records are kept as columns (`Records`) and built into their dataclasses only when someone reads
them; the journal, the equity curve and the run summary read the columns.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..brokers.matching import FillModel, slipped
from ..check.model import OrderTemplate
from ..market.series import SymbolBars
from ..orders.intent import OrderIntent, Sizing
from ..plan import nodes as N
from ..portfolio.ledger import Fill, Ledger, Position, Trade
from .records import Decision, OrderRecord, RunSettings, RunState, excursions_of
from .signals import SymbolSignals


class Records(Sequence):
    """Records kept as columns (lists or 1-D arrays of equal length; a column that is neither
    holds one value for every record) and made into objects, `make(*row)`, only when read.
    `load()` gives the columns and their length, called when something first reads them."""

    def __init__(self, make: Callable[..., Any], load: Callable[[], tuple[dict[str, Any], int]]):
        self.make = make
        self._load = load
        self._columns: dict[str, Any] | None = None
        self._n = 0
        self._objects: list | None = None

    @property
    def columns(self) -> dict[str, Any]:
        if self._columns is None:
            self._columns, self._n = self._load()
        return self._columns

    @property
    def n(self) -> int:
        self.columns
        return self._n

    def column(self, name: str) -> list:
        return _listed(self.columns[name], self.n)

    def rows(self) -> Iterator[tuple]:
        return zip(*(self.column(name) for name in self.columns))

    def _all(self) -> list:
        if self._objects is None:
            make = self.make
            self._objects = [make(*row) for row in self.rows()]
        return self._objects

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"Records({self.n} records)" if self._columns is not None else "Records(not loaded)"


def _columns(rows: list[tuple], names: tuple[str, ...]) -> dict[str, list]:
    """Rows of tuples as columns."""
    if not rows:
        return {name: [] for name in names}
    return dict(zip(names, (list(c) for c in zip(*rows))))


def _has_output(plan: N.Plan, order: str | None, what: str) -> bool:
    return order is not None and f"orders.{order}.{what}" in plan.outputs


def unsupported(plan: N.Plan, signals: dict[str, SymbolSignals], broker: FillModel, settings: RunSettings,
                *, desk: Any = None) -> str | None:
    """Why this run needs the kernel, or None when the fast path gives the same outcome."""
    if len(signals) != 1:
        return f"{len(signals)} traded symbols (the fast path trades one)"
    if plan.inputs.scan:
        return "a scanner (the kernel journals why a symbol that is not a pick is not entered)"
    if any(key.startswith("classify.") for key in plan.outputs):
        return "classifications (the kernel journals each trade's states at its entry)"
    if desk is not None:
        return "options combos"
    if broker.fill_model not in ("next_open", "close"):
        return f"fill model {broker.fill_model!r}"
    limits = settings.limits
    for name in ("per_trade_risk", "max_position", "max_daily_loss", "max_drawdown", "circuit_breaker",
                 "max_margin_per_trade"):
        if getattr(limits, name) is not None:
            return f"risk limit {name}"
    if limits.pyramiding > 1:
        return "pyramiding (entries that add to an open position)"
    if limits.max_open_positions is not None and limits.max_open_positions < 1:
        return "max_open_positions below 1"
    sig = next(iter(signals.values()))
    if sig.bars.front is not None:
        return "futures bars per contract (each position is filled on its own contract's bars)"
    if sig.bars.margined and sig.bars.margin <= 0:
        return "a future without an initial margin in the instrument map"
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
        template = settings.orders.get(rule.order) or OrderTemplate(rule.order or "")
        if template.combo:
            return f"entry '{rule.name}' trades a combo"
        if template.type != "market":
            return f"entry '{rule.name}' sends a {template.type} order"
        if any(_has_output(plan, rule.order, w) for w in ("limit", "stop", "quantity", "stop_distance")):
            return f"entry '{rule.name}' has order prices or an expression quantity"
        if template.action not in ("buy", "sell"):
            return f"entry '{rule.name}' action {template.action!r}"
        if _sizing(template) is None:
            return f"entry '{rule.name}' sizing is not a fixed count or percent_of_equity"
    actions = {(settings.orders.get(r.order) or OrderTemplate(r.order or "")).action for r in entries}
    if len(actions) > 1:
        return "entries both ways (an exit and the opposite entry on one bar reverse the position)"
    for rule in exits:
        if rule.when is None or not plan.nodes[rule.when].market or rule.stop is not None or rule.target is not None:
            return f"exit '{rule.name}' is not a market-only condition"
        if rule.order and settings.orders.get(rule.order):
            return f"exit '{rule.name}' has an order template"
    return None


def margin_call_possible(ledger: Ledger, bars: SymbolBars, cash: float) -> bool:
    """Could a simulated margin call have fired in this run (equity at a close while a futures
    position was held within a hair of its maintenance margin)? Then the kernel resolves the
    run: the fast path has no margin calls."""
    if not (bars.margined and bars.maintenance > 0):
        return False
    fills = list(ledger.fills)
    held = [(fills[i], fills[i + 1] if i + 1 < len(fills) else None) for i in range(0, len(fills), 2)]
    for entry, exit_ in held:
        signed = entry.quantity if entry.action == "buy" else -entry.quantity
        during = cash - entry.commission
        last = exit_.bar if exit_ is not None else len(bars) - 1
        equity = during + (bars.close[entry.bar:last + 1] - entry.price) * signed * bars.multiplier
        need = entry.quantity * bars.maintenance
        if (equity < need * (1 + 1e-9) + 1e-6).any():
            return True
        if exit_ is not None:
            cash = during + (exit_.price - entry.price) * signed * bars.multiplier - exit_.commission
    return False


def _sizing(template: OrderTemplate) -> tuple[str, float, bool] | None:
    """("fixed", count, True) or ("percent", fraction, whole), or None (not simple)."""
    q = template.quantity
    if q.mode == "fixed":
        return ("fixed", q.value, True) if q.value > 0 else None
    if q.mode == "percent_of_equity":
        return "percent", q.value, q.whole
    return None


_DECISION = ("time", "symbol", "rule", "kind", "outcome", "reason")
_ORDER = ("action", "quantity", "sizing", "tif", "intent", "rule", "seq", "intent_reason", "time", "status",
          "status_time", "reason")
_FILL = ("symbol", "action", "quantity", "price", "commission", "time", "bar", "seq", "multiplier", "rule")


class _Candidates:
    """What both resolvers read: the entry candidates (bars where an entry rule fired), the exit
    candidates, the jump tables between them and the prices and times at every fill."""

    def __init__(self, sig: SymbolSignals, settings: RunSettings, broker: FillModel):
        self.symbol = sig.bars.symbol
        self.owner = settings.strategy     # the strategy's own rules hold every position (no agents here)
        bars = self.bars = sig.bars
        n = self.n = len(bars)
        self.mult, self.margined, self.margin, contracts = bars.multiplier, bars.margined, bars.margin, bars.contracts
        self.cash_account = settings.account == "cash"
        d = self.d = 1 if broker.fill_model == "next_open" else 0
        commission = broker.commission
        self.free = not (commission.per_unit or commission.per_contract or commission.percent or commission.per_order)
        mult = self.mult
        free = self.free    # (the lambda holds values, not self: no reference cycle)
        self.fee = lambda q, price: 0.0 if free else commission(q, price, mult, contracts)  # noqa: E731
        # entry candidates: the bars where any entry rule fired (masks, the window and the start folded in)
        self.rules = [r for r, _, _ in sig.entry_rules]
        E = self.E = sig.entry_idx
        K = len(E)
        if len(self.rules) == 1:    # one entry rule: it is the one that fired, alone
            self.fired = np.ones((K, 1), dtype=bool)
            self.first, self.multi = np.zeros(K, dtype=np.int64), np.zeros(K, dtype=bool)
        else:
            self.fired = np.column_stack([m[E] for _, m, _ in sig.entry_rules]) if K else \
                np.zeros((0, len(self.rules)), bool)
            self.first = np.argmax(self.fired, axis=1) if K else np.zeros(0, np.int64)
            self.multi = (self.fired.sum(axis=1) > 1) if K else np.zeros(0, bool)
        templates = [settings.orders.get(r.order) or OrderTemplate(r.order or "") for r in self.rules]
        self.actions = [t.action for t in templates]
        self.sizings = [_sizing(t) for t in templates]
        self.sizing_objs = [Sizing("percent_of_equity", sz[1], whole=sz[2]) if sz and sz[0] == "percent" else None
                            for sz in self.sizings]
        self.tifs = [t.tif for t in templates]
        # exit candidates: the first rule firing at a bar wins, the schedule's flat-by only alone
        self.exit_rules = [r for r, _ in sig.market_exit_idx] + [sig.flat_rule]
        at = [idx for _, idx in sig.market_exit_idx] + [sig.flat_idx]
        if sum(1 for a in at if len(a)) <= 1:
            rule = next((i for i, a in enumerate(at) if len(a)), 0)
            X, x_rule = at[rule], np.full(len(at[rule]), rule, dtype=np.int64)
        else:   # by bar, then by rule (the flat-by rule is last): the first of each bar wins
            bars_at = np.concatenate(at)
            rule_at = np.repeat(np.arange(len(at)), [len(a) for a in at])
            order = np.lexsort((rule_at, bars_at))
            bars_at, rule_at = bars_at[order], rule_at[order]
            first = np.concatenate(([True], bars_at[1:] != bars_at[:-1]))
            X, x_rule = bars_at[first], rule_at[first]
        self.X, self.x_rule = X, x_rule
        # jump tables: an entry decided at E[k] fills at E[k] + d and exits at the first exit bar
        # from there; after the exit at X[j] the next entry is the first from X[j] + 1
        self.nx = np.searchsorted(X, E + d)
        self.ne = np.searchsorted(E, X + 1)
        # prices at every candidate's fill (the times, for the records, when they are built)
        self._fb = np.minimum(E + d, n - 1)
        raw_in = bars.open[self._fb] if d else bars.close[self._fb]
        self.in_price = {a: slipped(broker.slippage, raw_in, a, bars.tick_size) for a in set(self.actions)}
        self._gb = np.minimum(X + d, n - 1)
        raw_out = bars.open[self._gb] if d else bars.close[self._gb]
        self.out_price = {a: slipped(broker.slippage, raw_out, a, bars.tick_size)
                          for a in {"sell" if a == "buy" else "buy" for a in self.actions}}
        self.last_end = int(bars.end[-1]) if n else 0

    def size(self, rule: int, price: float, cash: float) -> tuple[float, float, float]:
        """An entry's quantity at its fill price (whole units when its sizing says so; a share
        of equity leaves room for the commission in a cash account), its commission, and the
        cash (cash account) or funds (margin account) it needs: the Runner's float operations.
        A quantity of 0 means the entry is refused."""
        mode, value, whole = self.sizings[rule]
        mult, margined, fee = self.mult, self.margined, self.fee
        if mode == "percent":
            q = value * cash / (self.margin if margined else price * mult)   # futures: in initial margin
            if whole:
                q = float(math.floor(q + 1e-9))
            if self.cash_account and not margined:
                while q > 0 and q * price * mult + fee(q, price) > cash + 1e-9:
                    q -= 1 if whole else q * 1e-6
        else:
            q = value
        if whole:   # cap_quantity without caps: whole units, never below 0
            q = float(math.floor(q + 1e-9))
        q = max(q, 0.0)
        if margined:
            need = q * self.margin
        else:
            need = q * price * mult
            need = need if self.cash_account else 0.5 * need
        return q, fee(q, price), need

    @functools.cached_property
    def in_time(self) -> np.ndarray:
        """When each entry candidate's order fills."""
        return self.bars.start[self._fb] if self.d else self.bars.end[self._fb]

    @functools.cached_property
    def e_end(self) -> np.ndarray:
        """When each entry candidate is decided (its bar's close)."""
        return self.bars.end[self.E]

    @functools.cached_property
    def e_next_end(self) -> np.ndarray:
        return self.bars.end[np.minimum(self.E + 1, self.n - 1)]

    @functools.cached_property
    def out_time(self) -> np.ndarray:
        """When each exit candidate's order fills."""
        return self.bars.start[self._gb] if self.d else self.bars.end[self._gb]

    @functools.cached_property
    def x_end(self) -> np.ndarray:
        return self.bars.end[self.X]


@dataclass
class _Chain:
    """The chain resolved: its links (entry candidates ks, exit candidates js), what filled and
    the money."""

    ks: np.ndarray
    js: np.ndarray
    has_exit: np.ndarray
    T: int              # links
    filled: int         # links whose entry filled (all, or all but an expired last one)
    tc: int             # links closed by an exit fill
    buy: np.ndarray
    rule_i: np.ndarray
    price: np.ndarray
    x_price: np.ndarray
    q: list
    fee_in: list
    fee_out: list
    cash: float
    position: Position | None


class FastRun(RunState):
    """What a Runner leaves behind, for a run resolved by the fast path."""

    def run(self) -> Ledger:
        """Resolve the run: the ledger's cash and open position now; the records (decisions,
        orders, fills, round trips and the equity curve's inputs) when something reads them."""
        sig = next(iter(self.signals.values()))
        c = _Candidates(sig, self.settings, self.broker)
        chain = self._chain(c)
        if chain is not None:
            self.resolved_by = "chain"
            cash, position = chain.cash, chain.position
            columns = functools.partial(FastRun._chain_columns, c, chain)
        else:
            self.resolved_by = "sequential"
            decisions, orders, fills, trades, cash, position = self._sequential(c)
            columns = lambda: (decisions, orders, fills, trades)  # noqa: E731
        self.ledger.cash = cash
        if position is not None:
            self.ledger.positions[c.symbol] = position
        built: dict[str, Any] = {}

        def part(name: str):
            if not built:
                built.update(FastRun._records(c, *columns()))
            return built[name]

        prefix = f"qtrade:{self.settings.run_id}:"
        symbol, owner = c.symbol, c.owner

        def make_order(action, quantity, sizing, tif, intent, rule, seq, intent_reason, time, status, status_time,
                       reason) -> OrderRecord:
            it = OrderIntent(symbol, action, "market", quantity, sizing, None, None, tif, intent, rule,
                             prefix + str(seq), intent_reason)
            rec = OrderRecord(it, time)
            rec.status, rec.status_time, rec.reason = status, status_time, reason
            rec.owner = owner
            return rec

        def make_fill(symbol, action, quantity, price, commission, time, bar, seq, multiplier, rule) -> Fill:
            return Fill(symbol, action, quantity, price, commission, time, bar, prefix + str(seq), multiplier, rule)

        self.decisions = Records(Decision, lambda: part("decisions"))
        self.orders = Records(make_order, lambda: part("orders"))
        self.ledger.fills = Records(make_fill, lambda: part("fills"))
        self.ledger.trades = Records(Trade, lambda: part("trades"))
        self.ledger.columns = lambda: part("ledger")
        return self.ledger

    # ---- the chain, vectorised ---------------------------------------------------------------
    def _chain(self, c: _Candidates):
        """The run when no entry on the chain is refused; None otherwise (see `_sequential`)."""
        K, J, n, d = len(c.E), len(c.X), c.n, c.d
        win_buy = np.array([a == "buy" for a in c.actions], dtype=bool)[c.first]
        if c.cash_account and not win_buy.all():
            return None     # refused shorts: `_sequential` journals each one the chain meets
        # the chain's links: from candidate k to the next candidate after k's exit (K: none)
        f = np.append(c.ne, K)[c.nx]
        every = K <= 1 or np.array_equal(f[:-1], np.arange(1, K))
        if every:
            ks = np.arange(K)                   # entries and exits alternate: every candidate
        else:
            links, path, k = f.tolist(), [], 0
            while k < K:
                path.append(k)
                k = links[k]
            ks = np.array(path, dtype=np.int64)

        def at(a: np.ndarray) -> np.ndarray:    # a[ks], without the copy when the chain is every candidate
            return a if every else a[ks]

        T = len(ks)
        js = at(c.nx)
        has_exit = js < J
        jj = np.minimum(js, max(J - 1, 0))
        entry_ok = at(c.E) + d < n
        exit_ok = has_exit & (c.X[jj] + d < n) if J else np.zeros(T, bool)
        closed = exit_ok & entry_ok
        if T > 1 and not closed[:-1].all():     # only the last link can be open or expired
            return None
        # the money: sizing, commissions and cash, one step per trade
        rule_i = at(c.first)
        buy = at(win_buy)
        if len(c.in_price) == 1:
            price = at(next(iter(c.in_price.values())))
        else:
            price = np.where(buy, at(c.in_price["buy"]), at(c.in_price["sell"]))
        if not J:
            x_price = np.zeros(T)
        elif len(c.out_price) == 1:
            x_price = next(iter(c.out_price.values()))[jj]
        else:
            x_price = np.where(buy, c.out_price["sell"][jj], c.out_price["buy"][jj])
        filled = int(entry_ok.sum())
        money = self._money(c, rule_i[:filled], buy[:filled], price[:filled], x_price[:filled], closed[:filled])
        if money is None:
            return None
        q, fee_in, fee_out, cash = money
        tc = int(closed.sum())
        position = None
        if filled > tc:    # the last entry filled and its position is still open
            t = filled - 1
            k = int(ks[t])
            position = Position(c.symbol, float(q[t] if buy[t] else -q[t]), float(price[t]), c.mult, c.margined,
                                int((c.bars.start if d else c.bars.end)[c._fb[k]]), int(c.E[k] + d), fee_in[t],
                                c.rules[int(rule_i[t])].name,
                                c.margin if c.margined else 0.0, {}, owner=c.owner)
        return _Chain(ks, js, has_exit, T, filled, tc, buy, rule_i, price, x_price, q, fee_in, fee_out, cash, position)

    @staticmethod
    def _chain_columns(c: _Candidates, ch: "_Chain"):
        """The chain's decisions, orders, fills and round trips, as columns."""
        ks, js, has_exit, T, filled, tc, buy, rule_i = ch.ks, ch.js, ch.has_exit, ch.T, ch.filled, ch.tc, ch.buy, \
            ch.rule_i
        price, x_price, fee_in, fee_out = ch.price, ch.x_price, ch.fee_in, ch.fee_out
        q_arr = np.asarray(ch.q, dtype=np.float64)    # (_compound keeps whole quantities as ints)
        q = q_arr.tolist()
        n, d = c.n, c.d
        sym = c.symbol
        names = [r.name for r in c.rules]
        rule_names = _pick(names, rule_i)
        x_idx = c.x_rule[js[has_exit]]
        tx = len(x_idx)
        x_names = _pick([r.name for r in c.exit_rules], x_idx)
        x_reasons = _pick([r.reason for r in c.exit_rules], x_idx)
        act = _pick(["buy", "sell"], np.where(buy, 0, 1))
        x_act = _pick(["sell", "buy"], np.where(buy[:tx], 0, 1))
        e_time, x_time = c.e_end[ks], c.x_end[js[has_exit]]
        # decisions: per link the losers of a same-bar tie, the entry, the exit
        if c.multi[ks].any():
            e_names, e_reasons = _listed(rule_names, T), _listed(_pick([r.reason for r in c.rules], rule_i), T)
            xn, xrs = _listed(x_names, tx), _listed(x_reasons, tx)
            rows = []
            fired, et = c.fired[ks], e_time.tolist()
            xt = x_time.tolist()
            for t in range(T):
                if c.multi[ks[t]]:
                    won = f"'{e_names[t]}' fired on the same bar and won"
                    rows.extend((et[t], sym, names[o], "entry", "blocked", won)
                                for o in np.flatnonzero(fired[t]).tolist() if o != rule_i[t])
                rows.append((et[t], sym, e_names[t], "entry", "fired", e_reasons[t]))
                if t < tx:
                    rows.append((xt[t], sym, xn[t], "exit", "fired", xrs[t]))
            decisions = _columns(rows, _DECISION)
        else:
            decisions = {"time": _weave(e_time, x_time, T, tx), "symbol": sym,
                         "rule": _weave(rule_names, x_names, T, tx), "kind": _weave("entry", "exit", T, tx),
                         "outcome": "fired",
                         "reason": _weave(_pick([r.reason for r in c.rules], rule_i), x_reasons, T, tx)}
        # orders: per link the entry (filled or expired) and the exit (filled or expired); their
        # tags count up in that order
        fixed = [sz[1] if sz[0] == "fixed" else None for sz in c.sizings]
        if all(v is not None for v in fixed):
            e_qty = _pick(fixed, rule_i)
        else:
            e_qty = [fixed[r] if fixed[r] is not None else (q[t] if t < filled else None)
                     for t, r in enumerate(rule_i.tolist())]
        expired = T - filled
        e_status = "filled" if not expired else ["filled"] * filled + ["expired"] * expired
        e_status_time = np.concatenate((c.in_time[ks[:filled]], c.e_next_end[ks[filled:]]))
        e_reason = "" if not expired else [""] * filled + [
            "not filled before it expired" if b + 1 < n else "the data ended" for b in c.E[ks[filled:]].tolist()]
        x_expired = tx - tc
        x_status = "filled" if not x_expired else ["filled"] * tc + ["expired"] * x_expired
        x_status_time = np.concatenate((c.out_time[js[:tc]], np.full(x_expired, c.last_end, dtype=np.int64)))
        x_reason = "" if not x_expired else [""] * tc + ["the data ended before it filled"] * x_expired
        n_orders = T + tx
        orders = {"action": _weave(act, x_act, T, tx), "quantity": _weave(e_qty, q_arr[:tx], T, tx),
                  "sizing": _weave(_pick(c.sizing_objs, rule_i), None, T, tx),
                  "tif": _weave(_pick(c.tifs, rule_i), "day", T, tx), "intent": _weave("open", "close", T, tx),
                  "rule": _weave(rule_names, x_names, T, tx), "seq": np.arange(1, n_orders + 1),
                  "intent_reason": _weave("", x_reasons, T, tx), "time": _weave(e_time, x_time, T, tx),
                  "status": _weave(e_status, x_status, T, tx),
                  "status_time": _weave(e_status_time, x_status_time, T, tx),
                  "reason": _weave(e_reason, x_reason, T, tx)}
        # fills: the filled entries and exits, alternating; the round trips
        n_fills = filled + tc
        fills = {"action": _weave(_head(act, filled), _head(x_act, tc), filled, tc),
                 "quantity": _weave(q_arr, q_arr[:tc], filled, tc),
                 "price": _weave(price[:filled], x_price[:tc], filled, tc),
                 "commission": _weave(np.array(fee_in, dtype=np.float64), np.array(fee_out, dtype=np.float64),
                                      filled, tc),
                 "time": _weave(c.in_time[ks[:filled]], c.out_time[js[:tc]], filled, tc),
                 "bar": _weave(c.E[ks[:filled]] + d, c.X[js[:tc]] + d, filled, tc),
                 "seq": np.arange(1, n_fills + 1),
                 "rule": _weave(_head(rule_names, filled), _head(x_names, tc), filled, tc)}
        signed = np.where(buy[:tc], 1.0, -1.0) * q_arr[:tc]
        gross = (x_price[:tc] - price[:tc]) * signed * c.mult
        exit_reasons = _pick([r.reason or r.name for r in c.exit_rules], x_idx[:tc])
        trades = (2 * np.arange(tc), gross, exit_reasons)
        return decisions, orders, fills, trades

    def _money(self, c: _Candidates, rule_i: np.ndarray, buy: np.ndarray, price: np.ndarray, x_price: np.ndarray,
               closed: np.ndarray):
        """Quantities, commissions and the cash after each link, in the Runner's float
        operations; None when an entry would be refused (quantity 0, not enough cash)."""
        cash = float(self.settings.cash)
        mult, margined, cash_account, free, fee = c.mult, c.margined, c.cash_account, c.free, c.fee
        modes = [sz[0] == "percent" for sz in c.sizings]
        values = [sz[1] for sz in c.sizings]
        wholes = [sz[2] for sz in c.sizings]
        q_out, fee_in, fee_out = [], [], []
        capped = cash_account and not margined
        if len(rule_i) and free and not margined and (rule_i == rule_i[0]).all() and modes[rule_i[0]] \
                and wholes[rule_i[0]] and (buy == buy[0]).all():
            # the common case in its own loop: no commission, one rule, whole shares by equity
            tc = int(closed.sum())
            # (a memoryview of a float64 array yields Python floats, without making a list first)
            cash = _compound(cash, values[rule_i[0]], mult, capped, bool(buy[0]),
                             memoryview(np.ascontiguousarray(price[:tc], dtype=np.float64)),
                             memoryview(np.ascontiguousarray(x_price[:tc], dtype=np.float64)), q_out)
            if cash is None:
                return None
            fee_in, fee_out = [0.0] * tc, [0.0] * tc
            rule_i, buy, price, x_price, closed = rule_i[tc:], buy[tc:], price[tc:], x_price[tc:], closed[tc:]
        for r, b, p, xp, done in zip(rule_i.tolist(), buy.tolist(), price.tolist(), x_price.tolist(), closed.tolist()):
            q, f_in, need = c.size(r, p, cash)
            if q <= 0 or need + f_in > cash + 1e-6:
                return None
            signed = q if b else -q
            cash -= f_in
            if not margined:
                cash -= signed * p * mult
            q_out.append(q)
            fee_in.append(f_in)
            if not done:
                break
            f_out = 0.0 if free else fee(q, xp)
            fee_out.append(f_out)
            cash -= f_out
            if margined:
                cash += (xp - p) * signed * mult
            else:
                cash += signed * xp * mult
        return q_out, fee_in, fee_out, cash

    # ---- the chain, one candidate at a time ----------------------------------------------------
    def _sequential(self, c: _Candidates):
        """The run one entry candidate at a time: what `_chain` gives when nothing is refused,
        and the refusals (with their decisions and rejected orders) when something is."""
        symbol, n, d, mult, margined, margin = c.symbol, c.n, c.d, c.mult, c.margined, c.margin
        fee, cash_account, rules = c.fee, c.cash_account, c.rules
        E_l, X_l = c.E.tolist(), c.X.tolist()
        nx, ne = c.nx.tolist(), c.ne.tolist()
        first_l, multi_l, x_rule_l = c.first.tolist(), c.multi.tolist(), c.x_rule.tolist()
        fired_l = c.fired.tolist() if c.multi.any() else None
        in_price = {a: v.tolist() for a, v in c.in_price.items()}
        out_price = {a: v.tolist() for a, v in c.out_price.items()}
        in_time, e_end, e_next_end = c.in_time.tolist(), c.e_end.tolist(), c.e_next_end.tolist()
        out_time, x_end = c.out_time.tolist(), c.x_end.tolist()
        seq = 0
        cash = float(self.settings.cash)
        decisions: list[tuple] = []
        orders: list[tuple] = []      # _ORDER fields
        fills: list[tuple] = []       # _FILL fields without symbol and multiplier
        trade_fill: list[int] = []    # per round trip: its entry fill's index
        gross_l: list[float] = []
        reasons: list[str] = []
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
            action = c.actions[ri]
            if action == "sell" and cash_account:
                decisions.append((now, symbol, rule.name, "entry", "blocked", "short selling needs a margin account"))
                k += 1
                continue
            mode, value, _ = c.sizings[ri]
            seq += 1
            fixed = value if mode == "fixed" else None
            entry = (action, fixed, c.sizing_objs[ri], c.tifs[ri], "open", rule.name, seq, "")
            decisions.append((now, symbol, rule.name, "entry", "fired", rule.reason))
            if b + d >= n:
                orders.append(entry + (now, "expired", e_next_end[k],
                                       "not filled before it expired" if b + 1 < n else "the data ended"))
                k += 1
                continue
            price = in_price[action][k]
            t_fill = in_time[k]
            q, f_fee, need = c.size(ri, price, cash)
            if q <= 0:
                orders.append(entry + (now, "rejected", t_fill, "quantity rounds to 0"))
                decisions.append((t_fill, symbol, rule.name, "entry", "blocked", "quantity rounds to 0 at the price it would fill near"))
                k += 1
                continue
            if need + f_fee > cash + 1e-6:
                reason = f"insufficient {'cash' if cash_account else 'available funds'}: needs {need + f_fee:,.2f}, " \
                         f"has {cash:,.2f}"
                orders.append(entry + (now, "rejected", t_fill, reason))
                decisions.append((t_fill, symbol, rule.name, "entry", "blocked", reason))
                k += 1
                continue
            if fixed is None:
                entry = entry[:1] + (q,) + entry[2:]
            orders.append(entry + (now, "filled", t_fill, ""))
            signed = q if action == "buy" else -q
            fills.append((action, q, price, f_fee, t_fill, b + d, seq, rule.name))
            cash -= f_fee
            if not margined:
                cash -= signed * price * mult
            j = nx[k]
            if j >= J:   # no exit before the data ends: the position stays open
                position = Position(symbol, signed, price, mult, margined, t_fill, b + d, f_fee, rule.name,
                                    margin if margined else 0.0, {}, owner=c.owner)
                break
            x = X_l[j]
            xr = c.exit_rules[x_rule_l[j]]
            seq += 1
            x_action = "sell" if signed > 0 else "buy"
            decisions.append((x_end[j], symbol, xr.name, "exit", "fired", xr.reason))
            x_order = (x_action, abs(signed), None, "day", "close", xr.name, seq, xr.reason, x_end[j])
            if x + d >= n:
                orders.append(x_order + ("expired", c.last_end, "the data ended before it filled"))
                position = Position(symbol, signed, price, mult, margined, t_fill, b + d, f_fee, rule.name,
                                    margin if margined else 0.0, {}, owner=c.owner)
                break
            x_price = out_price[x_action][j]
            x_qty = abs(signed)
            x_fee = fee(x_qty, x_price)
            orders.append(x_order + ("filled", out_time[j], ""))
            fills.append((x_action, x_qty, x_price, x_fee, out_time[j], x + d, seq, xr.name))
            gross = (x_price - price) * signed * mult
            cash -= x_fee
            if margined:
                cash += gross
            else:
                x_signed = x_qty if x_action == "buy" else -x_qty
                cash += -x_signed * x_price * mult
            trade_fill.append(len(fills) - 2)
            gross_l.append(gross)
            reasons.append(xr.reason or xr.name)
            k = ne[j]
        fill_cols = _columns(fills, ("action", "quantity", "price", "commission", "time", "bar", "seq", "rule"))
        trades = (np.array(trade_fill, dtype=np.int64), np.array(gross_l, dtype=np.float64), reasons)
        return decisions, orders, fill_cols, trades, cash, position

    # ---- records -----------------------------------------------------------------------------
    @staticmethod
    def _records(c: _Candidates, decisions, orders, f: dict, trades: tuple) -> dict[str, Any]:
        """Every record's columns (and their lengths), and the equity curve's inputs."""
        from .equity import LedgerColumns

        symbol, bars, mult = c.symbol, c.bars, c.mult
        if isinstance(decisions, list):
            decisions = _columns(decisions, _DECISION)
        if isinstance(orders, list):
            orders = _columns(orders, _ORDER)
        nf = len(f["seq"])
        f_cols = {"symbol": symbol, "action": f["action"],
                  "quantity": np.asarray(f["quantity"], dtype=np.float64),
                  "price": np.asarray(f["price"], dtype=np.float64),
                  "commission": np.asarray(f["commission"], dtype=np.float64),
                  "time": np.asarray(f["time"], dtype=np.int64), "bar": np.asarray(f["bar"], dtype=np.int64),
                  "seq": f["seq"], "multiplier": mult, "rule": f["rule"]}
        # round trips: entry fill i, exit fill i + 1
        ti, gross, reasons = trades
        nt = len(ti)
        qty, price, comm = f_cols["quantity"], f_cols["price"], f_cols["commission"]
        action = f["action"]
        buy = np.array([a == "buy" for a in action], dtype=bool) if _is_column(action) else np.full(nf, action == "buy")
        signed_all = np.where(buy, qty, -qty)
        e_price, x_price = price[ti], price[ti + 1]
        e_signed = signed_all[ti]
        commission = comm[ti] + comm[ti + 1]
        pnl = gross - commission
        basis = np.abs(e_price * e_signed * mult)
        with np.errstate(divide="ignore", invalid="ignore"):
            ret = np.where(basis != 0, 100.0 * pnl / np.where(basis != 0, basis, 1.0), 0.0)
        e_bar, x_bar = f_cols["bar"][ti], f_cols["bar"][ti + 1]
        mae, mfe = excursions_of(bars, e_bar, x_bar, e_price, x_price, qty[ti] * mult, e_signed > 0)
        rules = f["rule"]     # fills alternate: entry, exit, entry, ...
        longs = e_signed > 0
        side = "long" if longs.all() else "short" if not longs.any() else np.where(longs, "long", "short").tolist()
        t_cols = {"symbol": symbol, "side": side,
                  "quantity": qty[ti], "multiplier": mult, "entry_time": f_cols["time"][ti], "entry_price": e_price,
                  "exit_time": f_cols["time"][ti + 1], "exit_price": x_price, "pnl": pnl, "return_pct": ret,
                  "entry_bar": e_bar, "exit_bar": x_bar, "commission": commission,
                  "entry_rule": rules[0::2][:nt] if _is_column(rules) else rules,
                  "exit_rule": rules[1::2][:nt] if _is_column(rules) else rules,
                  "exit_reason": reasons, "mae": mae, "mfe": mfe, "legs": (), "contract": "", "owner": c.owner}
        # the equity curve's inputs, as equity._cash_deltas and equity_curve compute them
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
        ledger = LedgerColumns([symbol] * nf, f_cols["bar"], cash_delta, [symbol] * nt, e_bar, x_bar,
                               np.where(e_signed > 0, 1.0, -1.0) * qty[ti], e_price)
        return {"decisions": (decisions, len(decisions["time"])), "orders": (orders, len(orders["seq"])),
                "fills": (f_cols, nf), "trades": (t_cols, nt), "ledger": ledger}

    # ---- the journal -----------------------------------------------------------------------------
    def journal_rows(self, run_id: str, iso_many: Callable[[Any], list[str]]) -> dict[str, tuple[tuple, Iterator]]:
        """The orders, decisions, fills and trades tables' columns and rows, straight from the
        record columns: the same values as backtest.write_journal writes from the objects. The
        columns the fast path never sets (limit and stop prices, legs) are left to their default
        (NULL); every distinct timestamp is formatted once."""
        prefix = f"qtrade:{run_id}:"
        o, dc, fl, tr = self.orders, self.decisions, self.ledger.fills, self.ledger.trades
        tc = tr.columns
        o_ts, o_st, d_ts, f_ts, e_ts, x_ts = _iso_columns(iso_many, o.columns["time"], o.columns["status_time"],
                                                          dc.columns["time"], fl.columns["time"], tc["entry_time"],
                                                          tc["exit_time"])
        n = o.n
        status_time = o.column("status_time")
        order_rows = zip([run_id] * n, [prefix + str(q) for q in o.column("seq")], o_ts, [next(iter(self.signals))] * n,
                         o.column("action"), [q or 0.0 for q in o.column("quantity")], ["market"] * n, o.column("tif"),
                         o.column("rule"), o.column("intent"), o.column("status"),
                         [s if t else a for s, t, a in zip(o_st, status_time, o_ts)],
                         [r or ir for r, ir in zip(o.column("reason"), o.column("intent_reason"))],
                         [self.settings.strategy] * n)
        decision_rows = zip([run_id] * dc.n, d_ts, dc.column("symbol"), dc.column("rule"), dc.column("kind"),
                            dc.column("outcome"), dc.column("reason"))
        fill_rows = zip([run_id] * fl.n, [prefix + str(q) for q in fl.column("seq")], f_ts, fl.column("symbol"),
                        fl.column("action"), fl.column("quantity"), fl.column("price"), fl.column("multiplier"),
                        fl.column("commission"))
        trade_rows = zip([run_id] * tr.n, tr.column("symbol"), tr.column("side"), tr.column("quantity"),
                         tr.column("multiplier"), e_ts, tr.column("entry_price"), x_ts, tr.column("exit_price"),
                         tr.column("pnl"), tr.column("return_pct"), (tc["exit_bar"] - tc["entry_bar"]).tolist(),
                         tr.column("mae"), tr.column("mfe"), tr.column("commission"), tr.column("entry_rule"),
                         tr.column("exit_rule"), tr.column("exit_reason"), [self.settings.strategy] * tr.n)
        return {"orders": (_ORDER_ROW, order_rows), "decisions": (_DECISION_ROW, decision_rows),
                "fills": (_FILL_ROW, fill_rows), "trades": (_TRADE_ROW, trade_rows)}


_ORDER_ROW = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "order_type", "tif", "rule", "intent",
              "status", "status_ts", "reason", "owner")
_DECISION_ROW = ("run_id", "ts", "symbol", "rule", "kind", "outcome", "reason")
_FILL_ROW = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "price", "multiplier", "commission")
_TRADE_ROW = ("run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price", "exit_ts", "exit_price",
              "pnl", "return_pct", "bars_held", "mae", "mfe", "commission", "entry_rule", "exit_rule", "exit_reason",
              "owner")


def _iso_columns(iso_many: Callable[[Any], list[str]], *columns) -> list[list[str]]:
    """Each column of ns times as ISO strings, formatting every distinct time once (an order's
    time is its decision's, a fill's its order's status time, a trade's its fills')."""
    arrays = [np.asarray(c, dtype=np.int64) for c in columns]
    every = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    if not len(every):
        return [[] for _ in arrays]
    order = np.argsort(every, kind="stable")
    ranked = every[order]
    new = np.concatenate(([True], ranked[1:] != ranked[:-1]))
    text = np.array(iso_many(ranked[new]), dtype=object)
    which = np.empty(len(every), dtype=np.int64)
    which[order] = np.cumsum(new) - 1
    out, at = [], 0
    for a in arrays:
        out.append(text[which[at:at + len(a)]].tolist())
        at += len(a)
    return out


def _compound(cash: float, value: float, mult: float, capped: bool, buy: bool, price, x_price,
              q_out: list) -> float | None:
    """`FastRun._money` for round trips without commissions, sized at `value` of the cash in
    whole units, not margined: the same float operations in fewer steps. Appends each
    quantity to q_out; the cash after the last exit, or None when an entry would be refused."""
    floor = math.floor
    if value == 1.0 and mult == 1.0 and buy and capped:
        # all in, one unit per share, long, cash account: value * cash is cash and p * mult is p
        # exactly, so the same floats with three multiplications fewer per trade
        keep = q_out.append
        for p, xp in zip(price, x_price):
            q = floor(cash / p + 1e-9)      # an int: q * p is the float product of float(q) and p
            cost = q * p
            if cost > cash + 1e-9:          # rounding put one share too many
                while q > 0 and q * p > cash + 1e-9:
                    q -= 1
                cost = q * p
            if q <= 0:
                return None
            cash -= cost
            cash += q * xp
            keep(q)
        return cash
    for p, xp in zip(price, x_price):
        q = float(floor(value * cash / (p * mult) + 1e-9))
        if capped:
            while q > 0 and q * p * mult > cash + 1e-9:
                q -= 1
        if q <= 0:
            return None
        if not capped and 0.5 * (q * p * mult) > cash + 1e-6:
            return None
        signed = q if buy else -q
        cash -= signed * p * mult
        cash += signed * xp * mult
        q_out.append(q)
    return cash


def _is_column(v) -> bool:
    return isinstance(v, (list, np.ndarray))


def _pick(values: list, idx: np.ndarray):
    """values[i] for every i in idx: one value when they are all the same, else a list."""
    if len(values) == 1 or not len(idx) or (idx == idx[0]).all():
        return values[int(idx[0])] if len(idx) else values[0]
    return np.array(values, dtype=object)[idx].tolist()


def _listed(column, n: int) -> list:
    if isinstance(column, np.ndarray):
        return column.tolist()
    return column if isinstance(column, list) else [column] * n


def _head(column, n: int):
    return column[:n] if _is_column(column) else column


def _weave(a, b, na: int, nb: int):
    """Column a (na records) and column b (nb records, na or na - 1) interleaved: a[0], b[0],
    a[1], ... A value that is not a list or an array stands for a column of that value; two
    equal ones stay one value; two arrays weave into an array."""
    if not _is_column(a) and (nb == 0 or (not _is_column(b) and type(a) is type(b) and a == b)):
        return a
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        out = np.empty(na + nb, dtype=np.result_type(a, b))
        out[0::2] = a
        out[1::2] = b
        return out
    out = [None] * (na + nb)
    out[0::2] = _listed(a, na)
    out[1::2] = _listed(b, nb)
    return out

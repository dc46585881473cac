"""Where rules fire on history: the backtest's view of a Plan, per symbol.

Entries whose conditions depend only on bars are evaluated once over the whole history; the
Runner then jumps from one firing bar to the next instead of visiting every bar. Exits that
depend on the open position (its P&L, bars held, a stop from the entry price) are evaluated over
a window of bars after the entry, vectorised, growing the window until one fires: a backtest
does O(number of trades) Python work, not O(number of bars).
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..brokers.matching import first_touch, first_true
from ..market.series import SymbolBars
from ..plan import nodes as N
from ..plan.evaluate import evaluate_window
from ..portfolio.ledger import Position


@dataclass(frozen=True)
class ExitEvent:
    bar: int            # decision bar (when) or trigger bar (stop/target)
    rule: N.Rule
    kind: str           # when | stop | target | flat_by | end
    price: float | None = None  # fill price for stop/target triggers


def _ids_of(plan: N.Plan, rule: N.Rule) -> list[int]:
    return [i for i in (rule.when, rule.stop, rule.target) if i is not None]


class SymbolSignals:
    """One symbol's rule values over its history."""

    def __init__(self, plan: N.Plan, values: list, bars: SymbolBars, *, entry_mask: np.ndarray | None = None,
                 flat_mask: np.ndarray | None = None, start: int = 0):
        self.plan = plan
        self.values = values
        self.bars = bars
        n = len(bars)
        self.n = n
        self.start = start
        self.entry_mask = entry_mask
        self.flat_mask = flat_mask
        entries = [r for r in plan.rules if r.kind == "entry"]
        self.exits = [r for r in plan.rules if r.kind == "exit"]
        self.entry_rules: list[tuple[N.Rule, np.ndarray | None, np.ndarray | None]] = []
        self.context_entries: list[N.Rule] = []
        active = {name: plan.outputs.get(f"agents.{name}.active") for name in {r.agent for r in entries if r.agent}}
        score = {name: plan.outputs.get(f"agents.{name}.score") for name in active}
        any_entry: np.ndarray | None = None
        for rule in entries:
            node = plan.nodes[rule.when]
            gate = active.get(rule.agent) if rule.agent else None
            if not node.market or (gate is not None and not plan.nodes[gate].market):
                self.context_entries.append(rule)
                continue
            # a rule's mask is read only at candidate bars (from `start` on), so the plan's own
            # array serves when nothing is combined into it; it is never written to
            fired = self._bool(values[rule.when], copy=False)
            if gate is not None:
                fired = fired & self._bool(values[gate], copy=False)
            if entry_mask is not None:
                fired = fired & entry_mask
            s = score.get(rule.agent)
            s_values = None
            if s is not None and plan.nodes[s].market:
                s_values = np.broadcast_to(np.asarray(values[s], dtype=np.float64), (n,))
            self.entry_rules.append((rule, fired, s_values))
            any_entry = fired if any_entry is None else any_entry | fired
        idx = np.flatnonzero(any_entry) if any_entry is not None else np.zeros(0, np.int64)
        self.entry_idx = idx[np.searchsorted(idx, start):]      # bars where an entry fired, from `start`
        # exits that need no position facts: one array each, searched by bisection
        self.market_exit_idx: list[tuple[N.Rule, np.ndarray]] = []
        self.context_exits: list[N.Rule] = []
        for rule in self.exits:
            if rule.when is not None and plan.nodes[rule.when].market:
                self.market_exit_idx.append((rule, np.flatnonzero(self._bool(values[rule.when], copy=False))))
            else:
                self.context_exits.append(rule)
        self.flat_idx = np.flatnonzero(flat_mask) if flat_mask is not None else np.zeros(0, np.int64)
        self.flat_rule = N.Rule("exit", "flat_by", reason="flat by the schedule's time")
        self.end_rule = N.Rule("exit", "end of data", reason="the data ended")

    def _bool(self, v, copy: bool = True) -> np.ndarray:
        if np.ndim(v):
            a = np.asarray(v, dtype=bool)
            return a.copy() if copy else a
        return np.full(self.n, bool(v))

    # the Runner bisects Python lists; the fast path reads the arrays
    @functools.cached_property
    def entry_bars(self) -> list[int]:
        return self.entry_idx.tolist()

    @functools.cached_property
    def market_exits(self) -> list[tuple[N.Rule, list[int]]]:
        return [(rule, idx.tolist()) for rule, idx in self.market_exit_idx]

    @functools.cached_property
    def flat_bars(self) -> list[int]:
        return self.flat_idx.tolist()

    # ---- entries -----------------------------------------------------------------------------
    def next_entry(self, start: int) -> int | None:
        k = bisect_left(self.entry_bars, start)
        return self.entry_bars[k] if k < len(self.entry_bars) else None

    def entries_at(self, bar: int) -> list[N.Rule]:
        """Rules that fired at `bar`, best first: agents by score (highest first), then file order."""
        fired = []
        for order, (rule, mask, score) in enumerate(self.entry_rules):
            if mask[bar]:
                s = float(score[bar]) if score is not None else float("-inf")
                fired.append((-(s if s == s else float("-inf")), order, rule))
        fired.sort(key=lambda t: (t[0], t[1]))
        return [rule for _, _, rule in fired]

    # ---- exits -------------------------------------------------------------------------------
    def context(self, pos: Position, lo: int, hi: int) -> dict[str, Any]:
        """The position's fields over bars [lo, hi) as arrays (for exit rules)."""
        b = self.bars
        e = pos.entry_bar
        close = b.close[lo:hi]
        side = pos.side
        qty = abs(pos.quantity)
        pnl = (close - pos.avg_price) * pos.quantity * pos.multiplier
        full_pnl = (b.close[e:hi] - pos.avg_price) * pos.quantity * pos.multiplier
        ctx: dict[str, Any] = {
            "position.side": float(side), "position.size": qty, "position.entry_price": pos.avg_price,
            "position.bars_held": np.arange(lo, hi, dtype=np.float64) - e,
            "position.time_held": (b.end[lo:hi] - pos.entry_time) / 1e9,
            "position.pnl": pnl,
            "position.pnl_pct": (close / pos.avg_price - 1.0) * 100.0 * side,
            "position.max_pnl": np.maximum.accumulate(full_pnl)[lo - e:],
            "position.min_pnl": np.minimum.accumulate(full_pnl)[lo - e:],
            "position.highest": np.maximum.accumulate(b.high[e:hi])[lo - e:],
            "position.lowest": np.minimum.accumulate(b.low[e:hi])[lo - e:],
            "position.entry_credit": float(pos.entry_values.get("credit", np.nan)),
            "position.entry_bar": e,
        }
        return ctx

    def next_exit(self, pos: Position) -> ExitEvent:
        """The first exit of an open position: a `when` rule at a bar's close, a stop or target
        touched within a bar (levels set at the previous close), the schedule's flat-by time, or
        the end of the data."""
        a = pos.entry_bar
        best: ExitEvent | None = None
        # exits that need no position facts
        for rule, bars in self.market_exits:
            k = bisect_left(bars, a)
            if k < len(bars) and (best is None or bars[k] < best.bar):
                best = ExitEvent(bars[k], rule, "when")
        if self.flat_bars:
            k = bisect_left(self.flat_bars, a)
            if k < len(self.flat_bars) and (best is None or self.flat_bars[k] < best.bar):
                best = ExitEvent(self.flat_bars[k], self.flat_rule, "flat_by")
        if self.context_exits:
            limit = best.bar + 1 if best is not None else self.n
            found = self._search_context(pos, a, limit)
            if found is not None and (best is None or _earlier(found, best)):
                best = found
        return best if best is not None else ExitEvent(self.n - 1, self.end_rule, "end")

    def _search_context(self, pos: Position, a: int, limit: int) -> ExitEvent | None:
        """Context-dependent exits in windows [lo, hi) growing from the entry bar."""
        lo, size = a, 32
        ids = [i for r in self.context_exits for i in _ids_of(self.plan, r)]
        b = self.bars
        long = pos.quantity > 0
        while lo < limit:
            hi = min(limit, lo + size)
            ctx = self.context(pos, lo, hi)
            vals = evaluate_window(self.plan, ids, self.values, lo, hi, ctx)
            found: ExitEvent | None = None
            for rule in self.context_exits:
                if rule.when is not None:
                    mask = np.broadcast_to(np.asarray(vals[rule.when], dtype=bool), (hi - lo,))
                    j = first_true(mask)
                    if j is not None:
                        ev = ExitEvent(lo + j, rule, "when")
                        found = ev if found is None or _earlier(ev, found) else found
                for key in ("stop", "target"):
                    node = getattr(rule, key)
                    if node is None:
                        continue
                    level = np.broadcast_to(np.asarray(vals[node], dtype=np.float64), (hi - lo,))
                    # a level set at the close of bar t works during bar t + 1
                    nxt = slice(lo + 1, hi + 1 if hi < self.n else self.n)
                    lv = level[: nxt.stop - nxt.start]
                    if not len(lv):
                        continue
                    # a long's stop is hit from above and its target from below; a short's the other way
                    hit = first_touch(b, nxt.start, nxt.stop, lv, rising=(key == "stop") != long)
                    if hit is None:
                        continue
                    bar, price = hit
                    ev = ExitEvent(bar, rule, key, price)
                    found = ev if found is None or _earlier(ev, found) else found
            if found is not None:
                return found
            lo, size = hi, size * 4
        return None


def _earlier(a: ExitEvent, b: ExitEvent) -> bool:
    """Does exit a happen before exit b? A `when` at the close of bar k acts at the open of k+1;
    a stop or target touched in bar j acts during bar j (a stop before a target in one bar)."""
    def key(ev: ExitEvent):
        if ev.kind in ("stop", "target"):
            return (ev.bar, 1, 0 if ev.kind == "stop" else 1)
        return (ev.bar + 1, 0, 0)
    return key(a) < key(b)

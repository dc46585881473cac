"""The trading kernel: an event-driven Runner over the Broker protocol.

One loop for a simulated run, a dry run and (with the IB broker) paper and live. A feed steps
each symbol's bars in global time order and the kernel reacts:

- a bar opens: the venue fills what works at the open; the orders decided at the previous close
  are sized from the account and the quote now, risk-capped, and sent (so what is printed or
  journaled is exactly what is sent); the account is the venue's (`broker.account()`) when it
  reports one, else the ledger at its marks (`account_view`);
- the bar trades: the venue matches resting orders (protective stops and targets, limits); a bar
  with nothing resting has no such step;
- a bar closes: the plan's values for that bar (streamed bar by bar, or read from a vectorised
  evaluation of the same plan), then the exits of each open position (only its owner's exits:
  the strategy's, or the agent's that opened it), the protective orders' new levels (a stop
  level set at a close works during the next bar, as a real stop order), flat-by, and the
  entries, checked against the risk limits before anything is sized;
- broker events: the order tracker maps each order ref to its intent and record, takes
  executions by execution id (a repeated id is ignored), applies partial fills and commissions,
  and books the ledger when an order is done. An event it cannot place (an unknown ref, more
  filled than ordered) is journaled as an error and stops new entries.

The feed skips, per symbol, the bars where nothing can fire and nothing is open or working,
which keeps a run over long history fast. The feed (`history_feed`) is one process on the run's
clock (runtime/clock.py) per symbol; it alone tells a simulated venue that a bar opens or closes.
A live run's feed is the same kind of process, fed by the broker's bars as they complete.

An underlying traded with option combos (every entry rule's order has legs) is priced by the
options desk on the chain of each bar; its entry is one BAG order whose chase is a limit
modified on a timer (every `every` seconds, `steps` prices, never past the floor), cancelled and
the cancel confirmed when it runs out. An open combo is marked at mid each bar, its exits read
its P&L, its close is a chase too (and, if that times out, an order at the natural price), and
an expiring combo is cash-settled at the underlying's settlement price.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..brokers import events as E
from ..brokers.matching import FillModel, first_touch_any, prices_tried
from ..check.model import OrderTemplate
from ..market.series import SymbolBars
from ..orders.combos import debit_of, flip, order_price
from ..orders.intent import OrderIntent, Sizing, on_tick
from ..plan import nodes as N
from ..plan.evaluate import Stream, explain, scalar_at, value_at
from ..portfolio.ledger import Fill, Ledger
from ..risk.limits import (AccountState, cap_quantity, check_entry, check_states, realised_volatility, state_size,
                           volatility_cap)
from .clock import CLOSE, INTRABAR, OPEN, SimClock
from .records import Decision, OrderRecord, RunSettings, RunState, context_nodes, excursions_of



class _Tracked:
    """One order the kernel sent (or decided to send), and what the venue said of it. Slotted: a
    run tracks several orders per trade."""

    __slots__ = ("intent", "record", "symbol", "owner", "role", "rule", "decided_bar", "exit_kind", "filled",
                 "value", "commission", "execs", "last_bar", "last_time", "why", "last_price", "combo",
                 "chase_prices", "sent", "done", "contract", "lane", "refused_to")

    def __init__(self, intent: OrderIntent, record: OrderRecord, symbol: str, owner: str, role: str, rule: N.Rule,
                 decided_bar: int, exit_kind: str = ""):
        self.intent = intent
        self.record = record
        self.symbol = symbol
        self.owner = owner
        self.role = role                # entry | exit | stop | target | combo_entry | combo_exit
        self.rule = rule
        self.decided_bar = decided_bar
        self.exit_kind = exit_kind      # when | flat_by | stop | target (exits)
        self.filled = 0.0
        self.value = 0.0
        self.commission = 0.0
        self.execs = 0                  # executions taken (their ids are the kernel's _by_exec)
        self.last_bar = -1
        self.last_time = 0
        self.why = ""                   # what the rule compared when it fired (for printed orders)
        self.last_price = 0.0
        self.combo: dict | None = None  # a combo order's quote, chase and position facts
        self.chase_prices: list = []
        self.sent = False
        self.done = False
        self.contract = ""              # the futures contract it goes to, where the bars are per contract
        self.lane: _Symbol | None = None  # the symbol's position it belongs to (one of its lanes)
        self.refused_to: set | None = None  # the changes the venue refused, (field, value): not asked again


@dataclass
class _Symbol:
    symbol: str
    bars: SymbolBars
    values: list
    start: int
    entry_mask: np.ndarray | None
    flat_mask: np.ndarray | None
    candidates: np.ndarray | None   # bars where an entry can fire (None: every bar)
    stream: Stream | None = None
    inputs: object = None           # evaluate.Bars for streaming
    combo: bool = False             # traded with option combos through the desk
    owner: str | None = None        # who holds the open position
    pending: list = field(default_factory=list)    # refs decided, to send at the next open
    working_entry: str | None = None
    closing: str | None = None
    protect: dict = field(default_factory=dict)    # (rule name, stop|target) -> ref
    stats: dict = field(default_factory=dict)      # running position fields
    key: str | None = None          # the ledger key of its open position (the symbol, or a combo's key)
    chasing: str | None = None      # the combo order whose chase is running
    jump_idx: dict = field(default_factory=dict)   # bars where each market exit holds (for jumps)
    candidate_set: set | None = None                # the candidates, for a look-up at a bar
    at: tuple = (-1, 0)             # the bar it is at and the phase (open or close)
    after_exit: object = None       # a reversal's entry, held until the exit before it is booked
    entries: int = 0                # entries into the open position (pyramiding adds to it)
    reprotect: bool = False         # the position grew: its protective levels are measured again
    mixed: bool = False             # stock entries and option combos both (one position at a time)
    flat_masks: dict = field(default_factory=dict)  # an agent's own flat-by (None: held overnight)
    held_mask: np.ndarray | None = None   # the closes at which a held name is decided (schedule.every)
    add_mask: np.ndarray | None = None    # the closes at which an entry may add to or reverse a held name
                                          # (None: as entry_mask; set when the cadences differ)
    slot: str = ""                  # the ledger key of its shares (the symbol; another lane's: SYMBOL#2, ...)
    lanes: list = field(default_factory=list)       # positions_per_symbol > 1: the symbol's lanes, this one among them
    roll: dict | None = None        # a futures roll under way: what the position carries into the next contract
    refused: dict | None = None     # (rule name, stop|target) -> the broker's reason: a protective order of the
                                    # open position the broker refused, not placed again for it


class Kernel(RunState):
    """Runs a Plan against a Broker, bar by bar."""

    def __init__(self, plan: N.Plan, symbols: dict[str, _Symbol], broker, fills: FillModel,
                 settings: RunSettings, *, on_order: Callable[[dict], None] | None = None,
                 progress: Callable[[int], None] | None = None, desk=None, chains=None, recorder=None,
                 tags: tuple[str, int] | None = None):
        class _Sig:      # RunState (and a run's reader) see each symbol's bars and plan values
            def __init__(self, st):
                self.bars, self.values = st.bars, st.values

        super().__init__(plan, {s: _Sig(st) for s, st in symbols.items()}, fills, settings)
        self.syms = symbols
        self.venue = broker
        self.on_order = on_order
        self.progress = progress
        self.desk = desk
        self.chains = chains
        self.recorder = recorder         # journals as it happens (paper and live runs)
        # the values each decision compared, for the runs a person reads as they go (a backtest's
        # journal has the outcome and the reason of every decision, not its values)
        self._explain = recorder is not None or on_order is not None
        self._tag_prefix, self._seq0 = tags or (f"qtrade:{settings.run_id}:", 0)
        self.clock: SimClock | None = None
        self._by_exec: dict[str, _Tracked] = {}
        self._fills_of: dict[str, tuple[float, float]] = {}   # exec id -> (quantity, price)
        self._fees: dict[str, float] = {}                      # exec id -> its commission
        self._cancel_why: dict[str, str] = {}                  # ref -> why the kernel cancelled it (to say so)
        self.stopping = False            # a live run's stop: its working orders cancelled, nothing new sent
        self._booked: set[str] = set()                         # refs booked in the ledger
        self._entry_ref: dict[str, str] = {}                   # symbol -> the ref of its open entry
        self._trade_of: dict[str, int] = {}                    # ref -> the index of the trade it is in
        # the round trips whose MAE and MFE are still to be measured (measure_trades):
        # (trade index, bars, first bar, bar after the last, entry price, exit price, long, units)
        self._unmeasured: list[tuple] = []
        self._handlers = {E.Execution: self._on_execution, E.CommissionReport: self._on_commission,
                          E.OrderStatus: self._on_status, E.BrokerError: self._on_error,
                          E.ModifyRefused: self._on_modify_refused,
                          E.ConnectionLost: self._on_lost, E.ConnectionRestored: self._on_restored}
        self.orders_by_ref: dict[str, _Tracked] = {}
        self.errors: list[tuple[int, str]] = []
        self.notices: list[tuple[int, str]] = []   # what a live run says as it happens, errors apart (a reconnect)
        # the orders the rules decided at the data's last close, for the next open the data does
        # not have (as the order printer's records: a dry run shows what a paper run sends first)
        self.decided_at_end: list[dict] = []
        # (symbol, start ns, end ns) -> when a bar was complete: at its end, unless a live feed
        # says otherwise (LiveFeed.use_bar_done: IB's daily bar at its session's close)
        self.bar_done: Callable[[str, int, int], int] = bar_end
        self._combo_memo: tuple | None = None   # (order, time, its combo_quote): see combo_quote
        self.halted = ""                 # why new entries stopped ('' while they may go on)
        self._halted_by_close: dict = {}  # slot -> the halt its refused close made (lifted when it is flat)
        self.live = False                # bars arrive as they complete (runtime/live.py)
        self.check_order: Callable[[E.Order], str | None] | None = None   # a live run's pre-send check
        # an IB run's roll rule: symbol -> (the contract held, the contract to roll into), or None
        # (a simulated run reads its bars' front month instead)
        self.roll_target: Callable[[str], tuple[str, str] | None] | None = None
        self._peak = settings.cash
        self._day = None
        self._day_start = settings.cash
        self._losses = 0
        self._paused_until = -math.inf
        self._entries = [r for r in plan.rules if r.kind == "entry"]
        self._exits = [r for r in plan.rules if r.kind == "exit"]
        self._flat_rule = N.Rule("exit", "flat_by", reason="flat by the schedule's time")
        self._delivery_rule = N.Rule("exit", "physical settlement",
                                     reason="an in-the-money leg would deliver shares at expiry")
        # a simulated account's margin calls: at each close of a futures symbol held, equity below the
        # maintenance margin of the futures held liquidates them (at the next open). An IB run sets this
        # False: IB liquidates a real account itself.
        self.margin_calls = True
        # a live loop's hook: an order queued by a broker event between bars (the close of a
        # position whose stop was refused) is sent then, not at the next bar
        self.on_urgent: Callable[[_Symbol], None] | None = None
        self._watch_margin = any(st.bars.margined and st.bars.maintenance > 0 for st in symbols.values())
        agents = {r.agent for r in self._entries if r.agent}
        self._active = {a: plan.outputs.get(f"agents.{a}.active") for a in agents}
        self._score = {a: plan.outputs.get(f"agents.{a}.score") for a in agents}
        # arbitration between agents (runtime/arbitration.py): their order, weights, the policy
        listed = [a.name for a in settings.agents] or list(dict.fromkeys(r.agent for r in self._entries if r.agent))
        self._rank = {name: i for i, name in enumerate(listed)}
        self._weight = {a.name: a.weight for a in settings.agents}
        self._arbitration = settings.arbitration
        self._agent_of = {r.name: r.agent for r in plan.rules if r.agent}
        self._context_entries = {r.name for r in self._entries if not plan.nodes[r.when].market or
                                 (r.agent and self._active.get(r.agent) is not None and
                                  not plan.nodes[self._active[r.agent]].market)}
        self._combo_rules = {r.name for r in self._entries if r.order in settings.orders and
                             settings.orders[r.order].combo}
        # the entries a bar's values alone decide (no combo to build, no run context to read)
        self._stock_entries = [r for r in self._entries
                               if r.name not in self._context_entries and r.name not in self._combo_rules]
        read = {n.attrs[0] for r in self._exits for n in context_nodes(plan, r)}
        self._ctx_fields = frozenset(read)      # the position fields the exits read
        # each exit's condition: (rule, node, reads the market alone)
        self._exit_whens = [(r, r.when, plan.nodes[r.when].market) for r in self._exits if r.when is not None]
        # each order template's computed prices and quantities: its plan outputs, looked up once
        self._order_nodes = {name: tuple(plan.outputs.get(f"orders.{name}.{what}")
                                         for what in ("limit", "stop", "quantity", "stop_distance"))
                             for name in {r.order for r in plan.rules if r.order}}
        limits = settings.limits
        self._entry_checks = any(x is not None for x in (limits.max_open_positions, limits.max_daily_loss,
                                                         limits.max_drawdown, limits.circuit_breaker,
                                                         limits.max_cvar)) or \
            any(cap is not None for *_, cap in limits.by_state)
        # max_cvar: the account's equity at the end of each trading day (UTC days), from the start
        self._eod: list[float] = [settings.cash]
        self._eod_day: int | None = None
        self._eod_next = -1 if limits.max_cvar is not None else math.inf
        self._periods: dict[str, tuple[int, float]] = {}   # volatility_scaling: (lookback bars, bars a year)
        self._pyramid = limits.pyramiding       # entries allowed into one position
        # schedule.max_new_entries_per_scan: the close of the scan under way and the names entered at it
        self._new_cap = settings.max_new_entries
        self._new_at: tuple[int, list[str]] = (-1, [])
        for st in symbols.values():
            st.candidate_set = set(st.candidates.tolist()) if st.candidates is not None else None
        # positions_per_symbol: each symbol's lanes, one position each (the first is the symbol's own
        # record, keyed by the symbol; the others share its bars and values, keyed SYMBOL#2, ...)
        self._per_symbol = settings.arbitration.positions_per_symbol if self._rank else 1
        self._lane_of: dict[str, _Symbol] = {}
        self._lanes: list[_Symbol] = []
        for symbol, st in symbols.items():
            self._lanes_for(symbol, st)
        self._entered: dict[str, int] = {}     # symbol -> the bar a lane of it last decided its entries at
        self.oca_groups: dict[str, str] = {}   # a position's entry ref -> its protective orders' OCA group at the
                                               # broker, where an earlier run sent them (adopted)
        self._jump_cache: dict[str | None, list[int] | None] = {}
        self._scalars: dict[int, Callable] = {}        # each node read at one bar, as a function (plan.evaluate.scalar_at)
        self._levels: dict[str | None, list] = {}     # per owner: its exits' (rule, stop|target, level at a bar, key)
        self._sizings: dict[str, Sizing] = {}      # each template's share-of-equity sizing (one value)
        self._running_fields = bool(read & {"position.max_pnl", "position.min_pnl", "position.highest",
                                            "position.lowest"})
        # a scanner: entries go for its picks only; where an entry's condition holds apart from
        # the scan on a symbol that is not a pick, the scan's reason is journaled, once while it
        # stays the same: `scan_reason(symbol, bar close)` -> (reason, what makes it the same)
        self._picked = plan.outputs.get("scan.picked")
        unscanned = {r.name: plan.outputs.get((f"agents.{r.where[1]}." if r.where[:1] == ("agents",) else "") +
                                              f"entry[{r.where[-1]}].unscanned") for r in self._entries if r.where}
        self._unscanned = [(r, unscanned[r.name]) for r in self._entries if unscanned.get(r.name) is not None]
        self.scan_reason: Callable[[str, int], tuple[str, object]] | None = None
        self._scan_said: dict[tuple[str, str], object] = {}
        self._classes = [(key.split(".", 1)[1], node) for key, node in plan.outputs.items()
                         if key.startswith("classify.")]

    def _lanes_for(self, symbol: str, st: _Symbol) -> None:
        """A traded symbol's record keyed in the ledger by the symbol, and with positions_per_symbol
        > 1 its other lanes (sharing its bars and values, keyed SYMBOL#2, ...)."""
        st.slot = symbol
        if self._per_symbol > 1:
            st.lanes = [st] + [dataclasses.replace(st, stream=None, pending=[], protect={}, stats={}, jump_idx={},
                                                   slot=f"{symbol}#{i}", lanes=[])
                               for i in range(2, self._per_symbol + 1)]
            for lane in st.lanes[1:]:
                lane.lanes = st.lanes
        for lane in st.lanes or [st]:
            self._lane_of[lane.slot] = lane
            self._lanes.append(lane)

    def add_symbol(self, symbol: str, st: _Symbol) -> None:
        """A symbol traded from now on (a live run's new scanner candidate): keyed and laned as
        the symbols the run began with."""
        st.candidate_set = set(st.candidates.tolist()) if st.candidates is not None else None
        old = self.syms.get(symbol)
        if old is not None:         # listed again after its stream was released: the new record replaces it
            gone = {id(lane) for lane in old.lanes or [old]}
            self._lanes = [lane for lane in self._lanes if id(lane) not in gone]
        self.syms[symbol] = st
        self._lanes_for(symbol, st)

    # ---- the feed ----------------------------------------------------------------------------
    def run(self, clock: SimClock | None = None) -> Ledger:
        """The run: each symbol's history fed through `clock` (a SimClock unless given, e.g. a
        WallClock replaying in real time)."""
        for symbol, st in sorted(self.syms.items()):
            for rule in self._entries:
                if (st.combo or st.mixed) and rule.name in self._combo_rules:
                    continue
                if rule.name in self._combo_rules:
                    self._decide(symbol, rule.name, "entry", "blocked",
                                 f"order '{rule.order}' is an options combo and {symbol} has no option chains here")
                    continue
                if rule.name in self._context_entries:
                    needs = sorted({n.attrs[0] for n in context_nodes(self.plan, rule)})
                    self._decide(symbol, rule.name, "entry", "blocked",
                                 f"needs {', '.join(needs) or 'run context'}, which this run does not provide yet")
        clock = self.clock = clock or SimClock(self.progress)
        clock.on_time = self._tick
        for symbol in self.syms:      # the universe's order: who comes first at one close
            clock.add(self.history_feed(symbol))
        clock.run()
        self._end_of_data()
        return self.ledger

    def when(self, symbol: str, time: int | None = None, intraday: bool = False) -> str:
        """A moment (now, unless `time` is given) as a trader reads it for this symbol: the bar's
        date and open or close on daily bars (a daily bar's close is stamped at the next midnight;
        a chase's step seconds after it, "+15s"; `intraday`: a fill inside the day's range, a stop
        or limit touched at a time the bar does not tell), else the local time."""
        now = self._now if time is None else time
        st = self.syms[symbol]
        b = st.bars
        k, phase = st.at
        if k >= 0 and int(b.end[k]) - int(b.start[k]) >= 86_400 * 10**9:
            if phase == OPEN and not intraday and now != int(b.start[k]) and k > 0 and \
                    int(b.end[k - 1]) == int(b.start[k]) and int(b.start[k - 1]) < now < int(b.start[k]) + _DATED_AFTER:
                # a moment in the previous bar's day, or just after the midnight this bar opens at, is
                # the previous close's (its chase's steps and fills, priced on that close's chain), not
                # the open's: a price is the open's only at the open itself (as the report dates them)
                k, phase = k - 1, CLOSE
            day = self._local(int(b.start[k]))
            later = now - int(b.end[k] if phase == CLOSE else b.start[k])
            if phase == CLOSE and later < 0 and now > int(b.start[k]):
                # a moment of the bar's own day: a combo dated by its end-of-day chain's quotes,
                # seconds after their 16:00 close
                later = max(now - _eod_quote_ns(day), 0)
            # within the bar's day: at its open or close, or minutes after it (a chase's steps); a
            # fill hours after a close (a live run's order IB held until the next open) is its own time
            if later < min(int(b.end[k]) - int(b.start[k]), _DATED_AFTER):
                if intraday and phase == OPEN:
                    return f"{day:%Y-%m-%d} during the day"
                tail = f" +{later / 1e9:g}s" if later > 0 else ""
                return f"{day:%Y-%m-%d} {'open' if phase == OPEN else 'close'}{tail}"
        t = self._local(now)
        return f"{t:%Y-%m-%d %H:%M:%S}" if t.second else f"{t:%Y-%m-%d %H:%M}"

    def _intraday(self, tr: _Tracked, price: float) -> bool:
        """Did a resting order (a stop, a limit) fill inside its bar's range rather than at the
        open it gapped through? (A bar's open is the one moment of it a daily bar dates.)"""
        if tr.combo is not None or tr.intent.order_type not in ("stop", "limit", "stop_limit"):
            return False
        k = tr.last_bar
        b = self.syms[tr.symbol].bars.of(tr.contract) if tr.contract else self.syms[tr.symbol].bars
        return 0 <= k < len(b) and float(b.open[k]) != price

    def _outcome(self, tr: _Tracked, text: str) -> None:
        """What became of a printed order (a fill below its first limit, a chase that timed out, a
        refusal), for the reader of a dry run or a paper run."""
        if self.on_order is not None:
            self.on_order({"kind": "outcome", "symbol": tr.symbol, "tag": tr.intent.tag, "text": text,
                           "when": self.when(tr.symbol)})

    def commission_pending(self) -> bool:
        """Has the venue an execution's commission still to report (IB's CommissionReport comes
        after the fill)?"""
        fees = self._fees
        return any(exec_id not in fees for exec_id in self._by_exec)

    def _filled(self, tr: _Tracked, price: float, pnl: float | None = None, how: str = "") -> None:
        """A printed order filled (wholly, or in part before the venue ended it): what, at what
        average price and when, and for a close the round trip's P&L, for the reader of a dry run
        or a paper run."""
        if self.on_order is not None and tr.sent:
            # a venue's commission may come after the fill (IB's CommissionReport): said as to come.
            # The order's executions are among the latest: looked for from the end, not in all of them
            fees, seen, pending = self._fees, 0, False
            for exec_id, t in reversed(self._by_exec.items()):
                if t is tr:
                    if exec_id not in fees:
                        pending = True
                        break
                    seen += 1
                    if seen >= tr.execs:
                        break
            self.on_order({"kind": "fill", "symbol": tr.symbol, "tag": tr.intent.tag, "time": tr.last_time,
                           "commission_pending": pending,
                           "when": self.when(tr.symbol, tr.last_time, self._intraday(tr, price)),
                           "action": tr.intent.action,
                           "quantity": tr.filled, "ordered": float(tr.intent.quantity or 0.0), "price": price,
                           "commission": tr.commission, "pnl": pnl, "contract": tr.contract, "how": how})

    def _tick(self, time: int) -> None:
        self._now = time
        self.venue.at(time)
        if time >= self._eod_next:
            self._end_of_days(time)

    def _end_of_days(self, time: int) -> None:
        """max_cvar's record: the equity at the end of each trading day since the last one seen
        (a day some symbol has a bar ending in), the ledger at each symbol's last close then.
        Nothing fills between two instants the clock steps to, so a day the feed jumped over is
        valued with the positions as they still are."""
        day = time // _DAY
        if self._eod_day is not None:
            for d in range(self._eod_day, day):
                lo, hi = d * _DAY, (d + 1) * _DAY
                if any(np.searchsorted(st.bars.end, lo, "left") < np.searchsorted(st.bars.end, hi, "left")
                       for st in self.syms.values()):
                    self._eod.append(self.ledger.equity(self.marks(hi - 1)) if self.ledger.positions
                                     else self.ledger.cash)
        self._eod_day = day
        self._eod_next = (day + 1) * _DAY

    def history_feed(self, symbol: str):
        """A symbol's bars as clock steps: open, trade, close, one bar at a time; bars where
        nothing can happen (no entry can fire, nothing open or working; a position that only waits)
        are skipped."""
        st = self.syms[symbol]
        b = st.bars
        n = len(b)
        start_at, end_at = b.start.item, b.end.item     # a bar's times as ints (int(b.end[k]), cheaper)
        venue = self.venue
        open_bar, close_bar, fills_at_open, works = venue.open_bar, venue.close_bar, venue.fills_at_open, venue.works
        drain, on_open, on_close, holding_jump = self._drain, self._on_open, self._on_close, self._holding_jump
        if st.stream is not None:
            for k in range(st.start):
                self._stream(st, k)
        cands = st.candidates.tolist() if st.candidates is not None else None
        last_cand = len(cands) if cands is not None else 0
        skips = st.stream is None
        if st.lanes:        # positions_per_symbol: every bar, each lane in turn
            yield from self._lanes_feed(st)
            return
        k = st.start
        while k < n:
            if skips and st.key is None and not st.pending and st.working_entry is None and st.closing is None \
                    and st.chasing is None:
                if cands is not None:
                    j = bisect_left(cands, k)
                    if j >= last_cand:
                        return
                    k = cands[j]
                yield end_at(k), CLOSE
                st.at = (k, CLOSE)
                open_bar(symbol, k)
                close_bar(symbol, k)
                on_close(st, k)
                k += 1
                continue
            if skips and st.key is not None:
                j = holding_jump(st, k)
                if j is not None and j > k:
                    if j >= n:
                        return      # nothing can happen to the position before the data ends
                    k = j
            t = start_at(k)
            opened = st.pending or fills_at_open(symbol, k)
            if opened:
                yield t, OPEN
                st.at = (k, OPEN)
                on_open(st, k)
            # the bar's trading, when an order rests at the venue (else nothing can fill in it)
            trades = works(symbol)
            if trades:
                yield t, INTRABAR
                if not opened:
                    st.at = (k, OPEN)
                    open_bar(symbol, k)
                close_bar(symbol, k)
                drain()
            yield end_at(k), CLOSE
            st.at = (k, CLOSE)
            if not trades:
                if not opened:
                    open_bar(symbol, k)
                close_bar(symbol, k)
            drain()
            on_close(st, k)
            k += 1

    def _lanes_feed(self, st: _Symbol):
        """history_feed for a symbol with lanes (positions_per_symbol > 1): every bar is visited
        (one lane's position waiting does not make the bar idle for another's entries)."""
        b = st.bars
        symbol = st.symbol
        venue = self.venue
        lanes = st.lanes
        for k in range(st.start, len(b)):
            t = int(b.start[k])
            opened = any(lane.pending for lane in lanes) or venue.fills_at_open(symbol, k)
            if opened:
                yield t, OPEN
                for lane in lanes:
                    lane.at = (k, OPEN)
                self._on_open(st, k)
                for lane in lanes[1:]:
                    self._send_pending(lane, k)
            trades = venue.works(symbol)
            if trades:
                yield t, INTRABAR
                if not opened:
                    for lane in lanes:
                        lane.at = (k, OPEN)
                    venue.open_bar(symbol, k)
                venue.close_bar(symbol, k)
                self._drain()
            yield int(b.end[k]), CLOSE
            for lane in lanes:
                lane.at = (k, CLOSE)
            if not trades:
                if not opened:
                    venue.open_bar(symbol, k)
                venue.close_bar(symbol, k)
            self._drain()
            for lane in lanes:
                self._on_close(lane, k)

    _FIXED_AT_ENTRY = frozenset({"position.entry_price", "position.side", "position.size", "position.entry_bar",
                                 "position.entry_credit"})

    def _holding_jump(self, st: _Symbol, k: int) -> int | None:
        """While a position only waits (its exits read the market alone, its protective levels are
        fixed at the entry, no order of its own is in flight), the first bar from k where something
        can happen: an exit condition, flat-by, or the bar touching a protective order's level (the
        stop and the target searched together, in chunks growing from 64 bars). None when every bar
        must be visited (a streamed plan, exits that read the position, ...)."""
        if st.stream is not None or st.combo or st.key is None or st.closing is not None or st.pending \
                or st.working_entry is not None or st.key in self.combos:
            return None
        nodes = self._jump_rules(st.owner)
        if nodes is None:
            return None
        b = st.bars
        n = len(b)
        best = n
        if st.entries < self._pyramid:      # an entry may add to the position: its candidate bars
            if st.candidates is None or st.add_mask is not None:
                return None
            j = int(np.searchsorted(st.candidates, k))
            if j < len(st.candidates):
                best = int(st.candidates[j])
        if b.front is not None:          # the contract held: its own bars, and the close it expires at
            held = self.ledger.positions[st.key].contract
            best = min(best, b.expiry_bar.get(held, n))
            rolled = b.roll_bar.get(held) if b.roll_bar is not None else None
            if rolled is not None:          # the close it is rolled at (at once when that is past)
                best = min(best, max(rolled, k))
            b = b.of(held)
        if self._watch_margin and b.maintenance > 0 and self.margin_calls:
            # the first close at which equity could be below the maintenance margin (found exactly there)
            if len(self.ledger.positions) != 1:
                return None     # other positions move the equity too: every bar is looked at
            pos = self.ledger.positions[st.key]
            need = abs(pos.quantity) * b.maintenance
            need = need + abs(need) * 1e-9 + 1e-6
            cash, avg, units = self.ledger.cash, pos.avg_price, pos.quantity
            lo, size = k, 64
            while lo < best:
                hi = min(best, lo + size)
                low = np.flatnonzero(cash + (b.close[lo:hi] - avg) * units * pos.multiplier < need)
                if len(low):
                    best = lo + int(low[0])
                    break
                lo, size = hi, size * 8
        cache = st.jump_idx
        for node_id in nodes:
            idx = cache.get(node_id)
            if idx is None:
                v = st.values[node_id]
                if not _is_series(v):
                    if v and st.held_mask is None:
                        return k            # holds on every bar
                    idx = cache[node_id] = np.flatnonzero(st.held_mask).tolist() if v else []
                else:
                    hits = np.asarray(v, dtype=bool)
                    if st.held_mask is not None:      # decided only on the held names' cadence
                        hits = hits & st.held_mask[:len(hits)]
                    idx = cache[node_id] = np.flatnonzero(hits).tolist()
            j = bisect_left(idx, k)
            if j < len(idx) and idx[j] < best:
                best = idx[j]
        flat = self._flat(st)
        if flat is not None:
            fidx = cache.get(("flat", st.owner))
            if fidx is None:
                fidx = cache[("flat", st.owner)] = np.flatnonzero(flat).tolist()
            j = bisect_left(fidx, k)
            if j < len(fidx) and fidx[j] < best:
                best = fidx[j]
        if st.protect:
            long = self.ledger.positions[st.key].quantity > 0
            levels = []
            for (_, key), ref in st.protect.items():
                it = self.orders_by_ref[ref].intent
                levels.append((it.stop if key == "stop" else it.limit, (key == "stop") != long))
            lo, size = k, 64
            while lo < best:
                hi = min(best, lo + size)
                hit = first_touch_any(b, lo, hi, levels)
                if hit is not None:
                    best = hit
                    break
                lo, size = hi, size * 8
        return best

    def _jump_rules(self, owner: str | None):
        """The market exit conditions of an owner's exits, or None when its exits cannot be jumped
        over (a condition or a level that reads the position bar by bar)."""
        cache = self._jump_cache
        if owner in cache:
            return cache[owner]
        nodes: list[int] | None = []
        for rule in self._exits:
            if not self._owned(rule, owner):
                continue
            if rule.when is not None:
                if not self.plan.nodes[rule.when].market:
                    nodes = None
                    break
                nodes.append(rule.when)
            if any(x is not None and not self._fixed_at_entry(x) for x in (rule.stop, rule.target)):
                nodes = None
                break
        cache[owner] = nodes
        return nodes

    def _fixed_at_entry(self, node_id: int) -> bool:
        node = self.plan.nodes[node_id]
        if node.op == N.CONST or node.op == N.AT_ENTRY:
            return True
        if node.op == N.CONTEXT:
            return node.attrs[0] in self._FIXED_AT_ENTRY
        if node.market or not node.args:
            return False
        return all(self._fixed_at_entry(a) for a in node.args)

    def _idle(self, st: _Symbol) -> bool:
        return st.key is None and not st.pending and st.working_entry is None and st.closing is None \
            and st.chasing is None

    def _at(self, time: int, action: Callable[[], None]) -> None:
        """A timer: `action` runs at `time` (before the bars' events of that instant)."""
        self.clock.at(time, action)

    def _stream(self, st: _Symbol, k: int) -> None:
        """The streaming plan's values for bar k, as a live run computes them."""
        inputs = st.inputs
        fields = {f: inputs.fields[f][k] for f in inputs.fields}
        clock = {c: inputs.clock[c][k] for c in inputs.clock}
        others = {s: {f: v[k] for f, v in fs.items()} for s, fs in inputs.others.items()}
        scan = {f: v[k] for f, v in inputs.scan.items()} if inputs.scan else None
        out = st.stream.update(fields, clock, others, scan)
        for i, arr in enumerate(st.values):
            if arr is not None:
                arr[k] = out[i]

    # ---- a bar opens -------------------------------------------------------------------------
    def _on_open(self, st: _Symbol, k: int) -> None:
        self.venue.open_bar(st.symbol, k)
        self._drain()
        self._send_pending(st, k)

    def _send_pending(self, st: _Symbol, k: int) -> None:
        """The orders a lane decided at the previous close, sent at this open."""
        pending = st.pending
        if pending:
            st.pending = []
            orders = self.orders_by_ref
            for ref in pending:
                if len(pending) > 1:
                    self._drain()       # a reversal's exit is booked before its entry is sized
                self._send(orders[ref], k)
        self._drain()

    def _send(self, tr: _Tracked, k: int) -> None:
        """Size (entries), risk-check and place an order decided at the previous close."""
        it = tr.intent
        role = tr.role
        lane = tr.lane
        if role == "entry":
            st = lane
            if st.key is not None and st.closing is not None:
                st.after_exit = tr      # a reversal whose exit is not booked yet (a live venue): after it
                return
            qty = self._entry_quantity(tr, st.bars, k)
            if qty is None:
                st.working_entry = None
                return
            it = tr.intent = tr.record.intent = it.sized(qty)
        elif role == "exit" and lane.slot not in self.ledger.positions:
            # closed meanwhile (a protective order filled first)
            self._status(tr, "cancelled", self._now, "the position was already closed")
            lane.closing = None
            return
        elif role == "roll" and lane.key is not None:
            lane.after_exit = tr    # the roll's open follows its close once that is booked
            return
        b = lane.bars
        if role == "roll":
            pass                    # the contract rolled into, named when the roll was decided
        elif b.front is not None:   # per-contract futures: an entry goes to the front month, the rest to the held one
            pos = self.ledger.positions.get(lane.slot) if role != "entry" else None
            tr.contract = tr.record.contract = pos.contract if pos is not None else b.contract_at(k)
        order = E.Order(it.tag, it.symbol, it.action, float(it.quantity), it.order_type, it.limit, it.stop, it.tif,
                        self._oca(lane) if role == "stop" or role == "target" else "", tr.owner, it.intent,
                        it.rule, contract=tr.contract)
        if role == "entry" and self.check_order is not None and self._refused(tr, order):
            lane.working_entry = None
            return
        if self.recorder is not None:
            self.recorder.order(tr.record)       # journaled before it leaves
        tr.sent = True
        if self.on_order is not None:       # every order sent is printed: the protective ones too
            self.on_order(self._order_info(tr, self._now))
        self.venue.place(order)

    def _order_info(self, tr: _Tracked, time: int) -> dict:
        """An order of a rule as the order printer (on_order) reads it: when, the intent, the rule
        and the values it compared."""
        return {"kind": "order", "time": time, "when": self.when(tr.symbol, time), "symbol": tr.symbol,
                "rule": tr.intent.rule, "order": tr.rule.order, "intent": tr.intent, "why": tr.why, "quote": None,
                "role": tr.role, "contract": tr.contract}

    def _entry_quantity(self, tr: _Tracked, b: SymbolBars, k: int) -> float | None:
        """The entry's quantity at the price it will fill near, after the risk caps and the funds
        check (None: refused, with the reason journaled)."""
        quantity, why, refused = self._sized_entry(tr, b, k)
        if refused is not None:
            self._status(tr, "rejected", self._now, refused[0])
            self._decide(tr.symbol, tr.intent.rule, "entry", "blocked", refused[1])
            return None
        if why:   # the entry fired but was resized: say so on its decision
            for d in reversed(self.decisions):
                if d.symbol == tr.symbol and d.rule == tr.intent.rule and d.kind == "entry":
                    d.reason = f"{d.reason}; {why}" if d.reason else why
                    break
        return quantity

    def _sized_entry(self, tr: _Tracked, b: SymbolBars, k: int,
                     after_exits: bool = False) -> tuple[float, str, tuple[str, str] | None]:
        """What _entry_quantity decides, without its effects: the quantity at the price the venue
        quotes (the bar's open when it has none), what resized it ('' if nothing did), and a
        refusal (its order status's reason, its decision's reason) or None. `after_exits`: as
        after the exits pending on the symbol are booked (a reversal's, which go first), their
        positions gone and the funds they hold freed at that price."""
        it = tr.intent
        quote = self.venue.quote(tr.symbol)
        price = float(quote.last) if quote is not None else float(b.open[k])
        if it.order_type == "market":
            price = self.broker.market_price(b, it.action, price)
        elif it.order_type == "limit" and it.limit is not None:
            price = min(price, it.limit) if it.action == "buy" else max(price, it.limit)
        quantity = it.quantity
        sizing = it.sizing
        limits = self.settings.limits
        cash_account = self.settings.account == "cash"
        mult = b.multiplier
        equity, funds, cash = self.account_view()
        closing = self._exits_pending(tr) if after_exits else []
        for slot in closing:
            pos = self.ledger.positions.get(slot)
            if pos is not None:
                freed = self.margin_required(b, pos.quantity, price, pos.quantity < 0)
                funds += freed
                cash += freed if cash_account else 0.0
        fee_of = self.broker.commission
        fee_q = None
        if b.margined and b.margin <= 0 and (quantity is None or limits.max_position is not None):
            why = (f"{tr.symbol} has no initial margin in the instrument map: a future's share of equity "
                   f"({'percent_of_equity' if quantity is None else 'max_position'}) is measured on its margin")
            return 0.0, "", (why, why)
        if quantity is None:   # a share of equity: in value for stock, in initial margin for futures
            per_unit = price * mult if not b.margined else b.margin
            quantity = sizing.value * equity / per_unit
            quantity = float(math.floor(quantity + 1e-9)) if sizing.whole else quantity
            if cash_account and not b.margined:
                fee = fee_of(quantity, price, mult, b.contracts)
                while quantity > 0 and quantity * price * mult + fee > cash + 1e-9:
                    quantity -= 1 if sizing.whole else quantity * 1e-6
                    fee = fee_of(quantity, price, mult, b.contracts)
                fee_q = quantity        # the quantity `fee` is the commission of
        notes = []
        if limits.by_state or limits.volatility_target is not None:
            st = tr.lane
            if limits.by_state:
                multiplier, sized = state_size(limits, self.states_at(st, tr.decided_bar))
                if multiplier != 1.0:
                    quantity *= multiplier
                    notes.append(sized)
            if limits.volatility_target is not None:
                quantity, note = self._volatility_target(st, tr.decided_bar, quantity, equity, price * mult)
                if note:
                    notes.append(note)
        # what the symbol holds already: the position this entry adds to (pyramiding), and with
        # positions_per_symbol the other agents' shares too (max_position caps them together)
        held = 0.0          # (only max_position reads it)
        if limits.max_position is not None:
            positions = self.ledger.positions
            held = math.fsum(abs(positions[lane.slot].quantity) for lane in (tr.lane.lanes or [tr.lane])
                             if lane.slot in positions and lane.slot not in closing)
        quantity, why = cap_quantity(limits, quantity, equity=equity, unit_value=b.margin if b.margined else price * mult,
                                     stop_distance=sizing.stop_distance if sizing else None, multiplier=mult,
                                     whole=sizing.whole if sizing else True, held=held)
        if why and b.margined and why.startswith("capped by max_position"):
            why += " (a future's initial margin)"
        why = "; ".join(notes + [why] if why else notes)
        if quantity <= 0:
            return 0.0, why, (f"{why}: quantity rounds to 0" if why else "quantity rounds to 0",
                              f"{why}: quantity rounds to 0" if why else
                              "quantity rounds to 0 at the price it would fill near")
        if quantity != fee_q:       # the caps changed it (else its commission is known)
            fee = fee_of(quantity, price, mult, b.contracts)
        need = self.margin_required(b, quantity, price, it.action == "sell")
        reason = None
        if need + fee > funds + 1e-6:
            what = "cash" if cash_account else "available funds"
            reason = f"insufficient {what}: needs {need + fee:,.2f}, has {funds:,.2f}"
        elif limits.max_margin_per_trade is not None and b.margined and need > limits.max_margin_per_trade:
            reason = f"margin {need:,.2f} above max_margin_per_trade {limits.max_margin_per_trade:,.2f}"
        return quantity, why, (reason, reason) if reason is not None else None

    @staticmethod
    def _exits_pending(tr: _Tracked) -> list[str]:
        """The position slots of the entry's symbol (its lanes') whose exit is decided and waits,
        with the entry, for the next open (a reversal's: booked before the entry is sized)."""
        return [lane.slot for lane in (tr.lane.lanes or [tr.lane])
                if lane.closing is not None and lane.closing in lane.pending]

    def _preview_size(self, tr: _Tracked, info: dict) -> None:
        """An entry decided at the last close, as the next open would send it: sized (risk caps,
        funds check) at the last close's price, since the open's is not known yet; info's intent
        carries that quantity, and info["sized"] says how it was found, or why it would be refused."""
        b = tr.lane.bars
        if not len(b):
            return
        quote = self.venue.quote(tr.symbol)
        price = float(quote.last) if quote is not None else float(b.close[-1])
        quantity, why, refused = self._sized_entry(tr, b, len(b) - 1, after_exits=True)
        at = f"at the last close's price ({price:,.2f})"
        if self._exits_pending(tr):
            at += ", after the exit before it"
        if refused is not None:
            info["sized"] = f"refused {at}: {refused[1]}; checked again at the open"
            info["refused"] = True
            return
        info["intent"] = tr.intent.sized(quantity)
        info["sized"] = f"{quantity:g} {at}" + (f", {why}" if why else "") + "; sized again at the open's price"

    def _volatility_target(self, st: _Symbol, k: int, quantity: float, equity: float,
                           unit_value: float) -> tuple[float, str]:
        """risk.volatility_scaling: the quantity cut so that the position's forecast volatility
        (the symbol's realised volatility over the lookback up to bar k's close, times its value's
        share of equity) is at most the target; with too few bars it is left as it is, and says so."""
        target, lookback = self.settings.limits.volatility_target
        got = self._periods.get(st.symbol)
        if got is None:
            got = self._periods[st.symbol] = _lookback_bars(st.bars, lookback)
        n, per_year = got
        if k < n:
            return quantity, f"not scaled by volatility_scaling: {k + 1} bars of {n + 1} for its lookback"
        volatility = realised_volatility(st.bars.close[k - n:k + 1], per_year)
        if not volatility > 0:
            return quantity, "not scaled by volatility_scaling: no volatility over its lookback"
        return volatility_cap(target, quantity, equity=equity, unit_value=unit_value, volatility=volatility)

    # ---- broker events -----------------------------------------------------------------------
    def _drain(self) -> None:
        events = self.venue.events()
        if not events:
            return
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](ev)

    def _on_commission(self, ev: E.CommissionReport) -> None:
        tr = self._by_exec.get(ev.exec_id)
        if tr is None:
            self._error(f"commission report for an unknown execution {ev.exec_id}")
            return
        # a report carries the execution's whole commission: a later one (IB's zero first, then
        # the real one) replaces it
        before = self._fees.get(ev.exec_id, 0.0)
        self._fees[ev.exec_id] = ev.commission
        tr.commission += ev.commission - before
        if tr.done and ev.commission != before and tr.intent.tag in self._booked:
            # booked already (a venue's commission may come after the order's last status)
            self.ledger.late_commission(tr.intent.tag, ev.commission - before, self._trade_of.get(tr.intent.tag),
                                        key=tr.lane.slot if tr.combo is None else None)
        if self.recorder is not None:
            self.recorder.commission(ev)

    def _on_error(self, ev: E.BrokerError) -> None:
        if ev.held and ev.ref is not None and ev.ref in self.orders_by_ref:
            # the order is live and waits at the venue: said and journaled as a note, not an error
            tr = self.orders_by_ref[ev.ref]
            self.notices.append((ev.time or self._now, f"{ev.ref} ({tr.symbol}) is held by the broker: {ev.message}"))
            if self.recorder is not None:
                self.recorder.note(ev.time or self._now, "held", ev.ref, f"IB {ev.code}: {ev.message}")
            return
        message = f"broker error {ev.code} on {ev.ref or 'the connection'}: {ev.message}"
        if ev.ref is not None and ev.ref in self.orders_by_ref:
            # about one of our orders: journaled; its outcome (rejected, cancelled, still working
            # with a warning) comes as that order's status, and the strategy goes on
            self._journal_error(message)
            return
        self._error(message)

    def _on_modify_refused(self, ev: E.ModifyRefused) -> None:
        """A change the venue did not take: the order works on as the venue holds it, and so does
        the kernel's view of it (a stop believed moved that was not is a position protected where
        nobody looks). A refused change is not asked for again (no retry loop); one that never
        left (not connected) is, at the next close. A protective order that could not grow with
        the position leaves part of it unprotected: an error, which stops new entries."""
        tr = self.orders_by_ref.get(ev.ref)
        if tr is None:
            self._error(f"a refused modify of an order this run did not send ({ev.ref})")
            return
        if tr.done:
            return
        wanted = tr.intent
        held = wanted
        if ev.quantity != wanted.quantity:
            held = held.sized(ev.quantity)
        if ev.limit != wanted.limit or ev.stop != wanted.stop:
            held = held.repriced(ev.limit, ev.stop)
        if tr.record.intent is wanted:
            tr.record.intent = held
        tr.intent = held
        diffs = [(name, new, old) for name, new, old in (("quantity", wanted.quantity, held.quantity),
                                                          ("limit", wanted.limit, held.limit),
                                                          ("stop", wanted.stop, held.stop)) if new != old]
        if ev.final:
            tr.refused_to = (tr.refused_to or set()) | {(name, new) for name, new, _ in diffs}
        what = {"stop": "stop", "target": "target"}.get(tr.role, "order")
        changes = [f"{name} {new:g} (it stays at {old:g})" for name, new, old in diffs
                   if new is not None and old is not None]
        # journaled, and said as it happens by a live loop (the only runs whose venue refuses a modify)
        text = (f"the {what} {ev.ref} of {tr.symbol} was not changed to {', '.join(changes) or 'its new values'}: "
                f"{ev.reason}" + ("" if ev.final else "; asked again at the next close"))
        if (tr.role == "stop" or tr.role == "target") and wanted.quantity != held.quantity:
            pos = self.ledger.positions.get(tr.lane.slot)
            if pos is not None and abs(pos.quantity) > held.quantity + 1e-9:
                self._error(f"{text}; it covers {held.quantity:g} of the position's {abs(pos.quantity):g}")
                return
        self._journal_error(text)

    _LOST = "the connection to the broker was lost"

    def _on_lost(self, ev: E.ConnectionLost) -> None:
        """Journaled; new entries wait until the connection is restored (exits go on)."""
        self._journal_error(f"connection lost: {ev.reason}")
        self.halted = self.halted or self._LOST

    def _on_restored(self, ev: E.ConnectionRestored) -> None:
        self.notices.append((self._now, "connection restored" + (": its market data is asked for again"
                                                                  if ev.data_lost else "")))
        if self.halted == self._LOST:
            self.halted = ""

    def _on_execution(self, ev: E.Execution) -> None:
        tr = self.orders_by_ref.get(ev.ref)
        if tr is None:
            self._error(f"execution {ev.exec_id} for an order this run did not send ({ev.ref})")
            return
        exec_id = ev.exec_id
        by_exec = self._by_exec
        if exec_id in by_exec:
            return          # the same execution reported twice
        corrected = self._fills_of.get(ev.corrects) if ev.corrects else None
        if corrected is not None:       # the venue corrected an execution (IB's .02 for .01): it replaces it
            if tr.done:
                self._error(f"execution {ev.corrects} of {ev.ref} was corrected to {ev.quantity:g} @ {ev.price} "
                            f"after the order was booked at {self._average(tr)}: the journal has the correction, "
                            "the position does not")
                if self.recorder is not None:
                    self.recorder.correction(ev)
                return
            old_q, old_p = corrected
            tr.filled -= old_q
            tr.value -= old_q * old_p
            tr.execs -= 1
            by_exec.pop(ev.corrects, None)
            self._fees[exec_id] = self._fees.pop(ev.corrects, 0.0)
        quantity, price = ev.quantity, ev.price
        if tr.filled + quantity > tr.intent.quantity + 1e-9:
            self._error(f"execution {exec_id} fills {tr.filled + quantity:g} of an order for "
                        f"{tr.intent.quantity:g} ({ev.ref})")
            return
        by_exec[exec_id] = tr
        self._fills_of[exec_id] = (quantity, price)
        tr.execs += 1
        tr.filled += quantity
        tr.value += quantity * price
        # a live venue knows no bar indices: its fills belong to the bar they happened in (the
        # one forming, after the last closed bar)
        tr.last_bar = ev.bar if ev.bar >= 0 and not self.live else self._bar_at(tr.symbol, ev.time)
        tr.last_time = ev.time
        tr.last_price = price
        if self.recorder is not None:
            if corrected is not None:
                self.recorder.correction(ev)
            else:
                self.recorder.execution(ev, tr.combo["quote"].multiplier if tr.combo else
                                        self.syms[tr.symbol].bars.multiplier)

    def _on_status(self, ev: E.OrderStatus) -> None:
        tr = self.orders_by_ref.get(ev.ref)
        if tr is None:
            self._error(f"status '{ev.status}' for an order this run did not send ({ev.ref})")
            return
        status = ev.status
        if status not in E.DONE or tr.done:
            if status == E.SUBMITTED and self.recorder is not None and tr.record.status == "created" \
                    and not tr.done:
                tr.record.status, tr.record.status_time = "submitted", ev.time
                self.recorder.acknowledged(tr.record, ev.broker_id)
            return
        tr.done = True
        st = tr.lane
        role = tr.role
        if role == "combo_entry" or role == "combo_exit":
            self._combo_done(tr, st, ev)
            return
        if tr.filled > 0:
            self._book(tr, st, ev)
        else:
            status = _UNFILLED[status]
            self._status(tr, status, ev.time, ev.reason)
            # the kernel's own cancel says why (a cancel that lost the race to a fill leaves its
            # entry behind: one short string, for an order done)
            why = self._cancel_why.pop(ev.ref, "") if self._cancel_why else ""
            if tr.sent:     # ("cancelled, cancel confirmed" says its status itself)
                self._outcome(tr, (status if not ev.reason else ev.reason if ev.reason.startswith(status)
                                   else f"{status}: {ev.reason}") + (f": {why}" if why else ""))
            if status == E.REJECTED and role == "entry":
                self._decide(tr.symbol, tr.intent.rule, "entry", "blocked", f"rejected by the broker: {ev.reason}")
        if role == "entry":
            st.working_entry = None
        elif role == "roll":
            st.working_entry = None
            if tr.filled <= 0:
                st.roll = None
                self._decide(tr.symbol, "roll", "entry", "blocked",
                             f"the roll's open in {tr.contract} was {tr.record.status}"
                             f"{': ' + ev.reason if ev.reason else ''}; the position was closed in the contract "
                             "it was held in and is flat")
        elif role == "exit":
            st.closing = None
            if status == E.REJECTED and tr.filled <= 0 and st.key is not None:
                # the position stays open against the strategy's decision: new entries stop; its
                # exits are decided again at the next close (a rule that still holds sends its close
                # again), a close for a refused stop is not
                message = (f"the close of {tr.symbol} ({tr.rule.name}) was refused by the broker"
                           f"{': ' + ev.reason if ev.reason else ''}; the position is still open")
                self._error(message)
                self._halted_by_close[st.slot] = message     # lifted once the position is closed
            if st.after_exit is not None:
                self._after_exit(st)
        else:
            key = (tr.rule.name, role)         # a protective order is kept under its rule and role
            if st.protect.get(key) == tr.intent.tag:
                del st.protect[key]
                if status == E.REJECTED:
                    self._protection_refused(tr, st, key, ev.reason)

    def _protection_refused(self, tr: _Tracked, st: _Symbol, key: tuple, reason: str) -> None:
        """The broker refused a protective order of the open position. It is not placed again for
        this position (no retry loop: IB's 201 is final). A refused stop leaves the position
        without the loss limit the strategy holds it under, so it is closed at market at once (its
        target cancelled first); a refused target leaves it with its stop and its exits, and the
        decision says the target is not there."""
        st.refused = st.refused or {}
        st.refused[key] = reason
        if st.key is None or st.closing is not None or st.slot not in self.ledger.positions:
            return      # closed meanwhile, or closing already
        why = f": {reason}" if reason else ""
        k = max(st.at[0], 0)
        if tr.role == "target":
            self._decide(st.symbol, tr.rule.name, "exit", "blocked",
                         f"its target order was refused by the broker{why}; not placed again for this position, "
                         "which keeps its stop and its exits")
            return
        rule = N.Rule("exit", "stop refused", reason=f"its stop ({tr.rule.name}) was refused by the broker{why}; "
                                                     "closed at market rather than held without it")
        for ref in list(st.protect.values()):
            self.venue.cancel(ref)
        if st.working_entry is not None:        # an entry adding to it (pyramiding) still working
            self.venue.cancel(st.working_entry)
        self._drain()
        if st.key is None or st.closing is not None:
            return      # a target filled first
        self._exit_order(st, rule, k, "stop_refused")
        if self.on_urgent is not None:
            self.on_urgent(st)

    def _grow_protection(self, st: _Symbol, quantity: float) -> None:
        """An entry added to the position: its protective orders cover the whole of it at once,
        and their levels (which may read the average entry price) are measured again at the close."""
        for ref in st.protect.values():
            tr = self.orders_by_ref[ref]
            tr.intent = tr.record.intent = tr.intent.sized(quantity)
            self.venue.modify(ref, quantity=quantity)
            self._outcome(tr, f"resized to {quantity:g}, the whole position")
        st.reprotect = True

    def _after_exit(self, st: _Symbol) -> None:
        """The exit a reversal's entry waited for is done: the entry goes if it closed the
        position, else it is cancelled (never an entry on top of the position it was to reverse)."""
        tr, st.after_exit = st.after_exit, None
        if st.key is None:
            self._send(tr, min(self._bar_at(st.symbol, self._now), len(st.bars) - 1))
            return
        if tr.role == "roll":
            self._status(tr, "cancelled", self._now, "the roll's close did not close the position")
            self._decide(st.symbol, "roll", "exit", "blocked", "the roll's close did not close the position: it "
                         "stays in the contract it is held in, and the roll is tried again at the next close")
            st.working_entry = None
            st.roll = None
            return
        self._status(tr, "cancelled", self._now, "the exit it was to follow did not close the position")
        self._decide(st.symbol, tr.intent.rule, "entry", "blocked", "the exit it was to follow did not close the "
                     "position")
        st.working_entry = None

    def _refused(self, tr: _Tracked, order: E.Order) -> bool:
        """The last word before an entry leaves: a live run's check (what-if margin against its
        policy, the funds it would take). Refused: journaled with the reason, nothing sent."""
        if self.check_order is None:
            return False
        why = self.check_order(order)
        if not why:
            return False
        self._status(tr, "rejected", self._now, why)
        self._decide(tr.symbol, tr.intent.rule, "entry", "blocked", why)
        return True

    def _last_of_session(self, b: SymbolBars, k: int, calendar: str | None) -> bool:
        """Is bar k its session's last? The next bar says so; in a live run the newest bar has no
        next one yet, and the exchange calendar's close does (bars that end at or after it)."""
        if k + 1 < len(b):
            return int(b.session[k + 1]) != int(b.session[k])
        if not self.live or calendar is None or int(b.end[k]) - int(b.start[k]) >= 86_400 * 10**9:
            return True
        from ..market.clock import sessions

        day = self._local(int(b.start[k])).date()
        opens, closes = sessions(calendar, day, day)
        return not len(closes) or int(b.end[k]) >= int(closes[-1])

    def _bar_at(self, symbol: str, time: int) -> int:
        """The bar a moment falls in; len(bars) for the bar forming after the last closed one."""
        b = self.syms[symbol].bars
        if not len(b):
            return 0
        if time >= self.bar_done(symbol, int(b.start[-1]), int(b.end[-1])):
            return len(b)
        return max(int(np.searchsorted(b.start, time, side="right")) - 1, 0)

    @staticmethod
    def _average(tr: _Tracked) -> float:
        """The average fill price: one execution's own price, to the bit, or the quantity-weighted mean."""
        return tr.last_price if tr.execs == 1 else tr.value / tr.filled

    def _book(self, tr: _Tracked, st: _Symbol, ev: E.OrderStatus) -> None:
        """An order is done with fills: the ledger opens or closes the position at their average.
        An order the venue ended short of its quantity (cancelled or expired after a partial
        fill) keeps that status, with what was filled in its reason."""
        b = st.bars
        price = tr.last_price if tr.execs == 1 else tr.value / tr.filled      # _average
        it = tr.intent
        tag, symbol, role, rule, time = it.tag, tr.symbol, tr.role, tr.rule, tr.last_time
        fill = Fill(symbol, it.action, tr.filled, price, tr.commission, time, tr.last_bar, tag, b.multiplier, rule.name,
                    "", tr.contract)
        if ev.status == E.FILLED or tr.filled >= float(it.quantity or 0.0) - 1e-9:
            self._status(tr, "filled", time, "")
        else:
            short = f"{tr.filled:g} of {float(it.quantity):g} filled, the rest {ev.status}"
            self._status(tr, ev.status, ev.time, f"{short}: {ev.reason}" if ev.reason else short)
        self._booked.add(tag)
        ledger = self.ledger
        slot = st.slot
        if role == "roll":
            self._filled(tr, price)
            self._rolled(tr, st, fill, k=tr.last_bar)
            return
        if role == "entry":
            if self.on_order is not None:   # (a backtest prints nothing: not even the call)
                self._filled(tr, price)
            if slot in ledger.positions:      # pyramiding: the entry adds to the position
                pos = ledger.add(fill, key=slot)
                st.entries += 1
                self._grow_protection(st, abs(pos.quantity))
                return
            ledger.open(fill, margined=b.margined, margin_per_unit=b.margin if b.margined else 0.0, owner=tr.owner,
                        states=self.states_at(st, tr.decided_bar), key=slot)
            st.owner, st.key = tr.owner, slot
            st.stats = {}
            st.entries = 1
            st.refused = None
            self._entry_ref[slot] = tag
            return
        if role == "stop" or role == "target":
            # its siblings in the one-cancels-all group are cancelled by the venue, and their
            # confirmations come as events like any other cancel
            self._decide(symbol, rule.name, "exit", "fired", rule.reason)
        pos = ledger.positions.get(slot)
        if pos is None or abs(pos.quantity + fill.signed) > 1e-9:
            self._filled(tr, price)
            self._error(f"{tag} filled {tr.filled:g} {it.action}, which does not close the position "
                        f"({pos.quantity if pos else 0:g} held)")
            return
        held = pos.quantity
        trade = ledger.close(fill, rule.reason or rule.name, key=slot)     # no reason: the rule's name
        if self.on_order is not None:
            self._filled(tr, price, trade.pnl)
        index = self._trade_of[tag] = len(ledger.trades) - 1
        self._unmeasured.append((index, b.of(pos.contract), pos.entry_bar, tr.last_bar, pos.avg_price, price,
                                 held > 0, abs(held) * pos.multiplier))
        entry_ref = self._entry_ref.pop(slot, None)
        if entry_ref is not None:
            self._trade_of[entry_ref] = index
        st.owner = st.key = None
        refused = self._halted_by_close.pop(slot, None)
        if refused is not None and self.halted == refused:
            # the position whose refused close stopped new entries is closed now: they go on
            self.halted = ""
            self._journal_error(f"{symbol} is flat ({tag} closed it): entries go on after '{refused}'")
        if tr.exit_kind == "roll" and st.roll is not None:
            # the move made in the contract left is carried into the next (the back-adjustment);
            # a roll is no win or loss of the strategy's (the circuit breaker's streak)
            st.roll["exit_price"] = price
            st.roll["carried"] = pos.carried + (price - pos.avg_price)
            return
        if trade.pnl < 0:
            self._losses += 1
        else:
            self._losses = 0
        limits = self.settings.limits
        if limits.circuit_breaker is not None and self._losses >= limits.circuit_breaker[0]:
            self._paused_until = tr.last_time / 1e9 + limits.circuit_breaker[1]
            self._losses = 0

    # ---- a bar closes ------------------------------------------------------------------------
    def _on_close(self, st: _Symbol, k: int) -> None:
        if st.stream is not None:
            self._stream(st, k)
        if st.key is not None and st.bars.front is not None and not st.combo and \
                st.bars.expiry_bar.get(self.ledger.positions[st.key].contract) == k:
            self._expire(st, k)
        if st.combo or (st.key is not None and st.key in self.combos):
            if st.key is not None:
                if st.chasing is None:
                    self._manage_combo(st, k)
            elif self._idle(st) and self._first_entry(st, k):
                self._enter_combo(st, k)
            return
        if st.key is not None:
            if st.closing is None:
                side = self.ledger.positions[st.key].side
                self._manage(st, k)
                if st.key is None or (st.closing is not None and self._reversible(st)):
                    # stop and reverse: an exit fired at this close; an entry the other way fires with it
                    # and fills with it (at this close with `fill: close`, else both at the next open,
                    # the exit first)
                    self._enter(st, k, against=side)
                elif st.closing is None and not st.pending and st.working_entry is None and \
                        (to := self._roll_to(st, k)) is not None:
                    self._roll(st, k, to)
                elif st.closing is None and st.entries < self._pyramid and not st.pending \
                        and st.working_entry is None:
                    self._enter(st, k, add=side)      # pyramiding: an entry the same way adds to it
        elif not st.pending and st.working_entry is None and st.closing is None and st.chasing is None \
                and (not st.lanes or self._first_entry(st, k)):  # _idle
            self._enter(st, k)
            if st.key is not None and st.closing is None:
                # filled at this close (`fill: close`): its exits already apply to this bar
                self._manage(st, k)
        if self._watch_margin and st.key is not None and st.closing is None and st.bars.maintenance > 0 \
                and self.margin_calls:
            self._margin_call()

    def _maintenance(self) -> float:
        """The maintenance margin of the futures held (per contract, from the instrument map)."""
        return math.fsum([abs(p.quantity) * self.bars[p.symbol].maintenance for s, p in self.ledger.positions.items()
                          if s not in self.combos and self.bars[p.symbol].margined])

    def _margin_call(self) -> None:
        """Equity below the maintenance margin of the futures held: each of them is closed at the
        next open (IB liquidates an account under its maintenance margin rather than wait for a
        deposit), the decision journaled with the figures."""
        need = self._maintenance()
        equity = self.account_view()[0]
        if not equity < need:
            return
        text = (f"margin call: equity {equity:,.2f} is below the maintenance margin {need:,.2f} of the futures "
                "held; they are liquidated")
        rule = N.Rule("exit", "margin call", reason=text)
        for symbol, pos in list(self.ledger.positions.items()):
            other = self._lane_of.get(symbol)
            if other is None or other.combo or not other.bars.margined or other.closing is not None:
                continue
            for ref in list(other.protect.values()):
                self.venue.cancel(ref)
            self._drain()
            if other.key is not None:
                self._exit_order(other, rule, max(other.at[0], 0), "margin_call")
    def _expire(self, st: _Symbol, k: int) -> None:
        """The futures contract the position is held in stops trading before the next bar (its last
        trade date is over): the position is settled at that contract's last price, as the
        exchange settles what is still open at expiry. Its working orders are cancelled first."""
        symbol = st.symbol
        pos = self.ledger.positions[st.slot]
        for ref in list(st.protect.values()) + ([st.closing] if st.closing is not None else []):
            tr = self.orders_by_ref[ref]
            if tr.sent and not tr.done:
                self.venue.cancel(ref)
        self._drain()
        if st.closing is not None and st.closing in st.pending:
            st.pending.remove(st.closing)
            self._status(self.orders_by_ref[st.closing], "cancelled", self._now, f"{pos.contract} expired first")
        st.closing = None
        if st.slot not in self.ledger.positions:
            return          # closed meanwhile
        b = st.bars
        price = float(b.of(pos.contract).close[k])
        last = b.last_trade[pos.contract]
        how = f"{pos.contract} expired (last trade date {last}): settled at its last price {price:g}"
        time = int(b.end[k])
        self.venue.settle_future(symbol, price, time)     # the venue's holding (every lane's: one price)
        action = "sell" if pos.quantity > 0 else "buy"
        intent = OrderIntent(symbol, action, "market", abs(pos.quantity), None, None, None, "day", "close",
                             "expiry settlement", self._tag(), how)
        rec = OrderRecord(intent, self._now)
        rec.status, rec.status_time, rec.reason, rec.contract = "filled", time, how, pos.contract
        self.orders.append(rec)
        if self.recorder is not None:
            self.recorder.status(rec)
        self._decide(symbol, "expiry settlement", "exit", "fired", how)
        fill = Fill(symbol, action, abs(pos.quantity), price, 0.0, time, k, intent.tag, b.multiplier,
                    "expiry settlement", how, pos.contract)
        held = pos.quantity
        trade = self.ledger.close(fill, how, key=st.slot)
        index = self._trade_of[intent.tag] = len(self.ledger.trades) - 1
        self._unmeasured.append((index, b.of(pos.contract), pos.entry_bar, k + 1, pos.avg_price, price, held > 0,
                                 abs(held) * pos.multiplier))
        entry_ref = self._entry_ref.pop(st.slot, None)
        if entry_ref is not None:
            self._trade_of[entry_ref] = index
        self._booked.add(intent.tag)
        st.owner = st.key = None
        self._marks_key = None      # the marks of this instant are found again (a new position may open now)
        self._losses = self._losses + 1 if trade.pnl < 0 else 0
        limits = self.settings.limits
        if limits.circuit_breaker is not None and self._losses >= limits.circuit_breaker[0]:
            self._paused_until = time / 1e9 + limits.circuit_breaker[1]
            self._losses = 0

    # ---- futures rolls ------------------------------------------------------------------------
    def _roll_to(self, st: _Symbol, k: int) -> tuple[str, str] | None:
        """The contract a futures position held at bar k's close is rolled into: the front month
        on the date at that close (in the timezone), when the roll rule has moved it past the
        contract held, as a live run's broker says from its clock at the close. None: no roll due.
        (Not the next bar's front month: at the close of 23:58 a live run cannot know that no bar
        comes before midnight.)"""
        b = st.bars
        if st.key is None or st.combo or st.key in self.combos or not b.margined:
            return None
        if self.roll_target is not None:
            return self.roll_target(st.symbol)
        held = self.ledger.positions[st.key].contract
        if not held or b.roll_to is None or k + 1 >= len(b):
            return None
        to = b.roll_to[k]
        return (held, to) if to is not None and k >= b.roll_bar.get(held, len(b)) else None

    def _roll(self, st: _Symbol, k: int, roll: tuple[str, str]) -> None:
        """Roll the position into `to`: its protective orders are cancelled, a market order closes
        it in the contract held and another opens the same quantity the same way in `to`, both
        at the fill model's price (the next open, or this close with `fill: close`), the close
        first. The position keeps its owner, entry states, entries and where it began; its stops
        and targets are placed again in `to`, shifted by the roll gap (see _rolled)."""
        pos = self.ledger.positions[st.key]
        old, to = roll
        if self._running_fields:
            self._position_context(st, k)       # its running fields up to this close, in the contract held
        levels = []
        for (name, key), ref in list(st.protect.items()):
            it = self.orders_by_ref[ref].intent
            levels.append((name, key, it.stop if key == "stop" else it.limit))
            self.venue.cancel(ref)
        self._drain()
        if st.key is None:
            return      # a protective order filled first
        reason = f"roll {old} -> {to}"
        rule = N.Rule("exit", "roll", reason=reason)
        quantity = abs(pos.quantity)
        long = pos.quantity > 0
        close = OrderIntent(st.symbol, "sell" if long else "buy", "market", quantity, None, None, None, "day",
                            "close", "roll", self._tag(), reason)
        opening = OrderIntent(st.symbol, "buy" if long else "sell", "market", quantity, None, None, None, "day",
                              "open", "roll", self._tag(), reason)
        self._decide(st.symbol, "roll", "exit", "fired", reason,
                     f"{old} is the front month to this bar; {to} from the next")
        leaving = self._track(close, st, "exit", rule, k, "roll")
        entering = self._track(opening, st, "roll", rule, k)
        leaving.contract = leaving.record.contract = old
        entering.contract = entering.record.contract = to
        pos.contract = pos.contract or old      # an IB run's position: the contract its broker says it is in
        st.roll = {"from": old, "to": to, "owner": pos.owner, "states": pos.states, "entries": st.entries,
                   "origin": (pos.entry_bar, pos.entry_time) if pos.origin_bar < 0 else (pos.origin_bar,
                                                                                         pos.origin_time),
                   "carried": pos.carried, "stats": st.stats, "levels": levels, "exit_price": None}
        st.closing = close.tag
        st.working_entry = opening.tag
        self._queue(st, leaving, k)
        self._queue(st, entering, k)

    def _rolled(self, tr: _Tracked, st: _Symbol, fill: Fill, k: int) -> None:
        """The roll's open is filled: the position is held in the new contract with what it
        carried. Its protective levels move by the roll gap (the new contract's fill less the old
        one's): a stop 10 points under the entry stays 10 points under the back-adjusted entry."""
        roll, st.roll = st.roll, None
        b = st.bars
        pos = self.ledger.open(fill, margined=b.margined, margin_per_unit=b.margin if b.margined else 0.0,
                               owner=tr.owner, states=roll["states"], key=st.slot)
        if roll["origin"][0] >= 0:
            pos.origin_bar, pos.origin_time = roll["origin"]
        pos.carried = roll["carried"]
        st.owner, st.key = tr.owner, st.slot
        st.entries = roll["entries"]
        gap = fill.price - roll["exit_price"] if roll["exit_price"] is not None else 0.0
        stats = roll["stats"]
        if stats and "highest" in stats:
            stats["highest"] += gap
            stats["lowest"] += gap
        st.stats = stats
        self._entry_ref[st.slot] = tr.intent.tag
        self._marks_key = None
        rules = {r.name: r for r in self._exits}
        at = min(max(k, 0), len(b) - 1)
        for name, key, level in roll["levels"]:
            if level is None or name not in rules:
                continue
            self._place_protect(st, rules[name], key, level + gap, pos, at)
        if roll["levels"]:
            self._drain()

    def resume_roll(self, symbol: str, action: str, quantity: float, owner: str, exit_price: float | None,
                    reason: str, *, after: str | None = None, tag: str | None = None) -> str:
        """A roll an earlier session began and did not finish (an IB run's restart): its open,
        `action` `quantity` in the front month, is sent once, now (queued for the next bar's
        sending) or, with `after` (the roll's close, adopted and still working at IB), once that
        close is booked; `tag`: the open itself, adopted as working at IB (nothing is sent). The
        position keeps its owner; what the earlier session carried (its entry states, the back-
        adjustment, its protective levels) is not in the journal, so the rolled position begins
        from its roll fill and its stops and targets are measured again from its rules."""
        st = self.syms[symbol]
        rule = N.Rule("exit", "roll", reason=reason)
        intent = OrderIntent(symbol, action, "market", quantity, None, None, None, "day", "open", "roll",
                             tag or self._tag(), reason)
        st.owner = owner
        tr = self._track(intent, st, "roll", rule, len(st.bars))
        st.owner = None if st.key is None else st.owner
        tr.owner = tr.record.owner = owner
        st.roll = {"owner": owner, "states": (), "entries": 1, "origin": (-1, 0), "carried": 0.0, "stats": {},
                   "levels": [], "exit_price": exit_price}
        st.working_entry = intent.tag
        if tag is not None:
            tr.sent = True
            tr.record.status = "working"
        elif after is not None:
            st.after_exit = tr
        else:
            st.pending.append(intent.tag)
        return intent.tag

    def _place_protect(self, st: _Symbol, rule: N.Rule, key: str, level: float, pos, k: int) -> None:
        """A protective stop or target for the whole position at `level`, sent now."""
        action = "sell" if pos.quantity > 0 else "buy"
        intent = OrderIntent(st.symbol, action, "stop" if key == "stop" else "limit", abs(pos.quantity),
                             None, level if key == "target" else None, level if key == "stop" else None,
                             "gtc", "close", rule.name, self._tag(), rule.reason)
        tr = self._track(intent, st, key, rule, k)
        st.protect[(rule.name, key)] = intent.tag
        self._send(tr, k)

    def _reversible(self, st: _Symbol) -> bool:
        """Is the exit just decided a market order waiting for the next open (so an entry queued
        after it finds the position closed)? An exit at a limit or stop may not fill."""
        tr = self.orders_by_ref[st.closing]
        return tr.intent.order_type == "market" and not tr.sent

    def _position_context(self, st: _Symbol, k: int) -> dict:
        """The open position's fields at bar k's close, only those the exits read (and its entry
        bar, which at_entry() needs). The running ones (highest, lowest, max and min P&L since the
        entry) are brought up to date over the bars since they were last looked at."""
        pos = self.ledger.positions[st.slot]
        e = pos.entry_bar if pos.origin_bar < 0 else pos.origin_bar     # a rolled position: where it began
        ctx = {"position.entry_bar": e}
        need = self._ctx_fields
        if not need:
            return ctx
        b = st.bars.of(pos.contract)     # the contract it is held in (the series itself unless per contract)
        if "position.side" in need:
            ctx["position.side"] = float(pos.side)
        if "position.size" in need:
            ctx["position.size"] = abs(pos.quantity)
        # a rolled futures position reads its entry back-adjusted: the entry price plus the roll gaps
        # (the fill in the new contract less the one in the old), so stops, targets and P&L go on
        # as on a held-through back-adjusted series
        entry = pos.avg_price - pos.carried if pos.carried else pos.avg_price
        if "position.entry_price" in need:
            ctx["position.entry_price"] = entry
        if "position.bars_held" in need:
            ctx["position.bars_held"] = float(k - e)
        if "position.time_held" in need:
            ctx["position.time_held"] = (int(b.end[k]) - (pos.entry_time if pos.origin_bar < 0 else
                                                          pos.origin_time)) / 1e9
        if "position.pnl" in need or "position.pnl_pct" in need:
            c = float(b.close[k])
            ctx["position.pnl"] = (c - entry) * pos.quantity * pos.multiplier
            ctx["position.pnl_pct"] = (c / entry - 1.0) * 100.0 * pos.side
        if "position.entry_credit" in need:
            ctx["position.entry_credit"] = float(pos.entry_values.get("credit", np.nan))
        if self._running_fields:
            s = st.stats
            if not s:
                s.update(highest=-math.inf, lowest=math.inf, max_pnl=-math.inf, min_pnl=math.inf, upto=e - 1)
            lo = s["upto"] + 1
            if lo <= k:      # the bars since the last look, at once
                pnl = (b.close[lo:k + 1] - entry) * pos.quantity * pos.multiplier
                s["highest"] = max(s["highest"], float(b.high[lo:k + 1].max()))
                s["lowest"] = min(s["lowest"], float(b.low[lo:k + 1].min()))
                s["max_pnl"] = max(s["max_pnl"], float(pnl.max()))
                s["min_pnl"] = min(s["min_pnl"], float(pnl.min()))
                s["upto"] = k
            ctx.update({"position.max_pnl": s["max_pnl"], "position.min_pnl": s["min_pnl"],
                        "position.highest": s["highest"], "position.lowest": s["lowest"]})
        return ctx

    def _owned(self, rule: N.Rule, owner: str | None) -> bool:
        return rule.agent is None or rule.agent == owner

    def _manage(self, st: _Symbol, k: int) -> None:
        """The open position's exits at bar k's close, in file order; else its protective orders.
        Off the held names' cadence (schedule.every) only flat-by is decided; the protective
        orders rest as they are."""
        ctx = None
        fired, kind = None, "when"
        values = st.values
        owner = st.owner
        decide = st.held_mask is None or bool(st.held_mask[k])
        for rule, when, market in self._exit_whens if decide else ():
            if rule.agent is not None and rule.agent != owner:
                continue
            if market:
                v = values[when]
                hit = bool(v[k]) if isinstance(v, np.ndarray) and v.ndim else bool(v)      # _truth
            else:
                ctx = ctx if ctx is not None else self._position_context(st, k)
                hit = bool(scalar_at(self.plan, when, self._scalars)(k, values, ctx))
            if hit:
                fired = rule
                break
        flat = self._flat(st)
        if fired is None and flat is not None and flat[k]:
            fired, kind = self._flat_rule, "flat_by"
        if fired is not None:
            printed = self.on_order is not None     # (why it cancels is said with the cancel's confirmation)
            for ref in list(st.protect.values()):
                if printed:
                    self._cancel_why[ref] = f"for the exit '{fired.name}'"
                self.venue.cancel(ref)
            if st.working_entry is not None:        # an entry adding to it (pyramiding) still working
                if printed:
                    self._cancel_why[st.working_entry] = f"for the exit '{fired.name}'"
                self.venue.cancel(st.working_entry)
            self._drain()
            if st.key is None:
                return
            self._exit_order(st, fired, k, kind)
            return
        if decide or not st.protect:      # a new position's protection is placed at its first close
            self._protect(st, k, ctx)

    def _protect(self, st: _Symbol, k: int, ctx: dict | None) -> None:
        """Place or move the protective stop and target orders: levels set at this close work
        during the next bar."""
        owner = st.owner
        levels = self._levels.get(owner)
        if levels is None:
            levels = self._levels[owner] = [(rule, key, scalar_at(self.plan, node, self._scalars), (rule.name, key))
                                            for rule in self._exits if self._owned(rule, owner)
                                            for key, node in (("stop", rule.stop), ("target", rule.target))
                                            if node is not None]
        protect = st.protect
        if not levels or (protect and self._jump_rules(owner) is not None and not st.reprotect):
            return      # none, or levels fixed at the entry with their orders placed: nothing to move
        st.reprotect = False
        pos = self.ledger.positions[st.slot]
        told = False            # the venue was sent, moved or cancelled something: its answers to take
        values = st.values
        side, tick = "sell" if pos.quantity > 0 else "buy", st.bars.tick_size
        refused = st.refused
        for rule, key, level_at, slot in levels:
            if refused is not None and slot in refused:
                continue        # the broker refused it for this position
            if ctx is None:
                ctx = self._position_context(st, k)
            level = level_at(k, values, ctx)
            ref = protect.get(slot)
            ok = isinstance(level, float) and math.isfinite(level) and level > 0
            if ok:
                level = on_tick(level, tick, side)      # on the tick grid, as the order goes out
                ok = level > 0
            if ref is not None:
                tr = self.orders_by_ref[ref]
                if not ok:
                    self.venue.cancel(ref)
                    told = True
                    continue
                it = tr.intent
                if tr.refused_to is not None and ("stop" if key == "stop" else "limit", level) in tr.refused_to:
                    continue        # the venue refused this very change
                if key == "stop" and it.stop != level:
                    tr.intent = tr.record.intent = it.repriced(it.limit, level)
                    self.venue.modify(ref, stop=level)
                    self._outcome(tr, f"stop moved to {level:g}")
                    told = True
                elif key == "target" and it.limit != level:
                    tr.intent = tr.record.intent = it.repriced(level, it.stop)
                    self.venue.modify(ref, limit=level)
                    self._outcome(tr, f"target moved to {level:g}")
                    told = True
                continue
            if not ok:
                continue
            self._place_protect(st, rule, key, level, pos, k)
            told = True
        if told:
            self._drain()

    def _exit_order(self, st: _Symbol, rule: N.Rule, k: int, kind: str) -> None:
        pos = self.ledger.positions[st.slot]
        template = self.settings.orders.get(rule.order) if rule.order else None
        nodes = self._order_nodes.get(rule.order, _NO_NODES)
        limit = self._value(st, nodes[0], k) if nodes[0] is not None else None
        stop = self._value(st, nodes[1], k) if nodes[1] is not None else None
        action = "sell" if pos.quantity > 0 else "buy"
        limit, stop = (on_tick(p, st.bars.tick_size, action) if isinstance(p, float) and math.isfinite(p) else p
                       for p in (limit, stop))
        intent = OrderIntent(st.symbol, action,
                             template.type if template else "market", abs(pos.quantity), None, limit, stop,
                             template.tif if template else "day", "close", rule.name, self._tag(), rule.reason)
        detail = ""
        if rule.when is not None and self._explain:
            ctx = self._position_context(st, k) if not self.plan.nodes[rule.when].market else {}
            detail = "; ".join(explain(self.plan, rule.when, k, st.values, ctx))
        self._decide(st.symbol, rule.name, "exit", "fired", rule.reason, detail)
        tr = self._track(intent, st, "exit", rule, k, kind)
        tr.why = detail
        st.closing = intent.tag
        self._queue(st, tr, k)

    def _enter(self, st: _Symbol, k: int, against: int = 0, add: int = 0) -> None:
        """The entries at bar k's close; `against` (the side of a position an exit is closing at
        this bar) keeps only entries the other way: the reversal; `add` (the side of the open
        position, when pyramiding allows another entry) keeps only entries the same way, and only
        the position's owner's."""
        if k < st.start or (st.candidate_set is not None and k not in st.candidate_set):
            return
        fired = self._fired_entries(st, k, held=bool(against or add))
        if not fired and self._picked is not None and not (against or add):
            self._not_picked(st, k)
        if against or add:
            orders = self.settings.orders
            side = against or add
            fired = [r for r in fired if ((orders.get(r.order) or OrderTemplate(r.order or "")).action == "buy")
                     == ((side < 0) if against else (side > 0)) and (not add or self._owned(r, st.owner))]
        if st.lanes and fired:
            fired = self._lane_entries(st, k, fired)
        combos: dict = {}
        if st.mixed and not (against or add) and self._combo_may_fire(st, k):
            combos = self._combo_proposals(st, k)
            if combos:
                names = {r.name for r in fired} | set(combos)
                fired = [r for r in self._entries if r.name in names]
        if not fired:
            return
        rule, taken, confidence = self._choose(st, k, fired, self._sides(combos))
        if rule is None:
            return
        if rule.name in combos:
            self._open_combo(st, k, *combos[rule.name], taken, confidence)
            return
        why = "; ".join(explain(self.plan, rule.when, k, st.values, {})) if self._explain else ""
        if self.halted:
            self._decide(st.symbol, rule.name, "entry", "blocked", f"entries stopped: {self.halted}", why,
                         confidence=confidence)
            return
        reason = None
        if self._entry_checks:
            account = self.account_state()
            if against or add:      # the position closing (or added to) does not count against this entry
                account = dataclasses.replace(account, open_positions=account.open_positions - 1)
            limits = self.settings.limits
            reason = check_entry(limits, account) or (check_states(limits, self.states_at(st, k),
                                                                   account.open_positions)
                                                      if limits.by_state else None)
        if not reason and not (against or add) and self._new_cap is not None:
            reason = self._new_names_full(st, k)
        if reason:
            self._decide(st.symbol, rule.name, "entry", "blocked", reason, why, confidence=confidence)
            return
        template = self.settings.orders.get(rule.order) or OrderTemplate(rule.order or "")
        intent = self._intent(st, rule, template, k)
        if intent is None:
            return
        if not (against or add) and self._new_cap is not None:
            self._took_new(st, k)
        self._decide(st.symbol, rule.name, "entry", "fired", taken, why, confidence=confidence)
        tr = self._track(intent, st, "entry", rule, k)
        tr.why = why
        st.working_entry = intent.tag
        self._queue(st, tr, k)

    def _new_names_full(self, st: _Symbol, k: int) -> str | None:
        """Why no new name may be entered at bar k's close: the scan at this close has entered
        max_new_entries_per_scan names already (the first to fire, in the universe's order)."""
        cap = self._new_cap
        if cap is None:
            return None
        at, taken = self._new_at
        if at != int(st.bars.end[k]) or len(taken) < cap:
            return None
        return (f"max_new_entries_per_scan: {cap} new name{'s' if cap != 1 else ''} already entered at this "
                f"scan ({', '.join(taken)})")

    def _took_new(self, st: _Symbol, k: int) -> None:
        if self._new_cap is None:
            return
        t = int(st.bars.end[k])
        if self._new_at[0] != t:
            self._new_at = (t, [])
        self._new_at[1].append(st.symbol)

    def _oca(self, lane: _Symbol) -> str:
        """The one-cancels-all group of a position's protective orders: one per position (its
        entry's ref), so two owners' positions in one symbol (positions_per_symbol) never share
        one at the broker, and a later position never joins a finished one's group; a position
        taken over from an earlier run keeps the group its adopted orders were sent in."""
        entry = self._entry_ref.get(lane.slot)
        if entry is None:
            return f"{lane.slot}:protect"
        return self.oca_groups.get(entry) or f"{entry}:protect"

    def _first_entry(self, st: _Symbol, k: int) -> bool:
        """positions_per_symbol: a symbol's entries are decided once a bar's close, by its first
        idle lane (one new position a bar); True without lanes."""
        if not st.lanes:
            return True
        if self._entered.get(st.symbol) == k:
            return False
        self._entered[st.symbol] = k
        return True

    def _others(self, st: _Symbol) -> dict[str, int]:
        """The agents holding a position, or with an entry working, in the symbol's other lanes:
        agent -> the side of its shares (+1 long, -1 short; 0 for an options combo)."""
        out: dict[str, int] = {}
        positions = self.ledger.positions
        for lane in st.lanes:
            if lane is st or self._idle(lane):
                continue
            if lane.key is not None:
                pos = positions.get(lane.key)
                side = 0 if lane.key in self.combos or pos is None else pos.side
                out[lane.owner or ""] = side
                continue
            ref = lane.working_entry or lane.chasing or (lane.pending[0] if lane.pending else None)
            tr = self.orders_by_ref.get(ref) if ref is not None else None
            if tr is not None:
                out[tr.owner] = 0 if tr.combo is not None else (1 if tr.intent.action == "buy" else -1)
        return out

    def _lane_entries(self, st: _Symbol, k: int, fired: list[N.Rule]) -> list[N.Rule]:
        """positions_per_symbol: of the entries that fired, those of agents holding nothing on the
        symbol (an agent's own position is added to by pyramiding only); shares the other way
        from shares another agent holds (or is entering) are refused, journaled with the holder."""
        others = self._others(st)
        if not others:
            return fired
        orders = self.settings.orders
        out = []
        for rule in fired:
            owner = rule.agent or self.settings.strategy
            if owner in others:
                continue        # it holds (or is entering) its own position here
            if rule.name in self._combo_rules:
                out.append(rule)
                continue
            side = 1 if (orders.get(rule.order) or OrderTemplate(rule.order or "")).action == "buy" else -1
            against = sorted(a for a, s in others.items() if s == -side)
            if against:
                self._decide(st.symbol, rule.name, "entry", "blocked",
                             f"{', '.join(against)} {'holds' if len(against) == 1 else 'hold'} {st.symbol} "
                             f"{'short' if side > 0 else 'long'}: agents hold a symbol's shares on one side only "
                             "(positions_per_symbol; a broker nets one contract's positions)",
                             confidence=self._score_at(st, rule.agent, k) if rule.agent else None)
                continue
            out.append(rule)
        return out

    def _not_picked(self, st: _Symbol, k: int) -> None:
        """Entries whose condition holds at bar k but for the scan, on a symbol the scanner did
        not pick: blocked, with the scan's reason ('not in the top 25 (rank 31)')."""
        values = st.values
        if _truth(values[self._picked], k) or (st.entry_mask is not None and not st.entry_mask[k]):
            return
        said = None
        for rule, node in self._unscanned:
            if rule.name in self._context_entries or not _truth(values[node], k):
                continue
            if said is None:
                said = self.scan_reason(st.symbol, int(st.bars.end[k])) if self.scan_reason is not None \
                    else ("not a pick of the scanner", -1)
            key = (st.symbol, rule.name)
            if self._scan_said.get(key) != said[1]:
                self._scan_said[key] = said[1]
                self._decide(st.symbol, rule.name, "entry", "blocked", said[0])

    def _fired_entries(self, st: _Symbol, k: int, held: bool = False) -> list[N.Rule]:
        """Entry rules that fire at bar k (an agent's only while the agent is active), in file order;
        `held`: an entry that adds to or reverses an open position (decided on the held names'
        cadence), else a new name's (on the scan cadence)."""
        mask = st.add_mask if held and st.add_mask is not None else st.entry_mask
        if mask is not None and not mask[k]:
            return []
        out = []
        values = st.values
        for rule in self._stock_entries:
            v = values[rule.when]
            if not (bool(v[k]) if isinstance(v, np.ndarray) and v.ndim else bool(v)):      # _truth
                continue
            gate = self._active.get(rule.agent) if rule.agent else None
            if gate is not None and not _truth(values[gate], k):
                continue
            out.append(rule)
        return out

    def _score_at(self, st: _Symbol, agent: str | None, k: int) -> float:
        """An agent's score (its confidence) at bar k; nan without one."""
        node = self._score.get(agent) if agent else None
        if node is None or not self.plan.nodes[node].market:
            return math.nan
        return float(_at(st.values[node], k))

    def _choose(self, st: _Symbol, k: int, fired: list[N.Rule],
                sides: dict[str, int] | None = None) -> tuple[N.Rule | None, str, float | None]:
        """The entry that trades among those that fired at bar k: the strategy's first in file
        order, or between agents the arbitration's pick (runtime/arbitration.py). Every other
        is journaled as blocked with the arbiter's reason. Returns the rule taken (None: none),
        the reason it was taken and its agent's confidence. `sides`: each combo rule's side for
        a weighted vote (the sign of its net delta)."""
        if not self._agent_of:
            rule = fired[0]
            for other in fired[1:]:
                self._decide(st.symbol, other.name, "entry", "blocked", f"'{rule.name}' fired on the same bar and won")
            return rule, rule.reason, None
        from .arbitration import Proposal, arbitrate

        policy = self._arbitration
        orders = self.settings.orders
        proposals = []
        for rule in fired:
            side = (sides or {}).get(rule.name)
            if side is None:
                side = 1 if (orders.get(rule.order) or OrderTemplate(rule.order or "")).action == "buy" else -1
            proposals.append(Proposal(rule.name, rule.agent, self._rank.get(rule.agent, len(self._rank)),
                                      self._score_at(st, rule.agent, k), self._weight.get(rule.agent, 1.0), side))
        active = 0.0
        if policy.policy == "weighted_vote":
            values = st.values
            active = sum(self._weight.get(a, 1.0) for a, gate in self._active.items()
                         if gate is None or _truth(values[gate], k))
        holding = frozenset()
        if policy.max_active_agents is not None:
            holding = frozenset(o for s in self._lanes if s is not st and not self._idle(s)
                                for o in (s.owner or self._working_owner(s),) if o in self._rank)
        taken, why = arbitrate(policy, proposals, active, holding)
        for i, (rule, p) in enumerate(zip(fired, proposals)):
            if i != taken:
                self._decide(st.symbol, rule.name, "entry", "blocked", why[i],
                             confidence=p.score if rule.agent else None)
        if taken is None:
            return None, "", None
        p = proposals[taken]
        return fired[taken], why[taken], p.score if p.agent else None

    def _working_owner(self, st: _Symbol) -> str | None:
        """Whose entry is working on a symbol with no position yet (a chase, or an order sent)."""
        ref = st.working_entry or st.chasing or (st.pending[0] if st.pending else None)
        tr = self.orders_by_ref.get(ref) if ref is not None else None
        return tr.owner if tr is not None else None

    def _queue(self, st: _Symbol, tr: _Tracked, k: int) -> None:
        """Send now when the venue fills at this close (`fill: close`), else at the next open."""
        if self.broker.fill_model == "close" and tr.intent.order_type == "market":
            self._send(tr, k)
            self._drain()
        else:
            st.pending.append(tr.intent.tag)

    # ---- option combos -----------------------------------------------------------------------
    def _trading_time(self, b: SymbolBars, k: int):
        """The moment a decision at bar k's close belongs to: the close for intraday bars; for daily
        bars (whose end is the next midnight) the trading day itself."""
        if int(b.end[k]) - int(b.start[k]) >= 86_400 * 10**9:
            return self._local(int(b.start[k]))
        return self._local(int(b.end[k]))

    def _local(self, ns: int):
        import pandas as pd

        return pd.Timestamp(ns, tz="UTC").tz_convert(self.settings.timezone).to_pydatetime(warn=False)

    def _may_fire(self, st: _Symbol, k: int) -> bool:
        """Can an entry fire at bar k, from its conditions on the market alone (`vix < 25` of `vix < 25
        and credit >= 0.2`)? The chain is built only where one can."""
        if st.entry_mask is not None and not st.entry_mask[k]:
            return False
        for rule in self._entries:
            if all(_truth(st.values[i], k) for i in market_conjuncts(self.plan, rule.when)):
                return True
        return False

    def combo_quote(self, order: E.Order):
        """The venue's price of a combo order: its legs in the newest chain closed by now, with
        the age of that chain's quotes (the venue dates the fill by them). The same order at the
        same instant is priced once (the order is dated by its quotes before the venue prices it)."""
        memo = self._combo_memo
        if memo is not None and memo[0] is order and memo[1] == self._now:
            return memo[2]
        st = self.syms[order.underlying]
        b = st.bars
        k = int(b.end.searchsorted(self._now, "right")) - 1
        chain = self.chains(st.symbol, k) if k >= 0 else None
        if chain is None:
            quote = "no chain"
        else:
            quote = self.desk.requote(order.legs, chain, order.multiplier)
            quote = quote if isinstance(quote, str) else self._aged(quote, chain, b, k)
        self._combo_memo = (order, self._now, quote)
        return quote

    @staticmethod
    def _aged(quote, chain, b: SymbolBars, k: int):
        """`quote` from `chain` with its age when bar k closed (ComboQuote.age): an end-of-day
        snapshot of a date is quoted at its close and reaches a daily run at the bar's end, the
        next midnight; a chain quoted at the bar's end (synthesised, or a broker's) is 0 old."""
        import dataclasses

        quoted = getattr(chain, "time", None)
        age = int(b.end[k]) - quoted if quoted is not None else 0
        return dataclasses.replace(quote, age=age) if age > 0 else quote

    def _enter_combo(self, st: _Symbol, k: int) -> None:
        if k < st.start or (st.candidate_set is not None and k not in st.candidate_set):
            return
        if st.candidates is None and not self._may_fire(st, k):
            return
        combos = self._combo_proposals(st, k)
        if not combos:
            return
        fired = [r for r in self._entries if r.name in combos]
        rule, taken, confidence = self._choose(st, k, fired, self._sides(combos))
        if rule is not None:
            self._open_combo(st, k, *combos[rule.name], taken, confidence)

    def _combo_proposals(self, st: _Symbol, k: int) -> dict[str, tuple]:
        """The combo entries that fire at bar k: rule name -> (rule, quote, its context). An
        agent's rule only while the agent is active; without agents, the first that fires (the
        ones before it are journaled with what failed). The chain is built when a rule needs it."""
        symbol = st.symbol
        now = self._trading_time(st.bars, k)
        chain = False
        out: dict[str, tuple] = {}
        values = st.values
        busy = self._others(st) if st.lanes else {}
        for rule in self._entries:
            if rule.name not in self._combo_rules:
                continue
            if st.entry_mask is not None and not st.entry_mask[k]:
                break
            if busy and (rule.agent or self.settings.strategy) in busy:
                continue
            gate = self._active.get(rule.agent) if rule.agent else None
            if gate is not None and not _truth(values[gate], k):
                continue
            if chain is False:
                chain = self.chains(symbol, k)
            if chain is None:
                self._decide(symbol, rule.name, "entry", "blocked", f"no option chain at {now:%Y-%m-%d %H:%M}")
                break
            quote = self.desk.build(rule.order, symbol, k, now, values, chain)
            if isinstance(quote, str):
                self._decide(symbol, rule.name, "entry", "blocked", quote)
                continue
            if quote.missing:
                self._decide(symbol, rule.name, "entry", "blocked", quote.missing)
                continue
            ctx = self.desk.context(quote, now)
            if value_at(self.plan, rule.when, k, values, ctx):
                out[rule.name] = (rule, quote, ctx)
                if not self._agent_of:
                    break
                continue
            # the real cause, the comparisons that failed: 'credit = 0.165: 0.165 >= 0.2 no'
            failed = [p for p in explain(self.plan, rule.when, k, values, ctx) if p.endswith(" no")]
            self._decide(symbol, rule.name, "entry", "blocked", "; ".join(failed))
        return out

    def _combo_may_fire(self, st: _Symbol, k: int) -> bool:
        """Can a combo entry fire at bar k, from the conditions on the market alone (its `when`'s
        and its agent's `active`)? The chain is looked at only where one can (as the backtest's
        candidate bars say, so a streamed run decides on the same bars)."""
        values = st.values
        for rule in self._entries:
            if rule.name not in self._combo_rules:
                continue
            gate = self._active.get(rule.agent) if rule.agent else None
            if all(_truth(values[i], k) for i in market_conjuncts(self.plan, rule.when)) and \
                    (gate is None or all(_truth(values[i], k) for i in market_conjuncts(self.plan, gate))):
                return True
        return False

    def _sides(self, combos: dict) -> dict[str, int] | None:
        """Each combo proposal's side for a weighted vote: the sign of its net delta at the quote
        it would open at (a short put spread is long delta)."""
        if not combos or self._arbitration.policy != "weighted_vote":
            return None
        out = {}
        for name, (_, quote, _) in combos.items():
            delta = sum(-leg.sign * leg.ratio * leg.delta for leg in quote.legs if leg.delta == leg.delta)
            out[name] = 1 if delta > 1e-12 else -1 if delta < -1e-12 else 0
        return out

    def _flat(self, st: _Symbol):
        """The flat-by mask that applies to the symbol's position: its owner's own, else the schedule's."""
        return st.flat_masks.get(st.owner, st.flat_mask) if st.flat_masks else st.flat_mask

    def _open_combo(self, st: _Symbol, k: int, rule: N.Rule, quote, ctx: dict, taken: str,
                    confidence: float | None) -> None:
        """The combo entry taken at bar k: risk-checked, priced and chased."""
        symbol = st.symbol
        now = self._trading_time(st.bars, k)
        template = self.settings.orders[rule.order]
        qty = int(template.quantity.value) if template.quantity.mode == "fixed" else 1
        limits = self.settings.limits
        account = self.account_state()
        reason = f"entries stopped: {self.halted}" if self.halted else check_entry(limits, account)
        sized = ""
        if limits.by_state and reason is None:
            states = self.states_at(st, k)
            reason = check_states(limits, states, account.open_positions)
            multiplier, sized = state_size(limits, states)
            if reason is None and multiplier != 1.0:
                qty = int(math.floor(qty * multiplier + 1e-9))
                if qty <= 0:
                    reason = f"{sized}: the combo's count rounds to 0"
        if reason is None:
            reason = self._new_names_full(st, k)
        chase = self.desk.chase(rule.order, k, st.values, ctx)
        action = quote.opening_action
        prices = chase.prices(quote, self.desk.setups[symbol].tick, opening=True, action=action)
        # the risk is the one the chase may fill at: its least favourable price (a condor sold
        # down to its floor can lose more than at mid), not the mid the rule read
        bad = _bad_limit(chase, action)
        margin, at = quote.margin, ""
        if prices and not bad:
            worst = min(prices) if action == "sell" else max(prices)
            worst_margin = quote.margin_at(-debit_of(worst, action))
            if worst_margin > margin + 1e-9:
                margin, at = worst_margin, f" if filled at the chase's last price {worst:.2f}"
        if reason is None and limits.max_margin_per_trade is not None and \
                margin * qty > limits.max_margin_per_trade + 1e-9:
            reason = (f"margin {margin * qty:,.2f}{at} above max_margin_per_trade "
                      f"{limits.max_margin_per_trade:,.2f}")
        contracts = qty * sum(leg.ratio for leg in quote.legs)
        fee = self.broker.commission(contracts, abs(quote.credit), quote.multiplier, True)
        if reason is None and margin * qty + fee > self.account_view()[1] + 1e-6:
            reason = f"insufficient available funds for margin {margin * qty:,.2f}{at}"
        if reason:
            self._decide(symbol, rule.name, "entry", "blocked", reason, confidence=confidence)
            return
        if bad:
            self._decide(symbol, rule.name, "entry", "blocked", bad, confidence=confidence)
            return
        intent = OrderIntent(symbol, action, "limit", float(qty), None,
                             prices[0] if prices else None, None, template.tif, "open", rule.name,
                             self._tag(), rule.reason)
        self._took_new(st, k)
        self._decide(symbol, rule.name, "entry", "fired", "; ".join(x for x in (taken, sized) if x),
                     confidence=confidence)
        tr = self._track(intent, st, "combo_entry", rule, k)
        tr.record.legs = [leg.to_json() for leg in quote.legs]
        tr.combo = {"quote": quote, "chase": chase, "prices": prices, "quantity": qty, "ctx": ctx, "now": now,
                    "key": f"{symbol} {rule.order}{st.slot[len(symbol):]}", "order": rule.order}
        if self.on_order is not None:
            self.on_order({"kind": "order", "time": now, "bar": self._local(int(st.bars.start[k])), "symbol": symbol,
                           "when": self.when(symbol),
                           "rule": rule.name, "order": rule.order, "intent": intent,
                           "why": explain(self.plan, rule.when, k, st.values, ctx), "quote": quote, "chase": chase,
                           "prices": prices, "quantity": qty})
        if not prices:
            self._status(tr, "cancelled", self._now, "the chase had no price within its floor")
            self._decide(symbol, rule.name, "entry", "blocked", "the chase had no price within its floor")
            return
        self._chase(st, tr, prices, chase.every, opening=True)

    def _chase(self, st: _Symbol, tr: _Tracked, prices: list[float], every: float, opening: bool) -> None:
        """Place the combo at the first price, modify it every `every` seconds through the rest,
        then cancel it and wait for the cancel's confirmation."""
        it = tr.intent
        info = tr.combo
        quote = info["quote"]
        st.chasing = it.tag
        tr.chase_prices = prices
        info["every"] = every
        order = E.Order(it.tag, info["key"], it.action, float(it.quantity), "limit", prices[0], None, it.tif,
                        owner=tr.owner, intent="open" if opening else "close", rule=it.rule, legs=quote.legs,
                        underlying=st.symbol, multiplier=quote.multiplier, margin=quote.margin if opening else 0.0)
        if opening and self._refused(tr, order):
            st.chasing = None
            tr.done = True
            return
        self._date_by_quotes(tr, order)
        if self.recorder is not None:
            self.recorder.order(tr.record)       # journaled before it leaves
        tr.sent = True
        if not opening and self.on_order is not None:
            self.on_order({"kind": "order", "time": self._now, "when": self.when(st.symbol), "symbol": st.symbol,
                           "rule": it.rule, "order": info["order"], "intent": it, "why": tr.why,
                           "quote": None, "role": tr.role, "prices": prices, "every": every})
        self.venue.place(order)
        self._drain()
        start = self._now
        for step in range(1, len(prices)):
            self._at(start + int(step * every * 1e9), lambda s=step: self._chase_step(tr, s))
        self._at(start + int(len(prices) * every * 1e9), lambda: self._chase_end(tr))

    def _date_by_quotes(self, tr: _Tracked, order: E.Order) -> None:
        """A combo priced on an end-of-day chain is dated by that chain's quotes (its 16:00 close
        and the seconds since), as the venue dates its statuses and fills: its order too, not by
        the midnight its daily bar ends at."""
        quote = self.combo_quote(order)
        age = getattr(quote, "age", 0) if quote is not None and not isinstance(quote, str) else 0
        if age:
            tr.record.time = self._now - age

    def _chase_step(self, tr: _Tracked, step: int) -> None:
        if tr.done or self.stopping:
            return
        tr.combo["tried"] = step + 1        # the prices the venue was sent so far
        price = tr.chase_prices[step]
        tr.intent = tr.intent.repriced(price, tr.intent.stop)
        self.venue.modify(tr.intent.tag, limit=price)
        self._drain()

    def _chase_end(self, tr: _Tracked) -> None:
        if tr.done:
            return
        self.venue.cancel(tr.intent.tag)
        self._drain()

    def _combo_done(self, tr: _Tracked, st: _Symbol, ev: E.OrderStatus) -> None:
        st.chasing = None
        info = tr.combo
        prices = tr.chase_prices
        if tr.filled <= 0:
            if tr.role == "combo_exit" and not prices:      # the close at the natural price did not fill
                said = "cancelled, cancel confirmed" if ev.status == E.CANCELLED else (ev.reason or ev.status)
                reason = (f"not filled at the natural price {tr.intent.limit:.2f} in {info['rest']:g}s: {said}; "
                          "the exit is decided again at the next close, on new quotes")
                self._status(tr, "cancelled" if ev.status == E.CANCELLED else ev.status, ev.time, reason)
                self._outcome(tr, f"not filled: {reason}")
                self._decide(tr.symbol, tr.rule.name, "exit", "blocked", reason)
                return
            stopped = self._cancel_why.pop(tr.intent.tag, "") if self._cancel_why else ""
            if stopped and ev.status == E.CANCELLED:     # cancelled by the run's stop, not by the chase's end
                tried = prices[:info.get("tried", 1)]
                reason = f"cancelled after {prices_tried(tried)}: {stopped}, cancel confirmed"
                self._status(tr, "cancelled", ev.time, reason)
                self._outcome(tr, f"not filled: {reason}")
                self._decide(tr.symbol, tr.rule.name, "entry" if tr.role == "combo_entry" else "exit", "blocked",
                             reason + ("" if tr.role == "combo_entry" else "; the combo is still open"))
                return
            reason = (f"chase timed out after {prices_tried(prices)}: "
                      "cancelled, cancel confirmed") if ev.status == E.CANCELLED else ev.reason
            self._status(tr, "cancelled" if ev.status == E.CANCELLED else ev.status, ev.time, reason)
            self._outcome(tr, f"not filled: {reason}")
            if tr.role == "combo_entry":
                self._decide(tr.symbol, tr.rule.name, "entry", "blocked", reason)
            elif info.get("binding"):       # close_price's floor or limit: no natural price
                self._decide(tr.symbol, tr.rule.name, "exit", "blocked",
                             f"{reason}; not filled within close_price's {info['bound']}: the exit is decided "
                             "again at the next close")
            else:
                it = tr.intent
                self._close_at_natural(st, st.symbol, it.action, float(it.quantity), tr.rule, tr.decided_bar, info,
                                       tried=prices)
            return
        price = self._average(tr)
        step = prices.index(price) if price in prices else len(prices) - 1
        how = f"filled at {price:.2f} on step {step + 1} of {len(prices)}" if prices else info.get("how", "")
        said = f"on step {step + 1} of {len(prices)}" if prices else "at the natural price"
        if tr.role == "combo_exit":
            self._combo_closed(st, tr, price, how, ev.time)
            index = self._trade_of.get(tr.intent.tag)
            self._filled(tr, price, self.ledger.trades[index].pnl if index is not None else None, how=said)
            return
        self._filled(tr, price, how=said)
        self._status(tr, "filled", tr.last_time, how)
        quote = info["quote"]
        qty = info["quantity"]
        key = info["key"]
        action = tr.intent.action
        credit = -debit_of(price, action)       # what opening it brought in, per unit (negative: paid)
        fill = Fill(key, action, float(qty), price, tr.commission, tr.last_time, tr.decided_bar,
                    tr.intent.tag, quote.multiplier, tr.rule.name, how)
        pos = self.ledger.open(fill, margin_per_unit=quote.margin_at(credit), owner=tr.owner,
                               states=self.states_at(st, tr.decided_bar))
        self._booked.add(tr.intent.tag)
        self._entry_ref[key] = tr.intent.tag
        pos.entry_values.update({"credit": credit * quote.multiplier * qty})
        import datetime as dt

        from .options import ComboPosition

        expiry = min(dt.date.fromisoformat(leg.expiry) for leg in quote.legs)   # the front month
        combo = ComboPosition(key, info["order"], tr.rule.name, quote.legs, qty, credit, tr.decided_bar, fill.time,
                              expiry, quote.underlying, quote.multiplier, action)
        combo.marks[tr.decided_bar] = -quote.credit * quote.multiplier * qty
        combo.last_credit = quote.credit
        self.combos[key] = combo
        self.combo_symbol[key] = st.symbol
        self.venue.mark_combo(key, combo.mark_price)
        st.key, st.owner = key, tr.owner

    def _manage_combo(self, st: _Symbol, k: int) -> None:
        from .options import settlement_value

        b = st.bars
        combo = self.combos[st.key]
        symbol = st.symbol
        now = self._trading_time(b, k)
        chain = self.chains(symbol, k)
        quote = self.desk.requote(combo.legs, chain, combo.multiplier) if chain is not None else "no chain"
        if not isinstance(quote, str):
            quote = self._aged(quote, chain, b, k)
        if not isinstance(quote, str) and not quote.missing_for(False):
            combo.last_credit = quote.credit
            combo.marks[k] = -quote.credit * combo.multiplier * combo.quantity
        elif combo.last_credit is not None:
            combo.marks[k] = -combo.last_credit * combo.multiplier * combo.quantity
        if combo.last_credit is not None:
            self.venue.mark_combo(combo.key, combo.mark_price)
        setup = self.desk.setups[symbol]
        last_of_day = self._last_of_session(b, k, setup.calendar)
        deliver = setup.settlement == "physical" and self._would_deliver(combo, b, k, now.date(), last_of_day,
                                                                         setup.calendar)
        if now.date() >= combo.expiry and (last_of_day or now.date() > combo.expiry) and not deliver:
            price = float(b.open[k] if setup.settlement_time == "am" else b.close[k])
            debit = settlement_value(combo, price, None if isinstance(quote, str) else quote)
            self.venue.settle(combo.key, debit, int(b.end[k]))
            self._settle(st, combo, k, debit, f"cash-settled at {price:.2f} on {combo.expiry}", quote)
            return
        credit_now = combo.last_credit if combo.last_credit is not None else combo.entry_credit
        pnl = combo.pnl(credit_now)
        ctx = {"position.pnl": pnl, "position.entry_credit": combo.entry_credit_total,
               "position.pnl_pct": 100.0 * pnl / abs(combo.entry_credit_total) if combo.entry_credit_total else 0.0,
               "position.bars_held": float(k - combo.entry_bar),
               "position.side": -1.0 if combo.action == "sell" else 1.0, "position.size": float(combo.quantity),
               "position.entry_price": combo.entry_credit, "position.dte": float((combo.expiry - now.date()).days),
               "position.next_dte": float((combo.expiry - self._next_session(now.date(), setup.calendar)).days),
               "position.time_held": (int(b.end[k]) - combo.entry_time) / 1e9, "position.entry_bar": combo.entry_bar,
               "position.max_pnl": math.nan, "position.min_pnl": math.nan, "position.highest": math.nan,
               "position.lowest": math.nan}
        fired = self._delivery_rule if deliver else None
        decide = st.held_mask is None or bool(st.held_mask[k])
        for rule in self._exits if fired is None and decide else ():
            if rule.when is not None and self._owned(rule, st.owner) and \
                    value_at(self.plan, rule.when, k, st.values, ctx):
                fired = rule
                break
        flat = self._flat(st)
        if fired is None and flat is not None and flat[k]:
            fired = self._flat_rule
        if fired is None:
            return
        if isinstance(quote, str) or quote.missing_for(False):
            why = quote if isinstance(quote, str) else quote.missing_for(False)
            self._decide(symbol, fired.name, "exit", "blocked", f"cannot price the close: {why}")
            if deliver and now.date() >= combo.expiry:     # the last chance went by unpriced
                price = float(b.open[k] if setup.settlement_time == "am" else b.close[k])
                debit = settlement_value(combo, price, None if isinstance(quote, str) else quote)
                self.venue.settle(combo.key, debit, int(b.end[k]))
                self._settle(st, combo, k, debit, f"expired in the money at {price:.2f} on {combo.expiry} with no "
                             "quote to close it: booked at intrinsic value (the shares a physical settlement "
                             "delivers are not simulated)", quote)
            return
        if deliver:
            detail = f"{symbol} at {float(b.close[k]):.2f} puts a leg in the money: its options settle " \
                     "physically (shares delivered), so the combo is closed before its expiry's close"
            self._decide(symbol, fired.name, "exit", "fired", fired.reason, detail)
            info = {"quote": quote, "key": combo.key, "order": combo.order, "bar": k, "now": now, "why": detail}
            self._close_at_natural(st, symbol, flip(combo.action), float(combo.quantity), fired, k, info, tried=[],
                                   how="closed at the natural price before its expiry's close: an in-the-money leg "
                                   "would deliver shares")
            return
        detail = "; ".join(explain(self.plan, fired.when, k, st.values, ctx)) \
            if self._explain and fired.when is not None else ""
        self._decide(symbol, fired.name, "exit", "fired", fired.reason, detail)
        # the order's price expressions read the combo as it is now (its credit, its legs' quotes)
        # (and close_price's read the position's fields: floor: 2 * position.entry_price)
        chase = self.desk.chase(combo.order, k, st.values, {**self.desk.context(quote, now), **ctx}, closing=True)
        action = flip(combo.action)
        info = {"quote": quote, "key": combo.key, "order": combo.order, "bar": k, "now": now, "why": detail,
                # (a close that must go now, flat_by's time come, is not held to close_price's bound)
                "every": chase.every, "binding": chase.binding and fired is not self._flat_rule and
                not (flat is not None and flat[k]),
                "bound": f"floor {chase.floor:.2f}" if chase.floor is not None else
                f"limit {chase.start:.2f}" if isinstance(chase.start, (int, float)) else ""}
        close_price = self.desk.orders[combo.order].close_price
        if close_price is not None and close_price.kind == "market":
            self._close_at_natural(st, symbol, action, float(combo.quantity), fired, k, info, tried=[],
                                   how="closed at the natural price (close_price: market)")
            return
        bad = _bad_limit(chase, action)
        if bad:
            # a close is not held back by a price no order can carry (an exit, a stop loss, must go)
            self._close_at_natural(st, symbol, action, float(combo.quantity), fired, k, info, tried=[],
                                   how=f"cannot price the close by its limit ({bad}); closed at the natural price")
            return
        tick = self.desk.setups[symbol].tick
        prices = []
        for p in chase.prices(quote, tick, opening=False, action=action):
            p = max(p, tick)        # a mid below nothing (a quirk of far wings' quotes) is no limit to send
            if p not in prices:
                prices.append(p)
        if not prices:      # no price within the floor: straight to the natural price
            if info["binding"]:
                reason = (f"no price within close_price's floor {chase.floor:.2f} (mid "
                          f"{order_price(quote.mid_debit(False), action) + 0.0:.2f}): the exit is decided again at the "
                          "next close")
                self._decide(symbol, fired.name, "exit", "blocked", reason, detail)
                return
            self._close_at_natural(st, symbol, action, float(combo.quantity), fired, k, info, tried=[],
                                   how=f"no price within close_price's floor {chase.floor:.2f}; flat by the "
                                   "schedule's time: closed at the natural price" if chase.binding else "")
            return
        intent = OrderIntent(symbol, action, "limit", float(combo.quantity), None, prices[0], None,
                             "day", "close", fired.name, self._tag(), fired.reason)
        tr = self._track(intent, st, "combo_exit", fired, k)
        tr.combo, tr.why = info, detail
        self._chase(st, tr, prices, chase.every, opening=False)

    @staticmethod
    def _next_session(day, calendar: str):
        from ..market.calendars import get_calendar

        return get_calendar(calendar).next_trading_day(day)

    def _would_deliver(self, combo, b: SymbolBars, k: int, today, last_of_day: bool, calendar: str) -> bool:
        """Is bar k the last chance to close a physically settled combo that would deliver shares?
        Intraday bars: the expiry day's last bar. Daily bars: the last bar before the expiry's day
        (a daily bar is decided after its close, when the expiring options no longer trade). It
        would deliver when a leg expiring then is in the money at this bar's close."""
        daily = int(b.end[k]) - int(b.start[k]) >= 86_400 * 10**9
        if daily:
            if k + 1 < len(b):
                due = self._local(int(b.start[k + 1])).date() >= combo.expiry
            else:
                from ..market.calendars import get_calendar

                due = today >= combo.expiry or get_calendar(calendar).next_trading_day(today) >= combo.expiry
        else:
            due = today >= combo.expiry and last_of_day or today > combo.expiry
        if not due:
            return False
        import datetime as dt

        price = float(b.close[k])
        return any((price > leg.strike if leg.right == "call" else price < leg.strike)
                   for leg in combo.legs if dt.date.fromisoformat(leg.expiry) <= combo.expiry)

    def _close_at_natural(self, st: _Symbol, symbol: str, action: str, quantity: float, rule: N.Rule, k: int,
                          info: dict, tried: list[float], how: str = "") -> None:
        """Close a combo at the natural price (crossing every spread): after a closing chase timed
        out, when the chase had no price within its floor, or when it must be closed now (`how`)."""
        quote = info["quote"]
        if not how:
            how = (f"chase timed out after {prices_tried(tried)}: cancelled, "
                   "cancel confirmed; closed at the natural price") if tried else \
                "the chase had no price within its floor; closed at the natural price"
        # a marketable limit there, not a market order on a wide combo
        natural = order_price(quote.natural_debit(opening=False), action)
        intent = OrderIntent(symbol, action, "limit", quantity, None, natural, None, "day", "close", rule.name,
                             self._tag(), how)
        nat = self._track(intent, st, "combo_exit", rule, k)
        rest = float(info.get("every") or _NATURAL_REST)
        nat.combo = {**info, "how": how, "rest": rest}
        nat.chase_prices = []
        st.chasing = intent.tag
        order = E.Order(intent.tag, info["key"], intent.action, float(intent.quantity), "limit", natural, None, "day",
                        owner=nat.owner, intent="close", rule=intent.rule, legs=quote.legs, underlying=st.symbol,
                        multiplier=quote.multiplier)
        self._date_by_quotes(nat, order)
        if self.recorder is not None:
            self.recorder.order(nat.record)       # journaled before it leaves
        nat.sent = True
        if self.on_order is not None:
            self.on_order({"kind": "order", "time": self._now, "when": self.when(symbol), "symbol": symbol,
                           "rule": rule.name, "order": info["order"], "intent": intent, "why": info.get("why", ""),
                           "quote": None, "role": "combo_exit"})
        self.venue.place(order)
        self._drain()
        # a natural price that does not fill at once (the quotes moved, or were stale) rests one
        # chase step, then is cancelled and the cancel confirmed, and the exit is decided again
        if not nat.done:
            self._at(self._now + int(rest * 1e9), lambda: self._chase_end(nat))

    def _combo_closed(self, st: _Symbol, tr: _Tracked, price: float, how: str, time: int) -> None:
        combo = self.combos[st.key]
        self._status(tr, "filled", time, how)
        action = tr.intent.action
        self._finish_combo(st, combo, tr.combo["bar"], debit_of(price, action), tr.rule.name, how, tr.combo["quote"],
                           tr.commission, time, tr.intent.tag, action, natural=not tr.chase_prices)

    def _settle(self, st: _Symbol, combo, k: int, debit: float, how: str, quote) -> None:
        action = flip(combo.action)
        intent = OrderIntent(st.symbol, action, "limit", float(combo.quantity), None, order_price(debit, action), None,
                             "day", "close", "expiry settlement", self._tag(), how)
        rec = OrderRecord(intent, self._now)
        rec.status, rec.status_time, rec.reason = "filled", self._now, how
        rec.owner = st.owner or self.settings.strategy
        self.orders.append(rec)
        # dated by the settlement's quotes, as a fill is (the expiry day's close, not the next midnight)
        when = int(st.bars.end[k]) - (quote.age if not isinstance(quote, str) else 0)
        self._finish_combo(st, combo, k, debit, "expiry settlement", how, quote, 0.0, when, intent.tag, action)

    def _finish_combo(self, st, combo, k, debit, rule_name, how, quote, commission, time, tag, action,
                      natural: bool = False) -> None:
        """Book a combo's close: `debit` is the closing trade's net debit per unit (positive: paid,
        as buying back a credit combo; negative: received, as selling a debit combo), booked as
        the closing order's fill at its price (orders.combos: a buy pays it, a sell receives it).
        The trade's exit reason is its rule's; `natural`: the close went at the natural price (its
        chase timed out), which the reason says, since the rule read the mid (a take-profit that
        fired at mid may close at the natural price for a loss)."""
        import dataclasses

        b = st.bars
        price = order_price(debit, action)
        fill = Fill(combo.key, action, float(combo.quantity), price, commission, time, k, tag, combo.multiplier,
                    rule_name, how)
        margin = self.ledger.positions[combo.key].margin_per_unit * combo.quantity
        trade = self.ledger.close(fill, how)
        exit_legs = [leg.to_json() for leg in quote.legs] if not isinstance(quote, str) else []
        legs = {"legs": [leg.to_json() for leg in combo.legs], "credit": combo.entry_credit, "debit": debit,
                "expiry": combo.expiry.isoformat(), "underlying_entry": combo.underlying_entry,
                "underlying_exit": float(b.close[k]), "exit_legs": exit_legs, "order": combo.order,
                "margin": margin, "close": how}
        rule = next((r for r in self.plan.rules if r.name == rule_name), None)
        # MAE and MFE at the combo's marks (its P&L at mid at each bar it was held) and at its close,
        # in account currency, before commissions, as a share's are at the bars' range
        units = combo.multiplier * combo.quantity
        opened = combo.entry_credit * units
        seen = [opened + value for value in combo.marks.values()] + [opened - debit * units]
        trade = dataclasses.replace(trade, symbol=st.symbol, legs=legs, mae=min(min(seen), 0.0),
                                    mfe=max(max(seen), 0.0),
                                    return_pct=100.0 * trade.pnl / margin if margin > 0 else trade.return_pct,
                                    exit_reason=((rule.reason or rule.name) + ("; closed at the natural price"
                                                                               if natural else ""))
                                    if rule is not None else how)
        self.ledger.trades[-1] = trade
        self._booked.add(tag)
        self._trade_of[tag] = len(self.ledger.trades) - 1
        entry_ref = self._entry_ref.pop(combo.key, None)
        if entry_ref is not None:
            self._trade_of[entry_ref] = len(self.ledger.trades) - 1
        combo.marks[k] = 0.0
        del self.combos[combo.key]
        self.closed_combos.append(combo)
        st.key = st.owner = None
        if trade.pnl < 0:
            self._losses += 1
        else:
            self._losses = 0

    # ---- intents -----------------------------------------------------------------------------
    def _track(self, intent: OrderIntent, st: _Symbol, role: str, rule: N.Rule, k: int,
               exit_kind: str = "") -> _Tracked:
        record = OrderRecord(intent, self._now)
        self.orders.append(record)
        # an entry's order is its rule's (the agent's, or the strategy's); the rest, the position's
        owner = (rule.agent or self.settings.strategy) if role == "entry" else \
            (st.owner or rule.agent or self.settings.strategy)
        record.owner = owner
        tr = self.orders_by_ref[intent.tag] = _Tracked(intent, record, st.symbol, owner, role, rule, k, exit_kind)
        tr.lane = st
        return tr

    def _intent(self, st: _Symbol, rule: N.Rule, template: OrderTemplate, k: int) -> OrderIntent | None:
        if template.action == "sell" and self.settings.account == "cash":
            self._decide(st.symbol, rule.name, "entry", "blocked", "short selling needs a margin account")
            return None
        nodes = self._order_nodes.get(rule.order, _NO_NODES)
        limit = self._value(st, nodes[0], k) if nodes[0] is not None else None
        stop = self._value(st, nodes[1], k) if nodes[1] is not None else None
        for name, price in (("limit", limit), ("stop", stop)) if limit is not None or stop is not None else ():
            if price is not None and not (isinstance(price, float) and math.isfinite(price) and price > 0):
                self._decide(st.symbol, rule.name, "entry", "blocked", f"the {name} price is not a number yet ({price})")
                return None
        tick = st.bars.tick_size        # the prices on the tick grid, as the order goes out
        limit = on_tick(limit, tick, template.action) if limit is not None else None
        stop = on_tick(stop, tick, template.action) if stop is not None else None
        quantity, sizing = self._size(st, rule, template, k)
        if quantity is not None and quantity <= 0:
            self._decide(st.symbol, rule.name, "entry", "blocked", f"quantity is {quantity:g}")
            return None
        return OrderIntent(st.symbol, template.action, template.type, quantity, sizing, limit, stop, template.tif,
                           "open", rule.name, self._tag())

    def _size(self, st: _Symbol, rule: N.Rule, template: OrderTemplate, k: int) -> tuple[float | None, Sizing | None]:
        q = template.quantity
        if q.mode == "fixed":
            return q.value, None
        if q.mode == "expression":
            value = self._value(st, self._order_nodes[rule.order][2], k)
            return (float(math.floor(value)) if value == value else 0.0), None
        if q.mode == "percent_of_equity":
            sizing = self._sizings.get(template.name)
            if sizing is None:
                sizing = self._sizings[template.name] = Sizing("percent_of_equity", q.value, whole=q.whole)
            return None, sizing
        distance = self._value(st, self._order_nodes[rule.order][3], k)
        if distance is None or not (distance == distance) or distance <= 0:
            return 0.0, None
        qty = q.value * self.account_view()[0] / (distance * st.bars.multiplier)
        qty = float(math.floor(qty + 1e-9)) if q.whole else qty
        return qty, Sizing("risk_percent", q.value, distance, q.whole)

    def _value(self, st: _Symbol, node: int | None, k: int):
        """A plan output's value at bar k (None: the order has no such output)."""
        if node is None:
            return None
        return scalar_at(self.plan, node, self._scalars)(k, st.values, _NO_CONTEXT)

    # ---- records -----------------------------------------------------------------------------
    def account_view(self) -> tuple[float, float, float]:
        """Equity, available funds and cash, for sizing, the funds check and the risk limits: the
        venue's account when it reports one (the broker is the source of truth, so an IB run sizes
        from IB's account), else the ledger at its marks. A simulated venue's account is the
        ledger's view at every instant (tests/test_kernel_parity.py holds them equal)."""
        acct = self.venue.account()
        if acct is not None:
            return acct.equity, acct.available_funds, acct.cash
        return self.equity(), self.available_funds(), self.ledger.cash

    def entries_refused_now(self) -> str | None:
        """Why a new entry would be refused now (entries stopped, a risk limit reached), for a
        status line: reads the account as a decision would, changes nothing."""
        if self.halted:
            return f"entries stopped: {self.halted}"
        return check_entry(self.settings.limits, self.account_state(update=False), live=self.live)

    def account_state(self, update: bool = True) -> AccountState:
        """The account as the entry checks read it; a decision's reading (`update`) also moves the
        peak and starts a new day's baseline, a look (a status line) changes nothing."""
        limits = self.settings.limits
        working = sum(1 for s in self._lanes if (s.working_entry is not None or s.chasing is not None)
                      and s.key is None)
        if limits.max_daily_loss is None and limits.max_drawdown is None and limits.max_cvar is None:
            return AccountState(math.nan, math.nan, math.nan, len(self.ledger.positions) + working,
                                self._losses, self._paused_until, self._now / 1e9)
        equity = self.account_view()[0]
        peak = max(self._peak, equity)
        day = self._now // 86_400_000_000_000
        start = self._day_start if day == self._day else equity
        if update:
            self._peak, self._day, self._day_start = peak, day, start
        daily = ()
        if limits.max_cvar is not None:
            eod = self._eod[-(limits.max_cvar[1] + 1):]
            daily = tuple(b - a for a, b in zip(eod, eod[1:]))
        return AccountState(equity, peak, start, len(self.ledger.positions) + working,
                            self._losses, self._paused_until, self._now / 1e9, daily_pnl=daily)

    def states_at(self, st: _Symbol, k: int) -> tuple:
        """The strategy's classifications of the symbol at bar k's close: ((name, label), ...)."""
        if not self._classes:
            return ()
        values = st.values
        return tuple((name, str(_at(values[node], k))) for name, node in self._classes)

    def _decide(self, symbol: str, rule: str, kind: str, outcome: str, reason: str = "", detail: str = "",
                confidence: float | None = None) -> None:
        d = Decision(self._now, symbol, rule, kind, outcome, reason, detail, self._agent_of.get(rule, ""),
                     None if confidence is None or confidence != confidence else confidence)
        self.decisions.append(d)
        if self.recorder is not None:
            self.recorder.decision(d)

    def _tag(self) -> str:
        """The order's stable ref: `qtrade:<run>:<seq>` in a backtest; in a paper or live run
        `qtrade:<strategy>:<seq>`, the sequence continued from the journal, so a restart knows its
        own orders and never reuses a ref."""
        self._seq0 += 1
        return f"{self._tag_prefix}{self._seq0}"

    def _status(self, tr: _Tracked, status: str, time: int, reason: str) -> None:
        rec = tr.record
        rec.status, rec.status_time = status, time
        if reason:
            rec.reason = reason
        if self.recorder is not None:
            self.recorder.status(rec)

    def _error(self, message: str) -> None:
        """An error that stops new entries (journaled)."""
        self._journal_error(message)
        self.halted = self.halted or message

    def _journal_error(self, message: str) -> None:
        """An error journaled (and said by a live loop as it happens); the strategy goes on."""
        self.errors.append((self._now, message))
        if self.recorder is not None:
            self.recorder.error(self._now, message)

    def measure_trades(self) -> None:
        """The MAE and MFE of the round trips closed since the last call, over the bars each was
        open (records.excursions_of: per symbol's bars, all at once rather than two array
        reductions per trade; a run reads them when it ends)."""
        due, self._unmeasured = self._unmeasured, []
        groups: dict[int, list] = {}
        for row in due:
            groups.setdefault(id(row[1]), []).append(row)
        trades = self.ledger.trades
        for rows in groups.values():
            index, bars, lo, hi, entry, exit_, long, units = zip(*rows)
            mae, mfe = excursions_of(bars[0], np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64),
                                     np.array(entry), np.array(exit_), np.array(units), np.array(long))
            for i, a, f in zip(index, mae.tolist(), mfe.tolist()):
                t = trades[i]
                t.mae, t.mfe = a, f

    def _end_of_data(self) -> None:
        """Orders still pending or working when the data ends expire, saying so; the round trips'
        excursions are measured."""
        self.measure_trades()
        for st in self._lanes:
            last = int(st.bars.end[-1]) if len(st.bars) else 0
            for ref in st.pending:
                tr = self.orders_by_ref[ref]
                if tr.role == "entry" or tr.role == "exit" or tr.role == "roll":
                    info = self._order_info(tr, tr.record.time)
                    if tr.role == "entry":
                        self._preview_size(tr, info)
                    self.decided_at_end.append(info)
                self._status(tr, "expired", last, "the data ended" if tr.role == "entry"
                             else "the data ended before it filled")
            st.pending = []
        for tr in self.orders_by_ref.values():
            if tr.sent and not tr.done and tr.record.status in ("created", "submitted"):
                tr.record.status, tr.record.status_time = "working", int(self.syms[tr.symbol].bars.end[-1])
                tr.record.reason = "still working when the data ended"


# seconds a combo's close at the natural price rests unfilled when its order has no chase (whose
# step it rests otherwise) before it is cancelled and the exit decided again at the next close
_NATURAL_REST = 30.0


def bar_end(symbol: str, start: int, end: int) -> int:
    """When a bar is complete, as a backtest and a simulated venue take it: at its end."""
    return end


def _eod_quote_ns(day) -> int:
    """When an end-of-day chain of `day` (a local timestamp of it) is quoted: its 16:00 close."""
    import pandas as pd

    from ..market.chains import EOD_TIME, QUOTE_TIMEZONE

    return int(pd.Timestamp.combine(day.date(), EOD_TIME).tz_localize(QUOTE_TIMEZONE).value)


def _bad_limit(chase, action: str) -> str:
    """Why a combo's `price: {limit: expr}` cannot be sent ('' when it can): a limit is a price in
    the order's direction (what a buy pays, what a sell takes in), so a NaN, zero or negative one
    is a mistake in the expression (a credit where the combo is bought), never an order."""
    start = chase.start
    if isinstance(start, str):
        return ""
    if not math.isfinite(start) or start <= 0:
        return (f"the order's limit is {round(start, 6) + 0.0:g}: a limit is what the {action} "
                f"{'pays' if action == 'buy' else 'takes in'} per combo, a positive price (is the expression "
                "a credit where the combo is bought, or a debit where it is sold?)")
    return ""


def market_conjuncts(plan: N.Plan, node_id: int) -> list[int]:
    """The conjuncts of a condition that read only the market (runner.market_prefilter's)."""
    node = plan.nodes[node_id]
    if node.market:
        return [node_id]
    if node.op == N.LOGIC and node.attrs[0] == "and":
        return market_conjuncts(plan, node.args[0]) + market_conjuncts(plan, node.args[1])
    return []


_DAY = 86_400 * 10**9


def _lookback_bars(b: SymbolBars, lookback: str) -> tuple[int, float]:
    """volatility_scaling's lookback in returns, and the symbol's bars a year (252 trading days
    of its own sessions: one bar a day on daily bars, else the bars its sessions hold)."""
    seconds = (int(b.end[0]) - int(b.start[0])) / 1e9 if len(b) else 86_400.0
    if seconds >= 86_400:
        per_day = 86_400.0 / seconds
    else:
        sessions = len(np.unique(b.session)) if len(b) else 0
        per_day = len(b) / sessions if sessions > 1 else 6.5 * 3600 / seconds
    text = lookback.strip()
    if text.endswith("bars"):
        n = int(text[:-4])
    else:
        for unit, days in (("mo", 21.0), ("d", 1.0), ("w", 5.0), ("y", 252.0)):
            if text.endswith(unit):
                n = int(math.ceil(float(text[:-len(unit)]) * days * per_day))
                break
        else:
            raise ValueError(f"volatility_scaling.lookback {lookback!r}")
    return max(n, 2), 252.0 * per_day


_NO_NODES = (None, None, None, None)
_DATED_AFTER = 1800 * 10**9       # (when(): a moment this soon after a daily bar's close or open is dated by it)
_UNFILLED = {E.EXPIRED: "expired", E.REJECTED: "rejected", E.CANCELLED: "cancelled"}   # an order done with no fill
_NO_CONTEXT: dict = {}


def _is_series(v) -> bool:
    """A plan value with one entry per bar (else one value for every bar)."""
    return isinstance(v, np.ndarray) and v.ndim > 0


def _truth(v, k: int) -> bool:
    return bool(v[k]) if isinstance(v, np.ndarray) and v.ndim else bool(v)


def _at(v, k: int):
    """A plan value at bar k (a series' k-th entry, or the one value of every bar)."""
    return v[k] if isinstance(v, np.ndarray) and v.ndim else v

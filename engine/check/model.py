"""The typed model: what a validated strategy says, as frozen dataclasses, read once.

Everything after the checker reads these instead of the YAML's dicts: an order template's
action, type, time in force, quantity rule and price policy; the simulator's settings (cash,
account, commission, slippage, fill model, the options spread model). Values are parsed here
(percentages to fractions, durations to seconds) and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import fnmatch

from ..brokers.costs import Commission, Slippage, fraction
from ..config.documents import Document, Workspace
from ..risk.limits import RiskLimits, merge_risk


def _seconds(text) -> float:
    text = str(text)
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0), ("w", 604800.0)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    return float(text)


@dataclass(frozen=True)
class Quantity:
    """How many units an order is for."""

    mode: str                  # fixed | expression | percent_of_equity | risk_percent
    value: float = 1.0         # units (fixed), or a fraction of equity (percent_of_equity, risk_percent)
    whole: bool = True         # rounded down to whole units

    @classmethod
    def from_spec(cls, spec) -> "Quantity":
        if spec is None:
            return cls("fixed", 1.0)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls("fixed", float(spec))
        if isinstance(spec, str):
            return cls("expression")
        whole = spec.get("round", "whole") == "whole"
        if spec.get("fixed") is not None:
            return cls("fixed", float(spec["fixed"]), whole)
        if spec.get("percent_of_equity") is not None:
            return cls("percent_of_equity", fraction(spec["percent_of_equity"]), whole)
        return cls("risk_percent", fraction(spec["risk_percent"]), whole)


@dataclass(frozen=True)
class ChaseSpec:
    start: str | float = "mid"  # mid | natural | bid | ask, or a price
    step: float = 0.01
    steps: int = 4
    every: float = 15.0         # seconds
    floor: bool = False         # an expression gives the floor (orders.<name>.floor)


@dataclass(frozen=True)
class PricePolicy:
    """A combo's price: at mid, at market (the natural price), a limit expression, or a chase."""

    kind: str                   # mid | market | limit | chase
    chase: ChaseSpec | None = None

    @classmethod
    def from_spec(cls, spec) -> "PricePolicy":
        if isinstance(spec, dict) and isinstance(spec.get("chase"), dict):
            c = spec["chase"]
            return cls("chase", ChaseSpec(c.get("start", "mid"), float(c.get("step", 0.01)), int(c.get("steps", 4)),
                                          _seconds(c.get("every", "15s")), c.get("floor") is not None))
        if isinstance(spec, dict) and "limit" in spec:
            return cls("limit")
        return cls("market" if spec == "market" else "mid")


@dataclass(frozen=True)
class LegTemplate:
    """One leg of a combo template: its right, action and ratio, how its strike is picked (by
    delta, by premium, or an expression such as `short_put.strike - wing_width`: the plan's
    outputs orders.<order>.legs.<leg>.*), and its own expiry rule if it has one (a calendar)."""

    name: str
    right: str                  # put | call
    action: str                 # buy | sell
    ratio: int = 1
    strike: str = "expression"  # delta | premium | expression
    expiry: object = None       # its own expiry rule (the YAML value), else the order's

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> "LegTemplate":
        strike = spec.get("strike")
        kind = "delta" if isinstance(strike, dict) and "delta" in strike else \
            "premium" if isinstance(strike, dict) and "premium" in strike else "expression"
        return cls(name, spec["right"], spec["action"], int(spec.get("ratio", 1)), kind, spec.get("expiry"))


@dataclass(frozen=True)
class OrderTemplate:
    name: str
    action: str = "buy"         # buy | sell
    type: str = "market"        # market | limit | stop | stop_limit | moc | loc
    tif: str = "day"
    quantity: Quantity = Quantity("fixed", 1.0)
    combo: bool = False         # an options combo (legs), priced by the options desk
    price: PricePolicy | None = None
    legs: tuple[LegTemplate, ...] = ()
    expiry: object = "0dte"     # the combo's expiry rule (the YAML value; market.expiry parses it)
    close_price: PricePolicy | None = None   # the closing order's price (None: `price`, its chase's floor left out)

    def leg_order(self) -> list[LegTemplate]:
        """Legs picked by delta or premium first, then legs defined from them (offsets)."""
        return [leg for leg in self.legs if leg.strike != "expression"] + \
            [leg for leg in self.legs if leg.strike == "expression"]

    @classmethod
    def from_spec(cls, name: str, spec: dict | None) -> "OrderTemplate":
        spec = spec or {}
        combo = "legs" in spec
        return cls(name, spec.get("action", "buy"), spec.get("type", "market"), spec.get("tif", "day"),
                   Quantity.from_spec(spec.get("quantity", 1)), combo,
                   PricePolicy.from_spec(spec.get("price", "mid")) if combo else None,
                   tuple(LegTemplate.from_spec(n, leg) for n, leg in (spec.get("legs") or {}).items()),
                   spec.get("expiry", "0dte"),
                   PricePolicy.from_spec(spec["close_price"]) if combo and spec.get("close_price") is not None
                   else None)


def order_templates(orders: dict | None) -> Mapping[str, OrderTemplate]:
    """Every order template of a strategy (its `orders:` section), by name."""
    return MappingProxyType({name: OrderTemplate.from_spec(name, spec) for name, spec in (orders or {}).items()})


@dataclass(frozen=True)
class OptionSim:
    """The simulator's options model (backtest.options)."""

    iv: str | float = "vix"     # "vix", or an implied volatility
    iv_scale: float = 1.0
    skew: float = 0.4
    spread_pct: float = 0.05
    spread_min: float = 0.02
    rate: float = 0.02
    dividend_yield: float = 0.0
    fill_fraction: float = 0.5  # how far from natural towards mid a combo limit is met
    american_as_european: bool = False   # the trader's consent to simulate American options as European

    @classmethod
    def from_spec(cls, spec: dict | None) -> "OptionSim":
        spec = spec or {}
        spread = spec.get("spread") or {}
        return cls(spec.get("iv", "vix"), float(spec.get("iv_scale", 1.0)), float(spec.get("skew", 0.4)),
                   fraction(spread.get("percent", "5%")), float(spread.get("minimum", 0.02)),
                   float(spec.get("rate", 0.02)), float(spec.get("dividend_yield", 0.0)),
                   float(spec.get("fill_fraction", 0.5)), bool(spec.get("american_as_european", False)))


@dataclass(frozen=True)
class SimSettings:
    """A strategy's `backtest:` section, with --cash applied."""

    cash: float = 100_000.0
    account: str = "margin"     # cash | margin
    commission: Commission = Commission()
    slippage: Slippage = Slippage()
    fill: str = "next_open"     # next_open | close
    options: OptionSim = OptionSim()

    @classmethod
    def from_spec(cls, spec: dict | None) -> "SimSettings":
        spec = spec or {}
        return cls(float(spec.get("cash", 100_000)), spec.get("account", "margin"),
                   Commission.from_spec(spec.get("commission")), Slippage.from_spec(spec.get("slippage")),
                   spec.get("fill", "next_open"), OptionSim.from_spec(spec.get("options")))


def _minutes(text: str) -> int:
    """'15:50' -> 950 (minutes after midnight)."""
    return int(text[:2]) * 60 + int(text[3:])


@dataclass(frozen=True)
class Schedule:
    """When rules are evaluated: the timezone, the entry window and the flat-by time (minutes
    after midnight, local); the cadences (seconds; None: every closed bar) at which held names
    (`every`) and names not held (`scan_every`, else `every`) are decided, and the cap on new
    positions decided at one such time."""

    timezone: str = "America/New_York"
    entry_window: tuple[int, int] | None = None
    flat_by: int | None = None
    every: float | None = None
    scan_every: float | None = None
    max_new_entries_per_scan: int | None = None

    @classmethod
    def from_spec(cls, spec: dict | None) -> "Schedule":
        spec = spec or {}
        window = spec.get("entry_window")
        every = _seconds(spec["every"]) if spec.get("every") is not None else None
        scan = _seconds(spec["scan_every"]) if spec.get("scan_every") is not None else every
        cap = spec.get("max_new_entries_per_scan")
        return cls(spec.get("timezone", "America/New_York"),
                   (_minutes(window[0]), _minutes(window[1])) if window else None,
                   _minutes(spec["flat_by"]) if spec.get("flat_by") else None,
                   every, scan, int(cap) if cap is not None else None)

    def held_grid(self, bar: float) -> float | None:
        """The held names' cadence when it is coarser than the bar (None: every closed bar)."""
        return self.every if self.every is not None and self.every > bar + 1e-9 else None

    def scan_grid(self, bar: float) -> float | None:
        """The cadence of names not held when it is coarser than the bar (None: every closed bar)."""
        return self.scan_every if self.scan_every is not None and self.scan_every > bar + 1e-9 else None


@dataclass(frozen=True)
class Arbitration:
    """The strategy's `arbitration:` (runtime/arbitration.py says what each policy does)."""

    policy: str = "highest_confidence"    # priority | highest_confidence | weighted_vote
    threshold: float = 0.5                # weighted_vote: the support a side needs, in (0, 1]
    max_active_agents: int | None = None  # agents holding positions at once (None: no limit)
    positions_per_symbol: int = 1         # positions one symbol holds at once, across agents (one per agent)

    @classmethod
    def from_spec(cls, spec: dict | None) -> "Arbitration":
        spec = spec or {}
        policy = spec.get("policy", "highest_confidence")
        return cls("highest_confidence" if policy == "highest_score" else policy,
                   float(spec.get("threshold", 0.5)), spec.get("max_active_agents"),
                   int(spec.get("positions_per_symbol", 1)))


@dataclass(frozen=True)
class AgentSettings:
    """What a run reads of one agent besides its expressions: its vote's weight, and its own
    flat-by time (minutes after midnight; None: held overnight), when it has one (`own_flat_by`;
    else the schedule's applies)."""

    name: str
    weight: float = 1.0
    flat_by: int | None = None
    own_flat_by: bool = False             # a flat_by of its own (a time, or null), not `schedule`

    @classmethod
    def from_spec(cls, name: str, spec: dict | None) -> "AgentSettings":
        spec = spec or {}
        flat = spec.get("flat_by", "schedule")
        own = flat != "schedule"
        return cls(name, float(spec.get("weight", 1.0)), _minutes(flat) if own and flat else None, own)


def agent_settings(doc: Document) -> tuple[AgentSettings, ...]:
    """The strategy's agents, in the order they are listed (the priority policy's order)."""
    agents = doc.get(("agents",)) or {}
    return tuple(AgentSettings.from_spec(name, spec if isinstance(spec, dict) else None)
                 for name, spec in agents.items())


@dataclass(frozen=True)
class DataSpec:
    """The strategy's `data:` section."""

    bar: str = "1d"
    source: str | None = None        # a file or folder, relative to the strategy's folder
    chains: str | None = None        # option chain snapshots, likewise
    adjusted: bool = False
    on_bad_bar: str = "refuse"       # refuse | skip
    history: str | None = None       # the warm-up a broker's history gives a live run ("300 bars", "2d")
    session: str = "regular"         # regular | extended: the hours a broker's bars cover

    @classmethod
    def from_spec(cls, spec: dict | None) -> "DataSpec":
        spec = spec or {}
        return cls(spec.get("bar", "1d"), spec.get("source"), spec.get("chains"), bool(spec.get("adjusted", False)),
                   spec.get("on_bad_bar", "refuse"), spec.get("history"), spec.get("session", "regular"))


@dataclass(frozen=True)
class Instrument:
    """A symbol's contract facts (universes/instruments.yaml)."""

    symbol: str
    sec_type: str = "STK"
    multiplier: float = 1.0
    tick_size: float = 0.01
    margin: float = 0.0              # initial margin per contract (futures)
    calendar: str | None = "NYSE"
    months: str | None = None        # futures: the listed month cycle (HMUZ)
    roll_days: int = 0               # futures: the front month's roll, in trading days before the last trade date
    maintenance: float = 0.0         # futures: maintenance margin per contract (the initial margin when not given)


def universe_symbols(doc: Document) -> list[str]:
    """The traded symbols: the inline list, or the universe file's symbols (groups filtered),
    without names matched by its exclusion patterns."""
    universe = doc.get(("universe",))
    if isinstance(universe, list):
        return [str(s) for s in universe]
    ref = doc.refs.get(("universe",)) or doc.refs.get(("universe", "file"))
    if ref is None:
        underlying = doc.get(("underlying",))
        return [underlying] if underlying else []
    groups = ref.get(("groups",)) or {}
    wanted = universe.get("groups") if isinstance(universe, dict) else None
    names = list(ref.get(("symbols",)) or [])
    for group, members in groups.items():
        if wanted is None or group in wanted:
            names.extend(members)
    default_type = (ref.get(("defaults",)) or {}).get("sec_type", "STK")
    out = []
    for name in names:
        if name in out:
            continue
        if any(rule.get("sec_type", default_type) == default_type and fnmatch.fnmatchcase(name, rule.get("pattern", ""))
               for rule in ref.get(("exclude",)) or []):
            continue
        out.append(name)
    return out


def excluded_symbols(doc: Document) -> list[tuple[str, tuple, str]]:
    """The names a universe file's `exclude:` leaves out: (symbol, the rule's path in the
    universe file, its reason)."""
    universe = doc.get(("universe",))
    ref = None if isinstance(universe, list) else doc.refs.get(("universe",)) or doc.refs.get(("universe", "file"))
    if ref is None:
        return []
    wanted = universe.get("groups") if isinstance(universe, dict) else None
    names = list(ref.get(("symbols",)) or [])
    for group, members in (ref.get(("groups",)) or {}).items():
        if wanted is None or group in wanted:
            names.extend(members)
    default_type = (ref.get(("defaults",)) or {}).get("sec_type", "STK")
    out = []
    for name in dict.fromkeys(names):
        for i, rule in enumerate(ref.get(("exclude",)) or []):
            if rule.get("sec_type", default_type) == default_type and fnmatch.fnmatchcase(name, rule.get("pattern", "")):
                out.append((name, ("exclude", i), rule.get("reason") or ""))
                break
    return out


def instrument(ws: Workspace, doc: Document, symbol: str) -> Instrument:
    """A symbol's contract facts from the instruments map (a root's entry, or the stock defaults)."""
    inst = ws.instruments_for(doc)
    roots = (inst.get(("roots",)) or {}) if inst else {}
    entry = roots.get(symbol)
    if entry is None:
        entry = ((inst.get(("defaults",)) or {}).get("STK") or {}) if inst else {}
        sec_type = "STK"
    else:
        sec_type = entry.get("sec_type", "STK")
    margin = float(entry.get("margin") or 0.0)
    maintenance = entry.get("maintenance_margin")
    return Instrument(symbol, sec_type, float(entry.get("multiplier") or 1.0) if sec_type == "FUT" else 1.0,
                      float(entry.get("tick_size") or 0.01), margin, entry.get("calendar", "NYSE"),
                      entry.get("months"), int(entry.get("roll_days") or 0),
                      float(maintenance) if maintenance is not None else margin)




@dataclass(frozen=True)
class OptionsListing:
    """How an underlying's options are listed (the `options:` of its instruments-map entry, or
    the stock defaults): contract multiplier, exercise style, settlement, the expiry cycle and
    the strike grid. Style and settlement default as the schema says (american, physical: what
    an unlisted stock's options are). `source` is the instruments document and the path of the
    `options:` the facts came from (None when no map is loaded), for messages."""

    multiplier: float = 100.0
    style: str = "american"          # european | american
    settlement: str = "physical"     # cash | physical
    settlement_time: str = "pm"      # am | pm
    cycle: str = "daily"             # the expiries listed: daily | weekly | monthly ...
    strike_step: float = 1.0
    source: tuple | None = None      # (instruments Document, path of its options: mapping)


def options_listing(ws: Workspace, doc: Document, symbol: str) -> OptionsListing:
    inst = ws.instruments_for(doc)
    roots = (inst.get(("roots",)) or {}) if inst else {}
    stock = ((inst.get(("defaults",)) or {}).get("STK") or {}).get("options") if inst else None
    root = roots.get(symbol) or {}
    # a root of the map needs its own options: (the checker says so); a symbol it does not list
    # is a stock, with the stock defaults
    spec, where = (root["options"], ("roots", symbol, "options")) if root.get("options") else \
        (stock or {}, ("defaults", "STK", "options"))
    return OptionsListing(float(spec.get("multiplier", 100)), spec.get("style", "american"),
                          spec.get("settlement", "physical"), spec.get("settlement_time", "pm"),
                          spec.get("expiries", "daily"), float(spec.get("strike_step", 1.0)),
                          (inst, where) if inst is not None else None)


def risk_limits(doc: Document) -> RiskLimits:
    """The strategy's limits: its risk file, or inline limits over the file they extend."""
    chain: list[dict] = []

    def add(ref: Document | None) -> None:
        if ref is None:
            return
        add(ref.refs.get(("extends",)))
        chain.append(ref.data)

    spec = doc.get(("risk",))
    if isinstance(spec, str):
        add(doc.refs.get(("risk",)))
    elif isinstance(spec, dict):
        add(doc.refs.get(("risk", "extends")))
        chain.append(spec)
    return RiskLimits.from_spec(merge_risk(chain))


# ---- the strategy's expressions ------------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    """An expression of the strategy as the checker parsed (and type-checked) it: where it is in
    the document, its text and its syntax tree. The compiler reads these; nothing parses again."""

    where: tuple
    text: str
    node: object                 # dsl.ast.Node


@dataclass(frozen=True)
class RuleSpec:
    """An entry or exit rule: its condition, protective levels (exits), order and reason."""

    kind: str                    # entry | exit
    name: str
    where: tuple
    when: Expr | None = None
    stop: Expr | None = None     # an exit's stop level
    target: Expr | None = None   # an exit's target level
    order: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class AgentSpec:
    """An agent: its own entry and exit rules, when it may trade (`active`) and how it ranks
    against the others when several fire on one bar (`score`)."""

    name: str
    active: Expr | None = None
    score: Expr | None = None
    entry: tuple[RuleSpec, ...] = ()
    exit: tuple[RuleSpec, ...] = ()


@dataclass(frozen=True)
class ClassifyCase:
    """One case of a classification: the label a bar gets when its condition is the first to hold."""

    label: str
    when: Expr


@dataclass(frozen=True)
class Classification:
    """A named classification: the first case whose condition holds gives its label."""

    name: str
    cases: tuple[ClassifyCase, ...]


@dataclass(frozen=True)
class StrategyExprs:
    """Every expression a strategy holds, from the checker: named indicators, classifications,
    the rules and the agents' rules, and the order templates' computed values (their plan output
    labels: orders.<name>.limit, .stop, .quantity, .stop_distance, .floor, .close.limit, .close.floor,
    .legs.<leg>.<key>)."""

    indicators: Mapping[str, Expr]
    classify: tuple[Classification, ...]
    entry: tuple[RuleSpec, ...]
    exit: tuple[RuleSpec, ...]
    agents: tuple[AgentSpec, ...]
    orders: tuple[tuple[str, Expr], ...]
    scanner: object = None       # an inline scanner's check.scan_model.ScannerExprs


def strategy_exprs(doc: Document, parsed: Mapping[tuple, tuple[object, str]],
                   scanner: object = None) -> StrategyExprs:
    """The model of a checked strategy's expressions from the trees the checker parsed
    (`parsed`: where -> (tree, text)). An expression that did not parse is left out: the checker
    reported it, and a document with errors is never compiled."""

    def expr(where: tuple) -> Expr | None:
        got = parsed.get(where)
        return None if got is None else Expr(where, got[1], got[0])

    def rules(section: tuple, kind: str) -> tuple[RuleSpec, ...]:
        out = []
        for i, rule in enumerate(doc.get(section) or []):
            where = section + (i,)
            out.append(RuleSpec(kind, str(rule.get("name", f"{kind} {i + 1}")), where, expr(where + ("when",)),
                                expr(where + ("stop",)), expr(where + ("target",)), rule.get("order"),
                                str(rule.get("reason", ""))))
        return tuple(out)

    indicators = {name: e for name in doc.get(("indicators",)) or {} if (e := expr(("indicators", name)))}
    classify = tuple(Classification(name, tuple(ClassifyCase(case["name"], e) for i, case in enumerate(cases or [])
                                                if (e := expr(("classify", name, i, "when")))))
                     for name, cases in (doc.get(("classify",)) or {}).items())
    agents = tuple(AgentSpec(name, expr(("agents", name, "active")), expr(("agents", name, "score")),
                             rules(("agents", name, "entry"), "entry"), rules(("agents", name, "exit"), "exit"))
                   for name in doc.get(("agents",)) or {})
    orders: list[tuple[str, Expr]] = []
    for name, order in (doc.get(("orders",)) or {}).items():
        base = ("orders", name)
        wanted = []
        for leg, spec in (order.get("legs") or {}).items():
            strike = spec.get("strike")
            where = base + ("legs", leg, "strike")
            if isinstance(strike, dict):
                wanted += [(f"orders.{name}.legs.{leg}.{key}", where + (key,))
                           for key in ("delta", "premium", "min", "max") if key in strike]
            elif strike is not None:
                wanted.append((f"orders.{name}.legs.{leg}.strike", where))
        for key, label in (("price", f"orders.{name}"), ("close_price", f"orders.{name}.close")):
            price = order.get(key)
            if isinstance(price, dict):
                if "limit" in price:
                    wanted.append((f"{label}.limit", base + (key, "limit")))
                if isinstance(price.get("chase"), dict) and price["chase"].get("floor") is not None:
                    wanted.append((f"{label}.floor", base + (key, "chase", "floor")))
        wanted += [(f"orders.{name}.{key}", base + (key,)) for key in ("limit", "stop")
                   if key in order and "legs" not in order]
        quantity = order.get("quantity")
        if isinstance(quantity, str):
            wanted.append((f"orders.{name}.quantity", base + ("quantity",)))
        elif isinstance(quantity, dict) and "stop_distance" in quantity:
            wanted.append((f"orders.{name}.stop_distance", base + ("quantity", "stop_distance")))
        orders += [(label, e) for label, where in wanted if (e := expr(where))]
    return StrategyExprs(MappingProxyType(indicators), classify, rules(("entry",), "entry"), rules(("exit",), "exit"),
                         agents, tuple(orders), scanner)

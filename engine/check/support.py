"""Keys the schema accepts but no mode reads yet (backtest, `run --broker sim`, dry-run, paper
and live all ignore them): `validate` refuses each at its line, saying it is not supported yet,
instead of accepting a setting that changes nothing. The issue that implements one removes it
from UNSUPPORTED (and the test that walks this table then wants its behaviour test).

Each entry: (document kind, path with '*' for any map key or list item, when it counts, what
the key asks for, what runs do instead).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ..config.documents import Document
from ..diagnostics import Diagnostic

NOT_SUPPORTED = "is not supported in backtest, run, dry-run, paper or live yet"

PRESENT: Callable[[Any], bool] = lambda value: True           # noqa: E731 - any value asks for it
NOT_NULL: Callable[[Any], bool] = lambda value: value is not None  # noqa: E731 - null means "off"

UNSUPPORTED: list[tuple[str, tuple, Callable[[Any], bool], str, str]] = [
    ("strategy", ("data", "what_to_show"), lambda v: v != "trades", "this IB bar type",
     "backtests and replays read the file's bars as they are; no broker feed is in this version"),
    ("strategy", ("orders", "*", "outside_rth"), lambda v: v is True, "filling outside regular trading hours",
     "the simulator fills on the bars it is given, whatever this flag says; no broker is in this version"),
    ("universe", ("contract", "roll_days_before_expiry"), PRESENT, "a universe's own futures roll offset",
     "the roll is each root's roll_days in the instrument map (universes/instruments.yaml: e.g. "
     "NQ: {..., roll_days: 5}), which the backtest's stitched front month, IB's front-month resolution and the "
     "roll of a held position all read; set it on the root there"),
    ("universe", ("defaults", "exchange"), lambda v: v not in (None, "SMART"),
     "a universe's default exchange for symbols the instrument map does not list",
     "such symbols are resolved with the instrument map's STK defaults (SMART in the bundled map); "
     "give them an entry in the instrument map"),
    ("universe", ("defaults", "currency"), lambda v: v not in (None, "USD"),
     "a universe's default currency for symbols the instrument map does not list",
     "such symbols are resolved with the instrument map's STK defaults (USD in the bundled map); "
     "give them an entry in the instrument map"),
    ("strategy", ("entry", "*", "quantity"), NOT_NULL, "a rule's own quantity",
     "the order template's quantity is sent; set it there, or give this rule a template of its own"),
    ("strategy", ("agents", "*", "entry", "*", "quantity"), NOT_NULL, "a rule's own quantity",
     "the order template's quantity is sent; set it there, or give this rule a template of its own"),
    # a scanner's data: the bars it scans; what only a strategy's data means is not read there
    *((kind, prefix + ("data", key), counts, what, instead)
      for kind, prefix in (("scanner", ()), ("strategy", ("scanner",)))
      for key, counts, what, instead in (
          ("chains", NOT_NULL, "option chains for a scanner", "a scan reads bars; the strategy's data.chains prices "
           "its combos"),
          ("subscriptions", NOT_NULL, "a line budget for a scanner", "the strategy's data.subscriptions is its line "
           "budget"),
          ("what_to_show", lambda v: v != "trades", "this IB bar type for a scanner",
           "a scan reads its files' bars as they are"))),
    ("strategy", ("risk", "order_rate_limit"), NOT_NULL, "an order rate limit",
     "orders are sent as the rules decide them; only IB's own pacing applies"),
    ("risk", ("order_rate_limit",), NOT_NULL, "an order rate limit",
     "orders are sent as the rules decide them; only IB's own pacing applies"),
]


# Refused by the functions below rather than by a table entry: (kind, path).
CHECKED_APART = (("strategy", ("schedule", "every")), ("strategy", ("schedule", "scan_every")),
                 ("strategy", ("underlying",)), ("strategy", ("orders", "*", "underlying")))


def _walk(value: Any, path: tuple, where: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if not path:
        yield where, value
        return
    head, rest = path[0], path[1:]
    if head == "*":
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            yield from _walk(child, rest, where + (key,))
    elif isinstance(value, dict) and head in value:
        yield from _walk(value[head], rest, where + (head,))


def unsupported(doc: Document) -> list[Diagnostic]:
    """An error at each key of `doc` that asks for something no mode does yet."""
    out = []
    for kind, path, counts, what, instead in UNSUPPORTED:
        if doc.kind != kind:
            continue
        for where, value in _walk(doc.data, path):
            if counts(value):
                out.append(doc.diag(where, f"{'.'.join(str(p) for p in where)}: {what} {NOT_SUPPORTED}",
                                    f"{instead}; remove the key", key=True))
    if doc.kind == "strategy":
        out.extend(_times_of_day_on_daily_bars(doc))
        out.extend(_combo_exit_orders(doc))
        out.extend(_every_other_than_the_bar(doc))
        out.extend(_underlying_other_than_the_symbol(doc))
    return out


def _underlying_other_than_the_symbol(doc: Document) -> list[Diagnostic]:
    """`underlying:` and an order's `underlying:`: runs trade each combo's options on the symbol
    whose rules fired, so an underlying other than the traded symbol changes nothing yet."""
    universe = doc.get(("universe",))
    strategy = doc.get(("underlying",))
    traded = [s for s in universe if isinstance(s, str)] if isinstance(universe, list) else \
        ([strategy] if universe is None and strategy else None)      # None: a universe file
    out = []
    if strategy is not None and universe is not None and traded != [strategy]:
        out.append(doc.diag(("underlying",), f"underlying: options on {strategy} while the rules trade "
                            f"{', '.join(traded) if traded else 'a universe file'} {NOT_SUPPORTED}",
                            "combo orders trade the options of the symbol whose rules fired; set universe: "
                            f"[{strategy}] (or leave universe out), or remove underlying", key=True))
    for name, order in (doc.get(("orders",)) or {}).items():
        if isinstance(order, dict) and order.get("underlying") is not None and traded != [order["underlying"]]:
            out.append(doc.diag(("orders", name, "underlying"),
                                f"orders.{name}.underlying: options on {order['underlying']} while the rules trade "
                                f"{', '.join(traded) if traded else 'a universe file'} {NOT_SUPPORTED}",
                                "combo orders trade the options of the symbol whose rules fired; remove the key",
                                key=True))
    return out


_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _duration(text) -> float | None:
    import re

    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)", str(text).strip())
    return float(match.group(1)) * _UNIT[match.group(2)] if match else None


def _every_other_than_the_bar(doc: Document) -> list[Diagnostic]:
    """schedule.every and schedule.scan_every: decisions happen when a bar closes, so a cadence
    is a whole number of bars (held names every 5m on 1m bars: at the closes on the 5-minute
    grid). A cadence finer than the bar has nothing new to decide on; on daily bars every
    session is decided (a coarser cadence would need weekly bars)."""
    bar = doc.get(("data", "bar")) or "1d"
    b = _duration(bar)
    out = []
    for key in ("every", "scan_every"):
        value = doc.get(("schedule", key))
        e = _duration(value) if value is not None else None
        if e is None or b is None or abs(e - b) < 1e-9:
            continue
        where = ("schedule", key)
        who = "held names are" if key == "every" else "names not held are"
        if e < b:
            out.append(doc.diag(where, f"schedule.{key}: {value} is finer than the {bar} bars: rules are decided when "
                                       f"a bar closes, so {who} decided once per {bar} bar",
                                f"set {key}: {bar} (protective stops and targets rest as orders and work inside "
                                f"the bar), or use {value} bars (data.bar: {value})", key=True))
        elif b >= 86400:
            out.append(doc.diag(where, f"schedule.{key}: a cadence of {value} on {bar} bars {NOT_SUPPORTED}",
                                "every session is decided on daily bars; use weekly bars (data.bar: 1w) to decide "
                                "once a week, or remove the key", key=True))
        elif abs(e / b - round(e / b)) > 1e-9:
            out.append(doc.diag(where, f"schedule.{key}: {value} is not a whole number of {bar} bars",
                                f"decisions happen at bar closes; use a multiple of {bar} "
                                f"({_fmt_duration(b * max(1, round(e / b)))}, say)", key=True))
    return out


def _fmt_duration(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= scale and abs(seconds / scale - round(seconds / scale)) < 1e-9:
            return f"{round(seconds / scale)}{unit}"
    return f"{seconds:g}s"


def _times_of_day_on_daily_bars(doc: Document) -> list[Diagnostic]:
    """`schedule.entry_window` and a `flat_by` (the schedule's or an agent's) on bars of a day or
    longer: such a bar has no time of day (it is decided after its close), so they change nothing."""
    bar = doc.get(("data", "bar"))
    seconds = _duration(bar) if bar is not None else None
    if seconds is None or seconds < 86400:
        return []
    places = [("schedule", "entry_window"), ("schedule", "flat_by")]
    places += [("agents", name, "flat_by") for name, agent in (doc.get(("agents",)) or {}).items()
               if isinstance(agent, dict)]
    out = []
    for where in places:
        if doc.get(where) is None:
            continue
        out.append(doc.diag(where, f"{'.'.join(map(str, where))}: a time of day on {bar} bars {NOT_SUPPORTED}",
                            f"a {bar} bar has no time of day (its rules are decided after its close); use intraday "
                            "bars, or remove the key", key=True))
    return out


def _combo_exit_orders(doc: Document) -> list[Diagnostic]:
    """An exit's own `order:` where every entry opens an option combo: a combo is closed whole,
    by the price policy of the template that opened it, so the exit's order changes nothing."""
    orders = doc.get(("orders",)) or {}

    def combo(rule) -> bool:
        return isinstance(rule, dict) and isinstance(orders.get(rule.get("order")), dict) and \
            "legs" in orders[rule.get("order")]

    sections = [((), doc.get(("entry",)) or [], doc.get(("exit",)) or [])]
    sections += [(("agents", name), agent.get("entry") or [], agent.get("exit") or [])
                 for name, agent in (doc.get(("agents",)) or {}).items() if isinstance(agent, dict)]
    entries = [rule for _, rules, _ in sections for rule in rules]
    if not entries or not all(combo(rule) for rule in entries):
        return []
    out = []
    for prefix, _, exits in sections:
        for i, rule in enumerate(exits):
            if isinstance(rule, dict) and rule.get("order") is not None:
                where = (*prefix, "exit", i, "order")
                out.append(doc.diag(where, f"{'.'.join(map(str, where))}: an exit's own order for an options combo "
                                           f"{NOT_SUPPORTED}",
                                    "a combo is closed whole at the price policy of the order that opened it (its "
                                    "price: mid, market, limit or chase); remove the key, or set that price policy",
                                    key=True))
    return out


def is_unsupported(d: Diagnostic) -> bool:
    """Whether `d` is one of this module's refusals (a key nothing reads yet)."""
    return d.message.endswith(NOT_SUPPORTED)

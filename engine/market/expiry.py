"""Expiry rules: which option expiry a strategy's `expiry:` means on a given day.

Pure functions of (now, Calendar, the available expiries). The available expiries are either
`listed` (the dates of a real option chain: only those can be chosen) or, without a chain, the
ones the instrument's expiry `cycle` generates on its exchange calendar:

- daily:     every trading day;
- weekly:    each week's Friday, or the trading day before it when that Friday is a holiday
             (Thursday, as listed weeklies do); the monthlies are among them;
- monthly:   the standard monthly: the third Friday of the month, or the trading day before it
             when that Friday is a holiday (Good Friday 2025-04-18 -> Thursday 2025-04-17);
- quarterly: the monthlies of March, June, September and December.

Rules, as a strategy writes them (`parse_rule` validates them):

- `0dte`: today if today is a trading day with an expiry, else the next trading day with one.
  On a Monday that is Monday itself, never the Friday before or after.
- `next_trading_day`: the first expiry after today.
- `next_friday`: the expiry of the first Friday after today: that Friday when it is a trading
  day with an expiry; when it is a holiday, the trading day before it in the same week (the
  listed weekly moves to Thursday, which is today when today is that Thursday); when that Friday
  has no expiry at all (a monthly-only chain), the next Friday that has one.
- `{weekly: N}`: the weekly expiry N weeks from this one. N=0 is this week's (Friday, or Thursday
  when Friday is a holiday), or next week's once this week's has passed (on a Saturday).
- `monthly`: this month's standard monthly, or next month's once it has passed (the first one
  that is available).
- `{dte: [min, max], prefer: nearest|farthest}`: among available expiries whose calendar days to
  expiry lie within [min, max] (both included), the nearest (default) or the farthest.

"Today" is the exchange-local date of `now` (a tz-aware datetime is converted to the calendar's
timezone; a naive datetime or a date is taken as it is). Time of day plays no part: a 0DTE rule
evaluated after today's close still names today's expiry; entry windows keep a strategy from
trading then.

When nothing fits, `resolve` raises `NoExpiry` with a message saying which rule, which day, and
what was available.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from engine.market.calendars import Calendar, as_date, get_calendar

__all__ = ["ExpiryRule", "NoExpiry", "CYCLES", "RULE_NAMES", "parse_rule", "resolve", "preview",
           "cycle_expiries", "weekly_expiry", "monthly_expiry"]

CYCLES = ("daily", "weekly", "monthly", "quarterly")
RULE_NAMES = ("0dte", "next_trading_day", "next_friday", "monthly")
PREFERENCES = ("nearest", "farthest")

# Searches for the next expiry give up after this many calendar days (a quarterly cycle needs
# at most about 100; a whole year with no expiry is a configuration problem).
_HORIZON_DAYS = 400

_FRIDAY = 4


class NoExpiry(LookupError):
    """No available expiry fits a rule on a day. `rule`, `today` and `reason` say why."""

    def __init__(self, rule: "ExpiryRule", today: dt.date, reason: str):
        self.rule = rule
        self.today = today
        self.reason = reason
        super().__init__(f"expiry {rule} on {today} ({today:%a}): {reason}")


@dataclass(frozen=True)
class ExpiryRule:
    """A validated expiry rule: kind is one of 0dte, next_trading_day, next_friday, monthly,
    weekly (with `weeks`) or dte (with `dte_min`, `dte_max`, `prefer`)."""

    kind: str
    weeks: int = 0
    dte_min: int = 0
    dte_max: int = 0
    prefer: str = "nearest"
    target: bool = False        # {dte: N}: the expiry today is the quote date nearest N days before

    def __str__(self) -> str:
        if self.kind == "weekly":
            return f"{{weekly: {self.weeks}}}"
        if self.kind == "dte" and self.target:
            return f"{{dte: {self.dte_min}}}"
        if self.kind == "dte":
            return f"{{dte: [{self.dte_min}, {self.dte_max}], prefer: {self.prefer}}}"
        return self.kind


RuleLike = Union[str, dict, ExpiryRule]


# ---- parsing -----------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_rule(value: RuleLike) -> ExpiryRule:
    """Validate an `expiry:` value as YAML gives it; ValueError with a readable message (and a
    suggestion for a misspelt name) when it is not one of:
    `0dte`, `next_trading_day`, `next_friday`, `monthly`, `{weekly: N}` (N >= 0),
    `{dte: [min, max], prefer: nearest|farthest}` (0 <= min <= max; prefer defaults to nearest).
    """
    if isinstance(value, ExpiryRule):
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        if name in RULE_NAMES:
            return ExpiryRule(name)
        if name == "weekly":
            raise ValueError("expiry 'weekly' needs a week count: write {weekly: 0} for this week's "
                             "expiry, {weekly: 1} for next week's")
        if name in ("dte", "daily"):
            raise ValueError(f"expiry {value!r} is not a rule: write 0dte for today's expiry or "
                             "{dte: [min, max], prefer: nearest} for a window of days to expiry")
        close = difflib.get_close_matches(name, RULE_NAMES, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown expiry rule {value!r}{hint}; expected one of "
                         f"{', '.join(RULE_NAMES)}, {{weekly: N}} or {{dte: [min, max], prefer: nearest}}")
    if isinstance(value, dict):
        keys = set(value)
        if "weekly" in keys:
            if keys != {"weekly"}:
                raise ValueError(f"expiry {{weekly: N}} takes no other keys, got {sorted(keys - {'weekly'})}")
            n = value["weekly"]
            if not _is_int(n) or n < 0:
                raise ValueError(f"expiry {{weekly: N}} needs a whole number of weeks N >= 0, got {n!r}")
            return ExpiryRule("weekly", weeks=n)
        if "dte" in keys:
            extra = keys - {"dte", "prefer"}
            if extra:
                raise ValueError(f"expiry {{dte: [min, max], prefer: ...}} has unknown keys {sorted(extra)}")
            window = value["dte"]
            if _is_int(window):
                if window < 0:
                    raise ValueError(f"expiry {{dte: N}} needs N >= 0 calendar days, got {window}")
                if value.get("prefer", "nearest") != "nearest":
                    raise ValueError("expiry {dte: N} is a target: the nearest quote date to it; prefer: "
                                     f"{value.get('prefer')!r} is for a window {{dte: [min, max]}}")
                return ExpiryRule("dte", dte_min=window, dte_max=window, target=True)
            if not isinstance(window, (list, tuple)) or len(window) != 2 \
                    or not all(_is_int(v) for v in window):
                raise ValueError(f"expiry dte needs a window [min, max] of whole calendar days, got {window!r}")
            lo, hi = window
            if lo < 0 or lo > hi:
                raise ValueError(f"expiry dte window [{lo}, {hi}] must have 0 <= min <= max")
            prefer = value.get("prefer", "nearest")
            if prefer not in PREFERENCES:
                raise ValueError(f"expiry dte prefer must be nearest or farthest, got {prefer!r}")
            return ExpiryRule("dte", dte_min=lo, dte_max=hi, prefer=prefer)
        raise ValueError(f"expiry mapping must be {{weekly: N}} or {{dte: [min, max], prefer: nearest}}, "
                         f"got keys {sorted(map(str, keys))}")
    raise ValueError(f"expiry rule must be a name or a mapping, got {value!r}")


# ---- the expiries a cycle generates ---------------------------------------------------------------

def _calendar(calendar: Calendar | str) -> Calendar:
    return calendar if isinstance(calendar, Calendar) else get_calendar(calendar)


def _check_cycle(cycle: str) -> str:
    if cycle not in CYCLES:
        close = difflib.get_close_matches(str(cycle), CYCLES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown expiry cycle {cycle!r}{hint}; expected one of {', '.join(CYCLES)}")
    return cycle


def _friday_of_week(day: dt.date) -> dt.date:
    return day + dt.timedelta(days=_FRIDAY - day.weekday())


def _moved_friday(friday: dt.date, calendar: Calendar) -> dt.date | None:
    """`friday` when it is a trading day, else the trading day before it in the same week
    (None when the whole week up to Friday is closed)."""
    if calendar.is_trading_day(friday):
        return friday
    before = calendar.previous_trading_day(friday)
    return before if before >= friday - dt.timedelta(days=_FRIDAY) else None


def weekly_expiry(day, calendar: Calendar | str) -> dt.date | None:
    """The weekly expiry of the (Monday to Sunday) week holding `day`: its Friday, or the
    trading day before it when that Friday is a holiday."""
    return _moved_friday(_friday_of_week(as_date(day)), _calendar(calendar))


def _third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(_FRIDAY - first.weekday()) % 7 + 14)


def monthly_expiry(year: int, month: int, calendar: Calendar | str) -> dt.date | None:
    """The standard monthly expiry of a month: its third Friday, or the trading day before it
    when that Friday is a holiday."""
    return _moved_friday(_third_friday(year, month), _calendar(calendar))


def _months(start: dt.date, end: dt.date):
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def cycle_expiries(cycle: str, calendar: Calendar | str, start, end) -> list[dt.date]:
    """The expiries `cycle` generates on `calendar` from `start` to `end`, both included."""
    cal = _calendar(calendar)
    start, end = as_date(start), as_date(end)
    cycle = _check_cycle(cycle)
    if start > end:
        return []
    if cycle == "daily":
        return cal.trading_days(start, end)
    if cycle == "weekly":
        out, friday = [], _friday_of_week(start)
        while friday - dt.timedelta(days=_FRIDAY) <= end:
            exp = _moved_friday(friday, cal)
            if exp is not None and start <= exp <= end:
                out.append(exp)
            friday += dt.timedelta(days=7)
        return out
    months = [(y, m) for y, m in _months(start, end) if cycle == "monthly" or m % 3 == 0]
    return [e for e in (monthly_expiry(y, m, cal) for y, m in months) if e is not None and start <= e <= end]


class _Available:
    """The expiries a rule may choose from: a listed chain's, or a cycle's."""

    def __init__(self, calendar: Calendar, cycle: str, listed: Iterable | None):
        self.calendar = calendar
        self.cycle = _check_cycle(cycle)
        self.listed = None if listed is None else sorted({as_date(d) for d in listed})

    def describe(self, today: dt.date) -> str:
        if self.listed is None:
            return f"{self.cycle} expiries on {self.calendar.name}"
        future = [d for d in self.listed if d >= today]
        if not future:
            last = f" (last {self.listed[-1]})" if self.listed else ""
            return f"no listed expiry on or after {today}{last}"
        shown = ", ".join(map(str, future[:6])) + (", ..." if len(future) > 6 else "")
        return f"listed expiries {shown}"

    def between(self, start: dt.date, end: dt.date) -> list[dt.date]:
        if self.listed is not None:
            return self.listed[bisect.bisect_left(self.listed, start):bisect.bisect_right(self.listed, end)]
        return cycle_expiries(self.cycle, self.calendar, start, end)

    def has(self, day: dt.date) -> bool:
        return bool(self.between(day, day))

    def horizon(self, today: dt.date) -> dt.date:
        if self.listed is not None:
            return max(self.listed[-1], today) if self.listed else today
        return today + dt.timedelta(days=_HORIZON_DAYS)

    def first(self, start: dt.date, horizon: dt.date) -> dt.date | None:
        # search in growing windows: most answers are within days
        lo, span = start, 10
        while lo <= horizon:
            hi = min(lo + dt.timedelta(days=span), horizon)
            found = self.between(lo, hi)
            if found:
                return found[0]
            lo, span = hi + dt.timedelta(days=1), span * 3
        return None


# ---- resolving --------------------------------------------------------------------------------

def resolve(rule: RuleLike, now, calendar: Calendar | str, *, listed: Sequence | None = None,
            cycle: str = "daily") -> dt.date:
    """The expiry `rule` names at `now` (a datetime or a date) on `calendar`, chosen among
    `listed` (a real chain's expiry dates) when given, else among the expiries of `cycle`.
    Raises `NoExpiry` when none fits, ValueError for a malformed rule or cycle."""
    rule = parse_rule(rule)
    cal = _calendar(calendar)
    today = cal.local_date(now)
    avail = _Available(cal, cycle, listed)
    horizon = avail.horizon(today)

    if rule.kind in ("0dte", "next_trading_day"):
        start = today if rule.kind == "0dte" else today + dt.timedelta(days=1)
        found = avail.first(start, horizon)
        if found is None:
            where = f"from {start} to {horizon}" if avail.listed is None else f"on or after {start}"
            raise NoExpiry(rule, today, f"no expiry {where}: {avail.describe(start)}")
        return found

    if rule.kind == "next_friday":
        friday = today + dt.timedelta(days=(_FRIDAY - today.weekday()) % 7 or 7)
        while friday - dt.timedelta(days=_FRIDAY) <= horizon:
            exp = _moved_friday(friday, cal)
            if exp is not None and exp >= today and avail.has(exp):
                return exp
            friday += dt.timedelta(days=7)
        raise NoExpiry(rule, today, f"no Friday (or holiday-moved Thursday) expiry up to {horizon} "
                                    f"among {avail.describe(today)}")

    if rule.kind == "weekly":
        this_week = weekly_expiry(today, cal)
        friday = _friday_of_week(today)
        if this_week is None or this_week < today:
            friday += dt.timedelta(days=7)
        friday += dt.timedelta(days=7 * rule.weeks)
        exp = _moved_friday(friday, cal)
        if exp is None:
            raise NoExpiry(rule, today, f"the week of Friday {friday} has no trading day up to Friday "
                                        f"on {cal.name}")
        if not avail.has(exp):
            raise NoExpiry(rule, today, f"the weekly expiry {exp} ({exp:%a}) is not among "
                                        f"{avail.describe(today)}")
        return exp

    if rule.kind == "monthly":
        for year, month in _months(today, max(horizon, today)):
            exp = monthly_expiry(year, month, cal)
            if exp is not None and exp >= today and avail.has(exp):
                return exp
        raise NoExpiry(rule, today, f"no standard monthly (third Friday) expiry up to {horizon} "
                                    f"among {avail.describe(today)}")

    if rule.kind == "dte" and rule.target:
        return _target_expiry(rule, today, cal, avail)

    if rule.kind == "dte":
        lo = today + dt.timedelta(days=rule.dte_min)
        hi = today + dt.timedelta(days=rule.dte_max)
        found = avail.between(lo, hi)
        if not found:
            raise NoExpiry(rule, today, f"no expiry between {lo} and {hi} ({rule.dte_min} to "
                                        f"{rule.dte_max} calendar days to expiry) among "
                                        f"{avail.describe(today)}")
        return found[0] if rule.prefer == "nearest" else found[-1]

    raise AssertionError(f"unhandled expiry rule {rule!r}")  # parse_rule admits nothing else


def _nearest_day(expiry: dt.date, today: dt.date, target: int, cal: Calendar) -> bool:
    """Is `today` the trading day nearest `target` calendar days before `expiry` (ties: the earlier
    day, further from expiry)? The days to expiry fall day by day, so the distance to the target
    falls, then rises: today is the nearest when the next trading day is no nearer and the
    previous one was further."""
    off = abs((expiry - today).days - target)
    after = abs((expiry - cal.next_trading_day(today)).days - target)
    before = abs((expiry - cal.previous_trading_day(today)).days - target)
    return off <= after and off < before


def _target_expiry(rule: ExpiryRule, today: dt.date, cal: Calendar, avail) -> dt.date:
    """{dte: N}: the available expiry for which today is the trading day nearest N days before it
    (the nearest to N of several)."""
    n = rule.dte_min
    near = avail.between(today + dt.timedelta(days=max(n - 7, 0)), today + dt.timedelta(days=n + 7))
    hits = [e for e in near if _nearest_day(e, today, n, cal)]
    if hits:
        return min(hits, key=lambda e: (abs((e - today).days - n), e))
    ahead = avail.between(today + dt.timedelta(days=n + 1), today + dt.timedelta(days=n + 60))
    when = ""
    if ahead:
        day = today
        for _ in range(90):
            day = cal.next_trading_day(day)
            if _nearest_day(ahead[0], day, n, cal):
                when = f"; the next: {day} for the {ahead[0]} expiry"
                break
    raise NoExpiry(rule, today, f"today is not the trading day nearest {n} days before any of "
                                f"{avail.describe(today)}{when}")


def preview(rule: RuleLike, start_date, days: int, calendar: Calendar | str, cycle: str = "daily",
            listed: Sequence | None = None) -> list[tuple[dt.date, dt.date | str]]:
    """What `rule` resolves to on each of `days` calendar days from `start_date`: a list of
    (day, expiry) pairs, with the `NoExpiry` message in place of the expiry when none fits.
    For `qtrade expiries STRATEGY --from DATE --days N`."""
    rule = parse_rule(rule)
    cal = _calendar(calendar)
    _check_cycle(cycle)
    if not isinstance(days, int) or isinstance(days, bool) or days < 0:
        raise ValueError(f"days must be a whole number >= 0, got {days!r}")
    start = as_date(start_date)
    listed = None if listed is None else sorted({as_date(d) for d in listed})
    out: list[tuple[dt.date, dt.date | str]] = []
    for i in range(days):
        day = start + dt.timedelta(days=i)
        try:
            out.append((day, resolve(rule, day, cal, listed=listed, cycle=cycle)))
        except NoExpiry as exc:
            out.append((day, str(exc)))
    return out

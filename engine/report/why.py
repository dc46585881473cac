"""Why a strategy did (not) trade: the journal's decisions grouped by rule, outcome and reason,
with counts and first/last times (`qtrade why`), and the top reasons entries were blocked for
(the backtest summary's "Entries blocked" line).

Reasons that differ only in their numbers (a strike, a quote, a date) are one group: "leg
short_call (call 309 2019-11-06) has no two-sided quote (bid 0.0, ask 0.03)" and the same with
ask 0.04 are the same cause. A group shows its most frequent wording and how many wordings it has.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..market.bars import bar_seconds
from ..runtime.journal import Journal, JournalError, shown_time

_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:[.:\-/]\d+)*(?:[eE][-+]?\d+)?%?")
_WEEKDAY = re.compile(r"\((?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\)")      # a date's day, "2018-01-09 (Tue)"


def reason_pattern(reason: str) -> str:
    """The reason with its numbers (and dates, times, a date's weekday) replaced by '#'."""
    return _NUMBER.sub("#", _WEEKDAY.sub("(#)", reason or ""))


def value_range(wordings) -> str:
    """Where one reason's wordings differ in a number ("credit = 0.185: 0.185 >= 0.2 no" and the
    same at 0.175), the range the first such number took: "from 0.175 to 0.185" ("" if none)."""
    values = [_NUMBER.findall(w) for w in wordings]
    if len(values) < 2 or len({len(v) for v in values}) != 1:
        return ""
    varying = [i for i in range(len(values[0])) if len({v[i] for v in values}) > 1]
    # one quantity only (said once or repeated: "credit = 0.185: 0.185 >= 0.2"), not a strike and
    # an expiry moving together, whose range would not say what it is a range of
    if not varying or any(len({v[i] for i in varying}) > 1 for v in values):
        return ""
    try:
        numbers = [float(v[varying[0]].rstrip("%")) for v in values]
    except ValueError:
        return ""       # a date or a time
    # named where a wording names it ("credit = 0.185" -> credit, "(confidence 0.63" -> confidence)
    wording = next(iter(wordings))
    token = list(_NUMBER.finditer(wording))[varying[0]]
    name = re.search(r"(?:([A-Za-z_][\w.]*) = |\(([A-Za-z_]\w*) )$", wording[:token.start()])
    named = f"{name.group(1) or name.group(2)} " if name else ""
    return f"{named}from {min(numbers):g} to {max(numbers):g}"


@dataclass
class Group:
    rule: str
    kind: str
    outcome: str
    pattern: str
    count: int = 0
    first: str = ""
    last: str = ""
    wordings: Counter = field(default_factory=Counter)

    @property
    def reason(self) -> str:
        return self.wordings.most_common(1)[0][0] if self.wordings else ""


def group_decisions(rows) -> list[Group]:
    """(rule, kind, outcome, reason, count, first ts, last ts) rows -> groups, the rules in the
    order they first decided, within a rule fired first, then by count (largest first)."""
    groups: dict[tuple, Group] = {}
    first_seen: dict[str, str] = {}
    for rule, kind, outcome, reason, count, first, last in rows:
        key = (rule, kind, outcome, reason_pattern(reason))
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(rule, kind, outcome, key[3], 0, first, last)
        g.count += count
        g.first, g.last = min(g.first, first), max(g.last, last)
        g.wordings[reason or ""] += count
        first_seen[rule] = min(first_seen.get(rule, first), first)
    return sorted(groups.values(), key=lambda g: (first_seen[g.rule], g.rule, g.outcome != "fired", -g.count,
                                                  g.pattern))


def decision_rows(decisions):
    """A run's decisions as (outcome, kind, reason), whether kept as records or as columns (a
    column that holds one value for every row is that value alone)."""
    cols = getattr(decisions, "columns", None)
    if cols is None:
        return ((d.outcome, d.kind, d.reason) for d in decisions)
    size = len(decisions)

    def column(name):
        values = cols[name]
        return values if isinstance(values, (list, tuple)) or hasattr(values, "shape") else [values] * size
    return zip(column("outcome"), column("kind"), column("reason"))


def top_reasons(decisions, outcome: str = "blocked", n: int = 3, kind: str | None = None) -> list[tuple[str, int]]:
    """The `n` most frequent reasons (grouped as above) among a run's decisions with `outcome`
    (and with `kind`, entry or exit, when given): (most frequent wording, count)."""
    counts: dict[str, Counter] = {}
    for o, k, reason in decision_rows(decisions):
        if o == outcome and (kind is None or k == kind):
            counts.setdefault(reason_pattern(str(reason)), Counter())[str(reason)] += 1
    ranked = sorted(counts.values(), key=lambda c: -sum(c.values()))
    return [(c.most_common(1)[0][0] + (f" ({spread})" if (spread := value_range(c)) else ""), sum(c.values()))
            for c in ranked[:n]]


def run_mode(run) -> str:
    """A journaled run's mode as a reader tells them apart: a paper run on IB names its account,
    `run --broker sim` is the simulator's (both are journaled 'paper')."""
    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
    mode = run.get("mode") or ""
    if settings.get("broker") == "ib":
        return f"{mode}, IB account {settings.get('account')}" if settings.get("account") else f"{mode}, IB"
    if mode in ("paper", "dry-run"):
        return f"{mode}, simulator"
    return mode


def why_text(journal_path: str | Path, run_id: str | None = None, rule: str | None = None) -> str:
    """`qtrade why`'s text. JournalError for a missing journal or run; LookupError for a rule the
    run has no decisions of (its message names the rules it has)."""
    path = Path(journal_path)
    if not path.exists():
        raise JournalError(f"{path}: no such journal file")
    with Journal(path, readonly=True) as journal:
        run = journal.run(run_id)
        rid = run["run_id"]
        rows = journal.db.execute(
            "SELECT rule, kind, outcome, reason, COUNT(*), MIN(ts), MAX(ts) FROM decisions WHERE run_id=?"
            " GROUP BY rule, kind, outcome, reason", (rid,)).fetchall()
        others, count = [], 0       # without --run: the other runs, for the reader to pick one
        if run_id is None:
            count = journal.db.execute("SELECT COUNT(*) FROM runs WHERE run_id != ?", (rid,)).fetchone()[0]
            others = journal.db.execute(
                "SELECT run_id, strategy, mode, started_at, status, json_extract(settings, '$.broker'),"
                " json_extract(settings, '$.account') FROM runs WHERE run_id != ?"
                " ORDER BY started_at DESC, rowid DESC LIMIT 5", (rid,)).fetchall()
    rules = sorted({r[0] for r in rows})
    if rule is not None:
        if rule not in rules:
            raise LookupError(f"run {rid} has no decisions of a rule named {rule!r}; its rules: "
                              + (", ".join(repr(r) for r in rules) or "none"))
        rows = [r for r in rows if r[0] == rule]
    total = sum(r[4] for r in rows)
    from .html import run_timezone

    tz = run_timezone(run)
    try:
        daily = bar_seconds(run.get("bar") or "") >= 86_400
    except ValueError:
        daily = False
    head = (f"run {rid}: {run['strategy']} ({run_mode(run)}), {total:,} decision{'s' * (total != 1)}"
            + (f" of rule {rule!r}" if rule else "")
            + (f"; times in {tz}" + (", a daily bar's decisions dated by its day" if daily else "") if rows else ""))
    if others:      # the newest run was shown: the others are named, for --run
        which = f"the latest {len(others)} of the {count:,} others" if count > len(others) else \
            ("the other" if count == 1 else f"the {count} others")
        head += f"\nthe newest of {count + 1:,} runs in this journal; {which} (qtrade why {path} --run RUN_ID):"
        for other_id, strategy, mode, started, status, broker, account in others:
            shown = run_mode({"mode": mode, "settings": {"broker": broker, "account": account}})
            head += f"\n  {other_id}  {strategy} ({shown}), started {shown_time(started)}, {status}"
    if not rows:
        return head + "\n  no decisions were journaled: no rule fired and none was blocked"
    lines = [head]
    current = None
    for g in group_decisions(rows):
        if (g.rule, g.kind) != current:
            current = (g.rule, g.kind)
            lines.append(f"\n{g.kind} rule {g.rule!r}:")
        first, last = _local(g.first, tz, daily), _local(g.last, tz, daily)
        when = first if first == last else f"{first} .. {last}"
        variants = len(g.wordings)
        reason = g.reason or ("(no reason given)" if g.outcome != "fired" else "")
        more = f"  [{variants} wordings]" if variants > 1 else ""
        lines.append(f"  {g.outcome:<8}{g.count:>9,}  {when:<35}  {reason}{more}".rstrip())
    return "\n".join(lines)


def _local(ts: str, tz: str, daily: bool) -> str:
    """A journaled time (UTC, 2019-11-05T15:01:00Z) as the trader reads it, in the strategy's
    timezone: 2019-11-05 10:01; on daily bars a decision at a close (stamped at the midnight the
    bar ends at) is its bar's day, "2017-08-18 close", not the next day's midnight."""
    import pandas as pd

    try:
        t = pd.Timestamp(ts)
    except (ValueError, TypeError):
        return ts or ""
    t = (t.tz_localize("UTC") if t.tzinfo is None else t).tz_convert(tz)
    if daily and t.hour == 0:       # a close, or seconds after it (a combo's chase): that close, and how long after
        since = t.minute * 60 + t.second
        return f"{t - pd.Timedelta(days=1):%Y-%m-%d} close" + (f" +{since}s" if since else "")
    return f"{t:%Y-%m-%d %H:%M}"

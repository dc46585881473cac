"""Does the data hold enough bars for the plan? A look-back longer than the data (an indicator
length, a lag) leaves every value of it empty, so its rules can never fire: say so before the
run, at the expression's line in the strategy, with what the data holds."""

from __future__ import annotations

from ..diagnostics import Diagnostic


def short_history(prep) -> list[Diagnostic]:
    """Errors for the strategy's indicators and rules whose warm-up is at least as long as the
    data of every traded symbol (one per expression, the indicators first)."""
    frames = [prep.frames[s] for s in prep.symbols if s in prep.frames]
    if not frames:
        return []
    longest = max(len(f) for f in frames)
    holder = next(s for s in prep.symbols if s in prep.frames and len(prep.frames[s]) == longest)
    frame = prep.frames[holder]
    span = (f"{frame.index[0]:%Y-%m-%d} to {frame.index[-1]:%Y-%m-%d}" if longest else "no dates")
    holds = f"{holder}'s data holds {longest:,} {prep.bar} bar{'s' * (longest != 1)} ({span})"
    plan, doc = prep.plan, prep.doc
    places: list[tuple[tuple, int]] = []   # (document path, node id)
    for name in doc.get(("indicators",)) or {}:
        node = plan.outputs.get(f"indicator.{name}")
        if node is not None:
            places.append((("indicators", name), node))
    for rule in plan.rules:
        for key in ("when", "stop", "target"):
            node = getattr(rule, key)
            if node is not None and rule.where:
                places.append((tuple(rule.where) + (key,), node))
    out: list[Diagnostic] = []
    named_short: set[int] = set()
    for where, node_id in places:
        node = plan.nodes[node_id]
        if node.warmup < longest:
            continue
        if where[0] != "indicators" and _reads_only(plan, node_id, named_short):
            continue   # the indicator it reads is already named
        if where[0] == "indicators":
            named_short.add(node_id)
        cut = (prep.settings or {}).get("warmup") == "from_start" and prep.start is not None
        out.append(doc.diag_in_value(
            where, 0, f"`{node.label}` needs {node.warmup + 1:,} bars before its first value, but {holds}"
            + (" from the run's start (backtest.warmup: from_start)" if cut else ""),
            "shorten the look-back (indicator lengths, lags x[n]), use a larger bar size, or " +
            ("start earlier (--from), or warm up on the bars before the start (backtest.warmup: before_start)"
             if cut else "load more history (data.source, --data)")))
    return out


def _reads_only(plan, node_id: int, named: set[int]) -> bool:
    """Whether the node's long warm-up comes from an indicator already reported."""
    if not named:
        return False
    stack, seen = [node_id], set()
    while stack:
        i = stack.pop()
        if i in named:
            return True
        if i in seen:
            continue
        seen.add(i)
        stack.extend(plan.nodes[i].args)
    return False

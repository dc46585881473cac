"""The Plan: a strategy compiled into a DAG of computations plus the rules that read it.

Nodes are in topological order (every node after its arguments) and unique by structure:
`ema(close, 8)` written in three rules is one node. A node is a *market* node when it depends
only on bar data (vectorised up front in a backtest, streamed bar by bar live): a scanner's
results (`scan.rank`, computed from the universe's bars) are market data too; a *context* node
also needs the run's state (the open position, a combo's legs), so the Runner evaluates it at
the bars where that state exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Node operations.
FIELD = "field"          # attrs: (symbol or None, name)  a bar field of this or another symbol
CLOCK = "clock"          # attrs: (name,)                  time, dayofweek, minutes_to_close, ...
CONST = "const"          # attrs: (value,)
CALL = "call"            # attrs: (function, constant params...)   kernel or elementwise function
BINARY = "binary"        # attrs: (op,)  + - * /
COMPARE = "compare"      # attrs: (op,)  < <= > >= == !=
LOGIC = "logic"          # attrs: (op,)  and or
NOT = "not"
NEG = "neg"
LAG = "lag"              # attrs: (bars,)
IN = "in"                # attrs: (values tuple,)
CLASSIFY = "classify"    # attrs: (labels tuple,)  args: one condition per label, first true wins
CONTEXT = "context"      # attrs: (name,)  position.pnl, credit, short_put.strike, ...
SCAN = "scan"            # attrs: (field,)  this symbol's scan result: rank, score, class, grade, picked, a factor
AT_ENTRY = "at_entry"    # args: (x,)  x on the bar the open position was entered


@dataclass(frozen=True)
class Node:
    id: int
    op: str
    attrs: tuple
    args: tuple[int, ...]
    kind: str            # number | boolean | string | time | duration
    series: bool
    warmup: int          # leading bars without a value on a gap-free history
    market: bool         # depends on bar data only
    label: str           # canonical expression text, e.g. "ema(close, 8)"


@dataclass(frozen=True)
class Rule:
    """A rule as the Runner sees it: which nodes decide it, and what it does."""

    kind: str                 # entry | exit
    name: str
    when: int | None = None   # boolean node
    stop: int | None = None   # price node (exit stop)
    target: int | None = None  # price node (exit target)
    order: str | None = None
    agent: str | None = None
    reason: str = ""
    where: tuple = ()          # path in the strategy document, for messages


@dataclass
class Inputs:
    """What a run must load for this plan: fields per symbol, clock values, run context."""

    fields: dict[str | None, set[str]] = field(default_factory=dict)  # None = the traded symbol
    clock: set[str] = field(default_factory=set)
    context: set[str] = field(default_factory=set)
    scan: set[str] = field(default_factory=set)     # the scan fields read (scan.rank, ...)

    @property
    def symbols(self) -> list[str]:
        return sorted(s for s in self.fields if s is not None)


@dataclass
class Plan:
    nodes: list[Node]
    outputs: dict[str, int]       # named results: "indicator.fast_ma", "entry[0].when", ...
    rules: list[Rule]
    inputs: Inputs
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    bar: str = ""

    @property
    def warmup(self) -> int:
        """Bars of history needed before every rule has a value."""
        ids = [i for r in self.rules for i in (r.when, r.stop, r.target) if i is not None]
        ids += list(self.outputs.values())
        return max((self.nodes[i].warmup for i in ids), default=0)

    @property
    def history(self) -> int:
        """Bars to load before the first decision: the warm-up plus the decision bar."""
        return self.warmup + 1

    def users(self) -> dict[int, list[str]]:
        """For each node, the outputs and rules that use it (directly or through other nodes)."""
        parents: dict[int, set[str]] = {n.id: set() for n in self.nodes}

        def mark(node_id: int, user: str) -> None:
            stack = [node_id]
            seen = set()
            while stack:
                current = stack.pop()
                if current in seen:
                    continue
                seen.add(current)
                parents[current].add(user)
                stack.extend(self.nodes[current].args)

        for name, node_id in self.outputs.items():
            mark(node_id, name)
        return {k: sorted(v) for k, v in parents.items()}

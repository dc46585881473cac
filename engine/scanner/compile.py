"""A scanner compiled into one Plan: the prefilter, each factor's raw value, and the class
conditions. The bar-data parts are market nodes, evaluated per symbol over its bars; a class
condition reads the factors' normalised scores and the composite score, which exist only
across the universe at a scan, so those names are context nodes filled in by scanner/rank.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..check.scan_model import ScannerSpec
from ..plan import nodes as N
from ..plan.build import _prune
from ..plan.compiler import Compiler


@dataclass(frozen=True)
class Conjunct:
    """One `and`-ed part of the prefilter: its node, and how a name failing it is told."""

    node: int
    label: str            # what failing it means, without values: "volume < 1e6"
    left: int | None      # a comparison's sides, shown with their values in a name's reason
    right: int | None
    op: str | None        # the comparison that failed (its negation), e.g. "<"


@dataclass(frozen=True)
class ScanPlan:
    spec: ScannerSpec
    plan: N.Plan
    factors: tuple[tuple[str, int], ...]        # (factor name, node of its raw value)
    prefilter: tuple[Conjunct, ...]             # empty: every name passes
    classes: tuple[tuple[str, int], ...]        # (class, node of its condition)
    market: tuple[int, ...]                     # market nodes the cross-section reads (gathered per symbol)

    @property
    def warmup(self) -> int:
        """Bars a symbol needs before every factor has a value (on a gap-free history)."""
        return max((self.plan.nodes[i].warmup for _, i in self.factors), default=0)


_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def number(value) -> str:
    """A number as scan messages show it: 8e5, 1e6, 1.25e6, 12.3, 0.0312."""
    if value is None or value != value:
        return "nan"
    if isinstance(value, bool):
        return "true" if value else "false"
    v = float(value)
    if v.is_integer() and abs(v) < 1e5:
        return str(int(v))
    if abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3):
        mantissa, exponent = f"{v:.3g}".split("e") if "e" in f"{v:.3g}" else (f"{v:.3g}", "0")
        return f"{mantissa}e{int(exponent)}"
    return f"{v:.4g}"


def compile_scanner(spec: ScannerSpec) -> ScanPlan:
    """The scanner's one Plan (shared terms once) and where its parts are in it."""
    names = {f.name for f in spec.factors}
    compiler = Compiler(spec.params, context_names=names | {"score"})
    outputs: dict[str, int] = {}
    for f in spec.factors:
        outputs[f"factor.{f.name}"] = compiler.expr(f.expr.node)
    conjuncts: list[int] = []
    if spec.prefilter is not None:
        outputs["prefilter"] = compiler.expr(spec.prefilter.node)
        conjuncts = _conjuncts(compiler, outputs["prefilter"])
        for i, c in enumerate(conjuncts):
            outputs[f"prefilter[{i}]"] = c
    for i, case in enumerate(spec.classes):
        outputs[f"class[{i}]"] = compiler.expr(case.when.node)
    plan = _prune(compiler, outputs, [])
    plan.params = dict(spec.params)
    plan.name = spec.name
    nodes = plan.nodes
    parts = []
    for i in range(len(conjuncts)):
        node = nodes[plan.outputs[f"prefilter[{i}]"]]
        parts.append(_conjunct(plan, node))
    classes = tuple((case.label, plan.outputs[f"class[{i}]"]) for i, case in enumerate(spec.classes))
    market: set[int] = {plan.outputs[f"factor.{f.name}"] for f in spec.factors}
    for c in parts:
        market.update(i for i in (c.node, c.left, c.right) if i is not None)
    for _, node_id in classes:
        market.update(_frontier(plan, node_id))
    return ScanPlan(spec, plan, tuple((f.name, plan.outputs[f"factor.{f.name}"]) for f in spec.factors),
                    tuple(parts), classes, tuple(sorted(i for i in market if nodes[i].op != N.CONST)))


def _conjuncts(compiler: Compiler, node_id: int) -> list[int]:
    node = compiler.nodes[node_id]
    if node.op == N.LOGIC and node.attrs[0] == "and":
        return _conjuncts(compiler, node.args[0]) + _conjuncts(compiler, node.args[1])
    return [node_id]


def _conjunct(plan: N.Plan, node: N.Node) -> Conjunct:
    nodes = plan.nodes
    if node.op == N.COMPARE:
        a, b = (nodes[i] for i in node.args)
        op = _NEGATED[node.attrs[0]]
        shown = [x.label if x.op != N.CONST else number(x.attrs[0]) for x in (a, b)]
        return Conjunct(node.id, f"{shown[0]} {op} {shown[1]}", a.id, b.id, op)
    if node.op == N.CONST:
        return Conjunct(node.id, "the prefilter is false", None, None, None)
    return Conjunct(node.id, f"not ({node.label})", None, None, None)


def _frontier(plan: N.Plan, node_id: int) -> set[int]:
    """The market nodes a (context) condition reads directly: what must be gathered per symbol."""
    nodes = plan.nodes
    if nodes[node_id].market:
        return {node_id}
    out: set[int] = set()
    stack, seen = [node_id], set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        for a in nodes[i].args:
            if nodes[a].market:
                out.add(a)
            else:
                stack.append(a)
    return out

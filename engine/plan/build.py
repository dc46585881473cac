"""From a strategy file to its Plan: validate it (refusing on any error), then compile every
expression it holds (indicators, classifications, rules, agents, order prices and sizes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..check import validate
from ..check.semantic import COMBO_NAMES, StrategyCheck
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError, error
from ..dsl import parser
from . import nodes as N
from .compiler import Compiler


def load_strategy(path: str | Path, overrides: dict[str, str] | None = None, *,
                  unsupported_ok: bool = False) -> tuple[Document, Workspace]:
    """Load a strategy and everything it references; raise DiagnosticError if anything is wrong.
    `unsupported_ok` lets through keys no mode reads yet (engine.check.support), for compiling
    and showing a plan (`qtrade explain`); runs never pass it."""
    from ..check.support import is_unsupported

    report = validate([str(path)], overrides)
    errors = [d for d in report.errors if not (unsupported_ok and is_unsupported(d))]
    if errors:
        raise DiagnosticError(errors)
    ws = report.workspace   # the documents validate loaded: not read and checked a second time
    doc = ws.load(path)
    if doc is None or doc.kind != "strategy":
        kind = doc.kind if doc is not None else "unknown"
        raise DiagnosticError([error(str(path), 1, 1, f"expected a strategy file, this is kind: {kind}",
                                     "give a file with `kind: strategy`")])
    return doc, ws


def _text(doc: Document, where: tuple) -> str:
    value = doc.get(where)
    if isinstance(value, str):
        return value
    mark = doc.marks.values.get(tuple(where))
    if mark is not None and mark.text is not None:
        return mark.text
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_plan(doc: Document, ws: Workspace, overrides: dict[str, str] | None = None) -> N.Plan:
    """Compile a validated strategy document into its Plan."""
    params = {name: info.value for name, info in StrategyCheck(ws, doc).params(overrides).items()}
    named = {name: parser.parse(_text(doc, ("indicators", name))) for name in doc.get(("indicators",)) or {}}
    classes = {name: [(case["name"], parser.parse(_text(doc, ("classify", name, i, "when"))))
                      for i, case in enumerate(cases)]
               for name, cases in (doc.get(("classify",)) or {}).items()}
    compiler = Compiler(params, named, classes, context_names=set(COMBO_NAMES))
    outputs: dict[str, int] = {}
    rules: list[N.Rule] = []

    def out(label: str, where: tuple) -> int:
        node_id = compiler.expr(parser.parse(_text(doc, where)))
        outputs[label] = node_id
        return node_id

    for name in named:
        outputs[f"indicator.{name}"] = compiler.expr(named[name])
    for name in classes:
        outputs[f"classify.{name}"] = compiler._classify(name)

    def add_rules(section: tuple, kind: str, prefix: str, agent: str | None) -> None:
        for i, rule in enumerate(doc.get(section) or []):
            where = section + (i,)
            ids: dict[str, int | None] = {}
            for key in ("when", "stop", "target"):
                ids[key] = out(f"{prefix}{kind}[{i}].{key}", where + (key,)) if key in rule else None
            rules.append(N.Rule(kind, str(rule.get("name", f"{kind} {i + 1}")), ids["when"], ids["stop"],
                                ids["target"], rule.get("order"), agent, str(rule.get("reason", "")), where))

    add_rules(("entry",), "entry", "", None)
    add_rules(("exit",), "exit", "", None)
    for agent, spec in (doc.get(("agents",)) or {}).items():
        for key in ("active", "score"):
            if key in spec:
                out(f"agents.{agent}.{key}", ("agents", agent, key))
        add_rules(("agents", agent, "entry"), "entry", f"agents.{agent}.", agent)
        add_rules(("agents", agent, "exit"), "exit", f"agents.{agent}.", agent)
    for name, order in (doc.get(("orders",)) or {}).items():
        base = ("orders", name)
        for leg, spec in (order.get("legs") or {}).items():
            strike = spec.get("strike")
            where = base + ("legs", leg, "strike")
            if isinstance(strike, dict):
                for key in ("delta", "premium", "min", "max"):
                    if key in strike:
                        out(f"orders.{name}.legs.{leg}.{key}", where + (key,))
            elif strike is not None:
                out(f"orders.{name}.legs.{leg}.strike", where)
        price = order.get("price")
        if isinstance(price, dict):
            if "limit" in price:
                out(f"orders.{name}.limit", base + ("price", "limit"))
            if isinstance(price.get("chase"), dict) and "floor" in price["chase"]:
                out(f"orders.{name}.floor", base + ("price", "chase", "floor"))
        for key in ("limit", "stop"):
            if key in order and "legs" not in order:
                out(f"orders.{name}.{key}", base + (key,))
        quantity = order.get("quantity")
        if isinstance(quantity, str):
            out(f"orders.{name}.quantity", base + ("quantity",))
        elif isinstance(quantity, dict) and "stop_distance" in quantity:
            out(f"orders.{name}.stop_distance", base + ("quantity", "stop_distance"))
    plan = _prune(compiler, outputs, rules)
    plan.params = params
    plan.name = str(doc.get(("name",), ""))
    plan.bar = str(doc.get(("data", "bar"), ""))
    return plan


def _prune(compiler: Compiler, outputs: dict[str, int], rules: list[N.Rule]) -> N.Plan:
    """Keep only nodes reachable from an output, renumbered in topological order."""
    keep: set[int] = set()
    stack = list(outputs.values())
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(compiler.nodes[i].args)
    remap: dict[int, int] = {}
    nodes: list[N.Node] = []
    for node in compiler.nodes:
        if node.id in keep:
            remap[node.id] = len(nodes)
            nodes.append(N.Node(len(nodes), node.op, node.attrs, tuple(remap[a] for a in node.args), node.kind,
                                node.series, node.warmup, node.market, node.label))
    inputs = N.Inputs()
    for node in nodes:
        if node.op == N.FIELD:
            inputs.fields.setdefault(node.attrs[0], set()).add(node.attrs[1])
        elif node.op == N.CLOCK:
            inputs.clock.add(node.attrs[0])
        elif node.op == N.CONTEXT:
            inputs.context.add(node.attrs[0])
        elif node.op == N.AT_ENTRY:
            inputs.context.add("position.entry_bar")
    new_rules = [N.Rule(r.kind, r.name, *(remap.get(x) if x is not None else None for x in (r.when, r.stop, r.target)),
                        r.order, r.agent, r.reason, r.where) for r in rules]
    return N.Plan(nodes, {k: remap[v] for k, v in outputs.items()}, new_rules, inputs)


def plan_from_file(path: str | Path, overrides: dict[str, str] | None = None, *,
                   unsupported_ok: bool = False) -> N.Plan:
    doc, ws = load_strategy(path, overrides, unsupported_ok=unsupported_ok)
    return build_plan(doc, ws, overrides)


def summary(plan: N.Plan) -> dict[str, Any]:
    """The Plan as plain data (for `qtrade explain --format json`)."""
    users = plan.users()
    return {
        "strategy": plan.name,
        "bar": plan.bar,
        "warmup_bars": plan.warmup,
        "history_bars": plan.history,
        "inputs": {
            "fields": {("this symbol" if k is None else k): sorted(v) for k, v in plan.inputs.fields.items()},
            "clock": sorted(plan.inputs.clock),
            "context": sorted(plan.inputs.context),
        },
        "params": plan.params,
        "nodes": [{"id": n.id, "expr": n.label, "op": n.op, "type": n.kind + (" series" if n.series else ""),
                   "warmup": n.warmup, "market": n.market, "args": list(n.args), "used_by": users[n.id]}
                  for n in plan.nodes],
        "rules": [{"kind": r.kind, "name": r.name, "agent": r.agent, "order": r.order,
                   "when": r.when, "stop": r.stop, "target": r.target, "reason": r.reason}
                  for r in plan.rules],
        "outputs": plan.outputs,
    }

"""From a strategy file to its Plan: validate it (refusing on any error), then compile every
expression it holds (indicators, classifications, rules, agents, order prices and sizes) from
the trees the checker parsed (check.model.StrategyExprs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..check import validate
from ..check.model import Expr, RuleSpec, StrategyExprs
from ..check.semantic import COMBO_NAMES, StrategyCheck
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError, error
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
    ws.warnings = list(report.warnings)
    doc = ws.load(path)
    if doc is None or doc.kind != "strategy":
        kind = doc.kind if doc is not None else "unknown"
        raise DiagnosticError([error(str(path), 1, 1, f"expected a strategy file, this is kind: {kind}",
                                     "give a file with `kind: strategy`")])
    return doc, ws


def build_plan(doc: Document, ws: Workspace, overrides: dict[str, str] | None = None) -> N.Plan:
    """Compile a validated strategy into its Plan, from the expressions the checker parsed
    (check.model.StrategyExprs): nothing is read from the document's rules or parsed again."""
    exprs = ws.checked.get(doc.abspath)
    if not isinstance(exprs, StrategyExprs):
        raise ValueError(f"{doc.path} was not checked: load it with load_strategy (or check.validate) first")
    params = {name: info.value for name, info in StrategyCheck(ws, doc).params(overrides).items()}
    named = {name: e.node for name, e in exprs.indicators.items()}
    classes = {c.name: [(case.label, case.when.node) for case in c.cases] for c in exprs.classify}
    compiler = Compiler(params, named, classes, context_names=set(COMBO_NAMES))
    outputs: dict[str, int] = {}
    rules: list[N.Rule] = []

    def out(label: str, e: Expr) -> int:
        node_id = compiler.expr(e.node)
        outputs[label] = node_id
        return node_id

    for name in named:
        outputs[f"indicator.{name}"] = compiler.expr(named[name])
    for name in classes:
        outputs[f"classify.{name}"] = compiler._classify(name)

    scanned = doc.get(("scanner",)) is not None

    def add_rules(specs: tuple[RuleSpec, ...], prefix: str, agent: str | None) -> None:
        for i, rule in enumerate(specs):
            ids = {key: out(f"{prefix}{rule.kind}[{i}].{key}", e) if (e := getattr(rule, key)) is not None else None
                   for key in ("when", "stop", "target")}
            if scanned and rule.kind == "entry" and ids["when"] is not None:
                # a strategy with a scanner enters its picks only: the entry's condition and
                # scan.picked; what the condition says without the scan is kept so a pick's
                # absence can be journaled as the reason an entry did not go
                outputs[f"{prefix}entry[{i}].unscanned"] = _without_scan(compiler, ids["when"])
                picked = compiler.scan("picked")
                if picked not in _conjuncts(compiler, ids["when"]):    # the file may say `and scan.picked` itself
                    ids["when"] = outputs[f"{prefix}entry[{i}].when"] = compiler._logic("and", ids["when"], picked)
            rules.append(N.Rule(rule.kind, rule.name, ids["when"], ids["stop"], ids["target"], rule.order, agent,
                                rule.reason, rule.where))

    add_rules(exprs.entry, "", None)
    add_rules(exprs.exit, "", None)
    for agent in exprs.agents:
        for key in ("active", "score"):
            if (e := getattr(agent, key)) is not None:
                out(f"agents.{agent.name}.{key}", e)
        add_rules(agent.entry, f"agents.{agent.name}.", agent.name)
        add_rules(agent.exit, f"agents.{agent.name}.", agent.name)
    for label, e in exprs.orders:
        out(label, e)
    if scanned:
        outputs["scan.picked"] = compiler.scan("picked")
    plan = _prune(compiler, outputs, rules)
    plan.params = params
    plan.name = str(doc.get(("name",), ""))
    plan.bar = str(doc.get(("data", "bar"), ""))
    return plan


def _conjuncts(compiler: Compiler, node_id: int) -> set[int]:
    """The nodes a condition is the `and` of (itself when it is no `and`)."""
    node = compiler.nodes[node_id]
    if node.op == N.LOGIC and node.attrs == ("and",):
        return set().union(*(_conjuncts(compiler, a) for a in node.args))
    return {node_id}


def _reads_scan(compiler: Compiler, node_id: int) -> bool:
    stack, seen = [node_id], set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = compiler.nodes[i]
        if node.op == N.SCAN:
            return True
        stack.extend(node.args)
    return False


def _without_scan(compiler: Compiler, node_id: int) -> int:
    """A condition's `and`-ed parts that read no scan field (true when every part does):
    `scan.class == "directional" and up` -> `up`."""
    node = compiler.nodes[node_id]
    if node.op == N.LOGIC and node.attrs[0] == "and":
        return compiler._logic("and", _without_scan(compiler, node.args[0]), _without_scan(compiler, node.args[1]))
    return compiler.const(True) if _reads_scan(compiler, node_id) else node_id


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
        elif node.op == N.SCAN:
            inputs.scan.add(node.attrs[0])
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
            "scan": sorted(plan.inputs.scan),
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

"""The expression language's syntax tree: frozen dataclasses, one per construct.

Every node carries a `Span` (character offsets into the expression text) for error messages.
Spans do not take part in equality or hashing, so two structurally equal subexpressions are
equal wherever they were written: the compiler relies on that to share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """Half-open character range [start, end) in the expression text."""

    start: int
    end: int


_NOSPAN = Span(0, 0)


def _span() -> Span:
    return field(default=_NOSPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Node:
    """Base of all syntax nodes."""


@dataclass(frozen=True)
class Number(Node):
    value: float
    span: Span = _span()


@dataclass(frozen=True)
class Bool(Node):
    value: bool
    span: Span = _span()


@dataclass(frozen=True)
class String(Node):
    value: str
    span: Span = _span()


@dataclass(frozen=True)
class TimeOfDay(Node):
    """A wall-clock time such as 09:45, kept as minutes after midnight."""

    minutes: int
    span: Span = _span()


@dataclass(frozen=True)
class Duration(Node):
    """A length of time such as 30s or 5m, kept in seconds."""

    seconds: float
    span: Span = _span()


@dataclass(frozen=True)
class Name(Node):
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Attr(Node):
    """`obj.name`: a leg's field, a position field, another symbol's bar field."""

    obj: Node
    name: str
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Lag(Node):
    """`x[n]`: the value n bars ago. There is no forward indexing in the language."""

    obj: Node
    bars: Node
    span: Span = _span()


@dataclass(frozen=True)
class Keyword(Node):
    name: str
    value: Node
    span: Span = _span()


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Node, ...]
    kwargs: tuple[Keyword, ...] = ()
    span: Span = _span()
    func_span: Span = _span()


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-", "+", "not"
    operand: Node
    span: Span = _span()


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / and or
    left: Node
    right: Node
    span: Span = _span()
    op_span: Span = _span()


@dataclass(frozen=True)
class Compare(Node):
    op: str  # < <= > >= == !=
    left: Node
    right: Node
    span: Span = _span()
    op_span: Span = _span()


@dataclass(frozen=True)
class Between(Node):
    """`x between lo and hi`, both ends inclusive."""

    value: Node
    low: Node
    high: Node
    span: Span = _span()


@dataclass(frozen=True)
class ListOf(Node):
    items: tuple[Node, ...]
    span: Span = _span()


@dataclass(frozen=True)
class In(Node):
    """`x in [a, b]` (or `not in`)."""

    value: Node
    options: ListOf
    negated: bool = False
    span: Span = _span()


def children(node: Node) -> tuple[Node, ...]:
    """The direct subexpressions of a node, in source order."""
    if isinstance(node, Attr):
        return (node.obj,)
    if isinstance(node, Lag):
        return (node.obj, node.bars)
    if isinstance(node, Call):
        return node.args + tuple(k.value for k in node.kwargs)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, (Binary, Compare)):
        return (node.left, node.right)
    if isinstance(node, Between):
        return (node.value, node.low, node.high)
    if isinstance(node, ListOf):
        return node.items
    if isinstance(node, In):
        return (node.value, node.options)
    if isinstance(node, Keyword):
        return (node.value,)
    return ()


def walk(node: Node):
    """Every node of the tree, parents before children."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))

"""Safe YAML loading that remembers where every value came from.

PyYAML is used only to scan and compose; values are built here so that:
- every node's line and column is kept (a `SourceMap` keyed by the node's path),
- a duplicate key is an error naming both lines (PyYAML silently keeps the last one),
- scalars follow YAML 1.2's core schema: `off`/`no`/`yes` stay strings and `15:50` stays the
  string "15:50" (YAML 1.1 would make it the sexagesimal integer 950), dates stay strings,
- `${VAR}` and `${VAR:-default}` are expanded in string scalars, with an error for an unset one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..diagnostics import Diagnostic, DiagnosticError, error

try:  # the C composer is several times faster; fall back quietly where libyaml is missing
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on the platform's wheel
    from yaml import SafeLoader as _BaseLoader

Path_ = tuple  # a node path: keys and list indexes from the document root

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$|^0o[0-7_]+$")
_FLOAT_RE = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"
    r"|^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"
    r"|^[-+]?[0-9][0-9_]*\.$"
    r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_BAD_RE = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\})[^}]*\}?")


@dataclass(frozen=True)
class Mark:
    """Where a node sits in its file: 1-based start and end, and for scalars the style, the
    raw source text and the value's text, so positions inside a value map back to the file."""

    line: int
    col: int
    end_line: int
    end_col: int
    style: str | None = None
    raw: str | None = None
    text: str | None = None


@dataclass
class SourceMap:
    """Marks of values and of mapping keys, keyed by the value's path in the document."""

    values: dict[Path_, Mark] = field(default_factory=dict)
    keys: dict[Path_, Mark] = field(default_factory=dict)

    def value(self, path: Path_) -> Mark | None:
        """The mark of the value at `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            mark = self.values.get(path)
            if mark is not None or not path:
                return mark
            path = path[:-1]

    def key(self, path: Path_) -> Mark | None:
        """The mark of the key that introduces `path` (falls back to the value's mark)."""
        return self.keys.get(tuple(path)) or self.value(path)

    def position_in_value(self, path: Path_, offset: int) -> tuple[int, int]:
        """Line and column in the file of character `offset` of the string value at `path`.

        Works for plain, quoted, literal (|) and folded (>) scalars: the value's characters are
        aligned in order with the raw source text, so an error at column 22 of a multi-line
        folded expression is reported on the YAML line where that character really is.
        """
        mark = self.values.get(tuple(path))
        if mark is None:
            mark = self.value(path)
            return (mark.line, mark.col) if mark else (0, 0)
        if mark.raw is None or mark.text is None:
            return (mark.line, mark.col)
        return _map_offset(mark, offset)


def _map_offset(mark: Mark, offset: int) -> tuple[int, int]:
    raw, value = mark.raw or "", mark.text or ""
    src = 0
    if mark.style in ("|", ">"):  # skip the block scalar's header line
        nl = raw.find("\n")
        src = len(raw) if nl < 0 else nl + 1
    elif mark.style in ("'", '"'):
        src = 1
    offset = max(0, offset)
    index = src
    for i, ch in enumerate(value[: offset + 1]):
        if ch.isspace():
            index = src
            continue
        found = raw.find(ch, src)
        if found < 0:  # an escape sequence we cannot align: stay where we are
            index = src
            continue
        index, src = found, found + 1
    if offset >= len(value):
        index = src  # one past the last character
    return _line_col(mark, raw, index)


def _line_col(mark: Mark, raw: str, index: int) -> tuple[int, int]:
    before = raw[:index]
    newlines = before.count("\n")
    if newlines == 0:
        return (mark.line, mark.col + index)
    return (mark.line + newlines, index - before.rfind("\n"))


_PLAIN = "tag:qtrade,2026:plain"


class _Composer(_BaseLoader):
    """Composes nodes only; plain scalars are tagged as such and typed by `_resolve_plain`
    (YAML 1.2 core schema) when the value is built."""

    def resolve(self, kind, value, implicit):  # noqa: D401 - PyYAML hook
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


def _resolve_plain(text: str) -> Any:
    if _NULL_RE.match(text):
        return None
    if _BOOL_RE.match(text):
        return text.lower() == "true"
    if _INT_RE.match(text):
        clean = text.replace("_", "")
        if clean.startswith(("0x", "0X")):
            return int(clean, 16)
        if clean.startswith(("0o", "0O")):
            return int(clean[2:], 8)
        return int(clean)
    if _FLOAT_RE.match(text):
        clean = text.replace("_", "").lower()
        if clean.endswith(".inf"):
            return -math.inf if clean.startswith("-") else math.inf
        if clean.endswith(".nan"):
            return math.nan
        return float(clean)
    return text


@dataclass
class LoadedYaml:
    """One YAML document: its plain value and the source map of every node in it."""

    path: str
    text: str
    data: Any
    marks: SourceMap


def _mark_of(node: yaml.Node, text: str) -> Mark:
    start, end = node.start_mark, node.end_mark
    if isinstance(node, yaml.ScalarNode):
        return Mark(start.line + 1, start.column + 1, end.line + 1, end.column + 1,
                    node.style, text[start.index:end.index], node.value)
    return Mark(start.line + 1, start.column + 1, end.line + 1, end.column + 1)


MAX_VALUES = 100_000  # values in one document once aliases are expanded (the largest example has ~300)


class _TooManyValues(Exception):
    """Raised out of the builder when aliases expand a document past MAX_VALUES."""


class _Builder:
    def __init__(self, path: str, text: str, env: dict[str, str]):
        self.path = path
        self.text = text
        self.env = env
        self.marks = SourceMap()
        self.problems: list[Diagnostic] = []
        self._active: set[int] = set()
        self._count = 0
        self._keys: list[tuple[Any, Mark]] = []  # the mapping keys above the value being built

    def build(self, node: yaml.Node, where: Path_) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:  # an alias bomb ("billion laughs"): each alias is a full copy
            raise _TooManyValues()
        mark = _mark_of(node, self.text)
        self.marks.values[where] = mark
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, where, mark)
        if id(node) in self._active:
            self.problems.append(error(self.path, mark.line, mark.col,
                                       "recursive YAML alias", "an anchor cannot contain an alias to itself"))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self._check_tag(node, _SEQ, mark)
                return [self.build(child, where + (i,)) for i, child in enumerate(node.value)]
            self._check_tag(node, _MAP, mark)
            return self._mapping(node, where)
        finally:
            self._active.discard(id(node))

    def _check_tag(self, node: yaml.Node, expected: str, mark: Mark) -> None:
        if node.tag not in (expected, None, "!"):
            shown = "!!" + node.tag[len("tag:yaml.org,2002:"):] if node.tag.startswith("tag:yaml.org,2002:") \
                else node.tag
            self.problems.append(error(
                self.path, mark.line, mark.col, f"YAML tag {shown!r} is not allowed",
                "qtrade loads YAML safely: remove the tag (only plain mappings, lists and scalars)"))

    def _mapping(self, node: yaml.MappingNode, where: Path_) -> dict:
        result: dict = {}
        seen: dict[Any, Mark] = {}
        pairs = list(node.value)
        # Merge keys (<<: *anchor) first, so explicit keys override them, as YAML intends.
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in pairs:
            if _is_merge(key_node):
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        merged.extend(source.value)
                    else:
                        m = _mark_of(source, self.text)
                        self.problems.append(error(self.path, m.line, m.col,
                                                   "a merge key (<<) needs a mapping or a list of mappings"))
        explicit = [(k, v) for k, v in pairs if not _is_merge(k)]
        explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
        for key_node, value_node in merged:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in explicit_keys:
                continue
            key = self._key(key_node)
            if key is _BAD or key in result:
                continue
            self._keys.append((key, _mark_of(key_node, self.text)))
            result[key] = self.build(value_node, where + (key,))
            self.marks.keys[where + (key,)] = self._keys.pop()[1]
        for key_node, value_node in explicit:
            key = self._key(key_node)
            if key is _BAD:
                continue
            key_mark = _mark_of(key_node, self.text)
            if key in seen:
                first = seen[key]
                self.problems.append(error(
                    self.path, key_mark.line, key_mark.col,
                    f"duplicate key {key!r} on line {key_mark.line} (first defined on line {first.line})",
                    f"YAML keeps only one of them; delete one of the two {key!r} entries "
                    f"(lines {first.line} and {key_mark.line})"))
                continue
            seen[key] = key_mark
            self._keys.append((key, key_mark))
            result[key] = self.build(value_node, where + (key,))
            self._keys.pop()
            self.marks.keys[where + (key,)] = key_mark
        return result

    def _key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            m = _mark_of(node, self.text)
            self.problems.append(error(self.path, m.line, m.col, "a mapping key must be a plain scalar",
                                       "write the key as a word, e.g. `min_credit:`"))
            return _BAD
        value = _resolve_plain(node.value) if node.tag == _PLAIN else node.value
        if isinstance(value, float) and math.isnan(value):
            return node.value
        return value

    def _scalar(self, node: yaml.ScalarNode, where: Path_, mark: Mark) -> Any:
        if node.tag not in (_PLAIN, _INT, _FLOAT, _BOOL, _NULL):
            self._check_tag(node, _STR, mark)
        text = node.value
        if "${" in text:
            text = self._expand(text, where)
            # Positions inside the value refer to the expanded text from here on.
            self.marks.values[where] = Mark(mark.line, mark.col, mark.end_line, mark.end_col,
                                            mark.style, mark.raw, text)
        if node.tag == _PLAIN or node.tag in (_INT, _FLOAT, _BOOL, _NULL):
            return _resolve_plain(text)
        return text

    def _expand(self, text: str, where: Path_) -> str:
        def replace(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                line, col = self.marks.position_in_value(where, m.start())
                self.problems.append(error(
                    self.path, line, col, f"environment variable {name!r} is not set",
                    f"export {name}=... before running qtrade, or give a default: ${{{name}:-value}}"))
                return ""
            return value

        for bad in _ENV_BAD_RE.finditer(text):
            line, col = self.marks.position_in_value(where, bad.start())
            self.problems.append(error(
                self.path, line, col, f"malformed environment reference {bad.group(0)!r}",
                "write ${NAME} or ${NAME:-default}; NAME is letters, digits and _"))
        return _ENV_RE.sub(replace, text)


_BAD = object()


def _is_merge(node: yaml.Node) -> bool:
    return node.tag == _MERGE or (isinstance(node, yaml.ScalarNode) and node.tag == _PLAIN
                                  and node.value == "<<")


def load_yaml(path: str, text: str | None = None, env: dict[str, str] | None = None) -> LoadedYaml:
    """Load one YAML file into plain values plus a SourceMap; raise DiagnosticError on bad input."""
    display = str(path)
    if text is None:
        try:
            with open(path, encoding="utf-8-sig") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise DiagnosticError([error(display, 0, 0, "file not found")]) from None
        except UnicodeDecodeError as exc:
            line, col = _byte_position(exc.object, exc.start)
            raise DiagnosticError([error(display, line, col,
                                         f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} ({exc.reason})",
                                         "save the file as UTF-8")]) from None
        except OSError as exc:
            raise DiagnosticError([error(display, 0, 0, f"cannot read file: {exc.strerror}")]) from None
    env = dict(os.environ) if env is None else env
    try:
        loader = _Composer(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise DiagnosticError([_yaml_error(display, text, exc)]) from None
    except yaml.reader.ReaderError as exc:  # a control character such as NUL: not text YAML accepts
        index = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, index) + 1
        col = index - (text.rfind("\n", 0, index) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise DiagnosticError([error(display, line, col, f"invalid YAML: control character 0x{code:02x} is not allowed",
                                     "is this a binary file? YAML files are plain UTF-8 text")]) from None
    except yaml.YAMLError as exc:  # pragma: no cover - unmarked errors are rare
        raise DiagnosticError([error(display, 1, 1, f"invalid YAML: {exc}")]) from None
    builder = _Builder(display, text, env)
    try:
        data = None if node is None else builder.build(node, ())
    except _TooManyValues:
        key, mark = builder._keys[0] if builder._keys else (None, _mark_of(node, builder.text))
        what = f"{key!r} expands" if key is not None else "the document expands"
        raise DiagnosticError([error(display, mark.line, mark.col,
                                     f"{what} to more than {MAX_VALUES:,} values through YAML aliases (*name)",
                                     "an alias copies its anchor's whole value each time it is used; "
                                     "nested aliases multiply (a 'billion laughs' document): write the values out")]) from None
    if builder.problems:
        raise DiagnosticError(builder.problems)
    return LoadedYaml(display, text, data, builder.marks)


def _byte_position(data: bytes, index: int) -> tuple[int, int]:
    """1-based line and column (in characters) of byte `index` of undecodable `data`."""
    start = data.rfind(b"\n", 0, index) + 1
    prefix = data[start:index].decode("utf-8", errors="replace")
    return data.count(b"\n", 0, index) + 1, len(prefix) + 1


def _yaml_error(path: str, text: str, exc: yaml.MarkedYAMLError) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = (exc.problem or "invalid YAML").strip()
    hint = ""
    opened = _unclosed_opener(path, text, exc)
    if opened is not None:
        return opened
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source_line[: max(col, 1)] or "found character '\\t'" in problem:
        tab = source_line.find("\t")
        if tab >= 0:
            col = tab + 1
        problem = "tab character used for indentation"
        hint = "YAML indents with spaces only: replace the tab with spaces"
    elif "mapping values are not allowed" in problem:
        hint = "a value containing ': ' must be quoted, e.g. when: \"a: b\"; or check the indentation"
    elif "could not find expected ':'" in problem:
        hint = "each entry of a mapping is `key: value`; check for a missing colon or a stray line"
    elif "did not find expected key" in problem or "expected <block end>" in problem:
        hint = "check the indentation of this line against the lines above it"
    elif "found undefined alias" in problem:
        hint = "define the anchor (&name) before using the alias (*name)"
    elif "expected ',' or ']'" in problem or "expected ',' or '}'" in problem:
        hint = "a flow list or mapping is not closed, or an item needs quoting"
    elif "found unexpected end of stream" in problem:
        hint = "a quoted string or bracket is not closed"
    if exc.context and exc.context not in problem:
        problem = f"{problem} ({exc.context})"
    return error(path, line, col, f"invalid YAML: {problem}", hint)


_CLOSERS = {"[": "]", "{": "}", '"': '"', "'": "'"}


def _unclosed_opener(path: str, text: str, exc: yaml.MarkedYAMLError) -> Diagnostic | None:
    """A bracket or quote left open is found only lines later, where the next key is: report it
    where it was opened, which is where the fix goes."""
    start, found = exc.context_mark, exc.problem_mark
    if start is None or found is None or found.line <= start.line:
        return None
    problem = exc.problem or ""
    if not ("did not find expected ','" in problem or "unexpected end of stream" in problem):
        return None
    opener = text[start.index:start.index + 1] if 0 <= start.index < len(text) else ""
    if opener not in _CLOSERS:
        return None
    hint = f"add the missing {_CLOSERS[opener]!r} (YAML was still inside it at line {found.line + 1})"
    if opener in "[{":
        hint += "; a value containing ',' or ':' inside [...] or {...} must be quoted"
    return error(path, start.line + 1, start.column + 1, f"invalid YAML: this {opener!r} is never closed", hint)

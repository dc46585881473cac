"""Documents: YAML files that say what they are with `kind:`, checked against their schema, with
references to other files (a strategy's universe, a shared risk file, the instruments map)
resolved relative to the referring file.

A `Workspace` loads each file once, follows references, and reports a missing file, a file of
the wrong kind or a reference cycle at the line of the reference that caused it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..diagnostics import Diagnostic, DiagnosticError, Severity, error
from . import schema
from .yamlsource import SourceMap, load_yaml

# Where each kind of document refers to another file: (path in the document, expected kind).
# A "*" stands for every item of a list.
REFERENCES: dict[str, tuple[tuple[tuple, str], ...]] = {
    "strategy": ((("universe",), "universe"), (("universe", "file"), "universe"), (("scanner",), "scanner"),
                 (("scanner", "universe"), "universe"), (("scanner", "universe", "file"), "universe"),
                 (("risk",), "risk"), (("risk", "extends"), "risk"), (("instruments",), "instruments")),
    "universe": ((("instruments",), "instruments"), (("include", "*"), "universe")),
    "scanner": ((("universe",), "universe"), (("universe", "file"), "universe"), (("instruments",), "instruments")),
    "risk": ((("extends",), "risk"),),
    "instruments": (),
}


def bundled_instruments_path() -> Path:
    """The instrument map shipped with qtrade (engine/universes/ when installed, else the source
    tree's universes/), used when a document names none."""
    engine_dir = Path(__file__).resolve().parents[1]
    installed = engine_dir / "universes" / "instruments.yaml"
    return installed if installed.is_file() else engine_dir.parent / "universes" / "instruments.yaml"


@dataclass
class Document:
    """One loaded YAML document with its source positions."""

    path: str            # as the user wrote it (for messages)
    abspath: Path
    data: Any
    marks: SourceMap
    text: str
    kind: str | None = None
    refs: dict[tuple, "Document"] = field(default_factory=dict)  # reference path -> document

    def diag(self, where, message: str, hint: str = "", severity: Severity = Severity.ERROR,
             key: bool = False) -> Diagnostic:
        mark = self.marks.key(tuple(where)) if key else self.marks.value(tuple(where))
        line, col = (mark.line, mark.col) if mark else (1, 1)
        return Diagnostic(self.path, line, col, severity, message, hint)

    def diag_in_value(self, where, offset: int, message: str, hint: str = "",
                      severity: Severity = Severity.ERROR) -> Diagnostic:
        line, col = self.marks.position_in_value(tuple(where), offset)
        if line == 0:
            line, col = 1, 1
        return Diagnostic(self.path, line, col, severity, message, hint)

    def get(self, where, default=None):
        value = self.data
        for part in where:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return default
        return value


def _display(path: Path) -> str:
    """A file as messages name it: relative to the current folder when it is inside it, else its
    absolute path (a `../..` chain depends on where one stands and reads worse)."""
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith(".." + os.sep) and rel != ".." else str(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)


def _expand_ref_paths(data: Any, pattern: tuple) -> Iterator[tuple]:
    """Concrete paths in `data` matching a REFERENCES pattern whose value is a file name."""
    def walk(value, i, prefix):
        if i == len(pattern):
            if isinstance(value, str):
                yield prefix
            return
        part = pattern[i]
        if part == "*":
            if isinstance(value, list):
                for j, item in enumerate(value):
                    yield from walk(item, i + 1, prefix + (j,))
        elif isinstance(value, dict) and part in value:
            yield from walk(value[part], i + 1, prefix + (part,))
    yield from walk(data, 0, ())


class Workspace:
    """Loads documents once each, validates them, and follows their references."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = env
        self.documents: dict[Path, Document] = {}
        self.diagnostics: dict[Path, list[Diagnostic]] = {}
        self.checked: dict[Path, object] = {}    # what the semantic checker made of each document (its model)
        self.warnings: list[Diagnostic] = []     # validate's warnings of the run's strategy (runs print them)
        self._loading: list[Path] = []

    def problems(self) -> list[Diagnostic]:
        seen, out = set(), []
        for diags in self.diagnostics.values():
            for d in diags:
                if d not in seen:
                    seen.add(d)
                    out.append(d)
        return out

    def _add(self, abspath: Path, diags: list[Diagnostic]) -> None:
        self.diagnostics.setdefault(abspath, []).extend(diags)

    def load(self, path: str | os.PathLike, expected_kind: str | None = None) -> Document | None:
        """Load and schema-check one file and everything it references. None if it is unusable."""
        abspath = Path(path).resolve()
        if abspath in self.documents:
            return self.documents[abspath]
        if abspath in self.diagnostics and abspath not in self._loading:
            return None  # already failed; its diagnostics are recorded
        display = _display(abspath)
        try:
            loaded = load_yaml(str(abspath), env=self.env)
        except DiagnosticError as exc:
            self._add(abspath, [self._rename(d, display) for d in exc.diagnostics])
            return None
        doc = Document(display, abspath, loaded.data, loaded.marks, loaded.text)
        diags: list[Diagnostic] = []
        if not isinstance(doc.data, dict):
            what = "the file is empty" if doc.data is None else "expected a mapping with a `kind:` at the top of the file"
            diags.append(error(display, 1, 1, what, f"start the file with `kind: {expected_kind or 'strategy'}`"))
            self._add(abspath, diags)
            return None
        kind = doc.data.get("kind")
        if kind not in schema.KINDS:
            close = difflib.get_close_matches(str(kind), schema.KINDS, n=1)
            if kind is None:
                diags.append(error(display, 1, 1, "missing `kind:`",
                                   f"say what this document is: kind: one of {', '.join(schema.KINDS)}"))
            else:
                diags.append(doc.diag(("kind",), f"unknown kind {kind!r}" +
                                      (f" (did you mean '{close[0]}'?)" if close else ""),
                                      f"kind is one of {', '.join(schema.KINDS)}"))
            self._add(abspath, diags)
            return None
        doc.kind = kind
        diags.extend(schema.validate(kind, doc.data, display, doc.marks))
        self.documents[abspath] = doc
        self._add(abspath, diags)
        self._loading.append(abspath)
        try:
            self._follow(doc)
        finally:
            self._loading.pop()
        return doc

    @staticmethod
    def _rename(d: Diagnostic, display: str) -> Diagnostic:
        return Diagnostic(display, d.line, d.col, d.severity, d.message, d.hint)

    def _follow(self, doc: Document) -> None:
        for pattern, kind in REFERENCES.get(doc.kind, ()):
            for where in _expand_ref_paths(doc.data, pattern):
                target_text = doc.get(where)
                if not str(target_text).lower().endswith((".yaml", ".yml")):
                    continue  # not a file reference (the schema reports bad values)
                self._follow_one(doc, where, target_text, kind)

    def _follow_one(self, doc: Document, where: tuple, target_text: str, kind: str) -> None:
        target = (doc.abspath.parent / os.path.expanduser(target_text)).resolve()
        if target in self._loading:
            chain = self._loading[self._loading.index(target):] + [target]
            shown = " -> ".join(p.name for p in chain)
            self._add(doc.abspath, [doc.diag(where, f"reference cycle: {shown}",
                                             "a file cannot (indirectly) refer to itself; break the cycle")])
            return
        if not target.is_file():
            hint = f"paths are relative to {doc.path}'s folder ({_display(doc.abspath.parent) or '.'})"
            if target.parent.is_dir():
                names = [p.name for p in target.parent.iterdir()
                         if p.suffix in (".yaml", ".yml") and p.resolve() != doc.abspath]
                close = difflib.get_close_matches(target.name, names, n=1)
                if close:
                    hint = f"did you mean '{close[0]}'? " + hint
            self._add(doc.abspath, [doc.diag(where, f"file not found: {target_text}", hint)])
            return
        before = len(self.diagnostics.get(target, []))
        ref = self.load(target, kind)
        if ref is None:
            if not self.diagnostics.get(target) or len(self.diagnostics[target]) == before:
                return
            self._add(doc.abspath, [doc.diag(where, f"{target_text} cannot be used: it has errors",
                                             "see the errors reported for that file")])
            return
        if ref.kind != kind:
            self._add(doc.abspath, [doc.diag(where, f"{target_text} is a {ref.kind} document, expected a {kind}",
                                             f"point this at a file with `kind: {kind}`")])
            return
        doc.refs[where] = ref

    def instruments_for(self, doc: Document) -> Document | None:
        """The instruments map in force for a document: its own reference, its universe's, or the bundled one."""
        for where, ref in doc.refs.items():
            if ref.kind == "instruments":
                return ref
        for where, ref in doc.refs.items():
            if ref.kind in ("universe", "scanner"):
                found = self.instruments_for(ref)
                if found is not None:
                    return found
        return self.load(bundled_instruments_path(), "instruments")

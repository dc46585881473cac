"""`qtrade validate`'s engine: load documents, check schemas and semantics, collect diagnostics."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config.documents import Workspace
from ..diagnostics import Diagnostic, error


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    workspace: Workspace | None = None   # the loaded documents, for callers that go on to run them

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]


def find_documents(paths: list[str]) -> tuple[list[Path], list[Diagnostic]]:
    """YAML files named directly or found by recursing into directories (sorted, no duplicates)."""
    found: list[Path] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            before = len(found)
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files) if f.endswith((".yaml", ".yml")))
            if len(found) == before:
                problems.append(error(str(raw), 0, 0, "no YAML documents (*.yaml, *.yml) in this folder "
                                      "or its subfolders", "give the strategy files, or the folder that holds them"))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(error(str(raw), 0, 0, "no such file or directory"))
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, problems


def validate(paths: list[str], overrides: dict[str, str] | None = None, strict: bool = False,
             env: dict[str, str] | None = None) -> Report:
    """Check every document under `paths` (and the files they reference)."""
    from .semantic import check_document

    files, problems = find_documents(paths)
    ws = Workspace(env=env)
    report = Report(files=[str(f) for f in files], workspace=ws)
    for f in files:
        ws.load(f)
    diags = list(problems) + ws.problems()
    schema_broken = {d.path for d in diags if d.is_error}
    for doc in list(ws.documents.values()):
        diags.extend(check_document(ws, doc, overrides if doc.kind in ("strategy", "scanner") else None,
                                    tolerant=doc.path in schema_broken))
    diags.extend(d for d in ws.problems() if d not in diags)
    if overrides:
        declared = set()
        for doc in ws.documents.values():
            if doc.kind == "strategy":
                declared |= set(doc.get(("params",)) or {})
                declared |= set(doc.get(("scanner", "params")) or {}) if isinstance(doc.get(("scanner",)), dict) \
                    else set()
            elif doc.kind == "scanner":
                declared |= set(doc.get(("params",)) or {})
        for name in overrides:
            if name not in declared:
                import difflib

                close = difflib.get_close_matches(name, sorted(declared), n=1)
                diags.append(error("--set", 0, 0, f"'{name}' is not a param of the strategy or its scanner" +
                                   (f" (did you mean '{close[0]}'?)" if close else ""),
                                   f"--set changes the params declared under params: "
                                   f"({', '.join(sorted(declared)) or 'none here'}); other keys are edited in the "
                                   "file"))
    unique = sorted(set(diags), key=lambda d: (d.path, d.line, d.col, d.message))
    if strict:
        unique = [d.as_error() for d in unique]
    report.diagnostics = unique
    return report

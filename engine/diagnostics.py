"""The one user-facing problem type: a Diagnostic names a file, a position and a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A problem in a user's file: `path:line:col: severity: message` plus a hint.

    Lines and columns are 1-based, as editors show them; 0 means "the whole file".
    """

    path: str
    line: int
    col: int
    severity: Severity
    message: str
    hint: str = ""

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def format(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}" if self.line > 0 else self.path   # 0: the whole file
        text = f"{where}: {self.severity.value}: {self.message}"
        if self.hint:
            text += "".join(f"\n    {line}" for line in self.hint.splitlines())
        return text

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data

    def as_error(self) -> "Diagnostic":
        return Diagnostic(self.path, self.line, self.col, Severity.ERROR, self.message, self.hint)


def error(path: str, line: int, col: int, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(str(path), line, col, Severity.ERROR, message, hint)


def warning(path: str, line: int, col: int, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(str(path), line, col, Severity.WARNING, message, hint)


class DiagnosticError(Exception):
    """Raised to abandon work on one document; carries the diagnostics that explain why."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))

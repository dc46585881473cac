"""The language's types: number series, boolean series, scalars, time, duration, string.

A value is a *series* when it changes from bar to bar (close, ema(close, 8)) and a *scalar*
when it is fixed for the run (a param, a literal). Records (position, a leg, scan results,
another symbol's bars) are names with fields; strings may carry the set of values they can
take (a regime's case names) so a misspelt comparison is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

NUMBER = "number"
BOOL = "boolean"
TIME = "time"
DURATION = "duration"
STRING = "string"
RECORD = "record"
ERROR = "error"  # an expression that already failed: suppresses follow-on errors


@dataclass(frozen=True)
class Type:
    base: str
    series: bool = False
    record: str | None = None  # for RECORD: which record's fields apply
    choices: frozenset[str] | None = None  # for STRING: the values it can take, when known

    def __str__(self) -> str:
        if self.base == RECORD:
            return f"{self.record}"
        if self.base == ERROR:
            return "invalid"
        return f"{self.base} series" if self.series else self.base

    @property
    def is_error(self) -> bool:
        return self.base == ERROR

    def as_series(self, series: bool = True) -> "Type":
        return Type(self.base, series, self.record, self.choices)


NUMBER_SERIES = Type(NUMBER, True)
BOOL_SERIES = Type(BOOL, True)
SCALAR = Type(NUMBER, False)
BOOLEAN = Type(BOOL, False)
TIME_SERIES = Type(TIME, True)
TIME_OF_DAY = Type(TIME, False)
DURATION_SCALAR = Type(DURATION, False)
DURATION_SERIES = Type(DURATION, True)
STRING_SCALAR = Type(STRING, False)
INVALID = Type(ERROR)


def record(name: str) -> Type:
    return Type(RECORD, False, name)


def strings(values, series: bool = True) -> Type:
    return Type(STRING, series, None, frozenset(values))


def describe(t: Type) -> str:
    """A phrase for messages: 'a number series', 'a boolean', 'position'."""
    text = str(t)
    if t.base == RECORD:
        return f"`{text}` (a record: use one of its fields)"
    return ("an " if text[0] in "aeiou" else "a ") + text

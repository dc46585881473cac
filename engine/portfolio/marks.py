"""Marks: the last known price of a symbol at a time, the close of its last bar closed by then
(its first open before any bar has closed). The kernel's ledger and the simulated venue's account
mark positions this way, so the two agree at every instant.

Symbols that share one timeline (the same bar ends, as daily bars on one calendar do) share one
look-up: at an instant, one search finds the last closed bar of all of them. Times mostly move
forward by a bar or so between two looks, so the last answer is where the next search starts.
"""

from __future__ import annotations

import numpy as np

from ..market.series import SymbolBars


class LastClose:
    def __init__(self, bars: dict[str, SymbolBars]):
        self.bars = bars
        self._line: dict[str, int] = {}           # symbol -> its timeline
        self._ends: list[np.ndarray] = []         # per timeline: its bar ends
        self._seen: list[tuple[int, int]] = []    # per timeline: (last bar closed by t, t) of the last look
        self._members: list[list[str]] = []       # per timeline: its symbols
        self._stacked: list[tuple | None] = []    # per timeline: its symbols' closes side by side, made when first read
        self._slot: dict[str, int] = {}           # symbol -> its column on its timeline
        lines: dict[tuple, list[int]] = {}
        for symbol, b in bars.items():
            end = b.end
            key = (len(end), int(end[0]), int(end[-1])) if len(end) else (0, 0, 0)
            line = next((i for i in lines.get(key, ()) if self._ends[i] is end or np.array_equal(self._ends[i], end)),
                        None)
            if line is None:
                line = len(self._ends)
                self._ends.append(end)
                self._seen.append((-1, -(1 << 62)))
                self._members.append([])
                self._stacked.append(None)
                lines.setdefault(key, []).append(line)
            self._line[symbol] = line
            self._slot[symbol] = len(self._members[line])
            self._members[line].append(symbol)

    def line(self, symbol: str) -> int:
        """The timeline a symbol's bars are on (symbols on one share its look-ups)."""
        return self._line[symbol]

    def slot(self, symbol: str) -> int:
        """A symbol's place among its timeline's symbols (its column in closes_at)."""
        return self._slot[symbol]

    def members(self) -> list[list[str]]:
        """Each timeline's symbols, in their slots' order."""
        return self._members

    def bar(self, symbol: str, at: int) -> int:
        """The last bar of `symbol` closed by `at` (ns), -1 when none has closed yet."""
        return self._bar(self._line[symbol], at)

    def _bar(self, line: int, at: int) -> int:
        k, seen = self._seen[line]
        if seen == at:
            return k
        end = self._ends[line]
        n = len(end)
        if seen < at and (k + 1 >= n or end[k + 1] > at):
            pass
        elif seen < at and (k + 2 >= n or end[k + 2] > at):
            k += 1
        else:
            k = int(end.searchsorted(at, "right")) - 1
        self._seen[line] = (k, at)
        return k

    def closes_at(self, line: int, at: int) -> np.ndarray:
        """The marks at `at` of a timeline's symbols, by slot: their closes at its last bar closed
        by then, found once for all of them (one row of their stacked closes)."""
        return self._row(line, self._bar(line, at))

    def _row(self, line: int, k: int) -> np.ndarray:
        """The closes at bar k of a timeline's symbols (their first opens before any bar closed)."""
        stacked = self._stacked[line]
        if stacked is None:
            members = self._members[line]
            stacked = self._stacked[line] = (np.column_stack([self.bars[s].close for s in members]),
                                             np.array([self.bars[s].open[0] for s in members], dtype=np.float64))
        closes, first = stacked
        return closes[k] if k >= 0 else first

    def price(self, symbol: str, at: int) -> float:
        """The symbol's mark at `at`: its last close by then, else its first open."""
        k = self.bar(symbol, at)
        b = self.bars[symbol]
        return float(b.close[k]) if k >= 0 else float(b.open[0])

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
                lines.setdefault(key, []).append(line)
            self._line[symbol] = line

    def bar(self, symbol: str, at: int) -> int:
        """The last bar of `symbol` closed by `at` (ns), -1 when none has closed yet."""
        line = self._line[symbol]
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

    def price(self, symbol: str, at: int) -> float:
        """The symbol's mark at `at`: its last close by then, else its first open."""
        k = self.bar(symbol, at)
        b = self.bars[symbol]
        return float(b.close[k]) if k >= 0 else float(b.open[0])

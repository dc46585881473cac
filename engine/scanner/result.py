"""A scanner's results at its scan times: each name's status, rank, score, grade, class and
factors (raw, normalised, contribution), and why a name was not picked, in words.

Statuses, from the best: picked; scored but not in the top N; scored below min_score; passed
the prefilter without a value for every factor (warm-up, a missing input); dropped by the
prefilter; stale data (its latest bar closed a bar or more before the scan); no bar yet; no data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .compile import ScanPlan, number

PICKED, BEYOND, BELOW, NO_VALUE, PREFILTER, STALE, NOT_YET, NO_DATA = range(8)
STATUS = ("picked", "not in the top", "below min_score", "no factor value", "dropped by the prefilter", "stale data",
          "no data yet", "no data")


@dataclass
class ScanResult:
    plan: ScanPlan
    symbols: tuple[str, ...]
    times: np.ndarray               # the scans, ns UTC (a bar close each)
    status: np.ndarray              # scans x symbols, one of PICKED ... NO_DATA
    score: np.ndarray
    rank: np.ndarray
    picked: np.ndarray
    grade: np.ndarray
    klass: np.ndarray
    raw: dict[str, np.ndarray]
    norm: dict[str, np.ndarray]
    contribution: dict[str, np.ndarray]
    index: np.ndarray               # each symbol's latest bar closed by the scan (-1: none)
    age: np.ndarray                 # how long before the scan that bar closed, ns
    ends: dict[str, np.ndarray]     # each symbol's bar closes
    gathered: dict[int, np.ndarray]
    source: str = ""                # where the bars came from (for "no data")
    timezone: str = "America/New_York"
    bar_seconds: float = 86400.0
    late: dict = field(default_factory=dict)   # (scan time, symbol) -> why a live scan ran without its bar

    def extend(self, more: "ScanResult") -> None:
        """The scans of `more` (the same scanner over the same symbols, later times: a live run's
        scan at a bar close) appended after these; the symbols' bar closes become `more`'s."""
        if more.symbols != self.symbols:
            raise ValueError("a scan is extended by scans of the same symbols")
        if len(self.times) and len(more.times) and int(more.times[0]) <= int(self.times[-1]):
            raise ValueError("a scan is extended by later scans only")
        self.times = np.concatenate([self.times, more.times])
        for name in ("status", "score", "rank", "picked", "index", "age"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(more, name)]))
        for name in ("grade", "klass"):
            a, b = getattr(self, name), getattr(more, name)
            width = max(a.dtype.itemsize, b.dtype.itemsize) // 4 or 1
            setattr(self, name, np.concatenate([a.astype(f"<U{width}"), b.astype(f"<U{width}")]))
        for name in ("raw", "norm", "contribution", "gathered"):
            mine, theirs = getattr(self, name), getattr(more, name)
            for key in mine:
                mine[key] = np.concatenate([mine[key], theirs[key]])
        self.ends = dict(more.ends)
        self.late.update(more.late)

    @property
    def spec(self):
        return self.plan.spec

    def at(self, time: int) -> int:
        """The scan rules read at `time` (ns UTC): the latest at or before it; -1 before the first."""
        return int(np.searchsorted(self.times, int(time), side="right")) - 1

    # ---- words -------------------------------------------------------------------------------
    def when(self, time: int) -> str:
        """A bar close as a trader reads it: the bar's date on daily bars, else the local time."""
        t = pd.Timestamp(int(time), tz="UTC").tz_convert(self.timezone)
        if self.bar_seconds >= 86400:
            return f"{(t - pd.Timedelta(seconds=self.bar_seconds)):%Y-%m-%d} close"
        return f"{t:%Y-%m-%d %H:%M}"

    def _bar_time(self, symbol: str, i: int) -> str:
        end = int(self.ends[symbol][i])
        t = pd.Timestamp(end - int(self.bar_seconds * 1e9), tz="UTC").tz_convert(self.timezone)
        return f"{t:%Y-%m-%d}" if self.bar_seconds >= 86400 else f"{t:%Y-%m-%d %H:%M}"

    def statuses(self, e: int) -> np.ndarray:
        """Every symbol's status at scan e; before the first scan (e < 0), no data yet or none."""
        if e >= 0:
            return self.status[e]
        return np.array([NOT_YET if s in self.ends and len(self.ends[s]) else NO_DATA for s in self.symbols],
                        dtype=np.int8)

    def reason(self, e: int, s: int) -> str:
        """Why symbol s is where it is at scan e, in words."""
        spec = self.spec
        code = int(self.statuses(e)[s])
        symbol = self.symbols[s]
        if code == PICKED:
            return f"picked: rank {int(self.rank[e, s])}, score {self.score[e, s]:.1f}"
        if code == BEYOND:
            return f"not in the top {spec.top} (rank {int(self.rank[e, s])})"
        if code == BELOW:
            return f"score {self.score[e, s]:.1f} below min_score {number(spec.min_score)}"
        if code == NO_VALUE:
            return self._no_value(e, s)
        if code == PREFILTER:
            return "dropped by the prefilter: " + "; ".join(self._failed(e, s, values=True))
        late = self.late.get((int(self.times[e]), symbol)) if e >= 0 else None
        if late is not None:
            return late
        if code == STALE:
            return f"stale data: its last bar is {self._bar_time(symbol, int(self.index[e, s]))}, " \
                   f"{self._age(int(self.age[e, s]))} before the scan"
        if code == NOT_YET:
            return f"no data yet: its bars start {self._bar_time(symbol, 0)}"
        return f"no data: no bars for {symbol}" + (f" in {self.source}" if self.source else "")

    def _age(self, ns: int) -> str:
        days = ns / 86400e9
        if days >= 1:
            return f"{days:.0f} day{'s' * (round(days) != 1)}"
        minutes = ns / 60e9
        return f"{minutes:.0f} min" if minutes >= 1 else f"{ns / 1e9:.0f} s"

    def _no_value(self, e: int, s: int) -> str:
        nodes = self.plan.plan.nodes
        for name, node_id in self.plan.factors:
            if not np.isfinite(self.raw[name][e, s]):
                need = nodes[node_id].warmup + 1
                have = int(self.index[e, s]) + 1
                if have < need:
                    return f"no value for factor {name}: warming up ({have} of the {need} bars it needs)"
                return f"no value for factor {name} at this bar (an input it reads has none)"
        return "no value for a factor"

    def _failed(self, e: int, s: int, values: bool) -> list[str]:
        """The prefilter's parts that failed: "volume 8e5 < 1e6" (with values) or "volume < 1e6"."""
        nodes = self.plan.plan.nodes
        out = []
        for c in self.plan.prefilter:
            held = self.gathered[c.node][e, s] if c.node in self.gathered else bool(nodes[c.node].attrs[0])
            if held:
                continue
            if c.op is None:
                out.append(c.label)
                continue
            sides = []
            for side in (c.left, c.right):
                node = nodes[side]
                sides.append((node.label, self.gathered[side][e, s] if side in self.gathered else node.attrs[0],
                              node.op == "const"))
            missing = next((label for label, v, const in sides if not const and isinstance(v, float) and v != v), None)
            if missing is not None:
                out.append(f"no value for {missing}")
            elif not values:
                out.append(c.label)
            else:
                shown = [number(v) if const else f"{label} {number(v) if isinstance(v, float) else v}"
                         for label, v, const in sides]
                out.append(f"{shown[0]} {c.op} {shown[1]}")
        return out or ["the prefilter is false"]

    def explanation(self, e: int) -> str:
        """One line: how many were picked of how many, and where the others went, with counts:
        "0 passed the prefilter: 41 had volume < 1e6, 9 had close > 1000, 3 had no data"."""
        spec = self.spec
        row = self.statuses(e)
        counts = np.bincount(row, minlength=len(STATUS))
        picked = int(counts[PICKED])
        passed = int(counts[PICKED] + counts[BEYOND] + counts[BELOW] + counts[NO_VALUE])
        parts = []
        if counts[BEYOND]:
            parts.append(f"{counts[BEYOND]} not in the top {spec.top}")
        if counts[BELOW]:
            parts.append(f"{counts[BELOW]} scored below min_score {number(spec.min_score)}")
        if counts[NO_VALUE]:
            parts.append(f"{counts[NO_VALUE]} had no value for a factor yet")
        if counts[PREFILTER]:
            groups: dict[str, int] = {}
            for s in np.flatnonzero(row == PREFILTER).tolist():
                label = self._failed(e, s, values=False)[0]
                groups[label] = groups.get(label, 0) + 1
            parts += [f"{n} had {label}" for label, n in sorted(groups.items(), key=lambda g: (-g[1], g[0]))]
        for code, words in ((STALE, "had stale data"), (NOT_YET, "had no data yet"), (NO_DATA, "had no data")):
            if counts[code]:
                parts.append(f"{counts[code]} {words}")
        head = "0 passed the prefilter" if passed == 0 else f"{picked} of {len(self.symbols)} picked"
        return head + (": " + ", ".join(parts) if parts else "")

    # ---- rows --------------------------------------------------------------------------------
    def rows(self, e: int) -> list[dict]:
        """Every symbol at scan e: the scored ones by rank, then the others by status and name."""
        out = []
        codes = self.statuses(e)
        for s, symbol in enumerate(self.symbols):
            code = int(codes[s])
            scored = code in (PICKED, BEYOND, BELOW)
            row = {"symbol": symbol, "status": STATUS[code], "picked": bool(code == PICKED),
                   "rank": int(self.rank[e, s]) if scored else None,
                   "score": float(self.score[e, s]) if scored else None,
                   "grade": str(self.grade[e, s]) if scored else "", "class": str(self.klass[e, s]) if scored else "",
                   "factors": {}, "reason": self.reason(e, s)}
            for f in self.spec.factors:
                raw = self.raw[f.name][e, s] if e >= 0 else np.nan
                row["factors"][f.name] = {
                    "raw": float(raw) if np.isfinite(raw) else None,
                    "score": float(self.norm[f.name][e, s]) if scored else None,
                    "contribution": float(self.contribution[f.name][e, s]) if scored else None}
            out.append((code, row["rank"] or 0, symbol, row))
        out.sort(key=lambda t: (t[0] > BELOW, t[1] if t[0] <= BELOW else t[0], t[2]))
        return [row for *_, row in out]

    def reason_no_scan(self, symbol: str) -> str:
        if symbol not in self.ends:
            return f"no data: no bars for {symbol}" + (f" in {self.source}" if self.source else "")
        return "no scan yet: the scan's first bar has not closed"

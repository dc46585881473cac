"""Kernels over many symbols at once: one bar of every symbol per step (a row of width S).

Each class holds the running state of one kernel for S symbols side by side (numpy arrays of
width S) and `step(*rows, mask)` takes one bar per symbol and returns the row of outputs. `mask`
says which symbols' bar takes part: a symbol whose bar is missing from the row (no bar at this
step) or has a NaN in any input keeps its state untouched and gets NaN, which is the gap rule of
`gaps.py` in its streaming form. So a symbol's column of outputs is its own series' values
whatever the other columns do.

The arithmetic is TA-Lib's, operation for operation (the SMA running total, the SMA-seeded
EMA/Wilder recursions, RSI's seeded averages, ROC's x/prev - 1), so a column equals the 1-D
TA-Lib kernel on that symbol's bars to the bit (tests/test_batched.py checks every kernel here
against `KERNELS[name].func`, with gaps, leading NaNs and ragged starts). `run(*arrays, valid)`
steps through a whole time x symbol history and leaves the state at its end, ready for `step`.

Kernels without a batched form here are evaluated per symbol by their 1-D function (and, for
bar-by-bar updates, by one scalar stream per symbol): see engine/plan/batched.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from . import params as P

_NAN = np.nan


def _masked(mask: np.ndarray) -> np.ndarray | None:
    """None when every symbol takes part (the ufuncs then need no `where`)."""
    return None if mask.all() else mask


class Batched(ABC):
    """Base: `run` over a history, `step` for one row (each kernel defines `step`)."""

    inputs = 1

    def __init__(self, width: int):
        self.width = width

    def run(self, *arrays: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Every row of a (T, S) history in turn; `valid` (T, S) marks the bars that take part
        besides the NaN rule (False: the symbol has no bar at that row)."""
        rows = arrays[0].shape[0]
        out = np.full((rows, self.width), _NAN)
        ok = valid.copy()
        for a in arrays:
            ok &= ~np.isnan(a)
        anyrow = ok.any(axis=1)
        for r in np.flatnonzero(anyrow).tolist():
            out[r] = self.step(*(a[r] for a in arrays), mask=ok[r])
        return out

    def update(self, *rows: np.ndarray, has_bar: np.ndarray | None = None) -> np.ndarray:
        """One new bar per symbol (has_bar False: that symbol has none this step)."""
        ok = np.ones(self.width, dtype=bool) if has_bar is None else has_bar.copy()
        for r in rows:
            ok &= ~np.isnan(r)
        if not ok.any():
            return np.full(self.width, _NAN)
        return self.step(*rows, mask=ok)

    @abstractmethod
    def step(self, *rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One bar per symbol: the row of outputs; symbols outside `mask` keep their state and get NaN."""


class _Ring:
    """The last `size` values of each symbol's own series (a slot per symbol by its count)."""

    def __init__(self, size: int, width: int):
        self.size = size
        self.buf = np.zeros((size, width))
        self.count = np.zeros(width, dtype=np.int64)
        self.cols = np.arange(width)

    def push(self, x: np.ndarray, mask: np.ndarray | None) -> None:
        if mask is None:
            self.buf[self.count % self.size, self.cols] = x
            self.count += 1
        else:
            c = self.cols[mask]
            self.buf[self.count[c] % self.size, c] = x[mask]
            self.count[c] += 1

    def back(self, k: int) -> np.ndarray:
        """Each symbol's value k pushes before its newest (valid where count > k)."""
        return self.buf[(self.count - 1 - k) % self.size, self.cols]


class SMA(Batched):
    """TA-Lib SMA: total += x; out = total / n; total -= the value n-1 bars back."""

    def __init__(self, width, length):
        super().__init__(width)
        self.n = P.window(length, minimum=2)
        self.total = np.zeros(width)
        self.ring = _Ring(self.n, width)

    def step(self, x, mask):
        m = _masked(mask)
        np.add(self.total, x, out=self.total, where=True if m is None else m)
        self.ring.push(x, m)
        full = self.ring.count >= self.n
        ready = full if m is None else full & m
        out = np.where(ready, self.total / self.n, _NAN)
        oldest = self.ring.back(self.n - 1)
        np.subtract(self.total, oldest, out=self.total, where=ready)
        return out


class _Exp(Batched):
    """SMA-seeded recursion: the plain mean of the first n values, then (x - prev) * k + prev."""

    def __init__(self, width, n, k):
        super().__init__(width)
        self.n, self.k = n, k
        self.count = np.zeros(width, dtype=np.int64)
        self.seed = np.zeros(width)
        self.prev = np.full(width, _NAN)

    def step(self, x, mask):
        n = self.n
        seeding = (self.count < n) & mask
        running = (self.count >= n) & mask
        if running.any():
            np.copyto(self.prev, (x - self.prev) * self.k + self.prev, where=running)
        if seeding.any():
            np.add(self.seed, x, out=self.seed, where=seeding)
            self.count[seeding] += 1
            seeded = seeding & (self.count == n)
            np.copyto(self.prev, self.seed / n, where=seeded)
            running |= seeded
        return np.where(running, self.prev, _NAN)


class EMA(_Exp):
    def __init__(self, width, length):
        n = P.window(length, minimum=2)
        super().__init__(width, n, 2.0 / (n + 1))


class RMA(_Exp):
    def __init__(self, width, length):
        n = P.window(length, minimum=2)
        super().__init__(width, n, 1.0 / n)


class Change(Batched):
    """x - x n bars back."""

    def __init__(self, width, length=1):
        super().__init__(width)
        self.n = P.window(length, minimum=1)
        self.ring = _Ring(self.n + 1, width)

    def _ready(self, x, mask):
        m = _masked(mask)
        self.ring.push(x, m)
        ready = self.ring.count > self.n
        return (ready if m is None else ready & m), self.ring.back(self.n)

    def step(self, x, mask):
        ready, prev = self._ready(x, mask)
        return np.where(ready, x - prev, _NAN)


class ROC(Change):
    """TA-Lib ROC: (x / prev - 1) * 100, and 0 where prev is 0."""

    def step(self, x, mask):
        ready, prev = self._ready(x, mask)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (x / prev - 1.0) * 100.0
        out[prev == 0.0] = 0.0
        return np.where(ready, out, _NAN)


class RSI(Batched):
    """TA-Lib RSI: the plain mean of the first n gains and losses, then
    avg = (avg * (n-1) + new) / n; 100 * gain / (gain + loss), 0 when both are 0."""

    def __init__(self, width, length=14):
        super().__init__(width)
        self.n = P.window(length, minimum=2)
        self.prev = np.zeros(width)
        self.started = np.zeros(width, dtype=bool)
        self.count = np.zeros(width, dtype=np.int64)
        self.gain = np.zeros(width)
        self.loss = np.zeros(width)

    def step(self, x, mask):
        n = self.n
        first = mask & ~self.started
        on = mask & self.started
        d = x - self.prev
        np.copyto(self.prev, x, where=mask)
        self.started |= first
        up = np.where(d < 0, 0.0, d)
        down = np.where(d < 0, d, 0.0)
        seeding = on & (self.count < n)
        running = on & (self.count >= n)
        if running.any():
            np.copyto(self.loss, (self.loss * (n - 1) - down) / n, where=running)
            np.copyto(self.gain, (self.gain * (n - 1) + up) / n, where=running)
        if seeding.any():
            np.subtract(self.loss, down, out=self.loss, where=seeding)
            np.add(self.gain, up, out=self.gain, where=seeding)
            self.count[seeding] += 1
            seeded = seeding & (self.count == n)
            np.copyto(self.loss, self.loss / n, where=seeded)
            np.copyto(self.gain, self.gain / n, where=seeded)
            running |= seeded
        s = self.gain + self.loss
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(s != 0.0, 100.0 * (self.gain / s), 0.0)
        return np.where(running, out, _NAN)


def _true_range(h, l, pc):
    out = h - l
    t = np.abs(h - pc)
    out = np.where(t > out, t, out)
    t = np.abs(l - pc)
    return np.where(t > out, t, out)


class TR(Batched):
    """TA-Lib TRANGE: max(h - l, |h - c[t-1]|, |l - c[t-1]|); none on a symbol's first bar."""

    inputs = 3

    def __init__(self, width):
        super().__init__(width)
        self.pc = np.zeros(width)
        self.started = np.zeros(width, dtype=bool)

    def _tr(self, h, l, c, mask):
        on = mask & self.started
        t = _true_range(h, l, self.pc)
        np.copyto(self.pc, c, where=mask)
        self.started |= mask
        return t, on

    def step(self, h, l, c, mask):
        t, on = self._tr(h, l, c, mask)
        return np.where(on, t, _NAN)


class ATR(TR):
    """TA-Lib ATR: the mean of TR over a symbol's bars 1..n, then (atr * (n-1) + tr) / n."""

    def __init__(self, width, length=14):
        super().__init__(width)
        self.n = P.window(length, minimum=1)
        self.count = np.zeros(width, dtype=np.int64)
        self.total = np.zeros(width)
        self.prev = np.full(width, _NAN)

    def step(self, h, l, c, mask):
        t, on = self._tr(h, l, c, mask)
        n = self.n
        if n == 1:
            return np.where(on, t, _NAN)
        seeding = on & (self.count < n)
        running = on & (self.count >= n)
        if running.any():
            np.copyto(self.prev, (self.prev * (n - 1) + t) / n, where=running)
        if seeding.any():
            np.add(self.total, t, out=self.total, where=seeding)
            self.count[seeding] += 1
            seeded = seeding & (self.count == n)
            np.copyto(self.prev, self.total / n, where=seeded)
            running |= seeded
        return np.where(running, self.prev, _NAN)


class _Extreme(Batched):
    """The max (min) of a symbol's last n values (TA-Lib MAX / MIN)."""

    def __init__(self, width, length, fn):
        super().__init__(width)
        self.n = P.window(length, minimum=2)
        self.ring = _Ring(self.n, width)
        self.fn = fn

    def step(self, x, mask):
        m = _masked(mask)
        self.ring.push(x, m)
        ready = self.ring.count >= self.n
        ready = ready if m is None else ready & m
        if not ready.any():
            return np.full(self.width, _NAN)
        return np.where(ready, self.fn(self.ring.buf, axis=0), _NAN)


class Highest(_Extreme):
    def __init__(self, width, length):
        super().__init__(width, length, np.max)


class Lowest(_Extreme):
    def __init__(self, width, length):
        super().__init__(width, length, np.min)


BATCHED: dict[str, type] = {
    "sma": SMA, "ema": EMA, "rma": RMA, "change": Change, "roc": ROC, "rsi": RSI, "tr": TR, "atr": ATR,
    "highest": Highest, "lowest": Lowest,
}

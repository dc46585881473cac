"""Clocks: what drives the kernel in time order.

A clock holds processes (generators that yield `(time, phase)` before each step: a symbol's
history feed, a timer) and runs each step when its time comes, in (time, phase, order) order so
that at one instant timers run first, then decisions at a close, then fills at an open, then
fills inside a bar. SimClock runs them as fast as it can (a backtest, a replay); WallClock waits
for each step's time on the wall clock, optionally `speed` times faster than real time (a replay
at --speed, and the live loop where the broker's bars arrive as time passes).
"""

from __future__ import annotations

import heapq
import time as _time
from typing import Callable, Iterator

TIMER, CLOSE, OPEN, INTRABAR = -1, 0, 1, 2


class SimClock:
    def __init__(self, progress: Callable[[int], None] | None = None):
        self.now = 0
        self.progress = progress
        self._heap: list = []
        self._order = 0
        self.steps = 0
        self.on_time: Callable[[int], None] | None = None   # told the time before the first step at each
                                                            # instant (the venue)

    def add(self, proc: Iterator[tuple[int, int]]) -> None:
        """A process: it yields (time, phase) before each of its steps."""
        first = next(proc, None)
        if first is not None:
            self._order += 1
            heapq.heappush(self._heap, (first[0], first[1], self._order, proc))

    def at(self, time: int, action: Callable[[], None]) -> None:
        """A timer: `action` runs at `time`, before the bars' events of that instant."""
        def proc():
            yield time, TIMER
            action()
        self.add(proc())

    def run(self) -> None:
        """Every process's steps in (time, phase, order) order. A process whose next step still
        comes first (the only one live, or ahead of the rest) runs on without going through the
        heap; else it goes in and the first one comes out, in one step (heappushpop: no two
        entries compare equal, their orders differ)."""
        heap = self._heap
        on_time, progress = self.on_time, self.progress
        wait = self._wait if type(self)._wait is not SimClock._wait else None    # a SimClock never waits
        pushpop = heapq.heappushpop
        steps = self.steps
        told = None         # the time on_time was last told (steps at one instant tell it once)
        try:
            while heap:
                t, _, order, proc = heapq.heappop(heap)
                while True:
                    if wait is not None:
                        wait(t)
                    self.now = t
                    if on_time is not None and t != told:
                        on_time(t)
                        told = t
                    nxt = next(proc, None)
                    steps += 1
                    if progress is not None and steps % 1024 == 0:
                        progress(t)
                    if nxt is None:
                        break
                    if heap:
                        t, _, order, proc = pushpop(heap, (nxt[0], nxt[1], order, proc))
                    else:
                        t = nxt[0]
        finally:
            self.steps = steps

    def _wait(self, t: int) -> None:
        pass


class WallClock(SimClock):
    """Steps at their time on the wall clock: the first step's time is now, later ones follow at
    `speed` x real time (1: live)."""

    def __init__(self, speed: float = 1.0, progress: Callable[[int], None] | None = None,
                 sleep: Callable[[float], None] = _time.sleep, monotonic: Callable[[], float] = _time.monotonic):
        super().__init__(progress)
        if not speed > 0:
            raise ValueError("speed must be above 0")
        self.speed = speed
        self._sleep, self._monotonic = sleep, monotonic
        self._origin: tuple[int, float] | None = None
        self.waited = 0.0

    def _wait(self, t: int) -> None:
        if self._origin is None:
            self._origin = (t, self._monotonic())
            return
        due = self._origin[1] + (t - self._origin[0]) / 1e9 / self.speed
        delay = due - self._monotonic()
        if delay > 0:
            self.waited += delay
            self._sleep(delay)

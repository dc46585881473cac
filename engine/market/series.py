"""SymbolBars: one symbol's bars and its contract facts as arrays, the form the run reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SymbolBars:
    """One symbol's bars and its contract facts, as arrays (times are UTC nanoseconds)."""

    symbol: str
    start: np.ndarray     # bar start times
    end: np.ndarray       # bar end times (when the bar's close is known)
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    session: np.ndarray   # session id per bar
    multiplier: float = 1.0
    tick_size: float = 0.01
    margined: bool = False      # futures-like accounting
    margin: float = 0.0         # initial margin per contract (futures)
    contracts: bool = False     # commission per contract

    def __len__(self) -> int:
        return len(self.close)

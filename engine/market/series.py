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
    maintenance: float = 0.0    # maintenance margin per contract (futures)
    # a futures root stitched from per-contract history (market.futures): per bar, the local
    # symbol of the contract it is the bar of (the front month then), and each contract's own
    # bars at these bars' times (futures.aligned: an open of NaN where that contract did not trade)
    front: tuple | None = None
    held: dict | None = None
    last_trade: dict | None = None   # local symbol -> its last trade date
    expiry_bar: dict | None = None   # local symbol -> the bar at whose close a position in it is settled (the
                                     # last bar on or before its last trade date, when a later bar follows)
    roll_bar: dict | None = None     # local symbol -> the first close after its roll date (the date at the close,
                                     # in the timezone), when a bar follows: a position in it is rolled then
    roll_to: tuple | None = None     # per bar: the front month at its close, which a roll at that close goes
                                     # into (None: a contract the data has no bars of)

    def __len__(self) -> int:
        return len(self.close)

    def contract_at(self, k: int) -> str:
        """The local symbol of the contract bar k is of ('' when the bars are not per contract)."""
        return self.front[k] if self.front is not None else ""

    def of(self, contract: str) -> "SymbolBars":
        """The bars of `contract` at these bars' times (these bars themselves for '')."""
        return self.held[contract] if contract and self.held is not None else self

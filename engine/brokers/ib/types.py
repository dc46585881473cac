"""Values the IB broker's components hand each other."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resolved:
    """One exact IB contract, carried everywhere from its resolution on (positions, market data,
    history, orders, journal): never rebuilt from a local symbol."""

    symbol: str                      # qtrade's name for it: the ticker, or the futures root (NQ)
    con_id: int
    local_symbol: str                # NQZ5, SPY, SPXW  251219P05800000
    sec_type: str                    # STK | IND | FUT | OPT
    exchange: str
    currency: str
    multiplier: float                # 1 for stocks, 20 for NQ, 100 for an equity option
    trading_class: str = ""
    min_tick: float = 0.01
    last_trade_date: dt.date | None = None
    contract: Any = None             # the qualified ib_async Contract

"""IB's market scanner as a scanner's candidate source: one request per rescan.

A request is a scanner subscription (reqScannerSubscription with the scan code, instrument,
location and rows, and the filters as TagValue filter options), held until IB's first list has
come (scannerDataEnd), then cancelled: the candidates are that list, not a stream. IB answers the
cancel with a 162 ("API scanner subscription cancelled"), which is the cancel done, not a failure;
any other 162 on the request (an unknown scan code, a location IB does not scan, too many
subscriptions) is the request's failure, said in IB's words. Requests are paced: one at a time,
at least `min_interval` seconds apart (IB allows 10 scanner subscriptions at once and counts each
against its 50 messages a second).

Each row IB lists becomes a candidate when it is of the scan's instrument, has no suffix of the
names IB lists but nobody can trade (an OTC/bankrupt "Q" stock, .CVR, .W, .WS, .OLD), and
resolves through the instrument map to the contract IB listed; the others are dropped, each with
its reason.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from typing import Callable

NON_TRADABLE = (".CVR", ".WS", ".W", ".OLD")


class ScanError(Exception):
    """IB's scanner did not answer the request (its reason in IB's words, or a time-out)."""


@dataclass(frozen=True)
class Candidate:
    symbol: str
    rank: int                         # IB's rank, 0 first
    con_id: int
    value: str = ""                   # IB's projection: the ranked figure (a % change, a volume)


@dataclass(frozen=True)
class ScanList:
    """One answer of IB's scanner: the candidates in IB's order, the rows dropped (symbol, why),
    the wall seconds from the request to the list, and how many rows IB sent."""

    candidates: tuple[Candidate, ...]
    dropped: tuple[tuple[str, str], ...]
    seconds: float
    rows: int

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(c.symbol for c in self.candidates)


def non_tradable(symbol: str, sec_type: str) -> str | None:
    """Why a name IB lists cannot be traded (None: it can): the suffixes FIELD_NOTES.md lists;
    a trailing Q marks an OTC or bankrupt stock only on a stock's 5-letter ticker (QQQ is fine)."""
    upper = symbol.upper()
    for suffix in NON_TRADABLE:
        if upper.endswith(suffix):
            return f"a {suffix} name (not tradable)"
    if sec_type == "STK" and len(upper) == 5 and upper.isalpha() and upper.endswith("Q"):
        return "a 5-letter ticker ending in Q (an OTC or bankrupt stock)"
    return None


def subscription_of(source):
    """The ib_async request of a typed source (check.scan_model.IBScannerSource): the
    ScannerSubscription and the TagValue filter options."""
    from ib_async import ScannerSubscription, TagValue

    sub = ScannerSubscription(numberOfRows=int(source.rows), instrument=source.instrument,
                              locationCode=source.location, scanCode=source.scan_code)
    return sub, [TagValue(tag, f"{value:g}" if tag != "volumeAbove" else str(int(value)))
                 for tag, value in source.filters]


class MarketScanner:
    def __init__(self, ib, resolve: Callable[[str], object], sleep: Callable[[float], None], *,
                 monotonic: Callable[[], float] = _time.monotonic, min_interval: float = 1.0,
                 timeout: float = 10.0):
        self.ib = ib
        self.resolve = resolve
        self.sleep = sleep                # pumps IB's messages while it waits
        self.monotonic = monotonic
        self.min_interval = min_interval
        self.timeout = timeout
        self._last = -float("inf")
        self.requests = 0
        self.seconds: list[float] = []

    def scan(self, source) -> ScanList:
        """IB's list now for `source` (its candidates and the rows dropped); ScanError when IB
        refuses the request or says nothing in `timeout` seconds."""
        wait = self._last + self.min_interval - self.monotonic()
        if wait > 0:
            self.sleep(wait)
        sub, filters = subscription_of(source)
        failed: list[str] = []
        done = {"list": False}
        req: dict = {}

        def on_error(req_id, code, text, contract) -> None:
            if req and req_id == req["id"] and not done["list"] and code not in (2104, 2106, 2158):
                failed.append(f"IB {code}: {text}")

        self.ib.errorEvent += on_error
        t0 = self.monotonic()
        self._last = t0
        self.requests += 1
        data = None
        try:
            data = self.ib.reqScannerSubscription(sub, [], filters)
            req["id"] = data.reqId

            def on_list(_):
                done["list"] = True

            data.updateEvent += on_list
            deadline = t0 + self.timeout
            while not done["list"] and not failed and self.monotonic() < deadline:
                self.sleep(0.02)
            seconds = self.monotonic() - t0
            if failed:
                raise ScanError(f"{source.describe()}: {failed[0]}")
            if not done["list"]:
                raise ScanError(f"{source.describe()}: no answer in {self.timeout:g} s")
            rows = list(data)
        finally:
            self.ib.errorEvent -= on_error
            if data is not None and not failed:
                # answered with a 162 "API scanner subscription cancelled": the cancel done
                self.ib.cancelScannerSubscription(data)
            self._last = self.monotonic()
        self.seconds.append(seconds)
        return self._candidates(rows, source, seconds)

    def _candidates(self, rows, source, seconds: float) -> ScanList:
        out: list[Candidate] = []
        dropped: list[tuple[str, str]] = []
        seen: set[str] = set()
        for row in rows:
            c = row.contractDetails.contract
            symbol = str(c.symbol)
            if symbol in seen:
                continue
            seen.add(symbol)
            if c.secType != source.instrument:
                dropped.append((symbol, f"a {c.secType}, not a {source.instrument}"))
                continue
            why = non_tradable(symbol, c.secType)
            if why:
                dropped.append((symbol, why))
                continue
            try:
                resolved = self.resolve(symbol)
            except Exception as exc:     # noqa: BLE001 - a name IB or the map cannot resolve is dropped, said
                dropped.append((symbol, f"not resolved: {exc}"))
                continue
            if resolved.sec_type != c.secType or (c.conId and resolved.con_id and int(resolved.con_id) != int(c.conId)):
                dropped.append((symbol, f"the instrument map makes {symbol} the {resolved.sec_type} "
                                        f"{resolved.local_symbol} (conId {resolved.con_id}), not the "
                                        f"{c.secType} IB listed (conId {c.conId})"))
                continue
            out.append(Candidate(symbol, int(row.rank), int(c.conId or 0), str(row.projection or "")))
        return ScanList(tuple(out), tuple(dropped), seconds, len(rows))


__all__ = ["Candidate", "MarketScanner", "ScanError", "ScanList", "non_tradable", "subscription_of"]

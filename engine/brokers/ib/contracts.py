"""instruments.yaml + IB's contract details -> the exact contract (`Resolved`).

* Stocks and indices by symbol, exchange and currency (a stock's primary_exchange where SMART is
  ambiguous).
* Futures by root, trading class and multiplier: every listed contract of the root
  (includeExpired=False), those whose tradingClass and multiplier match the instrument map (NQ
  and MNQ apart), then the front month: the first contract whose last trade date, less
  `roll_days` trading days of the root's calendar (the root's own `roll_days` in the instrument
  map, else the broker's), is today or later (engine/market/futures.py's rule, the one a backtest
  stitches a root's per-contract history by). The conId and local symbol
  are carried from then on; a futures contract is never rebuilt from a local symbol.
* Options: `option_params(underlying)` from reqSecDefOptParams (expirations, strikes, trading
  class, multiplier, exchanges) and `option(underlying, expiry, strike, right)` from contract
  details.
* A BAG (combo) is never looked up: IB answers 321 or nothing. Combos are built from their legs'
  conIds by the order side.

Every answer is cached for the session, failures that IB gave (200, ambiguous) too; a timeout or
a dropped connection is not cached. A futures resolution is cached per day (the roll moves it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import yaml

from engine.market.futures import front_month, roll_date  # noqa: F401 - roll_date: the rule, re-exported

from .types import Resolved

UNSET = 1.7976931348623157e308
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ContractError(Exception):
    """A contract IB cannot give; the message says which and what to change. `transient` is
    True for a timeout or a lost connection (worth asking again later)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class OptionParams:
    underlying: str
    underlying_con_id: int
    trading_class: str
    multiplier: float
    exchanges: tuple[str, ...]
    expirations: tuple[dt.date, ...]
    strikes: tuple[float, ...]


def load_instruments(path=None) -> dict:
    """universes/instruments.yaml (the bundled copy when `path` is None) as a plain mapping."""
    if path is None:
        from engine.config.documents import bundled_instruments_path
        path = bundled_instruments_path()
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("roots", {}), dict):
        raise ContractError(f"{path}: not an instrument map (expected 'defaults' and 'roots' mappings)")
    return data


def instrument_spec(instruments: dict, symbol: str) -> dict:
    """A symbol's entry in the instrument map over the defaults of its security type (STK when the
    map does not say)."""
    roots = instruments.get("roots") or {}
    own = roots.get(symbol) or roots.get(symbol.upper()) or {}
    sec_type = str(own.get("sec_type", "STK")).upper()
    defaults = (instruments.get("defaults") or {}).get(sec_type) or {}
    spec = {**defaults, **own, "sec_type": sec_type}
    if "options" in defaults and "options" in own:
        spec["options"] = {**defaults["options"], **(own["options"] or {})}
    return spec


def parse_ib_date(text: str) -> dt.date | None:
    """IB's YYYYMMDD (a time after it is ignored); None for empty or a bare YYYYMM."""
    text = (text or "").strip().split(" ")[0]
    if len(text) != 8 or not text.isdigit():
        return None
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def choose_future(symbol: str, spec: dict, details: Iterable, today: dt.date, roll_days: int = 0,
                  calendar=None):
    """The front-month contract details among `details` (a root's listed futures) for the
    instrument map's trading class and multiplier; raises ContractError."""
    root = spec.get("symbol", symbol)
    exchange = spec.get("exchange", "")
    want_class = spec.get("trading_class") or ""
    want_mult = spec.get("multiplier")
    listed = [d for d in details if d.contract.secType == "FUT"]
    kept = [d for d in listed
            if (not want_class or d.contract.tradingClass == want_class)
            and (want_mult is None or _multiplier(d.contract.multiplier, "FUT") == float(want_mult))]
    if not kept:
        wanted = " and ".join(p for p in (f"trading class {want_class}" if want_class else "",
                                           f"multiplier {float(want_mult):g}" if want_mult is not None else "") if p)
        text = (f"{symbol}: IB has no futures contract for root {root}{' with ' + wanted if wanted else ''} "
                f"on {exchange} (IB 200)")
        kinds = _kinds(listed)
        if kinds:
            text += f"; it lists {kinds}: fix trading_class and multiplier in instruments.yaml"
        raise ContractError(text)
    if len({(d.contract.tradingClass, _multiplier(d.contract.multiplier, "FUT")) for d in kept}) > 1:
        raise ContractError(f"{symbol}: IB lists more than one kind of futures contract for root {root} on "
                            f"{exchange} ({_kinds(kept)}); give trading_class and multiplier in instruments.yaml")
    dated = []
    for d in kept:
        last = parse_ib_date(d.contract.lastTradeDateOrContractMonth) or parse_ib_date(d.realExpirationDate)
        if last is not None:
            dated.append((last, d.contract.conId, d))
    dated.sort(key=lambda x: (x[0], x[1]))
    front = front_month([last for last, _, _ in dated], today, roll_days, calendar)
    if front is not None:
        return dated[front][2]
    months = ", ".join(f"{d.contract.localSymbol} ({last:%Y-%m-%d})" for last, _, d in dated) or "none with a date"
    raise ContractError(f"{symbol}: every listed {root} contract is past its roll date on {today:%Y-%m-%d} "
                        f"(roll {roll_days} trading days before the last trade date; listed: {months})")


def _kinds(details) -> str:
    seen = sorted({(d.contract.tradingClass, _multiplier(d.contract.multiplier, "FUT")) for d in details})
    return ", ".join(f"trading class {tc} x{m:g}" for tc, m in seen)


def _multiplier(text, sec_type: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return 100.0 if sec_type == "OPT" else 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def _price(value, fallback: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return fallback
    return v if math.isfinite(v) and 0 < v < UNSET else fallback


class Contracts:
    def __init__(self, ib, instruments: dict, roll_days: int = 0, timeout: float = 10.0,
                 today: Callable[[], dt.date] = dt.date.today):
        if roll_days < 0:
            raise ValueError(f"roll_days cannot be negative, not {roll_days}")
        self.ib = ib
        self.instruments = instruments
        self.roll_days = int(roll_days)
        self.timeout = float(timeout)
        self.today = today
        self._cache: dict[tuple, Resolved | ContractError] = {}
        self._params: dict[tuple, OptionParams | ContractError] = {}
        self._calendars: dict[str, object] = {}

    # ------------------------------------------------------------------ public
    def resolve(self, symbol: str) -> Resolved:
        """The exact contract for qtrade's `symbol` (a ticker, an index, or a futures root)."""
        spec = instrument_spec(self.instruments, symbol)
        sec_type = spec["sec_type"]
        key = (symbol, self.today()) if sec_type == "FUT" else (symbol,)
        return self._cached(self._cache, key, lambda: self._resolve(symbol, spec))

    def by_con_id(self, symbol: str, con_id: int) -> Resolved:
        """The contract `con_id` of qtrade's `symbol`, asked of IB by its conId (the contract a
        position is held in, which may no longer be the front month): never rebuilt from a local
        symbol."""
        from ib_async import Contract

        spec = instrument_spec(self.instruments, symbol)

        def look_up() -> Resolved:
            details = self._details(Contract(conId=int(con_id), exchange=spec.get("exchange", "")),
                                    f"{symbol} (conId {con_id})")
            if not details:
                raise ContractError(f"{symbol}: IB knows no contract with conId {con_id} (IB 200)")
            return self._resolved(symbol, spec, details[0], spec.get("exchange", ""))
        return self._cached(self._cache, (symbol, "conId", int(con_id)), look_up)

    def cached(self, symbol: str) -> Resolved | None:
        """What resolve() already answered for `symbol`, without asking IB."""
        for key, value in self._cache.items():
            if key[0] == symbol and len(key) < 3 and isinstance(value, Resolved):   # not a by_con_id() answer
                return value
        return None

    def option_params(self, underlying: str, trading_class: str | None = None) -> OptionParams:
        """The option listing of `underlying` for one trading class: the one given, else the
        instrument map's options.trading_class, else the only one IB lists (for a stock, the
        class named like the stock)."""
        key = (underlying, trading_class, self.today())
        return self._cached(self._params, key, lambda: self._option_params(underlying, trading_class))

    def option(self, underlying: str, expiry: str, strike: float, right: str,
               trading_class: str | None = None) -> Resolved:
        """One option from its underlying, expiry 'YYYY-MM-DD', strike and right 'C' or 'P'."""
        right = {"CALL": "C", "PUT": "P"}.get(str(right).upper(), str(right).upper())
        if right not in ("C", "P"):
            raise ContractError(f"{underlying} option: right must be 'C' or 'P', not {right!r}")
        try:
            if not _ISO_DAY.match(str(expiry)):
                raise ValueError
            day = dt.date.fromisoformat(str(expiry))
        except ValueError:
            raise ContractError(f"{underlying} option: expiry must be YYYY-MM-DD, not {expiry!r}") from None
        key = ("OPT", underlying, day, float(strike), right, trading_class)
        return self._cached(self._cache, key, lambda: self._option(underlying, day, float(strike), right,
                                                                    trading_class))

    # ------------------------------------------------------------------ resolution
    def _cached(self, store: dict, key: tuple, make):
        hit = store.get(key)
        if isinstance(hit, ContractError):
            raise hit
        if hit is not None:
            return hit
        try:
            value = make()
        except ContractError as exc:
            if not exc.transient:
                store[key] = exc
            raise
        store[key] = value
        return value

    def _resolve(self, symbol: str, spec: dict) -> Resolved:
        from ib_async import Future, Index, Stock

        sec_type = spec["sec_type"]
        currency = spec.get("currency", "USD")
        if sec_type == "STK":
            query = Stock(symbol, spec.get("exchange", "SMART"), currency,
                          primaryExchange=spec.get("primary_exchange", ""))
            return self._single(symbol, spec, query, "stock", "give primary_exchange in instruments.yaml")
        if sec_type == "IND":
            if not spec.get("exchange"):
                raise ContractError(f"{symbol}: an index needs its exchange in instruments.yaml (e.g. CBOE)")
            query = Index(symbol, spec["exchange"], currency)
            return self._single(symbol, spec, query, "index", "give its exchange in instruments.yaml")
        if sec_type == "FUT":
            if not spec.get("exchange"):
                raise ContractError(f"{symbol}: a futures root needs its exchange in instruments.yaml (e.g. CME)")
            query = Future(symbol=symbol, exchange=spec["exchange"], currency=currency)
            query.includeExpired = False
            details = self._details(query, symbol)
            roll = spec.get("roll_days")
            front = choose_future(symbol, spec, details, self.today(), self.roll_days if roll is None else int(roll),
                                  self._calendar(spec.get("calendar")))
            return self._resolved(symbol, spec, front, query.exchange)
        if sec_type == "BAG":
            raise ContractError(f"{symbol}: a combo (BAG) is never looked up at IB (it answers 321 or nothing); "
                                f"it is built from its legs' conIds")
        raise ContractError(f"{symbol}: sec_type {sec_type} is not supported here (STK, IND, FUT; options through "
                            f"option())")

    def _single(self, symbol: str, spec: dict, query, noun: str, fix: str) -> Resolved:
        details = self._details(query, symbol)
        if not details:
            raise ContractError(f"{symbol}: IB has no {noun} {symbol} on {query.exchange} in {query.currency} "
                                f"(IB 200); check the symbol, exchange and currency in instruments.yaml")
        if len(details) > 1:
            where = ", ".join(sorted({d.contract.primaryExchange or d.contract.exchange for d in details}))
            raise ContractError(f"{symbol}: IB lists {len(details)} {noun} contracts for {symbol} on {query.exchange} "
                                f"in {query.currency} ({where}); {fix}")
        return self._resolved(symbol, spec, details[0], query.exchange)

    def _resolved(self, symbol: str, spec: dict, details, exchange: str) -> Resolved:
        c = details.contract
        if not c.exchange:
            c.exchange = exchange
        return Resolved(
            symbol=symbol, con_id=int(c.conId), local_symbol=c.localSymbol, sec_type=c.secType,
            exchange=c.exchange, currency=c.currency, multiplier=_multiplier(c.multiplier, c.secType),
            trading_class=c.tradingClass, min_tick=_price(details.minTick, float(spec.get("tick_size", 0.01))),
            last_trade_date=(parse_ib_date(c.lastTradeDateOrContractMonth) or parse_ib_date(details.realExpirationDate))
            if c.secType in ("FUT", "OPT") else None,
            contract=c)

    def _option_params(self, underlying: str, trading_class: str | None) -> OptionParams:
        und = self.resolve(underlying)
        if und.sec_type not in ("STK", "IND"):
            raise ContractError(f"{underlying}: options on a {und.sec_type} underlying are not supported (STK, IND)")
        chains = self._run(lambda: self.ib.reqSecDefOptParamsAsync(und.symbol, "", und.sec_type, und.con_id),
                           f"{underlying} option parameters")
        by_class: dict[str, list] = {}
        for ch in chains:
            by_class.setdefault(ch.tradingClass, []).append(ch)
        if not by_class:
            raise ContractError(f"{underlying}: IB lists no options on {underlying}")
        spec = instrument_spec(self.instruments, underlying)
        wanted = trading_class or (spec.get("options") or {}).get("trading_class")
        if wanted:
            if wanted not in by_class:
                raise ContractError(f"{underlying}: IB lists no options of trading class {wanted} (it lists "
                                    f"{', '.join(sorted(by_class))}); fix options.trading_class in instruments.yaml")
            tc = wanted
        elif len(by_class) == 1:
            tc = next(iter(by_class))
        elif und.sec_type == "STK" and underlying in by_class:
            tc = underlying
        else:
            raise ContractError(f"{underlying}: IB lists options of several trading classes "
                                f"({', '.join(sorted(by_class))}); give options.trading_class in instruments.yaml")
        rows = by_class[tc]
        expirations = sorted({d for ch in rows for d in map(parse_ib_date, ch.expirations) if d is not None})
        strikes = sorted({float(k) for ch in rows for k in ch.strikes if math.isfinite(float(k))})
        return OptionParams(underlying=underlying, underlying_con_id=und.con_id, trading_class=tc,
                            multiplier=_multiplier(rows[0].multiplier, "OPT"),
                            exchanges=tuple(sorted({ch.exchange for ch in rows})), expirations=tuple(expirations),
                            strikes=tuple(strikes))

    def _option(self, underlying: str, day: dt.date, strike: float, right: str,
                trading_class: str | None) -> Resolved:
        from ib_async import Option

        spec = instrument_spec(self.instruments, underlying)
        opt = spec.get("options") or {}
        tc = trading_class or opt.get("trading_class") or ""
        mult = opt.get("multiplier")
        query = Option(symbol=underlying, lastTradeDateOrContractMonth=day.strftime("%Y%m%d"), strike=strike,
                       right=right, exchange=opt.get("exchange", "SMART"), currency=spec.get("currency", "USD"),
                       multiplier=f"{float(mult):g}" if mult is not None else "", tradingClass=tc)
        name = f"{underlying} {day:%Y-%m-%d} {strike:g}{right}"
        details = self._details(query, name)
        if not details:
            raise ContractError(f"{name}: IB has no such option{' of trading class ' + tc if tc else ''} on "
                                f"{query.exchange} (IB 200); option_params() lists the expirations and strikes")
        if len(details) > 1:
            classes = ", ".join(sorted({d.contract.tradingClass for d in details}))
            raise ContractError(f"{name}: IB lists {len(details)} such options ({classes}); give trading_class")
        d = details[0]
        return replace(self._resolved(name, spec, d, query.exchange), symbol=d.contract.localSymbol or name)

    # ------------------------------------------------------------------ IB requests
    def _details(self, query, what: str) -> list:
        errors: list[tuple[int, str]] = []

        def on_error(req_id, code, text, contract):
            if contract is query:
                errors.append((code, text))
        self.ib.errorEvent += on_error
        try:
            details = self._run(lambda: self.ib.reqContractDetailsAsync(query), what)
        finally:
            self.ib.errorEvent -= on_error
        failures = [(c, t) for c, t in errors if c != 200]
        if not details and failures:
            from .codes import describe
            raise ContractError(f"{what}: {describe(*failures[0])}")
        return list(details or [])

    def _run(self, request, what: str):
        """ib.run(request()) within the timeout; `request` makes the awaitable (ib_async raises
        ConnectionError already when it takes a request id while disconnected)."""
        from ib_async import RequestError

        try:
            return self.ib.run(asyncio.wait_for(request(), self.timeout))
        except (asyncio.TimeoutError, TimeoutError):
            raise ContractError(f"{what}: IB did not answer the contract look-up within {self.timeout:g} s; "
                                f"it is asked again on the next use", transient=True) from None
        except ConnectionError:
            raise ContractError(f"{what}: not connected to IB; the contract is looked up again after the reconnect",
                                transient=True) from None
        except RequestError as exc:
            if exc.code == 200:
                return []
            from .codes import describe
            raise ContractError(f"{what}: {describe(exc.code, exc.message)}") from None

    def _calendar(self, name: str | None):
        if not name:
            return None
        if name not in self._calendars:
            from engine.market.calendars import get_calendar
            self._calendars[name] = get_calendar(name)
        return self._calendars[name]

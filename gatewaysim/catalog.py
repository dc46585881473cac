"""The simulator's security master: every contract it can quote and trade, with IB-looking
contract details, and the matching rules of reqContractDetails.

What is listed:
  stocks    every symbol with bars that universes/instruments.yaml does not call IND or FUT;
            options on each (expiries and strike grid from the yaml's `options` block)
  indices   IND roots of the yaml with bars of their own or a proxy (SPX from XSP x 10)
  futures   FUT roots with bars or a proxy (MNQ follows NQ, MES/ES follow SPX): the next
            three contract months of the root's cycle, each expiring on its month's third
            Friday, priced from the root's bars plus a carry of 5 % a year for the later ones

conIds are IB's real ones for a few well-known contracts and otherwise a stable hash of the
contract's description (the same contract has the same conId on every run).
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

MONTH_CODES = "FGHJKMNQUVXZ"
KNOWN_CONIDS = {("AAPL", "STK"): 265598, ("SPY", "STK"): 756733, ("INTC", "STK"): 270639,
                ("MSFT", "STK"): 272093, ("QQQ", "STK"): 320227571, ("SPX", "IND"): 416904,
                ("VIX", "IND"): 13455763, ("XSP", "IND"): 37671839, ("NDX", "IND"): 416843}
PRIMARY = {"AAPL": "NASDAQ", "INTC": "NASDAQ", "MSFT": "NASDAQ", "QQQ": "NASDAQ", "CSCO": "NASDAQ",
           "SPY": "ARCA", "IWM": "ARCA", "GLD": "ARCA"}
# Roots priced from another root's bars when they have none of their own: (source, factor).
PROXIES = {"SPX": ("XSP", 10.0), "ES": ("SPX", 1.0), "MES": ("ES", 1.0), "MNQ": ("NQ", 1.0),
           "NDX": ("NQ", 1.0), "XSP": ("SPX", 0.1)}
BAG_CONID = 28812380
CARRY = 0.05


@dataclass
class Instrument:
    conId: int
    symbol: str
    secType: str
    exchange: str  # listing exchange
    currency: str = "USD"
    localSymbol: str = ""
    tradingClass: str = ""
    multiplier: float = 1.0
    minTick: float = 0.01
    lastTradeDate: str = ""  # YYYYMMDD for FUT/OPT
    strike: float = 0.0
    right: str = ""
    longName: str = ""
    underConId: int = 0
    underSymbol: str = ""
    underSecType: str = ""
    price_source: str = ""  # symbol whose bars price it
    price_factor: float = 1.0
    carry_days: int = 0  # futures: days past the front contract (for the carry)
    valid_exchanges: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def multiplier_text(self) -> str:
        """IB sends no multiplier for stocks and indices, the contract size for the rest."""
        if self.secType in ("STK", "IND"):
            return ""
        m = self.multiplier
        return str(int(m)) if m == int(m) else repr(m)

    @property
    def contract_month(self) -> str:
        return self.lastTradeDate[:6]

    @property
    def wire_exchange(self) -> str:
        return "SMART" if self.secType in ("STK", "OPT") else self.exchange

    def contract_fields(self, exchange: str | None = None) -> list:
        """The 12-field order used by openOrder/execDetails/completedOrder (no primaryExchange)."""
        return [self.conId, self.symbol, self.secType, self.lastTradeDate, self.strike, self.right,
                self.multiplier_text, exchange or self.wire_exchange, self.currency, self.localSymbol,
                self.tradingClass]

    def describe(self) -> str:
        if self.secType == "OPT":
            return f"{self.symbol} {self.lastTradeDate} {self.strike:g}{self.right}"
        if self.secType == "FUT":
            return f"{self.localSymbol} ({self.lastTradeDate})"
        return self.symbol


def stable_conid(*parts) -> int:
    return 500_000_000 + zlib.crc32("|".join(map(str, parts)).encode()) % 400_000_000


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    offset = (4 - first.weekday()) % 7
    return first + dt.timedelta(days=offset + 14)


def future_months(today: dt.date, months: str, count: int = 3) -> list[dt.date]:
    """The next `count` expiries (third Fridays) of the cycle `months` (e.g. HMUZ) after today."""
    out: list[dt.date] = []
    year, month = today.year, today.month
    while len(out) < count:
        if MONTH_CODES[month - 1] in months:
            expiry = third_friday(year, month)
            if expiry >= today:
                out.append(expiry)
        month += 1
        if month > 12:
            year, month = year + 1, 1
    return out


def option_expiries(today: dt.date, cycle: str) -> list[dt.date]:
    """Listed expiries: daily (the next five weekdays, then Fridays for four weeks), weekly (the
    next four Fridays) or monthly (the next three third Fridays)."""
    if cycle == "monthly":
        out, (y, m) = [], (today.year, today.month)
        while len(out) < 3:
            f = third_friday(y, m)
            if f >= today:
                out.append(f)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return out
    days = set()
    d = today
    if cycle == "daily":
        while len(days) < 5:
            if d.weekday() < 5:
                days.add(d)
            d += dt.timedelta(days=1)
    d = today
    fridays = 0
    while fridays < 4:
        if d.weekday() == 4:
            days.add(d)
            fridays += 1
        d += dt.timedelta(days=1)
    return sorted(days)


def load_instrument_map(path: Path | None = None) -> dict:
    """universes/instruments.yaml (the copy installed with the engine, else the source tree's)."""
    if path is None:
        from engine.config.documents import bundled_instruments_path
        path = bundled_instruments_path()
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


class Catalog:
    """All listed contracts by conId, plus the option-chain parameters per underlying."""

    def __init__(self):
        self.by_conid: dict[int, Instrument] = {}
        self.chains: dict[int, dict] = {}  # underlying conId -> {exchange, tradingClass, multiplier, expiries, strikes}

    def add(self, inst: Instrument) -> Instrument:
        if inst.conId in self.by_conid and self.by_conid[inst.conId] is not inst:
            raise ValueError(f"conId {inst.conId} listed twice ({self.by_conid[inst.conId].describe()}, {inst.describe()})")
        self.by_conid[inst.conId] = inst
        return inst

    def underlyings(self) -> list[Instrument]:
        return [i for i in self.by_conid.values() if i.secType in ("STK", "IND")]

    def get(self, conId: int) -> Instrument | None:
        return self.by_conid.get(conId)

    def symbol(self, symbol: str) -> Instrument | None:
        for inst in self.by_conid.values():
            if inst.symbol == symbol and inst.secType in ("STK", "IND"):
                return inst
        return None

    def front_future(self, symbol: str, trading_class: str = "", exchange: str = "") -> list[Instrument]:
        futs = [i for i in self.by_conid.values() if i.secType == "FUT" and i.symbol == symbol
                and (not trading_class or i.tradingClass == trading_class)
                and (not exchange or exchange == "SMART" or exchange == i.exchange)]
        by_class: dict[str, Instrument] = {}
        for f in sorted(futs, key=lambda i: i.lastTradeDate):
            by_class.setdefault(f.tradingClass, f)
        return list(by_class.values())

    def match(self, c: dict) -> list[Instrument]:
        """reqContractDetails' matching: conId exact, else every non-empty field filters."""
        if c["conId"]:
            inst = self.by_conid.get(c["conId"])
            return [inst] if inst else []
        sec = c["secType"].upper()
        if sec == "CONTFUT":
            fronts = self.front_future(c["symbol"], c["tradingClass"], c["exchange"])
            if c["multiplier"]:
                fronts = [f for f in fronts if _same_number(c["multiplier"], f.multiplier)]
            return [replace(f, secType="CONTFUT") for f in fronts]
        right = {"CALL": "C", "PUT": "P"}.get(c["right"].upper(), c["right"].upper())
        out = []
        for inst in self.by_conid.values():
            if c["symbol"] and inst.symbol != c["symbol"].upper():
                continue
            if sec and inst.secType != sec:
                continue
            if c["currency"] and inst.currency != c["currency"].upper():
                continue
            if c["localSymbol"] and inst.localSymbol != c["localSymbol"]:
                continue
            if c["tradingClass"] and inst.tradingClass != c["tradingClass"]:
                continue
            if c["multiplier"] and not _same_number(c["multiplier"], inst.multiplier):
                continue
            if c["strike"] and abs(c["strike"] - inst.strike) > 1e-9:
                continue
            if right and inst.right != right:
                continue
            if c["lastTradeDateOrContractMonth"] and not inst.lastTradeDate.startswith(c["lastTradeDateOrContractMonth"]):
                continue
            ex = c["exchange"].upper()
            if ex and ex != "SMART" and ex != inst.exchange and ex not in inst.valid_exchanges:
                continue
            if c["primaryExchange"] and inst.secType == "STK" and c["primaryExchange"].upper() != inst.exchange:
                continue
            out.append(inst)
        out.sort(key=lambda i: (i.secType, i.symbol, i.lastTradeDate, i.right, i.strike))
        return out


def _same_number(text: str, value: float) -> bool:
    try:
        return abs(float(text) - value) < 1e-9
    except ValueError:
        return False


def build_catalog(symbols: list[str], prices: dict[str, float], today: dt.date,
                  instrument_map: dict | None = None, vendor=None) -> Catalog:
    """The catalog for the symbols that have bars (`prices` holds each one's price at the start,
    for the option strike grids)."""
    imap = instrument_map if instrument_map is not None else load_instrument_map()
    roots = imap.get("roots") or {}
    stk_defaults = ((imap.get("defaults") or {}).get("STK") or {})
    have = set(symbols)
    cat = Catalog()

    def source_of(sym: str, depth: int = 0) -> tuple[str, float] | None:
        if sym in have:
            return sym, 1.0
        if sym in PROXIES and depth < 4:
            src, factor = PROXIES[sym]
            inner = source_of(src, depth + 1)
            if inner:
                return inner[0], inner[1] * factor
        return None

    def price_of(sym: str) -> float | None:
        src = source_of(sym)
        return prices[src[0]] * src[1] if src else None

    underlyings: list[tuple[Instrument, dict]] = []
    for sym in sorted(have):
        spec = roots.get(sym) or {}
        if spec.get("sec_type", "STK") != "STK":
            continue
        inst = cat.add(Instrument(
            conId=KNOWN_CONIDS.get((sym, "STK")) or stable_conid(sym, "STK"), symbol=sym, secType="STK",
            exchange=spec.get("primary_exchange") or PRIMARY.get(sym, "NYSE"), currency=spec.get("currency", "USD"),
            localSymbol=sym, tradingClass="NMS" if PRIMARY.get(sym) == "NASDAQ" else sym,
            minTick=float(spec.get("tick_size", stk_defaults.get("tick_size", 0.01))), longName=spec.get("description", sym.upper()),
            price_source=sym, valid_exchanges=("SMART", "NYSE", "NASDAQ", "ARCA", "ISLAND", "BATS", "IEX")))
        underlyings.append((inst, spec.get("options") or stk_defaults.get("options") or {}))
    for sym, spec in sorted(roots.items()):
        kind = spec.get("sec_type")
        src = source_of(sym)
        if src is None or kind not in ("IND", "FUT"):
            continue
        if kind == "IND":
            inst = cat.add(Instrument(
                conId=KNOWN_CONIDS.get((sym, "IND")) or stable_conid(sym, "IND"), symbol=sym, secType="IND",
                exchange=spec.get("exchange", "CBOE"), currency=spec.get("currency", "USD"), localSymbol=sym,
                tradingClass=sym, minTick=0.01, longName=spec.get("description", sym), price_source=src[0],
                price_factor=src[1], valid_exchanges=(spec.get("exchange", "CBOE"),)))
            if spec.get("options"):
                underlyings.append((inst, spec["options"]))
        else:
            expiries = future_months(today, spec.get("months", "HMUZ"))
            for expiry in expiries:
                local = f"{sym}{MONTH_CODES[expiry.month - 1]}{expiry.year % 10}"
                cat.add(Instrument(
                    conId=stable_conid(sym, "FUT", expiry.isoformat(), spec.get("trading_class", sym)), symbol=sym,
                    secType="FUT", exchange=spec.get("exchange", "CME"), currency=spec.get("currency", "USD"),
                    localSymbol=local, tradingClass=spec.get("trading_class", sym),
                    multiplier=float(spec.get("multiplier", 1)), minTick=float(spec.get("tick_size", 0.25)),
                    lastTradeDate=expiry.strftime("%Y%m%d"), longName=spec.get("description", sym),
                    price_source=src[0], price_factor=src[1], carry_days=(expiry - expiries[0]).days,
                    valid_exchanges=(spec.get("exchange", "CME"),)))
    for und, opt in underlyings:
        if vendor and und.symbol in vendor:
            _add_vendor_options(cat, und, opt, vendor[und.symbol])
            continue
        price = price_of(und.symbol) if und.secType == "IND" else prices.get(und.symbol)
        if not price or price <= 0 or not opt:
            continue
        _add_options(cat, und, opt, price, today)
    return cat


def _add_options(cat: Catalog, und: Instrument, opt: dict, price: float, today: dt.date) -> None:
    step = float(opt.get("strike_step", 1))
    while price / step > 400:  # keep the grid to a sane number of strikes
        step *= 5
    atm = round(price / step) * step
    strikes = sorted({round(atm + k * step, 6) for k in range(-20, 21) if atm + k * step > 0})
    expiries = option_expiries(today, opt.get("expiries", "weekly"))
    tclass = opt.get("trading_class") or und.symbol
    mult = float(opt.get("multiplier", 100))
    exchange = opt.get("exchange", "SMART")
    listing = "CBOE" if exchange == "SMART" else exchange
    for expiry in expiries:
        ymd = expiry.strftime("%Y%m%d")
        for strike in strikes:
            for right in ("C", "P"):
                local = f"{tclass:<6}{expiry:%y%m%d}{right}{int(round(strike * 1000)):08d}"
                cat.add(Instrument(
                    conId=stable_conid(und.symbol, "OPT", tclass, ymd, strike, right), symbol=und.symbol, secType="OPT",
                    exchange=listing, currency=und.currency, localSymbol=local, tradingClass=tclass,
                    multiplier=mult, minTick=0.01 if und.secType == "STK" else 0.05, lastTradeDate=ymd, strike=strike,
                    right=right, longName=und.longName, underConId=und.conId, underSymbol=und.symbol,
                    underSecType=und.secType, price_source=und.price_source, price_factor=und.price_factor,
                    valid_exchanges=("SMART", listing), extra={"style": opt.get("style", "american")}))
    cat.chains[und.conId] = {"exchange": listing, "tradingClass": tclass, "multiplier": str(int(mult)),
                             "expiries": [e.strftime("%Y%m%d") for e in expiries], "strikes": strikes,
                             "symbol": und.symbol}


def _add_vendor_options(cat: Catalog, und: Instrument, opt: dict, vendor) -> None:
    """The options a vendor chain file lists for `und`, instead of a synthesised grid."""
    exchange = opt.get("exchange", "SMART")
    listing = "CBOE" if exchange == "SMART" else exchange
    mult = float(vendor.multiplier)
    by_class: dict[str, dict] = {}
    for tclass, ymd, strike, right in vendor.contracts():
        local = f"{tclass:<6}{ymd[2:]}{right}{int(round(strike * 1000)):08d}"
        cat.add(Instrument(
            conId=stable_conid(und.symbol, "OPT", tclass, ymd, strike, right), symbol=und.symbol, secType="OPT",
            exchange=listing, currency=und.currency, localSymbol=local, tradingClass=tclass, multiplier=mult,
            minTick=0.01 if und.secType == "STK" else 0.05, lastTradeDate=ymd, strike=strike, right=right,
            longName=und.longName, underConId=und.conId, underSymbol=und.symbol, underSecType=und.secType,
            price_source=und.price_source, price_factor=und.price_factor, valid_exchanges=("SMART", listing),
            extra={"vendor": (tclass, ymd, strike, right)}))
        entry = by_class.setdefault(tclass, {"expiries": set(), "strikes": set()})
        entry["expiries"].add(ymd)
        entry["strikes"].add(strike)
    # reqSecDefOptParams answers the first trading class (one underlying file, usually one class)
    tclass = sorted(by_class)[0]
    cat.chains[und.conId] = {"exchange": listing, "tradingClass": tclass, "multiplier": str(int(mult)),
                             "expiries": sorted(by_class[tclass]["expiries"]),
                             "strikes": sorted(by_class[tclass]["strikes"]), "symbol": und.symbol}

"""The asyncio TCP server, one Session per client connection, and GatewaySim: the simulator's
state and its Python API (the one tests, the scenario runner and the control port use)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import encode as enc
from .book import ORDER_TYPES, Book, Execution, Order, commission_for, ib_time
from .catalog import BAG_CONID, CARRY, Catalog, Instrument, build_catalog
from .market import NS, NY, Clock, Market, Quote, Series
from .protocol import HELLO, MAX_VERSION, Fields, ProtocolError, frame, negotiate, split

log = logging.getLogger("gatewaysim")

ACCOUNT_TAGS = ("AccountType", "NetLiquidation", "TotalCashValue", "SettledCash", "AccruedCash", "BuyingPower",
                "EquityWithLoanValue", "PreviousDayEquityWithLoanValue", "GrossPositionValue", "RegTEquity",
                "RegTMargin", "SMA", "InitMarginReq", "MaintMarginReq", "AvailableFunds", "ExcessLiquidity",
                "Cushion", "FullInitMarginReq", "FullMaintMarginReq", "FullAvailableFunds", "FullExcessLiquidity",
                "LookAheadNextChange", "LookAheadInitMarginReq", "LookAheadMaintMarginReq",
                "LookAheadAvailableFunds", "LookAheadExcessLiquidity", "HighestSeverity", "DayTradesRemaining",
                "Leverage", "UnrealizedPnL", "RealizedPnL")
DELAYED = {1: 66, 2: 67, 4: 68, 0: 69, 3: 70, 5: 71, 8: 74, 9: 75, 6: 72, 7: 73, 14: 76}
GREEK_TICKS = ((10, "bid"), (11, "ask"), (12, "last"), (13, "model"))
BAR_SIZES = {"sec": "s", "secs": "s", "min": "m", "mins": "m", "hour": "h", "hours": "h", "day": "d",
             "days": "d", "week": "w", "weeks": "w", "month": "M", "months": "M"}
DURATION_SECONDS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 31 * 86400, "Y": 366 * 86400}


@dataclass
class Line:
    reqId: int
    inst: Instrument | None
    legs: list
    snapshot: bool
    generic: set
    delayed: bool
    data_type: int
    sent: dict = field(default_factory=dict)
    silent: bool = False  # killed by a fault (1101, 10197) until re-requested


class Session:
    def __init__(self, sim: "GatewaySim", reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.sv = MAX_VERSION
        self.clientId: int | None = None
        self.lines: dict[int, Line] = {}
        self.positions_sub = False
        self.account_sub = False
        self.multi_subs: set[int] = set()
        self.summary_subs: dict[int, set] = {}
        self.hist_live: dict[int, dict] = {}
        self.scanners: dict[int, dict] = {}
        self.realtime: dict[int, dict] = {}
        self.pnl: dict[int, dict] = {}
        self.data_type = 1
        self.closed = False
        self.sent = 0
        self.rate: deque = deque()
        self.rate_warned = 0.0
        self.peer = writer.get_extra_info("peername")
        sim.session_serial += 1
        self.serial = sim.session_serial

    # ------------------------------------------------------------------ wire
    def send(self, fields) -> None:
        if self.closed:
            return
        self.writer.write(frame(fields))
        self.sent += 1
        self.sim.sent_count += 1

    def error(self, reqId: int, code: int, text: str | None = None, **kw) -> None:
        fields = enc.error(reqId, code, text, **kw)
        self.sim.record_event("error", clientId=self.clientId, reqId=reqId, code=code, text=fields[4])
        self.send(fields)

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        if reason:
            log.info("closing connection from %s (clientId %s): %s", self.peer, self.clientId, reason)
        self.closed = True
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - a socket already gone is closed enough
            pass
        if self in self.sim.sessions:
            self.sim.sessions.remove(self)

    async def run(self) -> None:
        try:
            hello = await self.reader.readexactly(4)
            if hello != HELLO:
                raise ProtocolError(f"handshake: expected b'API\\x00', got {hello!r}")
            n = struct.unpack(">I", await self.reader.readexactly(4))[0]
            versions = (await self.reader.readexactly(n)).decode("utf-8", errors="replace")
            self.sv = negotiate(versions)
            self.send([self.sv, self.sim.clock.now().strftime("%Y%m%d %H:%M:%S UTC")])
            await self.writer.drain()
            while not self.closed:
                n = struct.unpack(">I", await self.reader.readexactly(4))[0]
                if n > 16 * 1024 * 1024:
                    raise ProtocolError(f"message length {n} is larger than the 16 MB TWS accepts")
                fields = split(await self.reader.readexactly(n))
                if not fields:
                    continue
                self.sim.receive(self, fields)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
        except ProtocolError as exc:
            self.close(str(exc))
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            self.close()


class GatewaySim:
    """The simulator. Run it with `await start()` in a loop, or `start_in_thread()` for blocking
    clients; every public method may be called from any thread."""

    def __init__(self, data=None, *, account: str = "DU1234567", speed: float = 1.0, start=None,
                 cash: float = 1_000_000.0, max_lines: int = 100, max_rate: int = 50, tick_interval: float = 0.2,
                 instrument_map: dict | None = None, host: str = "127.0.0.1", record_limit: int = 1_000_000,
                 chains=None):
        from .data import DataError, load_chain_file, load_data

        self.data_dir, frames = load_data(data)
        vendor = load_chain_file(chains, sorted(frames)) if chains is not None else {}
        self.series = {sym: Series(f) for sym, f in frames.items()}
        start_at = start if start is not None else _default_start(self.series)
        if isinstance(start_at, str):
            start_at = dt.datetime.fromisoformat(start_at)
        if start_at.tzinfo is None:
            start_at = start_at.replace(tzinfo=NY)
        self.clock = Clock(start_at, speed)
        t0 = self.clock.now_ns()
        prices = {sym: s.price(t0)[0] for sym, s in self.series.items()}
        self.catalog: Catalog = build_catalog(sorted(self.series), prices, start_at.astimezone(NY).date(), instrument_map,
                                              vendor)
        for sym, chain in vendor.items():
            if self.catalog.symbol(sym) is None:
                raise DataError(f"--chains {chain.path}: its underlying {sym} has no bars in {self.data_dir}; "
                                f"add {sym}.csv there")
            last_expiry = max(k[1] for k in chain.contracts())
            if last_expiry < start_at.astimezone(NY).strftime("%Y%m%d"):
                first = chain.chains[0].quote_time.strftime("%Y-%m-%d")
                raise DataError(f"--chains {chain.path}: every {sym} option in it expired by {last_expiry}, before the "
                                f"simulated start {start_at:%Y-%m-%d}; start inside its dates, e.g. --start '{first} 10:00'")
        self.market = Market(self.series, self.clock)
        self.market.vendor = vendor
        # where each symbol's bars end: past it its market stands still, which is said once
        self.data_ends = {sym: s.span(len(s.t) - 1)[1] for sym, s in self.series.items() if len(s.t)}
        self.said_ended: set[str] = set()
        self.book = Book(account, cash)
        self.accounts = [account]
        self.host = host
        self.max_lines = max_lines
        self.max_rate = max_rate
        self.tick_interval = tick_interval
        self.sessions: list[Session] = []
        self.session_serial = 0
        self.received: deque = deque(maxlen=record_limit)  # the oldest messages go first on a long run
        self.received_total = 0
        self.events: list[dict] = []
        self.sent_count = 0
        self.fill_mode = "auto"
        self._matched_ns: int | None = None     # when match_all last ran
        self.entitled_live: dict[str, bool] = {}
        self.faults: dict = {"stopped": set(), "reject_next": None, "partial_next": None, "drop_on_order": None,
                             "whatif_unset": False, "positions_delay": 0.0, "pacing_next": 0, "competing": False,
                             "connectivity_lost": False, "farm_broken": False, "commission": "normal",
                             "commission_delay": 1.0, "held_client_ids": set(), "readonly": False,
                             "refuse_modifies": False}
        self.hist_log: deque = deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self._ticker: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.scenario_tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int = 7497) -> int:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.server = await asyncio.start_server(self._accept, self.host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_loop())
        return self.port

    async def _accept(self, reader, writer) -> None:
        session = Session(self, reader, writer)
        self.sessions.append(session)
        await session.run()

    async def stop(self) -> None:
        for task in self.scenario_tasks:
            task.cancel()
        if self._ticker:
            self._ticker.cancel()
        for s in list(self.sessions):
            s.close("simulator stopping")
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        if self._stopped:
            self._stopped.set()

    def start_in_thread(self, port: int = 0) -> int:
        ready = threading.Event()
        box: dict = {}

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                box["port"] = loop.run_until_complete(self.start(port))
            except Exception as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc
                ready.set()
                return
            ready.set()
            loop.run_until_complete(self._stopped.wait())
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=main, name="gatewaysim", daemon=True)
        self._thread.start()
        ready.wait(10)
        if "error" in box:
            raise box["error"]
        return box["port"]

    def stop_thread(self) -> None:
        if self.loop and self._thread:
            asyncio.run_coroutine_threadsafe(self.stop(), self.loop).result(5)
            self._thread.join(5)

    def call(self, fn, *args, **kw):
        """Run fn in the simulator's loop and return its result (direct when already there)."""
        if self.loop is None or _in_loop(self.loop):
            return fn(*args, **kw)
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn, *args, **kw), self.loop)
        return fut.result(10)

    # ------------------------------------------------------------------ record
    def record_event(self, kind: str, **data) -> None:
        self.events.append({"t": self.clock.now().isoformat(), "kind": kind, **data})

    def record(self) -> dict:
        """Everything the venue knows: messages received, orders, executions, positions, events."""
        def build():
            return {"received": list(self.received), "received_total": self.received_total,
                    "received_dropped": self.received_total - len(self.received), "events": list(self.events),
                    **self.book.to_json()}
        return self.call(build)

    def dump_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.record(), indent=1, default=str), encoding="utf-8")

    def messages(self, name: str | None = None) -> list[dict]:
        return self.call(lambda: [m for m in self.received if name is None or m["name"] == name])

    # ------------------------------------------------------------------ dispatch
    def receive(self, session: Session, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except ValueError:
            raise ProtocolError(f"message id {fields[0]!r} is not a number")
        name = HANDLERS.get(msg_id, (f"unknown_{msg_id}", None))[0]
        self.received_total += 1
        self.received.append({"t": self.clock.now().isoformat(), "wall": time.time(), "clientId": session.clientId,
                              "id": msg_id, "name": name, "fields": fields})
        now = time.monotonic()
        session.rate.append(now)
        while session.rate and now - session.rate[0] > 1.0:
            session.rate.popleft()
        if len(session.rate) > self.max_rate and now - session.rate_warned > 1.0:  # once a second, as TWS warns
            session.rate_warned = now
            session.error(-1, 100, rec=len(session.rate))
        if session.clientId is None and msg_id != 71:
            raise ProtocolError(f"message {msg_id} ({name}) arrived before startApi")
        handler = HANDLERS.get(msg_id, (None, None))[1]
        if handler is None:
            log.info("ignoring unsupported message %s from clientId %s", msg_id, session.clientId)
            return
        try:
            handler(self, session, Fields(fields[1:]))
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not end the simulator; the client sees 321
            log.error("internal error handling %s from clientId %s: %s: %s", name, session.clientId,
                      type(exc).__name__, exc)
            self.record_event("internal_error", message=name, error=f"{type(exc).__name__}: {exc}")

    def broadcast(self, fields, clientId: int | None = None) -> None:
        for s in list(self.sessions):
            if s.clientId is not None and (clientId is None or s.clientId == clientId or s.clientId == 0):
                s.send(fields)

    # ------------------------------------------------------------------ account values
    def mark(self, inst: Instrument) -> float:
        q = self.market.quote(inst)
        if q.bid > 0 and q.ask > 0:
            return round((q.bid + q.ask) / 2, 6)
        return q.last if q.last == q.last else 0.0

    def account_values(self) -> dict[str, float]:
        gross = upnl = value = margin = 0.0
        for p in self.book.positions.values():
            if p.qty == 0:
                continue
            px = self.mark(p.inst)
            mv = p.qty * px * p.inst.multiplier
            value += mv
            gross += abs(mv)
            upnl += (px - p.avg_price) * p.qty * p.inst.multiplier
            margin += margin_rate(p.inst) * abs(mv)
        net = self.book.cash + value
        return {"NetLiquidation": net, "TotalCashValue": self.book.cash, "SettledCash": self.book.cash,
                "AccruedCash": 0.0, "BuyingPower": max(net - margin, 0) * 4, "EquityWithLoanValue": net,
                "PreviousDayEquityWithLoanValue": self.book.start_cash, "GrossPositionValue": gross,
                "RegTEquity": net, "RegTMargin": margin, "SMA": max(net - margin, 0), "InitMarginReq": margin,
                "MaintMarginReq": margin * 0.8, "AvailableFunds": net - margin, "ExcessLiquidity": net - margin * 0.8,
                "Cushion": (net - margin * 0.8) / net if net else 0.0, "FullInitMarginReq": margin,
                "FullMaintMarginReq": margin * 0.8, "FullAvailableFunds": net - margin,
                "FullExcessLiquidity": net - margin * 0.8, "LookAheadNextChange": 0.0,
                "LookAheadInitMarginReq": margin, "LookAheadMaintMarginReq": margin * 0.8,
                "LookAheadAvailableFunds": net - margin, "LookAheadExcessLiquidity": net - margin * 0.8,
                "DayTradesRemaining": -1.0, "Leverage": gross / net if net else 0.0, "UnrealizedPnL": upnl,
                "RealizedPnL": self.book.realized, "CashBalance": self.book.cash}

    def send_account(self, s: Session, multi_reqId: int | None = None) -> None:
        acct = self.book.account
        vals = self.account_values()
        rows = [("AccountCode", acct, ""), ("AccountType", "INDIVIDUAL", ""), ("Currency", "USD", "USD")]
        for k, v in vals.items():
            text = str(int(v)) if k == "DayTradesRemaining" else f"{v:.2f}" if k not in ("Cushion", "Leverage") else f"{v:.4f}"
            rows.append((k, text, "USD"))
        if multi_reqId is None:
            for k, v, cur in rows:
                s.send([6, 2, k, v, cur, acct])
            for p in self.book.positions.values():
                self._send_portfolio(s, p)
            s.send([8, 1, self.clock.now().astimezone(NY).strftime("%H:%M")])
        else:
            for k, v, cur in rows:
                s.send([73, 1, multi_reqId, acct, "", k, v, cur])

    def _send_portfolio(self, s: Session, p) -> None:
        px = self.mark(p.inst)
        mult = p.inst.multiplier
        s.send(enc.portfolio(self.book.account, p.inst, p.qty, round(px, 6), round(p.avg_price * mult, 6),
                             (px - p.avg_price) * p.qty * mult, p.realized))

    def push_position(self, inst: Instrument) -> None:
        p = self.book.positions.get(inst.conId)
        if p is None:
            return
        for s in list(self.sessions):
            if s.positions_sub:
                s.send(enc.position(self.book.account, inst, p.qty, round(p.avg_price * inst.multiplier, 6)))
            if s.account_sub:
                self._send_portfolio(s, p)
                self.send_account(s)
            for reqId in s.multi_subs:
                self.send_account(s, reqId)

    # ------------------------------------------------------------------ market data
    def resolve(self, c: dict) -> tuple[Instrument | None, str]:
        matches = self.catalog.match(c)
        if len(matches) == 1:
            return matches[0], ""
        return None, "ambiguous" if matches else "unknown"

    def line_quote(self, line: Line, t_ns: int | None = None) -> Quote | None:
        if line.inst is not None:
            return self.market.quote(line.inst, t_ns)
        return self.combo_quote(line.legs, t_ns)

    def combo_quote(self, legs: list, t_ns: int | None = None) -> Quote:
        bid = ask = last = 0.0
        nan = False
        for leg in legs:
            q = self.market.quote(leg["inst"], t_ns)
            sign = 1 if leg["action"] == "BUY" else -1
            r = leg["ratio"]
            if q.nan or q.bid <= 0 or q.ask <= 0:
                nan = True
            bid += sign * r * (q.bid if sign > 0 else q.ask)
            ask += sign * r * (q.ask if sign > 0 else q.bid)
            last += sign * r * ((q.bid + q.ask) / 2)
        return Quote(bid=round(bid, 2), ask=round(ask, 2), last=round(last, 2), bidSize=10.0, askSize=10.0,
                     lastSize=1.0, volume=0.0, close=round(last, 2), open=round(last, 2), high=round(ask, 2),
                     low=round(bid, 2), nan=nan)

    def send_ticks(self, s: Session, line: Line, full: bool, quote: Quote | None = None) -> None:
        q = quote or self.line_quote(line, self.clock.now_ns() - (900 * NS if line.delayed else 0))
        rid = line.reqId

        def tid(t):
            return DELAYED.get(t, t) if line.delayed else t

        values = {1: (q.bid, q.bidSize), 2: (q.ask, q.askSize), 4: (q.last, q.lastSize)}
        for t, (price, size) in values.items():
            if t in (1, 2) and line.inst is not None and line.inst.secType == "IND":
                continue
            if t == 4 and (price != price):
                continue
            key = ("p", t)
            if full or line.sent.get(key) != (price, size):
                line.sent[key] = (price, size)
                live = not q.nan and (price > 0 or line.inst is None)  # combos may price at a credit
                s.send([1, 6, rid, tid(t), price, size if live else 0, 0])
        sizes = {0: q.bidSize, 3: q.askSize, 5: q.lastSize, 8: q.volume}
        for t, v in sizes.items():
            if line.inst is not None and line.inst.secType == "IND" and t in (0, 3):
                continue
            if (q.nan and t in (0, 3, 5)) or v != v:     # a size IB has none of is not sent
                continue
            if full or line.sent.get(("s", t)) != v:
                line.sent[("s", t)] = v
                s.send([2, 6, rid, tid(t), v])
        for t, v in ((9, q.close), (6, q.high), (7, q.low), (14, q.open)):
            if q.nan or v != v:
                continue
            if full or line.sent.get(("p", t)) != v:
                line.sent[("p", t)] = v
                s.send([1, 6, rid, tid(t), v, 0, 0])
        if q.greeks and not q.nan and all(math.isfinite(g) for g in q.greeks):
            iv, delta, opt, gamma, vega, theta, und = q.greeks
            prices = {"bid": q.bid, "ask": q.ask, "last": q.last, "model": opt}
            if full or line.sent.get("g") != q.greeks:
                line.sent["g"] = q.greeks
                for t, which in GREEK_TICKS:
                    tt = t + 70 if line.delayed else t
                    p = prices[which]
                    p = round(p, 4) if math.isfinite(p) else -1.0      # IB's "not computed"
                    s.send([21, rid, tt, 1, round(iv, 6), round(delta, 6), p, 0.0,
                            round(gamma, 6), round(vega, 6), round(theta, 6), round(und, 4)])
        if full and line.inst is not None:
            series = self.series.get(line.inst.price_source)
            if "104" in line.generic and series:
                s.send([45, 6, rid, 23, round(series.vol, 6)])
            if "106" in line.generic and series:
                s.send([45, 6, rid, 24, round(series.vol, 6)])
            if "236" in line.generic:
                s.send([45, 6, rid, 46, 3.0])

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - keep ticking; the record shows what failed
                log.error("tick loop: %s: %s", type(exc).__name__, exc)
                self.record_event("internal_error", message="tick", error=f"{type(exc).__name__}: {exc}")

    def _say_data_ended(self) -> None:
        """Once per symbol: simulated time went past its last bar, so its quotes stand still at
        the last close and no bar of it completes any more."""
        now = self.clock.now_ns()
        ended = sorted(sym for sym, end in self.data_ends.items() if end <= now and sym not in self.said_ended)
        if not ended:
            return
        self.said_ended.update(ended)
        last = max(self.data_ends[sym] for sym in ended)
        log.warning("simulated time %s UTC is past the last bar of %s in the data (%s UTC): %s stand at the last "
                    "close and no bar of %s completes any more; restart with --start inside the data to replay it",
                    f"{self.now():%Y-%m-%d %H:%M}", ", ".join(ended),
                    ("" if len(ended) == 1 else "the last by ")
                    + f"{dt.datetime.fromtimestamp(last / 1e9, dt.timezone.utc):%Y-%m-%d %H:%M}",
                    "its quotes" if len(ended) == 1 else "their quotes",
                    "it" if len(ended) == 1 else "them")
        for sym in ended:
            self.record_event("data_ended", symbol=sym, at=self.data_ends[sym])

    def step(self) -> None:
        """One pass: push changed quotes, re-run matching on resting orders, keep-up-to-date bars."""
        f = self.faults
        if len(self.said_ended) < len(self.data_ends):
            self._say_data_ended()
        if not f["connectivity_lost"]:
            self.match_all()
        quiet = f["connectivity_lost"] or f["farm_broken"]
        due: list[tuple[Session, Line]] = []
        for s in list(self.sessions):
            if s.clientId is None or quiet:
                continue
            for line in list(s.lines.values()):
                if line.snapshot or line.silent:
                    continue
                sym = line.inst.symbol if line.inst else (line.legs[0]["inst"].symbol if line.legs else "")
                if sym in f["stopped"] or (f["competing"] and not line.delayed):
                    continue
                due.append((s, line))
        now = self.clock.now_ns()
        for delayed in (False, True):  # one batch per time: the options among them priced together
            batch = [(s, line) for s, line in due if line.delayed == delayed and line.inst is not None]
            quotes = self.market.quotes([line.inst for _, line in batch], now - (900 * NS if delayed else 0))
            for (s, line), q in zip(batch, quotes):
                self.send_ticks(s, line, full=False, quote=q)
        for s, line in due:
            if line.inst is None:
                self.send_ticks(s, line, full=False)
        for s in list(self.sessions):
            if s.clientId is not None and not quiet:
                for reqId, h in list(s.hist_live.items()):
                    self._hist_update(s, reqId, h)
                for reqId, sub in list(s.scanners.items()):
                    scanner_update(self, s, reqId, sub)
                for reqId, sub in list(s.realtime.items()):
                    realtime_update(self, s, reqId, sub)
                for reqId, sub in list(s.pnl.items()):
                    pnl_update(self, s, reqId, sub)

    # ------------------------------------------------------------------ orders
    def match_all(self) -> None:
        """Every working order matched at this tick. One whose hours began since the last tick
        (held until the open) is matched at the moment they began, at that moment's quote: the
        open, however fast the clock runs (at --speed 3600 a tick spans minutes of the market)."""
        now = self.clock.now_ns()
        before, self._matched_ns = self._matched_ns, now
        for o in list(self.book.orders.values()):
            if o.is_working and o.transmit and not o.whatIf:
                if o.day_end and now >= o.day_end:
                    self.cancel_order(o, expired=True)
                    continue
                at = None
                if before is not None and before < now and self.works_now(o):
                    inst = self.traded_inst(o)
                    if not self.market.order_hours(inst, o.outsideRth, before):
                        at = min(self.market.hours.next_open(inst, o.outsideRth, before), now)
                self.try_fill(o, at)

    def traded_inst(self, o: Order) -> Instrument:
        """The instrument whose hours an order keeps (a combo's: its first leg's)."""
        return o.inst if o.inst is not None else o.legs[0]["inst"]

    def works_now(self, o: Order) -> bool:
        """Whether the order can fill now: IB holds a stock or option order without outsideRth
        until the regular session opens (and a future's outside its session)."""
        return self.market.order_hours(self.traded_inst(o), o.outsideRth)

    def order_quote(self, o: Order, t_ns: int | None = None) -> Quote:
        return self.combo_quote(o.legs, t_ns) if o.legs else self.market.quote(o.inst, t_ns)

    def try_fill(self, o: Order, at: int | None = None) -> None:
        """Fill o if it can fill now (at: the moment it is matched at, when that is before now)."""
        if self.fill_mode != "auto" or not o.is_working or self.faults["connectivity_lost"]:
            return
        if o.parentId:
            parent = self._order_by_id(o.clientId, o.parentId)
            if parent is not None and parent.status != "Filled":
                return
        if not self.works_now(o):
            return
        q = self.order_quote(o, at)
        if q.nan:
            return
        buy = o.action == "BUY"
        price = None
        typ = o.orderType.upper()
        if typ in ("STP", "STP LMT") and not o.triggered:
            last = q.last if q.last == q.last else (q.bid + q.ask) / 2
            if (buy and last >= o.auxPrice) or (not buy and last <= o.auxPrice):
                o.triggered = True
                o.status = "Submitted"
                for s in [s for s in self.sessions if s.clientId == o.clientId]:
                    s.send(enc.order_status(o))
                self.record_event("stop_triggered", orderId=o.orderId, price=last)
            else:
                return
        if typ in ("MKT", "STP"):
            price = q.ask if buy else q.bid
        elif typ in ("LMT", "STP LMT"):
            lmt = o.lmtPrice
            touch = q.ask if buy else q.bid
            if (buy and touch <= lmt) or (not buy and touch >= lmt):
                price = touch
            elif o.legs and q.ask - q.bid <= self.combo_mid_width and (
                    (buy and lmt >= (q.bid + q.ask) / 2) or (not buy and lmt <= (q.bid + q.ask) / 2)):
                price = lmt
        else:
            return
        if price is None or not math.isfinite(price) or (not o.legs and price <= 0):
            return
        qty = o.remaining
        partial = self.faults.get("partial_next")
        if partial and partial.get("orderId") in (None, o.orderId) and not partial.get("done"):
            qty = min(qty, partial["qty"])
            partial["done"] = True
            partial["orderId"] = o.orderId
            self.fill(o, qty, price, at=at)
            if partial.get("cancel", True):
                self.faults["partial_next"] = None
                self.cancel_order(o, reason="")
            return
        self.fill(o, qty, price, at=at)

    combo_mid_width = 0.10

    def _order_by_id(self, clientId: int, orderId: int) -> Order | None:
        return self.book.orders.get((clientId, orderId))

    def fill(self, o: Order, qty: float, price: float, *, leg_prices: dict | None = None,
             at: int | None = None) -> list[Execution]:
        """One execution of qty at price (per unit; net per combo) with all its messages, at the
        moment `at` (ns; now when None)."""
        qty = min(qty, o.remaining)
        if qty <= 0:
            return []
        now = at / NS if at is not None else self.clock.now().timestamp()
        new_filled = o.filled + qty
        o.avgFillPrice = round((o.avgFillPrice * o.filled + price * qty) / new_filled, 8)
        o.filled, o.lastFillPrice = new_filled, price
        o.status = "Filled" if o.remaining <= 1e-9 else "Submitted"
        if o.status == "Filled":
            o.done_time = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        execs: list[Execution] = []
        side = "BOT" if o.action == "BUY" else "SLD"
        if o.legs:
            for k, leg in enumerate(o.legs, 1):
                inst = leg["inst"]
                lq = self.market.quote(inst, at)
                leg_buy = (leg["action"] == "BUY") == (o.action == "BUY")
                lp = (leg_prices or {}).get(inst.conId)
                if lp is None:
                    lp = lq.ask if leg_buy else lq.bid
                execs.append(self._execution(o, inst, inst.contract_fields(), "BOT" if leg_buy else "SLD",
                                             qty * leg["ratio"], lp, now, leg=k))
            bag = [BAG_CONID, o.symbol, "BAG", "", 0.0, "", "", "SMART", o.currency, "28812380", "COMB"]
            execs.append(self._execution(o, None, bag, side, qty, price, now, leg=len(o.legs) + 1, cum=o.filled,
                                         avg=o.avgFillPrice))
        else:
            execs.append(self._execution(o, o.inst, o.inst.contract_fields(o.exchange or None), side, qty, price, now,
                                         cum=o.filled, avg=o.avgFillPrice))
        self.record_event("fill", orderId=o.orderId, clientId=o.clientId, qty=qty, price=price, status=o.status)
        owner = [s for s in self.sessions if s.clientId == o.clientId]
        for s in owner:
            s.send(enc.open_order(o, s.sv))
        for ex in execs:
            for s in owner:
                s.send(enc.exec_details(-1, ex, s.sv))
        for s in owner:
            s.send(enc.order_status(o))
        self._send_commissions(owner, execs)
        for inst in ([leg["inst"] for leg in o.legs] if o.legs else [o.inst]):
            self.push_position(inst)
        if o.status == "Filled":
            self._oca_cancel(o)
            for child in [c for c in self.book.orders.values() if c.parentId == o.orderId and c.clientId == o.clientId]:
                if child.is_working and child.transmit:
                    stop = child.orderType in ("STP", "STP LMT") and not child.triggered
                    child.status = "PreSubmitted" if stop else "Submitted"
                    for s in owner:
                        s.send(enc.order_status(child))
                    self.try_fill(child)
        return execs

    def _execution(self, o: Order, inst: Instrument | None, contract: list, side: str, shares: float, price: float,
                   now: float, leg: int = 1, cum: float | None = None, avg: float | None = None) -> Execution:
        ex = Execution(execId=self.book.new_exec_id(leg), orderId=o.orderId, clientId=o.clientId, permId=o.permId,
                       contract=contract, conId=contract[0], symbol=contract[1], secType=contract[2],
                       time=ib_time(now), ts=now, account=o.account, exchange=_venue(inst), side=side,
                       shares=shares, price=price, cumQty=cum if cum is not None else shares,
                       avgPrice=avg if avg is not None else price, orderRef=o.orderRef)
        if inst is not None:
            signed = shares if side == "BOT" else -shares
            ex.realized = self.book.apply_fill(inst, signed, price)
            ex.commission = commission_for(inst, shares, price)
            self.book.cash -= ex.commission
        self.book.executions.append(ex)
        return ex

    def _send_commissions(self, sessions: list[Session], execs: list[Execution]) -> None:
        mode = self.faults["commission"]

        def send(zero: bool = False):
            for s in sessions:
                for ex in execs:
                    s.send(enc.commission_report(ex.execId, 0.0 if zero else ex.commission,
                                                 None if zero else ex.realized))
        if mode == "late":
            self.loop.call_later(self.faults["commission_delay"], send)
        elif mode == "zero_first":
            send(zero=True)
            self.loop.call_later(self.faults["commission_delay"], send)
        else:
            send()

    def _oca_cancel(self, o: Order) -> None:
        """A filled order cancels its OCA group, and a filled bracket child its siblings (IB
        treats a bracket's take-profit and stop-loss as one OCA group)."""
        for other in list(self.book.orders.values()):
            if other is o or not other.is_working or other.clientId != o.clientId:
                continue
            if (o.ocaGroup and other.ocaGroup == o.ocaGroup) or (o.parentId and other.parentId == o.parentId):
                self.cancel_order(other, reason="")

    def cancel_order(self, o: Order, reason: str = "", *, expired: bool = False) -> None:
        """Cancelled, with IB's 202; `expired`: a DAY order still working when its session ends,
        which IB cancels with the orderStatus alone (no error message)."""
        o.status = "Cancelled"
        o.done_time = self.clock.now().strftime("%Y%m%d %H:%M:%S UTC")
        if expired:
            self.record_event("expired", orderId=o.orderId, clientId=o.clientId, filled=o.filled)
        else:
            self.record_event("cancelled", orderId=o.orderId, clientId=o.clientId, filled=o.filled, reason=reason)
        for s in [s for s in self.sessions if s.clientId == o.clientId]:
            s.send(enc.order_status(o))
            if not expired:
                s.error(o.orderId, 202, reason=reason)

    # ------------------------------------------------------------------ historical
    def _hist_update(self, s: Session, reqId: int, h: dict) -> None:
        bars = self._bars(h["inst"], h["bar"], h["seconds_back"], h["what"], h["rth"], self.clock.now_ns())
        if bars is None or bars.empty:
            return
        ts = bars.index[-1]
        row = bars.iloc[-1]
        key = (ts, row["close"], row["volume"])
        if h.get("last") == key:
            return
        h["last"] = key
        s.send([90, reqId, -1, _bar_time(ts, h["bar"], h["fmt"]), row["open"], row["close"], row["high"], row["low"],
                round((row["open"] + row["high"] + row["low"] + row["close"]) / 4, 4),
                row["volume"] if h["what"] == "TRADES" and row["volume"] == row["volume"] else -1])   # none: IB's -1

    def _bars(self, inst: Instrument, bar: str, seconds_back: float, what: str, rth: bool, end_ns: int):
        import pandas as pd

        from engine.market.bars import bar_seconds, resample

        series = self.series.get(inst.price_source)
        if series is None:
            return None
        frame = series.frame
        end = pd.Timestamp(end_ns, unit="ns", tz="UTC").tz_convert(NY)
        start = end.floor("s") - pd.Timedelta(seconds=seconds_back)  # IB counts whole seconds back
        src_seconds = series.bar_ns / NS
        want = bar_seconds(bar)
        if want < src_seconds - 1e-9 and not series.daily:
            return pd.DataFrame()
        if series.daily and want < 86400:
            return pd.DataFrame()
        lo = start - pd.Timedelta(seconds=max(want, src_seconds))
        # only bars that are complete at `end`: a bar still in progress would leak its future close
        length = pd.Timedelta(hours=16) if series.daily else pd.Timedelta(seconds=src_seconds)
        window = frame[(frame.index >= lo) & (frame.index + length <= end)]
        if window.empty:
            return window
        if rth and not series.daily:
            minutes = window.index.hour * 60 + window.index.minute
            window = window[(minutes >= 570) & (minutes < 960)]
        if want > src_seconds + 1e-9:
            window = resample(window, bar, timezone="America/New_York")
        window = window[window.index >= start.floor("D") if want >= 86400 else window.index >= start]
        f = inst.price_factor * ((1.0 + CARRY * inst.carry_days / 365.0) if inst.secType == "FUT" else 1.0)
        out = window.copy()
        for col in ("open", "high", "low", "close"):
            out[col] = (out[col] * f).round(4)
        if what in ("MIDPOINT", "BID", "ASK", "BID_ASK"):
            half = inst.minTick if what != "MIDPOINT" else 0.0
            adj = {"BID": -half, "ASK": half}.get(what, 0.0)
            for col in ("open", "high", "low", "close"):
                out[col] = (out[col] + adj).round(4)
        return out

    def _pacing(self, key: tuple, inst: Instrument, small: bool) -> str | None:
        now = time.monotonic()
        while self.hist_log and now - self.hist_log[0][0] > 600:
            self.hist_log.popleft()
        if self.faults["pacing_next"] > 0:
            self.faults["pacing_next"] -= 1
            return "Historical data request pacing violation"
        if any(k == key and now - t < 15 for t, k, _ in self.hist_log):
            return "Historical data request pacing violation"
        if small:
            same = [t for t, k, c in self.hist_log if c == (inst.conId, key[4]) and now - t < 2]
            if len(same) >= 5 or len(self.hist_log) >= 60:
                return "Historical data request pacing violation"
        self.hist_log.append((now, key, (inst.conId, key[4])))
        return None

    # ------------------------------------------------------------------ faults (Python API)
    def stop_ticks(self, symbol: str) -> None:
        self.call(self.faults["stopped"].add, symbol)
        self.call(self.record_event, "fault", name="stop_ticks", symbol=symbol)

    def resume_ticks(self, symbol: str) -> None:
        self.call(self.faults["stopped"].discard, symbol)

    def drop_connection(self, clientId: int | None = None, when: str = "now") -> None:
        """Close client sockets now, or on the next order: 'before_ack' (the order is accepted, no
        openOrder is sent) or 'after_ack' (openOrder/orderStatus are sent, then the socket drops)."""
        def go():
            self.record_event("fault", name="drop_connection", when=when, clientId=clientId)
            if when == "now":
                for s in list(self.sessions):
                    if clientId is None or s.clientId == clientId:
                        s.close("fault: drop_connection")
            elif when in ("before_ack", "after_ack"):
                self.faults["drop_on_order"] = when
            else:
                raise ValueError(f"drop_connection: when must be now, before_ack or after_ack, not {when!r}")
        self.call(go)

    def restart(self, next_valid_id: int | None = None, down_for: float = 0.0) -> None:
        """A gateway restart: every socket drops, the port refuses connections for `down_for`
        seconds, and the next nextValidId is rolled back (default: 1). Orders, executions and
        positions survive, as they do at IB."""
        def go():
            self.record_event("fault", name="restart", next_valid_id=next_valid_id or 1, down_for=down_for)
            for s in list(self.sessions):
                s.close("fault: restart")
            self.book.next_valid_id = next_valid_id or 1
            self.faults["connectivity_lost"] = False
            self.faults["farm_broken"] = False
            if down_for > 0 and self.server is not None:
                self.server.close()
                self.loop.call_later(down_for, lambda: asyncio.ensure_future(self._reopen()))
        self.call(go)

    async def _reopen(self) -> None:
        self.server = await asyncio.start_server(self._accept, self.host, self.port)
        self.record_event("restarted", port=self.port)

    def connectivity(self, code: int) -> None:
        """1100 lost (events withheld), 1101 restored with data lost (market data lines dropped:
        clients must re-request them), 1102 restored with data maintained."""
        if code not in (1100, 1101, 1102):
            raise ValueError("connectivity code must be 1100, 1101 or 1102")

        def go():
            self.faults["connectivity_lost"] = code == 1100
            for s in list(self.sessions):
                s.error(-1, code)
                if code == 1101:
                    for line in s.lines.values():
                        line.silent = True
                    s.hist_live.clear()
            self.record_event("fault", name="connectivity", code=code)
        self.call(go)

    def farm(self, ok: bool) -> None:
        """2103 'Market data farm connection is broken' (ticks stop) or 2104 (ticks resume)."""
        def go():
            self.faults["farm_broken"] = not ok
            for s in list(self.sessions):
                s.error(-1, 2104 if ok else 2103)
            self.record_event("fault", name="farm", ok=ok)
        self.call(go)

    def competing_session(self, on: bool = True) -> None:
        """10197 on every live line (and on new requests) while on; lines stay silent until re-requested."""
        def go():
            self.faults["competing"] = on
            if on:
                for s in list(self.sessions):
                    for line in s.lines.values():
                        if not line.delayed:
                            s.error(line.reqId, 10197)
                            line.silent = True
            self.record_event("fault", name="competing_session", on=on)
        self.call(go)

    def hold_client_id(self, clientId: int, held: bool = True) -> None:
        """Pretend another session holds clientId: a connect with it gets 326 and is closed."""
        self.call((self.faults["held_client_ids"].add if held else self.faults["held_client_ids"].discard), clientId)

    def reject_next_order(self, reason: str = "Insufficient margin", order_type: str | None = None) -> None:
        """The next new order (of `order_type` only, IB's name: MKT, LMT, STP, STP LMT, when given)
        is refused with 201 and `reason`; what-if orders included."""
        if order_type is not None and order_type not in ORDER_TYPES:
            raise ValueError(f"order_type {order_type!r} is not one the simulator takes: {', '.join(ORDER_TYPES)}")
        self.call(self.faults.__setitem__, "reject_next", (reason, order_type))

    def refuse_modifies(self, refuse: bool = True) -> None:
        """While on, every modify of a working order is refused with IB's 105 (a warning: the
        order works on as it was, unchanged)."""
        self.call(self.faults.__setitem__, "refuse_modifies", refuse)
        self.call(self.record_event, "fault", name="refuse_modifies", on=refuse)

    def partial_fill_then_cancel(self, qty: float, orderId: int | None = None) -> None:
        """The next order to fill (or orderId) fills qty, then is cancelled with 202."""
        self.call(self.faults.__setitem__, "partial_next", {"qty": qty, "orderId": orderId, "cancel": True})

    def nan_quotes(self, symbol: str, on: bool = True) -> None:
        self.call(self.market.nan.add if on else self.market.nan.discard, symbol)

    def whatif_unset_margin(self, on: bool = True) -> None:
        self.call(self.faults.__setitem__, "whatif_unset", on)

    def delay_positions(self, seconds: float) -> None:
        self.call(self.faults.__setitem__, "positions_delay", float(seconds))

    def pacing_violation(self, count: int = 1) -> None:
        self.call(self.faults.__setitem__, "pacing_next", int(count))

    def set_max_lines(self, n: int) -> None:
        self.call(setattr, self, "max_lines", int(n))

    def set_max_rate(self, n: int) -> None:
        self.call(setattr, self, "max_rate", int(n))

    def commissions(self, mode: str = "normal", delay: float = 1.0) -> None:
        """normal: right after the fill; late: after `delay` s; zero_first: 0 at once, the real one later."""
        if mode not in ("normal", "late", "zero_first"):
            raise ValueError("commission mode must be normal, late or zero_first")
        self.call(self.faults.update, {"commission": mode, "commission_delay": float(delay)})

    def correct_execution(self, execId: str, price: float | None = None, shares: float | None = None) -> str:
        """IB's execution correction: a new execDetails whose execId ends .02 replaces the .01 one."""
        def go():
            old = next((e for e in self.book.executions if e.execId == execId), None)
            if old is None:
                raise KeyError(f"no execution {execId}")
            head, corr = old.execId.rsplit(".", 1)
            new = Execution(**{**old.to_json(), "execId": f"{head}.{int(corr) + 1:02d}",
                               "price": old.price if price is None else price,
                               "shares": old.shares if shares is None else shares, "replaced_by": ""})
            new.avgPrice = new.price if old.avgPrice == old.price else old.avgPrice
            old.replaced_by = new.execId
            inst = self.catalog.get(old.conId)
            if inst is not None:
                sign = 1 if old.side == "BOT" else -1
                self.book.apply_fill(inst, -sign * old.shares, old.price)
                new.realized = self.book.apply_fill(inst, sign * new.shares, new.price)
            self.book.executions.append(new)
            for s in [s for s in self.sessions if s.clientId == old.clientId]:
                s.send(enc.exec_details(-1, new, s.sv))
                s.send(enc.commission_report(new.execId, new.commission, new.realized))
            if inst is not None:
                self.push_position(inst)
            self.record_event("fault", name="correct_execution", old=execId, new=new.execId)
            return new.execId
        return self.call(go)

    def set_quote(self, symbol_or_conid, **values) -> None:
        """Pin quote fields (bid, ask, last, bidSize, askSize, ...) of one contract; {} clears."""
        def go():
            inst = self._find(symbol_or_conid)
            if values:
                self.market.pinned.setdefault(inst.conId, {}).update(values)
            else:
                self.market.pinned.pop(inst.conId, None)
            self.step()
        self.call(go)

    def set_entitlement(self, symbol: str, live: bool) -> None:
        self.call(self.entitled_live.__setitem__, symbol, live)

    def set_fill_mode(self, mode: str) -> None:
        if mode not in ("auto", "never", "manual"):
            raise ValueError("fill mode must be auto, never or manual")
        self.call(setattr, self, "fill_mode", mode)

    def fill_order(self, orderId: int, qty: float, price: float | None = None, clientId: int | None = None) -> None:
        """Fill (part of) a working order by hand, at price or the touch."""
        def go():
            o = next((o for (c, i), o in self.book.orders.items() if i == orderId and (clientId is None or c == clientId)), None)
            if o is None or not o.is_working:
                raise KeyError(f"no working order {orderId}")
            q = self.order_quote(o)
            self.fill(o, qty, price if price is not None else (q.ask if o.action == "BUY" else q.bid))
        self.call(go)

    def cancel(self, orderId: int, reason: str = "") -> None:
        """An IB-initiated cancel (e.g. 'At the open order can not be executed')."""
        def go():
            o = next((o for (c, i), o in self.book.orders.items() if i == orderId and o.is_working), None)
            if o is None:
                raise KeyError(f"no working order {orderId}")
            self.cancel_order(o, reason)
        self.call(go)

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward (quotes and resting orders follow at the next step)."""
        def go():
            self.clock.advance(seconds)
            self.step()
        self.call(go)

    def set_position(self, symbol_or_conid, qty: float, avg_price: float) -> None:
        """Seed a position (state from 'an earlier run'); cash is unchanged."""
        def go():
            from .book import Position
            inst = self._find(symbol_or_conid)
            self.book.positions[inst.conId] = Position(inst, float(qty), float(avg_price))
            self.push_position(inst)
        self.call(go)

    def seed_order(self, symbol_or_conid, action: str, qty: float, order_type: str = "LMT",
                   lmt_price: float | None = None, aux_price: float | None = None, *, order_ref: str = "",
                   clientId: int = 1, orderId: int | None = None, oca_group: str = "") -> int:
        """A working order left from 'an earlier run' of clientId (it is matched like any other
        order unless the fill mode says otherwise), in OCA group `oca_group` if given; returns its
        orderId."""
        def go():
            inst = self._find(symbol_or_conid)
            oid = orderId if orderId is not None else self.book.next_valid_id
            if (clientId, oid) in self.book.orders:
                raise ValueError(f"order {oid} of clientId {clientId} already exists")
            o = Order(orderId=oid, clientId=clientId, permId=self.book.new_perm(), inst=inst, action=action.upper(),
                      totalQuantity=float(qty), orderType=order_type.upper(), lmtPrice=lmt_price, auxPrice=aux_price,
                      account=self.book.account, orderRef=order_ref, symbol=inst.symbol, ocaGroup=oca_group,
                      status="PreSubmitted" if order_type.upper() in ("STP", "STP LMT") else "Submitted",
                      created=self.clock.now().isoformat())
            self.book.orders[(clientId, oid)] = o
            self.book.next_valid_id = max(self.book.next_valid_id, oid + 1)
            self.record_event("seeded_order", orderId=oid, clientId=clientId, permId=o.permId, orderRef=order_ref)
            self.try_fill(o)
            return oid
        return self.call(go)

    def _find(self, key) -> Instrument:
        if isinstance(key, Instrument):
            return key
        if isinstance(key, int):
            inst = self.catalog.get(key)
        else:
            inst = self.catalog.symbol(str(key).upper())
            if inst is None:
                fronts = self.catalog.front_future(str(key).upper())
                inst = fronts[0] if fronts else None
        if inst is None:
            raise KeyError(f"no contract {key!r} in the simulator's catalog")
        return inst

    def inject_error(self, reqId: int, code: int, text: str, clientId: int | None = None) -> None:
        def go():
            for s in list(self.sessions):
                if clientId is None or s.clientId == clientId:
                    s.error(reqId, code, text)
        self.call(go)

    def quote(self, symbol_or_conid) -> Quote:
        return self.call(lambda: self.market.quote(self._find(symbol_or_conid)))

    def now(self) -> dt.datetime:
        return self.clock.now()

    def apply(self, command: dict):
        """One fault or control command as a dict: {"cmd": name, ...arguments} (scenario steps and
        the control port use this)."""
        from .control import apply_command
        return apply_command(self, command)


def margin_rate(inst: Instrument) -> float:
    return {"STK": 0.25, "OPT": 1.0, "FUT": 0.06, "IND": 0.0}.get(inst.secType, 0.25)


def _venue(inst: Instrument | None) -> str:
    if inst is None:
        return "SMART"
    return {"STK": "ISLAND", "OPT": "CBOE"}.get(inst.secType, inst.exchange)


def _bar_time(ts, bar: str, fmt_: int) -> str:
    if fmt_ == 2:
        return str(int(ts.timestamp()))
    if bar.endswith(("d", "w", "M")):
        return ts.strftime("%Y%m%d")
    return ts.strftime("%Y%m%d %H:%M:%S") + " US/Eastern"


def _default_start(series: dict[str, Series]) -> dt.datetime:
    """09:30 New York on the last day of the intraday data, else on the day after the last daily bar."""
    import pandas as pd

    intraday = [s for s in series.values() if not s.daily]
    if intraday:
        ts = pd.Timestamp(max(s.t[-1] for s in intraday), unit="ns", tz="UTC").tz_convert(NY)
        day = ts.normalize()
        return (day + pd.Timedelta(hours=9, minutes=30)).to_pydatetime()
    ts = pd.Timestamp(max(s.t[-1] for s in series.values()), unit="ns", tz="UTC").tz_convert(NY)
    return (ts.normalize() + pd.Timedelta(hours=9, minutes=30)).to_pydatetime()


def _in_loop(loop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _as_coro(fn, *args, **kw):
    result = fn(*args, **kw)
    if asyncio.iscoroutine(result):
        result = await result
    return result


from .handlers import HANDLERS, pnl_update, realtime_update, scanner_update  # noqa: E402  (the handlers module needs the classes above)

"""The connection to TWS / IB Gateway: connect, watch, degrade, reconnect.

States: disconnected -> connecting -> reconciling -> ready <-> degraded.

* `connect()` makes the first connection. A duplicate client id (IB 326) is reported at once,
  not when ib_async's connect timeout runs out: ib_async sends errorEvent(-1, 326) and
  apiError("... already in use?") immediately but only raises TimeoutError later, so the attempt
  waits on whichever comes first. The same id is retried with backoff, then the fallback ids;
  `client_id_changed` then tells the integrator to read orders with reqAllOpenOrders (orders of
  another client id are not in reqOpenOrders). Nothing listening on the port raises
  ConnectError with a one-line how-to. After connect() the state is RECONCILING until the
  integrator has reconciled and calls `mark_ready()`.
* `check()` is called often by the loop. It reads what the callbacks recorded and acts:
  - the socket closed (disconnectedEvent, or `isConnected()` false: a silent drop) -> DISCONNECTED,
    ConnectionLost, then reconnect attempts with exponential backoff and jitter, one per call when
    due; a successful one emits ConnectionRestored(data_lost=True) (a new session has no
    subscriptions and new Trade/Ticker objects), runs the data-lost listeners and the reconnected
    listeners, and goes READY when they all returned;
  - no traffic for `heartbeat_idle` seconds -> a probe (reqCurrentTime within `probe_timeout`);
    no answer means a dead connection: it is closed and reconnected;
  - 1100 / 2110 -> DEGRADED and ConnectionLost (no new orders, quotes stale, positions not read
    as flat); 1101 -> ConnectionRestored(data_lost=True), data-lost listeners, reconnected
    listeners; 1102 -> ConnectionRestored(data_lost=False), reconnected listeners (to reconcile);
  - 2103 -> a BrokerError (lines suspect); 2104 for a farm that was broken -> data-lost listeners.
  A listener that raises leaves the state RECONCILING; it is called again after a backoff.

Listeners the integrator registers:
  on_data_lost(fn)      subscriptions are gone: 1101, 2104 after 2103, every new session
                        (re-request market data lines and bar streams)
  on_reconnected(fn)    IB's view may differ from ours: every new session, 1101, 1102
                        (rebind orders from ib.openTrades(), reconcile)

Events (on_event): ConnectionLost(time, reason) when the socket closes, a probe goes unanswered,
or on 1100/2110; ConnectionRestored(time, data_lost) on a new session (data_lost=True), 1101
(True) and 1102 (False); BrokerError(None, 326, ...) for each refused client id and once for the
fallback id used; BrokerError(None, 2103/2105/2157, ...) once per broken farm; BrokerError(None, 0,
...) when a listener failed and is retried. Times are ns UTC from `wall`.

ib_async raises ConnectionError('Socket disconnect') out of any ib.sleep / ib.run running when
the socket drops; `sleep()` is ib.sleep for the loop with that caught (check() then sees the loss).

Figures: `reconnects` (count), `last_reconnect_seconds` (from the loss being seen to the new
session being synchronised, before the listeners run) and `last_connect_seconds`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable

from .. import events
from . import codes

log = logging.getLogger("qtrade.ib.connection")


class State(str, enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    RECONCILING = "reconciling"
    READY = "ready"
    DEGRADED = "degraded"


class ConnectError(Exception):
    """The first connection failed; the message says in one line what to do."""


@dataclass(frozen=True)
class IBConfig:
    host: str = "127.0.0.1"
    port: int = 7497
    client_id: int = 1
    account: str = ""
    connect_timeout: float = 4.0      # the whole handshake and ib_async's start-up fetches
    read_only: bool = False
    live: bool = False                # --live: the account is a real one (the simulator's is paper)
    same_id_retries: int = 2          # on 326: retries of the same id before the fallbacks
    fallback_client_ids: tuple[int, ...] | None = None  # None: the next `fallback_count` ids; (): none
    fallback_count: int = 3
    backoff_base: float = 1.0         # seconds before the first retry; doubles each time
    backoff_max: float = 60.0
    jitter: float = 0.2               # each delay varies by up to +- this fraction
    heartbeat_idle: float = 20.0      # no traffic for this long -> probe (0 switches it off)
    probe_timeout: float = 4.0

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        if self.connect_timeout <= 0 or self.probe_timeout <= 0:
            raise ValueError("connect_timeout and probe_timeout must be positive")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("backoff_base must be positive and backoff_max at least backoff_base")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter is a fraction in [0, 1), not {self.jitter}")
        if self.same_id_retries < 0 or self.fallback_count < 0 or self.heartbeat_idle < 0:
            raise ValueError("same_id_retries, fallback_count and heartbeat_idle cannot be negative")

    def fallback_ids(self) -> tuple[int, ...]:
        if self.fallback_client_ids is not None:
            return tuple(i for i in self.fallback_client_ids if i != self.client_id)
        return tuple(self.client_id + k for k in range(1, self.fallback_count + 1))


def backoff_delay(attempt: int, base: float, maximum: float, jitter: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): base x 2^(attempt-1), at most
    `maximum`, varied by +- jitter (a fraction) so that many clients do not retry in step."""
    delay = min(maximum, base * 2 ** max(attempt - 1, 0))
    return max(0.0, delay * (1.0 + jitter * (2.0 * rand() - 1.0)))


def nothing_listening(host: str, port: int, live: bool = False) -> str:
    """What to do when no gateway answers: for a --live run, a gateway logged in to the live
    account (the simulator's is a paper account, which --live refuses)."""
    if live:
        return (f"nothing is listening on {host}:{port}: start TWS or IB Gateway logged in to the live account "
                f"with the API enabled (TWS 7496, IB Gateway 4001; --port for another), "
                f"or drop --live to trade a paper account")
    return (f"nothing is listening on {host}:{port}: start TWS or IB Gateway with the API enabled "
            f"(paper: TWS 7497, IB Gateway 4002; live: TWS 7496, IB Gateway 4001), "
            f"or run `qtrade gateway-sim --port {port}` for the simulator")


def handshake_timeout(host: str, port: int, timeout: float) -> str:
    """What to do when the connection attempt timed out: a host that never answered at all (a
    wrong --host, a firewall dropping the port) is told apart from a gateway that accepted the
    connection but did not answer the API handshake (the API disabled, this machine not a trusted
    IP), by one plain TCP connection."""
    try:
        socket.create_connection((host, port), timeout=min(timeout, 2.0)).close()
    except OSError as exc:      # (a timeout, an unreachable network, a refusal)
        why = "no answer" if isinstance(exc, TimeoutError) else str(exc)
        return (f"nothing answered at {host}:{port} within {timeout:g} s ({why}): check --host (the machine "
                f"TWS / IB Gateway runs on) and --port, and that no firewall drops the connection")
    trusted = "127.0.0.1" if host in ("127.0.0.1", "localhost", "::1") else "this machine's address"
    return (f"TWS / IB Gateway on {host}:{port} did not complete the API handshake within {timeout:g} s: "
            f"check that the API is enabled and {trusted} is a trusted IP, then retry")


class _ClientIdInUse(Exception):
    pass


class Connection:
    def __init__(self, ib, config: IBConfig, on_event: Callable[[object], None], *,
                 clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random,
                 wall: Callable[[], int] = time.time_ns):
        self.ib = ib
        self.config = config
        self.on_event = on_event
        self.clock = clock
        self.rand = rand
        self.wall = wall
        self.state = State.DISCONNECTED
        self.client_id: int | None = None
        self.client_id_changed = False
        self.reconnects = 0
        self.last_reconnect_seconds: float | None = None
        self.last_connect_seconds: float | None = None
        self._reconnected: list[Callable[[], None]] = []
        self._data_lost: list[Callable[[], None]] = []
        self._inbox: list[tuple[int, str]] = []
        self._socket_closed = False
        self._in_attempt = False
        self._in_use: asyncio.Future | None = None
        self._closed_by_us = False
        self._last_traffic = clock()
        self._lost_at: float | None = None
        self._lost_reason = ""
        self._degraded_reason = ""
        self._broken_farms: set[tuple[int, str]] = set()  # (code, farm) of the farms broken now
        self._attempts = 0            # failed attempts in the current reconnect cycle
        self._plan: list[int] = []    # client ids to try in the current cycle
        self._next_attempt = 0.0
        self._pending: list[str] = []  # listener groups still to run: "data_lost", "reconnected"
        self._pending_failures = 0
        self._pending_due = 0.0
        self._pending_next = 0         # the next listener to call in the first pending group
        self._ready_after_listeners = False  # a restore handled by listeners ends READY by itself
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.updateEvent += self._on_traffic
        ib.client.apiError += self._on_api_error

    # ------------------------------------------------------------------ listeners
    def on_reconnected(self, fn: Callable[[], None]) -> None:
        self._reconnected.append(fn)

    def on_data_lost(self, fn: Callable[[], None]) -> None:
        self._data_lost.append(fn)

    # ------------------------------------------------------------------ callbacks: record only
    def _on_error(self, req_id, code, text, contract) -> None:
        if code == 326 and self._in_use is not None and not self._in_use.done():
            self._in_use.set_result(code)
        if req_id == -1 or code in (1100, 1101, 1102, 1300, 2110):
            self._inbox.append((int(code), str(text)))

    def _on_api_error(self, message) -> None:
        if "already in use" in str(message) and self._in_use is not None and not self._in_use.done():
            self._in_use.set_result(326)

    def _on_disconnected(self) -> None:
        if not self._in_attempt and not self._closed_by_us:
            self._socket_closed = True

    def _on_traffic(self) -> None:
        self._last_traffic = self.clock()

    # ------------------------------------------------------------------ connect
    def connect(self) -> None:
        """The first connection; returns with the state RECONCILING (call mark_ready() once the
        integrator has reconciled). Raises ConnectError."""
        if self.state not in (State.DISCONNECTED,):
            raise ConnectError(f"already {self.state.value}: connect() makes the first connection only")
        cfg = self.config
        self._closed_by_us = False
        self._ready_after_listeners = False
        self.state = State.CONNECTING
        started = self.clock()
        plan = self._client_id_plan(cfg.client_id)
        try:
            for k, cid in enumerate(plan):
                if k:
                    self.ib.sleep(backoff_delay(k, cfg.backoff_base, cfg.backoff_max, cfg.jitter, self.rand))
                try:
                    self._attempt(cid)
                except _ClientIdInUse:
                    self._emit_in_use(cid, plan[k + 1] if k + 1 < len(plan) else None)
                    continue
                except ConnectionRefusedError:
                    raise ConnectError(nothing_listening(cfg.host, cfg.port, cfg.live)) from None
                except (asyncio.TimeoutError, TimeoutError):
                    raise ConnectError(handshake_timeout(cfg.host, cfg.port, cfg.connect_timeout)) from None
                except (ConnectionError, OSError) as exc:
                    raise ConnectError(f"could not connect to {cfg.host}:{cfg.port}: {exc}; check that TWS / IB "
                                       f"Gateway is running with the API enabled") from None
                self.last_connect_seconds = self.clock() - started
                self._session_up(cid)
                return
            ids = ", ".join(str(i) for i in dict.fromkeys(plan))
            raise ConnectError(f"client ids {ids} are all in use by other API sessions (IB 326): close them or "
                               f"set another client_id")
        except BaseException:
            self.state = State.DISCONNECTED
            raise

    def _client_id_plan(self, first: int) -> list[int]:
        cfg = self.config
        plan = [first] * (1 + cfg.same_id_retries)
        for cid in (cfg.client_id, *cfg.fallback_ids()):
            if cid not in plan:
                plan.append(cid)
        return plan

    def _attempt(self, cid: int) -> None:
        """One connection attempt with client id `cid`; raises _ClientIdInUse at the first sign
        of a 326, ConnectionRefusedError, TimeoutError or ConnectionError."""
        cfg = self.config
        ib = self.ib

        async def attempt():
            loop = asyncio.get_running_loop()
            self._in_use = loop.create_future()
            task = asyncio.ensure_future(ib.connectAsync(cfg.host, cfg.port, cid, timeout=cfg.connect_timeout,
                                                         readonly=cfg.read_only, account=cfg.account))
            done, _ = await asyncio.wait({task, self._in_use}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                return
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - the attempt is abandoned; 326 is the answer
                pass
            raise _ClientIdInUse(cid)

        self._in_attempt = True
        try:
            ib.run(asyncio.wait_for(attempt(), cfg.connect_timeout + 1.0))
        finally:
            self._in_attempt = False
            self._in_use = None
        if not ib.isConnected():
            raise ConnectionError("the connection closed while it was being synchronised")

    def _emit_in_use(self, cid: int, next_id: int | None) -> None:
        then = (f"retrying with client id {next_id}" if next_id == cid else
                f"trying client id {next_id} instead" if next_id is not None else "no client id left to try")
        self.on_event(events.BrokerError(None, 326, f"client id {cid} is already in use by another API session "
                                                    f"(IB 326); {then}", self.wall()))

    def _session_up(self, cid: int) -> None:
        cfg = self.config
        changed = cid != cfg.client_id
        if changed and self.client_id != cid:
            self.on_event(events.BrokerError(
                None, 326, f"connected as client id {cid} because client id {cfg.client_id} is in use; orders of "
                           f"client id {cfg.client_id} are read with reqAllOpenOrders and cannot be modified from "
                           f"this session", self.wall()))
        self.client_id = cid
        self.client_id_changed = changed
        self.state = State.RECONCILING
        self._socket_closed = False
        self._inbox.clear()
        self._broken_farms.clear()
        self._degraded_reason = ""
        self._last_traffic = self.clock()

    def mark_ready(self) -> None:
        """The integrator has reconciled: orders may be placed again."""
        if self.state == State.RECONCILING and not self._pending:
            self.state = State.READY

    def sleep(self, seconds: float) -> None:
        """ib.sleep for the loop: ib_async raises ConnectionError('Socket disconnect') out of any
        ib.sleep/ib.run that is running when the socket drops; here that only ends the sleep, and
        the next check() handles the loss."""
        try:
            self.ib.sleep(seconds)
        except ConnectionError:
            self._socket_closed = True

    def close(self) -> None:
        """Disconnect on purpose; check() does not reconnect after it."""
        self._closed_by_us = True
        self.ib.disconnect()
        self.state = State.DISCONNECTED

    # ------------------------------------------------------------------ the loop's check
    def check(self) -> State:
        if self._closed_by_us or self.state == State.CONNECTING:
            return self.state
        now = self.clock()
        if self.state != State.DISCONNECTED and (self._socket_closed or not self.ib.isConnected()):
            self._lose("the connection to TWS / IB Gateway closed")
        if self.state == State.DISCONNECTED:
            if self._lost_at is not None and now >= self._next_attempt:
                self._reconnect_step()
            return self.state
        self._process_inbox()
        cfg = self.config
        if cfg.heartbeat_idle and self.clock() - self._last_traffic >= cfg.heartbeat_idle:
            self._probe()
            if self.state == State.DISCONNECTED:
                return self.state
        if self._pending and self.state != State.DEGRADED and self.clock() >= self._pending_due:
            self._run_pending()
        return self.state

    def _probe(self) -> None:
        cfg = self.config
        try:
            self.ib.run(asyncio.wait_for(self.ib.reqCurrentTimeAsync(), cfg.probe_timeout))
            self._last_traffic = self.clock()
        except (asyncio.TimeoutError, TimeoutError, ConnectionError):
            idle = self.clock() - self._last_traffic
            self._closed_by_us = True
            try:
                self.ib.disconnect()
            finally:
                self._closed_by_us = False
            self._lose(f"no answer from TWS / IB Gateway for {idle:.0f} s (a probe timed out after "
                       f"{cfg.probe_timeout:g} s)")

    def _lose(self, reason: str) -> None:
        self.state = State.DISCONNECTED
        self._socket_closed = False
        self._lost_at = self.clock()
        self._lost_reason = reason
        self._attempts = 0
        self._plan = self._client_id_plan(self.client_id if self.client_id is not None else self.config.client_id)
        self._next_attempt = self._lost_at
        self._pending.clear()
        self._pending_next = 0
        self.on_event(events.ConnectionLost(self.wall(), f"{reason}; reconnecting"))

    def _reconnect_step(self) -> None:
        """One reconnect attempt; on failure the next one is scheduled."""
        cfg = self.config
        cid = self._plan[0] if self._plan else cfg.client_id
        self.state = State.CONNECTING
        try:
            self._attempt(cid)
        except _ClientIdInUse:
            self._plan.pop(0)
            if not self._plan:
                self._plan = self._client_id_plan(cid)
            self._emit_in_use(cid, self._plan[0])
            self._schedule_retry()
            return
        except (ConnectionRefusedError, asyncio.TimeoutError, TimeoutError, ConnectionError, OSError) as exc:
            log.info("reconnect to %s:%s failed: %r", cfg.host, cfg.port, exc)
            self._schedule_retry()
            return
        except Exception as exc:  # noqa: BLE001 - the reconnect loop must outlive any one attempt
            log.warning("reconnect to %s:%s failed unexpectedly: %r", cfg.host, cfg.port, exc)
            self._schedule_retry()
            return
        self.reconnects += 1
        self.last_reconnect_seconds = self.clock() - (self._lost_at or self.clock())
        self._lost_at = None
        self._session_up(cid)
        self.on_event(events.ConnectionRestored(self.wall(), data_lost=True))
        self._pending = ["data_lost", "reconnected"]
        self._pending_next = 0
        self._pending_failures = 0
        self._ready_after_listeners = True
        self._run_pending()

    def _schedule_retry(self) -> None:
        cfg = self.config
        self.state = State.DISCONNECTED
        self._attempts += 1
        self._next_attempt = self.clock() + backoff_delay(self._attempts, cfg.backoff_base, cfg.backoff_max,
                                                          cfg.jitter, self.rand)

    # ------------------------------------------------------------------ IB's connectivity codes
    def _process_inbox(self) -> None:
        inbox, self._inbox = self._inbox, []
        for code, text in inbox:
            info = codes.classify(code, text)
            if info.kind == codes.Kind.CONNECTIVITY_LOST and code != 1300:
                if self.state != State.DEGRADED:
                    self.state = State.DEGRADED
                    self._degraded_reason = info.message
                    self.on_event(events.ConnectionLost(self.wall(), info.message))
            elif info.kind == codes.Kind.RESTORED_DATA_LOST:
                self._restored(data_lost=True)
            elif info.kind == codes.Kind.RESTORED_DATA_KEPT:
                self._restored(data_lost=False)
            elif info.kind == codes.Kind.FARM_BROKEN:
                farm = _farm(text)
                if (code, farm) not in self._broken_farms:
                    self._broken_farms.add((code, farm))
                    self.on_event(events.BrokerError(None, code, codes.describe(code, text), self.wall()))
            elif info.kind == codes.Kind.FARM_OK and code == 2104:
                farm = _farm(text)
                broken = {b for b in self._broken_farms if b[0] == 2103 and (not farm or not b[1] or b[1] == farm)}
                if broken:
                    self._broken_farms -= broken
                    self._add_pending("data_lost")
                    if self.state != State.DEGRADED:  # else 1101 / 1102 run it
                        self._run_pending()

    def _restored(self, data_lost: bool) -> None:
        self._degraded_reason = ""
        self.state = State.RECONCILING
        self.on_event(events.ConnectionRestored(self.wall(), data_lost=data_lost))
        if data_lost:
            self._add_pending("data_lost")
        self._add_pending("reconnected")
        self._pending_failures = 0
        self._ready_after_listeners = True
        self._run_pending()

    def _add_pending(self, group: str) -> None:
        if group not in self._pending:
            first = self._pending[0] if self._pending else None
            self._pending.append(group)
            self._pending.sort(key=("data_lost", "reconnected").index)
            if self._pending[0] != first:
                self._pending_next = 0

    def _run_pending(self) -> None:
        """The listener groups still to run, in order; a listener that raises is called again
        (it and the ones after it, not the ones before) after a backoff."""
        while self._pending:
            group = self._pending[0]
            listeners = self._data_lost if group == "data_lost" else self._reconnected
            while self._pending_next < len(listeners):
                fn = listeners[self._pending_next]
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - a listener's failure is retried, not fatal
                    self._pending_failures += 1
                    cfg = self.config
                    delay = backoff_delay(self._pending_failures, cfg.backoff_base, cfg.backoff_max, cfg.jitter,
                                          self.rand)
                    self._pending_due = self.clock() + delay
                    name = getattr(fn, "__qualname__", repr(fn))
                    self.on_event(events.BrokerError(None, 0, f"{name} failed after the connection was restored: "
                                                              f"{exc}; retrying in {delay:.1f} s", self.wall()))
                    return
                self._pending_next += 1
                if self.state == State.DISCONNECTED:
                    return
            self._pending.pop(0)
            self._pending_next = 0
        if self.state == State.RECONCILING and self._ready_after_listeners:
            self._ready_after_listeners = False
            self.state = State.READY

    # ------------------------------------------------------------------ what the integrator reads
    @property
    def trading_allowed(self) -> bool:
        return self.state == State.READY

    def status(self) -> str:
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        if self.state == State.READY:
            return f"ready: connected to {where} as client id {self.client_id}"
        if self.state == State.DEGRADED:
            return f"degraded: {self._degraded_reason}"
        if self.state == State.RECONCILING:
            return f"reconciling with IB on {where}: no new orders until it has finished"
        if self.state == State.CONNECTING:
            return f"connecting to {where}"
        if self._lost_at is not None:
            wait = max(0.0, self._next_attempt - self.clock())
            return (f"disconnected: {self._lost_reason}; reconnect attempt {self._attempts + 1} "
                    f"in {wait:.1f} s")
        return f"disconnected from {where}"


def _farm(text: str) -> str:
    """The farm a 2103/2104 names ('Market data farm connection is OK:usfarm' -> 'usfarm')."""
    return text.rsplit(":", 1)[-1].strip() if ":" in text else ""

"""Connection: connect, fail fast on 326, the fallback client id, the state machine, reconnects.
Real ib_async over TCP against the gateway simulator (scenario numbers: IB_BEHAVIOUR.md)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ib_async import IB

from engine.brokers import events
from engine.brokers.ib.connection import (ConnectError, Connection, IBConfig, State, backoff_delay,
                                          nothing_listening)


def pump(conn: Connection, until, timeout: float = 3.0, step: float = 0.02) -> bool:
    """Run the loop the way the kernel does: check(), then sleep, until `until()` or the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        conn.check()
        if until():
            return True
        conn.sleep(step)
    return bool(until())


class Sink(list):
    """on_event: the events with the monotonic time each arrived."""

    def __call__(self, event):
        self.append(event)
        self.times = getattr(self, "times", []) + [time.perf_counter()]

    def of(self, kind):
        return [e for e in self if isinstance(e, kind)]


@pytest.fixture
def opened():
    conns = []

    def make(port, sink=None, **cfg):
        cfg.setdefault("backoff_base", 0.05)
        cfg.setdefault("backoff_max", 0.5)
        cfg.setdefault("heartbeat_idle", 0)
        sink = sink if sink is not None else Sink()
        conn = Connection(IB(), IBConfig(port=port, **cfg), sink)
        conns.append(conn)
        return conn, sink
    yield make
    for conn in conns:
        conn.close()


def listeners(conn):
    calls = []
    conn.on_data_lost(lambda: calls.append("data_lost"))
    conn.on_reconnected(lambda: calls.append("reconnected"))
    return calls


def ready(opened, port, **cfg):
    """A connection made and reconciled, with listeners that record their calls."""
    conn, sink = opened(port, **cfg)
    conn.connect()
    conn.mark_ready()
    return conn, sink, listeners(conn)


# ---------------------------------------------------------------------------- pure pieces
def test_backoff_doubles_up_to_its_cap_and_jitter_stays_inside_its_band():
    assert [backoff_delay(k, 1.0, 10.0, 0.0, lambda: 0.5) for k in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(3, 1.0, 60.0, 0.2, lambda: 0.0) == pytest.approx(3.2)
    assert backoff_delay(3, 1.0, 60.0, 0.2, lambda: 1.0) == pytest.approx(4.8)


def test_config_fallback_ids_and_validation():
    assert IBConfig(client_id=7).fallback_ids() == (8, 9, 10)
    assert IBConfig(client_id=7, fallback_client_ids=(7, 20, 21)).fallback_ids() == (20, 21)
    assert IBConfig(fallback_client_ids=()).fallback_ids() == ()
    with pytest.raises(ValueError, match="jitter"):
        IBConfig(jitter=1.5)
    with pytest.raises(ValueError, match="port"):
        IBConfig(port=0)


def test_the_nothing_listening_message_is_one_line_with_every_way_to_start_a_gateway():
    text = nothing_listening("127.0.0.1", 4002)
    assert "\n" not in text
    for part in ("127.0.0.1:4002", "TWS 7497", "IB Gateway 4002", "qtrade gateway-sim --port 4002"):
        assert part in text


def test_a_live_run_with_nothing_listening_is_told_of_the_live_gateways_not_the_paper_simulator():
    """The simulator's account is a paper one, which --live refuses: a live run is not sent there."""
    text = nothing_listening("127.0.0.1", 7496, live=True)
    assert "\n" not in text
    for part in ("127.0.0.1:7496", "live account", "TWS 7496", "IB Gateway 4001", "drop --live"):
        assert part in text
    assert "gateway-sim" not in text and "7497" not in text
    assert nothing_listening("127.0.0.1", 7496, live=False) != text


# ---------------------------------------------------------------------------- against the simulator
def test_clean_connect_takes_under_a_second_and_waits_for_the_reconciliation(sim, opened):
    conn, sink = opened(sim.port)
    t0 = time.perf_counter()
    conn.connect()
    assert time.perf_counter() - t0 < 1.0 and conn.last_connect_seconds < 1.0
    assert conn.state == State.RECONCILING and not conn.trading_allowed
    assert conn.client_id == 1 and not conn.client_id_changed
    conn.mark_ready()
    assert conn.state == State.READY and conn.trading_allowed
    assert "ready: connected to 127.0.0.1" in conn.status()
    assert list(sink) == []


def test_duplicate_client_id_fails_fast_then_falls_back_and_sees_the_old_orders(sim, opened, expect_errors):
    """Scenario 3: another session holds clientId 1; 326 is reported within 1 s (not after the
    4 s connect timeout), the same id is retried with backoff, then the fallback id connects and
    still sees clientId 1's order through reqAllOpenOrders."""
    expect_errors(326, "already in use", "API connection failed: CancelledError")
    sim.seed_order("SPY", "BUY", 10, "LMT", 1.0, order_ref="qtrade:old:1", clientId=1)
    sim.hold_client_id(1)
    conn, sink = opened(sim.port, connect_timeout=4.0, same_id_retries=2, backoff_base=0.1)
    t0 = time.perf_counter()
    conn.connect()
    refused = [(e, t) for e, t in zip(sink, sink.times) if isinstance(e, events.BrokerError) and e.code == 326]
    assert refused[0][1] - t0 < 1.0
    assert len(refused) == 4  # three refusals of id 1 (the first try and two retries), then the fallback notice
    assert "retrying with client id 1" in refused[0][0].message
    assert "trying client id 2 instead" in refused[2][0].message
    assert "connected as client id 2" in refused[3][0].message and "reqAllOpenOrders" in refused[3][0].message
    gaps = [b[1] - a[1] for a, b in zip(refused, refused[1:3])]
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16  # backed off, doubling (0.1 s, 0.2 s, +-20 % jitter)
    assert conn.client_id == 2 and conn.client_id_changed
    assert [e["clientId"] for e in sim.events if e["kind"] == "duplicate_client_id"] == [1, 1, 1]
    assert conn.ib.reqOpenOrders() == []  # this client id's own orders: none
    assert [t.order.orderRef for t in conn.ib.reqAllOpenOrders()] == ["qtrade:old:1"]


def test_every_client_id_in_use_is_a_plain_connect_error(sim, opened, expect_errors):
    expect_errors(326, "already in use", "API connection failed: CancelledError")
    for cid in (1, 2):
        sim.hold_client_id(cid)
    conn, _ = opened(sim.port, same_id_retries=0, fallback_client_ids=(2,))
    with pytest.raises(ConnectError, match=r"client ids 1, 2 are all in use by other API sessions \(IB 326\)"):
        conn.connect()
    assert conn.state == State.DISCONNECTED


def test_nothing_listening_raises_a_connect_error_saying_how_to_start_a_gateway(opened, expect_errors):
    expect_errors("API connection failed: ConnectionRefusedError", "Make sure API port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn, _ = opened(port)
    t0 = time.perf_counter()
    with pytest.raises(ConnectError) as err:
        conn.connect()
    assert time.perf_counter() - t0 < 1.0
    assert str(err.value) == nothing_listening("127.0.0.1", port)
    assert conn.state == State.DISCONNECTED


def test_a_dropped_connection_reconnects_and_calls_the_listeners(sim, opened, expect_errors):
    expect_errors("Peer closed connection")
    conn, sink, calls = ready(opened, sim.port)
    sim.drop_connection()
    assert pump(conn, lambda: conn.reconnects == 1 and conn.state == State.READY)
    assert [type(e) for e in sink] == [events.ConnectionLost, events.ConnectionRestored]
    assert sink[1].data_lost  # a new session: every subscription is gone
    assert calls == ["data_lost", "reconnected"]
    assert conn.last_reconnect_seconds < 1.0
    assert conn.ib.reqCurrentTime() is not None and conn.client_id == 1
    assert len([e for e in sim.events if e["kind"] == "connected"]) == 2


def test_the_nightly_gateway_restart_ends_in_a_reconnect(sim, opened, expect_errors):
    """The gateway's auto-restart: the socket drops, the port refuses connections for a while,
    nextValidId is rolled back; the connection keeps retrying with backoff and comes back."""
    expect_errors("Peer closed connection", "API connection failed: ConnectionRefusedError", "Make sure API port")
    conn, sink, calls = ready(opened, sim.port, backoff_base=0.1, backoff_max=0.2, jitter=0.0)
    sim.restart(next_valid_id=1, down_for=0.5)
    assert pump(conn, lambda: conn.state == State.DISCONNECTED and "reconnect attempt" in conn.status())
    assert pump(conn, lambda: conn.state == State.READY, timeout=5.0)
    assert conn.reconnects == 1 and 0.4 < conn.last_reconnect_seconds < 2.0
    assert calls == ["data_lost", "reconnected"]
    assert [type(e) for e in sink] == [events.ConnectionLost, events.ConnectionRestored]
    assert [e["kind"] for e in sim.events if e["kind"] in ("restarted", "connected")] == \
        ["connected", "restarted", "connected"]


def test_1100_degrades_and_1101_restores_with_data_lost(make_sim, opened, expect_errors):
    """Scenario 5 (the connection's part): 1100 -> degraded, 1101 -> data-lost listeners
    (resubscribe) and reconnected listeners (reconcile), then ready."""
    expect_errors(1100, 1101)
    sim = make_sim(speed=60)
    conn, sink, calls = ready(opened, sim.port)
    sim.connectivity(1100)
    assert pump(conn, lambda: conn.state == State.DEGRADED)
    assert not conn.trading_allowed and "IB 1100" in conn.status()
    assert isinstance(sink[-1], events.ConnectionLost) and "IB 1100" in sink[-1].reason
    sim.connectivity(1101)
    assert pump(conn, lambda: conn.state == State.READY)
    assert calls == ["data_lost", "reconnected"]
    assert sink[-1] == events.ConnectionRestored(sink[-1].time, data_lost=True)
    assert conn.reconnects == 0  # the socket never dropped


def test_1100_then_1102_restores_with_data_kept_and_only_reconciles(make_sim, opened, expect_errors):
    expect_errors(1100, 1102)
    sim = make_sim(speed=60)
    conn, sink, calls = ready(opened, sim.port)
    sim.connectivity(1100)
    assert pump(conn, lambda: conn.state == State.DEGRADED)
    sim.connectivity(1102)
    assert pump(conn, lambda: conn.state == State.READY)
    assert calls == ["reconnected"]
    assert sink[-1] == events.ConnectionRestored(sink[-1].time, data_lost=False)


def test_2103_then_2104_calls_the_data_lost_listeners_and_a_lone_2104_does_not(make_sim, opened):
    """Scenario 6 (the connection's part): 2104 at connect is routine; 2104 after 2103 means
    the lines must be requested again."""
    sim = make_sim(speed=60)
    conn, sink, calls = ready(opened, sim.port)
    conn.sleep(0.1)
    conn.check()
    assert calls == []  # the 2104/2106/2158 every connect brings
    sim.farm(ok=False)
    assert pump(conn, lambda: bool(sink.of(events.BrokerError)))
    assert sink.of(events.BrokerError)[0].code == 2103 and "usfarm" in sink[0].message
    assert conn.state == State.READY
    sim.farm(ok=True)
    assert pump(conn, lambda: calls == ["data_lost"])
    conn.sleep(0.1)
    conn.check()
    assert calls == ["data_lost"] and conn.state == State.READY


def test_a_listener_that_fails_is_retried_and_ready_waits_for_it(sim, opened, expect_errors):
    expect_errors("Peer closed connection")
    conn, sink = opened(sim.port, backoff_base=0.1)
    conn.connect()
    conn.mark_ready()
    tries, rebinds = [], []
    conn.on_reconnected(lambda: rebinds.append(1))

    def reconcile():
        tries.append(time.perf_counter())
        if len(tries) == 1:
            raise TimeoutError("positions did not arrive within 4 s")
    conn.on_reconnected(reconcile)
    sim.drop_connection()
    assert pump(conn, lambda: len(tries) == 1)
    assert conn.state == State.RECONCILING and not conn.trading_allowed
    assert "positions did not arrive within 4 s; retrying in" in sink.of(events.BrokerError)[-1].message
    assert pump(conn, lambda: conn.state == State.READY)
    assert len(tries) == 2 and tries[1] - tries[0] >= 0.08
    assert rebinds == [1]  # the listener before the failing one is not called again


class Blackhole:
    """A TCP proxy in front of the simulator that can go silent: the sockets stay open and
    nothing is forwarded any more (a NAT or firewall drop that no close ever reports)."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[dict] = []
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            pair = {"silent": False, "socks": (client, upstream)}
            self.pairs.append(pair)
            self._spawn(self._pipe, client, upstream, pair)
            self._spawn(self._pipe, upstream, client, pair)

    @staticmethod
    def _pipe(src, dst, pair):
        try:
            while data := src.recv(65536):
                if not pair["silent"]:
                    dst.sendall(data)
        except OSError:
            pass
        _shut(pair["socks"])

    def go_silent(self):
        for pair in self.pairs:
            pair["silent"] = True

    def close(self):
        self.listener.close()
        for pair in self.pairs:
            _shut(pair["socks"])


def _shut(socks):
    """shutdown, not only close: a close from another thread leaves a blocked recv holding the
    socket open on Linux, and the far end would never see the connection end."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def test_a_silent_drop_is_found_by_the_probe_and_reconnected(make_sim, opened):
    """deepentropy/ibx#113: no close is ever reported; an idle connection is probed
    (reqCurrentTime), a probe without an answer closes it and the connection is made again.
    (The proxy passes our own close on to the simulator, so the old session ends and the same
    client id is free again.)"""
    sim = make_sim(speed=60)
    proxy = Blackhole(sim.port)
    try:
        conn, sink, calls = ready(opened, proxy.port, heartbeat_idle=0.3, probe_timeout=0.3)
        probes = len(sim.messages("reqCurrentTime"))
        assert pump(conn, lambda: len(sim.messages("reqCurrentTime")) > probes, timeout=2.0)
        assert conn.state == State.READY  # a healthy idle connection answers its probe
        proxy.go_silent()
        t0 = time.perf_counter()
        assert pump(conn, lambda: bool(sink.of(events.ConnectionLost)), timeout=3.0)
        assert time.perf_counter() - t0 < 1.5  # idle 0.3 s + probe 0.3 s, and the loop's step
        assert "probe timed out" in sink.of(events.ConnectionLost)[0].reason
        assert pump(conn, lambda: conn.state == State.READY and conn.reconnects == 1, timeout=3.0)
        assert calls == ["data_lost", "reconnected"]
        assert conn.ib.reqCurrentTime() is not None
    finally:
        proxy.close()


def test_a_port_that_accepts_but_never_answers_is_a_handshake_timeout(opened, expect_errors):
    expect_errors("API connection failed: TimeoutError")
    with socket.create_server(("127.0.0.1", 0)) as mute:  # TCP accepts, no API answer ever comes
        conn, _ = opened(mute.getsockname()[1], connect_timeout=0.5)
        t0 = time.perf_counter()
        with pytest.raises(ConnectError, match=r"did not complete the API handshake within 0.5 s: check that the "
                                               r"API is enabled and 127.0.0.1 is a trusted IP"):
            conn.connect()
        assert time.perf_counter() - t0 < 1.5 and conn.state == State.DISCONNECTED


def test_a_host_that_never_answers_is_not_blamed_on_the_handshake(opened, expect_errors, monkeypatch):
    """A wrong --host (or a firewall dropping the port) times out like a mute gateway, but no TCP
    connection ever came up: the message says to check the host, not the API settings. (This
    sandbox's network accepts a TCP connection to any address, so the host that never answers is
    the plain TCP probe's timeout, made here; the connection attempt itself is real.)"""
    expect_errors("API connection failed: TimeoutError")
    import engine.brokers.ib.connection as connection

    def no_answer(address, timeout=None):
        raise TimeoutError("timed out")

    with socket.create_server(("127.0.0.1", 0)) as mute:
        conn, _ = opened(mute.getsockname()[1], connect_timeout=0.5)
        monkeypatch.setattr(connection.socket, "create_connection", no_answer)
        with pytest.raises(ConnectError, match=r"nothing answered at 127.0.0.1:\d+ within 0.5 s \(no answer\): "
                                               r"check --host .* and --port, and that no firewall") as err:
            conn.connect()
    assert "handshake" not in str(err.value) and conn.state == State.DISCONNECTED


def test_the_handshake_message_names_the_trusted_ip_to_add(monkeypatch):
    import engine.brokers.ib.connection as connection
    with socket.create_server(("127.0.0.1", 0)) as mute:      # TCP answers: the handshake is what failed
        port = mute.getsockname()[1]
        assert "127.0.0.1 is a trusted IP" in connection.handshake_timeout("localhost", port, 1.0)

    class Reached:
        def close(self):
            pass

    # a gateway on another machine: its trusted IPs need this machine's address, not 127.0.0.1
    monkeypatch.setattr(connection.socket, "create_connection", lambda address, timeout=None: Reached())
    text = connection.handshake_timeout("gw.example", 4002, 1.0)
    assert "did not complete the API handshake" in text and "this machine's address is a trusted IP" in text


def test_2110_is_handled_like_1100(make_sim, opened, expect_errors):
    expect_errors(1102)  # 2110 is one of IB's 2100-2199 warnings; 1102 is logged as an error
    sim = make_sim(speed=60)
    conn, sink, calls = ready(opened, sim.port)
    sim.inject_error(-1, 2110, "Connectivity between Trader Workstation and server is broken. It will be restored "
                               "automatically.")
    assert pump(conn, lambda: conn.state == State.DEGRADED)
    assert isinstance(sink[-1], events.ConnectionLost) and "IB 2110" in sink[-1].reason
    sim.inject_error(-1, 1102, "Connectivity between IB and Trader Workstation has been restored - data maintained.")
    assert pump(conn, lambda: conn.state == State.READY and calls == ["reconnected"])

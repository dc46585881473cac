"""Handshake, startup, current time, version negotiation, CLI and bad input."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gatewaysim import DataError, GatewaySim
from gatewaysim.protocol import frame, negotiate, split, ProtocolError

ROOT = Path(__file__).resolve().parents[2]


def test_connect_with_the_real_client_is_fast_and_complete(sim, connect):
    t0 = time.perf_counter()
    ib = connect(sim)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"connect took {elapsed:.2f}s: a startup end marker is missing"
    assert ib.client.serverVersion() == 178
    assert ib.managedAccounts() == ["DU1234567"]
    names = [m["name"] for m in sim.messages()]
    for wanted in ("startApi", "reqPositions", "reqOpenOrders", "reqCompletedOrders", "reqAccountUpdates",
                   "reqAccountUpdatesMulti", "reqExecutions"):
        assert wanted in names
    values = {v.tag: v.value for v in ib.accountValues()}
    assert float(values["NetLiquidation"]) == pytest.approx(1_000_000.0)


def test_current_time_is_the_simulated_clock(make_sim, connect):
    sim = make_sim(speed=60)
    ib = connect(sim)
    t = ib.reqCurrentTime()
    assert abs((t - sim.now()).total_seconds()) < 5
    assert t.year == 2019 and t.month == 11 and t.day == 8  # the bundled XSP minutes end on 2019-11-08
    time.sleep(0.5)
    later = ib.reqCurrentTime()
    assert (later - t).total_seconds() >= 20  # 0.5 s wall x 60


def test_next_valid_id_follows_the_orders_seen(sim, connect):
    ib = connect(sim)
    first = ib.client.getReqId()
    assert first >= 1
    from ib_async import MarketOrder, Stock

    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    trade = ib.placeOrder(spy, MarketOrder("BUY", 1))
    ib.sleep(0.2)
    ib.disconnect()
    ib2 = connect(sim, clientId=1)
    assert ib2.client.getReqId() > trade.order.orderId


def _raw_connect(port, version_range=b"v100..120"):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"API\0" + struct.pack(">I", len(version_range)) + version_range)
    return s


def test_too_old_a_client_is_closed_with_a_logged_reason(sim, caplog):
    with caplog.at_level("INFO", logger="gatewaysim"):
        s = _raw_connect(sim.port)
        s.settimeout(2)
        assert s.recv(100) == b""  # closed, nothing sent
        s.close()
        time.sleep(0.1)
    assert any("do not overlap 157..178" in r.getMessage() for r in caplog.records)


def test_a_message_before_start_api_closes_the_session(sim, caplog):
    with caplog.at_level("INFO", logger="gatewaysim"):
        s = _raw_connect(sim.port, b"v157..178")
        s.settimeout(2)
        n = struct.unpack(">I", s.recv(4))[0]
        assert split(s.recv(n))[0] == "178"
        s.sendall(frame([49, 1]))
        assert s.recv(100) == b""
        s.close()
        time.sleep(0.1)
    assert any("arrived before startApi" in r.getMessage() for r in caplog.records)


def test_malformed_fields_are_answered_not_crashed(sim, connect, caplog):
    ib = connect(sim)
    s = _raw_connect(sim.port, b"v157..178")
    s.settimeout(2)
    n = struct.unpack(">I", s.recv(4))[0]
    s.recv(n)
    s.sendall(frame([71, 2, 7, ""]))
    time.sleep(0.1)
    with caplog.at_level("INFO", logger="gatewaysim"):
        s.sendall(frame([9, 8, "notanumber", 0]))  # reqContractDetails with a bad reqId
        time.sleep(0.2)
    s.close()
    assert any("expected an integer" in r.getMessage() for r in caplog.records)
    assert ib.reqCurrentTime()  # the simulator is still serving the other client


def test_version_negotiation():
    assert negotiate("v157..178") == 178
    assert negotiate("v157..176") == 176
    assert negotiate("v100..200 +PACEAPI") == 178
    with pytest.raises(ProtocolError):
        negotiate("hello")


def test_bad_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        GatewaySim(tmp_path / "missing")
    (tmp_path / "README.txt").write_text("not bars\n")
    with pytest.raises(DataError, match="no usable bars"):
        GatewaySim(tmp_path)


def test_a_file_served_under_its_name_says_how_to_serve_it_as_the_ticker(tmp_path, caplog):
    """spy_daily.csv holds SPY's bars but no symbol column: it is served as SPY_DAILY, which no
    strategy names; the simulator says so, and how to serve it as SPY. SPY.csv is not remarked."""
    sample = (ROOT / "strategies" / "data" / "SPY.csv").read_text()
    (tmp_path / "spy_daily.csv").write_text(sample)
    with caplog.at_level("WARNING", logger="gatewaysim"):
        sim = GatewaySim(tmp_path / "spy_daily.csv")
    assert sorted(sim.series) == ["SPY_DAILY"]
    said = [r.getMessage() for r in caplog.records if "named after the file" in r.getMessage()]
    assert said == [f"{tmp_path / 'spy_daily.csv'} is served as the symbol SPY_DAILY, named after the file; to serve "
                    "it as SPY, rename it SPY.csv or give it a symbol column"], said
    (tmp_path / "spy_daily.csv").rename(tmp_path / "SPY.csv")
    caplog.clear()
    with caplog.at_level("WARNING", logger="gatewaysim"):
        GatewaySim(tmp_path)
    assert not [r for r in caplog.records if "named after the file" in r.getMessage()]


def test_running_past_the_end_of_the_data_is_said_once(caplog):
    # the sample's XSP minute bars end at 16:00 New York that day, its VIX daily bars in December;
    # its AAPL, INTC and SPY daily bars ended years before
    sim = GatewaySim(start="2019-11-08 15:55", speed=1)

    def said():
        return [r.getMessage() for r in caplog.records if "past the last bar" in r.getMessage()]
    with caplog.at_level("WARNING", logger="gatewaysim"):
        sim.step()
        sim.step()
        assert len(said()) == 1 and "past the last bar of AAPL, INTC, SPY in the data (the last by 2018-01-19 21:00 UTC): " \
            "their quotes stand at the last close" in said()[0] and "--start" in said()[0], said()
        sim.clock.advance(6 * 60)
        sim.step()
        sim.step()
    assert len(said()) == 2 and "past the last bar of XSP in the data (2019-11-08 21:00 UTC): its quotes stands" \
        not in said()[1] and "of XSP in the data (2019-11-08 21:00 UTC): its quotes stand at" in said()[1], said()
    assert [e["symbol"] for e in sim.events if e["kind"] == "data_ended"] == ["AAPL", "INTC", "SPY", "XSP"]


def test_cli_bad_data_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "gateway-sim", "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "no such file or directory" in r.stderr and "Traceback" not in r.stderr


def test_cli_prints_one_line_serves_and_stops_on_sigterm(tmp_path):
    from ib_async import IB

    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "gateway-sim", "--port", "0", "--speed", "60",
                             "--start", "2019-11-07 10:00"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line and "qtrade run" in line
        assert "5 symbols: AAPL, INTC, SPY, VIX, XSP, from " in line, line     # it names what it replays
        port = int(line.split("127.0.0.1:")[1].split()[0])
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=3, timeout=3)
        now = ib.reqCurrentTime()
        assert (now.year, now.month, now.day, now.hour) == (2019, 11, 7, 15)  # 10:00 New York is 15:00 UTC
        ib.disconnect()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out == ""  # the one line only
    assert "Traceback" not in err and "stopped" in err


@pytest.mark.parametrize("args, message", [
    (["--speed", "0"], "--speed must be positive"),
    (["--start", "next tuesday"], "expected 'YYYY-MM-DD HH:MM'"),
    (["--scenario", "{missing}"], "no such file"),
])
def test_cli_bad_options_exit_2(tmp_path, args, message):
    args = [a.replace("{missing}", str(tmp_path / "none.yaml")) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "gateway-sim", "--port", "0", *args],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_port_in_use_exits_2(sim):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "gateway-sim", "--port", str(sim.port)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{sim.port}" in r.stderr
    assert "Traceback" not in r.stderr


def _started_raw(port, client_id):
    s = _raw_connect(port, b"v157..178")
    s.settimeout(2)
    n = struct.unpack(">I", s.recv(4))[0]
    s.recv(n)
    s.sendall(frame([71, 2, client_id, ""]))
    return s


def test_truncated_and_garbage_messages_never_crash_a_handler(sim, caplog):
    """Every message id the simulator handles, cut short and filled with junk: each session is
    closed with a logged reason or answered; no handler raises an internal error."""
    from gatewaysim.handlers import HANDLERS

    junk_sets = [[], ["x"], ["1", "2"], ["1"] * 40, ["", "abc", "1.5", "-7"] * 30]
    with caplog.at_level("INFO", logger="gatewaysim"):
        for k, msg_id in enumerate(sorted(HANDLERS)):
            if msg_id == 71:
                continue
            for j, junk in enumerate(junk_sets):
                s = _started_raw(sim.port, 1000 + k * 10 + j)
                try:
                    s.sendall(frame([msg_id, *junk]))
                    s.sendall(frame([49, 1]))  # still alive? it answers the current time
                    s.shutdown(socket.SHUT_WR)  # EOF after our messages; read until the simulator is done
                    while s.recv(65536):
                        pass
                except OSError:  # the simulator closed this session first (a malformed message)
                    pass
                s.close()
        deadline = time.monotonic() + 10  # a loaded machine may take a while to get through them all
        while time.monotonic() < deadline and (sim.sessions or not any("ended after" in r.getMessage()
                                                                       for r in caplog.records)):
            time.sleep(0.05)
    internal = [e for e in sim.events if e["kind"] == "internal_error"]
    assert internal == []
    assert any("ended after" in r.getMessage() for r in caplog.records)  # truncated ones were named

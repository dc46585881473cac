"""Faults from a scenario file and from the control port; the simulator's own record; the scanner."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ib_async import IB, Index, MarketOrder, ScannerSubscription

from gatewaysim.control import CommandError, apply_command, load_scenario

from .test_orders import _spy, _wait

ROOT = Path(__file__).resolve().parents[2]


def test_scenario_steps_run_on_time(make_sim, connect, tmp_path, expect_errors, error_guard):
    from gatewaysim.control import run_scenario

    expect_errors(1100, 1102)
    sim = make_sim(speed=600)
    ib = connect(sim)
    path = tmp_path / "faults.yaml"
    path.write_text("- {after: 0.2, cmd: stop_ticks, symbol: XSP}\n"
                    "- {after: 0.3, cmd: connectivity, code: 1100}\n"
                    "- {after: 0.5, cmd: connectivity, code: 1102}\n"
                    "- {after: 0.6, cmd: resume_ticks, symbol: XSP}\n")
    steps = load_scenario(path)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    ib.sleep(0.1)
    asyncio.run_coroutine_threadsafe(run_scenario(sim, steps), sim.loop)
    ib.sleep(0.3)
    t0 = ticker.time
    ib.sleep(0.25)
    assert ticker.time == t0
    assert _wait(ib, lambda: ticker.time > t0)
    assert [c for c in error_guard.codes()] == [1100, 1102]
    assert [e["step"]["cmd"] for e in sim.events if e["kind"] == "scenario"] == [
        "stop_ticks", "connectivity", "connectivity", "resume_ticks"]


def test_bad_scenario_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {after: 1, cmd: explode}\n")
    with pytest.raises(CommandError, match="step 1: unknown command 'explode'"):
        load_scenario(bad)
    bad.write_text("- {after: 1, cmd: [\n")
    with pytest.raises(CommandError, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        load_scenario(bad)
    with pytest.raises(CommandError, match="no such file"):
        load_scenario(tmp_path / "none.yaml")


def test_commands_check_their_arguments(sim):
    with pytest.raises(CommandError, match="unknown command"):
        apply_command(sim, {"cmd": "nope"})
    with pytest.raises(CommandError, match="stop_ticks"):
        apply_command(sim, {"cmd": "stop_ticks", "sym": "SPY"})
    apply_command(sim, {"cmd": "stop_ticks", "symbol": "SPY"})
    assert "SPY" in sim.faults["stopped"]


def test_cli_with_control_port_and_scenario(tmp_path, expect_errors):
    expect_errors(201)
    scenario = tmp_path / "s.yaml"
    scenario.write_text("- {after: 0, cmd: reject_next_order, reason: from the scenario}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        control_port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "gateway-sim", "--port", "0", "--scenario",
                             str(scenario), "--control-port", str(control_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert f"control port {control_port}" in line
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=1, timeout=3)
        spy = _spy(ib)
        rejected = ib.placeOrder(spy, MarketOrder("BUY", 1))
        assert _wait(ib, lambda: rejected.orderStatus.status == "Cancelled")
        with socket.create_connection(("127.0.0.1", control_port), timeout=3) as ctl:
            f = ctl.makefile("rw")
            f.write(json.dumps({"cmd": "set_fill_mode", "mode": "never"}) + "\nnot json\n")
            f.write(json.dumps({"cmd": "record"}) + "\n")
            f.flush()
            replies = [json.loads(f.readline()) for _ in range(3)]
        assert replies[0] == {"ok": True, "result": None}
        assert replies[1]["ok"] is False and "not JSON" in replies[1]["error"]
        assert any(e.get("reason") == "from the scenario" for e in replies[2]["result"]["events"])
        resting = ib.placeOrder(spy, MarketOrder("BUY", 1))
        ib.sleep(0.3)
        assert resting.orderStatus.status == "Submitted"  # fill mode 'never' from the control port
        ib.disconnect()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_the_record_has_messages_orders_executions_positions(ib, sim, tmp_path):
    spy = _spy(ib)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 7, orderRef="qtrade:rec"))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    path = tmp_path / "venue.json"
    sim.dump_json(path)
    rec = json.loads(path.read_text())
    names = [m["name"] for m in rec["received"]]
    assert names[0] == "startApi" and "placeOrder" in names and "reqContractDetails" in names
    place = [m for m in rec["received"] if m["name"] == "placeOrder"][0]
    assert place["clientId"] == 1 and place["fields"][0] == "3"
    assert rec["orders"][0]["orderRef"] == "qtrade:rec" and rec["orders"][0]["status"] == "Filled"
    assert rec["executions"][0]["shares"] == 7 and rec["executions"][0]["orderRef"] == "qtrade:rec"
    assert rec["positions"] == [{"conId": spy.conId, "contract": "SPY", "qty": 7.0,
                                 "avg_price": rec["executions"][0]["price"], "realized": 0.0}]


def test_scanner_ranks_the_replayed_data(ib, sim, expect_errors):
    expect_errors("API scanner subscription cancelled")     # reqScannerData cancels: TWS answers a 162
    sim.set_quote("AAPL", last=190.0)  # the sample's last days all closed down; make one winner
    sub = ScannerSubscription(instrument="STK", locationCode="STK.US.MAJOR", scanCode="TOP_PERC_GAIN")
    rows = ib.reqScannerData(sub)
    assert [r.contractDetails.contract.symbol for r in rows] == ["AAPL"]
    changes = {}
    for inst in sim.catalog.underlyings():
        if inst.secType == "STK":
            q = sim.quote(inst.symbol)
            changes[inst.symbol] = (q.last - q.close) / q.close
    winners = sorted((s for s, c in changes.items() if c > 0), key=lambda s: -changes[s])
    assert [r.contractDetails.contract.symbol for r in rows] == winners
    losers = ib.reqScannerData(ScannerSubscription(instrument="STK", locationCode="STK.US.MAJOR",
                                                   scanCode="TOP_PERC_LOSE"))
    assert [r.contractDetails.contract.symbol for r in losers] == ["INTC", "SPY"] == sorted(
        (s for s, c in changes.items() if c < 0), key=lambda s: changes[s])
    active = ib.reqScannerData(ScannerSubscription(instrument="STK", locationCode="STK.US.MAJOR",
                                                   scanCode="MOST_ACTIVE", numberOfRows=2))
    vols = sorted(((sim.quote(s).volume, s) for s in changes), reverse=True)
    assert [r.contractDetails.contract.symbol for r in active] == [s for _, s in vols[:2]]


def test_a_scanner_subscription_is_refreshed_when_the_ranking_changes(ib, sim, expect_errors):
    expect_errors("API scanner subscription cancelled")
    sub = ScannerSubscription(instrument="STK", locationCode="STK.US.MAJOR", scanCode="TOP_PERC_GAIN")
    data = ib.reqScannerSubscription(sub)
    ib.sleep(0.2)
    assert list(data) == []  # every symbol of the sample closed down
    sim.set_quote("INTC", last=30.0)
    assert _wait(ib, lambda: [d.contractDetails.contract.symbol for d in data] == ["INTC"])
    sim.set_quote("AAPL", last=200.0)
    assert _wait(ib, lambda: [d.contractDetails.contract.symbol for d in data] == ["AAPL", "INTC"])
    ib.cancelScannerSubscription(data)
    assert _wait(ib, lambda: any(e["kind"] == "error" and e["code"] == 162 for e in sim.events))


def test_scanner_filter_options_are_applied_as_the_subscription_fields_are(ib, sim, expect_errors):
    from ib_async import TagValue

    expect_errors("API scanner subscription cancelled")
    sim.set_quote("AAPL", last=200.0)
    sim.set_quote("INTC", last=30.0)
    sub = ScannerSubscription(instrument="STK", locationCode="STK.US.MAJOR", scanCode="TOP_PERC_GAIN")
    assert [r.contractDetails.contract.symbol for r in ib.reqScannerData(sub)] == ["AAPL", "INTC"]
    cheap = ib.reqScannerData(sub, [], [TagValue("priceBelow", "100")])
    assert [r.contractDetails.contract.symbol for r in cheap] == ["INTC"]
    dear = ib.reqScannerData(sub, [], [TagValue("priceAbove", "100")])
    assert [r.contractDetails.contract.symbol for r in dear] == ["AAPL"]
    busy = ib.reqScannerData(sub, [], [TagValue("volumeAbove", str(int(sim.quote("AAPL").volume) + 1))])
    assert "AAPL" not in [r.contractDetails.contract.symbol for r in busy]


def test_historical_end_times_in_every_ib_form(make_sim, connect, expect_errors, error_guard):
    import datetime as dt

    expect_errors(162)
    sim = make_sim(start="2019-11-08 12:00")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    forms = ["20191107 15:00:00 US/Eastern", "20191107-20:00:00", "20191107 20:00:00 UTC",
             dt.datetime(2019, 11, 7, 20, 0, tzinfo=dt.timezone.utc)]
    lasts = [ib.reqHistoricalData(xsp, end, f"{1800 + i * 60} S", "1 min", "TRADES", True)[-1].date
             for i, end in enumerate(forms)]
    assert len({d.astimezone(dt.timezone.utc) for d in lasts}) == 1
    assert len(ib.reqHistoricalData(xsp, "2019-11-07 noon", "1800 S", "1 min", "TRADES", True)) == 0
    assert len(ib.reqHistoricalData(xsp, "", "1800 S", "1 min", "HISTORICAL_VOLATILITY", True)) == 0
    texts = [e["text"] for e in sim.events if e["kind"] == "error"]
    assert any("end date/time '2019-11-07 noon'" in t for t in texts)
    assert any("HISTORICAL_VOLATILITY bars are not simulated" in t for t in texts)


def test_state_from_an_earlier_run_is_adopted_on_connect(sim, connect):
    sim.set_position("AAPL", 100, 150.0)
    oid = sim.seed_order("SPY", "BUY", 10, "LMT", 100.0, order_ref="qtrade:old", clientId=1)
    ib = connect(sim, clientId=1)
    assert [(p.contract.symbol, p.position, p.avgCost) for p in ib.positions()] == [("AAPL", 100.0, 150.0)]
    trades = ib.openTrades()
    assert [(t.order.orderId, t.order.orderRef, t.orderStatus.status) for t in trades] == [(oid, "qtrade:old", "Submitted")]
    assert ib.client.getReqId() > oid  # nextValidId is past the seeded order


def test_the_record_tells_what_if_from_real_orders(ib, sim):
    spy = _spy(ib)
    ib.whatIfOrder(spy, MarketOrder("BUY", 10))
    trade = ib.placeOrder(spy, MarketOrder("SELL", 5, orderRef="qtrade:x"))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    orders = [m["order"] for m in sim.messages("placeOrder")]
    assert [(o["action"], o["totalQuantity"], o["whatIf"], o["orderRef"]) for o in orders] == [
        ("BUY", 10.0, True, ""), ("SELL", 5.0, False, "qtrade:x")]


def test_the_bundled_scenarios_load_and_run(make_sim, tmp_path):
    from gatewaysim.control import run_scenario

    folder = ROOT / "gatewaysim" / "scenarios"
    files = sorted(folder.glob("*.yaml"))
    assert [f.name for f in files] == ["nightly_reset.yaml", "order_faults.yaml", "stale_quotes.yaml"]
    sim = make_sim()
    for f in files:
        steps = [dict(step, after=0) for step in load_scenario(f)]  # all at once, to check they run
        asyncio.run_coroutine_threadsafe(run_scenario(sim, steps), sim.loop).result(5)
    assert not [e for e in sim.events if e["kind"] == "scenario_error"]
    assert len([e for e in sim.events if e["kind"] == "scenario"]) == sum(len(load_scenario(f)) for f in files)


def test_scenario_arguments_are_checked_when_the_file_loads(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {after: 1, cmd: stop_ticks, sym: SPY}\n")
    with pytest.raises(CommandError, match=r"step 1 \(stop_ticks\): .*sym.*its arguments: symbol"):
        load_scenario(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("- {after: 1, cmd: competing_session, on: true}\n")  # YAML 1.1 reads `on` as True
    assert load_scenario(ok) == [{"after": 1, "cmd": "competing_session", "on": True}]

"""ib_insync 0.9.86 (server version 176: faProfile in orders, no pendingPriceRevision in execDetails)
connects, quotes, gets bars, places an order and sees its fill. It runs in a subprocess so its
own event-loop helpers never mix with ib_async's in the test process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ib_insync")

SCRIPT = textwrap.dedent("""
    import json, logging, sys
    records = []
    class Keep(logging.Handler):
        def emit(self, r):
            records.append(f"{r.name}: {r.getMessage()}")
    logging.getLogger("ib_insync").addHandler(Keep(level=logging.ERROR))
    from ib_insync import IB, Index, MarketOrder, Stock
    ib = IB()
    ib.connect("127.0.0.1", int(sys.argv[1]), clientId=4, timeout=3)
    out = {"serverVersion": ib.client.serverVersion()}
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    t = ib.reqTickers(spy)[0]
    out["bid"], out["ask"] = t.bid, t.ask
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    out["bars"] = len(ib.reqHistoricalData(xsp, "", "1800 S", "1 min", "TRADES", True))
    trade = ib.placeOrder(spy, MarketOrder("BUY", 20))
    for _ in range(40):
        if trade.orderStatus.status == "Filled" and trade.fills and trade.fills[0].commissionReport.commission:
            break
        ib.sleep(0.05)
    out["status"] = trade.orderStatus.status
    out["fills"] = [(f.execution.shares, f.execution.price, f.commissionReport.commission) for f in trade.fills]
    ib.sleep(0.1)
    out["positions"] = [(p.contract.symbol, p.position) for p in ib.positions()]
    ib.disconnect()
    out["errors"] = records
    print(json.dumps(out))
""")


def test_ib_insync_negotiates_176_and_trades(make_sim):
    sim = make_sim(start="2019-11-08 12:00")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(sim.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["serverVersion"] == 176
    assert 0 < out["bid"] < out["ask"]
    assert out["bars"] >= 25
    assert out["status"] == "Filled"
    assert out["fills"] == [[20.0, sim.quote("SPY").ask, 1.0]]
    assert out["positions"] == [["SPY", 20.0]]
    assert out["errors"] == []
    assert [m for m in sim.messages("placeOrder")][0]["clientId"] == 4

"""Benchmark: `qtrade run --broker ib` against the gateway simulator (the real ib_async client over
a local socket), the figures of the IB issue:

  1. connect to first decision: from the run's start (strategy loaded, IB connected, reconciled,
     warmed up from IB's history, streams asked) to the kernel's first decision on a completed bar;
  2. decision to placeOrder: wall time from a bar's arrival to its orders' placing, median per bar;
  3. reconnect after a dropped connection: the simulator closes the socket mid-run; the time from
     the loss being seen to the new session being synchronised (the re-bind, lines and
     reconciliation that follow are not in it);
  4. reconciliation with 100 journaled orders: an earlier run's 100 working orders, each resting
     at the simulator under its orderRef: the fetch, the comparison and their adoption.

Each is taken from the run's own figures (the journal's run summary). The NQ strategy of the
IB tests on real NQ minute bars (../shared/data) at 120x. Not a test.
Run: python bench/ibrun.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

import cli  # noqa: E402
from gatewaysim import GatewaySim  # noqa: E402
from gatewaysim.data import SAMPLE  # noqa: E402

NQ_STRATEGY = ROOT / "tests" / "ibbroker" / "strategies" / "nq_cross.yaml"
NQ_BARS = ROOT.parent / "shared" / "data" / "firstratedata_nq_sample" / "NQ_1min_sample.csv"


def data_folder(tmp: Path) -> Path:
    folder = tmp / "data"
    folder.mkdir()
    for f in SAMPLE.glob("*.csv"):
        (folder / f.name).symlink_to(f)
    (folder / "NQ.csv").symlink_to(NQ_BARS)
    return folder


def run(sim: GatewaySim, journal: Path, seconds: int, client_id: int = 1) -> dict:
    out = CliRunner().invoke(cli.main, ["run", str(NQ_STRATEGY), "--broker", "ib", "--port", str(sim.port),
                                        "--client-id", str(client_id), "--for", f"{seconds}s",
                                        "--journal", str(journal)])
    if out.exit_code != 0:
        raise SystemExit(f"the run failed ({out.exit_code}):\n{out.output}")
    con = sqlite3.connect(journal)
    try:
        summary = con.execute("SELECT summary FROM runs WHERE run_id != 'earlier' ORDER BY rowid DESC "
                              "LIMIT 1").fetchone()[0]
    finally:
        con.close()
    return json.loads(summary)["figures"]


def sim_for(folder: Path) -> GatewaySim:
    sim = GatewaySim(folder, speed=120, tick_interval=0.05)
    sim.start_in_thread(0)
    return sim


def earlier_orders(journal: Path, sim: GatewaySim, n: int) -> None:
    """An earlier paper run of nq-cross with n working limit orders, each resting at the venue."""
    from engine.brokers.ib.contracts import Contracts, load_instruments
    from engine.runtime.journal import Journal
    from ib_async import IB

    ib = IB()
    ib.connect("127.0.0.1", sim.port, clientId=90, timeout=5)
    con_id = Contracts(ib, load_instruments(), today=lambda: sim.now().date()).resolve("NQ").con_id
    ib.disconnect()
    with Journal(journal) as j:
        j.start_run("paper", "nq-cross", settings={"account": "DU1234567"}, run_id="earlier")
        for i in range(1, n + 1):
            ref = f"qtrade:nq-cross:{i}"
            j.order("earlier", ref, "2023-12-04T14:00:00+00:00", "NQ", "buy", 1, "limit", limit_price=10000.0 + i,
                    rule="cross up", status="submitted")
            j.order_ids(ref, con_id=con_id, local_symbol="NQZ3")
            sim.seed_order(con_id, "BUY", 1, "LMT", lmt_price=10000.0 + i, order_ref=ref, clientId=1)
        j.finish_run("earlier", "interrupted", {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    if not NQ_BARS.exists():
        raise SystemExit(f"needs the real NQ bars at {NQ_BARS}")
    first, place, reconnect, reconcile100, fetch100 = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = data_folder(Path(tmp))
        for i in range(args.runs):
            sim = sim_for(folder)
            try:
                # 1 and 2, with 3: the simulator drops the socket 3 s into the run
                drop = threading.Timer(3.0, sim.drop_connection)
                drop.start()
                figures = run(sim, Path(tmp) / f"run{i}.sqlite", args.seconds)
                drop.cancel()
            finally:
                sim.stop_thread()
            first.append(figures["connect_to_first_decision_seconds"])
            place.append(figures["decision_to_place_ms"])
            if "last_reconnect_seconds" in figures:
                reconnect.append(figures["last_reconnect_seconds"])
            sim = sim_for(folder)
            try:
                journal = Path(tmp) / f"reconcile{i}.sqlite"
                earlier_orders(journal, sim, 100)
                figures = run(sim, journal, 3)
            finally:
                sim.stop_thread()
            reconcile100.append(figures["reconcile_seconds"])
            fetch100.append(figures["reconcile_fetch_seconds"])

    def med(xs, scale=1.0, unit="s"):
        return f"median {statistics.median(xs) * scale:.3f} {unit} (of {len(xs)}: " + \
            ", ".join(f"{x * scale:.3f}" for x in xs) + ")"

    print(f"connect to first decision: {med(first)}")
    print(f"decision to placeOrder, median per bar: {med(place, unit='ms')}")
    print(f"reconnect after a dropped connection: {med(reconnect) if reconnect else 'no reconnect seen'}")
    print(f"reconciliation with 100 journaled working orders: {med(reconcile100)}; of which IB's fetch "
          f"{med(fetch100)}")


if __name__ == "__main__":
    main()

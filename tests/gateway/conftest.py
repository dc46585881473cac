"""Fixtures for the gateway simulator's tests: a simulator in a background thread, the real
ib_async client connected to it over TCP, and a guard that fails a test on any ERROR record
ib_async logs unless the test declared that error code with `expect_errors`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from gatewaysim import GatewaySim

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
_CODE = re.compile(r"^Error (\d+), ")


def shared_data(*parts) -> Path:
    """A file under ../shared/data; skips without it, fails instead when CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing and CI=true: the shared market data must be present in CI")
        pytest.skip(f"{path} not present")
    return path


# IB's answers to a cancel, which ib_async logs as errors: 202, the cancel confirmed, and 10148, a
# cancel that met the order's fill (IB_BEHAVIOUR's codes call it harmless). A run's stop cancels
# what is working, and whether a market order's fill is on its way then is a matter of timing on
# a loaded machine, in any test that trades: neither is a fault (the tests of cancels assert them)
HARMLESS = frozenset({202, 10148})


class ErrorGuard(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.expected: set[int] = set(HARMLESS)
        self.expected_text: list[str] = []

    def emit(self, record):
        self.records.append(record)

    def unexpected(self) -> list[str]:
        out = []
        for r in self.records:
            text = r.getMessage()
            m = _CODE.match(text)
            if m and int(m.group(1)) in self.expected:
                continue
            if any(t in text for t in self.expected_text):
                continue
            out.append(f"{r.name}: {text}")
        return out

    def codes(self) -> list[int]:
        return [int(m.group(1)) for r in self.records if (m := _CODE.match(r.getMessage()))]


@pytest.fixture(autouse=True)
def error_guard():
    guard = ErrorGuard()
    for name in ("ib_async", "ib_insync", "gatewaysim"):
        logging.getLogger(name).addHandler(guard)
    yield guard
    for name in ("ib_async", "ib_insync", "gatewaysim"):
        logging.getLogger(name).removeHandler(guard)
    bad = guard.unexpected()
    assert not bad, "unexpected ERROR logged:\n" + "\n".join(bad)


@pytest.fixture
def expect_errors(error_guard):
    def expect(*codes_or_texts):
        """Error codes (ints) or message fragments (str) this test expects ib_async to log."""
        error_guard.expected.update(c for c in codes_or_texts if isinstance(c, int))
        error_guard.expected_text.extend(c for c in codes_or_texts if isinstance(c, str))
    return expect


@pytest.fixture
def make_sim():
    sims = []

    def make(data=None, **kw):
        kw.setdefault("tick_interval", 0.05)
        sim = GatewaySim(data, **kw)
        sim.start_in_thread(0)
        sims.append(sim)
        return sim
    yield make
    for sim in sims:
        sim.stop_thread()
        assert not [e for e in sim.events if e["kind"] == "internal_error"], [e for e in sim.events if e["kind"] == "internal_error"]


@pytest.fixture
def sim(make_sim):
    return make_sim()


@pytest.fixture
def connect():
    from ib_async import IB

    clients = []

    def make(sim, clientId=1, timeout=3, **kw):
        ib = IB()
        ib.connect("127.0.0.1", sim.port, clientId=clientId, timeout=timeout, **kw)
        clients.append(ib)
        return ib
    yield make
    for ib in clients:
        ib.disconnect()


@pytest.fixture
def ib(sim, connect):
    return connect(sim)


@pytest.fixture
def nq_data(tmp_path):
    """A data folder with the bundled sample plus real NQ one-minute bars (named NQ.csv)."""
    from gatewaysim.data import SAMPLE

    src = shared_data("firstratedata_nq_sample", "NQ_1min_sample.csv")
    for f in SAMPLE.glob("*.csv"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "NQ.csv").symlink_to(src)
    return tmp_path


def run_ib_on(sim, strategy, journal, seconds: float, dry_run: bool = False, speed: float = 120):
    """A strategy run through run_ib against `sim` (its outcome holds the kernel and the scan, and
    the lines it said). The simulator's clock goes slowly until the run is ready (its budget line
    is said just before), so that no bar completes during the warm-up and the run does not start
    by catching up on bars whose fills it could not have had in time; then at `speed`."""
    from engine.runtime.ibrun import run_ib
    from engine.runtime.journal import Journal
    from engine.runtime.trading import connect_settings

    settings = connect_settings({"host": "127.0.0.1", "port": sim.port, "client_id": 7, "account": None}, {})
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("needs "):
            sim.clock.set_speed(speed)

    sim.clock.set_speed(2)
    with Journal(journal) as j:
        outcome = run_ib(str(strategy), connect=settings, overrides={}, journal=j, dry_run=dry_run, live=False,
                         yes=False, tty=False, confirm=lambda q: False, seconds=seconds, say=say,
                         status_every=3600)
    return outcome, said

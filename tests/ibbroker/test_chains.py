"""Option chains from IB's quotes (engine/brokers/ib/chains.py), against the gateway simulator."""

import datetime as dt
import math

import numpy as np
import pandas as pd

from engine.brokers.ib.chains import IBChains, price


def test_ib_prices_never_become_prices():
    assert math.isnan(price(-1)) and math.isnan(price(1.7976931348623157e308)) and math.isnan(price(None))
    assert math.isnan(price(0.0)) and price(1.25) == 1.25


def test_a_0dte_chain_is_quoted_within_the_free_lines(sim, connect):
    from ib_async import Index

    ib = connect(sim)
    xsp = Index("XSP", "CBOE", "USD")
    ib.qualifyContracts(xsp)
    ticker = ib.reqMktData(xsp, "", False, False)
    ib.sleep(0.5)
    spot = float(ticker.last)
    today = sim.now().date()
    in_use = []
    chains = IBChains(ib, free_lines=lambda: 8, strike_range=0.02)
    original = ib.reqMktData

    def counting(contract, *a, **kw):
        in_use.append(contract.conId)
        return original(contract, *a, **kw)

    ib.reqMktData = counting
    chain = chains.chain(xsp, spot, [today], pd.Timestamp(sim.now()))
    ib.reqMktData = original
    assert chain is not None and chain.underlying_price == spot
    n = len(chain.strike)
    strikes = sorted(set(chain.strike.tolist()))
    assert n == 2 * len(strikes) and all(abs(k / spot - 1) <= 0.02 for k in strikes)
    assert set(chain.expiry.astype("datetime64[D]").tolist()) == {today}
    assert chains.requests == n and len(in_use) == n
    calls = np.flatnonzero(chain.is_call)
    order = np.argsort(chain.strike[calls])
    deltas = chain.delta[calls][order]
    assert np.all(np.diff(deltas) <= 1e-9) and deltas[0] > deltas[-1]      # call deltas fall with the strike
    assert np.all(np.isnan(chain.bid) | (chain.bid > 0)) and np.all(np.isnan(chain.ask) | (chain.ask > 0))
    leg = chains.contract("XSP", today, strikes[0], "put")
    assert leg is not None and leg.conId and leg.right == "P"
    # all quote lines were cancelled (ib_async's 45 messages/s throttle may hold the last cancels a moment)
    ib.sleep(1.0)
    record = sim.record()
    live = [m for m in record["received"] if m.get("name") == "reqMktData"]
    cancelled = [m for m in record["received"] if m.get("name") == "cancelMktData"]
    assert len(live) - 1 == len(cancelled)      # the underlying's own line stays


def test_an_expiry_ib_does_not_list_gives_no_chain(sim, connect):
    from ib_async import Index

    ib = connect(sim)
    xsp = Index("XSP", "CBOE", "USD")
    ib.qualifyContracts(xsp)
    chains = IBChains(ib, free_lines=lambda: 5)
    assert chains.chain(xsp, 300.0, [dt.date(2001, 1, 1)], pd.Timestamp(sim.now())) is None

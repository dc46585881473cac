"""Option chains from IB's quotes (engine/brokers/ib/chains.py), against the gateway simulator."""

import datetime as dt
import math

import numpy as np
import pandas as pd

from engine.brokers.ib.chains import IBChains, price


def test_ib_prices_never_become_prices():
    assert math.isnan(price(-1)) and math.isnan(price(1.7976931348623157e308)) and math.isnan(price(None))
    assert math.isnan(price(0.0)) and price(1.25) == 1.25


def test_a_0dte_chain_is_quoted_on_lines_kept_open_within_the_free_lines(sim, connect):
    from ib_async import Index

    ib = connect(sim)
    xsp = Index("XSP", "CBOE", "USD")
    ib.qualifyContracts(xsp)
    ticker = ib.reqMktData(xsp, "", False, False)
    ib.sleep(0.5)
    spot = float(ticker.last)
    today = sim.now().date()
    budget = 13          # one line is the underlying's
    chains = IBChains(ib, free_lines=lambda: budget - 1 - chains.lines(), strike_range=0.02, burst=5, pause=0.2)
    chain = chains.chain(xsp, spot, [today], pd.Timestamp(sim.now()))
    assert chain is not None and chain.underlying_price == spot
    strikes = sorted(set(chain.strike.tolist()))
    assert len(chain.strike) == 2 * len(strikes) and all(abs(k / spot - 1) <= 0.02 for k in strikes)
    assert set(chain.expiry.astype("datetime64[D]").tolist()) == {today}
    assert chains.lines() == chains.requests == 12          # never more than the budget leaves
    quoted = np.isfinite(chain.delta)
    assert quoted.sum() == 12
    # the quoted ones are the twelve nearest the money (six strikes, a call and a put each)
    near = sorted(strikes, key=lambda k: abs(k - spot))[:6]
    assert set(chain.strike[quoted].tolist()) == set(near)
    calls = np.flatnonzero(chain.is_call & quoted)
    order = np.argsort(chain.strike[calls])
    assert np.all(np.diff(chain.delta[calls][order]) <= 1e-9)      # call deltas fall with the strike
    assert np.all(np.isnan(chain.bid) | (chain.bid > 0)) and np.all(np.isnan(chain.ask) | (chain.ask > 0))
    again = chains.chain(xsp, spot, [today], pd.Timestamp(sim.now()))
    assert chains.requests == 12 and np.isfinite(again.delta).sum() == 12      # the lines were kept, not asked again
    leg = chains.contract("XSP", today, near[0], "put")
    assert leg is not None and leg.conId and leg.right == "P"
    chains.release()
    assert chains.lines() == 0
    ib.sleep(1.0)     # ib_async's 45 messages/s throttle may hold the last cancels a moment
    received = sim.record()["received"]
    asked = [m for m in received if m.get("name") == "reqMktData"]
    cancelled = [m for m in received if m.get("name") == "cancelMktData"]
    assert len(asked) - 1 == len(cancelled) == 12       # every option line was cancelled; the underlying's stays


def test_an_expiry_ib_does_not_list_gives_no_chain(sim, connect):
    from ib_async import Index

    ib = connect(sim)
    xsp = Index("XSP", "CBOE", "USD")
    ib.qualifyContracts(xsp)
    chains = IBChains(ib, free_lines=lambda: 5)
    assert chains.chain(xsp, 300.0, [dt.date(2001, 1, 1)], pd.Timestamp(sim.now())) is None

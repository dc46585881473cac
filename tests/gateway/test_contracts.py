"""reqContractDetails / qualifyContracts for stocks, indices, futures (NQ and MNQ), options,
ContFuture, reqSecDefOptParams, and error 200 for an unknown contract."""

from __future__ import annotations

import datetime as dt

from ib_async import ContFuture, Future, Index, Option, Stock


def test_stock_and_index_qualify_with_ib_fields(ib):
    spy, aapl, spx = ib.qualifyContracts(Stock("SPY", "SMART", "USD"), Stock("AAPL", "SMART", "USD"),
                                         Index("SPX", "CBOE", "USD"))
    assert spy.conId == 756733 and spy.primaryExchange == "ARCA" and spy.exchange == "SMART"
    assert aapl.conId == 265598 and aapl.primaryExchange == "NASDAQ"
    assert spx.secType == "IND" and spx.conId == 416904
    details = ib.reqContractDetails(Stock("AAPL", "SMART", "USD"))
    assert len(details) == 1
    d = details[0]
    assert d.minTick == 0.01 and d.timeZoneId == "US/Eastern" and "SMART" in d.validExchanges.split(",")


def test_futures_have_several_expiries_and_the_micro_is_separate(make_sim, connect, nq_data):
    sim = make_sim(nq_data)
    ib = connect(sim)
    nq = ib.reqContractDetails(Future("NQ", exchange="CME"))
    mnq = ib.reqContractDetails(Future("MNQ", exchange="CME"))
    assert len(nq) == 3 and len(mnq) == 3
    expiries = [d.contract.lastTradeDateOrContractMonth for d in nq]
    assert expiries == sorted(expiries) and len(set(expiries)) == 3
    for d in nq + mnq:
        day = dt.datetime.strptime(d.contract.lastTradeDateOrContractMonth, "%Y%m%d").date()
        assert day.weekday() == 4 and 15 <= day.day <= 21  # third Fridays
        assert d.contract.lastTradeDateOrContractMonth[4:6] in ("03", "06", "09", "12")
    assert {d.contract.multiplier for d in nq} == {"20"} and {d.contract.tradingClass for d in nq} == {"NQ"}
    assert {d.contract.multiplier for d in mnq} == {"2"} and {d.contract.tradingClass for d in mnq} == {"MNQ"}
    assert not {d.contract.conId for d in nq} & {d.contract.conId for d in mnq}
    assert nq[0].contract.localSymbol == "NQZ3"  # the sample's NQ bars are from November 2023
    # A month prefix qualifies to the full date, as at IB
    month = nq[1].contract.lastTradeDateOrContractMonth[:6]
    fut = ib.qualifyContracts(Future("NQ", month, "CME"))[0]
    assert fut.lastTradeDateOrContractMonth == nq[1].contract.lastTradeDateOrContractMonth
    assert fut.conId == nq[1].contract.conId


def test_contfuture_qualifies_to_the_front_month(make_sim, connect, nq_data):
    sim = make_sim(nq_data)
    ib = connect(sim)
    cont = ib.qualifyContracts(ContFuture("MNQ", "CME"))[0]
    front = sorted(ib.reqContractDetails(Future("MNQ", exchange="CME")),
                   key=lambda d: d.contract.lastTradeDateOrContractMonth)[0].contract
    assert cont.secType == "CONTFUT" and cont.conId == front.conId and cont.multiplier == "2"
    fut = ib.qualifyContracts(Future(conId=cont.conId))[0]
    assert fut.secType == "FUT" and fut.localSymbol == front.localSymbol


def test_options_chain_and_secdef_params(ib):
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    chains = ib.reqSecDefOptParams("SPY", "", "STK", spy.conId)
    assert chains and chains[0].exchange == "SMART" and chains[0].multiplier == "100"
    chain = chains[0]
    assert chain.underlyingConId == str(spy.conId) and len(chain.expirations) >= 5
    assert all(k == int(k) for k in chain.strikes)  # SPY's strike step is 1
    expiry = chain.expirations[0]
    strike = min(chain.strikes, key=lambda k: abs(k - 266))
    opt = ib.qualifyContracts(Option("SPY", expiry, strike, "C", "SMART"))[0]
    assert opt.conId and opt.multiplier == "100" and opt.right == "C" and opt.strike == strike
    all_calls = ib.reqContractDetails(Option("SPY", expiry, right="C", exchange="SMART"))
    assert len(all_calls) == len(chain.strikes)
    assert {d.underConId for d in all_calls} == {spy.conId}
    spx = ib.qualifyContracts(Index("SPX", "CBOE"))[0]
    spx_chain = ib.reqSecDefOptParams("SPX", "", "IND", spx.conId)
    assert {c.tradingClass for c in spx_chain} == {"SPXW"} and {c.exchange for c in spx_chain} == {"SMART", "CBOE"}


def test_unknown_contract_is_error_200_with_ib_text(ib, sim, expect_errors, error_guard):
    expect_errors(200)
    assert ib.qualifyContracts(Stock("NOSUCH", "SMART", "USD")) == [None]
    assert ib.reqContractDetails(Future("ZZ", exchange="CME")) == []
    assert error_guard.codes() == [200, 200]
    texts = [e["text"] for e in sim.events if e["kind"] == "error" and e["code"] == 200]
    assert texts == ["No security definition has been found for the request"] * 2

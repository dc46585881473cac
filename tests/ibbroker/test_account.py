"""engine/brokers/ib/account.py against the gateway simulator."""

from __future__ import annotations

import time

import pytest

from engine.brokers import events as E
from engine.brokers.ib.account import Account, AccountUnknown, PositionsUnknown, base_values, unrealized_pnl
from engine.brokers.ib.orders import LOCAL, Orders

from .test_orders import Tape, pump, resolvers


@pytest.fixture
def tape():
    return Tape()


def test_a_stock_position_after_a_fill_by_local_symbol_and_con_id(sim, connect, tape):
    ib = connect(sim)
    resolve, resolve_option = resolvers(ib)
    orders = Orders(ib, resolve, resolve_option, tape.append)
    account = Account(ib, tape.append, timeout=2.0)
    assert account.positions() == {}                      # known, and flat
    ask = sim.quote("SPY").ask
    orders.place(E.Order("qtrade:a:1", "SPY", "buy", 100))
    assert pump(ib, lambda: account.positions())
    assert account.positions() == {"SPY": E.BrokerPosition("SPY", 100, pytest.approx(ask), 1.0)}
    spy = resolve("SPY").con_id
    assert account.positions_by_con_id()[spy].quantity == 100
    orders.place(E.Order("qtrade:a:2", "SPY", "sell", 100))
    assert pump(ib, lambda: not account.positions())       # IB pushed the change
    assert not tape.of(E.BrokerError)


def test_scenario_17_an_nq_position_is_per_unit_with_ibs_multiplier_rules(make_sim, connect, nq_data, tape):
    sim = make_sim(nq_data)
    ib = connect(sim)
    resolve, _ = resolvers(ib)
    nq = resolve("NQ")
    sim.set_position(nq.con_id, 2, 25_066.3625)
    account = Account(ib, tape.append, timeout=2.0)
    assert pump(ib, lambda: nq.local_symbol in account.positions())
    [held] = account.holdings()
    assert (held.local_symbol, held.symbol, held.sec_type, held.multiplier) == (nq.local_symbol, "NQ", "FUT", 20)
    assert held.avg_cost == pytest.approx(501_327.25)           # IB's avgCost includes the multiplier
    pos = account.positions()[nq.local_symbol]
    assert pos == E.BrokerPosition(nq.local_symbol, 2, pytest.approx(25_066.3625), 20)
    assert unrealized_pnl(pos, 25_076.3625) == pytest.approx(10 * 2 * 20)
    assert "NQ" not in account.positions()                      # keyed by the exact contract


def test_a_short_option_position_is_premium_per_unit(sim, connect, tape):
    ib = connect(sim)
    _, resolve_option = resolvers(ib)
    from ib_async import Stock
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    chain = ib.reqSecDefOptParams("SPY", "", "STK", spy.conId)[0]
    expiry = chain.expirations[-1]
    put = resolve_option("SPY", f"{expiry[:4]}-{expiry[4:6]}-{expiry[6:]}", 262, "P")
    sim.set_position(put.con_id, -3, 1.50)
    account = Account(ib, tape.append)
    assert pump(ib, lambda: put.local_symbol in account.positions())
    assert account.positions()[put.local_symbol] == E.BrokerPosition(put.local_symbol, -3, pytest.approx(1.50), 100)
    assert unrealized_pnl(account.positions()[put.local_symbol], 1.00) == pytest.approx(150.0)   # short: gains


def test_scenario_13_late_positions_are_not_known_and_never_flat_then_a_retry_gets_them(sim, connect, tape):
    ib = connect(sim)
    spy = resolvers(ib)[0]("SPY")
    sim.set_position(spy.con_id, 50, 260.0)
    sim.delay_positions(0.8)
    account = Account(ib, tape.append, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(PositionsUnknown, match="positions not known yet"):
        account.positions()
    assert time.monotonic() - started < 0.6
    [err] = tape.of(E.BrokerError)
    assert err.code == LOCAL and err.ref is None and "not known yet" in err.message
    assert account.positions(attempts=6, backoff=0.2) == {"SPY": E.BrokerPosition("SPY", 50, 260.0, 1.0)}
    assert account.positions_seconds is not None


def test_a_disconnect_makes_positions_unknown_until_asked_again(sim, connect, tape, expect_errors):
    expect_errors("Peer closed connection")
    ib = connect(sim)
    account = Account(ib, tape.append, timeout=1.0)
    assert account.positions() == {}
    asked = len(sim.messages("reqPositions"))
    account.positions()
    assert len(sim.messages("reqPositions")) == asked          # known: not asked again
    sim.drop_connection()
    assert pump(ib, lambda: not ib.isConnected())
    with pytest.raises(PositionsUnknown):
        account.positions(timeout=0.2)
    ib.connect("127.0.0.1", sim.port, clientId=1, timeout=3)
    before = len(sim.messages("reqPositions"))
    assert account.positions() == {}
    assert len(sim.messages("reqPositions")) == before + 1


def test_account_values_are_the_venues_in_the_base_currency(sim, connect, tape):
    ib = connect(sim)
    account = Account(ib, tape.append, timeout=2.0)
    values = account.account_values()
    venue = sim.call(sim.account_values)
    assert values == E.AccountValues(pytest.approx(venue["TotalCashValue"]), pytest.approx(venue["NetLiquidation"]),
                                     pytest.approx(venue["AvailableFunds"]), pytest.approx(venue["InitMarginReq"]))
    assert account.summary()["MaintMarginReq"] == pytest.approx(venue["MaintMarginReq"])
    resolve, resolve_option = resolvers(ib)
    orders = Orders(ib, resolve, resolve_option, tape.append)
    orders.place(E.Order("qtrade:a:3", "SPY", "buy", 100))
    assert pump(ib, lambda: account.account_values().margin_used > 0)
    after = account.account_values()
    assert after.cash < values.cash and after.equity < values.equity   # paid the commission


def test_account_values_from_the_summary_when_no_account_updates_run(sim, connect, tape):
    from ib_async.ib import StartupFetch
    ib = connect(sim, fetchFields=StartupFetch.POSITIONS)
    assert not ib.accountValues()
    account = Account(ib, tape.append, timeout=2.0)
    assert account.account_values().equity == pytest.approx(sim.call(sim.account_values)["NetLiquidation"])
    assert len(sim.messages("reqAccountSummary")) == 1
    account.account_values()
    assert len(sim.messages("reqAccountSummary")) == 1             # one subscription, kept


def test_the_account_id_and_paper_or_live(make_sim, connect, tape):
    paper = Account(connect(make_sim()), tape.append)
    assert (paper.account_id, paper.is_paper) == ("DU1234567", True)
    ib = connect(make_sim(account="U7654321"))
    live = Account(ib, tape.append)
    assert (live.account_id, live.is_paper) == ("U7654321", False)
    ib.disconnect()
    with pytest.raises(AccountUnknown, match="no account"):
        live.account_id
    assert Account(ib, tape.append, account="U7654321").account_id == "U7654321"


def test_base_values_prefer_base_rows_and_skip_other_currencies():
    from ib_async import AccountValue
    rows = [AccountValue("DU1", "NetLiquidation", "100.5", "USD", ""),
            AccountValue("DU1", "TotalCashValue", "40", "USD", ""),
            AccountValue("DU1", "TotalCashValue", "90", "BASE", ""),
            AccountValue("DU1", "TotalCashValue", "10", "EUR", ""),
            AccountValue("DU1", "AccountType", "INDIVIDUAL", "", ""),
            AccountValue("DU1", "Cushion", "1.7976931348623157E308", "USD", "")]
    assert base_values(rows) == {"NetLiquidation": 100.5, "TotalCashValue": 90.0}

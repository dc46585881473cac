"""Contracts: instruments.yaml + contract details -> the exact contract, against the simulator
(scenario numbers: IB_BEHAVIOUR.md)."""

from __future__ import annotations

import copy
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_async import Contract, ContractDetails

from engine.brokers.ib.contracts import (ContractError, Contracts, choose_future, instrument_spec,
                                         load_instruments, roll_date)
from engine.market.calendars import get_calendar

NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def instruments():
    return load_instruments()


def sim_today(sim):
    return lambda: sim.now().astimezone(NY).date()


def details(local, ltd, tc, mult, con_id):
    d = ContractDetails()
    d.contract = Contract(secType="FUT", conId=con_id, symbol=tc, localSymbol=local, tradingClass=tc,
                          multiplier=str(mult), lastTradeDateOrContractMonth=ltd, exchange="CME", currency="USD")
    return d


# ---------------------------------------------------------------------------- pure pieces
def test_the_instrument_map_merges_a_root_over_its_type_defaults(instruments):
    spy = instrument_spec(instruments, "SPY")
    assert spy["sec_type"] == "STK" and spy["primary_exchange"] == "ARCA" and spy["options"]["expiries"] == "daily"
    aapl = instrument_spec(instruments, "AAPL")  # no entry of its own: the STK defaults
    assert aapl["sec_type"] == "STK" and aapl["exchange"] == "SMART" and aapl["options"]["multiplier"] == 100
    nq = instrument_spec(instruments, "NQ")
    assert (nq["sec_type"], nq["trading_class"], nq["multiplier"], nq["exchange"]) == ("FUT", "NQ", 20, "CME")


def test_roll_date_counts_trading_days_of_the_roots_calendar():
    cme = get_calendar("CME_Equity")
    assert roll_date(dt.date(2023, 12, 15), 0, cme) == dt.date(2023, 12, 15)
    assert roll_date(dt.date(2023, 12, 15), 5, cme) == dt.date(2023, 12, 8)   # a weekend in between
    assert roll_date(dt.date(2024, 7, 8), 3, None) == dt.date(2024, 7, 3)     # weekdays only without a calendar
    assert roll_date(dt.date(2024, 7, 8), 3, get_calendar("NYSE")) == dt.date(2024, 7, 2)  # July 4th is no session


LISTED = [details("NQH4", "20240315", "NQ", 20, 2), details("NQZ3", "20231215", "NQ", 20, 1),
          details("MNQZ3", "20231215", "MNQ", 2, 3), details("NQM4", "20240621", "NQ", 20, 4)]


def test_choose_future_keeps_the_trading_class_and_multiplier_and_rolls_by_trading_days():
    spec = {"symbol": "NQ", "exchange": "CME", "trading_class": "NQ", "multiplier": 20}
    cme = get_calendar("CME_Equity")
    assert choose_future("NQ", spec, LISTED, dt.date(2023, 12, 4), 0, cme).contract.localSymbol == "NQZ3"
    assert choose_future("NQ", spec, LISTED, dt.date(2023, 12, 8), 5, cme).contract.localSymbol == "NQZ3"
    assert choose_future("NQ", spec, LISTED, dt.date(2023, 12, 11), 5, cme).contract.localSymbol == "NQH4"
    micro = {"exchange": "CME", "trading_class": "MNQ", "multiplier": 2}
    assert choose_future("MNQ", micro, LISTED, dt.date(2023, 12, 4), 0, cme).contract.conId == 3


def test_choose_future_refuses_an_ambiguous_root_and_a_wrong_multiplier():
    with pytest.raises(ContractError, match=r"more than one kind .*trading class MNQ x2, trading class NQ x20\); "
                                            r"give trading_class and multiplier in instruments.yaml"):
        choose_future("NQ", {"exchange": "CME"}, LISTED, dt.date(2023, 12, 4))
    with pytest.raises(ContractError) as err:
        choose_future("NQ", {"exchange": "CME", "trading_class": "NQ", "multiplier": 50}, LISTED, dt.date(2023, 12, 4))
    assert str(err.value).startswith("NQ: IB has no futures contract for root NQ with trading class NQ and "
                                     "multiplier 50 on CME (IB 200); it lists trading class MNQ x2, trading class NQ x20")
    with pytest.raises(ContractError, match="every listed NQ contract is past its roll date"):
        choose_future("NQ", {"exchange": "CME", "trading_class": "NQ", "multiplier": 20}, LISTED, dt.date(2024, 6, 22))


# ---------------------------------------------------------------------------- against the simulator
def test_a_stock_and_an_index_and_nothing_is_asked_twice(sim, connect, instruments):
    ib = connect(sim)
    contracts = Contracts(ib, instruments, today=sim_today(sim))
    spy = contracts.resolve("SPY")
    assert (spy.symbol, spy.con_id, spy.local_symbol, spy.sec_type, spy.exchange, spy.currency) == \
        ("SPY", 756733, "SPY", "STK", "SMART", "USD")
    assert spy.multiplier == 1.0 and spy.min_tick == 0.01 and spy.last_trade_date is None
    assert spy.contract.primaryExchange == "ARCA" and spy.contract.conId == 756733
    spx = contracts.resolve("SPX")
    assert (spx.con_id, spx.sec_type, spx.exchange, spx.multiplier) == (416904, "IND", "CBOE", 1.0)
    asked = len(sim.messages("reqContractDetails"))
    assert contracts.resolve("SPY") is spy and contracts.resolve("SPX") is spx
    assert len(sim.messages("reqContractDetails")) == asked == 2
    assert contracts.cached("SPY") is spy and contracts.cached("NQ") is None


def test_an_unknown_symbol_is_a_plain_error_asked_once(sim, connect, instruments, expect_errors):
    expect_errors(200)
    ib = connect(sim)
    contracts = Contracts(ib, instruments)
    for _ in range(2):
        with pytest.raises(ContractError) as err:
            contracts.resolve("ZZZZ")
        assert str(err.value) == ("ZZZZ: IB has no stock ZZZZ on SMART in USD (IB 200); check the symbol, exchange "
                                  "and currency in instruments.yaml")
        assert not err.value.transient
    assert len(sim.messages("reqContractDetails")) == 1


def test_futures_front_month_nq_and_mnq_apart_and_the_roll_offset(make_sim, connect, nq_data, instruments):
    """Scenario 17: the simulator lists NQ and the micro MNQ with three expiries each (its day is
    2023-12-04, from the real NQ bars); NQ and MNQ are told apart by trading class and
    multiplier, and a roll offset of 10 trading days moves NQ to the next expiry."""
    sim = make_sim(nq_data, speed=60)
    ib = connect(sim)
    today = sim_today(sim)
    assert today() == dt.date(2023, 12, 4)
    nq = Contracts(ib, instruments, today=today).resolve("NQ")
    assert (nq.local_symbol, nq.trading_class, nq.multiplier, nq.exchange, nq.last_trade_date) == \
        ("NQZ3", "NQ", 20.0, "CME", dt.date(2023, 12, 15))
    assert nq.min_tick == 0.25 and nq.sec_type == "FUT"
    mnq = Contracts(ib, instruments, today=today).resolve("MNQ")
    assert (mnq.local_symbol, mnq.trading_class, mnq.multiplier) == ("MNQZ3", "MNQ", 2.0)
    assert mnq.con_id != nq.con_id
    assert instrument_spec(instruments, "NQ")["roll_days"] == 5        # the bundled map's offset
    ten = copy.deepcopy(instruments)
    ten["roots"]["NQ"]["roll_days"] = 10
    rolled = Contracts(ib, ten, today=today).resolve("NQ")  # Dec 15 less 10 sessions: Dec 1
    assert (rolled.local_symbol, rolled.last_trade_date) == ("NQH4", dt.date(2024, 3, 15))
    listed = {d.contract.localSymbol: d.contract.conId
              for d in ib.reqContractDetails(Contract(secType="FUT", symbol="NQ", exchange="CME"))}
    assert listed == {"NQZ3": nq.con_id, "NQH4": rolled.con_id, "NQM4": listed["NQM4"]}
    no_own = copy.deepcopy(instruments)
    del no_own["roots"]["NQ"]["roll_days"]
    assert Contracts(ib, no_own, roll_days=10, today=today).resolve("NQ").con_id == rolled.con_id  # the broker's default
    assert Contracts(ib, instruments, roll_days=10, today=today).resolve("NQ").con_id == nq.con_id  # the root's own wins
    es = Contracts(ib, instruments, today=today).resolve("ES")  # a proxy-priced root: the same rules
    assert (es.local_symbol, es.multiplier) == ("ESZ3", 50.0)
    # the conId alone is the contract from now on
    assert ib.reqContractDetails(Contract(conId=rolled.con_id))[0].contract.localSymbol == "NQH4"


def test_a_futures_root_with_the_wrong_multiplier_says_what_ib_lists(make_sim, connect, nq_data, instruments):
    sim = make_sim(nq_data, speed=60)
    ib = connect(sim)
    wrong = copy.deepcopy(instruments)
    wrong["roots"]["NQ"]["multiplier"] = 50
    with pytest.raises(ContractError) as err:
        Contracts(ib, wrong, today=sim_today(sim)).resolve("NQ")
    assert str(err.value) == ("NQ: IB has no futures contract for root NQ with trading class NQ and multiplier 50 on "
                              "CME (IB 200); it lists trading class NQ x20: fix trading_class and multiplier in "
                              "instruments.yaml")


def test_spy_and_xsp_options_from_sec_def_params_and_contract_details(sim, connect, instruments):
    ib = connect(sim)
    contracts = Contracts(ib, instruments, today=sim_today(sim))
    params = contracts.option_params("SPY")
    assert params.trading_class == "SPY" and params.multiplier == 100.0
    assert params.underlying_con_id == 756733 and set(params.exchanges) == {"SMART", "CBOE"}
    assert params.expirations == tuple(sorted(params.expirations)) and params.expirations[0] >= sim_today(sim)()
    assert len(params.strikes) == 41 and all(isinstance(k, float) for k in params.strikes)
    expiry, strike = params.expirations[0], params.strikes[20]
    call = contracts.option("SPY", expiry.isoformat(), strike, "C")
    assert call.sec_type == "OPT" and call.multiplier == 100.0 and call.trading_class == "SPY"
    assert call.last_trade_date == expiry and call.contract.strike == strike and call.contract.right == "C"
    assert call.symbol == call.local_symbol == f"SPY   {expiry:%y%m%d}C{int(strike * 1000):08d}"
    assert contracts.option("SPY", expiry.isoformat(), strike, "call") is call
    xsp = contracts.option_params("XSP")
    put = contracts.option("XSP", xsp.expirations[0].isoformat(), xsp.strikes[10], "P")
    assert put.trading_class == "XSP" and put.contract.right == "P" and put.exchange == "CBOE"
    spx = contracts.option_params("SPX")  # instruments.yaml: trading_class SPXW
    assert spx.trading_class == "SPXW"


def test_an_option_that_is_not_listed_and_a_bad_right(sim, connect, instruments, expect_errors):
    expect_errors(200)
    ib = connect(sim)
    contracts = Contracts(ib, instruments, today=sim_today(sim))
    params = contracts.option_params("SPY")
    with pytest.raises(ContractError, match=r"SPY .* 1234C: IB has no such option on SMART \(IB 200\); "
                                            r"option_params\(\) lists"):
        contracts.option("SPY", params.expirations[0].isoformat(), 1234.0, "C")
    with pytest.raises(ContractError, match="right must be 'C' or 'P'"):
        contracts.option("SPY", params.expirations[0].isoformat(), params.strikes[0], "X")
    with pytest.raises(ContractError, match="expiry must be YYYY-MM-DD"):
        contracts.option("SPY", "20231204", params.strikes[0], "C")


def test_a_bag_is_never_looked_up(sim, connect, instruments):
    ib = connect(sim)
    combos = copy.deepcopy(instruments)
    combos["roots"]["CONDOR"] = {"sec_type": "BAG"}
    with pytest.raises(ContractError, match="never looked up at IB"):
        Contracts(ib, combos).resolve("CONDOR")
    assert sim.messages("reqContractDetails") == []


def test_a_lost_connection_is_transient_and_not_cached(sim, connect, instruments):
    ib = connect(sim)
    contracts = Contracts(ib, instruments)
    ib.disconnect()
    with pytest.raises(ContractError, match="not connected to IB") as err:
        contracts.resolve("SPY")
    assert err.value.transient
    ib.connect("127.0.0.1", sim.port, clientId=1, timeout=3)
    assert contracts.resolve("SPY").con_id == 756733

"""IB's codes as data: every code of IB_BEHAVIOUR.md's table has a kind and a plain message."""

import pytest

from engine.brokers.ib.codes import CODES, Kind, classify, describe, order_stays_live

HMDS = "Historical Market Data Service error message:"

# IB_BEHAVIOUR.md's table, code by code, with the kind qtrade's IB broker acts on
TABLE = {
    326: Kind.CLIENT_ID_IN_USE, 502: Kind.NOT_CONNECTED, 504: Kind.NOT_CONNECTED,
    1100: Kind.CONNECTIVITY_LOST, 2110: Kind.CONNECTIVITY_LOST, 1101: Kind.RESTORED_DATA_LOST,
    1102: Kind.RESTORED_DATA_KEPT,
    2103: Kind.FARM_BROKEN, 2105: Kind.FARM_BROKEN, 2157: Kind.FARM_BROKEN,
    2104: Kind.FARM_OK, 2106: Kind.FARM_OK, 2107: Kind.FARM_OK, 2108: Kind.FARM_OK, 2158: Kind.HARMLESS,
    100: Kind.THROTTLE, 10197: Kind.MD_UNAVAILABLE, 354: Kind.MD_UNAVAILABLE, 10168: Kind.MD_UNAVAILABLE,
    10167: Kind.MD_DELAYED, 10089: Kind.ADVISORY, 10090: Kind.ADVISORY, 10091: Kind.ADVISORY,
    101: Kind.MAX_TICKERS, 102: Kind.REQUEST_ERROR, 322: Kind.REQUEST_ERROR, 300: Kind.HARMLESS,
    366: Kind.HARMLESS, 420: Kind.PACING, 165: Kind.INFO, 10182: Kind.REQUEST_ERROR, 200: Kind.CONTRACT,
    321: Kind.REQUEST_ERROR, 10043: Kind.ORDER_REJECTED, 10058: Kind.ORDER_REJECTED,
    103: Kind.DUPLICATE_ORDER_ID, 104: Kind.ORDER_NOT_MODIFIABLE, 135: Kind.ORDER_NOT_MODIFIABLE,
    105: Kind.ORDER_WARNING, 110: Kind.ORDER_WARNING, 399: Kind.ORDER_WARNING, 404: Kind.ORDER_WARNING,
    434: Kind.ORDER_WARNING, 2109: Kind.ORDER_WARNING, 161: Kind.ORDER_NOT_MODIFIABLE,
    201: Kind.ORDER_REJECTED, 203: Kind.ORDER_REJECTED, 202: Kind.ORDER_CANCELLED,
    10147: Kind.HARMLESS, 10148: Kind.HARMLESS,
}


@pytest.mark.parametrize("code, kind", sorted(TABLE.items()))
def test_every_code_of_the_behaviour_table_has_its_kind_and_a_plain_one_line_message(code, kind):
    info = classify(code)
    assert info.kind == kind
    assert info.code == code
    assert f"IB {code}" in info.message and "\n" not in info.message
    assert not info.message.endswith(".")  # a clause that reads inside a line: "SPY: <message>"


def test_162_is_read_from_its_text():
    assert classify(162, HMDS + "Historical data request pacing violation").kind == Kind.PACING
    assert classify(162, HMDS + "HMDS query returned no data: SPY@SMART Trades").kind == Kind.NO_DATA
    assert classify(162, HMDS + "API historical data query cancelled: 7").kind == Kind.HARMLESS
    assert classify(162, HMDS + "No market data permissions for NYSE STK").kind == Kind.MD_UNAVAILABLE
    other = classify(162, HMDS + "invalid request: bar size '7 mins'")
    assert other.kind == Kind.REQUEST_ERROR and "bar size '7 mins'" in other.message


def test_describe_keeps_the_reason_ib_gives():
    assert describe(201, "Order rejected - reason:Insufficient margin") == \
        "order rejected by IB (IB 201): Insufficient margin; not retried"
    assert describe(202, "Order Canceled - reason:") == classify(202).message  # an empty reason adds nothing
    assert "(IB 2103, usfarm)" in describe(2103, "Market data farm connection is broken:usfarm")
    assert describe(321, "Error validating request.-'bN' : cause - The API interface is currently in Read-Only "
                         "mode.").endswith("(IB 321): The API interface is currently in Read-Only mode.")
    assert describe(10197, "No market data during competing live session") == classify(10197).message


def test_unknown_codes_keep_ibs_text():
    assert classify(9999, "something new").kind == Kind.UNKNOWN
    assert describe(9999, "something new") == "IB error 9999: something new"
    assert classify(2150, "a notice").kind == Kind.INFO


def test_which_codes_leave_an_order_live_in_ib_async():
    for code in (105, 110, 321, 399, 404, 434, 2109, 10167):
        assert order_stays_live(code), code
    for code in (161, 201, 202, 103, 104, 10043):
        assert not order_stays_live(code), code


def test_the_table_is_keyed_by_its_own_codes():
    assert all(c.code == k for k, c in CODES.items())

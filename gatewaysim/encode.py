"""Outgoing messages, one builder per message id, in the layouts ib_async 2.1.0 (server
version 178) and ib_insync 0.9.86 (176) decode. Builders return field lists; the session frames
them. `sv` is the session's negotiated server version."""

from __future__ import annotations

from .catalog import BAG_CONID, Instrument
from .protocol import UNSET_D, UNSET_I

IB_ERRORS = {
    100: "Max rate of messages per second has been exceeded:max=50 rec={rec} (543)",
    101: "Max number of tickers has been reached",
    103: "Duplicate order id",
    104: "Can't modify a filled order",
    105: "Order being modified does not match original order.",
    110: "The price does not conform to the minimum price variation for this contract.",
    162: "Historical Market Data Service error message:{detail}",
    200: "No security definition has been found for the request",
    201: "Order rejected - reason:{reason}",
    202: "Order Canceled - reason:{reason}",
    300: "Can't find EId with tickerId:{tickerId}",
    321: "Error validating request.-'{part}' : cause - {cause}",
    326: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    354: "Requested market data is not subscribed. Check API status by selecting the Account menu then under "
         "Management choose Market Data Subscription Manager and/or by selecting Edit, Global Configuration, "
         "API, Settings and enabling 'Market data API'.",
    399: "Order Message:\n{action} {quantity:g} {symbol} {exchange}\nWarning: your order will not be placed at the "
         "exchange until {until} US/Eastern",
    420: "Invalid Real-time Query:{detail}",
    366: "No historical data query found for ticker id:{tickerId}",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2106: "HMDS data farm connection is OK:ushmds",
    2158: "Sec-def data farm connection is OK:secdefnj",
    10147: "OrderId {orderId} that needs to be cancelled is not found.",
    10148: "OrderId {orderId} that needs to be cancelled cannot be cancelled, state: {state}.",
    10167: "Requested market data is not subscribed. Displaying delayed market data.",
    10197: "No market data during competing live session",
}


def error(reqId: int, code: int, text: str | None = None, advanced: str = "", **kw) -> list:
    return [4, 2, reqId, code, text if text is not None else IB_ERRORS[code].format(**kw), advanced]


def contract_data(reqId: int, inst: Instrument, exchange: str, hours: tuple[str, str]) -> list:
    """A contractDetails message; `hours`: its tradingHours and liquidHours (hours.Hours.trading_hours)."""
    ltd = inst.lastTradeDate
    if inst.secType in ("FUT", "OPT", "CONTFUT") and ltd:
        ltd = f"{ltd} 16:00 US/Eastern" if inst.secType == "OPT" else ltd
    order_types = "ACTIVETIM,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,COND,CONDORDER,DAY,GAT,GTC,GTD,IOC,LIT,LMT,MIT,MKT,MOC,NONALGO,OCA,STP,STPLMT,TRAIL,WHATIF"
    trading, liquid = hours
    return [10, reqId, inst.symbol, inst.secType, ltd, inst.strike, inst.right, exchange, inst.currency,
            inst.localSymbol, inst.tradingClass, inst.tradingClass, inst.conId, inst.minTick, inst.multiplier_text,
            order_types, ",".join(inst.valid_exchanges), 1, inst.underConId, inst.longName, inst.exchange,
            inst.contract_month if inst.secType in ("FUT", "OPT", "CONTFUT") else "", "", "", "", "US/Eastern",
            trading, liquid, "", "", 0, 1, inst.underSymbol, inst.underSecType, "26,26",
            inst.lastTradeDate, "COMMON" if inst.secType == "STK" else "", 1, 1, 1 if inst.secType != "STK" else 100]


def _legs(order) -> list:
    if not order.legs:
        return ["", 0, 0, 0]
    out = [",".join(f"{leg['conId']}|{leg['ratio'] if leg['action'] == 'BUY' else -leg['ratio']}" for leg in order.legs)]
    out.append(len(order.legs))
    for leg in order.legs:
        out += [leg["conId"], leg["ratio"], leg["action"], leg["exchange"] or "SMART", 0, 0, "", -1]
    out.append(0)
    out.append(len(order.combo_params))
    for tag, value in order.combo_params:
        out += [tag, value]
    return out


def order_contract(order) -> list:
    if order.legs:
        return [BAG_CONID, order.symbol, "BAG", "", 0.0, "", "", "SMART", order.currency, "28812380", "COMB"]
    inst = order.inst
    return inst.contract_fields(order.exchange or inst.wire_exchange)


def open_order(order, sv: int, status: str | None = None, margin: dict | None = None) -> list:
    o = order
    m = margin or {}
    f = [5, o.orderId, *order_contract(o), o.action, o.totalQuantity, o.orderType,
         o.lmtPrice if o.lmtPrice is not None else 0.0, o.auxPrice if o.auxPrice is not None else 0.0,
         o.tif, o.ocaGroup, o.account, "O", 0, o.orderRef, o.clientId, o.permId, o.outsideRth, 0, 0.0, "", "",
         "", "", ""]
    if sv < 177:
        f.append("")  # faProfile
    f += ["", "", "", UNSET_D, "", 0, "", -1, 0, UNSET_D, UNSET_D, UNSET_D, UNSET_D, UNSET_D, 0, 0, 0, 0, UNSET_I,
          3, 0, 0, UNSET_D, o.parentId, 0, UNSET_D, 0, "", UNSET_D, 0, 0, UNSET_D, UNSET_D, UNSET_D, UNSET_I]
    f += _legs(o)
    f += ["", "", "", "", 0, "", "IB", 0, 0, "", 0, o.whatIf, status or o.status]
    for key in ("initMarginBefore", "maintMarginBefore", "equityWithLoanBefore", "initMarginChange",
                "maintMarginChange", "equityWithLoanChange", "initMarginAfter", "maintMarginAfter",
                "equityWithLoanAfter"):
        f.append(m.get(key, UNSET_D))
    f += [m.get("commission", UNSET_D), m.get("minCommission", UNSET_D), m.get("maxCommission", UNSET_D),
          m.get("commissionCurrency", ""), m.get("warningText", "")]
    f += [0, 0, 0, "", UNSET_D, UNSET_D, UNSET_D, UNSET_D, UNSET_D, UNSET_D, 0, "", "", "", UNSET_D, 1, 0, 0, 0,
          UNSET_I, UNSET_I, 0, UNSET_I, UNSET_I, UNSET_D, UNSET_D, UNSET_D]
    return f


def completed_order(order, sv: int) -> list:
    o = order
    f = [101, *order_contract(o), o.action, o.totalQuantity, o.orderType,
         o.lmtPrice if o.lmtPrice is not None else 0.0, o.auxPrice if o.auxPrice is not None else 0.0,
         o.tif, o.ocaGroup, o.account, "O", 0, o.orderRef, o.permId, o.outsideRth, 0, 0.0, "", "", "", ""]
    if sv < 177:
        f.append("")
    f += ["", "", "", UNSET_D, "", 0, "", -1, UNSET_D, UNSET_D, UNSET_D, UNSET_D, UNSET_D, 0, 0, 0, UNSET_I, 3, 0,
          UNSET_D, 0, "", UNSET_D, 0, 0, UNSET_D, UNSET_D]
    f += _legs(o)
    f += ["", "", "", "", "", "IB", 0, 0, "", 0, o.status, 0, 0, 0, UNSET_D, UNSET_D, UNSET_D, 1, 0, "", o.filled,
          UNSET_I, 0, "", 0, 0, 0, o.done_time, f"{o.status} Size: {o.filled:g}", UNSET_I, UNSET_I, UNSET_D, UNSET_D, UNSET_D]
    return f


def order_status(o) -> list:
    return [3, o.orderId, o.status, o.filled, o.remaining, o.avgFillPrice, o.permId, o.parentId, o.lastFillPrice,
            o.clientId, "", 0.0]


def exec_details(reqId: int, ex, sv: int) -> list:
    f = [11, reqId, ex.orderId, *ex.contract, ex.execId, ex.time, ex.account, ex.exchange, ex.side, ex.shares,
         ex.price, ex.permId, ex.clientId, 0, ex.cumQty, ex.avgPrice, ex.orderRef, "", "", "", 2]
    if sv >= 178:
        f.append(0)
    return f


def commission_report(execId: str, commission: float, realized: float | None) -> list:
    return [59, 1, execId, commission, "USD", UNSET_D if realized is None else realized, UNSET_D, ""]


def position(account: str, inst: Instrument, qty: float, avg_cost: float) -> list:
    return [61, 3, account, inst.conId, inst.symbol, inst.secType, inst.lastTradeDate, inst.strike, inst.right,
            inst.multiplier_text, inst.exchange, inst.currency, inst.localSymbol, inst.tradingClass, qty, avg_cost]


def portfolio(account: str, inst: Instrument, qty: float, price: float, avg_cost: float, unrealized: float,
              realized: float) -> list:
    return [7, 8, inst.conId, inst.symbol, inst.secType, inst.lastTradeDate, inst.strike, inst.right,
            inst.multiplier_text, inst.exchange, inst.currency, inst.localSymbol, inst.tradingClass, qty, price,
            round(qty * price * inst.multiplier, 2), avg_cost, round(unrealized, 2), round(realized, 2), account]


def scanner_data(reqId: int, results) -> list:
    """scannerData (20): rank, the contract, marketName, tradingClass, distance, benchmark,
    projection (the ranked value: % change or volume) and legs per row."""
    out = [20, 3, reqId, len(results)]
    for rank, (inst, value) in enumerate(results):
        out += [rank, inst.conId, inst.symbol, inst.secType, inst.lastTradeDate, inst.strike, inst.right, "SMART",
                inst.currency, inst.localSymbol, inst.tradingClass, inst.tradingClass, "", "", f"{value:.4f}", ""]
    return out

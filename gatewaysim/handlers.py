"""One handler per incoming message id: parse the fields (a cursor, never fixed offsets), act on
the simulator, answer the way TWS does. A handler gets (sim, session, fields after the id)."""

from __future__ import annotations

import asyncio
import math

from . import encode as enc
from .book import DONE, ORDER_TYPES, Order
from .market import NY
from .protocol import UNSET_DOUBLE, Fields

HANDLERS: dict[int, tuple[str, object]] = {}


def handles(msg_id: int, name: str):
    def deco(fn):
        HANDLERS[msg_id] = (name, fn)
        return fn
    return deco


# ---------------------------------------------------------------------------- session
@handles(71, "startApi")
def start_api(sim, s, f: Fields):
    f.int()  # version
    client_id = f.int()
    if any(o is not s and o.clientId == client_id for o in sim.sessions) or client_id in sim.faults["held_client_ids"]:
        s.clientId = client_id
        s.error(-1, 326)
        sim.record_event("duplicate_client_id", clientId=client_id)
        s.writer.write_eof() if s.writer.can_write_eof() else None
        s.close(f"clientId {client_id} is already in use")
        return
    s.clientId = client_id
    s.send([15, 1, ",".join(sim.accounts)])
    s.send([9, 1, sim.book.next_valid_id])
    for code in (2104, 2106, 2158):
        s.send(enc.error(-1, code))
    sim.record_event("connected", clientId=client_id, serverVersion=s.sv)


@handles(49, "reqCurrentTime")
def req_current_time(sim, s, f):
    s.send([49, 1, int(sim.clock.now().timestamp())])


@handles(8, "reqIds")
def req_ids(sim, s, f):
    s.send([9, 1, sim.book.next_valid_id])


@handles(17, "reqManagedAccts")
def req_managed(sim, s, f):
    s.send([15, 1, ",".join(sim.accounts)])


@handles(59, "reqMarketDataType")
def req_md_type(sim, s, f):
    f.int()
    t = f.int()
    if t not in (1, 2, 3, 4):
        s.error(-1, 321, part="bL", cause=f"Invalid market data type {t}")
        return
    s.data_type = t


@handles(15, "reqAutoOpenOrders")
def req_auto_open(sim, s, f):
    pass


# ---------------------------------------------------------------------------- account
@handles(61, "reqPositions")
def req_positions(sim, s, f):
    s.positions_sub = True

    def send():
        if s.closed:
            return
        for p in sim.book.positions.values():
            s.send(enc.position(sim.book.account, p.inst, p.qty, round(p.avg_price * p.inst.multiplier, 6)))
        s.send([62, 1])
    delay = sim.faults["positions_delay"]
    if delay > 0:
        sim.record_event("fault", name="late_positions", delay=delay)
        asyncio.get_running_loop().call_later(delay, send)
    else:
        send()


@handles(64, "cancelPositions")
def cancel_positions(sim, s, f):
    s.positions_sub = False


@handles(6, "reqAccountUpdates")
def req_account_updates(sim, s, f):
    f.int()
    subscribe = f.bool()
    acct = f.str()
    s.account_sub = subscribe
    if subscribe:
        sim.send_account(s)
        s.send([54, 1, acct or sim.book.account])


@handles(76, "reqAccountUpdatesMulti")
def req_account_multi(sim, s, f):
    f.int()
    req_id = f.int()
    f.str()
    s.multi_subs.add(req_id)
    sim.send_account(s, req_id)
    s.send([74, 1, req_id])


@handles(77, "cancelAccountUpdatesMulti")
def cancel_account_multi(sim, s, f):
    f.int()
    s.multi_subs.discard(f.int())


@handles(62, "reqAccountSummary")
def req_account_summary(sim, s, f):
    f.int()
    req_id = f.int()
    f.str()  # group
    tags = [t for t in f.str().split(",") if t]
    vals = sim.account_values()
    for tag in tags:
        if tag == "AccountType":
            s.send([63, 1, req_id, sim.book.account, tag, "INDIVIDUAL", ""])
        elif tag in vals:
            v = vals[tag]
            s.send([63, 1, req_id, sim.book.account, tag, str(int(v)) if tag == "DayTradesRemaining" else f"{v:.2f}", "USD"])
    s.send([64, 1, req_id])


@handles(63, "cancelAccountSummary")
def cancel_account_summary(sim, s, f):
    pass


@handles(92, "reqPnL")
def req_pnl(sim, s, f):
    req_id = f.int()
    f.str()  # account
    f.str()  # modelCode
    s.pnl[req_id] = {"conId": None, "sent": None}
    pnl_update(sim, s, req_id, s.pnl[req_id])


@handles(94, "reqPnLSingle")
def req_pnl_single(sim, s, f):
    req_id = f.int()
    f.str()
    f.str()
    con_id = f.int()
    if sim.catalog.get(con_id) is None:
        s.error(req_id, 200)
        return
    s.pnl[req_id] = {"conId": con_id, "sent": None}
    pnl_update(sim, s, req_id, s.pnl[req_id])


@handles(93, "cancelPnL")
def cancel_pnl(sim, s, f):
    s.pnl.pop(f.int(), None)


@handles(95, "cancelPnLSingle")
def cancel_pnl_single(sim, s, f):
    s.pnl.pop(f.int(), None)


def pnl_update(sim, s, req_id: int, sub: dict) -> None:
    """pnl / pnlSingle when a value changed: daily = unrealized + realized since the simulator
    started (its 'day'), unrealized at the mid."""
    if sub["conId"] is None:
        vals = sim.account_values()
        key = (round(vals["UnrealizedPnL"], 2), round(vals["RealizedPnL"], 2))
        if key != sub["sent"]:
            sub["sent"] = key
            s.send([94, req_id, round(key[0] + key[1], 2), key[0], key[1]])
        return
    p = sim.book.positions.get(sub["conId"])
    inst = sim.catalog.get(sub["conId"])
    qty = p.qty if p else 0.0
    px = sim.mark(inst)
    unreal = (px - p.avg_price) * qty * inst.multiplier if p else 0.0
    real = p.realized if p else 0.0
    key = (qty, round(unreal, 2), round(real, 2), round(qty * px * inst.multiplier, 2))
    if key != sub["sent"]:
        sub["sent"] = key
        s.send([95, req_id, qty, round(key[1] + key[2], 2), key[1], key[2], key[3]])


# ---------------------------------------------------------------------------- contracts
@handles(9, "reqContractDetails")
def req_contract_details(sim, s, f):
    f.int()
    req_id = f.int()
    c = f.contract()
    if c["secType"].upper() == "BAG":
        s.error(req_id, 321, part="bN", cause="'BAG' isn't supported for contract data request")
        return
    matches = sim.catalog.match(c)
    if not matches:
        s.error(req_id, 200)
        return
    exchange = c["exchange"].upper() or None
    day = sim.clock.now().astimezone(NY).date()
    for inst in matches:
        s.send(enc.contract_data(req_id, inst, exchange if exchange else inst.wire_exchange,
                                 sim.market.hours.trading_hours(inst, day)))
    s.send([52, 1, req_id])


@handles(78, "reqSecDefOptParams")
def req_secdef(sim, s, f):
    req_id = f.int()
    symbol = f.str()
    f.str()
    f.str()
    con_id = f.int()
    chain = sim.catalog.chains.get(con_id)
    if chain is None:
        und = sim.catalog.symbol(symbol.upper())
        chain = sim.catalog.chains.get(und.conId) if und else None
    if chain is not None:
        und_id = con_id or sim.catalog.symbol(chain["symbol"]).conId
        for exchange in ("SMART", chain["exchange"]) if chain["exchange"] != "SMART" else ("SMART",):
            s.send([75, req_id, exchange, und_id, chain["tradingClass"], chain["multiplier"], len(chain["expiries"]),
                    *chain["expiries"], len(chain["strikes"]), *[float(k) for k in chain["strikes"]]])
    s.send([76, req_id])


# ---------------------------------------------------------------------------- market data
def _legs(sim, f: Fields, with_details: bool = False) -> list:
    n = f.int()
    legs = []
    for _ in range(n):
        leg = {"conId": f.int(), "ratio": f.int(), "action": f.str().upper(), "exchange": f.str()}
        if with_details:
            f.skip(4)  # openClose, shortSaleSlot, designatedLocation, exemptCode
        legs.append(leg)
    return legs


@handles(1, "reqMktData")
def req_mkt_data(sim, s, f):
    from .server import Line

    f.int()
    req_id = f.int()
    c = f.contract()
    legs = _legs(sim, f) if c["secType"].upper() == "BAG" else []
    if f.bool():
        f.skip(3)
    generic = {g.strip() for g in f.str().split(",") if g.strip()}
    snapshot = f.bool()
    f.bool()  # regulatory snapshot
    if c["secType"].upper() == "BAG":
        if not legs:
            s.error(req_id, 321, part="bM", cause="a BAG contract needs its combo legs")
            return
        for leg in legs:
            leg["inst"] = sim.catalog.get(leg["conId"])
            if leg["inst"] is None:
                s.error(req_id, 200)
                return
        inst = None
    else:
        inst, why = sim.resolve(c)
        if inst is None:
            s.error(req_id, 200)
            return
    if req_id in s.lines:
        s.error(req_id, 322, "Error processing request.-'bA' : cause - Duplicate ticker id")
        return
    if not snapshot and len([l for l in s.lines.values() if not l.snapshot]) >= sim.max_lines:
        s.error(req_id, 101)
        sim.record_event("line", action="refused", code=101, reqId=req_id, clientId=s.clientId)
        return
    sym = inst.symbol if inst else legs[0]["inst"].symbol
    if sim.faults["competing"]:
        s.error(req_id, 10197)
        if snapshot:
            return
    live = sim.entitled_live.get(sym, True)
    delayed = False
    data_type = 1
    if not live:
        if s.data_type in (1, 2):
            s.error(req_id, 354)
            return
        s.error(req_id, 10167)
        delayed, data_type = True, s.data_type
    elif s.data_type in (2, 4) and not sim.market.session_open(inst or legs[0]["inst"]):
        data_type = 2
    line = Line(req_id, inst, legs, snapshot, generic, delayed, data_type)
    s.send([81, req_id, inst.minTick if inst else 0.01, "SMART", 3])
    s.send([58, 1, req_id, data_type])
    if not snapshot:
        sim.record_event("line", action="open", symbol=sym, reqId=req_id, clientId=s.clientId,
                         lines=len([l for l in s.lines.values() if not l.snapshot]) + 1)
    if sim.faults["competing"] and not delayed:
        line.silent = True
        s.lines[req_id] = line
        return
    if not (sim.faults["connectivity_lost"] or sim.faults["farm_broken"] or sym in sim.faults["stopped"]):
        sim.send_ticks(s, line, full=True)
    if snapshot:
        s.send([57, 1, req_id])
    else:
        s.lines[req_id] = line


@handles(2, "cancelMktData")
def cancel_mkt_data(sim, s, f):
    f.int()
    req_id = f.int()
    line = s.lines.pop(req_id, None)
    if line is None:
        s.error(req_id, 300, tickerId=req_id)
        return
    sym = line.inst.symbol if line.inst else (line.legs[0]["inst"].symbol if line.legs else "")
    sim.record_event("line", action="cancel", symbol=sym, reqId=req_id, clientId=s.clientId)


# ---------------------------------------------------------------------------- historical
def _bar_size(text: str) -> str:
    from .server import BAR_SIZES

    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in BAR_SIZES:
        raise ValueError(f"bar size {text!r}")
    return f"{parts[0]}{BAR_SIZES[parts[1]]}"


def _duration(text: str) -> float:
    from .server import DURATION_SECONDS

    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in DURATION_SECONDS:
        raise ValueError(f"duration {text!r}")
    return int(parts[0]) * DURATION_SECONDS[parts[1]]


def _end_time(text: str, now_ns: int) -> int:
    import pandas as pd

    text = text.strip()
    if not text:
        return now_ns
    utc = len(text) > 8 and text[8] == "-"  # IB's yyyymmdd-hh:mm:ss form is UTC
    parts = (text[:8] + " " + text[9:] if utc else text).split()
    day = parts[0]
    clock = parts[1] if len(parts) > 1 else "23:59:59"
    tz = "UTC" if utc else (parts[2] if len(parts) > 2 else "US/Eastern")
    try:
        if len(day) != 8 or not day.isdigit():
            raise ValueError
        ts = pd.Timestamp(f"{day[:4]}-{day[4:6]}-{day[6:8]} {clock}")
        ts = ts.tz_localize("UTC" if tz in ("UTC", "GMT") else tz)
    except Exception:  # noqa: BLE001 - any unparsable date is the client's error, answered as such
        raise ValueError(f"end date/time {text!r} (expected yyyymmdd hh:mm:ss [tz] or yyyymmdd-hh:mm:ss)") from None
    return int(ts.value)


@handles(20, "reqHistoricalData")
def req_historical(sim, s, f):
    import pandas as pd

    from .server import _bar_time

    req_id = f.int()
    c = f.contract()
    f.bool()  # includeExpired
    end_text = f.str()
    bar_text = f.str()
    duration_text = f.str()
    rth = f.bool()
    what = f.str().upper()
    fmt_ = f.int()
    if c["secType"].upper() == "BAG":
        _legs(sim, f)
    keep = f.bool()
    if what not in ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK", "ADJUSTED_LAST"):
        s.error(req_id, 162, detail=f"HMDS query returned no data: {what} bars are not simulated "
                                    f"(TRADES, MIDPOINT, BID, ASK, BID_ASK, ADJUSTED_LAST are)")
        return
    inst, why = sim.resolve(c)
    if inst is None:
        s.error(req_id, 200)
        return
    try:
        bar = _bar_size(bar_text)
        seconds = _duration(duration_text)
        end_ns = _end_time(end_text, sim.clock.now_ns())
    except ValueError as exc:
        s.error(req_id, 162, detail=f"invalid request: {exc}")
        return
    from engine.market.bars import bar_seconds

    why_pace = sim._pacing((inst.conId, end_text, bar, duration_text, what, rth), inst, bar_seconds(bar) < 60)
    if why_pace:
        s.error(req_id, 162, detail=why_pace)
        sim.record_event("pacing_violation", reqId=req_id, contract=inst.describe())
        return
    end_ns = min(end_ns, sim.clock.now_ns())
    bars = sim._bars(inst, bar, seconds, what, rth, end_ns) if inst.secType != "OPT" else None
    if bars is None or len(bars) == 0:
        s.error(req_id, 162, detail=f"HMDS query returned no data: {inst.localSymbol or inst.symbol}@{c['exchange'] or 'SMART'} {what}")
        return
    end = pd.Timestamp(end_ns, unit="ns", tz="UTC").tz_convert("America/New_York")
    start = end - pd.Timedelta(seconds=seconds)
    out = [17, req_id, start.strftime("%Y%m%d %H:%M:%S"), end.strftime("%Y%m%d %H:%M:%S"), len(bars)]
    trades = what in ("TRADES", "ADJUSTED_LAST")
    for ts, row in zip(bars.index, bars.itertuples(index=False)):
        vol = row.volume if trades and row.volume == row.volume else -1
        wap = round((row.high + row.low + row.close) / 3, 4)
        out += [_bar_time(ts, bar, fmt_), row.open, row.high, row.low, row.close, float(vol), wap, 1 if vol == -1 else max(int(vol // 100), 1)]
    s.send(out)
    if keep and not end_text.strip():
        s.hist_live[req_id] = {"inst": inst, "bar": bar, "seconds_back": seconds, "what": what, "rth": rth, "fmt": fmt_}


@handles(25, "cancelHistoricalData")
def cancel_historical(sim, s, f):
    f.int()
    req_id = f.int()
    if s.hist_live.pop(req_id, None) is None:
        pass  # a finished, non-streaming request: TWS ignores the cancel


@handles(50, "reqRealTimeBars")
def req_realtime_bars(sim, s, f):
    f.int()
    req_id = f.int()
    c = f.contract()
    size = f.int()
    what = f.str().upper()
    inst, _ = sim.resolve(c)
    if inst is None:
        s.error(req_id, 200)
        return
    if size != 5:
        s.error(req_id, 321, part="bS", cause=f"Invalid bar size {size}: real-time bars are 5 seconds")
        return
    if inst.secType == "OPT" or what not in ("TRADES", "MIDPOINT", "BID", "ASK"):
        s.error(req_id, 420, f"Invalid Real-time Query:{what} real-time bars are not simulated for {inst.describe()}")
        return
    now = sim.clock.now_ns()
    s.realtime[req_id] = {"inst": inst, "what": what, "next": now - now % (5 * 10 ** 9)}


@handles(51, "cancelRealTimeBars")
def cancel_realtime_bars(sim, s, f):
    f.int()
    s.realtime.pop(f.int(), None)


def realtime_update(sim, s, req_id: int, sub: dict) -> None:
    """Every 5 simulated seconds that have passed: one bar sampled from the replayed price path."""
    step = 5 * 10 ** 9
    now = sim.clock.now_ns()
    sent = 0
    while sub["next"] + step <= now and sent < 100:
        t0 = sub["next"]
        prices = [sim.market.quote(sub["inst"], t0 + k * step // 5).last for k in range(6)]
        prices = [p for p in prices if p == p]
        if prices:
            o, c = prices[0], prices[-1]
            series = sim.series.get(sub["inst"].price_source)
            vol = 0
            if series is not None and sub["what"] == "TRADES":
                i = series.index(t0)
                vol = int(series.v[i] * 5 / max(series.bar_ns / 1e9, 5)) if i >= 0 else 0
            s.send([50, 3, req_id, t0 // 10 ** 9, o, max(prices), min(prices), c, vol,
                    round(sum(prices) / len(prices), 4), max(vol // 100, 1) if vol else 0])
        sub["next"] = t0 + step
        sent += 1


@handles(87, "reqHeadTimeStamp")
def req_head_timestamp(sim, s, f):
    import pandas as pd

    req_id = f.int()
    c = f.contract()
    inst, _ = sim.resolve(c)
    if inst is None or inst.price_source not in sim.series:
        s.error(req_id, 200)
        return
    t0 = int(sim.series[inst.price_source].t[0])
    s.send([88, req_id, pd.Timestamp(t0, unit="ns", tz="UTC").strftime("%Y%m%d-%H:%M:%S")])


# ---------------------------------------------------------------------------- orders
def parse_order(sim, s, f: Fields) -> tuple[int, dict, dict]:
    order_id = f.int()
    c = f.contract()
    f.skip(2)  # secIdType, secId
    o = {"action": f.str().upper(), "totalQuantity": f.float(0.0), "orderType": f.str().upper(),
         "lmtPrice": f.float(None), "auxPrice": f.float(None), "tif": f.str() or "DAY", "ocaGroup": f.str(),
         "account": f.str(), "openClose": f.str(), "origin": f.int(), "orderRef": f.str(), "transmit": f.bool(),
         "parentId": f.int()}
    f.skip(4)  # blockOrder, sweepToFill, displaySize, triggerMethod
    o["outsideRth"] = f.bool()
    f.skip(1)  # hidden
    o["legs"], o["combo_params"] = [], []
    if c["secType"].upper() == "BAG":
        o["legs"] = _legs(sim, f, with_details=True)
        for _ in range(f.int()):
            f.float()
        for _ in range(f.int()):
            o["combo_params"].append((f.str(), f.str()))
    f.skip(7)  # sharesAllocation, discretionaryAmt, goodAfterTime, goodTillDate, faGroup, faMethod, faPercentage
    if s.sv < 177:
        f.skip(1)  # faProfile
    f.skip(22)  # modelCode .. volatilityType
    if f.str():  # deltaNeutralOrderType
        f.skip(1 + 8)
    else:
        f.skip(1)
    f.skip(6)  # continuousUpdate, referencePriceType, trailStopPrice, trailingPercent, scaleInit, scaleSubs
    inc = f.float(None)
    if inc is not None and 0 < inc < UNSET_DOUBLE:
        f.skip(7)
    f.skip(3)  # scaleTable, activeStartTime, activeStopTime
    if f.str():  # hedgeType
        f.skip(1)
    f.skip(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if f.bool():
        f.skip(3)
    if f.str():  # algoStrategy
        for _ in range(f.int()):
            f.skip(2)
    f.skip(1)  # algoId
    o["whatIf"] = f.bool()
    return order_id, c, o


@handles(3, "placeOrder")
def place_order(sim, s, f):
    order_id, c, spec = parse_order(sim, s, f)
    sim.received[-1]["order"] = {"orderId": order_id, "symbol": c["symbol"], "secType": c["secType"],
                                 **{k: spec[k] for k in ("action", "totalQuantity", "orderType", "lmtPrice",
                                                         "auxPrice", "orderRef", "whatIf", "transmit", "parentId",
                                                         "ocaGroup")}}
    book = sim.book
    key = (s.clientId, order_id)
    if spec["whatIf"]:
        return _what_if(sim, s, order_id, c, spec)
    if sim.faults["readonly"]:
        s.error(order_id, 321, part="bN", cause="The API interface is currently in Read-Only mode.")
        return
    existing = book.orders.get(key)
    if existing is not None and existing.session != s.serial and not existing.is_working:
        s.error(order_id, 103)  # an id reused on a new connection (e.g. after a nextValidId rollback)
        return
    if existing is not None and existing.status in DONE:
        if existing.status == "Filled":
            s.error(order_id, 104)
        else:
            s.error(order_id, 103)
        return
    inst, legs = None, []
    if c["secType"].upper() == "BAG":
        if not spec["legs"]:
            s.error(order_id, 321, part="bO", cause="a BAG order needs its combo legs")
            return
        for leg in spec["legs"]:
            leg["inst"] = sim.catalog.get(leg["conId"])
            if leg["inst"] is None:
                s.error(order_id, 200)
                return
        legs = spec["legs"]
    else:
        inst, why = sim.resolve(c)
        if inst is None:
            s.error(order_id, 200)
            return
    problem = _validate(spec, inst)
    if problem:
        s.error(order_id, 321, part="bO", cause=problem)
        return
    if inst is not None and _off_tick(spec, inst.minTick):
        # IB refuses a price off the contract's grid before any orderStatus: a new order is not
        # placed (ib_async cancels its PendingSubmit trade), a modify leaves the order as it was
        s.error(order_id, 110)
        sim.record_event("rejected", orderId=order_id, clientId=s.clientId,
                         reason=f"off the {inst.minTick:g} tick: lmtPrice {spec['lmtPrice']}, auxPrice {spec['auxPrice']}")
        return
    if existing is not None and existing.is_working and sim.faults["refuse_modifies"]:
        s.error(order_id, 105)      # a warning: the order is left as it was
        sim.record_event("rejected", orderId=order_id, clientId=s.clientId, reason="modify refused (105)")
        return
    reject = sim.faults["reject_next"]
    if reject and existing is None and reject[1] in (None, spec["orderType"]):
        reject = reject[0]
        sim.faults["reject_next"] = None
        s.error(order_id, 201, reason=reject, advanced='{"rejectCode":"' + reject.replace('"', "'") + '"}')
        sim.record_event("rejected", orderId=order_id, clientId=s.clientId, reason=reject)
        return
    book.next_valid_id = max(book.next_valid_id, order_id + 1)
    if existing is not None:
        o = existing
        for k in ("totalQuantity", "orderType", "lmtPrice", "auxPrice", "tif", "outsideRth"):
            setattr(o, k, spec[k])
        o.orderRef = spec["orderRef"] or o.orderRef
        o.transmit = o.transmit or spec["transmit"]  # a transmitted order is never held again
        o.history.append({"t": sim.clock.now().isoformat(), "modify": {k: spec[k] for k in ("totalQuantity", "lmtPrice", "auxPrice")}})
        untriggered = o.orderType in ("STP", "STP LMT") and not o.triggered
        o.status = "Submitted" if o.transmit and not untriggered else "PreSubmitted"
        sim.record_event("modified", orderId=order_id, clientId=s.clientId, permId=o.permId)
    else:
        o = Order(orderId=order_id, clientId=s.clientId, permId=book.new_perm(), inst=inst, action=spec["action"],
                  totalQuantity=spec["totalQuantity"], orderType=spec["orderType"], lmtPrice=spec["lmtPrice"],
                  auxPrice=spec["auxPrice"], tif=spec["tif"], account=spec["account"] or book.account,
                  orderRef=spec["orderRef"], ocaGroup=spec["ocaGroup"], parentId=spec["parentId"],
                  transmit=spec["transmit"], outsideRth=spec["outsideRth"], exchange=c["exchange"].upper(),
                  symbol=c["symbol"].upper() or (inst.symbol if inst else ""), currency=c["currency"] or "USD",
                  legs=legs, combo_params=spec["combo_params"], created=sim.clock.now().isoformat(),
                  session=s.serial)
        if o.tif.upper() in ("DAY", ""):
            o.day_end = sim.market.session_end(sim.traded_inst(o), sim.clock.now_ns())
        parent = book.orders.get((s.clientId, o.parentId)) if o.parentId else None
        held = not o.transmit or (parent is not None and parent.status != "Filled")
        o.status = "PreSubmitted" if held or o.orderType in ("STP", "STP LMT") else "Submitted"
        book.orders[key] = o
        sim.record_event("order", orderId=order_id, clientId=s.clientId, permId=o.permId, orderRef=o.orderRef)
        if o.transmit and parent is not None:
            # the last child transmits the whole bracket: the parent goes live, its children
            # stay held (PreSubmitted) until it fills
            for other in book.orders.values():
                if other.clientId == o.clientId and (other is parent or other.parentId == parent.orderId):
                    other.transmit = True
            if parent.is_working:
                stop = parent.orderType in ("STP", "STP LMT") and not parent.triggered
                parent.status = "PreSubmitted" if stop else "Submitted"
    drop = sim.faults["drop_on_order"]
    if drop == "before_ack":
        sim.faults["drop_on_order"] = None
        s.close("fault: drop_connection before acknowledging the order")
        sim.try_fill(o)
        return
    outside_hours = o.transmit and not sim.works_now(o)
    if outside_hours and o.status == "Submitted":
        o.status = "PreSubmitted"       # held at IB until the session opens
    s.send(enc.open_order(o, s.sv))
    s.send(enc.order_status(o))
    if outside_hours and existing is None:
        inst = sim.traded_inst(o)
        until = sim.market.next_open(inst, o.outsideRth, sim.clock.now_ns())
        s.error(order_id, 399, action=o.action, quantity=o.totalQuantity, symbol=o.symbol,
                exchange=o.exchange or "SMART", until=f"{until:%Y%m%d %H:%M:%S}")
    if drop == "after_ack":
        sim.faults["drop_on_order"] = None
        s.close("fault: drop_connection after acknowledging the order")
        sim.try_fill(o)
        return
    if o.transmit and o.parentId:
        parent = book.orders.get((o.clientId, o.parentId))
        if parent is not None:
            for sess in [x for x in sim.sessions if x.clientId == parent.clientId]:
                sess.send(enc.order_status(parent))
            sim.try_fill(parent)
    if o.transmit:
        sim.try_fill(o)


def _off_tick(spec: dict, tick: float) -> bool:
    """Is a price the order carries (its limit, its stop) off the `tick` grid (float noise of a
    millionth of a tick apart)?"""
    if not tick > 0:
        return False
    kind = spec["orderType"]
    for key, used in (("lmtPrice", ("LMT", "STP LMT")), ("auxPrice", ("STP", "STP LMT"))):
        price = spec[key]
        if kind in used and price is not None and math.isfinite(price) and \
                abs(price / tick - round(price / tick)) > 1e-6:
            return True
    return False


def _validate(spec: dict, inst) -> str:
    if spec["action"] not in ("BUY", "SELL"):
        return f"invalid action {spec['action']!r}; use BUY or SELL"
    if not spec["totalQuantity"] or spec["totalQuantity"] <= 0:
        return "order size must be positive"
    t = spec["orderType"]
    if t not in ORDER_TYPES:
        return f"order type {t!r} is not simulated ({', '.join(ORDER_TYPES)})"
    if t in ("LMT", "STP LMT") and spec["lmtPrice"] is None:
        return "a limit order needs a limit price"
    if t in ("STP", "STP LMT") and spec["auxPrice"] is None:
        return "a stop order needs a stop price (auxPrice)"
    return ""


def _what_if(sim, s, order_id, c, spec):
    from .server import margin_rate

    if c["secType"].upper() == "BAG":
        legs = spec["legs"]
        if not legs:
            s.error(order_id, 201, reason="a BAG order needs its combo legs")
            return
        for leg in legs:
            leg["inst"] = sim.catalog.get(leg["conId"])
            if leg["inst"] is None:
                s.error(order_id, 200)
                return
        q = sim.combo_quote(legs)
        width = 0.0  # the widest vertical per right: an iron condor's margin is one wing, not both
        for right in ("C", "P"):
            strikes = [leg["inst"].strike for leg in legs if leg["inst"].right == right]
            if len(strikes) >= 2:
                width = max(width, max(strikes) - min(strikes))
        net = (q.ask if spec["action"] == "BUY" else q.bid)
        change = abs(net) * 100 * spec["totalQuantity"] if net > 0 and spec["action"] == "BUY" else width * 100 * spec["totalQuantity"]
        inst = legs[0]["inst"]
        commission = 0.65 * spec["totalQuantity"] * len(legs)
    else:
        inst, _ = sim.resolve(c)
        if inst is None:
            s.error(order_id, 200)
            return
        q = sim.market.quote(inst)
        px = spec["lmtPrice"] or (q.ask if spec["action"] == "BUY" else q.bid)
        change = abs(spec["totalQuantity"] * px * inst.multiplier) * margin_rate(inst)
        from .book import commission_for
        commission = commission_for(inst, spec["totalQuantity"], px)
    if sim.faults["reject_next"] and sim.faults["reject_next"][1] in (None, spec["orderType"]):
        reason = sim.faults["reject_next"][0]
        sim.faults["reject_next"] = None
        s.error(order_id, 201, reason=reason)
        return
    vals = sim.account_values()
    o = Order(orderId=order_id, clientId=s.clientId, permId=0, inst=inst if not spec["legs"] else None,
              action=spec["action"], totalQuantity=spec["totalQuantity"], orderType=spec["orderType"],
              lmtPrice=spec["lmtPrice"], auxPrice=spec["auxPrice"], tif=spec["tif"],
              account=spec["account"] or sim.book.account, orderRef=spec["orderRef"], whatIf=True,
              symbol=c["symbol"].upper(), legs=spec["legs"], combo_params=spec["combo_params"], status="PreSubmitted")
    if sim.faults["whatif_unset"]:
        margin = {"commissionCurrency": "USD"}
    else:
        init0, maint0, ewl = vals["InitMarginReq"], vals["MaintMarginReq"], vals["EquityWithLoanValue"]
        margin = {"initMarginBefore": f"{init0:.2f}", "maintMarginBefore": f"{maint0:.2f}",
                  "equityWithLoanBefore": f"{ewl:.2f}", "initMarginChange": f"{change:.2f}",
                  "maintMarginChange": f"{change * 0.8:.2f}", "equityWithLoanChange": f"{-commission:.2f}",
                  "initMarginAfter": f"{init0 + change:.2f}", "maintMarginAfter": f"{maint0 + change * 0.8:.2f}",
                  "equityWithLoanAfter": f"{ewl - commission:.2f}", "commission": round(commission, 2),
                  "minCommission": round(commission, 2), "maxCommission": round(commission, 2),
                  "commissionCurrency": "USD"}
    sim.record_event("what_if", orderId=order_id, clientId=s.clientId, unset=sim.faults["whatif_unset"])
    s.send(enc.open_order(o, s.sv, margin=margin))


@handles(4, "cancelOrder")
def cancel_order(sim, s, f):
    f.int()
    order_id = f.int()
    o = sim.book.orders.get((s.clientId, order_id))
    if o is None:
        s.error(order_id, 10147, orderId=order_id)
        return
    if not o.is_working:
        s.error(order_id, 10148, orderId=order_id, state=o.status)
        return
    sim.cancel_order(o)


@handles(58, "reqGlobalCancel")
def global_cancel(sim, s, f):
    for o in list(sim.book.orders.values()):
        if o.is_working:
            sim.cancel_order(o)


def _open_orders(sim, s, every_client: bool) -> None:
    for o in sim.book.orders.values():
        if o.is_working and (every_client or o.clientId == s.clientId):
            s.send(enc.open_order(o, s.sv))
            s.send(enc.order_status(o))
    s.send([53, 1])


@handles(5, "reqOpenOrders")
def req_open_orders(sim, s, f):
    _open_orders(sim, s, every_client=False)


@handles(16, "reqAllOpenOrders")
def req_all_open_orders(sim, s, f):
    _open_orders(sim, s, every_client=True)


@handles(99, "reqCompletedOrders")
def req_completed(sim, s, f):
    # apiOnly is ignored: every order the simulator holds came through the API
    for o in sim.book.orders.values():
        if o.status in DONE:
            s.send(enc.completed_order(o, s.sv))
    s.send([102])


@handles(7, "reqExecutions")
def req_executions(sim, s, f):
    f.int()
    req_id = f.int()
    client_id = f.int()
    acct = f.str()
    since = f.str()
    symbol = f.str().upper()
    sec_type = f.str().upper()
    f.str()  # exchange
    side = f.str().upper()
    since_ts = None
    if since:
        try:
            since_ts = _end_time(since, 0) / 1e9
        except ValueError:
            since_ts = None
    side = {"BUY": "BOT", "SELL": "SLD"}.get(side, side)
    for ex in sim.book.executions:
        if client_id and ex.clientId != client_id:
            continue
        if acct and ex.account != acct:
            continue
        if symbol and ex.symbol != symbol:
            continue
        if sec_type and ex.secType != sec_type:
            continue
        if side and ex.side != side:
            continue
        if since_ts is not None and ex.ts < since_ts:
            continue
        s.send(enc.exec_details(req_id, ex, s.sv))
        s.send(enc.commission_report(ex.execId, ex.commission, ex.realized))
    s.send([55, 1, req_id])


# ---------------------------------------------------------------------------- scanner
@handles(22, "reqScannerSubscription")
def req_scanner(sim, s, f):
    req_id = f.int()
    rows = f.int()
    instrument = f.str().upper()
    f.str()  # locationCode
    code = f.str().upper()
    above = f.float(None)
    below = f.float(None)
    above_volume = f.int(0) if len(f) else 0
    for _ in range(14):          # market cap, ratings, maturity, coupon, convertibles, option volume, pairs, type
        if len(f):
            f.str()
    # the filter options (TagValues "tag=value;"): priceAbove, priceBelow and volumeAbove are
    # simulated, as the subscription's own fields are; IB ignores a tag it does not know
    filters = dict(item.split("=", 1) for item in (f.str() if len(f) else "").split(";") if "=" in item)
    try:
        if "priceAbove" in filters:
            above = max(above or 0.0, float(filters["priceAbove"]))
        if "priceBelow" in filters:
            value = float(filters["priceBelow"])
            below = value if below is None else min(below, value)
        if "volumeAbove" in filters:
            above_volume = max(above_volume, int(float(filters["volumeAbove"])))
    except ValueError as exc:
        s.error(req_id, 162, detail=f"Scanner: a filter value is not a number ({exc})")
        return
    if instrument not in ("", "STK"):
        s.error(req_id, 162, detail=f"Scanner: instrument {instrument!r} is not simulated (STK is)")
        return
    results = scan(sim, code, rows if 0 < rows < 1000 else 50, above, below, above_volume)
    if results is None:
        s.error(req_id, 162, detail=f"Scanner: scan code {code!r} is not simulated (TOP_PERC_GAIN, TOP_PERC_LOSE, "
                                    f"MOST_ACTIVE, HOT_BY_VOLUME)")
        return
    s.send(enc.scanner_data(req_id, results))
    s.scanners[req_id] = {"code": code, "rows": rows if 0 < rows < 1000 else 50, "above": above, "below": below,
                          "above_volume": above_volume, "sent": [(i.conId, round(v, 4)) for i, v in results]}


def scanner_update(sim, s, req_id: int, sub: dict) -> None:
    """A live subscription is re-sent when its ranking changes, as TWS refreshes scanners."""
    results = scan(sim, sub["code"], sub["rows"], sub["above"], sub["below"], sub["above_volume"]) or []
    key = [(i.conId, round(v, 4)) for i, v in results]
    if key == sub["sent"]:
        return
    sub["sent"] = key
    s.send(enc.scanner_data(req_id, results))


def scan(sim, code: str, rows: int, above, below, above_volume):
    items = []
    for inst in sim.catalog.underlyings():
        if inst.secType != "STK":
            continue
        q = sim.market.quote(inst)
        if q.last != q.last or q.close <= 0:
            continue
        if above is not None and q.last <= above or below is not None and q.last >= below:
            continue
        if above_volume and q.volume < above_volume:
            continue
        change = (q.last - q.close) / q.close * 100
        items.append((inst, change, q.volume))
    if code == "TOP_PERC_GAIN":
        items.sort(key=lambda x: -x[1])
        return [(i, c) for i, c, v in items if c > 0][:rows]
    if code == "TOP_PERC_LOSE":
        items.sort(key=lambda x: x[1])
        return [(i, c) for i, c, v in items if c < 0][:rows]
    if code in ("MOST_ACTIVE", "HOT_BY_VOLUME", "TOP_VOLUME"):
        items.sort(key=lambda x: -x[2])
        return [(i, v) for i, c, v in items][:rows]
    return None


@handles(23, "cancelScannerSubscription")
def cancel_scanner(sim, s, f):
    f.int()
    req_id = f.int()
    if s.scanners.pop(req_id, None) is not None:
        # as TWS does: the cancel of a scanner subscription is answered with a 162
        s.error(req_id, 162, detail=f"API scanner subscription cancelled: {req_id}")


@handles(24, "reqScannerParameters")
def req_scanner_params(sim, s, f):
    xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ScanParameterResponse><ScanTypeList>"
           + "".join(f"<ScanType><scanCode>{c}</scanCode><instruments>STK</instruments></ScanType>"
                     for c in ("TOP_PERC_GAIN", "TOP_PERC_LOSE", "MOST_ACTIVE", "HOT_BY_VOLUME"))
           + "</ScanTypeList></ScanParameterResponse>")
    s.send([19, 1, xml])

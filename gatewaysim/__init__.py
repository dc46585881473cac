"""gatewaysim: a local IB Gateway that the real, unmodified ib_async client talks to over TCP.

It speaks the TWS API socket protocol (server versions 157..178: ib_async 2.1.0 negotiates 178,
ib_insync 0.9.86 negotiates 176), replays bars from a data directory as quotes, fills orders
against those quotes, and produces IB's faults on command. It shares no code with qtrade's IB
broker, which is tested against it. Run it with `qtrade gateway-sim`, or from Python:

    sim = GatewaySim("strategies/data", speed=60)
    port = sim.start_in_thread(port=0)      # or: await sim.start(port) inside a loop
    ...                                     # IB().connect("127.0.0.1", port, clientId=1)
    sim.stop_ticks("SPY"); sim.reject_next_order("margin"); sim.record()
    sim.stop_thread()

Requests answered: startApi, reqCurrentTime, reqIds, reqManagedAccts, reqMarketDataType,
reqPositions, reqAccountUpdates, reqAccountUpdatesMulti, reqAccountSummary, reqPnL(Single),
reqContractDetails (STK, IND, FUT, CONTFUT, OPT; BAG -> 321 as at IB), reqSecDefOptParams,
reqMktData (snapshot and streaming; STK, IND, FUT, OPT with greeks, BAG from its legs),
reqHistoricalData (+ keepUpToDate), reqRealTimeBars, reqHeadTimeStamp, placeOrder (MKT, LMT,
STP, STP LMT, BAG; what-if; brackets/OCA; a limit or stop price off the contract's minTick
grid refused with 110 before any orderStatus, as at IB), cancelOrder, reqGlobalCancel, reqOpenOrders,
reqAllOpenOrders, reqCompletedOrders, reqExecutions (filtered), reqScannerSubscription
(TOP_PERC_GAIN, TOP_PERC_LOSE, MOST_ACTIVE/HOT_BY_VOLUME over the replayed stocks, with the
price/volume fields or the priceAbove/priceBelow/volumeAbove filter options; its cancel answered
with a 162 "API scanner subscription cancelled", as TWS does) and the matching cancels. Other message ids are logged and ignored; a malformed message closes its
session with a logged reason. Faults and control commands: gatewaysim/control.py.

Clock. Simulated time starts at 09:30 New York on the last day of the intraday data (or the
last daily bar's day) and runs at --speed times the wall clock. reqCurrentTime, the handshake's
connection time, execution times and historical bars all use simulated time, and no bar later
than simulated now is ever sent. A qtrade run follows an accelerated simulator by taking its
time from the venue (reqCurrentTime / the latest bar's timestamp), never from its own wall
clock; at --speed 60 one simulated minute passes per wall second.

Market model. A symbol's price at time t walks linearly through the bar containing t: open ->
low -> high -> close for a bar that closed up, open -> high -> low -> close otherwise (a daily
bar spans 09:30-16:00 New York). Before its first bar a symbol holds that bar's open, after its
last bar the last close. Stocks quote last +- max(1 tick, 1 bp) (bid rounded down, ask up to
the tick); futures one tick wide (the last on one side); indices have a last but no bid/ask, as at IB.
Futures without bars of their own follow a proxy (MNQ follows NQ, ES/MES follow SPX, SPX is XSP
x 10) plus 5 %/year carry per day beyond the front month. With `chains` (--chains FILE, an L2 or
iVolatility CSV read by engine.market.chains.load_chains) the underlyings it holds list exactly
the file's options and quote the snapshot in force (the latest at or before simulated now; an
end-of-day file quotes the previous close all day): its bid/ask, its iv and greeks, a missing side
as IB's -1/size 0. Otherwise options are Black-Scholes prices on
the underlying's replayed price, its realised volatility (from the bars, clipped to 8-150 %)
and the engine's smile (engine.market.chains.Skew), quoted with the engine's Spread model;
greeks are the model's (vega per vol point, theta per day).

Fill rules (checked when an order arrives and on every tick, every `tick_interval` seconds):
  * MKT fills its whole remaining quantity at the ask (BUY) or the bid (SELL).
  * LMT fills when marketable - BUY when ask <= limit, SELL when bid >= limit - at the touch
    (ask/bid), which may be better than the limit. A non-marketable limit rests until the
    quote reaches it.
  * STP triggers on the touch: BUY when last >= stop, SELL when last <= stop; it then fills as
    MKT. STP LMT triggers the same way and then behaves as LMT.
  * BAG combos price from their legs: a BUY pays sum(ratio x ask) of bought legs minus
    sum(ratio x bid) of sold legs (SELL the mirror). A combo LMT fills at that natural price
    when it is marketable; it also fills at its limit when the limit is at or through the mid
    and the combo is no wider than `combo_mid_width` (0.10); a limit inside a wider combo does
    not fill. A fill sends one execDetails per leg (at the leg's touch price) plus one for the
    BAG itself; positions are kept per leg.
  * Quotes that are NaN/empty (nan_quotes fault) fill nothing. Bracket children (parentId) are
    held (PreSubmitted) until the parent fills; when one child fills its siblings are cancelled,
    and a filled order cancels the rest of its OCA group. A modify never un-transmits an order.
  * Hours, as at IB: a stock or option order (a combo by its first leg) without outsideRth works
    only in regular hours: NYSE's sessions, 09:30-16:00 New York on its trading days, 13:00 on an
    early close, none on a holiday (from its exchange calendar, gatewaysim/hours.py). One sent
    outside them is held (PreSubmitted, with warning 399 naming the open it waits for) and is
    matched at the session's first moment, at that moment's quote (the open), however far apart a
    fast clock's ticks are (a stock order with outsideRth: 04:00 to four hours after the close). A future's order works in CME equity futures' sessions (18:00-17:00 New York,
    shortened on CME's holidays). A DAY order still working at the end of the session it was sent
    for is cancelled (orderStatus Cancelled, no error message). Contract details' tradingHours and
    liquidHours come from the same calendars.
  * `set_fill_mode("never"|"manual")` stops automatic fills; `fill_order(orderId, qty, price)`
    fills by hand (partial fills), `partial_fill_then_cancel(qty)` fills qty then cancels (202).
  Commissions: stocks 0.005/share (min 1.00, max 1 % of value), options 0.65/contract, futures
  2.25 (micros 0.62) per contract. A closing fill's commissionReport carries its realized P&L
  before commissions ((price - average price) x quantity x multiplier); positions' avgCost is
  the average price x multiplier, commissions not included. What-if margin: 25 % of stock value, 100 % of option premium,
  6 % of futures notional, spread width x 100 for a credit combo.

Bars. reqHistoricalData answers from the replayed bars (resampled with the engine's resample to
the requested size; only bars complete at simulated now; nothing finer than the data), with
IB's pacing rules in wall-clock time: an identical request within 15 s, a sixth request for one
contract and type within 2 s or a 61st within 10 minutes (the last two for bars under a
minute) is a 162 pacing violation. keepUpToDate pushes each newly completed bar;
reqRealTimeBars sends a 5-second bar for every 5 simulated seconds, sampled from the price path.

Everything the simulator receives, and every order, execution, position and fault it holds, is
kept in its record: `sim.record()` (a dict) and `sim.dump_json(path)`.
"""

from .data import DataError, load_data
from .server import GatewaySim

__all__ = ["GatewaySim", "DataError", "load_data", "main"]


def main(port: int = 7497, data=None, account: str = "DU1234567", speed: float = 1.0, scenario=None,
         control_port: int | None = None, start: str | None = None, chains=None, echo=print) -> int:
    """`qtrade gateway-sim`: run until SIGINT/SIGTERM; returns the exit code."""
    from .cli import run

    return run(port=port, data=data, account=account, speed=speed, scenario=scenario, control_port=control_port,
               start=start, chains=chains, echo=echo)

"""The IB broker: the kernel's Broker protocol over ib_async (>=2.1,<3), split by concern.

Style: synchronous and single-threaded, as the kernel's loop is. Every component takes the one
`ib_async.IB` instance and works through ib_async's sync API (`ib.connect`, `ib.sleep`,
`ib.run(asyncio.wait_for(coro, timeout))`); nothing starts a thread or a loop of its own, and
every request that waits has a timeout. ib_async's callbacks (errorEvent, orderStatusEvent,
execDetailsEvent, commissionReportEvent, pendingTickersEvent, barUpdateEvent, ...) only record
what happened; `IBBroker.events()` hands the kernel the engine's event dataclasses
(engine/brokers/events.py) in the order they happened. Prices cross the boundary as float();
IB's UNSET (1.797e308), -1 and NaN never become a price.

Modules:
  codes.py        IB's error and warning codes as data: what each means in plain words and what
                  the broker does (connectivity lost / restored / data lost, farm broken / ok,
                  order rejected, pacing, market-data entitlement, advisory, harmless).
  connection.py   connect (fail fast on 326, a one-line "nothing listens" message), the state
                  machine (disconnected -> connecting -> reconciling -> ready <-> degraded),
                  dead-connection and 1100/1101/1102/2103/2104/2110 handling, reconnect with
                  backoff and jitter, the fallback client id with reqAllOpenOrders.
  contracts.py    instruments.yaml + contract details -> the exact contract (conId, localSymbol,
                  multiplier, trading class, min tick); futures front month by trading class and
                  last trade date less the roll offset; option chains from sec-def params.
  marketdata.py   the line budget (priorities, TTL eviction, never above the budget), quotes
                  (NaN/-1 sanitised), silent staleness, 10197/354/10167/10168/10089-91,
                  the live -> delayed fallback said plainly, resubscription after 1101 / 2104.
  history.py      historical bars within IB's pacing rules (no identical request within 15 s,
                  back off on 162 pacing, "no data" is final); keepUpToDate bars as they complete.
  orders.py       Order -> ib_async Contract/Order (STK, FUT, OPT, BAG with ComboLegs), orderRef
                  = the kernel's tag, orderId from IB's sequence only; place / modify (same
                  orderId) / cancel; what-if with a timeout; trades -> OrderStatus, Execution (a
                  `.02` correction replaces `.01`), CommissionReport (late ones update).
  account.py      positions keyed by local symbol with IB's multiplier rules (avgCost /
                  multiplier), account values, the account id and whether it is a paper account.
  reconcile.py    the complete fetch (positions, open and completed orders, executions; any
                  timeout aborts) and the pure comparison with the journal: adopt, missing fills,
                  finished, never sent, lost, phantom, unknown, mismatch. Nothing is re-sent.
  broker.py       IBBroker: the components composed behind the Broker protocol.
"""

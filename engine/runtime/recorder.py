"""The journal written as a run happens (paper and live): every order before it is sent, each
status change, each execution by its execution id, commissions as they arrive, decisions with
the values their rule compared, errors. A crash leaves the journal with everything that happened
up to it; the end of a run adds the trades, the equity curve and the positions
(backtest.write_journal with incremental=True).
"""

from __future__ import annotations

from ..brokers import events as E
from .journal import Journal
from .records import Decision, OrderRecord


def _iso(ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ns), tz="UTC").isoformat()


class Recorder:
    def __init__(self, journal: Journal, run_id: str, contract=None, ids=None):
        """`contract(symbol, ref, intent) -> (conId, local symbol) | None`: the exact contract a
        broker trades an order or fill of `symbol` in (ref: the order's tag; intent: open or close
        for an order about to be sent, None for a fill), journaled with its orders and fills; `ids(ref) -> (orderId, permId)`: the
        venue's ids of an order, journaled as they become known."""
        self.journal = journal
        self.run_id = run_id
        self.contract = contract
        self.ids = ids
        self._journaled: set[str] = set()
        self._exec_refs: dict[str, str] = {}

    def known(self, ref: str) -> None:
        """An order journaled by an earlier run (adopted): its row is there already."""
        self._journaled.add(ref)

    def order(self, rec: OrderRecord) -> None:
        """Before the order leaves: its row, status `created` (committed: the journal is in autocommit)."""
        it = rec.intent
        if it.tag in self._journaled:
            return
        self._journaled.add(it.tag)
        self.journal.order(self.run_id, it.tag, _iso(rec.time), it.symbol, it.action, float(it.quantity or 0.0),
                           it.order_type, limit_price=it.limit, stop_price=it.stop, tif=it.tif, rule=it.rule,
                           intent=it.intent, legs=rec.legs, status="created", reason=it.reason, owner=rec.owner)
        exact = self.contract(it.symbol, it.tag, it.intent) if self.contract is not None else None
        if exact is not None:
            self.journal.order_ids(it.tag, con_id=exact[0], local_symbol=exact[1])
        elif rec.contract:          # a simulated venue's per-contract futures
            self.journal.order_ids(it.tag, local_symbol=rec.contract)

    def acknowledged(self, rec: OrderRecord, broker_id: int) -> None:
        """The venue took the order (IB's Submitted): its status and the venue's order id."""
        self.status(rec)
        if broker_id:
            self.journal.order_ids(rec.intent.tag, broker_order_id=int(broker_id))

    def status(self, rec: OrderRecord) -> None:
        if rec.intent.tag not in self._journaled:      # refused before it was sent (risk, funds)
            self.order(rec)
        self.journal.order_status(rec.intent.tag, rec.status, _iso(rec.status_time or rec.time), rec.reason)
        self._ids(rec.intent.tag)

    def _ids(self, ref: str) -> None:
        if self.ids is None:
            return
        try:
            order_id, perm_id = self.ids(ref)
        except KeyError:        # never reached the venue (refused before it was sent)
            return
        if order_id or perm_id:
            self.journal.order_ids(ref, broker_order_id=order_id or None, perm_id=perm_id or None)

    def execution(self, ev: E.Execution, multiplier: float) -> None:
        exact = self.contract(ev.symbol, ev.ref, None) if self.contract is not None else None
        self.journal.fill(self.run_id, ev.ref, _iso(ev.time), ev.symbol, ev.action, ev.quantity, ev.price,
                          multiplier, exec_id=ev.exec_id, broker_order_id=ev.broker_id,
                          con_id=exact[0] if exact else None,
                          local_symbol=exact[1] if exact else (ev.contract or None))

    def correction(self, ev: E.Execution) -> None:
        """The venue corrected an execution: its journaled row takes the new id, quantity and price."""
        if not self.journal.correct_fill(ev.corrects, ev.exec_id, ev.quantity, ev.price, _iso(ev.time)):
            self.journal.error(self.run_id, _iso(ev.time), "kernel",
                               f"correction {ev.exec_id} of an execution the journal does not hold ({ev.corrects})")

    def commission(self, ev: E.CommissionReport) -> None:
        self.journal.commission(ev.exec_id, ev.commission)

    def decision(self, d: Decision) -> None:
        self.journal.decision(self.run_id, _iso(d.time), d.symbol, d.rule, d.kind, d.outcome, d.reason, d.detail,
                              d.agent, d.confidence)

    def error(self, time: int, message: str) -> None:
        self.journal.error(self.run_id, _iso(time), "kernel", message)

    def note(self, time: int, kind: str, subject: str, message: str) -> None:
        self.journal.note(self.run_id, _iso(time), kind, subject, message)

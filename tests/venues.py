"""A simulated run on a venue of a test's own (a SimBroker subclass that reorders, repeats or
holds back events), the way session.simulate builds its venue."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def venue(venue_class):
    """session.simulate builds its venue from `venue_class` while the block runs."""
    from engine.runtime import session

    real = session.SimBroker
    session.SimBroker = venue_class
    try:
        yield
    finally:
        session.SimBroker = real


def simulate_on(venue_class, prep, **kw):
    """session.simulate(prep, streaming=False, **kw) on a venue of `venue_class`."""
    from engine.runtime import session

    with venue(venue_class):
        return session.simulate(prep, streaming=False, **kw)


def refused(venue, order, why: str) -> list:
    """The events of a venue refusing `order` (IB's 201, final): the error, then its status."""
    from engine.brokers import events as E

    now = venue.clock if venue.clock is not None else venue._now(order.symbol)
    return [E.BrokerError(order.ref, 201, why, now), E.OrderStatus(order.ref, E.REJECTED, 0.0, order.quantity, 0.0,
                                                                   now, why)]

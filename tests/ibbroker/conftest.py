"""The IB broker's tests run the real ib_async client over TCP against the gateway simulator,
with the simulator's fixtures (a simulator in a thread, a client, the ERROR-log guard)."""

from gateway.conftest import connect, error_guard, expect_errors, make_sim, nq_data, shared_data, sim  # noqa: F401

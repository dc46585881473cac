def test_the_simulator_fixtures_reach_the_ib_broker_tests(sim, connect):
    ib = connect(sim)
    assert ib.isConnected()
    assert ib.managedAccounts() and ib.managedAccounts()[0].startswith("DU")

"""SimBroker: the simulated venue (written next)."""

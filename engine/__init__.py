"""qtrade's engine: load, validate, compile and run rule-based trading strategies."""

__version__ = "0.1.0"

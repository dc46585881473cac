"""Commission and slippage models, from a strategy's `backtest:` settings."""

from __future__ import annotations

import math
from dataclasses import dataclass


def fraction(value) -> float:
    """A percentage as a fraction: "1%" -> 0.01, 0.01 -> 0.01."""
    if isinstance(value, str) and value.endswith("%"):
        return float(value[:-1]) / 100.0
    return float(value)


@dataclass(frozen=True)
class Commission:
    """Per fill: per share/unit, per contract, a share of value, or flat; with a minimum and an
    optional maximum as a share of the trade's value (IB's fixed pricing caps at 1%)."""

    per_unit: float = 0.0
    per_contract: float = 0.0
    percent: float = 0.0
    per_order: float = 0.0
    minimum: float = 0.0
    maximum: float | None = None

    @classmethod
    def from_spec(cls, spec: dict | None) -> "Commission":
        if not spec:
            return cls()
        return cls(per_unit=float(spec.get("per_share") or 0.0), per_contract=float(spec.get("per_contract") or 0.0),
                   percent=fraction(spec.get("percent") or 0.0), per_order=float(spec.get("per_order") or 0.0),
                   minimum=float(spec.get("minimum") or 0.0),
                   maximum=fraction(spec["maximum"]) if spec.get("maximum") is not None else None)

    def describe(self) -> str:
        """As a reader of a report checks it: "none" for a run that paid nothing."""
        parts = [text for value, text in (
            (self.per_unit, f"{self.per_unit:g} per share"), (self.per_contract, f"{self.per_contract:g} per contract"),
            (self.percent, f"{self.percent * 100:g}% of value"), (self.per_order, f"{self.per_order:g} per order"))
            if value]
        if not parts:
            return "none (backtest.commission not set: trades cost nothing)"
        if self.minimum:
            parts.append(f"at least {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"at most {self.maximum * 100:g}% of value")
        return ", ".join(parts)

    def __call__(self, quantity: float, price: float, multiplier: float = 1.0, contracts: bool = False) -> float:
        qty = abs(quantity)
        if qty == 0:
            return 0.0
        value = qty * price * multiplier
        fee = self.per_order + value * self.percent
        fee += qty * (self.per_contract if contracts else self.per_unit)
        if contracts and self.per_contract == 0.0:
            fee += qty * self.per_unit
        if fee == 0.0:
            return 0.0
        fee = max(fee, self.minimum)
        if self.maximum is not None:
            fee = min(fee, value * self.maximum)
        return fee


@dataclass(frozen=True)
class Slippage:
    """Adverse slippage per unit on market and stop fills."""

    ticks: int = 0
    percent: float = 0.0
    fixed: float = 0.0

    @classmethod
    def from_spec(cls, spec: dict | None) -> "Slippage":
        if not spec:
            return cls()
        return cls(int(spec.get("ticks") or 0), fraction(spec.get("percent") or 0.0), float(spec.get("fixed") or 0.0))

    def describe(self) -> str:
        parts = [text for value, text in ((self.ticks, f"{self.ticks} tick{'s' * (self.ticks != 1)}"),
                                          (self.percent, f"{self.percent * 100:g}%"), (self.fixed, f"{self.fixed:g}"))
                 if value]
        return " + ".join(parts) + " against each market and stop fill" if parts else \
            "none (backtest.slippage not set: market and stop orders fill at the price the bar gives)"

    def amount(self, price: float, tick_size: float = 0.01) -> float:
        return self.ticks * tick_size + price * self.percent + self.fixed

    def apply(self, price: float, action: str, tick_size: float = 0.01) -> float:
        slip = self.ticks * tick_size + price * self.percent + self.fixed     # amount(), inlined: once per fill
        if slip == 0.0:
            return price
        return price + slip if action == "buy" else price - slip


def round_down(quantity: float, whole: bool = True) -> float:
    if not whole:
        return max(quantity, 0.0)
    return float(math.floor(quantity + 1e-9)) if quantity > 0 else 0.0

"""Risk limits: pure checks that allow an order, shrink it, or block it with a reason.

The limits come from a strategy's `risk:` (inline, a risk file, or a file `extends:`-ed and
overridden inline). Checks take plain numbers about the account so they are tested with plain
values; the Runner journals every block with its reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..brokers.costs import fraction


def _seconds(text) -> float | None:
    if text is None:
        return None
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = str(text)
    for unit in ("ms", "s", "m", "h", "d", "w"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


DEFAULT_KILL_SWITCH_FILE = "~/.qtrade/KILL"


@dataclass(frozen=True)
class RiskLimits:
    per_trade_risk: float | None = None      # fraction of equity between entry and stop
    max_position: float | None = None        # fraction of equity per position
    max_open_positions: int | None = None
    max_daily_loss: float | None = None      # account currency
    max_drawdown: float | None = None        # fraction of peak equity
    max_margin_per_trade: float | None = None
    order_rate: tuple[int, float] | None = None  # (orders, per seconds)
    margin_check: str = "required"
    stale_quote_age: float = 5.0
    kill_switch_file: str | None = None
    circuit_breaker: tuple[int, float] | None = None  # (consecutive losses, pause seconds)
    pyramiding: int = 1                      # entries into one position, the same way (1: no adding)
    # per classification and state: (classification, state, size multiplier | None, max open | None)
    by_state: tuple[tuple[str, str, float | None, int | None], ...] = ()
    volatility_target: tuple[float, str] | None = None   # (annual volatility, lookback: "20 bars" | "20d")
    max_cvar: tuple[float, int, float, bool] | None = None   # (level, days, loss, loss is a share of equity)

    @classmethod
    def from_spec(cls, spec: dict) -> "RiskLimits":
        def pct(key):
            return fraction(spec[key]) if spec.get(key) is not None else None

        rate = spec.get("order_rate_limit")
        breaker = spec.get("circuit_breaker")
        states = spec.get("by_state") or {}
        vol = spec.get("volatility_scaling")
        cvar = spec.get("max_cvar")
        return cls(
            per_trade_risk=pct("per_trade_risk"), max_position=pct("max_position"),
            max_open_positions=spec.get("max_open_positions"),
            pyramiding=int(spec.get("pyramiding", 1)),
            max_daily_loss=float(spec["max_daily_loss"]) if spec.get("max_daily_loss") is not None else None,
            max_drawdown=pct("max_drawdown"),
            max_margin_per_trade=float(spec["max_margin_per_trade"]) if spec.get("max_margin_per_trade") is not None
            else None,
            order_rate=(int(rate["orders"]), _seconds(rate["per"])) if isinstance(rate, dict) else None,
            margin_check=spec.get("margin_check", "required"),
            stale_quote_age=_seconds(spec.get("stale_quote_age", "5s")),
            # absent: the schema's default file; null: no file check
            kill_switch_file=spec.get("kill_switch_file", DEFAULT_KILL_SWITCH_FILE),
            circuit_breaker=(int(breaker["consecutive_losses"]), _seconds(breaker["pause"]))
            if isinstance(breaker, dict) else None,
            by_state=tuple((name, label, float(lim["size"]) if lim.get("size") is not None else None,
                            int(lim["max_open_positions"]) if lim.get("max_open_positions") is not None else None)
                           for name, labels in states.items() for label, lim in (labels or {}).items()
                           if isinstance(lim, dict)),
            volatility_target=(fraction(vol["target_annual_vol"]), str(vol.get("lookback", "20 bars")))
            if isinstance(vol, dict) else None,
            max_cvar=(fraction(cvar.get("level", "95%")), int(cvar.get("days", 60)),
                      fraction(cvar["loss"]) if isinstance(cvar["loss"], str) else float(cvar["loss"]),
                      isinstance(cvar["loss"], str)) if isinstance(cvar, dict) else None,
        )


def merge_risk(chain: list[dict]) -> dict:
    """Merge risk specs, base first: later ones override earlier ones key by key."""
    merged: dict = {}
    for spec in chain:
        for key, value in spec.items():
            if key in ("kind", "name", "description", "extends"):
                continue
            merged[key] = value
    return merged


@dataclass
class AccountState:
    """What the checks need to know about the account at a decision."""

    equity: float
    peak_equity: float
    day_start_equity: float
    open_positions: int
    consecutive_losses: int = 0
    paused_until: float = float("-inf")   # seconds since the epoch
    now: float = 0.0
    recent_orders: list[float] = field(default_factory=list)
    daily_pnl: tuple = ()                 # the latest complete trading days' P&L, oldest first (max_cvar)


def check_entry(limits: RiskLimits, account: AccountState, *, live: bool = False) -> str | None:
    """A reason to block a new position, or None to allow it."""
    if live and limits.kill_switch_file:
        path = Path(os.path.expanduser(limits.kill_switch_file))
        if path.exists():
            return f"kill switch file {path} exists: no new positions until it is removed"
    if limits.max_open_positions is not None and account.open_positions >= limits.max_open_positions:
        return f"max_open_positions {limits.max_open_positions} reached"
    if limits.max_daily_loss is not None:
        loss = account.day_start_equity - account.equity
        if loss >= limits.max_daily_loss:
            return f"max_daily_loss: down {loss:,.2f} today (limit {limits.max_daily_loss:,.2f})"
    if limits.max_drawdown is not None and account.peak_equity > 0:
        drawdown = 1.0 - account.equity / account.peak_equity
        if drawdown >= limits.max_drawdown:
            return f"max_drawdown: {drawdown:.1%} below the peak (limit {limits.max_drawdown:.1%})"
    if limits.circuit_breaker is not None and account.now < account.paused_until:
        losses, _ = limits.circuit_breaker
        return f"circuit breaker: {losses} losses in a row, paused"
    if limits.max_cvar is not None:
        why = check_cvar(limits, account.daily_pnl, account.equity)
        if why:
            return why
    if live and limits.order_rate is not None:
        count, per = limits.order_rate
        recent = [t for t in account.recent_orders if t > account.now - per]
        if len(recent) >= count:
            return f"order rate limit: {count} orders per {per:g}s"
    return None


def expected_shortfall(pnl, level: float) -> float:
    """Historical CVaR: the mean of the worst ceil((1 - level) x n) of the n P&Ls, as a loss
    (positive when that mean loses)."""
    worst = sorted(pnl)[:max(1, math.ceil((1.0 - level) * len(pnl) - 1e-9))]
    return -math.fsum(worst) / len(worst)


def check_cvar(limits: RiskLimits, daily_pnl, equity: float) -> str | None:
    """A reason to block an entry while the expected shortfall of the latest daily P&Ls is at
    least the limit (None before there are 1 / (1 - level) days to measure)."""
    level, days, loss, share = limits.max_cvar
    pnl = list(daily_pnl)[-days:]
    if len(pnl) < math.ceil(1.0 / (1.0 - level) - 1e-9):
        return None
    es = expected_shortfall(pnl, level)
    limit = loss * equity if share else loss
    if es >= limit:
        of = f" ({loss:.1%} of equity {equity:,.2f})" if share else ""
        return (f"max_cvar: the expected shortfall of the last {len(pnl)} daily P&Ls at {level:.0%} is a loss of "
                f"{es:,.2f}, at or above the limit {limit:,.2f}{of}")
    return None


def state_size(limits: RiskLimits, states: tuple) -> tuple[float, str]:
    """The size multiplier of the symbol's states ((classification, state) pairs) and what it
    says ('' when it is 1)."""
    if not limits.by_state:
        return 1.0, ""
    held = set(states)
    multiplier, parts = 1.0, []
    for name, label, size, _ in limits.by_state:
        if size is not None and (name, label) in held:
            multiplier *= size
            parts.append(f"{name} {label} x{size:g}")
    return multiplier, (f"sized x{multiplier:g} by risk.by_state ({', '.join(parts)})" if multiplier != 1.0 else "")


def check_states(limits: RiskLimits, states: tuple, open_positions: int) -> str | None:
    """A reason to block an entry on a symbol in a state whose position cap is reached."""
    held = set(states)
    for name, label, _, cap in limits.by_state:
        if cap is not None and (name, label) in held and open_positions >= cap:
            return (f"risk.by_state.{name}.{label}.max_open_positions {cap} reached ({name} is {label}; "
                    f"{open_positions} open)")
    return None


def realised_volatility(closes, periods_per_year: float) -> float:
    """Annualised volatility of close-to-close log returns (sample standard deviation); nan
    with fewer than two returns or a price that is not positive."""
    import numpy as np

    c = np.asarray(closes, dtype=np.float64)
    if len(c) < 3 or not (c > 0).all():
        return math.nan
    r = np.diff(np.log(c))
    return float(np.std(r, ddof=1) * math.sqrt(periods_per_year))


def volatility_cap(target: float, quantity: float, *, equity: float, unit_value: float,
                   volatility: float) -> tuple[float, str]:
    """The quantity whose forecast volatility (its value's share of equity x the symbol's
    volatility) is at most `target`, and why it shrank ('' if not)."""
    if not (volatility > 0) or unit_value <= 0 or equity <= 0:
        return quantity, ""
    cap = target * equity / (volatility * unit_value)
    if quantity > cap:
        return cap, (f"cut by volatility_scaling: {volatility:.1%} a year, {target:.1%} of equity at most "
                     f"({quantity * unit_value / equity * volatility:.1%} as ordered)")
    return quantity, ""


def cap_quantity(limits: RiskLimits, quantity: float, *, equity: float, unit_value: float,
                 stop_distance: float | None, multiplier: float, whole: bool = True,
                 held: float = 0.0) -> tuple[float, str]:
    """The quantity after the per-position and per-trade-risk caps, and why it shrank ('' if not).
    `held`: what the position already holds when this entry adds to it (pyramiding): the
    per-position cap is on the whole position."""

    why = ""
    if limits.max_position is not None and unit_value > 0:
        cap = limits.max_position * equity / unit_value - held
        if quantity > cap:
            quantity, why = cap, f"capped by max_position {limits.max_position:.1%} of equity" + \
                (f" (with the {held:g} held)" if held else "")
    if limits.per_trade_risk is not None and stop_distance and stop_distance > 0:
        cap = limits.per_trade_risk * equity / (stop_distance * multiplier)
        if quantity > cap:
            quantity, why = cap, f"capped by per_trade_risk {limits.per_trade_risk:.1%} of equity"
    if whole:
        quantity = float(math.floor(quantity + 1e-9))
    return max(quantity, 0.0), why

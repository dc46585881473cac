"""Option legs and combos: pick strikes from a chain, price the combo, and plan the chase.

Pure functions over plain arrays of one expiry's quotes, so they are tested with plain values:
- `pick_by_delta`: the strike whose |delta| is nearest the target within [min, max];
- `pick_by_premium`: the strike whose mid is nearest the target;
- `pick_strike`: the listed strike at a computed price (an offset from another leg);
ties go to the strike further out of the money (the cheaper, safer side), so the choice is
deterministic. A leg without a real quote (a NaN or missing bid or ask, a crossed market, or a
zero bid on a leg we sell) makes the combo unquotable: the entry is blocked with that reason, never priced from a guess.

Prices and signs. Every combo price is per unit of the underlying (IB's combo quotes; times the
multiplier for money), and there is one sign convention:

- a price the engine computes is the net debit of a trade: what the trade pays, positive to pay,
  negative when it brings in a credit (credit = -debit). A trade either opens the combo (its
  legs as the template writes them) or closes it (every leg reversed), so closing at mid is the
  negative of opening at mid. `ComboQuote.credit` is the opening trade's credit at mid (what
  entry rules read as `credit`; `debit` is its negative);
- an order carries its price as IB's BAG orders do: an action and a limit in the direction of
  the action. A buy pays its limit (its debit is the limit), a sell receives it (its debit is
  minus the limit): `order_price(debit, action)` and `debit_of(limit, action)` convert. The
  order that opens a combo buys it when it is a debit at mid and sells it when it is a credit
  (`opening_action`); the order that closes it has the other action, whatever the combo is
  worth by then. A limit of 0.05 to buy an iron condor pays at most 0.05; a limit of 1.25 to
  sell one receives at least 1.25;
- a limit is put on the tick grid towards the marketable side (`round_limit`): a buy's up, a
  sell's down, so a limit at mid is never beyond mid on the wrong side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .intent import grid_price


@dataclass(frozen=True)
class Side:
    """One expiry's puts or calls: strikes ascending with their quotes and greeks."""

    right: str             # put | call
    strike: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    delta: np.ndarray
    iv: np.ndarray
    gamma: np.ndarray | None = None
    theta: np.ndarray | None = None
    vega: np.ndarray | None = None

    @property
    def mid(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            ok = (self.bid >= 0) & (self.ask > 0) & (self.ask >= self.bid)
            return np.where(ok, (self.bid + self.ask) / 2.0, np.nan)


class NoStrike(Exception):
    """No listed strike satisfies a leg's rule (the message says which and why)."""


def _further_otm(right: str, strikes: np.ndarray, candidates: np.ndarray) -> int:
    """Among equally good candidates, the one further out of the money."""
    idx = candidates[np.argmin(strikes[candidates])] if right == "put" else candidates[np.argmax(strikes[candidates])]
    return int(idx)


def pick_by_delta(side: Side, target: float, lo: float | None = None, hi: float | None = None) -> int:
    target = abs(float(target))
    mags = np.abs(side.delta)
    ok = np.isfinite(mags)
    if lo is not None:
        ok &= mags >= abs(lo) - 1e-12
    if hi is not None:
        ok &= mags <= abs(hi) + 1e-12
    if not ok.any():
        band = f" within [{lo:g}, {hi:g}]" if lo is not None and hi is not None else ""
        raise NoStrike(f"no {side.right} has a delta{band} (target {target:g})")
    dist = np.where(ok, np.abs(mags - target), np.inf)
    best = np.flatnonzero(dist <= dist.min() + 1e-12)
    return _further_otm(side.right, side.strike, best)


def pick_by_premium(side: Side, target: float) -> int:
    mid = side.mid
    ok = np.isfinite(mid)
    if not ok.any():
        raise NoStrike(f"no {side.right} has a two-sided quote")
    dist = np.where(ok, np.abs(mid - float(target)), np.inf)
    best = np.flatnonzero(dist <= dist.min() + 1e-12)
    return _further_otm(side.right, side.strike, best)


def pick_strike(side: Side, price: float, away_from: float | None = None) -> int:
    """The listed strike at `price`; if it is not listed, the nearest one further from the money
    than `price` (so a wing never narrows and max loss stays bounded as designed)."""
    strikes = side.strike
    exact = np.flatnonzero(np.isclose(strikes, price, rtol=0, atol=1e-9))
    if len(exact):
        return int(exact[0])
    if side.right == "put":
        lower = np.flatnonzero(strikes < price)
        if len(lower):
            return int(lower[-1])
    else:
        higher = np.flatnonzero(strikes > price)
        if len(higher):
            return int(higher[0])
    raise NoStrike(f"no {side.right} strike at or beyond {price:g}")


@dataclass(frozen=True)
class LegQuote:
    name: str
    right: str
    action: str       # buy | sell
    ratio: int
    strike: float
    expiry: str       # YYYY-MM-DD
    bid: float
    ask: float
    delta: float
    iv: float
    gamma: float = math.nan
    theta: float = math.nan
    vega: float = math.nan

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2.0

    @property
    def quoted(self) -> bool:
        """A real market for opening this leg (a NaN, crossed or one-sided quote is not)."""
        return self.quoted_for(opening=True)

    def quoted_for(self, opening: bool) -> bool:
        if not (math.isfinite(self.bid) and math.isfinite(self.ask)):
            return False
        if self.ask <= 0 or self.bid < 0 or self.ask < self.bid:
            return False
        # opening a short needs a bid to sell into; closing a long may sell at a zero bid (a
        # worthless wing), and buying needs only an ask
        opening_a_short = self.action == "sell" and opening
        return not opening_a_short or self.bid > 0

    @property
    def sign(self) -> int:
        """+1 for a leg we sell (it brings credit), -1 for one we buy."""
        return 1 if self.action == "sell" else -1

    def to_json(self) -> dict:
        return {"name": self.name, "right": self.right, "action": self.action, "ratio": self.ratio,
                "strike": self.strike, "expiry": self.expiry, "bid": _num(self.bid), "ask": _num(self.ask),
                "delta": _num(self.delta), "iv": _num(self.iv), "gamma": _num(self.gamma),
                "theta": _num(self.theta), "vega": _num(self.vega)}


def _num(x: float):
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def leg_quote(name: str, side: Side, index: int, action: str, ratio: int, expiry: str) -> LegQuote:
    def at(a):
        return float(a[index]) if a is not None else math.nan

    return LegQuote(name, side.right, action, ratio, float(side.strike[index]), expiry, at(side.bid),
                    at(side.ask), at(side.delta), at(side.iv), at(side.gamma), at(side.theta), at(side.vega))


def flip(action: str) -> str:
    """The other action: what closes a position `action` opened."""
    return "sell" if action == "buy" else "buy"


def order_price(debit: float, action: str) -> float:
    """An order's limit (what a buy pays, what a sell receives) for a trade's net debit."""
    return debit if action == "buy" else 0.0 - debit      # 0.0 - x: no -0.0 for a worthless combo


def debit_of(price: float, action: str) -> float:
    """The net debit of a trade an order of `action` makes at `price` (order_price's inverse)."""
    return price if action == "buy" else 0.0 - price


def round_limit(price: float, tick: float, action: str) -> float:
    """A limit on the tick grid, rounded towards the marketable side: a limit to buy (pay a debit)
    rounds up to the tick, a limit to sell (receive a credit) rounds down. So a limit at mid is
    never beyond mid on the wrong side, and a market that meets limits at mid (fill_fraction 1:
    no part of the way from mid back to the natural price) fills it: a mid of 14.975 is bought at
    14.98 and sold at 14.97 (rounding half to even, 14.98 would ask a seller's market for more than
    mid). A price on the grid, within float noise of it, stays where it is."""
    return grid_price(price, tick, up=action == "buy")


@dataclass(frozen=True)
class ComboQuote:
    """A combo priced from its legs (per unit of the underlying, like IB's combo quotes).

    `age` is how much older its quotes are than the moment the run had them (ns): an end-of-day
    chain is quoted at its date's close (16:00 New York) and a daily run has it when that day's
    bar ends, at midnight; 0 for quotes of the run's own moment. The simulated venue dates a
    combo's fills by the quotes they were priced on: that much before the run's clock."""

    legs: tuple[LegQuote, ...]
    multiplier: float
    underlying: float
    age: int = 0

    @property
    def missing(self) -> str | None:
        """Why the combo cannot be opened (a leg without a real quote), or None."""
        return self.missing_for(opening=True)

    def missing_for(self, opening: bool) -> str | None:
        """Why the combo cannot be traded in that direction (a leg without a real quote), or None."""
        for leg in self.legs:
            if not leg.quoted_for(opening):
                return (f"leg {leg.name} ({leg.right} {leg.strike:g} {leg.expiry}) has no two-sided quote "
                        f"({_side('bid', leg.bid)}, {_side('ask', leg.ask)})")
        return None

    @property
    def credit(self) -> float:
        """Net credit of opening at mid (negative for a debit)."""
        return sum(leg.sign * leg.ratio * leg.mid for leg in self.legs)

    @property
    def debit(self) -> float:
        """Net debit of opening at mid (negative for a credit): -credit."""
        return -self.credit

    @property
    def natural(self) -> float:
        """Net credit of opening crossing every spread: sell at the bid, buy at the ask."""
        return sum(leg.ratio * (leg.bid if leg.sign > 0 else -leg.ask) for leg in self.legs)

    @property
    def closing_natural(self) -> float:
        """Net debit of closing crossing every spread (buy back at the ask, sell at the bid)."""
        return sum(leg.ratio * (leg.ask if leg.sign > 0 else -leg.bid) for leg in self.legs)

    @property
    def opening_action(self) -> str:
        """The action of the order that opens the combo: sell a credit (or even) combo, buy a debit one."""
        return "sell" if self.credit >= 0 else "buy"

    def mid_debit(self, opening: bool = True) -> float:
        """Net debit of opening (or closing) at mid."""
        return -self.credit if opening else self.credit

    def natural_debit(self, opening: bool = True) -> float:
        """Net debit of opening (or closing) crossing every spread: at least mid_debit. A price
        orders fill at, so rounded to 1e-10: the legs' quotes are on a tick grid and the float
        noise of their sum is not part of the price."""
        return round(-self.natural if opening else self.closing_natural, 10)

    def payoff(self, prices: np.ndarray) -> np.ndarray:
        """Value at expiry per unit for underlying `prices`, including the credit taken in."""
        value = np.full(len(prices), self.credit)
        for leg in self.legs:
            intrinsic = np.maximum(prices - leg.strike, 0.0) if leg.right == "call" else \
                np.maximum(leg.strike - prices, 0.0)
            value -= leg.sign * leg.ratio * intrinsic
        return value

    def _extremes(self) -> tuple[float, float, bool]:
        strikes = sorted({leg.strike for leg in self.legs})
        grid = np.array([0.0] + strikes + [strikes[-1] * 2 + 1.0])
        values = self.payoff(grid)
        # beyond the highest strike the payoff is linear: unbounded if calls are net short
        call_slope = sum(-leg.sign * leg.ratio for leg in self.legs if leg.right == "call")
        return float(values.min()), float(values.max()), call_slope < 0

    @property
    def max_loss(self) -> float:
        """Largest loss of one combo at expiry, account currency (inf when unbounded)."""
        low, _, unbounded = self._extremes()
        return math.inf if unbounded else max(0.0, -low) * self.multiplier

    @property
    def max_profit(self) -> float:
        _, high, _ = self._extremes()
        return max(0.0, high) * self.multiplier

    @property
    def margin(self) -> float:
        """Reg-T margin of one combo: the max loss for defined-risk combos; for naked short
        options the standard 20% of the underlying less the out-of-the-money amount plus the
        premium (at least 10% of the underlying for calls / of the strike for puts)."""
        loss = self.max_loss
        if math.isfinite(loss):
            return loss
        total = 0.0
        for leg in self.legs:
            if leg.sign < 0:
                continue
            otm = max(0.0, leg.strike - self.underlying) if leg.right == "call" else \
                max(0.0, self.underlying - leg.strike)
            floor = 0.10 * (self.underlying if leg.right == "call" else leg.strike)
            total += leg.ratio * (max(0.20 * self.underlying - otm, floor) + leg.mid)
        return total * self.multiplier


    def margin_at(self, credit: float) -> float:
        """The margin of one combo opened at `credit` (its net credit per unit; negative: a debit
        paid) rather than at mid: a defined-risk combo's max loss moves one for one with the
        credit taken in (a condor sold for less than its mid can lose more; a spread bought above
        its mid costs more). An unbounded one's (a naked call's) Reg-T margin stays the one at mid."""
        loss = self.max_loss
        if not math.isfinite(loss):
            return self.margin
        return max(0.0, loss + (self.credit - credit) * self.multiplier)


def held_margin(legs: tuple, multiplier: float, margin: float, credit: float) -> float:
    """The margin per unit a venue holds for a combo of `legs` filled at `credit`, from the
    `margin` it was priced at mid with: ComboQuote.margin_at for a defined-risk combo (whose max
    loss does not depend on the underlying), `margin` itself for an unbounded one."""
    quote = ComboQuote(tuple(legs), multiplier, 0.0)
    return quote.margin_at(credit) if math.isfinite(quote.max_loss) else margin


@dataclass(frozen=True)
class Chase:
    """Limit prices to try, one per interval: from the start price towards the floor."""

    start: str = "mid"       # mid | natural | bid | ask, or a number
    step: float = 0.01
    steps: int = 4           # how many prices are tried, the first included
    every: float = 15.0      # seconds between prices
    floor: float | None = None
    binding: bool = False    # a close's floor or limit (close_price): not filled within it, no natural price

    def prices(self, quote: ComboQuote, tick: float = 0.01, opening: bool = True,
               action: str | None = None) -> list[float]:
        """The order's limit at each step, in the direction of its action (a buy's debit, a sell's
        credit; see the module's note on signs). `action` is the order's: by default the opening
        order's (quote.opening_action), or for a close the other one.

        A sell gives up credit step by step, a buy pays a little more each step. The floor bounds
        the chase in the same terms: a sell's limit never below it, a buy's never above it (the
        smallest credit an opening credit combo takes, the largest debit a closing one pays; the
        largest debit an opening debit combo pays, the smallest credit a closing one takes). A
        number as the start is the order's limit itself. Every price is on the tick grid, rounded
        towards the marketable side (round_limit).
        """
        if action is None:
            action = quote.opening_action if opening else flip(quote.opening_action)
        selling = action == "sell"
        if isinstance(self.start, (int, float)):
            first = float(self.start)
        elif self.start == "natural":
            first = order_price(quote.natural_debit(opening), action)
        elif self.start in ("bid", "ask"):
            # the combo's own quote in the order's terms: its ask is what buying it costs at once,
            # its bid what selling it brings at once; so a buy's ask and a sell's bid are the
            # natural price, the other side is the most passive price
            natural = order_price(quote.natural_debit(opening), action)
            passive = order_price(-quote.natural_debit(not opening), action)
            first = natural if (self.start == "ask") == (action == "buy") else passive
        else:
            first = order_price(quote.mid_debit(opening), action)
        first = round_limit(first, tick, action)
        out = []
        for k in range(self.steps):
            price = round_limit(first - k * self.step if selling else first + k * self.step, tick, action)
            if self.floor is not None and ((selling and price < self.floor - 1e-12) or
                                           (not selling and price > self.floor + 1e-12)):
                break
            out.append(price)
        return out


def _side(name: str, price) -> str:
    """One side of a quote as said: its price, or that there is none (a NaN, IB's -1)."""
    if price is None or not math.isfinite(price) or price < 0:
        return f"no {name}"
    return f"{name} {price:g}"

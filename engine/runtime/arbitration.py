"""The meta-policy between agents: which agent's proposal trades a symbol at a bar.

A proposal is an entry rule of an active agent that fires at the bar (for an options combo: the
combo built from the chain and its condition holding). Each agent speaks once, with its first
rule that fired. The policy (strategy `arbitration.policy`) then takes at most one proposal:

- priority: the agent listed first in `agents:` wins;
- highest_confidence (also spelt highest_score): the agent with the highest `score` at the bar
  wins; a score that is not a number (warm-up) counts as no confidence; ties go to the agent
  listed first;
- weighted_vote: every active agent votes for the side of its proposal (long +1 for an order
  that buys, short -1 for one that sells, an options combo by the sign of its net delta; no
  proposal: no vote), with its `weight` times its confidence (its score clamped to [0, 1]); a
  side's support is the sum of its votes over the summed weights of every active agent, and the
  side with the larger support trades when it reaches `threshold` (equal supports: neither);
  of that side's proposals the largest weight x confidence trades, ties to the agent listed first.

`max_active_agents` then keeps agents that hold nothing from taking a new position while that
many other agents hold positions (or have an entry working) on any symbol: the best allowed
proposal is taken. The strategy's own entry rules (not an agent's) are not arbitrated: they
trade only when no agent proposes, the first that fired in file order.

Pure: the kernel hands in the proposals and what it knows of the account, journals the reason
returned for each proposal, and sends the one taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..check.model import Arbitration

__all__ = ["Arbitration", "Proposal", "arbitrate"]


@dataclass(frozen=True)
class Proposal:
    """One agent's entry rule that fired at the bar."""

    rule: str
    agent: str | None        # None: the strategy's own rule
    rank: int                # the agent's place in `agents:` (the strategy's own rules: after every agent)
    score: float             # the agent's score at the bar (nan: none)
    weight: float = 1.0
    side: int = 1            # +1 long, -1 short, 0 neither (a delta-neutral combo)


def _confidence(p: Proposal) -> float:
    return p.score if p.score == p.score else -math.inf


def _side(side: int) -> str:
    return "long" if side > 0 else "short" if side < 0 else "neutral"


def arbitrate(policy: Arbitration, proposals: list[Proposal], active_weight: float,
              holding: frozenset[str] = frozenset()) -> tuple[int | None, list[str]]:
    """The index of the proposal taken (None: none is) and, for each proposal, why it was taken
    or refused. `active_weight`: the summed weights of every agent active at the bar (weighted
    vote); `holding`: the agents holding positions (or with an entry working) on other symbols."""
    n = len(proposals)
    why = [""] * n
    agents = [i for i, p in enumerate(proposals) if p.agent is not None]
    own = [i for i, p in enumerate(proposals) if p.agent is None]
    name = policy.policy
    # each agent speaks once: its first rule that fired
    speaker: dict[str, int] = {}
    for i in agents:
        agent = proposals[i].agent
        if agent in speaker:
            why[i] = f"{agent}'s '{proposals[speaker[agent]].rule}' fired on the same bar and speaks for it"
        else:
            speaker[agent] = i
    voices = list(speaker.values())
    taken: int | None = None
    if voices:
        if name == "weighted_vote":
            taken = _vote(policy, proposals, voices, active_weight, holding, why)
        else:
            ranked = sorted(voices, key=lambda i: (proposals[i].rank,) if name == "priority" else
                            (-_confidence(proposals[i]), proposals[i].rank))
            taken = _first_allowed(policy, proposals, ranked, holding, why)
            if taken is not None:
                why[taken] = _taken(policy, proposals, taken, ranked)
                for i in ranked:
                    if not why[i]:
                        why[i] = _beaten(policy, proposals, taken, i)
    for i in own:
        if taken is not None:
            why[i] = (f"{proposals[taken].agent}'s '{proposals[taken].rule}' was taken (an agent's proposal comes "
                      "before the strategy's own rules)")
        elif voices:
            why[i] = "no agent's proposal was taken, but one was made (the strategy's own rules wait for the agents)"
    if taken is None and not voices and own:
        taken = own[0]
        for i in own[1:]:
            why[i] = f"'{proposals[taken].rule}' fired on the same bar and won"
    return taken, why


def _allowed(policy: Arbitration, p: Proposal, holding: frozenset[str]) -> bool:
    cap = policy.max_active_agents
    return cap is None or p.agent in holding or len(holding) < cap


def _capped(policy: Arbitration, holding: frozenset[str]) -> str:
    return (f"max_active_agents {policy.max_active_agents}: {', '.join(sorted(holding))} "
            f"{'holds' if len(holding) == 1 else 'hold'} positions")


def _first_allowed(policy: Arbitration, proposals: list[Proposal], ranked: list[int], holding: frozenset[str],
                   why: list[str]) -> int | None:
    for i in ranked:
        if _allowed(policy, proposals[i], holding):
            return i
        why[i] = _capped(policy, holding)
    return None


def _score_text(p: Proposal) -> str:
    return f"{p.score:.4g}" if p.score == p.score else "none"


def _taken(policy: Arbitration, proposals: list[Proposal], taken: int, ranked: list[int]) -> str:
    p = proposals[taken]
    others = [proposals[i] for i in ranked if i != taken]
    if policy.policy == "priority":
        return "taken by priority: " + (f"{p.agent} is listed before {', '.join(o.agent for o in others)}"
                                        if others else "the only agent proposing")
    tail = f" over {', '.join(f'{o.agent} {_score_text(o)}' for o in others)}" if others else \
        " (the only agent proposing)"
    return f"taken by highest_confidence: confidence {_score_text(p)}{tail}"


def _beaten(policy: Arbitration, proposals: list[Proposal], taken: int, i: int) -> str:
    w, p = proposals[taken], proposals[i]
    if policy.policy == "priority":
        return f"refused by priority: {w.agent}'s '{w.rule}' was taken ({w.agent} is listed before {p.agent})"
    return (f"refused by highest_confidence: {w.agent}'s '{w.rule}' was taken (confidence {_score_text(w)}, "
            f"this one {_score_text(p)})")


def _vote(policy: Arbitration, proposals: list[Proposal], voices: list[int], active_weight: float,
          holding: frozenset[str], why: list[str]) -> int | None:
    def strength(i: int) -> float:
        p = proposals[i]
        c = min(max(p.score, 0.0), 1.0) if p.score == p.score else 0.0
        return p.weight * c

    support: dict[int, float] = {}
    for i in voices:
        side = proposals[i].side
        support[side] = support.get(side, 0.0) + strength(i)
    total = active_weight if active_weight > 0 else 0.0
    share = {side: (s / total if total else 0.0) for side, s in support.items()}
    shown = ", ".join(f"{_side(s)} {share[s]:.2f}" for s in sorted(share, reverse=True))
    best = max(share.values())
    leaders = [s for s, v in share.items() if v == best]
    threshold = policy.threshold
    if len(leaders) > 1 or best < threshold - 1e-12:
        because = (f"the vote is split ({shown} of the active agents' weight)" if len(leaders) > 1 else
                   f"{shown} of the active agents' weight, below the threshold {threshold:g}")
        for i in voices:
            why[i] = f"refused by weighted_vote: {because}"
        return None
    side = leaders[0]
    mine = sorted((i for i in voices if proposals[i].side == side), key=lambda i: (-strength(i), proposals[i].rank))
    for i in voices:
        if proposals[i].side != side:
            why[i] = f"refused by weighted_vote: the vote went {_side(side)} ({shown} of the active agents' weight)"
    taken = _first_allowed(policy, proposals, mine, holding, why)
    if taken is None:
        return None
    why[taken] = (f"taken by weighted_vote: {_side(side)} {share[side]:.2f} of the active agents' weight "
                  f"(threshold {threshold:g}); weight x confidence {strength(taken):.4g}")
    for i in mine:
        if not why[i]:
            w = proposals[taken]
            why[i] = (f"refused by weighted_vote: {w.agent}'s '{w.rule}' was taken on the same side (weight x "
                      f"confidence {strength(taken):.4g}, this one {strength(i):.4g})")
    return taken

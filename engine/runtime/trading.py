"""`qtrade run --broker ib`: where it connects, whether it may trade a real account, and the
kill switch. The run itself is runtime/ibrun.py.

Connection settings come from the flags, else the strategy's `broker:` section, else the
environment (QTRADE_IB_HOST, QTRADE_IB_PORT, QTRADE_IB_CLIENT_ID, QTRADE_IB_ACCOUNT), else the
defaults: 127.0.0.1:7497, TWS's paper port (IB Gateway's paper port is 4002), or with `--live`
7496, TWS's live port (IB Gateway's live port is 4001).

The live guard: nothing reaches a real account without `--live`; `--live` is refused when the
account is a paper account (DU...), asks for confirmation unless `--yes`, and is refused with
no terminal to ask on and no `--yes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

ENV = {"host": "QTRADE_IB_HOST", "port": "QTRADE_IB_PORT", "client_id": "QTRADE_IB_CLIENT_ID",
       "account": "QTRADE_IB_ACCOUNT"}


class SettingError(ValueError):
    """A connection setting a user gave that cannot be used: the message names where it came from."""


@dataclass(frozen=True)
class Connect:
    host: str = "127.0.0.1"
    port: int = 7497
    client_id: int = 1
    account: str | None = None
    market_data: str = "live"          # live | live_or_delayed | delayed
    connect_timeout: float = 10.0
    live: bool = False                 # --live: a real account (what a refused connection's message suggests)
    sources: tuple = ()                # where each value came from, for messages: (name, source)

    def source(self, name: str) -> str:
        return dict(self.sources).get(name, "the default")


LIVE_PORT = 7496      # TWS's live API port (IB Gateway's is 4001)


def connect_settings(flags: Mapping[str, object], section: Mapping[str, object] | None,
                     env: Mapping[str, str] | None = None, *, live: bool = False) -> Connect:
    """Flags over the strategy's `broker:` section over the environment over the defaults (TWS's
    paper port, or with `live` its live port: a live run asked for with no port given goes where
    TWS listens for live trading; the live guard still checks the account it finds there)."""
    env = os.environ if env is None else env
    section = section or {}
    values: dict = {}
    sources = []
    for name in ("host", "port", "client_id", "account"):
        flag = flags.get(name)
        if flag is not None:
            values[name], where = flag, f"--{name.replace('_', '-')}"
        elif section.get(name) is not None:
            values[name], where = section[name], f"broker.{name} in the strategy"
        elif env.get(ENV[name]):
            values[name], where = env[ENV[name]], ENV[name]
        else:
            continue
        sources.append((name, where))
    for name in ("port", "client_id"):
        if name in values:
            raw = values[name]
            try:
                number = int(str(raw).strip())
            except ValueError:
                raise SettingError(f"{dict(sources)[name]}: {name.replace('_', ' ')} {raw!r} is not a whole number"
                                   ) from None
            low, high = (1, 65535) if name == "port" else (0, 999_999_999)
            if not low <= number <= high:
                raise SettingError(f"{dict(sources)[name]}: {name.replace('_', ' ')} {number} is outside "
                                   f"{low}-{high}")
            values[name] = number
    if live and "port" not in values:
        values["port"] = LIVE_PORT
        sources.append(("port", f"the live default ({LIVE_PORT}, TWS live; IB Gateway live is 4001)"))
    if section.get("market_data") is not None:
        values["market_data"] = str(section["market_data"])
    if section.get("connect_timeout") is not None:
        from ..risk.limits import _seconds

        values["connect_timeout"] = float(_seconds(section["connect_timeout"]))
    return Connect(**values, live=live, sources=tuple(sources))


def live_guard(*, live: bool, account: str, paper: bool, yes: bool, tty: bool,
               confirm: Callable[[str], bool]) -> str | None:
    """Why this run may not go on (None: it may). A run without --live must be on a paper
    account; a --live run must be on a real one, confirmed."""
    if not live:
        if not paper:
            return (f"account {account} is a live account: trading it needs --live (and a confirmation); "
                    "without --live qtrade trades paper accounts only")
        return None
    if paper:
        return f"--live was given but account {account} is a paper account (DU...): drop --live to trade it"
    if yes:
        return None
    if not tty:
        return "--live needs a confirmation and there is no terminal to ask on: add --yes to confirm in advance"
    if not confirm(f"Trade the LIVE account {account} with real money?"):
        return "not confirmed: nothing was sent"
    return None


def is_paper_account(account: str) -> bool:
    """IB's paper accounts are DU... (individual) or DF... (advisor paper)."""
    return account.upper().startswith(("DU", "DF"))


class KillSwitch:
    """While the file exists, no new entry is sent (exits and cancels go on)."""

    def __init__(self, path: str | None):
        self.path = Path(os.path.expanduser(path)) if path else None

    def engaged(self) -> str | None:
        if self.path is not None and self.path.exists():
            return f"the kill switch {self.path} exists: no new entries (delete it to resume)"
        return None


def broker_section(doc) -> dict:
    """The strategy's `broker:` section (empty when it has none)."""
    return dict(doc.get(("broker",)) or {})


def margin_gate(policy: str, *, paper: bool, live: bool, what_if, funds) -> "Callable":
    """The check before an entry leaves (Kernel.check_order): IB's what-if margin under the
    strategy's risk.margin_check. `what_if(order) -> Margin | None` (None: IB gave none in time),
    `funds() -> float` (available funds now). A live run never sends an entry whose margin is
    unknown, whatever the policy says."""
    def check(order) -> str | None:
        if policy == "off":
            return None
        margin = what_if(order)
        if margin is None:
            if live:
                return "what-if margin unknown (IB gave none in time): a live run never sends an entry without it"
            if policy == "allow-missing-in-paper" and paper:
                return None
            return ("what-if margin unknown (IB gave none in time) and risk.margin_check is required "
                    "(allow-missing-in-paper lets a paper run go on without it)")
        available = funds()
        if margin.initial > available + 1e-6:
            return f"what-if margin {margin.initial:,.2f} is above the available funds {available:,.2f}"
        return None
    return check

"""IB's error and warning codes as data: what each means, in plain words, and what kind of thing
it is, so that every part of the IB broker reacts to a code the same way.

`classify(code, text)` is the one entry point. Most codes mean one thing; a few are read from
IB's text as well: 162 is a pacing violation, "no data", a cancelled query or a permissions
problem depending on what follows "Historical Market Data Service error message:".

Each `Code` carries a `message`: one plain line saying what happened and what qtrade does or
what the user should do. `describe(code, text)` adds IB's own text where it says more (the
reject reason of a 201, the contract of a 200).

What ib_async 2.1.0 does with a code matters to the order side: it sets a live order to
`Cancelled` on any error that is not one of its warnings (`IB_ASYNC_WARNINGS`, plus 2100-2199),
even when TWS keeps the order live (161); a warning sets `ValidationError` and the order is
still working.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(str, enum.Enum):
    CONNECTIVITY_LOST = "connectivity_lost"        # 1100, 2110, 1300: TWS <-> IB servers (or the socket) gone
    RESTORED_DATA_KEPT = "restored_data_kept"      # 1102: reconcile, subscriptions still stand
    RESTORED_DATA_LOST = "restored_data_lost"      # 1101: every subscription must be made again
    FARM_BROKEN = "farm_broken"                    # 2103, 2105, 2157: a data farm is down, lines suspect
    FARM_OK = "farm_ok"                            # 2104, 2106, 2158, 2107, 2108, 2119
    CLIENT_ID_IN_USE = "client_id_in_use"          # 326
    NOT_CONNECTED = "not_connected"                # 502, 504
    ORDER_REJECTED = "order_rejected"              # 201, 203, 10043, 10058 ...: final, no retry
    ORDER_CANCELLED = "order_cancelled"            # 202
    ORDER_WARNING = "order_warning"                # 105, 110, 399, 404, 434, 2109: the order is still live
    ORDER_NOT_MODIFIABLE = "order_not_modifiable"  # 104, 135, 161: reconcile before believing anything
    DUPLICATE_ORDER_ID = "duplicate_order_id"      # 103
    PACING = "pacing"                              # 162 pacing violation, 420
    NO_DATA = "no_data"                            # 162 "HMDS query returned no data": final
    MD_UNAVAILABLE = "md_unavailable"              # 354, 10168, 10197, 10186: no quotes from this line
    MD_DELAYED = "md_delayed"                      # 10167: delayed quotes follow
    ADVISORY = "advisory"                          # 10089, 10090, 10091: data keeps coming
    MAX_TICKERS = "max_tickers"                    # 101: that line is dead
    CONTRACT = "contract"                          # 200: not found or ambiguous
    REQUEST_ERROR = "request_error"                # 321, 322, 102, 10182 ...: the request failed as sent
    THROTTLE = "throttle"                          # 100: more than 50 messages a second
    HARMLESS = "harmless"                          # 300, 366, 10147, 10148, 2158 at connect, a cancelled query
    INFO = "info"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Code:
    code: int
    kind: Kind
    message: str


# ib_async 2.1.0's warnings (wrapper.error): the order stays live (ValidationError), nothing ends.
IB_ASYNC_WARNINGS = frozenset({105, 110, 165, 321, 329, 399, 404, 434, 492, 10167})


def _c(code: int, kind: Kind, message: str) -> tuple[int, Code]:
    return code, Code(code, kind, message)


CODES: dict[int, Code] = dict([
    # ---- connection and connectivity
    _c(326, Kind.CLIENT_ID_IN_USE, "the client id is already in use by another API session (IB 326); "
                                   "retrying, then connecting with a fallback client id"),
    _c(502, Kind.NOT_CONNECTED, "could not connect to TWS / IB Gateway (IB 502): start it and enable the API "
                                "(paper: TWS port 7497, IB Gateway 4002)"),
    _c(504, Kind.NOT_CONNECTED, "not connected to TWS / IB Gateway (IB 504); reconnecting"),
    _c(1100, Kind.CONNECTIVITY_LOST, "TWS lost its connection to IB's servers (IB 1100): no new orders, quotes "
                                     "are stale, positions are not read as flat until it is restored"),
    _c(1101, Kind.RESTORED_DATA_LOST, "connection to IB's servers restored, market data lost (IB 1101): "
                                      "every line is requested again and orders are reconciled"),
    _c(1102, Kind.RESTORED_DATA_KEPT, "connection to IB's servers restored, data maintained (IB 1102): "
                                      "orders and executions are reconciled"),
    _c(1300, Kind.CONNECTIVITY_LOST, "TWS reset its API socket port and dropped this connection (IB 1300); "
                                     "reconnecting"),
    _c(2110, Kind.CONNECTIVITY_LOST, "TWS lost its connection to IB's servers (IB 2110): treated like 1100"),
    _c(2103, Kind.FARM_BROKEN, "a market data farm connection is broken (IB 2103): quotes are suspect until it "
                               "is back (2104), then every line is requested again"),
    _c(2104, Kind.FARM_OK, "market data farm connection is OK (IB 2104)"),
    _c(2105, Kind.FARM_BROKEN, "the historical data farm connection is broken (IB 2105): bar requests may fail "
                               "until it is back (2106)"),
    _c(2106, Kind.FARM_OK, "historical data farm connection is OK (IB 2106)"),
    _c(2107, Kind.FARM_OK, "the historical data farm is inactive but available on demand (IB 2107)"),
    _c(2108, Kind.FARM_OK, "a market data farm is inactive but available on demand (IB 2108)"),
    _c(2119, Kind.FARM_OK, "a market data farm is connecting (IB 2119)"),
    _c(2157, Kind.FARM_BROKEN, "the security definition farm connection is broken (IB 2157): contract look-ups "
                               "may fail until it is back (2158)"),
    _c(2158, Kind.HARMLESS, "security definition farm connection is OK (IB 2158)"),
    _c(2100, Kind.INFO, "account data subscription ended by TWS (IB 2100): a new one replaces it"),
    # ---- orders
    _c(201, Kind.ORDER_REJECTED, "order rejected by IB (IB 201); not retried"),
    _c(203, Kind.ORDER_REJECTED, "this security is not available or not allowed for this account (IB 203); "
                                 "order not placed, not retried"),
    _c(10043, Kind.ORDER_REJECTED, "combo order rejected: it needs the NonGuaranteed routing parameter (IB 10043)"),
    _c(10058, Kind.ORDER_REJECTED, "combo order rejected: per-leg prices are not allowed for this combo (IB 10058); "
                                   "give one price for the whole combo"),
    _c(202, Kind.ORDER_CANCELLED, "order cancelled (IB 202); any quantity filled before stays filled"),
    _c(103, Kind.DUPLICATE_ORDER_ID, "duplicate order id (IB 103): the id was used before on this client id "
                                     "(e.g. after a gateway restart rolled nextValidId back); the order was not placed"),
    _c(104, Kind.ORDER_NOT_MODIFIABLE, "cannot modify a filled order (IB 104): it is reconciled, not chased"),
    _c(135, Kind.ORDER_NOT_MODIFIABLE, "IB cannot find that order id (IB 135): it is reconciled, not chased"),
    _c(161, Kind.ORDER_NOT_MODIFIABLE, "the order cannot be cancelled in its state (IB 161), e.g. it is filling; "
                                       "its status is queried again before anything is believed"),
    _c(105, Kind.ORDER_WARNING, "the modification does not match the original order (IB 105); the order is still live"),
    _c(110, Kind.ORDER_WARNING, "the price does not fit the contract's minimum tick (IB 110); round to the tick"),
    _c(399, Kind.ORDER_WARNING, "order warning from IB (IB 399); the order is still live"),
    _c(404, Kind.ORDER_WARNING, "shares to sell short are not available yet; the order is held while IB locates "
                                "them (IB 404)"),
    _c(434, Kind.ORDER_WARNING, "the order size cannot be zero (IB 434)"),
    _c(2109, Kind.ORDER_WARNING, "outside-regular-hours flag ignored for this order (IB 2109); the order is still live"),
    _c(329, Kind.ORDER_WARNING, "order modify failed: the order type cannot be changed (IB 329); the order is "
                                "still live as it was"),
    _c(10147, Kind.HARMLESS, "the order to cancel is not known to IB (IB 10147)"),
    _c(10148, Kind.HARMLESS, "the order to cancel is already done (IB 10148)"),
    # ---- market data
    _c(354, Kind.MD_UNAVAILABLE, "not subscribed to live market data for this contract (IB 354)"),
    _c(10167, Kind.MD_DELAYED, "no live market data subscription: delayed quotes (15-20 min late) follow (IB 10167)"),
    _c(10168, Kind.MD_UNAVAILABLE, "not subscribed to market data and delayed data is not enabled (IB 10168)"),
    _c(10186, Kind.MD_UNAVAILABLE, "not subscribed to delayed market data for this contract (IB 10186)"),
    _c(10197, Kind.MD_UNAVAILABLE, "no market data: a competing live session (a TWS or mobile login with the same "
                                   "user) holds it (IB 10197)"),
    _c(10089, Kind.ADVISORY, "part of this market data needs an extra API subscription (IB 10089); the rest keeps "
                             "coming"),
    _c(10090, Kind.ADVISORY, "part of the requested market data is not subscribed (IB 10090); the rest keeps coming"),
    _c(10091, Kind.ADVISORY, "part of this market data needs an extra subscription (IB 10091); the rest keeps coming"),
    _c(101, Kind.MAX_TICKERS, "IB refused the line: the maximum number of market data lines is reached (IB 101)"),
    _c(300, Kind.HARMLESS, "IB had no market data line to cancel for that id (IB 300)"),
    # ---- historical data
    _c(162, Kind.REQUEST_ERROR, "historical data request failed (IB 162)"),
    _c(165, Kind.INFO, "historical data service message (IB 165)"),
    _c(366, Kind.HARMLESS, "IB had no historical data query to cancel for that id (IB 366)"),
    _c(420, Kind.PACING, "real-time bar pacing violation (IB 420): backing off"),
    _c(10182, Kind.REQUEST_ERROR, "IB stopped live bar updates because the connection dropped (IB 10182); the "
                                  "subscription is made again after the reconnect"),
    # ---- contracts
    _c(200, Kind.CONTRACT, "IB has no security definition for this contract (IB 200): check the symbol, "
                           "exchange and currency, or give trading_class and multiplier in instruments.yaml"),
    # ---- requests
    _c(321, Kind.REQUEST_ERROR, "IB refused the request as invalid (IB 321)"),
    _c(322, Kind.REQUEST_ERROR, "IB could not process the request (IB 322): a duplicate id or too many "
                                "simultaneous requests"),
    _c(102, Kind.REQUEST_ERROR, "duplicate ticker id (IB 102)"),
    _c(100, Kind.THROTTLE, "more than 50 messages a second sent to IB (IB 100): slowing down"),
])

_HMDS_PREFIX = "historical market data service error message:"


def classify(code: int, text: str = "") -> Code:
    """What IB's `code` (with its `text`) means. Codes not in the table are INFO for IB's 2100-2199
    warnings and UNKNOWN otherwise, each with IB's own text as its message."""
    code = int(code)
    low = (text or "").lower()
    if code == 162:
        return _hmds(low, text)
    known = CODES.get(code)
    if known is not None:
        return known
    if 2100 <= code < 2200:
        return Code(code, Kind.INFO, f"IB notice {code}: {text}".rstrip(": "))
    return Code(code, Kind.UNKNOWN, f"IB error {code}: {text}".rstrip(": "))


def _hmds(low: str, text: str) -> Code:
    detail = low.split(_HMDS_PREFIX, 1)[-1].strip()
    if "pacing violation" in detail:
        return Code(162, Kind.PACING, "historical data pacing violation (IB 162): backing off before the request "
                                      "is made again")
    if "returned no data" in detail or "no data" in detail:
        return Code(162, Kind.NO_DATA, "IB has no historical bars for that request (IB 162)")
    if "query cancelled" in detail or "query canceled" in detail:
        return Code(162, Kind.HARMLESS, "historical data query cancelled (IB 162)")
    if "no market data permissions" in detail or "permission" in detail:
        return Code(162, Kind.MD_UNAVAILABLE, "no market data permissions for these bars (IB 162)")
    original = text.split(":", 1)[-1].strip() if ":" in text else text
    return Code(162, Kind.REQUEST_ERROR, f"historical data request failed (IB 162): {original}".rstrip(": "))


# codes whose IB text says something the table's message cannot: the reason of a reject, the
# order message of a 399, which farm broke
_FARMS = frozenset({2103, 2104, 2105, 2106, 2107, 2108, 2119, 2157, 2158})
_TEXT_MATTERS = frozenset({201, 202, 203, 321, 322, 399}) | _FARMS


def describe(code: int, text: str = "") -> str:
    """One plain line for a user: the code's message, with IB's own text where it says more."""
    info = classify(code, text)
    if info.kind in (Kind.UNKNOWN, Kind.INFO) and info.code not in CODES:
        return info.message
    reason = _reason(code, text) if code in _TEXT_MATTERS and text else ""
    if not reason:
        return info.message
    tag = f"(IB {code})"
    if code in _FARMS:
        return info.message.replace(tag, f"(IB {code}, {reason})", 1)
    if tag in info.message:
        head, tail = info.message.split(tag, 1)
        if tail.startswith(":"):  # the message's own explanation comes first, IB's reason after it
            return f"{info.message}; IB says: {reason}"
        return f"{head}{tag}: {reason}{tail}"
    return f"{info.message}: {reason}"


def _reason(code: int, text: str) -> str:
    """The informative tail of IB's text ('Order rejected - reason:Insufficient margin' ->
    'Insufficient margin')."""
    low = text.lower()
    for marker in ("reason:", "cause - "):
        at = low.find(marker)
        if at >= 0:
            return text[at + len(marker):].strip()
    if code in _FARMS and ":" in text:
        return text.rsplit(":", 1)[-1].strip()
    return text.strip()


def order_stays_live(code: int) -> bool:
    """Whether ib_async treats this code as a warning on an order (ValidationError, still working)
    rather than as its end (Cancelled)."""
    return code in IB_ASYNC_WARNINGS or 2100 <= code < 2200

"""The TWS API socket protocol, server side: framing, the handshake, field formatting and a
cursor for reading the fields a client sends.

Every message in both directions is a 4-byte big-endian length and a payload of UTF-8 text
fields, each ended by a NUL. The client opens with the raw bytes ``API\\0`` and one framed field
holding its version range (``v157..178``); the server answers with exactly two fields, its
version and its connection time.
"""

from __future__ import annotations

import re
import struct

UNSET_DOUBLE = 1.7976931348623157e308
UNSET_INTEGER = 2 ** 31 - 1
UNSET_D = "1.7976931348623157E308"
UNSET_I = "2147483647"

MIN_VERSION = 157
MAX_VERSION = 178
HELLO = b"API\0"
_RANGE = re.compile(r"v(\d+)(?:\.\.(\d+))?")


class ProtocolError(Exception):
    """A client sent something the protocol does not allow; the session is closed with this reason."""


def fmt(value) -> str:
    """One field as the wire text TWS uses: bools 1/0, ints plainly, floats without noise."""
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars: their repr is not a number on the wire
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot go on the wire; send UNSET or a number")
        if value == UNSET_DOUBLE:
            return UNSET_D
        text = repr(round(value, 10))
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def frame(fields) -> bytes:
    """A length-prefixed message from its fields."""
    payload = "".join(fmt(f) + "\0" for f in fields).encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


def split(payload: bytes) -> list[str]:
    """The fields of one payload (the trailing NUL's empty tail dropped)."""
    parts = payload.decode("utf-8", errors="backslashreplace").split("\0")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def negotiate(version_field: str) -> int:
    """The server version for a client's ``v157..178`` range; ProtocolError below the minimum."""
    match = _RANGE.search(version_field)
    if not match:
        raise ProtocolError(f"handshake: expected a version range like 'v157..178', got {version_field!r}")
    low = int(match.group(1))
    high = int(match.group(2) or match.group(1))
    if high < MIN_VERSION or low > MAX_VERSION:
        raise ProtocolError(f"handshake: client versions {low}..{high} do not overlap {MIN_VERSION}..{MAX_VERSION}")
    return min(high, MAX_VERSION)


class Fields:
    """A cursor over one incoming message's fields; running off the end is a ProtocolError."""

    def __init__(self, fields: list[str]):
        self.fields = fields
        self.pos = 0

    def __len__(self) -> int:
        return len(self.fields) - self.pos

    def str(self) -> str:
        if self.pos >= len(self.fields):
            raise ProtocolError(f"message {self.fields[:1]} ended after {len(self.fields)} fields; a field was missing")
        value = self.fields[self.pos]
        self.pos += 1
        return value

    def int(self, default: int = 0) -> int:
        text = self.str()
        if text == "":
            return default
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise ProtocolError(f"field {self.pos - 1} of message {self.fields[0]}: expected an integer, got {text!r}")
            if as_float != int(as_float):
                raise ProtocolError(f"field {self.pos - 1} of message {self.fields[0]}: expected an integer, got {text!r}")
            return int(as_float)

    def float(self, default: float | None = None) -> float | None:
        text = self.str()
        if text == "":
            return default
        if text == "Infinite":
            return float("inf")
        try:
            value = float(text)
        except ValueError:
            raise ProtocolError(f"field {self.pos - 1} of message {self.fields[0]}: expected a number, got {text!r}")
        return default if value == UNSET_DOUBLE else value

    def bool(self) -> bool:
        return bool(self.int())

    def skip(self, n: int = 1) -> None:
        for _ in range(n):
            self.str()

    def contract(self) -> dict:
        """The 12 contract fields every request carries."""
        c = {"conId": self.int(), "symbol": self.str(), "secType": self.str(),
             "lastTradeDateOrContractMonth": self.str(), "strike": self.float(0.0) or 0.0,
             "right": self.str(), "multiplier": self.str(), "exchange": self.str(),
             "primaryExchange": self.str(), "currency": self.str(), "localSymbol": self.str(),
             "tradingClass": self.str()}
        return c

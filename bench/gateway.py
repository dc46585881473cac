"""Benchmark: the gateway simulator against the real ib_async client.

Prints three figures:
  1. connect time: `IB.connect()` to a running simulator until connect returns (handshake,
     startApi, the six startup requests and their end markers), median of --connects runs;
  2. messages per second the simulator sustains, both ways over one socket: a raw TWS API client
     (not ib_async, which throttles itself to 45 requests/s) sends --messages reqCurrentTime
     requests in one burst and reads every answer; and server -> client, the ticks ib_async
     receives per second from --lines streaming option lines replayed at --stream-speed, at the
     default tick interval (0.2 s) and at --fast-interval;
  3. a replayed trading day of minute bars at --speed 60: the simulated 09:30-16:00 session of the
     bundled XSP minutes is 390 minutes, i.e. 6.5 wall minutes at 60x; the figure run here is
     the measured clock rate (simulated seconds per wall second while ticks stream and a
     keepUpToDate bar request is live) over --day-sample seconds, the projected wall time of
     the whole day from it, and how many new minute bars ib_async received in the sample.
     --full-day runs the whole session instead (6.5 minutes).

Not a test. Run: python bench/gateway.py [--connects 20] [--messages 20000] [--full-day]
"""

from __future__ import annotations

import argparse
import statistics
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewaysim import GatewaySim  # noqa: E402
from gatewaysim.protocol import frame, split  # noqa: E402


def connect_time(port: int, n: int) -> list[float]:
    from ib_async import IB

    out = []
    for i in range(n):
        ib = IB()
        t0 = time.perf_counter()
        ib.connect("127.0.0.1", port, clientId=100 + i, timeout=4)
        out.append(time.perf_counter() - t0)
        ib.disconnect()
    return out


def _read_frame(sock, buf: bytearray):
    while len(buf) < 4:
        buf += sock.recv(1 << 16)
    n = struct.unpack(">I", buf[:4])[0]
    while len(buf) < 4 + n:
        buf += sock.recv(1 << 16)
    payload = bytes(buf[4:4 + n])
    del buf[:4 + n]
    return split(payload)


def raw_round_trips(port: int, n: int) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"API\0" + struct.pack(">I", 9) + b"v157..178")
    buf = bytearray()
    _read_frame(sock, buf)
    sock.sendall(frame([71, 2, 999, ""]))
    while _read_frame(sock, buf)[0] != "9":
        pass
    burst = b"".join(frame([49, 1]) for _ in range(n))
    t0 = time.perf_counter()
    sock.sendall(burst)
    got = 0
    while got < n:
        if _read_frame(sock, buf)[0] == "49":
            got += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return 2 * n / elapsed  # n requests in, n answers out


def tick_rate(sim: GatewaySim, port: int, seconds: float, lines: int) -> float:
    from ib_async import IB, Option

    ib = IB()
    ib.connect("127.0.0.1", port, clientId=300, timeout=4)
    chain = sim.catalog.chains[next(i.conId for i in sim.catalog.underlyings() if i.symbol == "SPY")]
    contracts = [Option(conId=inst.conId, exchange="SMART") for inst in sim.catalog.by_conid.values()
                 if inst.secType == "OPT" and inst.symbol == "SPY" and inst.lastTradeDate in chain["expiries"][:3]][:lines]
    contracts = ib.qualifyContracts(*contracts)
    count = [0]

    def on_ticks(tickers):
        count[0] += sum(len(t.ticks) + (1 if t.modelGreeks else 0) for t in tickers)
    for c in contracts:
        ib.reqMktData(c)
    ib.sleep(1.0)
    ib.pendingTickersEvent += on_ticks
    t0 = time.perf_counter()
    ib.sleep(seconds)
    elapsed = time.perf_counter() - t0
    ib.disconnect()
    return count[0] / elapsed


def day_at_speed(sample: float, full: bool) -> tuple[float, float, int, float]:
    from ib_async import IB, Index

    sim = GatewaySim(None, speed=60, start="2019-11-08 09:30")
    port = sim.start_in_thread(0)
    ib = IB()
    ib.connect("127.0.0.1", port, clientId=1, timeout=4)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    bars = ib.reqHistoricalData(xsp, "", "1 D", "1 min", "TRADES", True, keepUpToDate=True)
    n0 = len(bars)
    sim_t0, wall0 = sim.now(), time.perf_counter()
    close = sim_t0.replace(hour=21, minute=0, second=0, microsecond=0)  # 16:00 New York in UTC
    if full:
        while sim.now() < close:
            ib.sleep(0.5)
    else:
        ib.sleep(sample)
    wall = time.perf_counter() - wall0
    simulated = (sim.now() - sim_t0).total_seconds()
    new_bars = len(bars) - n0
    last = ticker.last
    ib.disconnect()
    sim.stop_thread()
    rate = simulated / wall
    return rate, 390 * 60 / rate, new_bars, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--stream-seconds", type=float, default=5.0)
    ap.add_argument("--stream-speed", type=float, default=600.0)
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--fast-interval", type=float, default=0.01)
    ap.add_argument("--day-sample", type=float, default=10.0)
    ap.add_argument("--full-day", action="store_true")
    args = ap.parse_args()

    sim = GatewaySim(None, speed=args.stream_speed, max_rate=10 ** 9)
    port = sim.start_in_thread(0)
    times = connect_time(port, args.connects)
    print(f"connect (ib_async IB.connect, {args.connects} runs): median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms")
    rate = raw_round_trips(port, args.messages)
    print(f"messages both ways over one socket ({args.messages} reqCurrentTime + answers): {rate:,.0f} msg/s")
    ticks = tick_rate(sim, port, args.stream_seconds, args.lines)
    sim.tick_interval = args.fast_interval
    fast = tick_rate(sim, port, args.stream_seconds, args.lines)
    print(f"ticks to ib_async from {args.lines} streaming option lines at {args.stream_speed:g}x: {ticks:,.0f} "
          f"ticks/s (tick interval 0.2 s), {fast:,.0f} ticks/s (interval {args.fast_interval:g} s)")
    sim.stop_thread()
    rate, day, new_bars, last = day_at_speed(args.day_sample, args.full_day)
    what = "whole session" if args.full_day else f"{args.day_sample:g} s sample"
    print(f"a replayed trading day of minute bars at --speed 60 ({what}): clock ran {rate:.2f} simulated s per "
          f"wall s, so 09:30-16:00 (390 bars) takes {day / 60:.2f} min; {new_bars} new minute bars reached "
          f"ib_async through keepUpToDate (last XSP {last})")


if __name__ == "__main__":
    main()

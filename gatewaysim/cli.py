"""The `qtrade gateway-sim` process: start, print where it listens, run until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import sys

EXIT_OK, EXIT_USAGE = 0, 2


def run(port: int, data, account: str, speed: float, scenario, control_port, start=None, chains=None,
        echo=print) -> int:
    from .control import CommandError, load_scenario, run_scenario, serve_control
    from .data import DataError
    from .server import GatewaySim

    logging.basicConfig(level=logging.INFO, format="gateway-sim: %(message)s", stream=sys.stderr)
    if speed <= 0:
        echo("gateway-sim: --speed must be positive (1 = real time, 60 = a minute per second)", file=sys.stderr)
        return EXIT_USAGE
    begin = None
    if start:
        try:
            begin = dt.datetime.fromisoformat(start.strip())
        except ValueError:
            echo(f"gateway-sim: --start {start!r}: expected 'YYYY-MM-DD HH:MM' (New York time)", file=sys.stderr)
            return EXIT_USAGE
    try:
        steps = load_scenario(scenario) if scenario else []
        sim = GatewaySim(data, account=account, speed=speed, start=begin, chains=chains)
    except (DataError, CommandError) as exc:
        echo(f"gateway-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        try:
            bound = await sim.start(port)
        except OSError as exc:
            echo(f"gateway-sim: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; "
                 f"is a TWS/IB Gateway or another simulator already using it? Pick another --port", file=sys.stderr)
            return EXIT_USAGE
        control = None
        if control_port is not None:
            try:
                control = await serve_control(sim, control_port)
            except OSError as exc:
                await sim.stop()
                echo(f"gateway-sim: cannot listen on control port {control_port}: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_USAGE
        if steps:
            sim.scenario_tasks.append(asyncio.create_task(run_scenario(sim, steps)))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
                pass
        symbols = sorted(sim.series)
        extra = f", control port {control.sockets[0].getsockname()[1]}" if control else ""
        names = ", ".join(symbols[:8]) + (f" and {len(symbols) - 8} more" if len(symbols) > 8 else "")
        echo(f"gateway-sim: listening on 127.0.0.1:{bound} as account {account} "
             f"({len(symbols)} symbol{'s' * (len(symbols) != 1)}: {names}, from {sim.data_dir}; "
             f"simulated time {sim.now():%Y-%m-%d %H:%M} UTC, "
             f"speed {speed:g}{extra}); connect any TWS API client (ib_async: IB().connect('127.0.0.1', {bound}, "
             f"clientId=1)), or trade on it: qtrade run STRATEGY --broker ib --port {bound}", flush=True)
        await stop.wait()
        if control:
            control.close()
            await control.wait_closed()
        await sim.stop()
        logging.getLogger("gatewaysim").info("stopped; %d messages received", len(sim.received))
        return EXIT_OK

    return asyncio.run(main())

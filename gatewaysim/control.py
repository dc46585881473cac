"""Faults and control commands from outside Python: one command is a dict
``{"cmd": NAME, ...arguments}``; a scenario file is a YAML list of timed steps; the control port
takes one JSON command per line and answers one JSON line.

Commands (arguments in brackets are optional):
  drop_connection [clientId] [when: now|before_ack|after_ack]   restart [next_valid_id]
  stop_ticks symbol          resume_ticks symbol                connectivity code (1100/1101/1102)
  farm ok (false: 2103, true: 2104)                             competing_session [on]
  hold_client_id clientId [held]                 reject_next_order [reason] [order_type]
  refuse_modifies [refuse]
  partial_fill_then_cancel qty [orderId]                        nan_quotes symbol [on]
  whatif_unset_margin [on]   delay_positions seconds            pacing_violation [count]
  set_max_lines n            set_max_rate n                     commissions mode [delay]
  correct_execution execId [price] [shares]                     set_quote symbol + fields
  set_entitlement symbol live                                   set_fill_mode mode
  fill_order orderId qty [price]                                cancel orderId [reason]
  advance seconds            set_position symbol qty avg_price  inject_error reqId code text
  seed_order symbol_or_conid action qty [order_type] [lmt_price] [aux_price] [order_ref] [clientId]
  now                        record                             dump path

Scenario file: a list of steps, each ``{after: SECONDS, cmd: NAME, ...arguments}``; `after` is
wall-clock seconds since the simulator started (divide simulated seconds by --speed), e.g.

    - {after: 5, cmd: stop_ticks, symbol: SPY}
    - {after: 20, cmd: resume_ticks, symbol: SPY}
    - {after: 30, cmd: connectivity, code: 1100}
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from pathlib import Path

import yaml

log = logging.getLogger("gatewaysim")

COMMANDS = ("drop_connection", "restart", "stop_ticks", "resume_ticks", "connectivity", "farm", "competing_session",
            "hold_client_id", "reject_next_order", "refuse_modifies", "partial_fill_then_cancel", "nan_quotes", "whatif_unset_margin",
            "delay_positions", "pacing_violation", "set_max_lines", "set_max_rate", "commissions",
            "correct_execution", "set_quote", "set_entitlement", "set_fill_mode", "fill_order", "cancel", "advance",
            "set_position", "seed_order", "inject_error")


class CommandError(Exception):
    pass


def apply_command(sim, command: dict):
    if not isinstance(command, dict) or "cmd" not in command:
        raise CommandError('a command is an object with a "cmd" field, e.g. {"cmd": "stop_ticks", "symbol": "SPY"}')
    args = {k: v for k, v in command.items() if k not in ("cmd", "after")}
    name = command["cmd"]
    if name == "now":
        return sim.now().isoformat()
    if name == "record":
        return sim.record()
    if name == "dump":
        sim.dump_json(args["path"])
        return args["path"]
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name!r}; known: {', '.join(COMMANDS + ('now', 'record', 'dump'))}")
    fn = getattr(sim, name)
    if name == "set_quote":
        key = args.pop("symbol", None) or args.pop("conId", None)
        return fn(key, **args)
    try:
        inspect.signature(fn).bind(**args)
    except TypeError as exc:
        raise CommandError(f"{name}: {exc} (arguments: {', '.join(inspect.signature(fn).parameters)})")
    return fn(**args)


def load_scenario(path) -> list[dict]:
    """A scenario file's steps, checked; errors name the file and the step."""
    p = Path(path)
    try:
        steps = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"--scenario {p}: no such file")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise CommandError(f"--scenario {p}{where}: not valid YAML: {getattr(exc, 'problem', exc)}")
    if not isinstance(steps, list):
        raise CommandError(f"--scenario {p}: expected a list of steps like '- {{after: 5, cmd: stop_ticks, symbol: SPY}}'")
    from .server import GatewaySim

    out = []
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict) or "cmd" not in step or not isinstance(step.get("after", 0), (int, float)):
            raise CommandError(f"--scenario {p}: step {i} needs 'after' (seconds) and 'cmd'; got {step!r}")
        # YAML 1.1 reads a bare `on:` / `off:` key as a boolean; they are the argument names meant
        step = {({True: "on", False: "off"}.get(k, k) if isinstance(k, bool) else k): v for k, v in step.items()}
        if step["cmd"] not in COMMANDS + ("dump",):
            raise CommandError(f"--scenario {p}: step {i}: unknown command {step['cmd']!r}; known: {', '.join(COMMANDS)}")
        if step["cmd"] in COMMANDS and step["cmd"] != "set_quote":
            args = {k: v for k, v in step.items() if k not in ("cmd", "after")}
            sig = inspect.signature(getattr(GatewaySim, step["cmd"]))
            try:
                sig.bind(None, **args)
            except TypeError as exc:
                names = ", ".join(n for n in sig.parameters if n != "self")
                raise CommandError(f"--scenario {p}: step {i} ({step['cmd']}): {exc}; its arguments: {names}")
        out.append(step)
    return out


async def run_scenario(sim, steps: list[dict]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for step in sorted(steps, key=lambda s: s.get("after", 0)):
        delay = t0 + float(step.get("after", 0)) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            apply_command(sim, step)
            sim.record_event("scenario", step=step)
        except Exception as exc:  # noqa: BLE001 - a bad step is reported, the rest still run
            log.error("scenario step %s failed: %s", step, exc)
            sim.record_event("scenario_error", step=step, error=str(exc))


async def serve_control(sim, port: int, host: str = "127.0.0.1"):
    """Line-based JSON control: one command per line in, {"ok": true, "result": ...} or
    {"ok": false, "error": "..."} per line out."""
    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                text = line.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                try:
                    result = apply_command(sim, json.loads(text))
                    reply = {"ok": True, "result": result}
                except json.JSONDecodeError as exc:
                    reply = {"ok": False, "error": f"not JSON at column {exc.colno}: {exc.msg}"}
                except Exception as exc:  # noqa: BLE001 - every failure is an answer, never a crash
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write((json.dumps(reply, default=str) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    return server

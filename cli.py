"""qtrade's command line: parse options, call the engine, print, set the exit code.

Exit codes: 0 success (warnings allowed), 1 problems found in the user's files, 2 usage error.
A traceback is a bug; `--debug` shows one, otherwise bad input is always a message.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import sys

import click

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


# Characters a terminal acts on instead of showing (ESC starts colour, title and OSC-8 link
# sequences; CR and backspace overwrite; C1 controls; the bidi overrides that reorder a line).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(text: str) -> str:
    """`text` with every control character written out as an escape (\\x1b, \\u202e); line
    breaks and tabs stay. User text (rule names, descriptions, symbols, file contents quoted in
    messages) reaches the terminal only through this."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                         else f"\\u{ord(m.group()):04x}", text)


def _safe_echo(text: str, err: bool = False) -> None:
    """Print with control characters escaped, degrading characters the console cannot encode
    (old Windows consoles crash)."""
    text = _escaped(str(text))
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        text = text.encode(encoding if encoding else "ascii", errors="replace").decode(encoding, errors="replace")
    click.echo(text, err=err)


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--set expects name=value, got {item!r}")
        overrides[name.strip()] = value.strip()
    return overrides


def _positive_amount(ctx, param, value):
    """--cash: a finite amount above zero (click's float takes -100, 0, nan and inf)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite amount above 0, got {value:g}")
    if value is not None and value > MAX_CASH:
        raise click.BadParameter(f"{value:g} is more than the {MAX_CASH:,.0f} an account can hold here")
    return value


MAX_CASH = 1e12   # beyond this, figures lose their cents (float64) and mean nothing


def _iso_date(ctx, param, value):
    """--from/--to: a real calendar date written YYYY-MM-DD (2020-13-45 is refused here)."""
    import datetime as dt

    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) != 10:
            raise ValueError("expected 10 characters")
        dt.date.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date ({exc}); write YYYY-MM-DD, e.g. 2020-01-31") from None
    return text


def _check_window(prep, start, end) -> None:
    """--from/--to against each other and the data: a window with no bars is a usage error that
    says what range the data has."""
    import numpy as np
    import pandas as pd

    frames = [prep.frames[s] for s in prep.symbols if s in prep.frames and len(prep.frames[s])]
    if not frames:
        if start and end and start > end:
            raise click.UsageError(f"--from {start} is after --to {end}")
        return
    first = min(f.index[0] for f in frames)
    last = max(f.index[-1] for f in frames)
    names = ", ".join(s for s in prep.symbols[:3] if s in prep.frames) + (" ..." if len(prep.symbols) > 3 else "")
    holds = f"the data ({names}) runs from {first:%Y-%m-%d} to {last:%Y-%m-%d}"
    if start and end and start > end:
        raise click.UsageError(f"--from {start} is after --to {end}: {holds}")
    if start and pd.Timestamp(start).date() > last.date():
        raise click.UsageError(f"--from {start} is after the end of the data: {holds}")
    if end and pd.Timestamp(end).date() < first.date():
        raise click.UsageError(f"--to {end} is before the start of the data: {holds}")
    from engine.diagnostics import DiagnosticError

    for key, flag, outside in (("start", start, lambda d: d > last.date()), ("end", end, lambda d: d < first.date())):
        value = prep.settings.get(key)
        if flag is None and isinstance(value, str) and outside(pd.Timestamp(value).date()):
            side = "after the end" if key == "start" else "before the start"
            _report_problems(DiagnosticError([prep.doc.diag(("backtest", key), f"backtest.{key} {value} is {side} "
                                                            f"of the data: {holds}", "change it, or override it with "
                                                            f"{'--from' if key == 'start' else '--to'}")]))
    lo, hi = prep.start, prep.end   # the flags' or the strategy's backtest.start/end; hi is exclusive
    if lo is not None or hi is not None:
        inside = 0
        for f in frames:
            times = f.index.as_unit("ns").asi8
            within = np.ones(len(times), dtype=bool)
            if lo is not None:
                within &= times >= lo.value
            if hi is not None:
                within &= times < hi.value
            inside += int(within.sum())
        if inside == 0:
            shown_lo = lo.date() if lo is not None else first.date()
            shown_hi = (hi - pd.Timedelta(days=1)).date() if hi is not None else last.date()
            raise click.UsageError(f"no bars from {shown_lo} to {shown_hi}: {holds}")


def _version() -> str:
    """qtrade's version (engine.__version__, kept equal to pyproject's by a test); reading it
    from the engine, not from package metadata, keeps importlib.metadata off every start-up."""
    from engine import __version__

    return __version__


class _Group(click.Group):
    """Turns unexpected exceptions into a one-line message unless --debug is given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _safe_echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `qtrade functions | head`: the reader left, nothing is wrong
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush is quiet
            except OSError:  # pragma: no cover
                pass
            ctx.exit(EXIT_OK)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _safe_echo(f"qtrade: internal error: {type(exc).__name__}: {exc}", err=True)
            command = ctx.invoked_subcommand or "COMMAND"
            _safe_echo(f"    this is a bug in qtrade; rerun as `qtrade --debug {command} ...` for the traceback",
                       err=True)
            ctx.exit(70)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
@click.version_option(version=_version(), message="qtrade %(version)s")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """qtrade: rule-based trading strategies on Interactive Brokers, written as YAML.

    Validate strategies before running them, backtest them on history, dry-run them to see the
    orders they would send, and run them against IB.
    """
    ctx.ensure_object(dict)["debug"] = debug


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json prints one object for editors and CI.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Override a strategy param (type-checked against its declaration). Repeatable.")
def validate(paths: tuple[str, ...], fmt: str, strict: bool, sets: tuple[str, ...]) -> None:
    """Check strategy, universe, instruments, scanner and risk files.

    PATHS are files or directories (searched for *.yaml and *.yml). Every problem is printed as
    path:line:col with a hint. Exit 0 when clean (warnings allowed), 1 on errors.
    """
    from engine.check import validate as run_validate

    overrides = _parse_sets(sets)
    report = run_validate(list(paths), overrides, strict)
    if fmt == "json":
        _safe_echo(json.dumps({
            "files": report.files,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "diagnostics": [d.to_json() for d in report.diagnostics],
        }, indent=2))
    else:
        for d in report.diagnostics:
            _safe_echo(d.format())
        n_files = len(report.files)
        summary = (f"{n_files} file{'s' * (n_files != 1)} checked: {len(report.errors)} error"
                   f"{'s' * (len(report.errors) != 1)}, {len(report.warnings)} warning"
                   f"{'s' * (len(report.warnings) != 1)}")
        _safe_echo(summary if report.diagnostics else f"{summary}. All clear.", err=bool(report.diagnostics))
    if any(_flag_error(d) or d.message == "no such file or directory" for d in report.errors):
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_PROBLEMS if report.errors else EXIT_OK)


@main.command()
@click.argument("kind", type=click.Choice(["strategy", "universe", "instruments", "scanner", "risk"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a document KIND (for editors: yaml-language-server, VS Code)."""
    from engine.config.schema import schema_text

    _safe_echo(schema_text(kind).rstrip())


def _journal_first(journal_path: str, report_path: str | None) -> None:
    """Before a run: the journal path can take a journal (not a folder, not another file, not
    another program's SQLite) and the report path destroys nothing; exit 2 otherwise."""
    from engine.runtime.journal import JournalError, preflight

    try:
        preflight(journal_path)
    except JournalError as exc:
        _safe_echo(f"qtrade: --journal {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if report_path:
        from engine.report.html import report_path_problem

        problem = report_path_problem(report_path, journal_path)
        if problem:
            _safe_echo(f"qtrade: --report {problem}", err=True)
            sys.exit(EXIT_USAGE)


def _write_journal(journal_path: str, write) -> None:
    """Open the journal and `write(journal)`; a journal that cannot be written is a message."""
    import sqlite3

    from engine.runtime.journal import Journal, JournalError, failure

    try:
        with Journal(journal_path) as journal:
            try:
                write(journal)
            except sqlite3.Error as exc:
                raise failure(journal_path, exc) from None
    except JournalError as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)


def _report_warnings(prep) -> None:
    """validate's warnings of the strategy, on stderr before it runs, as `qtrade validate` shows
    them (a rule dividing by zero never fires: the run says why before it shows 0 trades)."""
    for d in prep.ws.warnings:
        _safe_echo(d.format(), err=True)


def _report_skipped_bars(prep) -> None:
    """With data.on_bad_bar: skip, say on stderr how many bars were left out and where the first was."""
    from engine.diagnostics import warning

    for symbol, frame in prep.frames.items():
        info = frame.attrs.get("bad_bars")
        if info:
            n = info["count"]
            _safe_echo(warning(info["file"], info["line"], info["col"],
                               f"{n:,} bad bar{'s' * (n != 1)} of {symbol} left out (data.on_bad_bar: skip); "
                               f"the first: {info['message']}").format(), err=True)


def _symbols_text(prep) -> str:
    """The traded symbols, as a run's first line names them: those with bars (a scanner's
    universe may name more)."""
    traded = [s for s in prep.symbols if s in prep.frames]
    text = f"{', '.join(traded[:8])}{' ...' if len(traded) > 8 else ''}"
    return text + (f" ({len(traded)} of the universe's {len(prep.symbols)} with bars)" if prep.missing else "")


def _report_missing(prep) -> None:
    """A strategy with a scanner trades the names of its universe that have bars: say on
    stderr which do not (every scan counts them as having no data)."""
    from engine.diagnostics import Severity

    if not prep.missing:
        return
    n, names = len(prep.missing), ", ".join(prep.missing)
    where = ("data", "source") if prep.doc.get(("data", "source")) else ("universe",)
    from engine.config.documents import _display

    _safe_echo(prep.doc.diag(where, f"{n} of the universe's {len(prep.symbols)} symbols have no bars in "
                             f"{_display(prep.data_path)}: {names}", "they are not traded, and every scan counts them as "
                             "having no data; --data DIR gives a folder with their bars",
                             severity=Severity.WARNING).format(), err=True)


def _report_excluded(prep) -> None:
    """Say on stderr which names the universe file's `exclude:` left out, with its reason."""
    from engine.check.model import excluded_symbols
    from engine.diagnostics import Severity

    universe = prep.doc.get(("universe",))
    ref = None if isinstance(universe, list) else (prep.doc.refs.get(("universe",))
                                                   or prep.doc.refs.get(("universe", "file")))
    for symbol, where, reason in excluded_symbols(prep.doc):
        _safe_echo(ref.diag(where, f"{symbol} left out of the universe ({reason or 'excluded'})",
                            severity=Severity.WARNING).format(), err=True)


def _refuse_unfiltered_session(prep) -> None:
    """data.session: regular on a file already at the strategy's bar size: its bars outside
    regular hours were left out (as a resample leaves them out of finer bars); say how many,
    at the data section, on stderr."""
    from engine.diagnostics import Severity

    for symbol, (count, total, first) in prep.left_out.items():
        inst = prep.instruments.get(symbol)
        where = ("data", "session") if prep.doc.get(("data", "session")) else ("data",)
        _safe_echo(prep.doc.diag(
            where, f"{symbol}: {count:,} of {total:,} bars outside {inst.calendar}'s regular hours left out (the "
            f"first at {first.tz_convert(prep.timezone):%Y-%m-%d %H:%M}), as data.session: regular says",
            "set data.session: extended to trade every bar in the file", severity=Severity.WARNING).format(), err=True)


def _refuse_short_history(prep) -> None:
    """A look-back longer than the data is refused before the run (its rules could never fire)."""
    from engine.check.history import short_history
    from engine.diagnostics import DiagnosticError

    problems = short_history(prep)
    if problems:
        raise DiagnosticError(problems)


def _flag_error(d) -> bool:
    """Is the diagnostic about a flag's value (a usage error, exit 2)? An unknown --set name is
    said at the flag; an out-of-range --set value at the param's line, the flag first."""
    return str(d.path).startswith("--") or d.message.startswith("--set ")


def _report_problems(exc, argument: str | None = None) -> None:
    """The diagnostics on stderr and exit 1; exit 2 (a usage error, as `qtrade validate` says it)
    when the file named on the command line does not exist or a flag's value is wrong."""
    for d in exc.diagnostics:
        _safe_echo(d.format(), err=True)
    n = sum(1 for d in exc.diagnostics if d.is_error)
    _safe_echo(f"{n} error{'s' * (n != 1)}: nothing was run", err=True)
    missing = argument is not None and any(d.is_error and d.message == "no such file or directory"
                                           and str(d.path) == str(argument) for d in exc.diagnostics)
    flag = any(d.is_error and _flag_error(d) for d in exc.diagnostics)
    sys.exit(EXIT_USAGE if missing or flag else EXIT_PROBLEMS)


@main.command()
@click.argument("strategy", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a param. Repeatable.")
def explain(strategy: str, fmt: str, sets: tuple[str, ...]) -> None:
    """Print the compiled Plan of STRATEGY: its nodes (shared ones once), warm-up, rules and the
    inputs and history a run must load."""
    from engine.check import validate as run_validate
    from engine.check.support import is_unsupported
    from engine.diagnostics import DiagnosticError
    from engine.plan.build import plan_from_file, summary

    try:
        plan = plan_from_file(strategy, _parse_sets(sets), unsupported_ok=True)
    except DiagnosticError as exc:
        _report_problems(exc)
    refused = [d for d in run_validate([strategy], _parse_sets(sets)).errors if is_unsupported(d)]
    for d in refused:   # the plan does not depend on them, but a run refuses the strategy
        _safe_echo(d.format(), err=True)
    if refused:
        _safe_echo(f"backtest and run refuse this strategy while {'these keys are' if len(refused) > 1 else 'this key is'}"
                   " in it", err=True)
    data = summary(plan)
    if fmt == "json":
        _safe_echo(json.dumps(data, indent=2, default=str))
        return
    _safe_echo(f"Plan of {data['strategy']} ({data['bar']} bars): warm-up {data['warmup_bars']} bars, "
               f"load at least {data['history_bars']} bars of history")
    fields = "; ".join(f"{sym}: {', '.join(f)}" for sym, f in data["inputs"]["fields"].items()) or "none"
    _safe_echo(f"inputs: {fields}")
    if data["inputs"]["clock"]:
        _safe_echo(f"clock: {', '.join(data['inputs']['clock'])}")
    if data["inputs"]["context"]:
        _safe_echo(f"run context: {', '.join(data['inputs']['context'])}")
    if data["inputs"].get("scan"):
        _safe_echo(f"scan results: {', '.join('scan.' + f for f in data['inputs']['scan'])} (from the scanner; "
                   "entries go for its picks only)")
    _safe_echo(f"\nnodes ({len(data['nodes'])}; 'shared' = used by more than one rule or output):")
    width = min(60, max((len(n["expr"]) for n in data["nodes"]), default=10))
    for n in data["nodes"]:
        if n["op"] in ("const",):
            continue
        users = n["used_by"]
        tag = f"shared by {len(users)}" if len(users) > 1 else (users[0] if users else "")
        expr = n["expr"] if len(n["expr"]) <= width else n["expr"][: width - 3] + "..."
        where = "" if n["market"] else "  [run context]"
        _safe_echo(f"  #{n['id']:<3} {expr:<{width}}  warm-up {n['warmup']:>4}  {tag}{where}")
    _safe_echo("\nrules:")
    nodes = data["nodes"]
    for r in data["rules"]:
        agent = f"[{r['agent']}] " if r["agent"] else ""
        parts = [f"{key} #{r[key]}" for key in ("when", "stop", "target") if r[key] is not None]
        order = f" -> order {r['order']}" if r["order"] else (" -> close position" if r["kind"] == "exit" else "")
        _safe_echo(f"  {r['kind']:<5} {agent}{r['name']!r}: {', '.join(parts)}{order}")
        for key in ("when", "stop", "target"):
            if r[key] is not None:
                _safe_echo(f"        {key}: {nodes[r[key]]['expr']}")


class _Progress:
    """A one-line progress bar on stderr for long backtests (only on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = -1

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        pct = max(0, min(100, int(fraction * 100)))
        if pct != self.shown:
            self.shown = pct
            filled = pct // 4
            sys.stderr.write(f"\r  [{'#' * filled}{'.' * (25 - filled)}] {pct:3d}%")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\r" + " " * 40 + "\r")
            sys.stderr.flush()


def _pct(v, digits=2):
    return "n/a" if v is None else f"{v * 100:.{digits}f}%"


def _num(v, digits=2):
    return "n/a" if v is None else f"{v:,.{digits}f}"


SHORT_RUN_DAYS = 91   # annualised figures of a run shorter than about three months carry a caveat


def _span_days(start, end) -> float | None:
    import pandas as pd

    if not start or not end:
        return None
    return (pd.Timestamp(end) - pd.Timestamp(start)).total_seconds() / 86400.0


def _duration(days) -> str:
    """A length of time given in days, as a trader reads it: "57.0 days", "2 h 14 min"."""
    from engine.report.metrics import duration_text

    if days is None:
        return "n/a"
    text = duration_text(days, "days")
    return "1 day" if text == "1 days" else text


def _local_day(text, timezone: str | None) -> str:
    """The date of a summary's UTC timestamp in the strategy's timezone (the report's and the
    flags' dates: an ES bar of 20:00 on Sunday in New York is Sunday's, not Monday's in UTC)."""
    import pandas as pd

    if not text:
        return ""
    t = pd.Timestamp(str(text))
    if t.tzinfo is None or not timezone:
        return str(text)[:10]
    return f"{t.tz_convert(timezone):%Y-%m-%d}"


def _return_basis(trades) -> str:
    """What a trade's return is a share of (the journal's return_pct): a stock's or future's
    entry value, an option combo's margin (the most it can lose: a debit spread's debit)."""
    combos = sum(1 for t in trades if getattr(t, "legs", None))
    if not combos:
        return "of entry value"
    return "of the margin held (a combo's most loss)" if combos == len(trades) else \
        "of entry value (a combo's: of its margin)"


def _ended_early(result, timezone: str | None) -> list[str]:
    """A note for each traded symbol whose bars end well before the run's (5 or more of the
    longest symbol's bars after its last): it trades no more from then on, an open position in it
    stays at that last close, and an order decided there never goes."""
    import numpy as np
    import pandas as pd

    bars = {s: b for s, b in (getattr(result, "bars", None) or {}).items() if len(b)}
    if len(bars) < 2:
        return []
    longest = max(bars.values(), key=lambda b: int(b.end[-1]))
    held = {}
    for p in result.ledger.positions.values():
        held[p.symbol] = held.get(p.symbol, 0.0) + p.quantity

    def day(ns):
        return f"{pd.Timestamp(int(ns), tz='UTC').tz_convert(timezone or 'UTC'):%Y-%m-%d}"

    notes = []
    for symbol, b in sorted(bars.items()):
        after = len(longest.end) - int(np.searchsorted(longest.end, int(b.end[-1]), side="right"))
        if after < 5:
            continue
        position = (f"; its open position ({held[symbol]:g}) stays at that close, and what was decided there "
                    "never goes") if held.get(symbol) else ""
        notes.append(f"note: {symbol}'s bars end {day(b.start[-1])}, {after:,} bars before the run's last "
                     f"({day(longest.start[-1])}): it is not traded after that{position}")
    return notes


def _summary_text(result, summary: dict, journal_path: str | None, report_path: str | None) -> str:
    prep = result.prepared
    lines = []
    tz = summary.get("timezone") or getattr(prep, "timezone", None)
    start = _local_day(summary.get("start"), tz)
    end = _local_day(summary.get("end"), tz)
    bars, warmup = summary.get("bars", 0), summary.get("warmup_bars")
    periods, drawdowns = summary.get("return_periods") or 0, summary.get("drawdowns")
    lines.append(f"{prep.plan.name}: {_symbols_text(prep)} "
                 f"on {prep.bar} bars, {start} to {end} ({bars:,} bar{'s' * (bars != 1)}"
                 + (f", after {warmup:,} warm-up bar{'s' * (warmup != 1)}" if warmup else "") + ")")
    lines.extend(_ended_early(result, tz))
    lines.append("")
    bh = summary.get("buy_and_hold")
    # a benchmark whose bars start after the run's is measured from its first bar, and says so
    held_from = (f" from {_local_day(summary['buy_and_hold_from'], tz)}, where its bars start"
                 if summary.get("buy_and_hold_from") else "")
    days = _span_days(summary.get("start"), summary.get("end"))
    caveat = (f"; annualised from {days:.0f} day{'s' * (round(days) != 1)}: too short to mean much"
              if days is not None and days < SHORT_RUN_DAYS else "")
    rows = [
        ("Final equity", _num(summary.get("end_equity")), f"from {_num(summary.get('start_equity'))} starting cash"),
        ("Total return", _pct(summary.get("total_return")),
         f"buy & hold {summary.get('buy_and_hold_symbol')}: {_pct(bh)}{held_from}" if bh is not None else ""),
        ("Annualised return", _pct(summary.get("cagr")), f"volatility {_pct(summary.get('volatility'))}{caveat}"),
        ("Sharpe / Sortino / Calmar", " / ".join(_num(summary.get(k)) for k in ("sharpe", "sortino", "calmar")),
         (caveat[2:] if caveat else f"from {periods:,} "
          + ("daily" if summary.get("returns_basis") == "daily" else "bar") + f" return{'s' * (periods != 1)}")),
        ("Alpha / beta", f"{_pct(summary.get('alpha'))} / {_num(summary.get('beta'))}",
         f"against buy & hold {summary.get('buy_and_hold_symbol')}{held_from}{caveat}"
         if summary.get("beta") is not None else ""),
        ("Max drawdown", _pct(summary.get("max_drawdown")),
         f"longest under water {_duration(summary.get('max_drawdown_days') or 0)}, from "
         f"{_local_day(summary.get('max_drawdown_start'), tz)}" if summary.get("max_drawdown") else ""),
        ("Average drawdown", _pct(summary.get("average_drawdown")),
         f"{drawdowns:,} drawdown{'s' * (drawdowns != 1)}, {_duration(summary.get('average_drawdown_days'))} on average"
         if drawdowns else ""),
        ("Trades", f"{summary.get('trades', 0):,}",
         f"win rate {_pct(summary.get('win_rate'), 1)}, profit factor {_num(summary.get('profit_factor'))}"),
        ("Expectancy per trade", _num(summary.get("expectancy")),
         f"avg win {_num(summary.get('average_win'))}, avg loss {_num(summary.get('average_loss'))}"),
        ("SQN / Kelly", f"{_num(summary.get('sqn'))} / {_pct(summary.get('kelly'), 1)}",
         # (both are statistics of the trades: a handful of them says little)
         f"from {summary['trades']} trade{'s' * (summary['trades'] != 1)}: too few to size by" if 0 < (summary.get("trades") or 0) < 30 else ""),
        ("Best / worst trade", f"{_pct(summary.get('best_trade'))} / {_pct(summary.get('worst_trade'))}",
         f"average {_pct(summary.get('average_trade'))} {_return_basis(result.ledger.trades)}; "
         f"held {_duration(summary.get('average_trade_days'))}"
         f" on average, {_duration(summary.get('longest_trade_days'))} at most" if summary.get("trades") else ""),
        ("Exposure", _pct(summary.get("exposure"), 1), f"commission paid {_num(summary.get('commission'))}"),
    ]
    if summary.get("bad_bars_skipped"):
        rows.append(("Bad bars left out", f"{summary['bad_bars_skipped']:,}", "data.on_bad_bar: skip"))
    if summary.get("open_positions"):
        rows.append(("Open at the end", str(summary["open_positions"]), "marked to the last close"))
    if summary.get("blocked"):
        hint = f"qtrade why {journal_path or 'JOURNAL'}" + (f" --run {result.run_id}" if journal_path else "")
        exits = summary.get("exits_blocked") or 0

        def reasons(top, count):
            named = "; ".join(f"{n:,} {reason}" for reason, n in top)
            return (f"{named}{' ...' if sum(n for _, n in top) < count else ''}; " if named else "") + hint
        if summary["blocked"] > exits:
            rows.append(("Entries blocked", f"{summary['blocked'] - exits:,}",
                         reasons(summary.get("blocked_reasons") or [], summary["blocked"] - exits)))
        if exits:       # an exit that fired but could not go (a close not filled within its bound)
            rows.append(("Exits held back", f"{exits:,}", "each decided again at the next close: "
                         + reasons(summary.get("exits_blocked_reasons") or [], exits)))
    label = max(len(name) for name, _, _ in rows) + 2      # at least two spaces after the longest label
    width = max([20] + [len(value) for _, value, _ in rows])
    for name, value, note in rows:
        lines.append(f"  {name:<{label}}{value:>{width}}   {note}".rstrip())
    lines.append("")
    if journal_path:
        lines.append(f"journal: {journal_path} (run {result.run_id})")
    if report_path:
        lines.append(f"report:  {report_path}")
    return "\n".join(lines)


@main.command()
@click.argument("strategy", type=click.Path())
@click.option("--data", "data", type=click.Path(), help="Bars: a CSV/Parquet file or a folder of SYMBOL files "
              "(default: the strategy's data.source).")
@click.option("--chains", type=click.Path(), help="Option chain snapshots (an L2 or iVolatility CSV) for "
              "options strategies (default: the strategy's data.chains; none: chains are synthesised).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a param. Repeatable.")
@click.option("--from", "start", metavar="YYYY-MM-DD", callback=_iso_date, help="First day (inclusive).")
@click.option("--to", "end", metavar="YYYY-MM-DD", callback=_iso_date, help="Last day (inclusive).")
@click.option("--cash", type=float, callback=_positive_amount,
              help="Starting cash (default: the strategy's backtest.cash).")
@click.option("--journal", "journal_path", default="qtrade-journal.sqlite", show_default=True, type=click.Path(),
              help="SQLite journal the run is written to.")
@click.option("--report", "report_path", type=click.Path(), help="Also write the HTML report here.")
@click.option("--symbol", help="Symbol for the report's price chart (default: the most traded).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
def backtest(strategy, data, chains, sets, start, end, cash, journal_path, report_path, symbol, fmt, progress):
    """Backtest STRATEGY on historical bars: the same rules, risk limits and order logic as a live
    run, against a simulated broker; writes the journal and, with --report, an HTML report."""
    import time as _time

    from engine.diagnostics import DiagnosticError
    from engine.report.run_summary import summarize_result
    from engine.runtime import backtest as bt
    from engine.runtime.journal import JournalError

    started = _time.perf_counter()
    _journal_first(journal_path, report_path)
    try:
        prep = bt.prepare(strategy, _parse_sets(sets), data, start, end, cash, chains)
        _refuse_unfiltered_session(prep)
        _refuse_short_history(prep)
    except DiagnosticError as exc:
        _report_problems(exc, strategy)
    _report_warnings(prep)
    _report_skipped_bars(prep)
    _report_excluded(prep)
    _report_missing(prep)
    _check_window(prep, start, end)
    if symbol is not None and symbol.upper() not in prep.frames:
        raise click.UsageError(f"--symbol {_escaped(symbol)}: the run has no bars for it; "
                               f"it has {', '.join(sorted(prep.frames))}")
    symbol = symbol.upper() if symbol is not None else None
    bar = _Progress(progress and fmt == "text")
    try:
        result = bt.run(prep, progress=bar)
    finally:
        bar.done()
    summary = summarize_result(result)
    _write_journal(journal_path, lambda journal: (bt.write_journal(result, journal),
                                                  journal.finish_run(result.run_id, "finished", summary)))
    if report_path:
        from engine.report.html import write_report

        try:
            write_report(journal_path, report_path, run_id=result.run_id, symbol=symbol)
        except JournalError as exc:
            _safe_echo(f"qtrade: {exc}", err=True)
            sys.exit(EXIT_PROBLEMS)
    elapsed = _time.perf_counter() - started
    if fmt == "json":
        _safe_echo(json.dumps({"run_id": result.run_id, "journal": journal_path, "report": report_path,
                               "seconds": round(elapsed, 3), "timings": result.timings, "summary": summary},
                              indent=2, default=str))
    else:
        _safe_echo(_summary_text(result, summary, journal_path, report_path))
        _safe_echo(f"({elapsed:.2f} s)")


def _at_moment(ctx, param, value):
    """--at: a date (that day's close) or a date and time, YYYY-MM-DD[ HH:MM]."""
    import datetime as dt

    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            dt.date.fromisoformat(text)
        else:
            dt.datetime.strptime(text.replace("T", " "), "%Y-%m-%d %H:%M")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date or a date and time; write YYYY-MM-DD or "
                                 "'YYYY-MM-DD HH:MM'") from None
    return text.replace("T", " ")


@main.command()
@click.argument("scanner", type=click.Path())
@click.option("--at", "at", metavar="DATETIME", callback=_at_moment,
              help="Scan as of this close: YYYY-MM-DD (that day's close) or 'YYYY-MM-DD HH:MM', in the timezone "
                   "(default: the last bar of the data).")
@click.option("--data", "data", type=click.Path(), help="Bars: a folder of SYMBOL files (default: the scanner's "
              "data.source). A scanner whose source is IB's market scanner needs it: its universe's files are "
              "ranked, every name a candidate.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--report", "report_path", type=click.Path(), help="Also write the scan as an HTML page here.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a scanner param. Repeatable.")
def scan(scanner, at, data, fmt, report_path, sets):
    """Rank SCANNER's universe at one close: each name's rank, score, grade and class, and each
    factor's raw value, normalised score and contribution; the names not picked with the reason.

    SCANNER is a scanner file (kind: scanner), or a strategy whose scanner to run.
    """
    from engine.diagnostics import DiagnosticError
    from engine.report.scan import scan_csv, scan_data, scan_text, write_scan_report
    from engine.runtime.scanning import scan_document

    if report_path:
        from engine.report.html import report_path_problem

        problem = report_path_problem(report_path)
        if problem:
            _safe_echo(f"qtrade: --report {problem}", err=True)
            sys.exit(EXIT_USAGE)
    try:
        scanned = scan_document(scanner, _parse_sets(sets), data, at)
    except DiagnosticError as exc:
        if any(_flag_error(d) for d in exc.diagnostics):
            for d in exc.diagnostics:
                _safe_echo(d.format(), err=True)
            sys.exit(EXIT_USAGE)
        _report_problems(exc)
    result, e = scanned.result, scanned.at
    if scanned.note:
        _safe_echo(f"note: {scanned.note}", err=True)
    if fmt == "json":
        _safe_echo(json.dumps(scan_data(result, e, scanned.bar), indent=2, default=str))
    elif fmt == "csv":
        _safe_echo(scan_csv(result, e, scanned.bar).rstrip("\n"))
    else:
        _safe_echo(scan_text(result, e, scanned.bar))
    if report_path:
        write_scan_report(result, e, scanned.bar, report_path, str(scanner))
        if fmt == "table":
            _safe_echo(f"\nreport: {report_path}")


@main.command()
@click.argument("journal_path", metavar="JOURNAL", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(), help="Where to write the HTML file.")
@click.option("--run", "run_id", help="Run id (default: the newest run in the journal).")
@click.option("--symbol", help="Symbol for the price chart (default: the most traded).")
def report(journal_path, out_path, run_id, symbol):
    """Render one self-contained HTML report (works offline) from a JOURNAL."""
    from engine.report.html import UnknownSymbol, report_path_problem, write_report
    from engine.runtime.journal import JournalError

    problem = report_path_problem(out_path, journal_path)
    if problem:
        _safe_echo(f"qtrade: --out {problem}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        write_report(journal_path, out_path, run_id=run_id, symbol=symbol)
    except UnknownSymbol as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except JournalError as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)
    _safe_echo(f"report: {out_path}")


@main.command()
@click.argument("journal_path", metavar="JOURNAL", type=click.Path())
@click.option("--run", "run_id", help="Run id (default: the newest run in the journal).")
@click.option("--rule", "rule", help="Only this rule's decisions.")
def why(journal_path, run_id, rule):
    """Why a run did or did not trade: its decisions from the JOURNAL, grouped by rule, outcome
    and reason, with counts and the first and last time of each."""
    from engine.report.why import why_text
    from engine.runtime.journal import JournalError

    try:
        text = why_text(journal_path, run_id, rule)
    except JournalError as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)
    except LookupError as exc:
        _safe_echo(f"qtrade: --rule: {exc.args[0]}", err=True)
        sys.exit(EXIT_USAGE)
    _safe_echo(text)


def _describe_intent(info: dict) -> str:
    """A would-be order as a trader reads it: one line for the order, then its details."""
    from engine.orders.combos import debit_of, order_price

    intent = info["intent"]
    daily = (info["time"] - info["bar"]).total_seconds() >= 86_400 - 1
    when = info.get("when") or (f"{info['bar']:%Y-%m-%d} close" if daily else f"{info['time']:%Y-%m-%d %H:%M}")
    quote = info.get("quote")
    why = "; ".join(info.get("why") or [])
    why = f"rule '{info['rule']}' fired: {why}" if why else f"rule '{info['rule']}' fired"
    if quote is None:
        return f"{when}  {intent.describe()}\n    why: {why}"
    qty = info["quantity"]
    legs = ", ".join(f"{leg.action.upper()} {leg.ratio} {leg.right.upper()} {leg.strike:g} {leg.expiry}"
                     for leg in quote.legs)
    kind = "credit" if quote.credit >= 0 else "debit"
    prices = info["prices"]
    chase = info["chase"]
    plan = (f"limit {prices[0]:.2f}, then {', '.join(f'{p:.2f}' for p in prices[1:])} every {chase.every:g}s"
            if len(prices) > 1 else f"limit {prices[0]:.2f}" if prices else "no price within the floor")
    if chase.floor is not None:
        plan += f", floor {chase.floor:.2f}; cancel and confirm on timeout"
    margin = quote.margin * qty
    loss = quote.max_loss * qty
    risk = f"max loss {'unlimited' if loss == float('inf') else f'{loss:,.2f}'}, margin {margin:,.2f}"
    if len(prices) > 1 and loss != float("inf"):
        # the risk checks hold at the chase's least favourable price: said beside the mid's
        worst = min(prices) if intent.action == "sell" else max(prices)
        at_worst = quote.margin_at(-debit_of(worst, intent.action)) * qty
        if at_worst > loss + 1e-9:
            risk = f"max loss and margin {loss:,.2f} at mid, {at_worst:,.2f} if filled at the chase's last price " \
                f"{_price(worst)}"
    return (f"{when}  {intent.action.upper()} {qty} {info['symbol']} {info['order']} combo [{info['rule']}] {intent.tag}\n"
            f"    legs: {legs}\n"
            f"    price: {plan}\n"
            f"    {kind} {_price(abs(quote.credit))} at mid (natural {_price(order_price(quote.natural_debit(), quote.opening_action))}), "
            f"{risk}, underlying {quote.underlying:.2f}\n"
            f"    why: {why}")


@main.command()
@click.argument("strategy", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Print the orders it would send; send nothing.")
@click.option("--live", is_flag=True, help="Trade a live account (needs --broker ib). Nothing reaches a live "
              "account without this flag.")
@click.option("--broker", type=click.Choice(["sim", "ib"]), default="sim", show_default=True,
              help="sim: the simulator, fed with the strategy's data; ib: Interactive Brokers through ib_async.")
@click.option("--data", "data", type=click.Path(), help="Bars for the simulator (default: data.source).")
@click.option("--chains", type=click.Path(), help="Option chain snapshots for the simulator (an L2 or iVolatility "
              "CSV; default: the strategy's data.chains; none: chains are synthesised).")
@click.option("--days", type=click.IntRange(1, 3650), default=5, show_default=True,
              help="With --broker sim and no --from: replay the last N trading days of the data.")
@click.option("--from", "start", metavar="YYYY-MM-DD", callback=_iso_date,
              help="With --broker sim: first day replayed (inclusive; instead of --days).")
@click.option("--to", "end", metavar="YYYY-MM-DD", callback=_iso_date,
              help="With --broker sim: last day replayed (inclusive).")
@click.option("--cash", type=float, callback=_positive_amount,
              help="Starting cash (default: the strategy's backtest.cash).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a param. Repeatable.")
@click.option("--journal", "journal_path", default="qtrade-journal.sqlite", show_default=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the run's summary in the backtest's schema (the orders are not printed).")
@click.option("--partial-fills", "partial", type=click.FloatRange(0.01, 1.0, max_open=True), default=None,
              metavar="FRACTION", help="With --broker sim: rehearse partial fills, at most FRACTION of an order's "
              "quantity (whole units, at least 1) filling in one bar.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=None, metavar="N",
              help="With --broker sim: replay at N times real time on the wall clock (default: as fast as it goes).")
@click.option("--host", default=None, help="With --broker ib: TWS / IB Gateway host (default: broker.host, "
              "QTRADE_IB_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="With --broker ib: API port (default: "
              "broker.port, QTRADE_IB_PORT, 7497: TWS paper, or with --live 7496: TWS live; IB Gateway's are 4002 and "
              "4001).")
@click.option("--client-id", "client_id", type=click.IntRange(0, 999_999_999), default=None,
              help="With --broker ib: API client id (default: broker.client_id, QTRADE_IB_CLIENT_ID, 1).")
@click.option("--account", default=None, help="With --broker ib: the account code (default: the login's only account).")
@click.option("--yes", is_flag=True, help="With --live: confirm in advance (for scheduled jobs without a terminal).")
@click.option("--for", "for_", metavar="DURATION", default=None,
              help="With --broker ib: stop cleanly after this long (90s, 30m, 6h); default: until Ctrl-C or SIGTERM.")
@click.option("--take-over", "take_over", is_flag=True,
              help="With --broker ib: manage the position of orders of this strategy that IB holds and this journal "
                   "did not send (its journal was lost, or moved). Refused without it: another run may be trading it.")
def run(strategy, dry_run, live, broker, data, chains, days, start, end, cash, sets, journal_path, fmt, partial,
        speed, host, port, client_id, account, yes, for_, take_over):
    """Run STRATEGY: against the simulator (replaying its data bar by bar) or IB.

    The run goes through the trading kernel, the loop a live run uses: the plan is evaluated bar
    by bar, orders are sized and risk-checked when they are sent, the simulator fills them and
    reports fills, exits and protective stops act on the positions it holds. With --dry-run the
    same orders are printed (with the rule and the values it compared) and filled in a simulated
    wallet, and nothing is transmitted.
    """
    import time as _time

    from engine.diagnostics import DiagnosticError
    from engine.report.run_summary import summarize_result
    from engine.runtime import backtest as bt
    from engine.runtime import session

    if live and broker != "ib":
        raise click.UsageError("--live trades a real account and needs --broker ib")
    if live and dry_run:
        raise click.UsageError("--live and --dry-run contradict each other: choose one")
    ctx = click.get_current_context()
    given = {name for name in ("data", "chains", "days", "start", "end", "cash", "partial", "speed", "host", "port",
                               "client_id", "account", "yes", "for_", "take_over")
             if ctx.get_parameter_source(name).name != "DEFAULT"}
    flag = {"start": "--from", "end": "--to", "partial": "--partial-fills", "for_": "--for",
            "client_id": "--client-id", "take_over": "--take-over"}
    if broker == "ib":
        sim_only = sorted(given & {"data", "chains", "days", "start", "end", "cash", "partial", "speed"})
        if sim_only:
            raise click.UsageError(f"{', '.join(flag.get(n, '--' + n) for n in sim_only)}: only with --broker sim "
                                   "(with --broker ib the bars, the history and the cash are IB's)")
        return _run_on_ib(strategy, dry_run, live, sets, journal_path, fmt, host, port, client_id, account, yes, for_,
                          take_over)
    ib_only = sorted(given & {"host", "port", "client_id", "account", "yes", "for_", "take_over"})
    if ib_only:
        raise click.UsageError(f"{', '.join(flag.get(n, '--' + n) for n in ib_only)}: only with --broker ib")
    started = _time.perf_counter()
    if start and click.get_current_context().get_parameter_source("days").name != "DEFAULT":
        raise click.UsageError("--from and --days both say where the replay starts: give one of them")
    if start and end and start > end:
        raise click.UsageError(f"--from {start} is after --to {end}")
    _journal_first(journal_path, None)
    try:
        prep = bt.prepare(strategy, _parse_sets(sets), data, start, end, cash, chains=chains)
        _refuse_unfiltered_session(prep)
        _refuse_short_history(prep)
    except DiagnosticError as exc:
        _report_problems(exc, strategy)
    _check_window(prep, start, end)
    if not start:
        prep = bt.last_days(prep, days)
        if prep.days_held is not None and prep.days_held < days:
            _safe_echo(f"note: --days {days}: the data has {prep.days_held} trading day"
                       f"{'s' * (prep.days_held != 1)} ({prep.start:%Y-%m-%d} on); all of them are replayed",
                       err=True)
    _report_warnings(prep)
    _report_skipped_bars(prep)
    _report_excluded(prep)
    _report_missing(prep)
    printed = []
    text = fmt == "text"
    show = _order_printer(printed, text, prep.timezone, simulated=dry_run)

    mode = "dry-run" if dry_run else "paper (simulator)"
    if text:
        _safe_echo(f"{prep.plan.name}: {mode} from {prep.start:%Y-%m-%d} to "
                   f"{'the end of the data' if prep.end is None else f'{prep.end - pd_day():%Y-%m-%d}'}, "
                   f"{_symbols_text(prep)}\n")
    from engine.runtime.journal import new_run_id
    from engine.runtime.recorder import Recorder

    run_id = new_run_id()
    mode_name = "dry-run" if dry_run else "paper"
    import sqlite3

    from engine.runtime.journal import failure

    journal = _open_journal(journal_path)
    _say_dead_runs(journal)
    with journal:
        # journaled as it happens: every order before it is sent (a journal that cannot take it
        # stops the run before the order leaves), its fills by execution id; order refs continue
        # the strategy's sequence in this journal, so a restart never repeats one
        try:
            bt.start_run(prep, journal, mode_name, run_id, float(prep.settings.get("cash", 100_000)))
            prefix = f"qtrade:{prep.plan.name}:"
            result = session.simulate(prep, dry_run=dry_run, on_order=show, run_id=run_id, partial=partial,
                                      speed=speed, recorder=Recorder(journal, run_id),
                                      tags=(prefix, journal.last_order_seq(prefix)))
            summary = summarize_result(result)
            bt.write_journal(result, journal, mode=mode_name, incremental=True)
            journal.finish_run(result.run_id, "finished", summary)
        except sqlite3.Error as exc:
            _safe_echo(f"qtrade: {failure(journal_path, exc)}", err=True)
            sys.exit(EXIT_PROBLEMS)
        except BaseException as exc:     # Ctrl-C, a closed pipe, a bug: the journal says the run stopped
            with contextlib.suppress(sqlite3.Error):
                journal.finish_run(run_id, "interrupted" if isinstance(exc, (KeyboardInterrupt, BrokenPipeError))
                                   else "failed", {})
            raise
    if not text:
        waiting = [{"symbol": i["symbol"], "rule": i["rule"], "order": i["intent"].describe(), "why": i["why"],
                    "decided": i["when"], "quantity": i["intent"].quantity, "sized": i.get("sized"),
                    "refused": bool(i.get("refused"))} for i in result.runner.decided_at_end]
        _safe_echo(json.dumps({"run_id": result.run_id, "journal": journal_path, "report": None,
                               "seconds": round(_time.perf_counter() - started, 3), "timings": result.timings,
                               "summary": summary, "decided_for_the_next_open": waiting}, indent=2, default=str))
        return
    blocked = [d for d in result.runner.decisions if d.outcome == "blocked"]
    errors = getattr(result.runner, "errors", [])
    waiting = result.runner.decided_at_end
    if waiting:
        # what the rules decided at the last close goes at the next open, which the data does not
        # have: what a paper run started now would send first, so it is shown, never left out
        _safe_echo(f"\n{len(waiting)} order{'s' * (len(waiting) != 1)} decided at the last close "
                   f"({waiting[0]['when']}), to go at the next open, which the data does not have yet "
                   "(an entry is sized and risk-checked again then):")
        for info in waiting:
            _safe_echo("  " + _describe_order(info, prep.timezone).replace("\n", "\n  "))
    _safe_echo(f"{chr(10) if printed or waiting else ''}{len(printed)} order{'s' * (len(printed) != 1)} "
               f"{'would have been sent' if dry_run else 'sent to the simulator'}"
               f"{f' (and {len(waiting)} decided for the next open)' if waiting else ''}; "
               f"{_blocked_count(blocked)}")
    _say_blocked(blocked, journal_path, result.run_id, hint=False)
    for _, message in errors[:5]:
        _safe_echo(f"  error: {message}")
    if not printed:
        bars = sum(int((b.start >= (prep.start.value if prep.start is not None else 0)).sum())
                   for b in result.bars.values())
        _safe_echo(f"  no rule fired in the {bars:,} bar{'s' * (bars != 1)} replayed: --days N or --from DATE "
                   "replays more")
    if blocked:
        _safe_echo(f"  all the reasons: qtrade why {journal_path} --run {result.run_id}")
    for note in _ended_early(result, prep.timezone):
        _safe_echo(note)
    n_trades = len(result.ledger.trades)
    _safe_echo(f"{n_trades} round trip{'s' * (n_trades != 1)}, {len(result.ledger.positions)} open, "
               f"equity {result.final_equity:,.2f}" + (" (simulated wallet)" if dry_run else ""))
    _safe_echo(f"journal: {journal_path} (run {result.run_id})")


def _run_on_ib(strategy, dry_run, live, sets, journal_path, fmt, host, port, client_id, account, yes, for_,
               take_over=False):
    """`qtrade run --broker ib`: runtime/ibrun.py, with its messages and exit codes."""
    import contextlib
    import sqlite3

    from engine.diagnostics import DiagnosticError
    from engine.plan.build import load_strategy
    from engine.report.run_summary import summarize_result
    from engine.risk.limits import _seconds
    from engine.runtime.ibrun import RunRefused, run_ib
    from engine.runtime.journal import failure
    from engine.runtime.journaling import write_journal
    from engine.runtime.trading import SettingError, broker_section, connect_settings

    seconds = None
    if for_ is not None:
        try:       # a unit is asked for: '--for 10' is not taken as 10 seconds (or minutes) unsaid
            seconds = float(_seconds(for_)) if not str(for_).strip().replace(".", "", 1).isdigit() else None
        except ValueError:
            seconds = None
        if seconds is None or not seconds > 0 or not math.isfinite(seconds):
            raise click.UsageError(f"--for {for_!r}: expected a positive duration such as 90s, 30m or 6h")
    overrides = _parse_sets(sets)
    _journal_first(journal_path, None)
    try:
        doc, _ = load_strategy(strategy, overrides)
    except DiagnosticError as exc:
        _report_problems(exc, strategy)
    try:
        settings = connect_settings({"host": host, "port": port, "client_id": client_id, "account": account},
                                    broker_section(doc), live=live)
    except SettingError as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    text = fmt == "text"
    printed = []
    show = _order_printer(printed, text, doc.get(("schedule", "timezone")) or "America/New_York",
                          simulated=dry_run)

    def say(line: str) -> None:
        if text:
            _safe_echo(line)

    import logging

    # ib_async logs IB's errors as it gets them; the IB broker takes each from its errorEvent
    # (an order's outcome, or an alert journaled as a note), so the log would only say it twice
    ib_log = logging.getLogger("ib_async")
    if not any(isinstance(h, logging.NullHandler) for h in ib_log.handlers):
        ib_log.addHandler(logging.NullHandler())
    ib_log.propagate = False

    def confirm(question: str) -> bool:
        return click.confirm(question, default=False)

    journal = _open_journal(journal_path)
    _say_dead_runs(journal)
    from engine.brokers.ib.connection import ConnectError

    with journal:
        try:
            outcome = run_ib(strategy, connect=settings, overrides=overrides, journal=journal, dry_run=dry_run,
                             live=live, yes=yes, tty=sys.stdin.isatty(), confirm=confirm, seconds=seconds,
                             on_order=show, say=say, take_over=take_over)
        except ConnectError as exc:
            _safe_echo(f"qtrade: {exc}", err=True)
            sys.exit(EXIT_PROBLEMS)
        except RunRefused as exc:
            _safe_echo(f"qtrade: {exc}", err=True)
            sys.exit(exc.code)
        except DiagnosticError as exc:
            _report_problems(exc)
        except sqlite3.Error as exc:
            _safe_echo(f"qtrade: {failure(journal_path, exc)}", err=True)
            sys.exit(EXIT_PROBLEMS)
        result = outcome.result
        mode = "dry-run" if dry_run else ("live" if live else "paper")
        try:
            summary = summarize_result(result) if result.prepared.start is not None else {}
            write_journal(result, journal, mode=mode, incremental=True)
            journal.finish_run(outcome.run_id, "finished", {**summary, "stopped": outcome.stopped,
                                                             "figures": outcome.figures})
        except sqlite3.Error as exc:
            _safe_echo(f"qtrade: {failure(journal_path, exc)}", err=True)
            sys.exit(EXIT_PROBLEMS)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                journal.finish_run(outcome.run_id, "failed", {})
            raise
    kernel = outcome.kernel
    if not text:
        _safe_echo(json.dumps({"run_id": outcome.run_id, "journal": journal_path, "stopped": outcome.stopped,
                               "figures": outcome.figures, "unconfirmed_cancels": outcome.unconfirmed,
                               "summary": summary}, indent=2, default=str))
        return
    _safe_echo(f"\nstopped: {outcome.stopped}; {len(printed)} order{'s' * (len(printed) != 1)} "
               f"{'would have been sent (nothing was transmitted)' if dry_run else 'sent to IB'}; "
               f"{len(kernel.ledger.trades)} round trip{'s' * (len(kernel.ledger.trades) != 1)}, "
               f"{len(kernel.ledger.positions)} open")
    if outcome.totals:
        _safe_echo(f"  {outcome.totals}")
    if outcome.unconfirmed:
        _safe_echo(f"  not confirmed cancelled: {', '.join(outcome.unconfirmed)} (check TWS)")
    blocked = [d for d in kernel.decisions if d.outcome == "blocked"]
    if blocked:
        _safe_echo(_blocked_count(blocked))
    _say_blocked(blocked, journal_path, outcome.run_id, hint=True)
    for _, message in kernel.errors[:5]:
        _safe_echo(f"  error: {message}")
    _safe_echo(f"journal: {journal_path} (run {outcome.run_id})")


def _blocked_count(blocked: list) -> str:
    """How many entries were blocked, and the exits apart (an exit that could not go: a close not
    filled at the natural price, to be decided again)."""
    exits = sum(d.kind == "exit" for d in blocked)
    entries = len(blocked) - exits
    return f"{entries} entr{'ies' if entries != 1 else 'y'} blocked" + \
        (f", {exits} exit{'s' * (exits != 1)} held back" if exits else "")


def _say_blocked(blocked: list, journal_path: str, run_id: str, hint: bool) -> None:
    """The last few reasons entries (or exits) were blocked, each once (with how many times it
    recurred), what is left unsaid, and with `hint` where the journal has them all."""
    from engine.report.why import reason_pattern, value_range

    seen: dict[tuple, list] = {}
    for d in blocked:
        # one reason in different numbers ("credit = 0.185: 0.185 >= 0.2 no", "credit = 0.175: ...")
        # is one line: the most recent wording, how many times, and the range the value took
        key = (d.kind, d.rule, d.symbol, reason_pattern(d.reason))
        seen[key] = seen.pop(key, []) + [d.reason]          # re-inserted: the most recent last
    shown = list(seen.items())[-5:]
    for (kind, rule, symbol, _), reasons in shown:
        times = f"{len(reasons)} times" if len(reasons) > 1 else ""
        spread = value_range(set(reasons))
        times += f", {spread}" if spread else ""
        _safe_echo(f"  blocked {'exit ' if kind == 'exit' else ''}{rule!r} on {symbol}: {reasons[-1]}"
                   + (f" ({times})" if times else ""))
    rest = len(blocked) - sum(len(reasons) for _, reasons in shown)
    if rest:
        _safe_echo(f"  ... and {rest} more, for {len(seen) - len(shown)} other reason"
                   f"{'s' * (len(seen) - len(shown) != 1)}")
    if blocked and hint:
        _safe_echo(f"  all the reasons: qtrade why {journal_path} --run {run_id}")


def _price(value: float) -> str:
    """A price with two decimals, or as many more (up to four) as it has: a mid of 0.235 is not
    printed as 0.23 beside a why that says 0.235, and a price read from a file as 217.559998 is
    217.56."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.partition(".")[2]))


def _order_printer(printed: list, text: bool, timezone: str, simulated: bool = False):
    """The kernel's on_order for `run`: each order kept in `printed` and, in text mode, printed as
    a trader reads it (a combo with its legs and chase plan); what became of it (its fill, or why
    not) on its own line. `simulated`: a dry run, whose fills are its simulated wallet's."""
    def show(info: dict) -> None:
        kind = info.get("kind")
        if kind == "outcome":       # with its time: it may come long after the order line above it
            if text:
                said = info["text"]
                if simulated:       # nothing was at the broker to confirm a cancel
                    said = said.replace("cancelled, cancel confirmed", "simulated cancel")
                _safe_echo(f"    -> {info['tag']}: {said}" + (f" ({info['when']})" if info.get("when") else ""))
            return
        if kind == "fill":
            if text:
                _safe_echo(f"    -> {info['tag']}: {_describe_fill(info, simulated)}")
            return
        printed.append(info)
        if text:
            _safe_echo(_describe_intent(info) if info.get("quote") is not None else _describe_order(info, timezone))
    return show


def _describe_fill(info: dict, simulated: bool) -> str:
    """An order's fill as a trader reads it: how much at what average price and when, the
    commission, and for a close the round trip's P&L (net of both commissions)."""
    quantity, ordered = info["quantity"], info["ordered"]
    done = f"{quantity:g}" if quantity >= ordered - 1e-9 else f"{quantity:g} of {ordered:g}"
    contract = f" {info['contract']}" if info.get("contract") else ""
    line = f"{'simulated fill' if simulated else 'filled'} {done}{contract} at {_price(info['price'])}"
    if info.get("when"):
        line += f" ({info['when']})"
    if info.get("how"):
        line += f" {info['how']}"
    commission, pending = info.get("commission") or 0.0, info.get("commission_pending")
    if pending:     # the venue reports it after the fill (IB's CommissionReport)
        line += f", commission {commission:,.2f} so far, the rest to come" if commission else \
            ", commission not reported yet"
    elif commission:
        line += f", commission {commission:,.2f}"
    if info.get("pnl") is not None:
        line += f"; round trip P&L {info['pnl']:+,.2f}" + (" before the commission still to come" if pending else "")
    return line


def _open_journal(journal_path: str):
    """The journal a command writes to, or one line saying why it cannot be opened (exit 1)."""
    from engine.runtime.journal import Journal, JournalError

    try:
        return Journal(journal_path)
    except JournalError as exc:
        _safe_echo(f"qtrade: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)


def _say_dead_runs(journal) -> None:
    """The runs of this journal whose process is gone (killed with -9, crashed) are marked
    interrupted before a new run starts, and said (on stderr: a --format json output stays whole)."""
    import sqlite3

    from engine.runtime.journal import failure, shown_time

    try:
        dead = journal.dead_runs()
    except sqlite3.Error as exc:
        _safe_echo(f"qtrade: {failure(journal.path, exc)}", err=True)
        sys.exit(EXIT_PROBLEMS)
    for run in dead:
        _safe_echo(f"note: the {run['mode']} run {run['run_id']} of {run['strategy']} (started "
                   f"{shown_time(run['started_at'])}) did not close: its process "
                   f"(pid {run['pid']} on this machine) is gone, killed or crashed. It is marked interrupted in "
                   f"the journal", err=True)


def pd_day():
    import pandas as pd

    return pd.Timedelta(days=1)


def _describe_order(info: dict, timezone: str) -> str:
    """An order the kernel sends, as a trader reads it: when, the order, the rule and why."""
    import pandas as pd

    from dataclasses import replace

    intent = info["intent"]
    if info.get("role") == "combo_exit":      # a BAG order closing the combo: its price is a debit or credit
        intent = replace(intent, symbol=f"{intent.symbol} {info['order']} combo")
    elif info.get("contract") and info["contract"] != intent.symbol:     # a futures root: the contract it goes to
        intent = replace(intent, symbol=f"{intent.symbol} ({info['contract']})")
    when = pd.Timestamp(info["time"], tz="UTC").tz_convert(timezone)
    stamp = info.get("when") or f"{when:%Y-%m-%d %H:%M}"
    line = f"{stamp}  {intent.describe()}"
    why = info.get("why")
    if info.get("role") in ("stop", "target"):     # a protective order: it rests until its level is touched
        line += (f"\n    why: the {info['role']} of rule '{info['rule']}' for the open position"
                 + (f" ({intent.reason})" if intent.reason else ""))
    elif why:
        line += f"\n    why: rule '{info['rule']}' fired: {why}" + (f" ({intent.reason})" if intent.reason else "")
    elif intent.reason:
        line += f"\n    why: {intent.reason}"
    if info.get("sized"):       # an entry decided at the last close: its size at that close's price
        line += f"\n    size: {info['sized']}"
    prices = info.get("prices") or []
    if info.get("role") == "combo_exit" and len(prices) > 1:     # a close's chase, as an entry's is shown
        line += (f"\n    price: limit {_price(prices[0])}, then {', '.join(_price(p) for p in prices[1:])} every "
                 f"{info['every']:g}s; if none fills, cancel, confirm, and close at the natural price")
    return line


@main.command("gateway-sim")
@click.option("--port", type=click.IntRange(0, 65535), default=7497, show_default=True, help="TCP port (0: any free one).")
@click.option("--data", "data", type=click.Path(), help="Bars to replay (default: the bundled sample, strategies/data).")
@click.option("--account", default="DU1234567", show_default=True, help="The simulated account code.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Simulated seconds per wall second.")
@click.option("--scenario", type=click.Path(), help="YAML list of timed fault steps.")
@click.option("--control-port", type=click.IntRange(0, 65535), help="Also take line-based JSON commands here.")
@click.option("--start", metavar="'YYYY-MM-DD HH:MM'", help="Simulated start, New York time (default: 09:30 on "
              "the last day of the intraday data).")
@click.option("--chains", type=click.Path(), help="Option chain snapshots (an L2 or iVolatility CSV) to quote "
              "options from instead of synthesising them.")
def gateway_sim(port, data, account, speed, scenario, control_port, start, chains):
    """Run a local IB Gateway simulator that ib_async connects to (faults on command)."""
    import gatewaysim

    sys.exit(gatewaysim.main(port=port, data=data, account=account, speed=speed, scenario=scenario,
                             control_port=control_port, start=start, chains=chains))


@main.command()
@click.argument("strategy", type=click.Path())
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First day (default: today).")
@click.option("--days", type=click.IntRange(1, 3660), default=14, show_default=True, help="How many calendar days.")
@click.option("--order", "order_name", help="Only this order template (default: every options order).")
def expiries(strategy, start, days, order_name):
    """Preview the expiry each options order of STRATEGY resolves to, day by day, on its
    underlying's exchange calendar (holidays and early closes included)."""
    import datetime as dt

    from engine.diagnostics import DiagnosticError
    from engine.market.expiry import preview
    from engine.plan.build import load_strategy
    from engine.check.model import instrument

    try:
        doc, ws = load_strategy(strategy)
    except DiagnosticError as exc:
        _report_problems(exc, strategy)
    try:
        first = dt.date.fromisoformat(start) if start else dt.date.today()
    except ValueError:
        raise click.UsageError(f"--from expects YYYY-MM-DD, got {start!r}")
    orders = {name: spec for name, spec in (doc.get(("orders",)) or {}).items()
              if "legs" in spec and (order_name is None or name == order_name)}
    if not orders:
        raise click.UsageError(f"no options order{f' named {order_name!r}' if order_name else ''} in {strategy}")
    inst = ws.instruments_for(doc)
    for name, spec in orders.items():
        underlying = spec.get("underlying") or doc.get(("underlying",)) or (doc.get(("universe",)) or [None])[0]
        root = ((inst.get(("roots",)) or {}).get(underlying) or {}) if inst else {}
        calendar = instrument(ws, doc, underlying).calendar or "NYSE"
        cycle = (root.get("options") or {}).get("expiries", "weekly")
        rule = spec.get("expiry")
        _safe_echo(f"{name}: expiry {json.dumps(rule) if isinstance(rule, dict) else rule} on {underlying} "
                   f"({calendar}, {cycle} expiries)")
        for day, expiry in preview(rule, first, days, calendar, cycle):
            if isinstance(expiry, str):
                _safe_echo(f"  {day} {day:%a}  -> none: {expiry.split(': ', 1)[-1]}")
            else:
                lag = (expiry - day).days
                _safe_echo(f"  {day} {day:%a}  -> {expiry} {expiry:%a}  ({lag} day{'s' * (lag != 1)})")


@main.command()
@click.argument("name", required=False)
def functions(name: str | None) -> None:
    """List the expression language's functions, or show one in full."""
    from engine.dsl import registry

    if name:
        fn = registry.lookup(name)
        if fn is None:
            import difflib

            close = difflib.get_close_matches(name, registry.all_names(), n=1)
            raise click.UsageError(f"unknown function {name!r}" + (f" (did you mean '{close[0]}'?)" if close else ""))
        _safe_echo(f"{fn.signature}\n    {fn.doc}\n    returns: {fn.returns}; source: {fn.source}")
        return
    for fname in sorted(registry.FUNCTIONS):
        fn = registry.FUNCTIONS[fname]
        _safe_echo(f"{fn.signature:<44} {fn.doc}")
    aliases = ", ".join(f"{a} = {t}" for a, t in sorted(registry.ALIASES.items()))
    _safe_echo(f"\naliases: {aliases}")


def entry() -> None:
    """The `qtrade` console script. When a command is done, the objects still alive are frozen
    out of the garbage collector: the interpreter's final full collection would otherwise walk
    every one of them (about 0.2 s after a million-bar backtest) just before the process ends."""
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    entry()

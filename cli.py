"""qtrade's command line: parse options, call the engine, print, set the exit code.

Exit codes: 0 success (warnings allowed), 1 problems found in the user's files, 2 usage error.
A traceback is a bug; `--debug` shows one, otherwise bad input is always a message.
"""

from __future__ import annotations

import json
import os
import sys

import click

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _safe_echo(text: str, err: bool = False) -> None:
    """Print, degrading characters the console cannot encode (old Windows consoles crash)."""
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


def _version() -> str:
    """The installed distribution's version; a source checkout that was never installed has none."""
    from importlib import metadata

    try:
        return metadata.version("qtrade")
    except metadata.PackageNotFoundError:
        return "(not installed: running from a source tree)"


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
            _safe_echo("    this is a bug in qtrade; rerun with --debug for the traceback", err=True)
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
    if any(d.path == "--set" or d.message == "no such file or directory" for d in report.errors):
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_PROBLEMS if report.errors else EXIT_OK)


@main.command()
@click.argument("kind", type=click.Choice(["strategy", "universe", "instruments", "scanner", "risk"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a document KIND (for editors: yaml-language-server, VS Code)."""
    from engine.config.schema import schema_text

    _safe_echo(schema_text(kind).rstrip())


def _report_problems(exc) -> None:
    for d in exc.diagnostics:
        _safe_echo(d.format(), err=True)
    n = sum(1 for d in exc.diagnostics if d.is_error)
    _safe_echo(f"{n} error{'s' * (n != 1)}: nothing was run", err=True)
    sys.exit(EXIT_PROBLEMS)


@main.command()
@click.argument("strategy", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a param. Repeatable.")
def explain(strategy: str, fmt: str, sets: tuple[str, ...]) -> None:
    """Print the compiled Plan of STRATEGY: its nodes (shared ones once), warm-up, rules and the
    inputs and history a run must load."""
    from engine.diagnostics import DiagnosticError
    from engine.plan.build import plan_from_file, summary

    try:
        plan = plan_from_file(strategy, _parse_sets(sets))
    except DiagnosticError as exc:
        _report_problems(exc)
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


if __name__ == "__main__":  # pragma: no cover
    main()

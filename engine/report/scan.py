"""`qtrade scan`'s output: one scan of a scanner as a ranked table (text), JSON, CSV, or a
self-contained HTML page with each name's factor contributions as bars and its class.

The table has, for each scored name, its rank, score, grade and class, and for each factor
its raw value, its normalised score and its contribution to the score (points of the 100);
then the names not picked with the reason each was not, names without data in one line.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import jinja2
import pandas as pd

from ..scanner.result import ScanResult

TEMPLATES = Path(__file__).resolve().parent / "templates"
COLOURS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d")


def _raw(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def scan_data(result: ScanResult, e: int, bar: str) -> dict:
    """The scan as plain data (`--format json`)."""
    spec = result.spec
    time = int(result.times[e]) if e >= 0 else None
    rows = result.rows(e)
    return {
        "scanner": spec.name,
        "at": pd.Timestamp(time, tz="UTC").tz_convert(result.timezone).isoformat() if time is not None else None,
        "when": result.when(time) if time is not None else None,
        "bar": bar,
        "timezone": result.timezone,
        "universe": len(result.symbols),
        "picked": sum(r["picked"] for r in rows),
        "explanation": result.explanation(e),
        "min_score": spec.min_score,
        "top": spec.top,
        "factors": [{"name": f.name, "weight": f.weight, "normalise": f.normalise, "invert": f.invert,
                     "clip": list(f.clip) if f.clip else None, "description": f.description} for f in spec.factors],
        "grades": dict(spec.grades),
        "classes": [c.label for c in spec.classes],
        "rows": rows,
    }


def scan_text(result: ScanResult, e: int, bar: str) -> str:
    """The ranked table and the reasons of the others."""
    spec = result.spec
    data = scan_data(result, e, bar)
    when = f"scanned at {data['when']}" if data["when"] else "no scan: no bar of the universe had closed by then"
    lines = [f"{spec.name}: {len(result.symbols)} symbols on {bar} bars, {when} ({result.timezone})",
             data["explanation"], ""]
    rows = data["rows"]
    scored = [r for r in rows if r["rank"] is not None]
    others = [r for r in rows if r["rank"] is None]
    if scored:
        cls_w = max([len(r["class"]) for r in scored] + [5])
        sym_w = max([len(r["symbol"]) for r in scored] + [6])
        head = f"{'rank':>4}  {'symbol':<{sym_w}}  {'score':>5}  {'grade':<5}  {'class':<{cls_w}}"
        cells = []
        for f in spec.factors:
            title = f"{f.name} {f.weight * 100 / spec.weight_sum:g}%"
            cells.append(max(len(title), 21))
            head += f"  {title:>{cells[-1]}}"
        lines.append(head)
        sub = f"{'':>4}  {'':<{sym_w}}  {'':>5}  {'':<5}  {'':<{cls_w}}"
        for width in cells:
            sub += f"  {f'{chr(32) * 5}raw  score   pts':>{width}}"
        lines.append(sub)
        for r in scored:
            line = (f"{r['rank']:>4}  {r['symbol']:<{sym_w}}  {r['score']:>5.1f}  {r['grade'] or '-':<5}  "
                    f"{r['class'] or '-':<{cls_w}}")
            for f, width in zip(spec.factors, cells):
                v = r["factors"][f.name]
                cell = f"{_raw(v['raw']):>8} {v['score']:>6.2f} {v['contribution']:>5.1f}"
                line += f"  {cell:>{width}}"
            if not r["picked"]:
                line += f"   ({r['reason']})"
            lines.append(line)
    else:
        lines.append("no name was scored")
    unscored = [r for r in others if r["status"] != "no data"]
    missing = [r for r in others if r["status"] == "no data"]
    if unscored or missing:
        lines.append("")
        lines.append("not scored:")
        width = max([len(r["symbol"]) for r in unscored] + [6])
        for r in unscored:
            lines.append(f"  {r['symbol']:<{width}}  {r['reason']}")
        if missing:
            names = ", ".join(r["symbol"] for r in missing)
            where = f" in {result.source}" if result.source else ""
            lines.append(f"  {len(missing)} with no data (no bars{where}): {names}")
    return "\n".join(lines)


def scan_csv(result: ScanResult, e: int, bar: str) -> str:
    """One row per symbol: rank, status, score, grade, class, each factor's raw, score and
    contribution, the reason."""
    spec = result.spec
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["rank", "symbol", "status", "picked", "score", "grade", "class"]
    for f in spec.factors:
        head += [f"{f.name}_raw", f"{f.name}_score", f"{f.name}_contribution"]
    writer.writerow(head + ["reason"])
    for r in result.rows(e):
        row = [r["rank"] if r["rank"] is not None else "", r["symbol"], r["status"], "yes" if r["picked"] else "no",
               f"{r['score']:.6g}" if r["score"] is not None else "", r["grade"], r["class"]]
        for f in spec.factors:
            v = r["factors"][f.name]
            row += ["" if v[k] is None else f"{v[k]:.6g}" for k in ("raw", "score", "contribution")]
        writer.writerow(row + [r["reason"]])
    return out.getvalue()


def scan_html(result: ScanResult, e: int, bar: str, source_file: str = "") -> str:
    """The scan as one self-contained HTML page: the ranking with each name's factor
    contributions as stacked bars (points of the 100), its grade and class, and the reasons of
    the names not picked."""
    data = scan_data(result, e, bar)
    spec = result.spec
    colours = {f.name: COLOURS[i % len(COLOURS)] for i, f in enumerate(spec.factors)}
    rows = data["rows"]
    scored = [r for r in rows if r["rank"] is not None]
    best = max([100.0] + [r["score"] for r in scored if r["score"] is not None])
    for r in scored:
        left, bars = 0.0, []
        for f in spec.factors:
            pts = r["factors"][f.name]["contribution"] or 0.0
            width = max(pts, 0.0) / best * 100.0
            bars.append({"factor": f.name, "left": left, "width": width, "colour": colours[f.name], "points": pts,
                         "score": r["factors"][f.name]["score"], "raw": _raw(r["factors"][f.name]["raw"])})
            left += width
        r["bars"] = bars
    classes: dict[str, list[str]] = {}
    for r in scored:
        classes.setdefault(r["class"] or "(none)", []).append(r["symbol"])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("scan.html.j2").render(
        scan=data, spec=spec, colours=colours, scored=scored, classes=classes,
        others=[r for r in rows if r["rank"] is None and r["status"] != "no data"],
        missing=[r["symbol"] for r in rows if r["status"] == "no data"], source=result.source,
        source_file=source_file, generated=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"))


def write_scan_report(result: ScanResult, e: int, bar: str, out_path: str | Path, source_file: str = "") -> Path:
    from .html import ReportPathError, report_path_problem

    problem = report_path_problem(out_path)
    if problem:
        raise ReportPathError(problem)
    out = Path(out_path)
    out.write_text(scan_html(result, e, bar, source_file), encoding="utf-8")
    return out


__all__ = ["scan_csv", "scan_data", "scan_html", "scan_text", "write_scan_report"]

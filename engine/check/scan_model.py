"""The typed model of a scanner: what a checked scanner document (or a strategy's inline
`scanner:`) says, read once into frozen dataclasses. engine.scanner compiles and runs it; no
one after the checker reads the scanner's YAML or parses its expressions again.

A scanner ranks a universe at each scan: the prefilter keeps the names worth scoring, each
factor's raw value is normalised across the names that passed (rank, zscore, minmax or none,
then inverted and clipped if asked), the composite score is 100 x the weighted sum of the
normalised values (weights scaled to sum to 1 unless `normalise_weights: false`), names under
`min_score` drop out, the best `top` are the picks, each scored name gets the best grade it
reaches and the first class whose condition holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..config.documents import Document
from .model import DataSpec, Expr, universe_symbols
from .support import _duration


@dataclass(frozen=True)
class Factor:
    """One scoring factor: its raw expression (per symbol, per bar) and how it is scored."""

    name: str
    expr: Expr
    weight: float
    normalise: str = "rank"                   # rank | zscore | minmax | none
    invert: bool = False
    clip: tuple[float, float] | None = None
    description: str = ""


@dataclass(frozen=True)
class ScanClass:
    """A classification rule: the class a scored name gets when this is the first to hold."""

    label: str
    when: Expr


SCAN_CODES = ("TOP_PERC_GAIN", "TOP_PERC_LOSE", "MOST_ACTIVE", "HOT_BY_VOLUME")


@dataclass(frozen=True)
class IBScannerSource:
    """A scanner's candidates from IB's market scanner: what reqScannerSubscription is asked
    (scan code, instrument, location, rows) and its filters as IB's TagValue filter options
    (priceAbove, priceBelow, volumeAbove), in the order IB is sent them."""

    scan_code: str
    instrument: str = "STK"
    location: str = "STK.US.MAJOR"
    rows: int = 50
    filters: tuple[tuple[str, float], ...] = ()
    where: tuple = ()                          # the source's path in its document (for messages)

    def describe(self) -> str:
        text = f"IB's {self.scan_code} scanner ({self.instrument} {self.location}, {self.rows} rows"
        if self.filters:
            text += ", " + ", ".join(f"{k} {v:g}" for k, v in self.filters)
        return text + ")"


FILTER_TAGS = {"price_above": "priceAbove", "price_below": "priceBelow", "volume_above": "volumeAbove"}


def ib_scanner_source(body: Mapping[str, Any], where: tuple) -> IBScannerSource | None:
    """The typed source of a checked scanner body (None: its universe is the candidates)."""
    source = body.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("ib_scanner"), dict):
        return None
    ib = source["ib_scanner"]
    filters = tuple((FILTER_TAGS[k], float(v)) for k, v in (ib.get("filters") or {}).items()
                    if v is not None and k in FILTER_TAGS)
    return IBScannerSource(str(ib["scan_code"]), str(ib.get("instrument", "STK")),
                           str(ib.get("location", "STK.US.MAJOR")), int(ib.get("rows", 50)), filters,
                           tuple(where) + ("source", "ib_scanner"))


@dataclass(frozen=True)
class ScannerSpec:
    """A checked scanner. `prefix` is where it sits in its document: () for a scanner
    document, ("scanner",) inline in a strategy. `universe` is None for an inline scanner
    without one (the strategy's universe); `data` None means the bars of the strategy using it."""

    name: str
    doc: Document
    prefix: tuple
    universe: tuple[str, ...] | None
    data: DataSpec | None
    params: Mapping[str, Any]
    prefilter: Expr | None
    factors: tuple[Factor, ...]
    normalise_weights: bool = True
    min_score: float = 0.0
    top: int | None = None
    rescan: float | None = None               # seconds; None: every bar of the scan's data
    grades: tuple[tuple[str, float], ...] = ()  # best first
    classes: tuple[ScanClass, ...] = ()
    source: IBScannerSource | None = None     # candidates from IB's scanner, bounded by the universe

    @property
    def weight_sum(self) -> float:
        """What the weighted sum is divided by: the weights' total, or 1 when they are taken as given."""
        total = sum(f.weight for f in self.factors)
        return total if self.normalise_weights and total > 0 else 1.0

    def where(self, *path) -> tuple:
        """A path inside the scanner, as its document has it (for messages)."""
        return self.prefix + tuple(path)


@dataclass(frozen=True)
class ScannerExprs:
    """The checker's parsed trees of one scanner (where -> (tree, text)) and its params'
    values, kept in Workspace.checked so the scanner is built from them."""

    prefix: tuple
    parsed: Mapping[tuple, tuple[object, str]]
    params: Mapping[str, Any]


def scanner_spec(doc: Document, exprs: ScannerExprs) -> ScannerSpec:
    """The model of a checked scanner (a scanner document, or a strategy's inline scanner)."""
    p = exprs.prefix
    body = doc.get(p) or {}

    def expr(where: tuple) -> Expr | None:
        got = exprs.parsed.get(where)
        return None if got is None else Expr(where, got[1], got[0])

    factors = []
    for name, spec in (body.get("factors") or {}).items():
        clip = spec.get("clip")
        factors.append(Factor(name, expr(p + ("factors", name, "expr")), float(spec["weight"]),
                              spec.get("normalise", "rank"), bool(spec.get("invert", False)),
                              (float(clip[0]), float(clip[1])) if clip else None, str(spec.get("description", ""))))
    grades = sorted(((str(g), float(v)) for g, v in (body.get("grades") or {}).items()), key=lambda g: -g[1])
    classes = tuple(ScanClass(str(c["class"]), e) for i, c in enumerate(body.get("classes") or [])
                    if (e := expr(p + ("classes", i, "when"))) is not None)
    if p:       # inline: its universe (when it has one) is a list or a file the strategy refers to
        universe = _inline_universe(doc, p)
    else:       # a scanner file with a source may leave its universe to the strategy's
        universe = tuple(universe_symbols(doc)) if doc.get(("universe",)) is not None else None
    data = DataSpec.from_spec(body["data"]) if isinstance(body.get("data"), dict) else None
    rescan = body.get("rescan")
    top = body.get("top")
    return ScannerSpec(str(body.get("name") or doc.get(("name",)) or "scanner"), doc, p, universe, data,
                       dict(exprs.params), expr(p + ("prefilter",)) if "prefilter" in body else None,
                       tuple(factors), bool(body.get("normalise_weights", True)), float(body.get("min_score", 0)),
                       int(top) if top is not None else None, _duration(rescan) if rescan is not None else None,
                       tuple(grades), classes, ib_scanner_source(body, p))


def _inline_universe(doc: Document, p: tuple) -> tuple[str, ...] | None:
    universe = doc.get(p + ("universe",))
    if universe is None:
        return None
    if isinstance(universe, list):
        return tuple(str(s) for s in universe)

    class _View:        # universe_symbols reads `universe` and its file's refs at the top of a document
        def __init__(self):
            self.refs = {("universe",) + k[len(p) + 1:]: v for k, v in doc.refs.items()
                         if k[:len(p) + 1] == p + ("universe",)}

        def get(self, where, default=None):
            return doc.get(p + tuple(where), default)

    return tuple(universe_symbols(_View()))

"""Scanners: rank a universe by a weighted composite of normalised factors, classify, pick the top N.

The work is split as zipline's pipeline splits it, in one pass over the universe:

- compile (scanner/compile.py): the prefilter, every factor's raw expression and the bar-data
  parts of the class conditions become one Plan, so a term shared by several factors
  (`sma(volume, 20)`) is one node, computed once per symbol;
- evaluate (scanner/workspace.py): each symbol's bars through that Plan, vectorised over its
  whole history, then every needed value gathered into a time x symbol workspace at the scan
  times (each symbol's latest bar closed by then: no look-ahead, and a symbol whose latest bar
  is a bar or more old is stale);
- rank (scanner/rank.py): at every scan time at once, numpy over the symbol axis: the
  prefilter, normalisation across the names that passed, the weighted composite, min score,
  ranks, the top N, grades and classes (first match wins);
- explain (scanner/result.py): each name's status and the reason it was not picked, and the
  counts that explain an empty result ("0 passed the prefilter: 41 had volume < 1e6, ...");
- rescan as bars arrive (scanner/incremental.py): ScanState keeps every symbol's indicator
  state, and one new bar per symbol costs one step across the universe plus one cross-section.

The per-symbol evaluation is batched across the universe (engine/plan/batched.py: a symbols x
bars panel per node, an elementwise node computed only at the bars a scan reads).
"""

from .compile import ScanPlan, compile_scanner
from .incremental import ScanState
from .result import ScanResult
from .workspace import SymbolInput, run_scan

__all__ = ["ScanPlan", "ScanResult", "ScanState", "SymbolInput", "compile_scanner", "run_scan"]

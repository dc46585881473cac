"""The cross-section: at every scan time at once, numpy over the symbol axis of a time x symbol
workspace. Pure functions of arrays; `ok` masks say which cells (scan time, symbol) take part.

- `normalise`: a factor's raw values made comparable across the names that passed, per scan;
- `composite`: 100 x the weighted sum of the normalised factors;
- `ranks`: 1 = the best score at its scan (ties go to the symbol listed first);
- `grades` and `classes`: the best grade reached, the first class whose condition holds.
"""

from __future__ import annotations

import warnings

import numpy as np

NORMALISE = ("rank", "zscore", "minmax", "none")


def normalise(x: np.ndarray, ok: np.ndarray, how: str, invert: bool = False,
              clip: tuple[float, float] | None = None) -> np.ndarray:
    """The normalised score of every ok cell (NaN elsewhere), row by row (one row per scan):

    rank    percentile rank: the lowest 0, the highest 1, ties share their average; a lone name 0.5
    zscore  (x - mean) / std over the row (population std); all equal: 0
    minmax  (x - min) / (max - min); all equal: 0.5
    none    x

    then `invert` (1 - s for rank and minmax, -s otherwise) and `clip` to [lo, hi]."""
    if how not in NORMALISE:
        raise ValueError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALISE)}")
    x = np.where(ok, np.asarray(x, dtype=np.float64), np.nan)
    if how == "rank":
        s = percentile_rank(x, ok)
    elif how == "none":
        s = x
    else:
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)      # rows with no ok cell
            if how == "zscore":
                mean = np.nanmean(x, axis=1, keepdims=True)
                std = np.nanstd(x, axis=1, keepdims=True)
                s = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
            else:
                lo = np.nanmin(x, axis=1, keepdims=True)
                hi = np.nanmax(x, axis=1, keepdims=True)
                span = hi - lo
                s = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
        s = np.where(ok, s, np.nan)
    if invert:
        s = 1.0 - s if how in ("rank", "minmax") else -s
    if clip is not None:
        s = np.clip(s, clip[0], clip[1])
    return s


def percentile_rank(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(average rank - 1) / (n - 1) of each ok cell within its row; 0.5 when the row has one."""
    rows_n, cols = x.shape
    out = np.full(x.shape, np.nan)
    flat = np.flatnonzero(ok.ravel())
    if not len(flat):
        return out
    row = flat // cols
    val = x.ravel()[flat]
    order = np.lexsort((val, row))
    r, v, where = row[order], val[order], flat[order]
    n = len(r)
    starts_run = np.ones(n, dtype=bool)
    starts_run[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    run = np.cumsum(starts_run) - 1
    run_first = np.flatnonzero(starts_run)
    run_last = np.append(run_first[1:], n) - 1
    starts_row = np.ones(n, dtype=bool)
    starts_row[1:] = r[1:] != r[:-1]
    row_first = np.flatnonzero(starts_row)
    first_of = row_first[np.cumsum(starts_row) - 1]
    count = np.bincount(r, minlength=rows_n)[r]
    position = (run_first[run] + run_last[run]) / 2.0 - first_of      # 0-based average rank in its row
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(count > 1, position / np.maximum(count - 1, 1), 0.5)
    out.ravel()[where] = pct
    return out


def composite(scores: list[np.ndarray], weights: list[float], total: float) -> np.ndarray:
    """100 x sum(weight x score) / total: the 0-100 composite when every score is 0-1."""
    out = np.zeros(scores[0].shape) if scores else np.zeros((0, 0))
    for s, w in zip(scores, weights):
        out = out + w * s
    return 100.0 * out / total


def ranks(score: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The rank of every ok cell in its row by score, best first (1, 2, ...); ties go to the
    symbol listed first. NaN elsewhere."""
    rows_n, cols = score.shape
    out = np.full(score.shape, np.nan)
    flat = np.flatnonzero(ok.ravel())
    if not len(flat):
        return out
    row, col = flat // cols, flat % cols
    order = np.lexsort((col, -score.ravel()[flat], row))
    r = row[order]
    starts_row = np.ones(len(r), dtype=bool)
    starts_row[1:] = r[1:] != r[:-1]
    row_first = np.flatnonzero(starts_row)
    position = np.arange(len(r)) - row_first[np.cumsum(starts_row) - 1]
    out.ravel()[flat[order]] = position + 1.0
    return out


def grades(score: np.ndarray, ok: np.ndarray, levels: tuple[tuple[str, float], ...]) -> np.ndarray:
    """The best grade each ok cell's score reaches ('' when none, or not ok); levels best first."""
    width = max((len(g) for g, _ in levels), default=1)
    out = np.full(score.shape, "", dtype=f"<U{width}")
    left = ok.copy()
    for grade, minimum in levels:
        hit = left & (score >= minimum)
        out[hit] = grade
        left &= ~hit
    return out


def classes(conditions: list[np.ndarray], labels: list[str], ok: np.ndarray) -> np.ndarray:
    """The first class whose condition holds for each ok cell ('' when none, or not ok)."""
    width = max((len(c) for c in labels), default=1)
    out = np.full(ok.shape, "", dtype=f"<U{width}")
    left = ok.copy()
    for label, cond in zip(labels, conditions):
        hit = left & np.broadcast_to(np.asarray(cond, dtype=bool), ok.shape)
        out[hit] = label
        left &= ~hit
    return out

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
    """(average rank - 1) / (n - 1) of each ok cell within its row; 0.5 when the row has one.
    Rows are sorted on their own (the cells not ok last); a run of equal values shares the
    mean of its first and last position."""
    rows_n, n = x.shape
    out = np.full(x.shape, np.nan)
    if not ok.any():
        return out
    keyed = np.where(ok, x, np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")
    ordered = np.take_along_axis(keyed, order, axis=1)
    position = np.broadcast_to(np.arange(n), x.shape)
    starts = np.ones(x.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    count = ok.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(count > 1, (first + last) / 2.0 / np.maximum(count - 1, 1), 0.5)
    np.put_along_axis(out, order, pct, axis=1)
    return np.where(ok, out, np.nan)


def composite(scores: list[np.ndarray], weights: list[float], total: float) -> np.ndarray:
    """100 x sum(weight x score) / total: the 0-100 composite when every score is 0-1."""
    out = np.zeros(scores[0].shape) if scores else np.zeros((0, 0))
    for s, w in zip(scores, weights):
        out = out + w * s
    return 100.0 * out / total


def ranks(score: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The rank of every ok cell in its row by score, best first (1, 2, ...); ties go to the
    symbol listed first (a stable sort). NaN elsewhere."""
    out = np.full(score.shape, np.nan)
    if not ok.any():
        return out
    order = np.argsort(np.where(ok, -score, np.inf), axis=1, kind="stable")
    position = np.broadcast_to(np.arange(1.0, score.shape[1] + 1.0), score.shape)
    np.put_along_axis(out, order, position, axis=1)
    return np.where(ok, out, np.nan)


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

"""Inline SVG charts for the static report: equity line (with a benchmark line, on a linear or a
log scale), drawdown area, price with trade marks, a histogram.

Plain strings, no JavaScript and no external references, so a report opens offline in any
browser. Long series are thinned first (`thin`): at most about `MAX_POINTS` points per chart,
keeping each bucket's minimum and maximum so spikes and drawdowns stay visible. Every piece of
text that reaches the SVG goes through `esc`. Time axes are labelled in the timezone `tz` each
chart is given (the strategy's; UTC when None).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

MAX_POINTS = 2000
OHLC_MAX_BARS = 150        # up to this many bars the price chart draws OHLC bars, else a close line
MARKER_TITLES_MAX = 600    # up to this many trades each marker gets its own tooltip

WIDTH, HEIGHT = 960, 280
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 16, 28, 34


def esc(text: object) -> str:
    """Escape text for SVG/HTML content and attribute values (quotes included)."""
    return html.escape(str(text), quote=True)


# ---- thinning ----------------------------------------------------------------------------------

def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` of (x, y), in order: the points are cut into at most
    `(max_points - 2) // 2` consecutive buckets of equal length and each bucket keeps its lowest
    and highest y (plus the first and the last point overall). A series that is already short enough comes back unchanged."""
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    n = y.size
    if n <= max_points:
        return x, y
    buckets = max(1, (max_points - 2) // 2)
    size = -(-n // buckets)                              # ceil: equal buckets, the last one shorter
    buckets = -(-n // size)
    pad = buckets * size - n
    low = np.concatenate((np.where(np.isfinite(y), y, np.inf), np.full(pad, np.inf))).reshape(buckets, size)
    high = np.concatenate((np.where(np.isfinite(y), y, -np.inf), np.full(pad, -np.inf))).reshape(buckets, size)
    offsets = np.arange(buckets) * size
    keep = np.concatenate(([0, n - 1], offsets + low.argmin(axis=1), offsets + high.argmax(axis=1)))
    keep = np.sort(keep[keep < n])
    keep = keep[np.concatenate(([True], keep[1:] != keep[:-1]))]
    return x[keep], y[keep]


# ---- scales and ticks --------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """The plot area inside a chart and the data ranges mapped onto it."""
    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> float:
        return MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def px(self, x: np.ndarray | float) -> np.ndarray:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (np.asarray(x, dtype=float) - self.x0) / span * (self.right - self.left)

    def py(self, y: np.ndarray | float) -> np.ndarray:
        span = (self.y1 - self.y0) or 1.0
        return self.bottom - (np.asarray(y, dtype=float) - self.y0) / span * (self.bottom - self.top)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi] with about `count` ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))

    def ticks_for(step: float) -> list[float]:
        first = math.ceil(lo / step - 1e-9)
        last = math.floor(hi / step + 1e-9)
        return [round(k * step, 12) for k in range(first, last + 1)]

    candidates = [ticks_for(m * mag) for m in (10, 5, 2.5, 2, 1)]   # coarsest first wins ties
    ticks = min(candidates, key=lambda t: abs(len(t) - count))
    return ticks


_TIME_STEPS = [  # (pandas frequency, label format)
    ("10YS", "%Y"), ("5YS", "%Y"), ("2YS", "%Y"), ("YS", "%Y"), ("6MS", "%Y-%m"), ("3MS", "%Y-%m"),
    ("MS", "%Y-%m"), ("14D", "%m-%d"), ("7D", "%m-%d"), ("2D", "%m-%d"), ("D", "%m-%d"),
    ("6h", "%m-%d %H:%M"), ("3h", "%H:%M"), ("h", "%H:%M"), ("30min", "%H:%M"), ("15min", "%H:%M"),
    ("5min", "%H:%M"), ("min", "%H:%M"),
]


def time_ticks(t0: pd.Timestamp, t1: pd.Timestamp, most: int = 9) -> list[tuple[pd.Timestamp, str]]:
    """Calendar-aligned ticks between two times: the finest of years, months, days, hours or
    minutes that gives no more than `most` ticks, each with a label in the matching format."""
    if not t1 > t0:
        return [(t0, t0.strftime("%Y-%m-%d"))]
    best: list[tuple[pd.Timestamp, str]] = []
    chosen = ""
    for freq, fmt in _TIME_STEPS:
        try:
            ticks = pd.date_range(t0.ceil("min") if freq.endswith("min") else t0.normalize(), t1, freq=freq)
        except ValueError:
            continue
        ticks = ticks[(ticks >= t0) & (ticks <= t1)]
        if len(ticks) > most:
            break
        best = [(t, t.strftime(fmt)) for t in ticks]
        chosen = freq
    if best and chosen.endswith("D") and best[0][0] > t0 and best[0][0].normalize() != t0.normalize():
        # days from an intraday start (9:30, or a futures session's Sunday evening): that first
        # day's label at the start, where it is far enough from the next not to overlap
        spacing = (best[1][0] - best[0][0]) if len(best) > 1 else (t1 - t0)
        if best[0][0] - t0 >= spacing / 2:
            best.insert(0, (t0, t0.strftime("%m-%d")))
    if not best:
        best = [(t0, t0.strftime("%Y-%m-%d")), (t1, t1.strftime("%Y-%m-%d"))]
    return best


def _as_seconds(index: pd.DatetimeIndex | Sequence) -> np.ndarray:
    idx = pd.DatetimeIndex(index)
    return idx.as_unit("ns").asi8 / 1e9


def _path(xs: np.ndarray, ys: np.ndarray) -> str:
    """`M x y L x y ...` with one decimal; gaps (NaN) start a new sub-path."""
    if xs.size and np.isfinite(xs).all() and np.isfinite(ys).all():   # no gap: one formatting call
        both = np.empty(2 * xs.size)
        both[0::2], both[1::2] = xs, ys
        return ("M%.1f %.1f" + " L%.1f %.1f" * (xs.size - 1)) % tuple(both.tolist())
    parts: list[str] = []
    move = True
    for x, y in zip(xs.tolist(), ys.tolist()):
        if not (math.isfinite(x) and math.isfinite(y)):
            move = True
            continue
        parts.append(f"{'M' if move else 'L'}{x:.1f} {y:.1f}")
        move = False
    return " ".join(parts)


def break_gaps(x: np.ndarray, y: np.ndarray, factor: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with a NaN put between two points further apart in time than `factor` times their
    usual spacing (the median), so that a line is not drawn across a time with no data: the
    night and the weekend between two sessions of intraday bars. Daily bars' weekends and
    holidays (three or four times their spacing) stay joined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    gaps = _gap_ends(x, factor)
    if not gaps.size:
        return x, y
    return np.insert(x, gaps, np.nan), np.insert(y, gaps, np.nan)


def _gap_ends(x: np.ndarray, factor: float) -> np.ndarray:
    """The indices of the points that follow a gap: further from the point before than `factor`
    times the usual (median) spacing; none for fewer than 3 points."""
    if x.size < 3:
        return np.array([], dtype=int)
    step = np.diff(x)
    usual = float(np.median(step))
    return np.flatnonzero(step > factor * usual) + 1 if usual > 0 else np.array([], dtype=int)


def hold_gaps(x: np.ndarray, y: np.ndarray, factor: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with the value held across a gap in time (as break_gaps finds them: a night, a
    weekend of intraday bars): a point at the next time with the last value, so that the line
    runs flat through the time with no bars and moves at the next bar, rather than sloping across
    the night as if the account had changed through it. For equity and drawdown, which have a
    value through the night; a price has none (break_gaps)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    gaps = _gap_ends(x, factor)
    if not gaps.size:
        return x, y
    return np.insert(x, gaps, x[gaps]), np.insert(y, gaps, y[gaps - 1])


def _svg_open(width: int, height: int, title: str, css_class: str) -> str:
    return (f'<svg class="chart {esc(css_class)}" viewBox="0 0 {width} {height}" width="100%" '
            f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{esc(title)}">'
            f'<title>{esc(title)}</title>'
            f'<text class="chart-title" x="{MARGIN_LEFT}" y="18">{esc(title)}</text>')


def _local(t: pd.Timestamp, tz: str | None) -> pd.Timestamp:
    t = pd.Timestamp(t)
    t = t.tz_localize("UTC") if t.tz is None else t
    return t if tz is None else t.tz_convert(tz)


def _axes(frame: Frame, y_format: Callable[[float], str], t0: pd.Timestamp, t1: pd.Timestamp,
          tz: str | None = None, y_ticks: Sequence[tuple[float, float]] | None = None) -> str:
    """Grid, y labels, time ticks (in `tz`) and the two axis lines. `y_ticks`: (value, position
    in the frame's y units) pairs, for a scale that is not linear in the value (log)."""
    out = ['<g class="axes">']
    ticks = y_ticks if y_ticks is not None else [(v, v) for v in nice_ticks(frame.y0, frame.y1)]
    for v, at in ticks:
        y = float(frame.py(at))
        out.append(f'<line class="grid" x1="{frame.left:.1f}" x2="{frame.right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="ylabel" x="{frame.left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{esc(y_format(v))}</text>')
    for t, label in time_ticks(_local(t0, tz), _local(t1, tz)):
        x = float(frame.px(t.as_unit("ns").value / 1e9))
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom:.1f}" y2="{frame.bottom + 5:.1f}"/>'
                   f'<text class="xlabel" x="{x:.1f}" y="{frame.bottom + 18:.1f}" text-anchor="middle">'
                   f'{esc(label)}</text>')
    out.append(f'<line class="axis" x1="{frame.left:.1f}" x2="{frame.left:.1f}" y1="{frame.top:.1f}" y2="{frame.bottom:.1f}"/>'
               f'<line class="axis" x1="{frame.left:.1f}" x2="{frame.right:.1f}" y1="{frame.bottom:.1f}" y2="{frame.bottom:.1f}"/>')
    out.append("</g>")
    return "".join(out)


def _empty(title: str, css_class: str, message: str, width: int = WIDTH, height: int = 90) -> str:
    return (_svg_open(width, height, title, css_class) +
            f'<text class="empty" x="{width / 2:.0f}" y="{height / 2 + 10:.0f}" text-anchor="middle">'
            f'{esc(message)}</text></svg>')


def _padded(lo: float, hi: float, pad: float = 0.04) -> tuple[float, float]:
    if hi <= lo:
        d = abs(lo) * 0.01 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


def number_label(v: float) -> str:
    """Axis label for money-like values: 1.2M, 35k, 120, 0.25."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.4g}B"
    if a >= 1e6:
        return f"{v / 1e6:.4g}M"
    if a >= 1e4:
        return f"{v / 1e3:.4g}k"
    return f"{v:.6g}"


def percent_label(v: float) -> str:
    """Axis label for fractions: -0.05 -> "-5%", 0.025 -> "2.5%", -0.00002 -> "-0.002%" (ticks are
    round numbers: six significant figures keep a tiny range's ticks apart without float noise)."""
    x = v * 100
    text = "0" if abs(x) < 1e-12 else f"{x:.6g}"
    return text + "%"


# ---- charts ------------------------------------------------------------------------------------

def line_chart(series: pd.Series, *, title: str, css_class: str = "equity",
               y_format: Callable[[float], str] = number_label, width: int = WIDTH,
               height: int = HEIGHT, max_points: int = MAX_POINTS, tz: str | None = None) -> str:
    """A line chart of a time-indexed series (the equity curve) with y grid, time ticks and
    labels; thinned to `max_points`."""
    return equity_chart(series, None, title=title, css_class=css_class, y_format=y_format, width=width,
                        height=height, max_points=max_points, tz=tz)


def log_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Tick values for a log scale over [lo, hi] (both > 0): 1, 2, 5 x 10^k when the range
    spans more than a factor of 10 (thinned to about `count`), else the linear `nice_ticks`
    (over a narrow range a log scale looks linear)."""
    if not (lo > 0 and hi > lo):
        return nice_ticks(lo, hi, count)
    if hi / lo <= 10:
        return nice_ticks(lo, hi, count)
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo <= t <= hi]
    while len(ticks) > count + 2:
        decades = [t for t in ticks if math.isclose(10 ** round(math.log10(t)), t)]
        if len(decades) >= 2 and len(decades) < len(ticks):
            ticks = decades
        else:
            ticks = ticks[::2]
    return ticks


def equity_chart(series: pd.Series, benchmark: pd.Series | None, *, title: str, css_class: str = "equity",
                 names: tuple[str, str] = ("Strategy", "Buy & hold"), log: bool = False,
                 y_format: Callable[[float], str] = number_label, width: int = WIDTH, height: int = HEIGHT,
                 max_points: int = MAX_POINTS, tz: str | None = None) -> str:
    """The equity curve (`path.line`) and, when given, a benchmark curve on the same axes
    (`path.line.benchmark`, buy and hold from the same starting capital), with a legend naming
    both (`names`). `log`: a logarithmic y axis (every value must be positive; the caller checks
    `positive`), ticks from `log_ticks`. Each series is thinned to `max_points`."""
    series = series[np.isfinite(series.to_numpy(dtype=float))]
    if len(series) == 0:
        return _empty(title, css_class, "no data")
    lines = [series]
    if benchmark is not None:
        benchmark = benchmark[np.isfinite(benchmark.to_numpy(dtype=float))]
        if len(benchmark):
            lines.append(benchmark)
        else:
            benchmark = None
    thinned = [hold_gaps(*thin(_as_seconds(s.index), s.to_numpy(dtype=float), max_points)) for s in lines]
    lo = min(float(y.min()) for _, y in thinned)
    hi = max(float(y.max()) for _, y in thinned)
    x0 = min(float(x[0]) for x, _ in thinned)
    x1 = max(float(x[-1]) for x, _ in thinned)
    if log and lo > 0:
        ticks = log_ticks(*_padded_log(lo, hi))
        ylo, yhi = _padded_log(lo, hi)
        frame = Frame(width, height, x0, x1, math.log10(ylo), math.log10(yhi))
        y_ticks = [(v, math.log10(v)) for v in ticks if v > 0]
        to_y = np.log10
    else:
        lo, hi = _padded(lo, hi)
        frame = Frame(width, height, x0, x1, lo, hi)
        y_ticks, to_y = None, (lambda v: v)
    t0 = min(s.index[0] for s in lines)
    t1 = max(s.index[-1] for s in lines)
    out = [_svg_open(width, height, title + (" (log scale)" if log else ""), css_class),
           _axes(frame, y_format, t0, t1, tz, y_ticks)]
    if benchmark is not None:
        bx, by = thinned[1]
        out.append(f'<path class="line benchmark" d="{_path(frame.px(bx), frame.py(to_y(by)))}"/>')
    x, y = thinned[0]
    out.append(f'<path class="line" d="{_path(frame.px(x), frame.py(to_y(y)))}"/>')
    if benchmark is not None:
        right = frame.right
        out.append('<g class="legend">'
                   f'<line class="key strategy" x1="{right - 300:.1f}" x2="{right - 280:.1f}" y1="14" y2="14"/>'
                   f'<text class="legend" x="{right - 275:.1f}" y="18">{esc(names[0])}</text>'
                   f'<line class="key benchmark" x1="{right - 150:.1f}" x2="{right - 130:.1f}" y1="14" y2="14"/>'
                   f'<text class="legend" x="{right - 125:.1f}" y="18">{esc(names[1])}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _padded_log(lo: float, hi: float, pad: float = 0.04) -> tuple[float, float]:
    """[lo, hi] widened by `pad` of its length in log space (both > 0)."""
    a, b = math.log10(lo), math.log10(hi)
    d = (b - a) * pad if b > a else 0.005
    return 10 ** (a - d), 10 ** (b + d)


def positive(*series: pd.Series | None) -> bool:
    """Whether every finite value of the series is above zero (a log scale can show them)."""
    for s in series:
        if s is None:
            continue
        v = s.to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size and not v.min() > 0:
            return False
    return True


def histogram(values: Sequence[float] | np.ndarray, *, title: str, css_class: str = "histogram",
              x_format: Callable[[float], str] = number_label, width: int = 640, height: int = 260,
              most_bins: int = 40) -> str:
    """A histogram of `values` (the trades' P&L) over a range that always includes zero: about
    sqrt(N) bins (at least 5, at most `most_bins`) of a round width with zero on a bin edge, so
    losses (`rect.bin.loss`, left of zero) and gains (`rect.bin.win`) never share a bar; a bin
    is [lo, hi) and the last one includes its upper edge (a bar that ends at zero is a loss bar). Each bar carries `data-lo`, `data-hi`
    and `data-count` and a tooltip; the counts add up to the finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return _empty(title, css_class, "no trades")
    edges = histogram_edges(v, most_bins)
    counts, _ = np.histogram(v, bins=edges)
    frame = Frame(width, height, float(edges[0]), float(edges[-1]), 0.0, float(max(1, counts.max())) * 1.08)
    out = [_svg_open(width, height, title, css_class)]
    out.append('<g class="axes">')
    for c in nice_ticks(0, float(counts.max()), 4):
        if c != int(c):
            continue
        y = float(frame.py(c))
        out.append(f'<line class="grid" x1="{frame.left:.1f}" x2="{frame.right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="ylabel" x="{frame.left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{int(c)}</text>')
    step = max(1, math.ceil((len(edges) - 1) / 10))     # at most about 10 edge labels
    for k in range(0, len(edges), step):
        x = float(frame.px(edges[k]))
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom:.1f}" y2="{frame.bottom + 5:.1f}"/>'
                   f'<text class="xlabel" x="{x:.1f}" y="{frame.bottom + 18:.1f}" text-anchor="middle">'
                   f'{esc(x_format(float(edges[k])))}</text>')
    out.append(f'<line class="axis" x1="{frame.left:.1f}" x2="{frame.right:.1f}" y1="{frame.bottom:.1f}" '
               f'y2="{frame.bottom:.1f}"/></g>')
    out.append('<g class="bins">')
    for lo, hi, n in zip(edges[:-1].tolist(), edges[1:].tolist(), counts.tolist()):
        if not n:
            continue
        x0, x1 = float(frame.px(lo)), float(frame.px(hi))
        y = float(frame.py(n))
        kind = "loss" if hi <= 0 else "win"
        out.append(f'<rect class="bin {kind}" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(0.5, x1 - x0 - 1):.1f}" '
                   f'height="{frame.bottom - y:.1f}" data-lo="{lo!r}" data-hi="{hi!r}" data-count="{n}">'
                   f'<title>{n} trade{"s" * (n != 1)} from {esc(x_format(lo))} to {esc(x_format(hi))}</title></rect>')
    out.append("</g>")
    zero = float(frame.px(0.0)) if edges[0] < 0 < edges[-1] else None
    if zero is not None:
        out.append(f'<line class="zero" x1="{zero:.1f}" x2="{zero:.1f}" y1="{frame.top:.1f}" y2="{frame.bottom:.1f}"/>')
    out.append("</svg>")
    return "".join(out)


def histogram_edges(values: np.ndarray, most_bins: int = 40) -> np.ndarray:
    """The bin edges `histogram` uses: multiples of a round width (1, 2, 2.5 or 5 x 10^k) about
    (max - min) / ceil(sqrt(N)) wide (5 to `most_bins` bins), covering every value and zero,
    zero on an edge."""
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    bins = max(5, min(most_bins, math.ceil(math.sqrt(values.size))))
    span = hi - lo
    raw = span / bins if span > 0 else max(abs(lo), 1.0) * 0.1
    mag = 10 ** math.floor(math.log10(raw))
    width = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / width), math.ceil(hi / width)
    if first * width > lo:                            # rounding: every value must be covered
        first -= 1
    if last * width < hi:
        last += 1
    last = max(last, first + 1)
    return np.arange(first, last + 1) * width


def area_chart(series: pd.Series, *, title: str, css_class: str = "drawdown",
               y_format: Callable[[float], str] = percent_label, width: int = WIDTH,
               height: int = 200, max_points: int = MAX_POINTS, tz: str | None = None) -> str:
    """A filled area between zero and a time-indexed series of values <= 0 (the drawdown)."""
    series = series[np.isfinite(series.to_numpy(dtype=float))]
    if len(series) == 0:
        return _empty(title, css_class, "no data")
    x, y = hold_gaps(*thin(_as_seconds(series.index), series.to_numpy(dtype=float), max_points))
    lo = min(float(y.min()), 0.0)
    hi = max(float(y.max()), 0.0)
    lo, hi = (lo * 1.05, hi) if lo < hi else (-0.01, 0.0)
    frame = Frame(width, height, float(x[0]), float(x[-1]), lo, hi)
    xs, ys = frame.px(x), frame.py(y)
    zero = float(frame.py(0.0))
    line = _path(xs, ys)
    area = f"M{xs[0]:.1f} {zero:.1f} " + line.replace("M", "L") + f" L{xs[-1]:.1f} {zero:.1f} Z"
    return (_svg_open(width, height, title, css_class) +
            _axes(frame, y_format, series.index[0], series.index[-1], tz) +
            f'<path class="area" d="{area}"/><path class="line" d="{line}"/></svg>')


@dataclass(frozen=True)
class TradeMark:
    """One entry or exit drawn on the price chart."""
    ts: pd.Timestamp
    price: float
    kind: str      # "entry" | "exit"
    label: str     # tooltip text (plain; escaped when drawn)


def _triangle(x: float, y: float, up: bool, size: float = 6.0) -> str:
    if up:   # tip at the price, body below it
        return f"M{x:.1f} {y:.1f}L{x - size:.1f} {y + size * 1.6:.1f}L{x + size:.1f} {y + size * 1.6:.1f}Z"
    return f"M{x:.1f} {y:.1f}L{x - size:.1f} {y - size * 1.6:.1f}L{x + size:.1f} {y - size * 1.6:.1f}Z"


def price_chart(bars: pd.DataFrame, marks: Sequence[TradeMark], *, title: str,
                css_class: str = "price", width: int = WIDTH, height: int = 320,
                max_points: int = MAX_POINTS, tz: str | None = None) -> str:
    """Price of one symbol with entries (green ▲) and exits (red ▼).

    `bars` is indexed by time with a `close` column and optionally `open`, `high`, `low`. Up to
    `OHLC_MAX_BARS` bars with full OHLC are drawn as OHLC bars; more as a thinned close line.
    Marks outside the bars' time span are still drawn (the axis widens to hold them)."""
    bars, mark_list = _priced(bars, marks)
    if len(bars) == 0 and not mark_list:
        return _empty(title, css_class, "no price data for this symbol")
    t_bars = _as_seconds(bars.index) if len(bars) else np.array([], dtype=float)
    t_marks = _as_seconds(pd.DatetimeIndex([m.ts for m in mark_list])) if mark_list else np.array([])
    prices_m = np.array([m.price for m in mark_list], dtype=float)
    ohlc = (0 < len(bars) <= OHLC_MAX_BARS and {"open", "high", "low"} <= set(bars.columns)
            and np.isfinite(bars[["open", "high", "low"]].to_numpy(dtype=float)).all())
    if ohlc and (bars["high"].to_numpy(dtype=float) == bars["low"].to_numpy(dtype=float)).all():
        ohlc = False        # one price a bar (an underlying taken from end-of-day chains): a line
    if ohlc:
        lows, highs = bars["low"].to_numpy(dtype=float), bars["high"].to_numpy(dtype=float)
        x_line, y_line = t_bars, bars["close"].to_numpy(dtype=float)
        ymin, ymax = lows.min(), highs.max()
    elif len(bars):
        x_line, y_line = thin(t_bars, bars["close"].to_numpy(dtype=float), max_points)
        ymin, ymax = y_line.min(), y_line.max()
    else:
        x_line = y_line = np.array([], dtype=float)
        ymin, ymax = np.inf, -np.inf
    if prices_m.size:
        ymin, ymax = min(ymin, prices_m.min()), max(ymax, prices_m.max())
    all_t = np.concatenate((t_bars, t_marks))
    lo, hi = _padded(float(ymin), float(ymax), 0.06)
    frame = Frame(width, height, float(all_t.min()), float(all_t.max()), lo, hi)
    t0 = pd.Timestamp(int(all_t.min() * 1e9), unit="ns", tz="UTC")
    t1 = pd.Timestamp(int(all_t.max() * 1e9), unit="ns", tz="UTC")
    out = [_svg_open(width, height, title, css_class), _axes(frame, number_label, t0, t1, tz)]
    if ohlc:
        xs = frame.px(t_bars)
        half = max(1.0, min(6.0, 0.35 * (frame.right - frame.left) / max(1, len(bars))))
        up_d, down_d = [], []
        for x, o, h, l, c in zip(xs.tolist(), frame.py(bars["open"]).tolist(), frame.py(highs).tolist(),
                                 frame.py(lows).tolist(), frame.py(bars["close"]).tolist()):
            seg = f"M{x:.1f} {h:.1f}V{l:.1f}M{x - half:.1f} {o:.1f}H{x:.1f}M{x:.1f} {c:.1f}H{x + half:.1f}"
            (up_d if c <= o else down_d).append(seg)   # screen y grows downwards: c <= o is a rise
        if up_d:
            out.append(f'<path class="ohlc up" d="{" ".join(up_d)}"/>')
        if down_d:
            out.append(f'<path class="ohlc down" d="{" ".join(down_d)}"/>')
    elif x_line.size:
        x_line, y_line = break_gaps(x_line, y_line)     # no line across a night or a weekend of intraday bars
        out.append(f'<path class="line" d="{_path(frame.px(x_line), frame.py(y_line))}"/>')
    if mark_list:
        xs, ys = frame.px(t_marks).tolist(), frame.py(prices_m).tolist()
        if len(mark_list) <= MARKER_TITLES_MAX:
            out.append('<g class="marks">')
            for m, x, y in zip(mark_list, xs, ys):
                up = m.kind == "entry"
                out.append(f'<path class="mark {"entry" if up else "exit"}" d="{_triangle(x, y, up)}">'
                           f'<title>{esc(m.label)}</title></path>')
            out.append("</g>")
        else:   # many trades: one path per kind keeps the file small
            for kind in ("entry", "exit"):
                d = "".join(_triangle(x, y, kind == "entry", 4.0)
                            for m, x, y in zip(mark_list, xs, ys) if m.kind == kind)
                if d:
                    out.append(f'<path class="mark {kind}" d="{d}"/>')
    out.append("</svg>")
    return "".join(out)


def _priced(bars: pd.DataFrame, marks: Sequence[TradeMark]) -> tuple[pd.DataFrame, list[TradeMark]]:
    """The bars with a close and the marks with a price: what the price chart draws."""
    return (bars[np.isfinite(bars["close"].to_numpy(dtype=float))],
            [m for m in marks if m.price is not None and math.isfinite(m.price)])


def price_span(bars: pd.DataFrame, marks: Sequence[TradeMark]) -> tuple[float, float] | None:
    """The time span (UTC seconds) of the price chart's x axis for these bars and marks, so a
    chart drawn under it (the state timeline) lines up with it; None when it has nothing."""
    bars, mark_list = _priced(bars, marks)
    t = np.concatenate((_as_seconds(bars.index) if len(bars) else np.array([], dtype=float),
                        _as_seconds(pd.DatetimeIndex([m.ts for m in mark_list])) if mark_list else np.array([])))
    return (float(t.min()), float(t.max())) if t.size else None


STATE_COLOURS = ("#2563eb", "#f59e0b", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                 "#9ca3af", "#92400e")
STATE_ROW = 22


def state_timeline(states: dict[str, list[tuple[float, str]]], span: tuple[float, float], *, title: str,
                   css_class: str = "states", width: int = WIDTH, tz: str | None = None) -> str:
    """The classifications over time, one band per classification under the price chart (the
    same width, margins and time span, so a state sits under the bars it labelled): `states`
    maps each name to its (UTC seconds, label) change points in time order. Each band is drawn
    pixel column by pixel column (the label in force at each column's middle, neighbours with
    the same label one rectangle), so a long run of short states stays a bounded drawing; a
    legend names each label's colour."""
    names = [n for n, points in states.items() if points]
    if not names:
        return _empty(title, css_class, "no classifications in this run", width)
    t0, t1 = span
    legend_rows = len(names)
    height = MARGIN_TOP + len(names) * (STATE_ROW + 4) + 18 * legend_rows + MARGIN_BOTTOM
    frame = Frame(width, height, t0, t1, 0.0, 1.0)
    out = [_svg_open(width, height, title, css_class)]
    columns = int(frame.right - frame.left)
    centres = t0 + (np.arange(columns) + 0.5) / max(columns, 1) * ((t1 - t0) or 1.0)
    y = float(MARGIN_TOP)
    legend_y = MARGIN_TOP + len(names) * (STATE_ROW + 4) + 14
    # one colour a label across the rows (a colour means one label, whichever row it is in, for
    # the first ten labels; a label in two classifications has one colour)
    every = list(dict.fromkeys(p[1] for name in names for p in states[name] if p[1]))
    colour = {label: STATE_COLOURS[i % len(STATE_COLOURS)] for i, label in enumerate(every)}
    for name in names:
        points = states[name]
        times = np.array([p[0] for p in points], dtype=float)
        labels = [p[1] for p in points]
        order = list(dict.fromkeys(x for x in labels if x))
        at = np.searchsorted(times, centres, side="right") - 1
        shown = [labels[k] if k >= 0 else "" for k in at.tolist()]     # the label in force at each column
        out.append(f'<text class="ylabel" x="{frame.left - 6:.1f}" y="{y + STATE_ROW / 2 + 4:.1f}" '
                   f'text-anchor="end">{esc(name)}</text>')
        start = 0
        for i in range(1, columns + 1):
            if i < columns and shown[i] == shown[start]:
                continue
            label = shown[start]
            if label:
                span_of = (t1 - t0) / max(columns, 1)
                a = pd.Timestamp(int((t0 + start * span_of) * 1e9), unit="ns", tz="UTC")
                b = pd.Timestamp(int((t0 + i * span_of) * 1e9), unit="ns", tz="UTC")
                out.append(f'<rect class="state" x="{frame.left + start:.1f}" y="{y:.1f}" width="{i - start:.1f}" '
                           f'height="{STATE_ROW}" fill="{colour[label]}"><title>{esc(name)}: {esc(label)}, '
                           f'{_local(a, tz):%Y-%m-%d %H:%M} to {_local(b, tz):%Y-%m-%d %H:%M}</title></rect>')
            start = i
        x = frame.left
        out.append(f'<text class="legend" x="{x:.1f}" y="{legend_y:.1f}">{esc(name)}:</text>')
        x += 8 * len(name) + 16
        for label in order:
            out.append(f'<rect class="key" x="{x:.1f}" y="{legend_y - 10:.1f}" width="12" height="12" '
                       f'fill="{colour[label]}"/><text class="legend" x="{x + 16:.1f}" y="{legend_y:.1f}">'
                       f'{esc(label)}</text>')
            x += 16 + 7.5 * len(label) + 18
        y += STATE_ROW + 4
        legend_y += 18
    lo = pd.Timestamp(int(t0 * 1e9), unit="ns", tz="UTC")
    hi = pd.Timestamp(int(t1 * 1e9), unit="ns", tz="UTC")
    base = height - MARGIN_BOTTOM
    out.append('<g class="axes">')
    for t, label in time_ticks(_local(lo, tz), _local(hi, tz)):
        x = float(frame.px(t.as_unit("ns").value / 1e9))
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{base:.1f}" y2="{base + 4:.1f}"/>'
                   f'<text class="xlabel" x="{x:.1f}" y="{base + 16:.1f}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<line class="axis" x1="{frame.left:.1f}" x2="{frame.right:.1f}" y1="{base:.1f}" y2="{base:.1f}"/>')
    out.append("</g></svg>")
    return "".join(out)

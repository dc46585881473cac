"""Black-Scholes-Merton option maths, vectorised over numpy arrays.

One model for every European option qtrade prices: an underlying S with continuous dividend
yield q, a continuously compounded rate r, time to expiry T in years and volatility sigma per
square-root year. Every function broadcasts its arguments like numpy does, returns a float64
array (a numpy scalar when every argument was a scalar) and never raises on bad numbers:
inputs it cannot price (S <= 0, K <= 0, T < 0, sigma < 0, NaN, infinities) give NaN.

Units (the whole engine uses these; loaders convert vendor units to them):
  price, delta, gamma   per one unit of the underlying (multiply by the contract multiplier)
  theta                 per YEAR of calendar time; `theta_per_day` divides by 365
  vega                  per 1.00 of volatility (sigma 0.20 -> 1.20); `vega_per_point` per 0.01
  rho                   per 1.00 of rate

Limits, so that no expiring option turns into NaN:
  T == 0 or sigma == 0  the deterministic value max(S e^-qT - K e^-rT, 0) (for a call; put
                        alike): intrinsic value at T == 0; delta e^-qT (call) / -e^-qT (put) in
                        the money, 0 out of the money, half of that exactly at the money (the
                        limit from T > 0, which keeps call delta - put delta = e^-qT); gamma and
                        vega 0; theta and rho the deterministic value's derivatives when
                        T > 0, and 0 at T == 0.

The normal CDF is W. J. Cody's rational Chebyshev approximation of erf/erfc (Math. Comp. 23,
1969; the public-domain SPECFUN routine CALERF), evaluated for whole arrays at once and with
exp(-x^2/2) formed from an exactly representable split of x, so that no error is amplified by
x^2. Against a 60-digit reference (Taylor series / Mills-ratio continued fraction in Python's
decimal) on 4,000 points in [-37.5, 8.5] the largest relative error of norm_cdf is 7e-16 and
the largest absolute error 1.1e-16 (tests/test_options_math.py measures it; the obvious route
0.5 * math.erfc(-x / sqrt 2) is 1.9e-13 off at x = -37, because rounding x / sqrt 2 is
magnified by x^2). One call on 10,000 points takes about 1 ms.

The implied volatility solver works on the normalised Black price b(x, s) of the
out-of-the-money option (x = ln(F/K) <= 0 after put-call symmetry, s = sigma sqrt(T)), in two
branches split at the inflection point s_c = sqrt(2|x|): below it Newton on ln b, above it
Newton on ln(upper bound - b); both are concave in s, so Newton from the start point converges
monotonically, and every step is kept inside a bracket (bisection when a step would leave it).
Both quantities are evaluated through the scaled function Phi(d) e^(d^2/2), so nothing
underflows even for prices of 1e-300. It returns a number for every price strictly inside the
no-arbitrage bounds, NaN for prices outside them, T <= 0 or non-finite inputs; see
`implied_volatility`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "norm_cdf", "norm_pdf", "is_call", "price", "delta", "gamma", "theta", "theta_per_day",
    "vega", "vega_per_point", "rho", "greeks", "Greeks", "implied_volatility", "DAYS_PER_YEAR",
]

DAYS_PER_YEAR = 365.0
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2PI = 1.0 / _SQRT2PI
_RSQRTPI = 1.0 / math.sqrt(math.pi)

# Cody's coefficients (SPECFUN CALERF). A/B: erf on |y| <= 0.46875; C/D: erfc(y) e^(y^2) on
# 0.46875 < y <= 4; P/Q: the same for y > 4 (an asymptotic rational form).
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_THRESH = 0.46875


# ------------------------------------------------------------------------------ normal law

def _erf_small(y: np.ndarray) -> np.ndarray:
    """erf(y) for |y| <= 0.46875."""
    z = y * y
    num = _A[4] * z
    den = z
    for i in range(3):
        num = (num + _A[i]) * z
        den = (den + _B[i]) * z
    return y * (num + _A[3]) / (den + _B[3])


def _erfcx_large(y: np.ndarray) -> np.ndarray:
    """erfc(y) e^(y^2) for y > 0.46875 (NaN stays NaN, +inf gives 0)."""
    out = np.empty_like(y)
    mid = y <= 4.0
    if mid.any():
        t = y[mid]
        num = _C[8] * t
        den = t
        for i in range(7):
            num = (num + _C[i]) * t
            den = (den + _D[i]) * t
        out[mid] = (num + _C[7]) / (den + _D[7])
    far = ~mid
    if far.any():
        t = y[far]
        with np.errstate(over="ignore"):
            z = 1.0 / (t * t)
        num = _P[5] * z
        den = z
        for i in range(4):
            num = (num + _P[i]) * z
            den = (den + _Q[i]) * z
        out[far] = (_RSQRTPI - z * (num + _P[4]) / (den + _Q[4])) / t
    return out


def _exp_half_square(x: np.ndarray) -> np.ndarray:
    """exp(-x^2 / 2) without the rounding error of x*x: x = h + l with h a multiple of 1/16."""
    x = np.clip(np.abs(x), 0.0, 40.0)   # exp(-800) is 0 in doubles; clip keeps inf/NaN tame
    h = np.trunc(x * 16.0) / 16.0
    return np.exp(-0.5 * h * h) * np.exp(-0.5 * (x - h) * (x + h))


def _lower_tail(x: np.ndarray) -> np.ndarray:
    """Phi(-|x|) for a float64 array."""
    a = np.abs(x)
    y = a / _SQRT2
    out = np.empty_like(a)
    small = y <= _THRESH
    if small.any():
        out[small] = 0.5 - 0.5 * _erf_small(y[small])
    big = ~small
    if big.any():
        out[big] = 0.5 * _erfcx_large(y[big]) * _exp_half_square(a[big])
    return out


def norm_cdf(x):
    """Standard normal distribution function Phi(x), to a relative error below 2e-15."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1)
    tail = _lower_tail(flat)
    out = np.where(flat > 0.0, 1.0 - tail, tail)
    # 1 - tail loses the tail's relative accuracy only where the result is within 1e-16 of 1.
    return out.reshape(x.shape)[()]


def norm_pdf(x):
    """Standard normal density phi(x)."""
    x = np.asarray(x, dtype=np.float64)
    return (_INV_SQRT2PI * _exp_half_square(x))[()]


def _scaled_cdf(d: np.ndarray) -> np.ndarray:
    """M(d) = Phi(d) e^(d^2/2) for d <= 0: finite and positive where Phi(d) underflows."""
    y = -d / _SQRT2
    out = np.empty_like(d)
    small = y <= _THRESH
    if small.any():
        ys = y[small]
        out[small] = (0.5 - 0.5 * _erf_small(ys)) * np.exp(ys * ys)
    big = ~small
    if big.any():
        out[big] = 0.5 * _erfcx_large(y[big])
    return out


# -------------------------------------------------------------------------------- inputs

def is_call(right) -> np.ndarray:
    """Rights as a bool array (True = call): accepts bools, 'call'/'put', 'C'/'P', 'c'/'p'."""
    arr = np.asarray(right)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(bool)
    text = np.char.lower(np.char.strip(arr.astype(str)))
    calls = (text == "call") | (text == "c")
    puts = (text == "put") | (text == "p")
    if not np.all(calls | puts):
        bad = text[~(calls | puts)].reshape(-1)[0]
        raise ValueError(f"unknown option right {bad!r}: use 'call'/'put', 'C'/'P' or a bool")
    return calls


def _prepare(S, K, T, r, q, sigma, right):
    scalar = all(np.ndim(v) == 0 for v in (S, K, T, r, q, sigma, right))
    call = is_call(right)
    arrs = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (S, K, T, r, q, sigma)),
                               call)
    S, K, T, r, q, sigma, call = (a.reshape(-1) for a in arrs)
    shape = arrs[0].shape
    return S, K, T, r, q, sigma, call, shape, scalar


def _shape(out: np.ndarray, shape, scalar: bool):
    out = out.reshape(shape)
    return out[()] if scalar else out


# ------------------------------------------------------------------------------- pricing

class Greeks(NamedTuple):
    """Value and sensitivities of one option per unit of underlying, in this module's units."""

    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray
    rho: np.ndarray


def _compute(S, K, T, r, q, sigma, call, want: tuple[str, ...]) -> dict[str, np.ndarray]:
    n = S.shape[0]
    bad = ~(np.isfinite(S) & np.isfinite(K) & np.isfinite(T) & np.isfinite(r) & np.isfinite(q)
            & np.isfinite(sigma) & (S > 0) & (K > 0) & (T >= 0) & (sigma >= 0))
    out = {name: np.full(n, np.nan) for name in want}
    sign = np.where(call, 1.0, -1.0)
    with np.errstate(all="ignore"):
        Tc = np.where(bad, 0.0, T)
        dq = np.exp(-q * Tc)
        dr = np.exp(-r * Tc)
        sdev = sigma * np.sqrt(Tc)
    live = ~bad & (sdev > 0)
    flat = ~bad & ~live
    if live.any():
        s_, k_, t_, r_, q_, v_, sd, dq_, dr_, sg = (a[live] for a in (S, K, Tc, r, q, sigma, sdev,
                                                                      dq, dr, sign))
        d1 = (np.log(s_ / k_) + (r_ - q_) * t_) / sd + 0.5 * sd
        d2 = d1 - sd
        n1 = norm_cdf(sg * d1)
        n2 = norm_cdf(sg * d2)
        pdf = norm_pdf(d1)
        fs = s_ * dq_
        fk = k_ * dr_
        if "price" in want:
            out["price"][live] = np.maximum(sg * (fs * n1 - fk * n2), 0.0)
        if "delta" in want:
            out["delta"][live] = sg * dq_ * n1
        if "gamma" in want:
            out["gamma"][live] = dq_ * pdf / (s_ * sd)
        if "vega" in want:
            out["vega"][live] = fs * pdf * np.sqrt(t_)
        if "theta" in want:
            out["theta"][live] = (-fs * pdf * v_ / (2.0 * np.sqrt(t_))
                                  - sg * r_ * fk * n2 + sg * q_ * fs * n1)
        if "rho" in want:
            out["rho"][live] = sg * k_ * t_ * dr_ * n2
    if flat.any():
        s_, k_, t_, r_, q_, dq_, dr_, sg = (a[flat] for a in (S, K, Tc, r, q, dq, dr, sign))
        fs = s_ * dq_
        fk = k_ * dr_
        gap = sg * (fs - fk)
        weight = np.where(gap > 0, 1.0, np.where(gap == 0, 0.5, 0.0))
        if "price" in want:
            out["price"][flat] = np.maximum(gap, 0.0)
        if "delta" in want:
            out["delta"][flat] = sg * dq_ * weight
        if "gamma" in want:
            out["gamma"][flat] = 0.0
        if "vega" in want:
            out["vega"][flat] = 0.0
        if "theta" in want:
            out["theta"][flat] = np.where(t_ > 0, weight * sg * (q_ * fs - r_ * fk), 0.0)
        if "rho" in want:
            out["rho"][flat] = weight * sg * k_ * t_ * dr_
    return out


def _one(name: str, S, K, T, r, q, sigma, right):
    S, K, T, r, q, sigma, call, shape, scalar = _prepare(S, K, T, r, q, sigma, right)
    return _shape(_compute(S, K, T, r, q, sigma, call, (name,))[name], shape, scalar)


def price(S, K, T, r, q, sigma, right):
    """Black-Scholes-Merton value of a European option (per unit of underlying)."""
    return _one("price", S, K, T, r, q, sigma, right)


def delta(S, K, T, r, q, sigma, right):
    """dV/dS: e^-qT N(d1) for a call, -e^-qT N(-d1) for a put."""
    return _one("delta", S, K, T, r, q, sigma, right)


def gamma(S, K, T, r, q, sigma, right="call"):
    """d2V/dS2 (the same for calls and puts)."""
    return _one("gamma", S, K, T, r, q, sigma, right)


def theta(S, K, T, r, q, sigma, right):
    """dV/dt per year of calendar time (minus dV/dT); negative for most long options."""
    return _one("theta", S, K, T, r, q, sigma, right)


def theta_per_day(S, K, T, r, q, sigma, right):
    """Theta per calendar day: theta / 365."""
    return _one("theta", S, K, T, r, q, sigma, right) / DAYS_PER_YEAR


def vega(S, K, T, r, q, sigma, right="call"):
    """dV/dsigma per 1.00 of volatility (the same for calls and puts)."""
    return _one("vega", S, K, T, r, q, sigma, right)


def vega_per_point(S, K, T, r, q, sigma, right="call"):
    """Vega per volatility point (sigma + 0.01): vega / 100."""
    return _one("vega", S, K, T, r, q, sigma, right) / 100.0


def rho(S, K, T, r, q, sigma, right):
    """dV/dr per 1.00 of rate."""
    return _one("rho", S, K, T, r, q, sigma, right)


def greeks(S, K, T, r, q, sigma, right) -> Greeks:
    """Price and all greeks in one pass (shares d1, d2 and the CDFs)."""
    S, K, T, r, q, sigma, call, shape, scalar = _prepare(S, K, T, r, q, sigma, right)
    out = _compute(S, K, T, r, q, sigma, call, Greeks._fields)
    return Greeks(*(_shape(out[name], shape, scalar) for name in Greeks._fields))


# ------------------------------------------------------------------------- implied volatility

def _otm_parts(x: np.ndarray, s: np.ndarray):
    """ln E and M(d1), M(d2), M(-d1) for the normalised out-of-the-money call (x <= 0, s > 0).

    b(x, s) = e^(x/2) Phi(d1) - e^(-x/2) Phi(d2) = E (M(d1) - M(d2)) when d1 <= 0, and the
    distance to the upper bound e^(x/2) - b = E (M(-d1) + M(d2)), with
    E = exp(-(x^2/s^2 + s^2/4) / 2) and d1,2 = x/s +- s/2.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(s > 0, x / s, np.where(x < 0, -np.inf, 0.0))
    d1 = xs + 0.5 * s
    d2 = xs - 0.5 * s
    ln_e = -0.5 * (xs * xs + 0.25 * s * s)
    return ln_e, d1, d2


def _solve_lower(x, ln_beta, s_hi, tol, max_iter=100):
    """Root of ln b(x, s) = ln_beta on (0, s_hi], where b is below its inflection point."""
    n = x.shape[0]
    lo = np.zeros(n)
    hi = s_hi.copy()
    # Start from the leading asymptotic term ln b ~ -x^2 / (2 s^2), which lies left of the root.
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.abs(x) / np.sqrt(np.maximum(-2.0 * ln_beta, 1e-300))
    s = np.where((s > 0) & (s < hi), s, 0.5 * hi)
    out = s.copy()
    active = np.arange(n)
    for _ in range(max_iter):
        xa, sa, la = x[active], s[active], ln_beta[active]
        ln_e, d1, d2 = _otm_parts(xa, sa)
        diff = _scaled_cdf(np.minimum(d1, 0.0)) - _scaled_cdf(d2)
        ok = diff > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(ok, ln_e + np.log(np.where(ok, diff, 1.0)) - la, -np.inf)
            fp = np.where(ok, 1.0 / (_SQRT2PI * np.where(ok, diff, 1.0)), np.inf)
        below = f < 0
        lo[active] = np.where(below, sa, lo[active])
        hi[active] = np.where(below, hi[active], sa)
        with np.errstate(invalid="ignore"):
            step = np.where(np.isfinite(fp) & (fp > 0), f / fp, np.nan)
        nxt = sa - step
        bl, bh = lo[active], hi[active]
        tol_a = tol * sa
        # A step below the tolerance ends the search (Newton's next error is its square);
        # testing it before the bracket matters: a sub-ulp step cannot move inside it.
        small = np.abs(step) <= tol_a
        inside = np.isfinite(nxt) & (nxt > bl) & (nxt < bh)
        nxt = np.where(inside | small, nxt, 0.5 * (bl + bh))
        done = (f == 0) | small | (bh - bl <= tol * bh)
        out[active] = np.where(f == 0, sa, nxt)
        s[active] = nxt
        active = active[~done]
        if active.size == 0:
            break
    return out


def _solve_upper(x, ln_gap, s_lo, tol, max_iter=100):
    """Root of ln(e^(x/2) - b(x, s)) = ln_gap on [s_lo, inf): b above its inflection point."""
    n = x.shape[0]
    lo = s_lo.copy()
    hi = np.full(n, np.inf)
    s = s_lo.copy()
    out = s.copy()
    active = np.arange(n)
    for _ in range(max_iter):
        xa, sa, la = x[active], s[active], ln_gap[active]
        ln_e, d1, d2 = _otm_parts(xa, sa)
        tot = _scaled_cdf(-np.maximum(d1, 0.0)) + _scaled_cdf(np.minimum(d2, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            g = ln_e + np.log(tot) - la        # decreasing in s
            gp = -1.0 / (_SQRT2PI * tot)
        left = g > 0
        lo[active] = np.where(left, sa, lo[active])
        hi[active] = np.where(left, hi[active], sa)
        with np.errstate(invalid="ignore"):
            step = g / gp
        nxt = sa - step
        bl, bh = lo[active], hi[active]
        small = np.abs(step) <= tol * sa
        inside = np.isfinite(nxt) & (nxt > bl) & (nxt < bh)
        fallback = np.where(np.isfinite(bh), 0.5 * (bl + bh), 2.0 * bl + 1.0)
        nxt = np.where(inside | small, nxt, fallback)
        done = (g == 0) | small | (np.isfinite(bh) & (bh - bl <= tol * bh)) | (bl > 1e4)
        out[active] = np.where(g == 0, sa, nxt)
        s[active] = nxt
        active = active[~done]
        if active.size == 0:
            break
    return out


def implied_volatility(price, S, K, T, r, q, right, tol: float = 1e-10):
    """Volatility sigma at which the BSM value equals `price`.

    Returns a finite sigma >= 0 for every price strictly inside the no-arbitrage bounds
        call: max(S e^-qT - K e^-rT, 0) < price < S e^-qT
        put:  max(K e^-rT - S e^-qT, 0) < price < K e^-rT
    (0.0 when the price is so close to the lower bound that double precision cannot tell the
    time value from zero), 0.0 for a price exactly on the lower bound, +inf exactly on the
    upper bound, and NaN -- and only then -- for prices outside the bounds, T <= 0 (an expired
    option carries no volatility information), S <= 0, K <= 0 or any non-finite input.

    `tol` is relative: the search stops when a Newton step changes sigma by less than
    tol * sigma, and as Newton converges quadratically the result is then far closer than
    that. What is left is the price's own rounding magnified by 1/vega: round trips
    price -> iv -> price agree to about 1e-12 of the price scale max(S, K), and sigma itself
    to about 1e-9 (relative) wherever vega * sigma > 0.001 * price. 10,000 options take
    10-50 ms (more for wide spreads of moneyness and expiry).
    """
    scalar = all(np.ndim(v) == 0 for v in (price, S, K, T, r, q, right))
    call = is_call(right)
    arrs = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (price, S, K, T, r, q)),
                               call)
    shape = arrs[0].shape
    P, S, K, T, r, q, call = (a.reshape(-1) for a in arrs)
    n = P.shape[0]
    result = np.full(n, np.nan)
    with np.errstate(all="ignore"):
        ok = (np.isfinite(P) & np.isfinite(S) & np.isfinite(K) & np.isfinite(T) & np.isfinite(r)
              & np.isfinite(q) & (S > 0) & (K > 0) & (T > 0))
        fs = S * np.exp(-q * T)
        fk = K * np.exp(-r * T)
        lower = np.where(call, np.maximum(fs - fk, 0.0), np.maximum(fk - fs, 0.0))
        upper = np.where(call, fs, fk)
        ok &= np.isfinite(fs) & np.isfinite(fk) & (fs > 0) & (fk > 0)
    result[ok & (P == lower)] = 0.0
    result[ok & (P == upper)] = np.inf
    work = np.flatnonzero(ok & (P > lower) & (P < upper))
    if work.size:
        result[work] = _solve(P[work], fs[work], fk[work], T[work], call[work], tol)
    result = result.reshape(shape)
    return result[()] if scalar else result


def _solve(P, fs, fk, T, call, tol):
    """sigma for prices strictly inside the bounds (all arrays 1-D, same length)."""
    # Normalise by the discounted sqrt(F K) = sqrt(fs fk): beta = P / sqrt(fs fk), x = ln(fs/fk).
    root = np.sqrt(fs) * np.sqrt(fk)
    x = np.log(fs / fk)
    beta = P / root
    y = np.where(call, x, -x)                 # put(x) is call(-x)
    itm = y > 0
    # In the money: subtract the intrinsic value to get the out-of-the-money twin (x -> -x).
    intrinsic = np.where(call, fs - fk, fk - fs) / root
    beta_otm = np.where(itm, beta - intrinsic, beta)
    xo = -np.abs(y)
    s = np.zeros_like(beta)
    # Double precision cannot separate the price from its intrinsic value: sigma 0.
    good = (beta_otm > 0) | ~itm
    s_c = np.sqrt(2.0 * np.abs(xo))
    ln_e, d1, d2 = _otm_parts(xo, s_c)
    with np.errstate(divide="ignore"):
        b_c = np.where(s_c > 0, np.exp(ln_e) * (_scaled_cdf(np.minimum(d1, 0.0)) - _scaled_cdf(d2)), 0.0)
    low = good & (beta_otm <= b_c)
    high = good & ~low
    if low.any():
        with np.errstate(divide="ignore"):
            # Out of the money, ln(P) - ln(root) keeps prices near the underflow limit exact.
            ln_beta = np.where(itm, np.log(np.where(good, beta_otm, 1.0)), np.log(P) - np.log(root))
            s[low] = _solve_lower(xo[low], ln_beta[low], s_c[low], tol)
    if high.any():
        # Distance from the OTM twin's upper bound: (upper - P) / root for ITM and OTM alike,
        # formed from the unnormalised prices so no precision is lost near the bound.
        gap = (np.where(call, fs, fk) - P) / root
        gap = np.maximum(gap, np.finfo(float).tiny)
        s[high] = _solve_upper(xo[high], np.log(gap[high]), s_c[high], tol)
    return s / np.sqrt(T)

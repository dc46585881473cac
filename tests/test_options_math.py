"""Black-Scholes-Merton maths: textbook values, parity, greeks vs finite differences, the
normal CDF against a 60-digit reference, and the implied-volatility solver's promises."""

from __future__ import annotations

import math
import time
from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.market import options as bs


# ------------------------------------------------------------------- published textbook values

def test_hull_call_and_put():
    # Hull, Options, Futures and Other Derivatives, Example 15.6: S=42, K=40, r=10%, sigma=20%, T=0.5.
    assert round(float(bs.price(42, 40, 0.5, 0.10, 0.0, 0.20, "call")), 2) == 4.76
    assert round(float(bs.price(42, 40, 0.5, 0.10, 0.0, 0.20, "put")), 2) == 0.81


def test_hull_greeks_chapter():
    # Hull's greek letters chapter: S=49, K=50, r=5%, sigma=20%, T=20 weeks (0.3846 years).
    g = bs.greeks(49, 50, 0.3846, 0.05, 0.0, 0.20, "call")
    assert round(float(g.price), 2) == 2.40
    assert round(float(g.delta), 3) == 0.522
    assert round(float(g.gamma), 3) == 0.066
    assert round(float(g.theta), 2) == -4.31              # per year
    assert round(float(bs.theta_per_day(49, 50, 0.3846, 0.05, 0, 0.2, "call")), 4) == -0.0118
    assert round(float(g.vega), 1) == 12.1                # per 1.00 of volatility
    assert round(float(bs.vega_per_point(49, 50, 0.3846, 0.05, 0, 0.2)), 3) == 0.121
    assert round(float(g.rho), 2) == 8.91


def test_hull_index_option_with_dividend_yield():
    # Hull: index 930, strike 900, r=8%, q=3%, sigma=20%, two months: c = 51.83.
    assert round(float(bs.price(930, 900, 2 / 12, 0.08, 0.03, 0.20, "call")), 2) == 51.83


@pytest.mark.parametrize("what, args, expected", [
    # Haug, The Complete Guide to Option Pricing Formulas (2nd ed.), generalized BSM with cost
    # of carry b = r - q.
    ("price", (60, 65, 0.25, 0.08, 0.0, 0.30, "call"), 2.1334),       # Black-Scholes 1973
    ("price", (100, 95, 0.5, 0.10, 0.05, 0.20, "put"), 2.4648),       # Merton 1973, q = 5%
    ("price", (19, 19, 0.75, 0.10, 0.10, 0.28, "call"), 1.7011),      # Black 1976, b = 0
    ("price", (19, 19, 0.75, 0.10, 0.10, 0.28, "put"), 1.7011),
    ("price", (1.56, 1.60, 0.5, 0.06, 0.08, 0.12, "call"), 0.0291),   # Garman-Kohlhagen
    ("delta", (105, 100, 0.5, 0.10, 0.10, 0.36, "call"), 0.5946),     # futures option delta
    ("delta", (105, 100, 0.5, 0.10, 0.10, 0.36, "put"), -0.3566),
    ("gamma", (55, 60, 0.75, 0.10, 0.0, 0.30, "call"), 0.0278),
    ("vega", (55, 60, 0.75, 0.10, 0.0, 0.30, "call"), 18.9358),
    ("theta", (430, 405, 0.0833, 0.07, 0.05, 0.20, "put"), -31.1924),  # b = 0.02
    ("rho", (72, 75, 1.0, 0.09, 0.0, 0.19, "call"), 38.7325),
])
def test_haug_generalized_bsm(what, args, expected):
    assert round(float(getattr(bs, what)(*args)), 4) == expected


# --------------------------------------------------------------------------------- normal CDF

getcontext().prec = 60
_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def _phi_reference(x: float) -> Decimal:
    """Phi(x) to ~50 digits: Taylor series near 0, the Mills-ratio continued fraction below -3."""
    X = Decimal(float(x))  # the exact binary value
    if X > 0:
        return 1 - _phi_reference(-x)
    pdf = (-(X * X) / 2).exp() / (2 * _PI).sqrt()
    if X >= -3:
        term = total = X
        k = 1
        while abs(term) > Decimal(10) ** -55:
            term = term * X * X / (2 * k + 1)
            total += term
            k += 1
        return Decimal("0.5") + pdf * total
    a = -X
    cf = a
    for k in range(400, 0, -1):
        cf = a + k / cf
    return pdf / cf


def test_reference_is_consistent_at_its_switch():
    # The two reference methods agree where they meet: the continued fraction at -3.0001 and the
    # series at -3 differ by the true change of Phi only.
    a, b = _phi_reference(-3.0), _phi_reference(-3.0001)
    slope = Decimal(math.exp(-4.5) / math.sqrt(2 * math.pi))
    assert abs((a - b) / Decimal("0.0001") - slope) / slope < Decimal("1e-3")


def test_norm_cdf_relative_accuracy():
    xs = np.concatenate([np.linspace(-37.5, 8.5, 1201),
                         np.random.default_rng(7).uniform(-9.0, 9.0, 400)])
    ref = np.array([float(_phi_reference(v)) for v in xs])
    got = bs.norm_cdf(xs)
    rel = np.abs(got - ref) / ref
    # Measured: 7.0e-16 at worst over 4,000 points; the route through math.erfc(-x/sqrt 2) is
    # 1.9e-13 off at x = -37 because rounding x/sqrt(2) is magnified by x^2.
    assert rel.max() < 2e-15
    assert np.abs(got - ref).max() < 3e-16


def test_norm_cdf_special_values_and_shapes():
    assert bs.norm_cdf(0.0) == 0.5
    assert bs.norm_cdf(-np.inf) == 0.0 and bs.norm_cdf(np.inf) == 1.0
    assert np.isnan(bs.norm_cdf(np.nan))
    assert bs.norm_cdf(-40.0) == 0.0
    x = np.linspace(-8, 8, 1001)
    assert np.max(np.abs(bs.norm_cdf(x) + bs.norm_cdf(-x) - 1.0)) < 2e-16
    assert np.all(np.diff(bs.norm_cdf(x)) >= 0)            # saturates at 1.0 for x > 8.3
    assert np.all(np.diff(bs.norm_cdf(x[x <= 0])) > 0)
    assert bs.norm_cdf(np.zeros((2, 3))).shape == (2, 3)
    assert isinstance(bs.norm_cdf(1.0), np.floating)
    assert bs.norm_pdf(0.0) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-16)


def test_norm_cdf_is_fast():
    x = np.random.default_rng(1).normal(0, 3, 10_000)
    best = min(_timed(lambda: bs.norm_cdf(x)) for _ in range(5))
    assert best < 0.02      # about 1 ms


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------- pricing properties

_spot = st.floats(1.0, 5000.0)
_moneyness = st.floats(-1.5, 1.5)
_years = st.floats(1e-6, 5.0)
_rate = st.floats(-0.02, 0.15)
_yield = st.floats(0.0, 0.10)
_vol = st.floats(0.005, 3.0)


@settings(max_examples=300, deadline=None)
@given(_spot, _moneyness, _years, _rate, _yield, _vol)
def test_put_call_parity(S, m, T, r, q, sigma):
    K = S * math.exp(m)
    c = bs.price(S, K, T, r, q, sigma, "call")
    p = bs.price(S, K, T, r, q, sigma, "put")
    forward_gap = S * math.exp(-q * T) - K * math.exp(-r * T)
    assert abs((c - p) - forward_gap) <= 1e-12 * max(S, K)
    # Delta parity too: call delta - put delta = e^-qT.
    dc = bs.delta(S, K, T, r, q, sigma, "call")
    dp = bs.delta(S, K, T, r, q, sigma, "put")
    assert abs(dc - dp - math.exp(-q * T)) <= 1e-14


@settings(max_examples=150, deadline=None)
@given(st.floats(20.0, 500.0), st.floats(-0.5, 0.5), st.floats(0.02, 3.0), _rate, _yield,
       st.floats(0.05, 1.5), st.booleans())
def test_greeks_match_finite_differences(S, m, T, r, q, sigma, call):
    K = S * math.exp(m)
    g = bs.greeks(S, K, T, r, q, sigma, call)

    def v(S=S, T=T, r=r, sigma=sigma):
        return float(bs.price(S, K, T, r, q, sigma, call))

    # Central differences; tolerances cover their truncation error (h^2 times the next
    # derivative, large for short-dated at-the-money options) and rounding (eps * V / h).
    sdev = sigma * math.sqrt(T)
    hs, hv, hr, ht = 1e-4 * S * sdev, 1e-6, 1e-6, 1e-6 * T
    fd_delta = (v(S=S + hs) - v(S=S - hs)) / (2 * hs)
    hg = 1e-3 * S * sdev
    fd_gamma = (v(S=S + hg) - 2 * v() + v(S=S - hg)) / hg ** 2
    fd_vega = (v(sigma=sigma + hv) - v(sigma=sigma - hv)) / (2 * hv)
    fd_rho = (v(r=r + hr) - v(r=r - hr)) / (2 * hr)
    fd_theta = -(v(T=T + ht) - v(T=T - ht)) / (2 * ht)
    assert g.delta == pytest.approx(fd_delta, rel=1e-6, abs=1e-8)
    assert g.gamma == pytest.approx(fd_gamma, rel=1e-4, abs=1e-14 * S / hg ** 2)
    assert g.vega == pytest.approx(fd_vega, rel=1e-6, abs=1e-8 * S)
    assert g.rho == pytest.approx(fd_rho, rel=1e-6, abs=1e-8 * S)
    assert g.theta == pytest.approx(fd_theta, rel=1e-6, abs=1e-8 * S / T)


def test_expiry_and_zero_volatility_limits():
    S = np.array([90.0, 100.0, 110.0])
    for right, intrinsic, dlt in (("call", [0, 0, 10], [0, 0.5, 1]), ("put", [10, 0, 0], [-1, -0.5, 0])):
        g = bs.greeks(S, 100.0, 0.0, 0.05, 0.02, 0.25, right)
        assert np.array_equal(g.price, intrinsic)
        assert np.array_equal(g.delta, dlt)
        for name in ("gamma", "theta", "vega", "rho"):
            assert np.array_equal(getattr(g, name), np.zeros(3)), name
    # sigma = 0 with time left: the discounted forward intrinsic value.
    c = bs.price(110.0, 100.0, 1.0, 0.05, 0.0, 0.0, "call")
    assert c == pytest.approx(110.0 - 100.0 * math.exp(-0.05))
    assert bs.price(90.0, 100.0, 1.0, 0.05, 0.0, 0.0, "call") == 0.0
    # Continuity: a tiny T gives nearly the T = 0 values.
    assert bs.price(110.0, 100.0, 1e-12, 0.05, 0.0, 0.3, "call") == pytest.approx(10.0, abs=1e-9)


def test_bad_inputs_are_nan_not_errors():
    out = bs.price([-1.0, 100, 100, 100, np.nan, 100], [100, 0, 100, 100, 100, np.inf],
                   [1, 1, -1, 1, 1, 1], 0.01, 0.0, [0.2, 0.2, 0.2, -0.1, 0.2, 0.2], "call")
    assert np.all(np.isnan(out))
    with pytest.raises(ValueError):
        bs.price(100, 100, 1, 0, 0, 0.2, "straddle")


def test_broadcasting_and_rights():
    S = np.array([[95.0], [105.0]])
    K = np.array([90.0, 100.0, 110.0])
    p = bs.price(S, K, 0.5, 0.02, 0.01, 0.3, np.array(["C", "p", "call"]))
    assert p.shape == (2, 3)
    assert p[0, 1] == bs.price(95.0, 100.0, 0.5, 0.02, 0.01, 0.3, "put")
    assert p[1, 2] == bs.price(105.0, 110.0, 0.5, 0.02, 0.01, 0.3, True)
    assert isinstance(bs.price(100, 100, 1, 0, 0, 0.2, "c"), np.floating)
    assert np.array_equal(bs.is_call([True, False]), [True, False])


# ----------------------------------------------------------------------- implied volatility

def _bounds(S, K, T, r, q, call):
    fs, fk = S * np.exp(-q * T), K * np.exp(-r * T)
    lower = np.where(call, np.maximum(fs - fk, 0), np.maximum(fk - fs, 0))
    return lower, np.where(call, fs, fk)


@settings(max_examples=400, deadline=None)
@given(st.floats(1.0, 5000.0), st.floats(-2.0, 2.0), st.floats(1e-7, 10.0), _rate, _yield,
       st.floats(0.01, 4.0), st.booleans())
def test_iv_round_trip(S, m, T, r, q, sigma, call):
    K = S * math.exp(m)
    p = float(bs.price(S, K, T, r, q, sigma, call))
    lower, upper = _bounds(S, K, T, r, q, call)
    iv = bs.implied_volatility(p, S, K, T, r, q, call)
    if lower < p < upper:
        assert np.isfinite(iv) and iv >= 0
        back = float(bs.price(S, K, T, r, q, iv, call))
        assert abs(back - p) <= 1e-12 * max(S, K)
        vega = float(bs.vega(S, K, T, r, q, sigma))
        if p > 1e-250 and vega * sigma > 1e-3 * p:
            assert abs(iv - sigma) <= 1e-9 * sigma
    else:
        # The price rounded onto a bound (or just past it): 0, inf, or NaN, never a made-up vol.
        assert np.isnan(iv) or iv in (0.0, np.inf)


@settings(max_examples=400, deadline=None)
@given(st.floats(1.0, 5000.0), st.floats(-3.0, 3.0), st.floats(1e-7, 10.0), _rate, _yield,
       st.floats(1e-9, 1.0 - 1e-9), st.booleans())
def test_iv_never_nan_strictly_inside_bounds(S, m, T, r, q, u, call):
    K = S * math.exp(m)
    lower, upper = _bounds(S, K, T, r, q, call)
    p = float(lower + u * (upper - lower))
    if not lower < p < upper:
        return
    iv = bs.implied_volatility(p, S, K, T, r, q, call)
    assert not np.isnan(iv)
    assert iv >= 0
    if np.isfinite(iv) and iv < 50:
        back = float(bs.price(S, K, T, r, q, iv, call))
        assert abs(back - p) <= 1e-11 * max(S, K)


def test_iv_deep_wings_and_tiny_times():
    S, K = 100.0, np.array([20.0, 60.0, 99.0, 100.0, 101.0, 160.0, 500.0])
    for T in (1e-6, 1 / 365 / 24, 1 / 365, 0.25, 5.0):
        for call in (True, False):
            sigma = np.full(K.shape, 0.35)
            p = bs.price(S, K, T, 0.03, 0.01, sigma, call)
            iv = bs.implied_volatility(p, S, K, T, 0.03, 0.01, call)
            lower, upper = _bounds(S, K, T, 0.03, 0.01, call)
            inside = (p > lower) & (p < upper)
            assert not np.isnan(iv[inside]).any()
            back = bs.price(S, K, T, 0.03, 0.01, iv, call)
            assert np.allclose(back[inside], p[inside], rtol=0, atol=1e-12 * 500)
    # Prices of 1e-300 still invert (no underflow in the solver).
    iv = bs.implied_volatility(1e-300, 100.0, 150.0, 0.1, 0.0, 0.0, "call")
    assert 0 < iv < 1
    assert bs.price(100.0, 150.0, 0.1, 0.0, 0.0, iv, "call") == pytest.approx(1e-300, rel=1e-9)
    # Close to the upper bound: enormous but finite volatility.
    iv = bs.implied_volatility(99.999, 100.0, 100.0, 1.0, 0.0, 0.0, "call")
    assert np.isfinite(iv) and iv > 5


def test_iv_nan_only_outside_bounds():
    S, K, T, r, q = 100.0, 90.0, 0.5, 0.05, 0.01
    lower, upper = (float(v) for v in _bounds(S, K, T, r, q, True))
    assert np.isnan(bs.implied_volatility(lower - 1e-6, S, K, T, r, q, "call"))
    assert np.isnan(bs.implied_volatility(upper + 1e-6, S, K, T, r, q, "call"))
    assert bs.implied_volatility(lower, S, K, T, r, q, "call") == 0.0
    assert bs.implied_volatility(upper, S, K, T, r, q, "call") == np.inf
    assert np.isnan(bs.implied_volatility(-1.0, S, K, T, r, q, "put"))
    assert np.isnan(bs.implied_volatility(np.nan, S, K, T, r, q, "put"))
    assert np.isnan(bs.implied_volatility(5.0, S, K, 0.0, r, q, "put"))      # expired
    assert np.isnan(bs.implied_volatility(5.0, S, K, np.inf, r, q, "put"))
    assert np.isnan(bs.implied_volatility(5.0, 0.0, K, T, r, q, "put"))
    out = bs.implied_volatility([np.nan, 12.0, 200.0], S, K, T, r, q, "call")
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])


def test_iv_textbook_value():
    # Hull: the 42/40 call priced at 4.76 has an implied volatility close to 20%.
    iv = bs.implied_volatility(4.759422392871535, 42, 40, 0.5, 0.10, 0.0, "call")
    assert iv == pytest.approx(0.20, abs=1e-12)


def test_iv_10000_options_under_200ms():
    rng = np.random.default_rng(3)
    n = 10_000
    S = rng.uniform(50, 150, n)
    K = S * np.exp(rng.normal(0, 0.3, n))
    T = 10 ** rng.uniform(-4, 1, n)
    r, q = rng.uniform(-0.01, 0.08, n), rng.uniform(0, 0.05, n)
    sigma = 10 ** rng.uniform(-2, 0.5, n)
    call = rng.random(n) < 0.5
    p = bs.price(S, K, T, r, q, sigma, call)
    best = min(_timed(lambda: bs.implied_volatility(p, S, K, T, r, q, call)) for _ in range(3))
    assert best < 0.2           # about 50 ms here with this deliberately wide spread of inputs
    iv = bs.implied_volatility(p, S, K, T, r, q, call)
    lower, upper = _bounds(S, K, T, r, q, call)
    inside = (p > lower) & (p < upper)
    assert not np.isnan(iv[inside]).any()
    assert np.max(np.abs(bs.price(S, K, T, r, q, iv, call) - p)[inside]) < 1e-11

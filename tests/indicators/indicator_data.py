"""Loaders for real market data from ../shared/data (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_path(*parts) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared market data not found at {DATA}")
    return DATA.joinpath(*parts)


def load_ohlcv(kind: str) -> dict[str, np.ndarray]:
    """Return high/low/close/volume/session arrays for one of the real data sets."""
    if kind == "spy":
        df = pd.read_csv(data_path("mplfinance", "yahoofinance-SPY-20080101-20180101.csv"))
        sess = pd.to_datetime(df["Date"]).dt.to_period("M").astype("int64")
    elif kind == "orcl":
        df = pd.read_csv(data_path("backtrader", "orcl-1995-2014.txt"))
        sess = pd.to_datetime(df["Date"]).dt.to_period("M").astype("int64")
    elif kind == "nq":
        df = pd.read_csv(data_path("firstratedata_nq_sample", "NQ_1min_sample.csv"))
        df.columns = [c.capitalize() for c in df.columns]
        ts = pd.to_datetime(df["Timestamp"])
        sess = (ts - pd.Timedelta(hours=18)).dt.normalize().astype("int64") // 86_400_000_000_000
    else:
        raise KeyError(kind)
    return {
        "high": df["High"].to_numpy(float),
        "low": df["Low"].to_numpy(float),
        "close": df["Close"].to_numpy(float),
        "volume": df["Volume"].to_numpy(float),
        "session": np.asarray(sess, dtype=float),
    }

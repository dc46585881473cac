"""Session fixtures with real OHLCV arrays (see indicator_data.py)."""

import pytest

from indicator_data import load_ohlcv


@pytest.fixture(scope="session")
def spy():
    return load_ohlcv("spy")


@pytest.fixture(scope="session")
def orcl():
    return load_ohlcv("orcl")


@pytest.fixture(scope="session")
def nq():
    return load_ohlcv("nq")

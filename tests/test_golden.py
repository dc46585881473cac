"""Every bundled example's backtest against its golden record (tests/golden/*.json): the same
orders, fills, trades and final account. A difference is either a bug fixed, accepted by
regenerating the file in the commit that explains it (`python tests/golden/cases.py CASE`),
or a regression."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import cases  # noqa: E402

NEEDS_SHARED = cases.NEEDS_SHARED


@pytest.mark.parametrize("case", sorted(cases.CASES))
def test_backtest_matches_its_golden_record(case, tmp_path):
    if case in NEEDS_SHARED and not cases.SHARED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{cases.SHARED} is missing under CI")
        pytest.skip("needs ../shared/data")
    want = json.loads((cases.HERE / f"{case}.json").read_text())
    got = json.loads(json.dumps(cases.run_case(case, tmp_path)))
    for key in want:
        assert got[key] == want[key], f"{case}: {key} differs from tests/golden/{case}.json"

"""The installed package carries every engine module and data file it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def test_every_engine_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("engine", "gatewaysim") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk <= listed, f"missing from pyproject packages: {sorted(on_disk - listed)}"
    data = config["tool"]["setuptools"]["package-data"]
    assert "templates/*.j2" in data["engine.report"] and "*.lark" in data["engine.dsl"]
    assert "scenarios/*.yaml" in data["gatewaysim"] and list((ROOT / "gatewaysim" / "scenarios").glob("*.yaml"))
    assert config["tool"]["setuptools"]["package-dir"] == {"engine.schemas": "schemas", "engine.universes": "universes",
                                                           "engine.sample": "strategies/data"}
    assert "*.csv" in data["engine.sample"]       # gateway-sim's bundled sample, in a wheel too


def test_engine_version_matches_the_distribution():
    from engine import __version__

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["version"] == __version__

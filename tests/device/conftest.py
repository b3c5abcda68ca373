"""Fixtures of the device tests: the x86_64 zips, built once, and a core's layout per test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gg import Core

from telemetry.tools.recipes import load_recipes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def x86_64_zips(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("zips")
    result = subprocess.run([str(ROOT / "build.sh"), "package", "--arch", "x86_64", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"./build.sh package failed:\n{result.stderr[-3000:]}"
    recipes = {r.name: r for r in load_recipes(ROOT / "recipes")}
    zips = {name: out / f"{r.function['FunctionName']}-x86_64.zip" for name, r in recipes.items()}
    assert all(p.is_file() for p in zips.values()), sorted(out.iterdir())
    return zips


@pytest.fixture
def core(tmp_path):
    core = Core(tmp_path)
    yield core
    for function in core.started:
        function.kill()

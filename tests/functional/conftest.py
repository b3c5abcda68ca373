"""Fixtures of the functional tests: a short recorded drive, and a copy of the project's
recipes and functions a test may change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from telemetry.tools.simulator import write_drive

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_drive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("drive") / "short.log"
    write_drive(path, seconds=20.0)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """``recipes/`` and ``lambdas/`` copied into ``tmp_path``, to be changed by the test."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "lambdas", tmp_path / "lambdas")
    return tmp_path

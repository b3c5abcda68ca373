"""One replay of the sample drive, shared by the report's tests (it takes a few seconds), and a
headless chromium (Debian's package, driven by Playwright: ``support.browser``) to open what it wrote."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from telemetry.tools.replay import replay
from telemetry.tools.taps import ReplayTaps

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Replayed:
    out: Path
    summary: dict[str, Any]
    taps: ReplayTaps


@pytest.fixture(scope="session")
def sample_replay(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    out = tmp_path_factory.mktemp("demo")
    taps = ReplayTaps()
    summary = replay(SAMPLE / "drive.log", out_dir=out, config=SAMPLE / "vehicle.toml", taps=taps,
                     export=("csv", out / "export"))
    return Replayed(out, summary, taps)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file() or shutil.which("chromium") is None:
        pytest.fail(f"the report's tests need Debian's chromium at {CHROMIUM}: ./build.sh test installs it "
                    "(apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: chromium refuses to start as root with its sandbox (CI containers run as root)
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()

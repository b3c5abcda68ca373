"""Opening a report in the headless chromium of the report's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Page:
    page: Any
    errors: list[str]
    requests: list[str]


def open_report(browser: Any, path: Path) -> Page:
    """The page loaded and rendered, with its console errors and every request it made
    (anything but the file itself would need a network)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-rendered=yes]", timeout=30_000)
    return Page(page, errors, requests)

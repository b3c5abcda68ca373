"""Where the repository's own files are, found once: the tools run from a checkout (a laptop,
CI), never from a Lambda zip, so they may look beside the package."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes"
SAMPLE = REPO / "vehicles" / "sample"
REQUIREMENTS_LAMBDA = REPO / "requirements-lambda.txt"

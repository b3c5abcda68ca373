"""``telemetry demo``: replay the bundled sample drive (the ``replay`` command on the sample car)."""

from __future__ import annotations

import argparse
from typing import Any

from telemetry.tools.cli.replay import _do_replay, add_common
from telemetry.tools.paths import SAMPLE


def _do_demo(args: argparse.Namespace) -> int:
    args.log = SAMPLE / "drive.log"
    args.config = SAMPLE / "vehicle.toml"
    args.dbc = []
    print(f"Demo: the sample solar car's recorded drive, {args.log.name}, through the four components\n")
    return _do_replay(args)


def add_subparser(subparsers: Any) -> None:
    d = subparsers.add_parser("demo", help="replay the bundled sample drive")
    d.add_argument("--out", default="out/demo", help="output folder for report.html, summary.json and cloud.jsonl")
    add_common(d)
    d.set_defaults(func=_do_demo)

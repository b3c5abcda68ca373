"""``telemetry simulate``: record a simulated drive of the sample vehicle."""

from __future__ import annotations

import argparse
from typing import Any

from telemetry.tools.paths import SAMPLE


def _do_simulate(args: argparse.Namespace) -> int:
    from telemetry.tools.simulator import write_drive

    frames = write_drive(args.out, seconds=args.seconds, seed=args.seed)
    print(f"Wrote {frames} frames to {args.out}")
    return 0


def add_subparser(subparsers: Any) -> None:
    s = subparsers.add_parser("simulate", help="record a simulated drive of the sample vehicle")
    s.add_argument("--out", default=str(SAMPLE / "drive.log"))
    s.add_argument("--seconds", type=float, default=240.0)
    s.add_argument("--seed", type=int, default=2026)
    s.set_defaults(func=_do_simulate)

"""``telemetry replay``: replay a recorded CAN log through all four components."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _do_replay(args: argparse.Namespace) -> int:
    from telemetry.tools.replay import alerts_from_outbox, format_summary, replay

    summary = replay(args.log, out_dir=args.out, config=args.config, dbc=args.dbc, speed=args.speed,
                     processes=getattr(args, "processes", False))
    print(format_summary(summary, alerts_from_outbox(Path(args.out) / "cloud.jsonl")))
    print(f"Wrote {Path(args.out) / 'cloud.jsonl'} and {Path(args.out) / 'summary.json'}")
    return 1 if summary["handler_errors"] else 0


def add_subparser(subparsers: Any) -> None:
    r = subparsers.add_parser("replay", help="replay a recorded CAN log through all four components")
    r.add_argument("log", help="CAN log: .log (candump -L), .asc, .blf, .trc, .csv or .mf4")
    r.add_argument("--dbc", action="append", default=[], help="DBC file (repeatable; a later one wins on shared ids)")
    r.add_argument("--config", help="vehicle configuration (TOML; see docs/CONFIG.md)")
    r.add_argument("--out", required=True, help="output folder for cloud.jsonl and summary.json")
    r.add_argument("--speed", type=float, default=0.0, help="1 = recorded pace, 0 = as fast as possible (default)")
    r.add_argument("--processes", action="store_true",
                   help="run each component in its own process, as on a core device (uses more cores)")
    r.set_defaults(func=_do_replay)

"""``telemetry decode-cloud``: aggregates payloads back to rows (CSV, JSON lines, Parquet)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def _do_decode(args: argparse.Namespace) -> int:
    from telemetry.tools.cloud import convert, register_schema

    register_schema(args.config, args.dbc)
    source = Path(args.source)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / f"aggregates.{args.to}"
    start = time.perf_counter()
    counts = convert(source, out, args.to)
    print(f"Decoded {counts['payloads']} aggregates payloads into {counts['rows']} rows: {counts['out']} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def add_subparser(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "decode-cloud", help="aggregates payloads (a replay's cloud.jsonl, or captured MQTT payloads) back to rows")
    s.add_argument("source", help="a cloud.jsonl, or a folder of them or of captured payload files")
    s.add_argument("--to", choices=("csv", "jsonl", "parquet"), default="csv")
    s.add_argument("--out", help="the file to write (default: aggregates.<to> beside the source)")
    s.add_argument("--dbc", action="append", default=[],
                   help="the vehicle's DBC file(s): payloads name signals by the DBC's schema (default: the configuration's)")
    s.add_argument("--config", help="the vehicle configuration (its DBC files); default: the sample car's")
    s.set_defaults(func=_do_decode)

"""``telemetry package``: build one deployment zip per Lambda function."""

from __future__ import annotations

import argparse
from typing import Any


def _do_package(args: argparse.Namespace) -> int:
    from telemetry.tools.package import package

    made = package(args.arch, out=args.out, config=args.config)
    for p in made:
        print(f"{p.path}  {p.size / 1e6:6.1f} MB  sha256 {p.sha256[:16]}")
    return 0


def add_subparser(subparsers: Any) -> None:
    k = subparsers.add_parser("package", help="build one deployment zip per Lambda function")
    k.add_argument("--arch", choices=["x86_64", "aarch64"], default="aarch64", help="the core device's CPU")
    k.add_argument("--out", default="build")
    k.add_argument("--config", help="vehicle configuration to bundle (default: the sample car's)")
    k.set_defaults(func=_do_package)

"""Command line of the edge telemetry: ``python -m telemetry COMMAND ...`` (``./build.sh`` calls it).

One module per command in this package, each with ``add_subparser(subparsers)`` (cantools'
``subparsers/`` pattern). Errors of ours become one line, ``error: ...``, and exit status 2;
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys

from telemetry.edge.errors import TelemetryError
from telemetry.tools.cli import decode_cloud, demo, deploy, package, replay, run, signals, simulate, uploader

# The commands, in the order ``--help`` lists them.
COMMANDS = (replay, demo, run, signals, uploader, decode_cloud, package, deploy, simulate)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_subparser(sub)
    for sub_parser in sub.choices.values():  # --debug is also taken after the command
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="show tracebacks and debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except TelemetryError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2

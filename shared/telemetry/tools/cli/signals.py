"""``telemetry signals``: the signals of a car's DBC files; with a log, what they did; with a configuration, what each rule watches."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _do_signals(args: argparse.Namespace) -> int:
    from telemetry.edge.config import load_config
    from telemetry.edge.errors import ConfigError
    from telemetry.tools.replay import resolve_config
    from telemetry.tools.signals import catalogue, format_catalogue, format_rules, rule_matches, scan_log

    cfg = resolve_config(args.config, args.dbc) if args.config or args.dbc else None
    if cfg is None:
        raise ConfigError("give --dbc DBC (or --config with a 'dbc' list)")
    if args.config:
        load_config(args.config)  # refused here as replay would refuse it
    infos = catalogue(cfg.dbc)
    scan = scan_log(args.log, cfg.dbc, cfg if args.config else None) if args.log else None
    print(format_catalogue(infos, scan))
    if args.config:
        names = [s.name for s in infos]
        print()
        print(format_rules(cfg, names, scan))
        unmatched = [rule for rule, matched in rule_matches(cfg, names).items() if not matched]
        if unmatched:
            print(f"error: {len(unmatched)} rules match no signal ({', '.join(unmatched)}): replay refuses this "
                  "configuration", file=sys.stderr)
            return 1
    return 0


def add_subparser(subparsers: Any) -> None:
    s = subparsers.add_parser("signals", help="list a car's signals; with --log their statistics, with --config what each rule watches")
    s.add_argument("--dbc", action="append", default=[], help="DBC file (repeatable; a later one wins on shared ids)")
    s.add_argument("--log", help="a CAN log: count, rate, min, max and percentiles of each signal in it")
    s.add_argument("--config", help="vehicle configuration: the signals each rule matches (and, with --log, the alerts it would raise)")
    s.set_defaults(func=_do_signals)

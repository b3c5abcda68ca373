"""``telemetry replay``: replay a recorded CAN log through all four components."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

STRICT_EXIT = 3  # --strict and the replay has warnings


def _do_replay(args: argparse.Namespace) -> int:
    if getattr(args, "processes", False):
        from telemetry.tools.forkserver import start_forkserver

        start_forkserver()  # its imports overlap with this process's own, just below
    from telemetry.edge.messages import Alert
    from telemetry.tools.progress import Progress
    from telemetry.tools.replay import alert_line, format_summary, replay
    from telemetry.tools.taps import ReplayTaps

    verbose = getattr(args, "verbose", False)
    live = args.speed > 0
    progress: Progress | None = None

    def on_alert(alert: Alert) -> None:  # at a recorded pace, alerts print as they happen
        if alert.state == "update" and not verbose:
            return
        if progress is not None:
            progress.clear()
        print(alert_line(alert, taps.first if taps.first is not None else alert.t), flush=True)

    taps = ReplayTaps(on_alert=on_alert if live else None)
    if sys.stderr.isatty() and not getattr(args, "no_progress", False):
        progress = Progress(taps, args.log, sys.stderr).start()
    export = (args.export[0], args.export[1]) if getattr(args, "export", None) else None
    try:
        summary = replay(args.log, out_dir=args.out, config=args.config, dbc=args.dbc, speed=args.speed,
                         processes=getattr(args, "processes", False), one_cpu=not getattr(args, "all_cpus", False),
                         taps=taps, export=export)
    finally:
        if progress is not None:
            progress.stop()
    print(format_summary(summary, taps.alerts, verbose=verbose))
    out = Path(args.out)
    print(f"Wrote {out / 'report.html'} (open it in a browser), {out / 'summary.json'} and {out / 'cloud.jsonl'}")
    if summary.get("exports"):
        e = summary["exports"]
        print(f"Exported {e['signal_rows']} samples and {e['aggregate_rows']} window rows as {e['format']} to {e['dir']}")
    if summary["handler_errors"]:
        return 1
    if getattr(args, "strict", False) and summary["warnings"]:
        print(f"--strict: {len(summary['warnings'])} warnings, exit status {STRICT_EXIT}", file=sys.stderr)
        return STRICT_EXIT
    return 0


def add_common(r: argparse.ArgumentParser) -> None:
    """The options ``replay`` and ``demo`` share."""
    r.add_argument("--speed", type=float, default=0.0,
                   help="1 = recorded pace, alerts printed as they happen; 0 = as fast as possible (default)")
    r.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when the replay has warnings (e.g. under half the frames decode)")
    r.add_argument("--verbose", action="store_true", help="list every alert message (raised, updated, cleared)")
    r.add_argument("--export", nargs=2, metavar=("FORMAT", "DIR"),
                   help="also write the decoded signals and the windows, long format, as csv or parquet into DIR")
    r.add_argument("--no-progress", action="store_true", help="no progress line (it is off anyway when stderr is not a terminal)")


def add_subparser(subparsers: Any) -> None:
    r = subparsers.add_parser("replay", help="replay a recorded CAN log through all four components")
    r.add_argument("log", help="CAN log: .log (candump -L), .asc, .blf, .trc, .csv or .mf4")
    r.add_argument("--dbc", action="append", default=[], help="DBC file (repeatable; a later one wins on shared ids)")
    r.add_argument("--config", help="vehicle configuration (TOML; see docs/CONFIG.md)")
    r.add_argument("--out", required=True, help="output folder for report.html, summary.json and cloud.jsonl")
    add_common(r)
    r.add_argument("--processes", action="store_true",
                   help="run each component in its own process, as on a core device (uses more cores)")
    r.add_argument("--all-cpus", action="store_true",
                   help="let this process's threads run on any CPU: the components' (or, with --processes, those "
                        "relaying to them); by default they share one: they share one interpreter lock, and hand it "
                        "over faster there")
    r.set_defaults(func=_do_replay)

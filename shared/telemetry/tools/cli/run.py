"""``telemetry run``: the four components live on a laptop, against any python-can interface."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from telemetry.tools.paths import RECIPES, SAMPLE


def live_run(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    """The recipes' four functions on the local runtime, the reader on a live bus (the chase car's
    USB adapter: ``socketcan``, ``pcan``, ``slcan``, ``kvaser``, ...), the cloud an MQTT 5
    broker (``--endpoint``) or the outbox file. Runs until ``stop`` is set (Ctrl-C), then stops
    as a core stops them: the reader flushes its open batch and ends the stream (the windows
    close), the spool is given ``--drain`` seconds to empty, and each component is closed."""
    from telemetry.edge.config import load_config
    from telemetry.edge.transport import CloudTransport, OutboxFile
    from telemetry.tools.replay import build_summary
    from telemetry.tools.runtime import LocalRuntime

    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cloud: CloudTransport
    if args.endpoint:
        from telemetry.edge.mqtt import Mqtt5CloudTransport

        cloud = Mqtt5CloudTransport(endpoint=args.endpoint, port=args.port, cert=args.cert, key=args.key, ca=args.ca,
                                    client_id=args.client_id or f"{cfg.vehicle}-chase-car")
    else:
        cloud = OutboxFile(out / "cloud.jsonl")
    env = {"TELEMETRY_CAN_INTERFACE": args.interface, "TELEMETRY_CAN_CHANNEL": args.channel,
           "TELEMETRY_SPOOL": args.spool or str(out / "spool.db")}
    if args.bitrate:
        env["TELEMETRY_CAN_BITRATE"] = str(args.bitrate)
    try:
        with LocalRuntime(args.recipes, cfg, cloud, env=env, root=Path(args.recipes).resolve().parent,
                          one_cpu=not args.all_cpus) as runtime:
            print(f"reading {args.interface} {args.channel}; Ctrl-C stops", flush=True)
            stop.wait()
            for adapter in runtime.sources():  # the reader first: its open batch, then end of stream
                adapter.stop(timeout=10)
            left = "drained"
            try:
                runtime.drain(timeout=args.drain)
            except TimeoutError as exc:
                left = str(exc)  # kept in the spool for the next run, not lost
            components = [runtime.component(name) for name in runtime.runners]
            summary = build_summary(runtime, components, cfg, f"{args.interface}:{args.channel}")
            summary["drain"] = left
    finally:
        cloud.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _do_run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = live_run(args, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"stopped: {summary.get('frames_read', 0)} frames read, {summary.get('aggregates', 0)} aggregates, "
          f"{summary.get('alerts', 0)} alerts, {summary.get('uploaded_messages', 0)} messages to the cloud "
          f"({summary['drain']}); summary in {Path(args.out) / 'summary.json'}", flush=True)
    return 0


def add_subparser(subparsers: Any) -> None:
    r = subparsers.add_parser("run", help="run the four components live against a python-can interface (Ctrl-C stops)")
    r.add_argument("--interface", required=True, help="python-can interface: socketcan, pcan, slcan, kvaser, virtual, ...")
    r.add_argument("--channel", required=True, help="the interface's channel: can0, PCAN_USBBUS1, /dev/ttyACM0, ...")
    r.add_argument("--bitrate", type=int, help="bus bitrate, for interfaces that set it (not socketcan: ip link does)")
    r.add_argument("--config", default=str(SAMPLE / "vehicle.toml"), help="vehicle configuration (default: the sample car's)")
    r.add_argument("--out", default="out/run", help="folder of the outbox (cloud.jsonl), the spool and summary.json")
    r.add_argument("--spool", help="spool file (default: OUT/spool.db)")
    r.add_argument("--endpoint", help="AWS IoT Core endpoint (or any MQTT 5 broker); without it: the outbox file")
    r.add_argument("--port", type=int, default=8883)
    r.add_argument("--cert", help="device certificate (PEM), with --endpoint")
    r.add_argument("--key", help="device private key (PEM), with --endpoint")
    r.add_argument("--ca", help="CA certificate to trust (PEM)")
    r.add_argument("--client-id")
    r.add_argument("--drain", type=float, default=30.0, help="seconds to wait at the end for the spool to empty")
    r.add_argument("--all-cpus", action="store_true",
                   help="let the components' threads run on any CPU (by default they share one: they share one "
                        "interpreter lock, and hand it over faster there)")
    r.add_argument("--recipes", default=str(RECIPES), help=argparse.SUPPRESS)
    r.set_defaults(func=_do_run)

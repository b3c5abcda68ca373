"""``telemetry uploader``: run the uploader outside Greengrass, JSON messages on stdin, MQTT 5 out."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _do_uploader(args: argparse.Namespace) -> int:
    """The uploader outside Greengrass: messages (JSON lines) on standard input, AWS IoT Core (or
    any MQTT 5 broker) over mutual TLS. Each message is in the spool when its "ok" line is
    written. At the end of the input it waits for the spool to empty (at most --drain seconds)."""
    import json
    import threading
    import time

    from telemetry.edge.clock import SystemClock
    from telemetry.edge.components import Services, UploaderComponent
    from telemetry.edge.config import load_config
    from telemetry.edge.mqtt import Mqtt5CloudTransport
    from telemetry.edge.transport import InMemoryLocalTransport

    cfg = load_config(args.config)
    cloud = Mqtt5CloudTransport(endpoint=args.endpoint, port=args.port, cert=args.cert, key=args.key, ca=args.ca,
                                client_id=args.client_id or f"{cfg.vehicle}-uploader")
    env = {"TELEMETRY_SPOOL": args.spool} if args.spool else {}
    services = Services(InMemoryLocalTransport(), cloud, cfg, SystemClock(), env, "uploader")
    uploader = UploaderComponent(services)
    stop = threading.Event()
    sender = threading.Thread(target=uploader.run, args=(stop,), name="sender", daemon=True)
    sender.start()
    for n, line in enumerate(sys.stdin, 1):
        if line.strip():
            try:
                uploader.handle(json.loads(line))
            except ValueError as exc:
                uploader.stats["malformed"] += 1
                print(f"bad line {n}: {exc}", file=sys.stderr)
        print(f"ok {n}", flush=True)
    deadline = time.monotonic() + args.drain
    while uploader.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = uploader.pending()
    stop.set()  # an idle sender notices within [uploader] poll_seconds, a waiting one at once
    sender.join(10)
    print(json.dumps({"left_in_spool": left, **uploader.totals()}), flush=True)
    uploader.close()
    cloud.close()
    return 0 if left == 0 else 1


def add_subparser(subparsers: Any) -> None:
    u = subparsers.add_parser("uploader", help="run the uploader outside Greengrass: JSON messages on stdin, MQTT 5 out")
    u.add_argument("--config", required=True, help="vehicle configuration (its [uploader] section)")
    u.add_argument("--spool", help="spool file (default: [uploader] spool_path)")
    u.add_argument("--endpoint", required=True, help="AWS IoT Core endpoint (or any MQTT 5 broker)")
    u.add_argument("--port", type=int, default=8883)
    u.add_argument("--cert", required=True, help="device certificate (PEM)")
    u.add_argument("--key", required=True, help="device private key (PEM)")
    u.add_argument("--ca", help="CA certificate to trust (PEM)")
    u.add_argument("--client-id")
    u.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the spool to empty at the end")
    u.set_defaults(func=_do_uploader)

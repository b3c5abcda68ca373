"""``telemetry uploader``: run the uploader outside Greengrass, JSON messages on stdin, MQTT 5 out."""

from __future__ import annotations

import argparse
import sys
from typing import Any

MAX_NAMED = 100  # bad lines named one by one on stderr; past that only counted


def _do_uploader(args: argparse.Namespace) -> int:
    """The uploader outside Greengrass: messages (JSON lines) on standard input, AWS IoT Core (or
    any MQTT 5 broker) over mutual TLS. Every input line gets one answer on standard output:
    ``ok N`` once its message is in the spool (committed), ``bad N: reason`` for a line that is
    not a message the uploader takes (counted, named on stderr, and the next lines read all the
    same), ``error N: reason`` for a message the spool could not store (a full disk: its handler
    failed). At the end of the input it waits for the spool to empty (at most --drain seconds)
    and prints its counters; exit status 1 if anything was left in the spool or not stored."""
    import json
    import threading
    import time

    from telemetry.edge import messages
    from telemetry.edge.clock import SystemClock
    from telemetry.edge.components import Services, UploaderComponent
    from telemetry.edge.config import load_config
    from telemetry.edge.errors import MessageError
    from telemetry.edge.mqtt import Mqtt5CloudTransport
    from telemetry.edge.spool import SpoolError
    from telemetry.edge.transport import InMemoryLocalTransport

    cfg = load_config(args.config)
    cloud = Mqtt5CloudTransport(endpoint=args.endpoint, port=args.port, cert=args.cert, key=args.key, ca=args.ca,
                                client_id=args.client_id or f"{cfg.vehicle}-uploader")
    env = {"TELEMETRY_SPOOL": args.spool} if args.spool else {}
    services = Services(InMemoryLocalTransport(), cloud, cfg, SystemClock(), env, "uploader")
    try:
        uploader = UploaderComponent(services)
    except BaseException:
        cloud.close()
        raise
    stop = threading.Event()
    sender = threading.Thread(target=uploader.run, args=(stop,), name="sender", daemon=True)
    sender.start()
    bad = not_stored = 0

    def refuse(n: int, reason: str) -> None:
        nonlocal bad
        bad += 1
        if bad <= MAX_NAMED:
            print(f"bad line {n}: {reason}", file=sys.stderr)
        elif bad == MAX_NAMED + 1:
            print(f"more bad lines: only counted from line {n} on", file=sys.stderr)
        print(f"bad {n}: {reason}", flush=True)

    for n, raw in enumerate(sys.stdin.buffer, 1):  # bytes: a line that is not UTF-8 is one bad line
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            refuse(n, f"not UTF-8: {exc}")
            continue
        if not text.strip():
            print(f"ok {n}", flush=True)
            continue
        try:
            message = messages.decode(json.loads(text), *UploaderComponent.accepts)
        except (ValueError, RecursionError) as exc:  # json's errors are ValueErrors
            refuse(n, f"not JSON: {exc}")
            continue
        except MessageError as exc:
            refuse(n, str(exc))
            continue
        if not isinstance(message, (messages.Aggregates, messages.Window, messages.Alert, messages.Batch)):
            refuse(n, f"{message.kind} messages are not uploaded")
            continue
        for reason in getattr(message, "refused", ()):  # a batch's bad items: its good ones are stored
            print(f"bad line {n}: batch item refused: {reason}", file=sys.stderr)
            uploader.stats["malformed"] += 1
        try:
            uploader.on_message(message)
        except SpoolError as exc:
            not_stored += 1
            print(f"line {n} not stored: {exc}", file=sys.stderr)
            print(f"error {n}: not stored: {exc}", flush=True)
            continue
        print(f"ok {n}", flush=True)
    deadline = time.monotonic() + args.drain
    while uploader.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = uploader.pending()
    stop.set()  # an idle sender notices within [uploader] poll_seconds, a waiting one at once
    sender.join(10)
    summary: dict[str, object] = {"left_in_spool": left, "bad_lines": bad, "not_stored": not_stored}
    if cloud.failure:
        summary["connection_failure"] = cloud.failure  # said on stderr when it happened
    print(json.dumps({**summary, **uploader.totals()}), flush=True)
    uploader.close()
    cloud.close()
    return 0 if left == 0 and not not_stored else 1


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

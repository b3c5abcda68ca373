"""Command line: ``python -m telemetry {replay,demo,simulate}`` (``./build.sh`` calls it).

Errors of ours become one line, ``error: ...``, and exit status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from telemetry.edge.errors import TelemetryError
from telemetry.tools.paths import RECIPES, SAMPLE



def _replay(args: argparse.Namespace) -> int:
    from telemetry.tools.replay import alerts_from_outbox, format_summary, replay

    summary = replay(args.log, out_dir=args.out, config=args.config, dbc=args.dbc, speed=args.speed)
    print(format_summary(summary, alerts_from_outbox(Path(args.out) / "cloud.jsonl")))
    print(f"Wrote {Path(args.out) / 'cloud.jsonl'} and {Path(args.out) / 'summary.json'}")
    return 1 if summary["handler_errors"] else 0


def _demo(args: argparse.Namespace) -> int:
    args.log = SAMPLE / "drive.log"
    args.config = SAMPLE / "vehicle.toml"
    args.dbc = []
    print(f"Demo: the sample solar car's recorded drive, {args.log.name}, through the four components\n")
    return _replay(args)


def _simulate(args: argparse.Namespace) -> int:
    from telemetry.tools.simulator import write_drive

    frames = write_drive(args.out, seconds=args.seconds, seed=args.seed)
    print(f"Wrote {frames} frames to {args.out}")
    return 0


def _uploader(args: argparse.Namespace) -> int:
    """The uploader outside Greengrass: messages (JSON lines) on standard input, AWS IoT Core (or
    any MQTT 5 broker) over mutual TLS. Each message is in the spool when its "ok" line is
    written. At the end of the input it waits for the spool to empty (at most --drain seconds)."""
    import json
    import threading
    import time

    from telemetry.edge.clock import SystemClock
    from telemetry.edge.components import Services
    from telemetry.edge.config import load_config
    from telemetry.edge.mqtt import Mqtt5CloudTransport
    from telemetry.edge.transport import InMemoryLocalTransport
    from telemetry.edge.uploader import UploaderComponent

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
    stop.set()
    uploader.sender.wake.set()
    sender.join(10)
    print(json.dumps({"left_in_spool": left, **uploader.totals()}), flush=True)
    uploader.close()
    cloud.close()
    return 0 if left == 0 else 1


def _package(args: argparse.Namespace) -> int:
    from telemetry.tools.package import package

    made = package(args.arch, out=args.out, config=args.config)
    for p in made:
        print(f"{p.path}  {p.size / 1e6:6.1f} MB  sha256 {p.sha256[:16]}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from telemetry.edge.config import load_config
    from telemetry.tools.deploy import Deployer, DeployError, plan, target_arn, validate
    from telemetry.tools.package import package
    from telemetry.tools.recipes import check_recipes, load_recipes

    config = Path(args.config or SAMPLE / "vehicle.toml")
    cfg = load_config(config)
    recipes_dir = Path(args.recipes)
    recipes = check_recipes(load_recipes(recipes_dir, recipes_dir.resolve().parent))  # refused here, before any request
    region, account = args.region, args.account
    if not args.dry_run:
        import boto3

        session = boto3.session.Session(region_name=region)
        region = session.region_name
        if not region:
            raise DeployError("no AWS region: give --region or set AWS_REGION")
        if not account:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                account = session.client("sts").get_caller_identity()["Account"]
            except (BotoCoreError, ClientError) as exc:
                raise DeployError(f"cannot tell the AWS account ({exc}); check your credentials") from exc
    region = region or "us-east-1"
    account = account or "123456789012"
    made = {p.recipe.name: p.path for p in package(args.arch, out=args.out, config=config, recipes_dir=recipes_dir)}
    role = args.role_arn or f"arn:aws:iam::{account}:role/telemetry-lambda"
    the_plan = plan(recipes, cfg, made, region=region, account=account, bucket=args.bucket, role_arn=role,
                    target_arn=target_arn(region, account, thing=args.thing, thing_group=args.thing_group),
                    arch=args.arch, legacy=args.legacy)
    problems = validate(the_plan)
    if problems:
        raise DeployError("the requests would be refused:\n  " + "\n  ".join(problems))
    written = the_plan.write(Path(args.out) / "requests")
    for service, operation, params in the_plan.requests():
        target = params.get("FunctionName") or params.get("lambdaFunction", {}).get("componentName") \
            or params.get("targetArn") or params.get("Key")
        print(f"{service:<13} {operation:<23} {target}")
    for note in the_plan.notes:
        print(f"note: {note}")
    print(f"{len(written)} requests written to {Path(args.out) / 'requests'}; all pass botocore's validation")
    if args.dry_run:
        return 0
    import boto3

    session = boto3.session.Session(region_name=region)
    deployer = Deployer(session.client("s3"), session.client("lambda"), session.client("greengrassv2"))
    deployment_id = deployer.deploy(the_plan)
    print(f"deployment id: {deployment_id}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay a recorded CAN log through all four components")
    r.add_argument("log", help="CAN log: .log (candump -L), .asc, .blf, .trc, .csv or .mf4")
    r.add_argument("--dbc", action="append", default=[], help="DBC file (repeatable; a later one wins on shared ids)")
    r.add_argument("--config", help="vehicle configuration (TOML; see docs/CONFIG.md)")
    r.add_argument("--out", required=True, help="output folder for cloud.jsonl and summary.json")
    r.add_argument("--speed", type=float, default=0.0, help="1 = recorded pace, 0 = as fast as possible (default)")
    r.set_defaults(func=_replay)

    d = sub.add_parser("demo", help="replay the bundled sample drive")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--speed", type=float, default=0.0)
    d.set_defaults(func=_demo)

    u = sub.add_parser("uploader", help="run the uploader outside Greengrass: JSON messages on stdin, MQTT 5 out")
    u.add_argument("--config", required=True, help="vehicle configuration (its [uploader] section)")
    u.add_argument("--spool", help="spool file (default: [uploader] spool_path)")
    u.add_argument("--endpoint", required=True, help="AWS IoT Core endpoint (or any MQTT 5 broker)")
    u.add_argument("--port", type=int, default=8883)
    u.add_argument("--cert", required=True, help="device certificate (PEM)")
    u.add_argument("--key", required=True, help="device private key (PEM)")
    u.add_argument("--ca", help="CA certificate to trust (PEM)")
    u.add_argument("--client-id")
    u.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the spool to empty at the end")
    u.set_defaults(func=_uploader)

    k = sub.add_parser("package", help="build one deployment zip per Lambda function")
    k.add_argument("--arch", choices=["x86_64", "aarch64"], default="aarch64", help="the core device's CPU")
    k.add_argument("--out", default="build")
    k.add_argument("--config", help="vehicle configuration to bundle (default: the sample car's)")
    k.set_defaults(func=_package)

    y = sub.add_parser("deploy", help="deploy the four Lambda components to a core device (boto3)")
    where = y.add_mutually_exclusive_group(required=True)
    where.add_argument("--thing-group")
    where.add_argument("--thing")
    y.add_argument("--bucket", required=True, help="S3 bucket for the function zips")
    y.add_argument("--role-arn", help="the Lambda functions' execution role (default: role/telemetry-lambda)")
    y.add_argument("--region")
    y.add_argument("--account", help="AWS account id (default: asked of STS)")
    y.add_argument("--arch", choices=["x86_64", "aarch64"], default="aarch64")
    y.add_argument("--config", help="vehicle configuration (default: the sample car's)")
    y.add_argument("--out", default="build")
    y.add_argument("--legacy", action="store_true", help="publish with greengrasssdk through the LegacySubscriptionRouter")
    y.add_argument("--dry-run", action="store_true", help="print the plan and write the requests; call no AWS API")
    y.add_argument("--recipes", default=str(RECIPES), help=argparse.SUPPRESS)
    y.set_defaults(func=_deploy)

    s = sub.add_parser("simulate", help="record a simulated drive of the sample vehicle")
    s.add_argument("--out", default=str(SAMPLE / "drive.log"))
    s.add_argument("--seconds", type=float, default=240.0)
    s.add_argument("--seed", type=int, default=2026)
    s.set_defaults(func=_simulate)
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

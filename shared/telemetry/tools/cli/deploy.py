"""``telemetry deploy``: deploy the four Lambda components to a core device (boto3)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from telemetry.tools.paths import RECIPES, SAMPLE


def clients(region: str | None) -> tuple[Any, Any, Any, Any]:
    """(session region, s3, lambda, greengrassv2 clients) of the caller's credentials (boto3)."""
    import boto3

    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        from telemetry.tools.deploy import DeployError

        raise DeployError("no AWS region: give --region or set AWS_REGION")
    return session.region_name, session.client("s3"), session.client("lambda"), session.client("greengrassv2")


def account_of(region: str) -> str:
    import boto3

    return str(boto3.session.Session(region_name=region).client("sts").get_caller_identity()["Account"])


def _do_deploy(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from telemetry.edge.config import load_config
    from telemetry.tools.deploy import (
        Deployer,
        DeployError,
        plan,
        target_arn,
        validate,
        vehicle_configuration,
    )
    from telemetry.tools.package import package
    from telemetry.tools.recipes import check_recipes, load_recipes

    config = Path(args.config or SAMPLE / "vehicle.toml")
    cfg = load_config(config)
    recipes_dir = Path(args.recipes)
    recipes = check_recipes(load_recipes(recipes_dir, recipes_dir.resolve().parent))  # refused here, before any request
    region, account = args.region, args.account
    aws: tuple[Any, Any, Any, Any] | None = None
    try:
        aws = clients(region)
        region = aws[0]
        account = account or account_of(region)
    except (BotoCoreError, ClientError, DeployError) as exc:
        if not args.dry_run:
            raise DeployError(f"cannot reach AWS ({exc}); check your credentials and --region") from exc
        print(f"note: AWS not reachable ({exc}): the plan is built with placeholders and no current deployment")
        aws = None
    region = region or "us-east-1"
    account = account or "123456789012"
    made = {p.recipe.name: p.path for p in package(args.arch, out=args.out, config=config, recipes_dir=recipes_dir)}
    role = args.role_arn or f"arn:aws:iam::{account}:role/telemetry-lambda"
    the_plan = plan(recipes, cfg, made, region=region, account=account, bucket=args.bucket, role_arn=role,
                    target_arn=target_arn(region, account, thing=args.thing, thing_group=args.thing_group),
                    arch=args.arch, legacy=args.legacy, vehicle=vehicle_configuration(config))
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
    cloud = cloud_side(args, cfg, region, account) if args.cloud_decoder else None
    if args.dry_run:
        return dry_run(the_plan, aws, Path(args.out) / "requests")
    assert aws is not None
    _, s3, lambda_, greengrass = aws
    deployer = Deployer(s3, lambda_, greengrass)
    deployment_id = deployer.deploy(the_plan)
    print(f"deployment id: {deployment_id}")
    if cloud is not None:
        import boto3

        from telemetry.tools import cloudrule

        p, code = cloud
        for line in cloudrule.deploy(p, s3, lambda_, boto3.session.Session(region_name=region).client("iot"), code):
            print(line)
    return 0


def cloud_side(args: argparse.Namespace, cfg: Any, region: str, account: str) -> tuple[Any, Path]:
    """The cloud side's plan, its requests checked against botocore's models and written (with
    the decoder's zip and the Athena DDL) under ``<out>/requests/cloud``."""
    from telemetry.tools import cloudrule
    from telemetry.tools.deploy import DeployError
    from telemetry.tools.recipes import request_problems

    role = args.decoder_role_arn or f"arn:aws:iam::{account}:role/telemetry-decoder"
    p = cloudrule.plan(cfg, region=region, account=account, bucket=args.bucket, role_arn=role)
    problems = [f"{op}: {problem}" for service, op, params in p.requests if service != "s3"
                for problem in request_problems(service, op, params)]
    if problems:
        raise DeployError("the cloud side's requests would be refused:\n  " + "\n  ".join(problems))
    folder = Path(args.out) / "requests" / "cloud"
    written = cloudrule.write(p, folder)
    for service, operation, params in p.requests:
        target = params.get("FunctionName") or params.get("ruleName") or params.get("Key")
        print(f"{service:<13} {operation:<23} {target}")
    print(f"cloud side: {len(written)} files written to {folder} (requests, the decoder's zip, the Athena table); "
          f"its rule reads {cloudrule.topic_filter(cfg)}")
    return p, folder / f"{cloudrule.FUNCTION}.zip"


def dry_run(the_plan: Any, aws: tuple[Any, Any, Any, Any] | None, folder: Path | None = None) -> int:
    """What a deploy would change: the bucket's Region checked and the merged deployment's diff
    against the target's current one, with read-only calls (GetBucketLocation, ListDeployments,
    GetDeployment, ListComponentVersions); nothing is created or changed."""
    from botocore.exceptions import BotoCoreError

    from telemetry.tools.deploy import Deployer, DeployError, deployment_diff, merge_deployment

    target = the_plan.deployment["targetArn"]
    current, merged = None, merge_deployment(the_plan.deployment, None)
    if aws is not None:
        _, s3, lambda_, greengrass = aws
        deployer = Deployer(s3, lambda_, greengrass)
        deployer.check_bucket(the_plan)
        try:
            the_plan, lines = deployer.preview(the_plan)
            for line in lines:
                print(line)
        except (BotoCoreError, DeployError) as exc:
            print(f"note: what the cloud has of the functions and components could not be read ({exc})")
        try:
            current, merged = deployer.merged_deployment(the_plan)
        except (BotoCoreError, DeployError) as exc:
            print(f"note: the current deployment of {target} could not be read ({exc})")
        for line in deployer.log:
            print(line)
    else:
        print("note: without AWS it is not known which code changed: a deploy uploads only the zips whose code or "
              "settings changed, and creates only the component versions that changed")
    show_configuration(the_plan)
    if folder is not None:
        path = folder / "merged-CreateDeployment.json"
        path.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")
        print(f"the deployment as it would be created (merged): {path}")
    where = "its current deployment" if current else "no current deployment (a first deployment)"
    print(f"deployment for {target}, against {where}:")
    for line in deployment_diff(current, merged):
        print(f"  {line}")
    print("dry run: nothing was created or changed")
    return 0


def show_configuration(the_plan: Any) -> None:
    """The configuration each component is given: the vehicle configuration (the same for all,
    shown once) and each one's IPC authorisation."""
    merges = {name: json.loads(spec["configurationUpdate"]["merge"])
              for name, spec in the_plan.deployment["components"].items() if name.startswith("telemetry.")}
    vehicles = [m.get("vehicle") for m in merges.values()]
    if vehicles and vehicles[0] is not None:
        print("configuration update of every component: reset /vehicle, then merge {\"vehicle\": ...}:")
        print(json.dumps({"vehicle": vehicles[0]}, indent=2, sort_keys=True))
    for name, merge in sorted(merges.items()):
        grants = [f"{op.split('#')[1]} {', '.join(p['resources'])}" for service in merge["accessControl"].values()
                  for p in service.values() for op in p["operations"]]
        print(f"  {name} accessControl: {'; '.join(grants)}")


def add_subparser(subparsers: Any) -> None:
    y = subparsers.add_parser("deploy", help="deploy the four Lambda components to a core device (boto3)")
    where = y.add_mutually_exclusive_group(required=True)
    where.add_argument("--thing-group")
    where.add_argument("--thing")
    y.add_argument("--bucket", required=True, help="S3 bucket for the function zips")
    y.add_argument("--role-arn", help="the Lambda functions' execution role (default: role/telemetry-lambda)")
    y.add_argument("--region")
    y.add_argument("--account", help="AWS account id (default: asked of STS)")
    y.add_argument("--arch", choices=["x86_64", "aarch64"], default="aarch64")
    y.add_argument("--config", help="vehicle configuration (default: the sample car's), written into each "
                                    "component's configuration: a change of it alone uploads no zip")
    y.add_argument("--out", default="build")
    y.add_argument("--legacy", action="store_true", help="publish with greengrasssdk through the LegacySubscriptionRouter")
    y.add_argument("--dry-run", action="store_true",
                   help="print the plan, write the requests and show the deployment's diff against the target's "
                        "current one (read-only AWS calls); create or change nothing")
    y.add_argument("--cloud-decoder", action="store_true",
                   help="also the cloud side: the IoT topic rule on the fleet's aggregates topic, the decoder "
                        "function writing Parquet to the bucket, and the Athena table (README)")
    y.add_argument("--decoder-role-arn", help="the decoder function's execution role, also used by the rule's "
                                               "error action (default: role/telemetry-decoder)")
    y.add_argument("--recipes", default=str(RECIPES), help=argparse.SUPPRESS)
    y.set_defaults(func=_do_deploy)

"""``telemetry deploy``: deploy the four Lambda components to a core device (boto3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from telemetry.tools.paths import RECIPES, SAMPLE


def _do_deploy(args: argparse.Namespace) -> int:
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
    y.add_argument("--config", help="vehicle configuration (default: the sample car's)")
    y.add_argument("--out", default="build")
    y.add_argument("--legacy", action="store_true", help="publish with greengrasssdk through the LegacySubscriptionRouter")
    y.add_argument("--dry-run", action="store_true", help="print the plan and write the requests; call no AWS API")
    y.add_argument("--recipes", default=str(RECIPES), help=argparse.SUPPRESS)
    y.set_defaults(func=_do_deploy)

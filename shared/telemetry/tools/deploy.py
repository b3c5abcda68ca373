"""Deployment: from ``recipes/`` and the vehicle configuration to Lambda components running on a
Greengrass core device.

``plan()`` builds every AWS request: per function the Lambda ``CreateFunction`` and
``UpdateFunctionCode`` requests, per component the Greengrass ``CreateComponentVersion``
``lambdaFunction`` request, and one ``CreateDeployment`` for a thing or thing group carrying each
component's configuration merge with least-privilege IPC ``accessControl`` (exactly the local
topics a component publishes to, exactly the IoT Core topics the uploader publishes to).
``validate()`` checks them all against botocore's service models, offline. ``Deployer`` runs
them with boto3 clients it is handed: upload, create or update each function and publish a
version, create the component versions and wait until they are deployable, create the
deployment, and return its id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry.edge.config import VehicleConfig
from telemetry.edge.errors import TelemetryError
from telemetry.edge.uploader import cloud_topics
from telemetry.tools.recipes import Recipe, request_problems

LOG = logging.getLogger(__name__)

LEGACY_ROUTER = "aws.greengrass.LegacySubscriptionRouter"
LEGACY_ROUTER_VERSION = "2.1.15"
FUNCTION_ARN = "arn:aws:lambda:{region}:{account}:function:{name}"


class DeployError(TelemetryError):
    pass


@dataclass
class FunctionPlan:
    recipe: Recipe
    zip_path: Path
    s3_key: str
    create: dict[str, Any]
    configure: dict[str, Any]  # UpdateFunctionConfiguration, for a function that exists already
    update: dict[str, Any]
    function_arn: str


@dataclass
class Plan:
    bucket: str
    functions: list[FunctionPlan]
    components: list[dict[str, Any]]  # CreateComponentVersion, lambdaArn without its version yet
    deployment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def requests(self, version: str = "<version>") -> list[tuple[str, str, dict[str, Any]]]:
        """(service, operation, params) of every request, in the order a deploy makes them."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        for f in self.functions:
            out.append(("s3", "PutObject", {"Bucket": self.bucket, "Key": f.s3_key, "Body": f"<{f.zip_path.name}>"}))
            out.append(("lambda", "CreateFunction", f.create))
            out.append(("lambda", "UpdateFunctionConfiguration", f.configure))
            out.append(("lambda", "UpdateFunctionCode", f.update))
        for c in self.components:
            params = json.loads(json.dumps(c))
            params["lambdaFunction"]["lambdaArn"] += f":{version}" if version.isdigit() else ":1"
            out.append(("greengrassv2", "CreateComponentVersion", params))
        out.append(("greengrassv2", "CreateDeployment", self.deployment))
        return out

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (service, operation, params) in enumerate(self.requests(), 1):
            path = folder / f"{i:02d}-{service}-{operation}.json"
            path.write_text(json.dumps(params, indent=2, sort_keys=True, default=str) + "\n")
            paths.append(path)
        return paths


def access_control(recipe: Recipe, cfg: VehicleConfig) -> dict[str, Any]:
    """Least privilege: the exact topics this component publishes to. (Its PUB_SUB event
    sources are subscribed for it by the Lambda launcher, from the recipe.)"""
    acl: dict[str, Any] = {}
    output = recipe.environment.get("TELEMETRY_OUTPUT_TOPIC")
    if output:
        acl["aws.greengrass.ipc.pubsub"] = {
            f"{recipe.name}:pubsub:1": {
                "policyDescription": f"{recipe.name} publishes its messages on {output}",
                "operations": ["aws.greengrass#PublishToTopic"],
                "resources": [output],
            }
        }
    if "TELEMETRY_SPOOL" in recipe.environment:  # the uploader: the cloud topics of its bundles
        topics = cloud_topics(cfg.cloud_prefix)
        acl["aws.greengrass.ipc.mqttproxy"] = {
            f"{recipe.name}:mqttproxy:1": {
                "policyDescription": f"{recipe.name} publishes to AWS IoT Core under {cfg.cloud_prefix}",
                "operations": ["aws.greengrass#PublishToIoTCore"],
                "resources": topics,
            }
        }
    return acl


def plan(
    recipes: list[Recipe],
    cfg: VehicleConfig,
    zips: dict[str, Path],
    *,
    region: str,
    account: str,
    bucket: str,
    role_arn: str,
    target_arn: str,
    arch: str = "aarch64",
    deployment_name: str | None = None,
    legacy: bool = False,
) -> Plan:
    lambda_arch = {"x86_64": "x86_64", "aarch64": "arm64"}[arch]
    functions = []
    components = []
    deployment_components: dict[str, Any] = {}
    for recipe in recipes:
        name = recipe.function["FunctionName"]
        zip_path = zips[recipe.name]
        key = f"lambda/{name}/{zip_path.name}"
        settings = {k: v for k, v in recipe.function.items()}
        create = {**settings, "Role": role_arn, "Code": {"S3Bucket": bucket, "S3Key": key},
                  "Architectures": [lambda_arch], "Publish": True}
        configure = {**settings, "Role": role_arn}
        update = {"FunctionName": name, "S3Bucket": bucket, "S3Key": key, "Architectures": [lambda_arch], "Publish": True}
        arn = FUNCTION_ARN.format(region=region, account=account, name=name)
        functions.append(FunctionPlan(recipe, zip_path, key, create, configure, update, arn))
        lambda_function = json.loads(json.dumps(dict(recipe.lambda_function)))
        if legacy and recipe.name.endswith("Uploader"):
            env = lambda_function["componentLambdaParameters"].setdefault("environmentVariables", {})
            env["TELEMETRY_CLOUD"] = "legacy"
        components.append({"lambdaFunction": {"lambdaArn": arn, **lambda_function}})
        merge = {"accessControl": access_control(recipe, cfg)}
        deployment_components[recipe.name] = {
            "componentVersion": recipe.version,
            "configurationUpdate": {"merge": json.dumps(merge, sort_keys=True)},
        }
    notes = []
    if legacy:
        uploader = next(r for r in recipes if r.name.endswith("Uploader"))
        subscription = f"{uploader.name.replace('.', '-')}-to-cloud"
        router = {"subscriptions": {subscription: {
            "id": subscription, "source": f"component:{uploader.name}", "subject": f"{cfg.cloud_prefix}/#", "target": "cloud",
        }}}
        deployment_components[LEGACY_ROUTER] = {
            "componentVersion": LEGACY_ROUTER_VERSION,
            "configurationUpdate": {"merge": json.dumps(router, sort_keys=True)},
        }
        notes.append(f"legacy publish path: {LEGACY_ROUTER} {LEGACY_ROUTER_VERSION} routes {cfg.cloud_prefix}/# to the cloud")
    deployment = {
        "targetArn": target_arn,
        "deploymentName": deployment_name or f"telemetry-{cfg.vehicle}",
        "components": deployment_components,
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
        },
    }
    return Plan(bucket, functions, components, deployment, notes)


def validate(p: Plan) -> list[str]:
    """Every request against botocore's service model of its operation, offline."""
    problems = []
    for service, operation, params in p.requests(version="1"):
        if service == "s3":
            continue
        problems += [f"{operation}: {problem}" for problem in request_problems(service, operation, params)]
    return problems


def target_arn(region: str, account: str, *, thing: str | None = None, thing_group: str | None = None) -> str:
    if bool(thing) == bool(thing_group):
        raise DeployError("give exactly one of --thing and --thing-group")
    if thing:
        return f"arn:aws:iot:{region}:{account}:thing/{thing}"
    return f"arn:aws:iot:{region}:{account}:thinggroup/{thing_group}"


def _client_error(exc: Exception, doing: str) -> DeployError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    message = getattr(exc, "response", {}).get("Error", {}).get("Message", str(exc))
    if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
        return DeployError(f"{doing}: your AWS credentials have expired ({code}); refresh them and run again")
    if code == "ConflictException" and doing.startswith("component"):
        return DeployError(f"{doing}: this componentVersion exists already ({message}); "
                           "bump componentVersion in its recipe to deploy new code")
    if code in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"):
        return DeployError(f"{doing}: not allowed ({code}: {message}); see the deployer's IAM policy in the README")
    return DeployError(f"{doing}: {code or type(exc).__name__}: {message}")


class Deployer:
    """Runs a plan with the boto3 clients it is given (s3, lambda, greengrassv2)."""

    def __init__(self, s3: Any, lambda_: Any, greengrass: Any, *, poll_seconds: float = 5.0,
                 timeout_seconds: float = 600.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.s3, self.lambda_, self.greengrass = s3, lambda_, greengrass
        self.poll, self.timeout, self.sleep = poll_seconds, timeout_seconds, sleep
        self.log: list[str] = []

    def _say(self, line: str) -> None:
        LOG.info("%s", line)
        self.log.append(line)

    def deploy(self, p: Plan) -> str:
        from botocore.exceptions import ClientError

        versions: dict[str, str] = {}
        for f in p.functions:
            name = f.create["FunctionName"]
            try:
                self.s3.put_object(Bucket=p.bucket, Key=f.s3_key, Body=f.zip_path.read_bytes())
                self._say(f"uploaded s3://{p.bucket}/{f.s3_key}")
                try:
                    self.lambda_.get_function(FunctionName=name)
                    exists = True
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                        raise
                    exists = False
                if exists:
                    # settings first (timeout, handler, ...), then the code, published as a version
                    self.lambda_.update_function_configuration(**f.configure)
                    self._wait_function(name, "$LATEST")
                    response = self.lambda_.update_function_code(**f.update)
                else:
                    response = self.lambda_.create_function(**f.create)
                version = response["Version"]
                self._wait_function(name, version)
            except ClientError as exc:
                raise _client_error(exc, f"function {name}") from exc
            versions[f.recipe.name] = version
            self._say(f"{'updated' if exists else 'created'} {name}, version {version}")
        for component in p.components:
            params = json.loads(json.dumps(component))
            name = params["lambdaFunction"]["componentName"]
            params["lambdaFunction"]["lambdaArn"] += f":{versions[name]}"
            try:
                arn = self.greengrass.create_component_version(**params)["arn"]
                self._wait_component(name, arn)
            except ClientError as exc:
                raise _client_error(exc, f"component {name}") from exc
            self._say(f"component {name} {params['lambdaFunction']['componentVersion']} is deployable")
        try:
            deployment_id = self.greengrass.create_deployment(**p.deployment)["deploymentId"]
        except ClientError as exc:
            raise _client_error(exc, "deployment") from exc
        self._say(f"deployment {deployment_id} created for {p.deployment['targetArn']}")
        return deployment_id

    def _wait_function(self, name: str, version: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            config = self.lambda_.get_function_configuration(FunctionName=name, Qualifier=version)
            state, update = config.get("State"), config.get("LastUpdateStatus")
            if state == "Failed" or update == "Failed":
                raise DeployError(f"function {name} version {version} failed: {config.get('StateReason') or config.get('LastUpdateStatusReason')}")
            if state == "Active" and update in (None, "Successful"):
                return
            if time.monotonic() > deadline:
                raise DeployError(f"function {name} version {version} is still {state}/{update}")
            self.sleep(self.poll)

    def _wait_component(self, name: str, arn: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.greengrass.describe_component(arn=arn)["status"]
            state = status.get("componentState")
            if state == "DEPLOYABLE":
                return
            if state == "FAILED":
                errors = "; ".join(f"{k}: {v}" for k, v in (status.get("errors") or {}).items())
                raise DeployError(f"component {name} failed to become deployable: {status.get('message', '')} {errors}".strip())
            if time.monotonic() > deadline:
                raise DeployError(f"component {name} is still {state} after {self.timeout:.0f} s")
            self.sleep(self.poll)

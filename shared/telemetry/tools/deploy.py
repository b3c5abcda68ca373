"""Deployment: from ``recipes/`` and the vehicle configuration to Lambda components running on a
Greengrass core device.

``plan()`` builds every AWS request: per function the Lambda ``CreateFunction`` and
``UpdateFunctionCode`` requests, per component the Greengrass ``CreateComponentVersion``
``lambdaFunction`` request, and one ``CreateDeployment`` for a thing or thing group carrying each
component's configuration merge with least-privilege IPC ``accessControl`` (exactly the local
topics a component publishes to, exactly the IoT Core topics the uploader publishes to).
``validate()`` checks them all against botocore's service models, offline. ``Deployer`` runs
them with boto3 clients it is handed: check the bucket is in the functions' Region, upload,
create or update each function and publish a version, create the component versions and wait
until they are deployable, read the target's current deployment and merge ours into it (a
deployment replaces the previous one: components it does not list are removed from the
devices), create the deployment, and return its id.

Each component's deployment entry carries ``runWith.systemResourceLimits`` (memory: the
recipe's ``memorySizeInKB``, which ``memorySizeInKB`` itself does not enforce for NoContainer
functions; CPU share: the recipe's ``deployment.cpus``), and each component's platform names the
zip's architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry.edge.component_config import CONFIG_KEY
from telemetry.edge.config import VehicleConfig, parse_config, read_config_data
from telemetry.edge.errors import TelemetryError
from telemetry.edge.uploader import cloud_topics
from telemetry.tools.recipes import Recipe, request_problems

LOG = logging.getLogger(__name__)

LEGACY_ROUTER = "aws.greengrass.LegacySubscriptionRouter"
LEGACY_ROUTER_RANGE = ">=2.1.0 <3.0.0"  # resolved at deploy time to the newest version AWS has in it
FUNCTION_ARN = "arn:aws:lambda:{region}:{account}:function:{name}"
PUBLIC_COMPONENT_ARN = "arn:aws:greengrass:{region}:aws:components:{name}"
# The recipe reference's spelling of the zip's architecture (componentPlatforms attributes).
PLATFORM_ARCHITECTURE = {"aarch64": "aarch64", "x86_64": "amd64"}


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
    digest: str = ""  # the code (the zip without vehicle.toml) and the settings: what a published version is


@dataclass
class Plan:
    bucket: str
    functions: list[FunctionPlan]
    components: list[dict[str, Any]]  # CreateComponentVersion, lambdaArn without its version yet
    deployment: dict[str, Any]  # ours alone: merged into the target's current deployment at deploy time
    notes: list[str] = field(default_factory=list)
    region: str = ""
    version_ranges: dict[str, str] = field(default_factory=dict)  # public components resolved at deploy time
    account: str = ""

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
    """Least privilege: the exact topics this component publishes to, locally and to IoT Core.
    (Its PUB_SUB event sources are subscribed for it by the Lambda launcher, from the recipe.)"""
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
        description = f"{recipe.name} publishes to AWS IoT Core under {cfg.cloud_prefix}"
    else:  # the others: their status (bus down, messages lost) on the health topic only
        topics = [f"{cfg.cloud_prefix}/health"]
        description = f"{recipe.name} reports its status on {topics[0]}"
    acl["aws.greengrass.ipc.mqttproxy"] = {
        f"{recipe.name}:mqttproxy:1": {
            "policyDescription": description,
            "operations": ["aws.greengrass#PublishToIoTCore"],
            "resources": topics,
        }
    }
    return acl


def vehicle_configuration(path: Path) -> dict[str, Any]:
    """The vehicle configuration file as the components read it from their Greengrass
    configuration (key ``vehicle``): its tables as JSON, checked first as the file is (a value the
    components would refuse is refused here, before any request). Paths in it (DBC files) stay
    as written, relative to the file, which the zip holds beside them."""
    data = read_config_data(path)
    parse_config(data, base=path.parent, source=str(path))
    try:
        return dict(json.loads(json.dumps(data, allow_nan=False)))
    except (TypeError, ValueError) as exc:  # a TOML date, which no key takes (load_config refused NaN)
        raise DeployError(f"{path}: cannot be written as component configuration: {exc}") from None


def configuration_update(recipe: Recipe, cfg: VehicleConfig, vehicle: dict[str, Any] | None) -> dict[str, Any]:
    """A component's ``configurationUpdate``: its IPC ``accessControl`` and, given one, the vehicle
    configuration under ``vehicle``. ``reset`` of ``/vehicle`` first, so that a key removed from
    the file is removed on the device too (a merge alone would keep the old value). Reading its
    own configuration needs no IPC authorisation (the nucleus authorises pub/sub, IoT Core,
    shadows, secrets, ... by policy, not a component's own configuration)."""
    merge: dict[str, Any] = {"accessControl": access_control(recipe, cfg)}
    if vehicle is None:
        return {"merge": json.dumps(merge, sort_keys=True)}
    merge[CONFIG_KEY] = vehicle
    return {"merge": json.dumps(merge, sort_keys=True), "reset": [f"/{CONFIG_KEY}"]}


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
    vehicle: dict[str, Any] | None = None,
) -> Plan:
    """Every request of a deploy. ``vehicle``: the vehicle configuration as JSON
    (``vehicle_configuration``), written into each component's configuration."""
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
        digest = _digest({"code": code_digest(zip_path), "settings": configure, "architectures": [lambda_arch]})
        functions.append(FunctionPlan(recipe, zip_path, key, create, configure, update, arn, digest))
        lambda_function = json.loads(json.dumps(dict(recipe.lambda_function)))
        lambda_function["componentPlatforms"] = platforms(lambda_function.get("componentPlatforms"), arch)
        if legacy and recipe.name.endswith("Uploader"):
            env = lambda_function["componentLambdaParameters"].setdefault("environmentVariables", {})
            env["TELEMETRY_CLOUD"] = "legacy"
            lambda_function.setdefault("componentDependencies", {})[LEGACY_ROUTER] = {
                "versionRequirement": LEGACY_ROUTER_RANGE, "dependencyType": "SOFT"}
        components.append({"lambdaFunction": {"lambdaArn": arn, **lambda_function}})
        deployment_components[recipe.name] = {
            "componentVersion": recipe.version,
            "configurationUpdate": configuration_update(recipe, cfg, vehicle),
            "runWith": {"systemResourceLimits": resource_limits(recipe)},
        }
    notes = []
    ranges = {}
    if legacy:
        uploader = next(r for r in recipes if r.name.endswith("Uploader"))
        subscription = f"{uploader.name.replace('.', '-')}-to-cloud"
        router = {"subscriptions": {subscription: {
            "id": subscription, "source": f"component:{uploader.name}", "subject": f"{cfg.cloud_prefix}/#", "target": "cloud",
        }}}
        deployment_components[LEGACY_ROUTER] = {
            "componentVersion": LEGACY_ROUTER_RANGE,  # replaced by a version at deploy time (resolve_versions)
            "configurationUpdate": {"merge": json.dumps(router, sort_keys=True)},
        }
        ranges[LEGACY_ROUTER] = LEGACY_ROUTER_RANGE
        notes.append(f"legacy publish path: {LEGACY_ROUTER} ({LEGACY_ROUTER_RANGE}, the newest at deploy time, or the "
                     f"target's own if in range) routes {cfg.cloud_prefix}/# to the cloud")
    deployment = {
        "targetArn": target_arn,
        "deploymentName": deployment_name or f"telemetry-{cfg.vehicle}",
        "components": deployment_components,
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
            # how long each component has to check a new configuration (and reject it with its reason)
            "configurationValidationPolicy": {"timeoutInSeconds": 30},
        },
    }
    return Plan(bucket, functions, components, deployment, notes, region, ranges, account)


# -- what the cloud has already: unchanged code is not uploaded, versions are not hand-bumped ------
#
# A deploy tags each function with what its published version holds (the digest of its code and
# settings, that version's number) and with the component version made from it (the digest of the
# CreateComponentVersion input, that version). A later deploy whose digests are the same uploads
# nothing and creates no version: a threshold change is a new deployment configuration alone. The
# code digest leaves out vehicle.toml, the zip's fallback configuration: the deployment carries the
# configuration in force, so the bundled copy changing does not make new code.

TAG_FUNCTION = "telemetry:function-sha256"
TAG_FUNCTION_VERSION = "telemetry:function-version"
TAG_COMPONENT = "telemetry:component-sha256"
TAG_COMPONENT_VERSION = "telemetry:component-version"
COMPONENT_ARN = "arn:aws:greengrass:{region}:{account}:components:{name}"
BUNDLED_CONFIG = "vehicle.toml"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_digest(zip_path: Path) -> str:
    """The sha256 of a function zip's entries (names and contents) but its vehicle.toml."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.filename == BUNDLED_CONFIG or info.is_dir():
                    continue
                h.update(info.filename.encode() + b"\0")
                h.update(hashlib.sha256(zf.read(info)).digest())
    except zipfile.BadZipFile:
        raise DeployError(f"{zip_path}: not a zip file (build it with ./build.sh package)") from None
    return h.hexdigest()


def component_digest(params: dict[str, Any]) -> str:
    """What makes a component version: its CreateComponentVersion input (with the function
    version in lambdaArn) but the version number itself."""
    lambda_function = {k: v for k, v in params["lambdaFunction"].items() if k != "componentVersion"}
    return _digest(lambda_function)


def next_version(base: str, taken: set[str]) -> str:
    """``base`` (the recipe's componentVersion) if the cloud does not have it, else the patch after
    the highest version of its major.minor that the cloud has."""
    b = _version(base)
    if b is None:
        raise DeployError(f"componentVersion {base!r} is not MAJOR.MINOR.PATCH")
    if base not in taken:
        return base
    line = [v for v in (_version(t) for t in taken) if v is not None and v[:2] == b[:2]]
    major, minor, patch = max(line)
    return f"{major}.{minor}.{patch + 1}"


@dataclass
class CloudState:
    """What the cloud has of one of our components (read-only calls)."""

    exists: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    component_versions: set[str] = field(default_factory=set)

    def function_version(self, digest: str) -> str | None:
        """The published version that holds exactly this code and these settings, if one does."""
        if self.exists and self.tags.get(TAG_FUNCTION) == digest and self.tags.get(TAG_FUNCTION_VERSION, "").isdigit():
            return self.tags[TAG_FUNCTION_VERSION]
        return None

    def component_version(self, digest: str) -> str | None:
        """The component version made of exactly this input, if the cloud still has it."""
        version = self.tags.get(TAG_COMPONENT_VERSION)
        if self.tags.get(TAG_COMPONENT) == digest and version in self.component_versions:
            return version
        return None


def platforms(declared: list[dict[str, Any]] | None, arch: str) -> list[dict[str, Any]]:
    """The recipe's platforms, each naming the zip's architecture: a core of another
    architecture in the same group is never sent wheels it cannot load."""
    if arch not in PLATFORM_ARCHITECTURE:
        raise DeployError(f"unknown architecture {arch!r} (known: {', '.join(PLATFORM_ARCHITECTURE)})")
    out = []
    for platform in declared or [{"name": "Linux", "attributes": {"os": "linux"}}]:
        attributes = {**platform.get("attributes", {}), "architecture": PLATFORM_ARCHITECTURE[arch]}
        out.append({**platform, "name": f"{platform.get('name', 'Linux')} {arch}", "attributes": attributes})
    return out


def resource_limits(recipe: Recipe) -> dict[str, Any]:
    """``runWith.systemResourceLimits`` of a component: what limits a NoContainer function
    (``memorySizeInKB`` is discarded for those). Memory: the recipe's ``memorySizeInKB`` (from
    ``./build.sh memory``, with headroom); CPU: the recipe's ``deployment.cpus``."""
    container = recipe.params.get("linuxProcessParams", {}).get("containerParams", {})
    limits: dict[str, Any] = {"memory": int(container.get("memorySizeInKB", 0))}
    if recipe.cpus:
        limits["cpus"] = recipe.cpus
    if limits["memory"] <= 0:
        raise DeployError(f"{recipe.path.name}: no memorySizeInKB to set the component's memory limit from")
    return limits


# -- the target's current deployment ---------------------------------------------------------------


def current_deployment(greengrass: Any, target: str) -> dict[str, Any] | None:
    """The target's latest deployment (GetDeployment), or None when it has none."""
    listed = greengrass.list_deployments(targetArn=target, historyFilter="LATEST_ONLY").get("deployments", [])
    latest = [d for d in listed if d.get("targetArn", target) == target and d.get("isLatestForTarget", True)]
    if not latest:
        return None
    return dict(greengrass.get_deployment(deploymentId=latest[0]["deploymentId"]))


def merge_deployment(ours: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """Ours revised into the target's current deployment: its other components stay, with their
    versions, configuration updates and runWith; ours are added or replaced; its name and job
    configuration are kept."""
    merged = json.loads(json.dumps(ours))
    if not current:
        return merged
    kept = {name: {k: v for k, v in spec.items() if k in ("componentVersion", "configurationUpdate", "runWith")}
            for name, spec in (current.get("components") or {}).items() if name not in ours["components"]}
    merged["components"] = dict(sorted({**kept, **merged["components"]}.items()))
    if current.get("deploymentName"):
        merged["deploymentName"] = current["deploymentName"]
    if current.get("iotJobConfiguration") and "iotJobConfiguration" not in merged:
        merged["iotJobConfiguration"] = current["iotJobConfiguration"]
    return merged


def deployment_diff(current: dict[str, Any] | None, merged: dict[str, Any]) -> list[str]:
    """What the new deployment changes, component by component: ``+`` added, ``~`` changed
    (version, configuration or limits), ``=`` kept as it is, ``-`` removed (never, by design)."""
    before = (current or {}).get("components") or {}
    after = merged.get("components") or {}
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None and new is not None:
            lines.append(f"+ {name} {new.get('componentVersion')}")
        elif new is None and old is not None:
            lines.append(f"- {name} {old.get('componentVersion')}")
        elif old is not None and new is not None:
            changes = []
            if old.get("componentVersion") != new.get("componentVersion"):
                changes.append(f"{old.get('componentVersion')} -> {new.get('componentVersion')}")
            if (old.get("configurationUpdate") or {}) != (new.get("configurationUpdate") or {}):
                changes.append("configuration")
            if (old.get("runWith") or {}) != (new.get("runWith") or {}):
                changes.append("runWith")
            lines.append(f"~ {name} {new.get('componentVersion')} ({', '.join(changes)})" if changes
                         else f"= {name} {new.get('componentVersion')} (kept)")
    return lines


def _version(text: str) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def satisfies(version: str, requirement: str) -> bool:
    """Whether ``version`` is in an npm-style range of comparisons (``>=2.1.0 <3.0.0``)."""
    v = _version(version)
    if v is None:
        return False
    checks = {">=": v.__ge__, ">": v.__gt__, "<=": v.__le__, "<": v.__lt__, "=": v.__eq__}
    for term in requirement.split():
        match = re.fullmatch(r"(>=|<=|>|<|=)?(.+)", term)
        bound = _version(match[2]) if match is not None else None
        if match is None or bound is None:
            raise DeployError(f"cannot read the version range {requirement!r}")
        if not checks[match[1] or "="](bound):
            return False
    return True


def resolve_versions(greengrass: Any, deployment: dict[str, Any], ranges: dict[str, str], region: str,
                     current: dict[str, Any] | None) -> None:
    """Each public component given as a range gets a version: the target's own if it is in the
    range (a team's choice is not upgraded unasked), else the newest AWS publishes in it."""
    for name, requirement in ranges.items():
        theirs = ((current or {}).get("components") or {}).get(name, {}).get("componentVersion")
        if theirs and satisfies(theirs, requirement):
            deployment["components"][name]["componentVersion"] = theirs
            continue
        arn = PUBLIC_COMPONENT_ARN.format(region=region, name=name)
        found: list[tuple[int, int, int]] = []
        for page in greengrass.get_paginator("list_component_versions").paginate(arn=arn):
            for item in page.get("componentVersions", []):
                v = _version(item.get("componentVersion", ""))
                if v is not None and satisfies(item["componentVersion"], requirement):
                    found.append(v)
        if not found:
            raise DeployError(f"{name}: no version in {requirement} is published in {region}")
        deployment["components"][name]["componentVersion"] = ".".join(map(str, max(found)))


def bucket_region(s3: Any, bucket: str) -> str:
    """The Region of a bucket, as GetBucketLocation tells it (None is us-east-1, EU eu-west-1)."""
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


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
        return DeployError(f"{doing}: this componentVersion was created meanwhile ({message}); "
                           "run the deploy again: it takes the next version the cloud does not have")
    if code in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"):
        return DeployError(f"{doing}: not allowed ({code}: {message}); see the deployer's IAM policy in the README")
    return DeployError(f"{doing}: {code or type(exc).__name__}: {message}")


def with_versions(p: Plan, chosen: dict[str, str]) -> Plan:
    """The plan with its deployment naming the component versions chosen at deploy time; each of
    our dependencies' ranges must take the version chosen for it."""
    deployment = json.loads(json.dumps(p.deployment))
    for name, version in chosen.items():
        deployment["components"][name]["componentVersion"] = version
    for component in p.components:
        for dep, spec in (component["lambdaFunction"].get("componentDependencies") or {}).items():
            if dep in chosen and not satisfies(chosen[dep], spec.get("versionRequirement", "")):
                raise DeployError(f"{component['lambdaFunction']['componentName']} needs {dep} "
                                  f"{spec['versionRequirement']}, but {dep} is at {chosen[dep]}: change the range "
                                  "in its recipe with the major version")
    return dataclasses.replace(p, deployment=deployment)


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

    def check_bucket(self, p: Plan) -> None:
        """Lambda takes code only from a bucket in the function's Region: refuse another at once.
        A location that cannot be read (no s3:GetBucketLocation) is said and not held against it."""
        from botocore.exceptions import ClientError

        if not p.region:
            return
        try:
            where = bucket_region(self.s3, p.bucket)
        except ClientError as exc:
            self._say(f"note: the Region of bucket {p.bucket} is not known ({exc.response['Error'].get('Code')}); "
                      f"it must be {p.region}")
            return
        if where != p.region:
            raise DeployError(f"bucket {p.bucket} is in {where}, the functions in {p.region}: Lambda takes code only "
                              f"from a bucket in its own Region (use a bucket in {p.region}, or --region {where})")

    def merged_deployment(self, p: Plan) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(the target's current deployment, ours merged into it), public components' versions resolved."""
        from botocore.exceptions import ClientError

        target = p.deployment["targetArn"]
        try:
            current = current_deployment(self.greengrass, target)
            merged = merge_deployment(p.deployment, current)
            resolve_versions(self.greengrass, merged, p.version_ranges, p.region, current)
        except ClientError as exc:
            raise _client_error(exc, f"reading the current deployment of {target}") from exc
        problems = request_problems("greengrassv2", "CreateDeployment", merged)
        if problems:
            raise DeployError(f"the merged deployment for {target} would be refused:\n  " + "\n  ".join(problems))
        return current, merged

    def inspect(self, p: Plan) -> dict[str, CloudState]:
        """What the cloud has of each of our components, with read-only calls (GetFunction with
        its tags, ListComponentVersions)."""
        from botocore.exceptions import ClientError

        states: dict[str, CloudState] = {}
        for f in p.functions:
            name, state = f.create["FunctionName"], CloudState()
            try:
                try:
                    state.tags = dict(self.lambda_.get_function(FunctionName=name).get("Tags") or {})
                    state.exists = True
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                        raise
                arn = COMPONENT_ARN.format(region=p.region, account=p.account, name=f.recipe.name)
                try:
                    for page in self.greengrass.get_paginator("list_component_versions").paginate(arn=arn):
                        state.component_versions |= {c["componentVersion"] for c in page.get("componentVersions", [])}
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                        raise
            except ClientError as exc:
                raise _client_error(exc, f"reading function {name} and component {f.recipe.name}") from exc
            states[f.recipe.name] = state
        return states

    def preview(self, p: Plan) -> tuple[Plan, list[str]]:
        """What a deploy would upload and create, with read-only calls: the plan with the
        component versions it would deploy, and one line per function and component."""
        states = self.inspect(p)
        lines, chosen = [], {}
        for component, f in zip(p.components, p.functions, strict=True):
            name, state = f.recipe.name, states[f.recipe.name]
            kept = state.function_version(f.digest)
            if kept is None:
                lines.append(f"{f.create['FunctionName']}: new code or settings: the zip is uploaded, a version published")
                version = next_version(component["lambdaFunction"]["componentVersion"], state.component_versions)
                lines.append(f"component {name}: a new version, {version}")
            else:
                lines.append(f"{f.create['FunctionName']}: unchanged, version {kept} kept (nothing uploaded)")
                params = json.loads(json.dumps(component))
                params["lambdaFunction"]["lambdaArn"] += f":{kept}"
                same = state.component_version(component_digest(params))
                version = same or next_version(component["lambdaFunction"]["componentVersion"], state.component_versions)
                lines.append(f"component {name} {version}: " + ("unchanged, kept" if same else "a new version"))
            chosen[name] = version
        return with_versions(p, chosen), lines

    def deploy(self, p: Plan) -> str:
        from botocore.exceptions import ClientError

        self.check_bucket(p)
        states = self.inspect(p)
        versions: dict[str, str] = {}
        for f in p.functions:
            name = f.create["FunctionName"]
            state = states[f.recipe.name]
            kept = state.function_version(f.digest)
            if kept is not None:
                versions[f.recipe.name] = kept
                self._say(f"{name}: code and settings unchanged, version {kept} kept (nothing uploaded)")
                continue
            try:
                self.s3.put_object(Bucket=p.bucket, Key=f.s3_key, Body=f.zip_path.read_bytes())
                self._say(f"uploaded s3://{p.bucket}/{f.s3_key}")
                if state.exists:
                    # settings first (timeout, handler, ...), then the code, published as a version
                    self.lambda_.update_function_configuration(**f.configure)
                    self._wait_function(name, "$LATEST")
                    response = self.lambda_.update_function_code(**f.update)
                else:
                    response = self.lambda_.create_function(**f.create)
                version = response["Version"]
                self._wait_function(name, version)
                self.lambda_.tag_resource(Resource=f.function_arn, Tags={TAG_FUNCTION: f.digest,
                                                                         TAG_FUNCTION_VERSION: version})
            except ClientError as exc:
                raise _client_error(exc, f"function {name}") from exc
            versions[f.recipe.name] = version
            self._say(f"{'updated' if state.exists else 'created'} {name}, version {version}")
        chosen: dict[str, str] = {}
        for component, f in zip(p.components, p.functions, strict=True):
            params = json.loads(json.dumps(component))
            name = params["lambdaFunction"]["componentName"]
            state = states[name]
            params["lambdaFunction"]["lambdaArn"] += f":{versions[name]}"
            digest = component_digest(params)
            kept = state.component_version(digest)
            if kept is not None:
                chosen[name] = kept
                self._say(f"component {name} {kept}: unchanged, kept")
                continue
            version = next_version(params["lambdaFunction"]["componentVersion"], state.component_versions)
            params["lambdaFunction"]["componentVersion"] = version
            try:
                arn = self.greengrass.create_component_version(**params)["arn"]
                self._wait_component(name, arn)
                self.lambda_.tag_resource(Resource=f.function_arn, Tags={TAG_COMPONENT: digest,
                                                                         TAG_COMPONENT_VERSION: version})
            except ClientError as exc:
                raise _client_error(exc, f"component {name}") from exc
            chosen[name] = version
            self._say(f"component {name} {version} is deployable")
        ours = with_versions(p, chosen)
        current, merged = self.merged_deployment(ours)
        for line in deployment_diff(current, merged):
            self._say(f"deployment: {line}")
        try:
            deployment_id = self.greengrass.create_deployment(**merged)["deploymentId"]
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

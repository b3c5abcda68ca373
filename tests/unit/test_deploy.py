"""Deployment: the requests built from recipes/ pass botocore's validation and grant exactly the
topics each component uses; the whole deploy runs against botocore's Stubber in the exact order,
and each failure path ends in a clear error. The legacy transport goes through the real
greengrasssdk code down to its IPC client."""

from __future__ import annotations

import base64
import datetime
import json
import sys
import types
import zipfile
from pathlib import Path
from unittest import mock

import boto3
import pytest
from botocore.stub import ANY, Stubber

from telemetry.edge.config import load_config
from telemetry.tools.deploy import Deployer, DeployError, access_control, next_version, plan, target_arn, validate
from telemetry.tools.recipes import check_recipes, load_recipes

ROOT = Path(__file__).resolve().parents[2]
REGION, ACCOUNT = "eu-west-1", "111122223333"


@pytest.fixture
def recipes():
    return check_recipes(load_recipes(ROOT / "recipes"))


@pytest.fixture
def cfg():
    return load_config(ROOT / "vehicles/sample/vehicle.toml")


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_plan(recipes, cfg, tmp_path, **kw):
    zips = {}
    for r in recipes:  # made once: a test may rewrite one to change its code
        path = tmp_path / f"{r.function['FunctionName']}.zip"
        zips[r.name] = path if path.exists() else make_zip(
            path, {"handler.py": b"# " + r.name.encode(), "vehicle.toml": b"vehicle = 'x'"})
    return plan(recipes, cfg, zips, region=REGION, account=ACCOUNT, bucket="fleet-artifacts",
                role_arn=f"arn:aws:iam::{ACCOUNT}:role/telemetry-lambda",
                target_arn=target_arn(REGION, ACCOUNT, thing_group="racecars"), **{"arch": "aarch64", **kw})


def test_every_request_passes_botocore_validation(recipes, cfg, tmp_path):
    for legacy in (False, True):
        p = make_plan(recipes, cfg, tmp_path, legacy=legacy)
        assert validate(p) == []
        ops = [op for _, op, _ in p.requests()]
        assert ops.count("CreateFunction") == ops.count("UpdateFunctionCode") == ops.count("CreateComponentVersion") == 4
        assert ops.count("UpdateFunctionConfiguration") == 4
        assert ops[-1] == "CreateDeployment"


def test_validation_catches_what_the_api_would_refuse(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    p.functions[0].create["Role"] = "not-an-arn"
    p.functions[0].create["Runtime"] = "python9"
    p.deployment["deploymentPolicies"]["failureHandlingPolicy"] = "PANIC"
    problems = "\n".join(validate(p))
    assert "Role" in problems and "'python9' is not one of" in problems and "'PANIC' is not one of" in problems


def test_access_control_names_exactly_the_topics_each_component_publishes_to(recipes, cfg, tmp_path):
    by_name = {r.name: r for r in recipes}
    assert access_control(by_name["telemetry.CanReader"], cfg) == {"aws.greengrass.ipc.pubsub": {
        "telemetry.CanReader:pubsub:1": {"policyDescription": ANY, "operations": ["aws.greengrass#PublishToTopic"],
                                         "resources": ["telemetry/signals"]}}, "aws.greengrass.ipc.mqttproxy": {
        "telemetry.CanReader:mqttproxy:1": {"policyDescription": ANY, "operations": ["aws.greengrass#PublishToIoTCore"],
                                            "resources": ["dt/sunrace-01/health"]}}}
    assert access_control(by_name["telemetry.Aggregator"], cfg)["aws.greengrass.ipc.pubsub"][
        "telemetry.Aggregator:pubsub:1"]["resources"] == ["telemetry/aggregates"]
    uploader = access_control(by_name["telemetry.Uploader"], cfg)
    assert set(uploader) == {"aws.greengrass.ipc.mqttproxy"}  # no local output
    proxy = uploader["aws.greengrass.ipc.mqttproxy"]["telemetry.Uploader:mqttproxy:1"]
    assert proxy["operations"] == ["aws.greengrass#PublishToIoTCore"]
    assert proxy["resources"] == ["dt/sunrace-01/aggregates", "dt/sunrace-01/alerts", "dt/sunrace-01/gaps", "dt/sunrace-01/health"]
    # no wildcard anywhere: least privilege
    p = make_plan(recipes, cfg, tmp_path)
    merges = [json.loads(c["configurationUpdate"]["merge"]) for c in p.deployment["components"].values()]
    resources = [r for m in merges for service in m["accessControl"].values() for policy in service.values()
                 for r in policy["resources"]]
    assert len(resources) == 3 + 4 + 3 and not any(c in r for r in resources for c in "#+*")
    # the others may publish their status on the health topic, and nothing else in the cloud
    for name in ("telemetry.CanReader", "telemetry.Aggregator", "telemetry.AnomalyDetector"):
        merge = json.loads(p.deployment["components"][name]["configurationUpdate"]["merge"])
        assert merge["accessControl"]["aws.greengrass.ipc.mqttproxy"][f"{name}:mqttproxy:1"]["resources"] == [
            "dt/sunrace-01/health"]


def test_the_legacy_path_adds_the_subscription_router(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path, legacy=True)
    router = p.deployment["components"]["aws.greengrass.LegacySubscriptionRouter"]
    subs = json.loads(router["configurationUpdate"]["merge"])["subscriptions"]
    (sub,) = subs.values()
    assert sub == {"id": sub["id"], "source": "component:telemetry.Uploader", "subject": "dt/sunrace-01/#", "target": "cloud"}
    uploader = next(c for c in p.components if c["lambdaFunction"]["componentName"] == "telemetry.Uploader")
    assert uploader["lambdaFunction"]["componentLambdaParameters"]["environmentVariables"]["TELEMETRY_CLOUD"] == "legacy"


def test_target_arn_needs_exactly_one_target():
    assert target_arn(REGION, ACCOUNT, thing="car-01") == f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/car-01"
    with pytest.raises(DeployError, match="exactly one"):
        target_arn(REGION, ACCOUNT, thing="a", thing_group="b")


# -- the whole deploy against botocore's Stubber -------------------------------------------------


def clients():
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name=REGION)
    return session.client("s3"), session.client("lambda"), session.client("greengrassv2")


def function_config(name, version, state="Active", update="Successful"):
    return {"FunctionName": name, "Version": version, "State": state, "LastUpdateStatus": update}


def not_found(stub, name):
    stub.add_client_error("get_function", "ResourceNotFoundException", "Function not found", 404,
                          expected_params={"FunctionName": name})


CURRENT = {  # the group's current deployment: the Greengrass CLI and a team's own component
    "targetArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/racecars", "deploymentId": "d-0001", "revisionId": "3",
    "deploymentName": "racecars-fleet", "deploymentStatus": "ACTIVE", "isLatestForTarget": True,
    "components": {
        "aws.greengrass.Cli": {"componentVersion": "2.12.6"},
        "com.team.PitRadio": {"componentVersion": "1.4.0",
                              "configurationUpdate": {"merge": "{\"channel\": 7}", "reset": ["/volume"]},
                              "runWith": {"systemResourceLimits": {"memory": 20480}}},
        "telemetry.Aggregator": {"componentVersion": "0.9.0"},
    },
    "deploymentPolicies": {"failureHandlingPolicy": "ROLLBACK"},
}


def stub_current(ggs, current=None):
    target = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/racecars"
    listed = [] if current is None else [{k: current[k] for k in ("targetArn", "deploymentId", "revisionId",
                                                                     "deploymentName", "deploymentStatus", "isLatestForTarget")}]
    ggs.add_response("list_deployments", {"deployments": listed}, {"targetArn": target, "historyFilter": "LATEST_ONLY"})
    if current is not None:
        ggs.add_response("get_deployment", current, {"deploymentId": current["deploymentId"]})


def component_arn(name):
    return f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{name}"


def stub_inspect(p, lams, ggs, *, existing=(), tags=None, cloud_versions=None):
    """The read-only calls a deploy starts with: each function (with its tags), each component's versions."""
    for f in p.functions:
        name = f.create["FunctionName"]
        if name in existing:
            lams.add_response("get_function", {"Configuration": {"FunctionName": name},
                                               "Tags": (tags or {}).get(name, {})}, {"FunctionName": name})
        else:
            not_found(lams, name)
        versions = (cloud_versions or {}).get(f.recipe.name)
        if versions is None:
            ggs.add_client_error("list_component_versions", "ResourceNotFoundException", "no such component", 404,
                                 expected_params={"arn": component_arn(f.recipe.name)})
        else:
            ggs.add_response("list_component_versions", {"componentVersions": [
                {"componentName": f.recipe.name, "componentVersion": v, "arn": f"{component_arn(f.recipe.name)}:versions:{v}"}
                for v in versions]}, {"arn": component_arn(f.recipe.name)})


def stub_deploy(p, s3s, lams, ggs, *, existing=(), component_state=None, expired_at=None, current=None,
                router_versions=None, expect=None, cloud_versions=None, tags=None):
    """Queue the exact calls of a deploy, in order, on each client's Stubber."""
    s3s.add_response("get_bucket_location", {"LocationConstraint": REGION}, {"Bucket": "fleet-artifacts"})
    stub_inspect(p, lams, ggs, existing=existing, cloud_versions=cloud_versions, tags=tags)
    versions = {}
    for f in p.functions:
        name = f.create["FunctionName"]
        s3s.add_response("put_object", {}, {"Bucket": "fleet-artifacts", "Key": f.s3_key, "Body": ANY})
        if name in existing:
            if expired_at == name:
                lams.add_client_error("update_function_configuration", "ExpiredTokenException",
                                      "The security token included in the request is expired", 403)
                return
            lams.add_response("update_function_configuration", {"FunctionName": name}, f.configure)
            lams.add_response("get_function_configuration", function_config(name, "$LATEST"),
                              {"FunctionName": name, "Qualifier": "$LATEST"})
            lams.add_response("update_function_code", {"FunctionName": name, "Version": "7"}, f.update)
            version = "7"
        else:
            if expired_at == name:
                lams.add_client_error("create_function", "ExpiredTokenException", "The security token included in the request is expired", 403)
                return
            lams.add_response("create_function", {"FunctionName": name, "Version": "1"}, f.create)
            version = "1"
        lams.add_response("get_function_configuration", function_config(name, version, "Pending", "InProgress"),
                          {"FunctionName": name, "Qualifier": version})
        lams.add_response("get_function_configuration", function_config(name, version),
                          {"FunctionName": name, "Qualifier": version})
        lams.add_response("tag_resource", {}, {"Resource": f.function_arn, "Tags": {
            "telemetry:function-sha256": f.digest, "telemetry:function-version": version}})
        versions[f.recipe.name] = version
    for c, f in zip(p.components, p.functions):
        name = c["lambdaFunction"]["componentName"]
        expected = json.loads(json.dumps(c))
        expected["lambdaFunction"]["lambdaArn"] += f":{versions[name]}"
        taken = set((cloud_versions or {}).get(name, []))
        component_version = next_version(expected["lambdaFunction"]["componentVersion"], taken)
        expected["lambdaFunction"]["componentVersion"] = component_version
        arn = f"{component_arn(name)}:versions:{component_version}"
        ggs.add_response("create_component_version", {"arn": arn, "componentName": name, "componentVersion": component_version,
                                                      "creationTimestamp": datetime.datetime(2026, 11, 26),
                                                      "status": {"componentState": "REQUESTED"}}, expected)
        ggs.add_response("describe_component", {"arn": arn, "status": {"componentState": "INITIATED"}}, {"arn": arn})
        state = (component_state or {}).get(name, "DEPLOYABLE")
        status = {"componentState": state}
        if state == "FAILED":
            status.update(message="Lambda function version not found", errors={"LAMBDA": "arn does not exist"})
        ggs.add_response("describe_component", {"arn": arn, "status": status}, {"arn": arn})
        if state == "FAILED":
            return
        lams.add_response("tag_resource", {}, {"Resource": f.function_arn, "Tags": {
            "telemetry:component-sha256": ANY, "telemetry:component-version": component_version}})
    stub_current(ggs, current)
    if router_versions is not None:
        ggs.add_response("list_component_versions",
                         {"componentVersions": [{"componentName": "aws.greengrass.LegacySubscriptionRouter",
                                                 "componentVersion": v, "arn": f"arn:{v}"} for v in router_versions]},
                         {"arn": f"arn:aws:greengrass:{REGION}:aws:components:aws.greengrass.LegacySubscriptionRouter"})
    ggs.add_response("create_deployment", {"deploymentId": "d-1234", "iotJobId": "job-1"},
                     expect if expect is not None else p.deployment)


def test_a_full_deploy_makes_the_exact_requests_in_order(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, existing={"telemetry-aggregator", "telemetry-can-reader"})
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        assert deployer.deploy(p) == "d-1234"
        s3s.assert_no_pending_responses()
        lams.assert_no_pending_responses()
        ggs.assert_no_pending_responses()
    assert deployer.log == [
        "uploaded s3://fleet-artifacts/lambda/telemetry-uploader/telemetry-uploader.zip",
        "created telemetry-uploader, version 1",
        "uploaded s3://fleet-artifacts/lambda/telemetry-aggregator/telemetry-aggregator.zip",
        "updated telemetry-aggregator, version 7",
        "uploaded s3://fleet-artifacts/lambda/telemetry-anomaly-detector/telemetry-anomaly-detector.zip",
        "created telemetry-anomaly-detector, version 1",
        "uploaded s3://fleet-artifacts/lambda/telemetry-can-reader/telemetry-can-reader.zip",
        "updated telemetry-can-reader, version 7",
        "component telemetry.Uploader 1.0.0 is deployable",
        "component telemetry.Aggregator 1.0.0 is deployable",
        "component telemetry.AnomalyDetector 1.0.0 is deployable",
        "component telemetry.CanReader 1.0.0 is deployable",
        "deployment: + telemetry.Aggregator 1.0.0",
        "deployment: + telemetry.AnomalyDetector 1.0.0",
        "deployment: + telemetry.CanReader 1.0.0",
        "deployment: + telemetry.Uploader 1.0.0",
        f"deployment d-1234 created for arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/racecars",
    ]


def test_a_component_version_that_fails_stops_the_deploy_with_its_reason(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, component_state={"telemetry.Aggregator": "FAILED"})
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        with pytest.raises(DeployError, match=r"component telemetry\.Aggregator failed to become deployable: "
                                              "Lambda function version not found LAMBDA: arn does not exist"):
            deployer.deploy(p)
        ggs.assert_no_pending_responses()  # and no deployment was created


def test_expired_credentials_are_one_clear_message(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, existing={"telemetry-aggregator"}, expired_at="telemetry-aggregator")
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        with pytest.raises(DeployError, match="function telemetry-aggregator: your AWS credentials have expired"):
            deployer.deploy(p)
        lams.assert_no_pending_responses()


def test_a_component_version_taken_meanwhile_says_to_run_again(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    p.functions, p.components = p.functions[:1], p.components[:1]
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        f = p.functions[0]
        s3s.add_response("get_bucket_location", {"LocationConstraint": REGION}, {"Bucket": "fleet-artifacts"})
        stub_inspect(p, lams, ggs)
        s3s.add_response("put_object", {}, {"Bucket": "fleet-artifacts", "Key": f.s3_key, "Body": ANY})
        lams.add_response("create_function", {"FunctionName": "x", "Version": "1"}, f.create)
        lams.add_response("get_function_configuration", function_config("x", "1"),
                          {"FunctionName": f.create["FunctionName"], "Qualifier": "1"})
        lams.add_response("tag_resource", {}, {"Resource": f.function_arn, "Tags": ANY})
        ggs.add_client_error("create_component_version", "ConflictException", "Component version already exists", 409)
        with pytest.raises(DeployError, match=r"created meanwhile .* run the deploy again"):
            Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None).deploy(p)


# -- a configuration change is a deployment alone; versions bump themselves ------------------------


def tags_after_a_deploy(p, function_version="7", component_version="1.0.4"):
    """The tags a deploy of plan ``p`` left on each function."""
    from telemetry.tools.deploy import component_digest

    tags = {}
    for c, f in zip(p.components, p.functions):
        params = json.loads(json.dumps(c))
        params["lambdaFunction"]["lambdaArn"] += f":{function_version}"
        tags[f.create["FunctionName"]] = {"telemetry:function-sha256": f.digest, "telemetry:function-version": function_version,
                                          "telemetry:component-sha256": component_digest(params),
                                          "telemetry:component-version": component_version}
    return tags


def test_a_threshold_change_is_one_deployment_with_no_upload_and_no_new_version(recipes, cfg, tmp_path):
    from telemetry.tools.deploy import vehicle_configuration

    before = make_plan(recipes, cfg, tmp_path, vehicle=vehicle_configuration(ROOT / "vehicles/sample/vehicle.toml"))
    # the threshold changed in vehicle.toml: the zips, rebuilt, differ only in their bundled vehicle.toml
    toml = (ROOT / "vehicles/sample/vehicle.toml").read_text().replace("max = 55.0", "max = 50.0", 1)
    folder = tmp_path / "car"
    folder.mkdir()
    (folder / "vehicle.toml").write_text(toml)
    (folder / "solar_car.dbc").write_bytes((ROOT / "vehicles/sample/solar_car.dbc").read_bytes())
    for f in before.functions:
        make_zip(f.zip_path, {"handler.py": b"# " + f.recipe.name.encode(), "vehicle.toml": toml.encode()})
    after = make_plan(recipes, load_config(folder / "vehicle.toml"), tmp_path, vehicle=vehicle_configuration(folder / "vehicle.toml"))
    assert [f.digest for f in after.functions] == [f.digest for f in before.functions]
    assert validate(after) == []  # the reset and the merge too, against botocore's model
    expected = json.loads(json.dumps(after.deployment))
    for spec in expected["components"].values():
        spec["componentVersion"] = "1.0.4"
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        s3s.add_response("get_bucket_location", {"LocationConstraint": REGION}, {"Bucket": "fleet-artifacts"})
        stub_inspect(after, lams, ggs, existing={f.create["FunctionName"] for f in after.functions},
                     tags=tags_after_a_deploy(before), cloud_versions={r.name: ["1.0.0", "1.0.4"] for r in recipes})
        stub_current(ggs, None)
        ggs.add_response("create_deployment", {"deploymentId": "d-2"}, expected)  # nothing else: no put_object, no version
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        assert deployer.deploy(after) == "d-2"
        s3s.assert_no_pending_responses()
        lams.assert_no_pending_responses()
        ggs.assert_no_pending_responses()
    assert "telemetry-aggregator: code and settings unchanged, version 7 kept (nothing uploaded)" in deployer.log
    assert "component telemetry.Aggregator 1.0.4: unchanged, kept" in deployer.log
    # each component is given the new threshold under "vehicle", and a reset so removed keys go too
    update = expected["components"]["telemetry.AnomalyDetector"]["configurationUpdate"]
    merge = json.loads(update["merge"])
    assert update["reset"] == ["/vehicle"] and set(merge) == {"accessControl", "vehicle"}
    assert next(r for r in merge["vehicle"]["rules"] if r["name"] == "cell-overtemp")["max"] == 50.0
    assert merge["vehicle"]["dbc"] == ["solar_car.dbc"]  # named relative to the artefact


def test_new_code_gets_the_next_patch_version_the_cloud_does_not_have(recipes, cfg, tmp_path):
    before = make_plan(recipes, cfg, tmp_path)
    tags = tags_after_a_deploy(before, function_version="6", component_version="1.0.4")
    for f in before.functions:  # the code changed
        make_zip(f.zip_path, {"handler.py": b"# new code of " + f.recipe.name.encode()})
    p = make_plan(recipes, cfg, tmp_path)
    expected = json.loads(json.dumps(p.deployment))
    for spec in expected["components"].values():
        spec["componentVersion"] = "1.0.5"
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        # the tags say version 7 holds the old code: everything is uploaded and made anew
        stub_deploy(p, s3s, lams, ggs, existing={f.create["FunctionName"] for f in p.functions}, tags=tags,
                    cloud_versions={r.name: ["1.0.0", "1.0.3", "1.0.4", "2.0.0"] for r in recipes}, expect=expected)
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        deployer.deploy(p)
        ggs.assert_no_pending_responses()
        lams.assert_no_pending_responses()
    assert "component telemetry.Uploader 1.0.5 is deployable" in deployer.log
    assert next_version("1.0.0", set()) == "1.0.0"
    assert next_version("1.0.0", {"1.0.0", "1.0.9", "1.1.0"}) == "1.0.10"
    assert next_version("1.1.0", {"1.0.0", "1.0.9"}) == "1.1.0"


def test_a_dependency_range_that_misses_the_chosen_version_is_refused(recipes, cfg, tmp_path):
    from telemetry.tools.deploy import with_versions

    p = make_plan(recipes, cfg, tmp_path)
    with pytest.raises(DeployError, match=r"needs telemetry.Uploader >=1.0.0 <2.0.0, but telemetry.Uploader is at 2.0.0"):
        with_versions(p, {"telemetry.Uploader": "2.0.0"})


def test_a_function_that_fails_to_activate_is_reported(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    s3, lam, gg = clients()
    p.functions, p.components = p.functions[:1], p.components[:1]
    f = p.functions[0]
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        s3s.add_response("get_bucket_location", {"LocationConstraint": REGION}, {"Bucket": "fleet-artifacts"})
        stub_inspect(p, lams, ggs)
        s3s.add_response("put_object", {}, {"Bucket": "fleet-artifacts", "Key": f.s3_key, "Body": ANY})
        lams.add_response("create_function", {"FunctionName": "x", "Version": "1"}, f.create)
        lams.add_response("get_function_configuration", {**function_config("x", "1", "Failed", "Failed"),
                                                         "StateReason": "The role cannot be assumed"},
                          {"FunctionName": f.create["FunctionName"], "Qualifier": "1"})
        with pytest.raises(DeployError, match="failed: The role cannot be assumed"):
            Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None).deploy(p)


# -- a deployment merges into the target's current one --------------------------------------------


def merged_with_current(p):
    from telemetry.tools.deploy import merge_deployment

    return merge_deployment(p.deployment, CURRENT)


def test_a_deploy_keeps_the_groups_other_components_and_their_configuration(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    expected = merged_with_current(p)
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, current=CURRENT, expect=expected)  # the create_deployment params, exactly
        deployer = Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None)
        assert deployer.deploy(p) == "d-1234"
        ggs.assert_no_pending_responses()
    kept = expected["components"]
    assert kept["aws.greengrass.Cli"] == {"componentVersion": "2.12.6"}
    assert kept["com.team.PitRadio"] == CURRENT["components"]["com.team.PitRadio"]  # config, reset, limits as they were
    assert kept["telemetry.Aggregator"] == p.deployment["components"]["telemetry.Aggregator"]  # ours replaces its own
    assert expected["deploymentName"] == "racecars-fleet" and len(kept) == 6
    assert [line for line in deployer.log if line.startswith("deployment: ")] == [
        "deployment: = aws.greengrass.Cli 2.12.6 (kept)",
        "deployment: = com.team.PitRadio 1.4.0 (kept)",
        "deployment: ~ telemetry.Aggregator 1.0.0 (0.9.0 -> 1.0.0, configuration, runWith)",
        "deployment: + telemetry.AnomalyDetector 1.0.0",
        "deployment: + telemetry.CanReader 1.0.0",
        "deployment: + telemetry.Uploader 1.0.0",
    ]


def test_the_dry_run_shows_the_diff_against_the_current_deployment_with_read_only_calls(recipes, cfg, tmp_path, capsys):
    from telemetry.tools.cli.deploy import dry_run
    from telemetry.tools.deploy import vehicle_configuration

    before = make_plan(recipes, cfg, tmp_path)
    p = make_plan(recipes, cfg, tmp_path, vehicle=vehicle_configuration(ROOT / "vehicles/sample/vehicle.toml"))
    tags = tags_after_a_deploy(before, component_version="1.0.2")
    tags["telemetry-uploader"]["telemetry:function-sha256"] = "other code"
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        s3s.add_response("get_bucket_location", {"LocationConstraint": REGION}, {"Bucket": "fleet-artifacts"})
        stub_inspect(p, lams, ggs, existing={f.create["FunctionName"] for f in p.functions}, tags=tags,
                     cloud_versions={r.name: ["1.0.0", "1.0.1", "1.0.2"] for r in recipes})
        stub_current(ggs, CURRENT)
        assert dry_run(p, (REGION, s3, lam, gg), tmp_path) == 0
        ggs.assert_no_pending_responses()
        lams.assert_no_pending_responses()
    expected = merged_with_current(p)
    for name in ("telemetry.Aggregator", "telemetry.AnomalyDetector", "telemetry.CanReader"):
        expected["components"][name]["componentVersion"] = "1.0.2"  # unchanged: kept
    expected["components"]["telemetry.Uploader"]["componentVersion"] = "1.0.3"  # new code: the next patch
    assert json.loads((tmp_path / "merged-CreateDeployment.json").read_text()) == expected
    out = capsys.readouterr().out
    assert "against its current deployment" in out and "dry run: nothing was created or changed" in out
    assert "  = com.team.PitRadio 1.4.0 (kept)" in out and "  + telemetry.CanReader 1.0.2" in out
    assert "telemetry-aggregator: unchanged, version 7 kept (nothing uploaded)" in out
    assert "telemetry-uploader: new code or settings: the zip is uploaded, a version published" in out
    assert "component telemetry.Uploader: a new version, 1.0.3" in out
    # the merge: the vehicle configuration once, and each component's grants
    assert "configuration update of every component: reset /vehicle, then merge" in out
    assert '"max": 55.0' in out and "telemetry.CanReader accessControl: PublishToIoTCore dt/sunrace-01/health; " \
        "PublishToTopic telemetry/signals" in out


def test_a_bucket_in_another_region_stops_the_deploy_before_any_upload(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path)
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam), Stubber(gg):
        s3s.add_response("get_bucket_location", {"LocationConstraint": "us-west-2"}, {"Bucket": "fleet-artifacts"})
        with pytest.raises(DeployError, match="bucket fleet-artifacts is in us-west-2, the functions in eu-west-1"):
            Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None).deploy(p)
        s3s.assert_no_pending_responses()
    # us-east-1 has no LocationConstraint; a location that cannot be read is said, not held against it
    from telemetry.tools.deploy import bucket_region

    with Stubber(s3) as s3s:
        s3s.add_response("get_bucket_location", {}, {"Bucket": "b"})
        assert bucket_region(s3, "b") == "us-east-1"
    with Stubber(s3) as s3s:
        s3s.add_client_error("get_bucket_location", "AccessDenied", "denied", 403)
        deployer = Deployer(s3, lam, gg)
        deployer.check_bucket(p)
        assert deployer.log == ["note: the Region of bucket fleet-artifacts is not known (AccessDenied); it must be eu-west-1"]


def test_legacy_takes_the_newest_router_in_range_or_keeps_the_targets_own(recipes, cfg, tmp_path):
    p = make_plan(recipes, cfg, tmp_path, legacy=True)
    uploader = next(c for c in p.components if c["lambdaFunction"]["componentName"] == "telemetry.Uploader")
    assert uploader["lambdaFunction"]["componentDependencies"]["aws.greengrass.LegacySubscriptionRouter"] == {
        "versionRequirement": ">=2.1.0 <3.0.0", "dependencyType": "SOFT"}
    expected = json.loads(json.dumps(p.deployment))
    expected["components"]["aws.greengrass.LegacySubscriptionRouter"]["componentVersion"] = "2.1.17"
    s3, lam, gg = clients()
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, router_versions=["2.0.9", "2.1.15", "2.1.17", "3.0.0"], expect=expected)
        Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None).deploy(p)
        ggs.assert_no_pending_responses()
    # a group that runs the router already, at a version in range, keeps it (no ListComponentVersions)
    current = json.loads(json.dumps(CURRENT))
    current["components"]["aws.greengrass.LegacySubscriptionRouter"] = {"componentVersion": "2.1.10"}
    from telemetry.tools.deploy import merge_deployment, resolve_versions, satisfies

    merged = merge_deployment(p.deployment, current)
    resolve_versions(None, merged, p.version_ranges, REGION, current)
    assert merged["components"]["aws.greengrass.LegacySubscriptionRouter"]["componentVersion"] == "2.1.10"
    assert satisfies("2.1.15", ">=2.1.0 <3.0.0") and not satisfies("3.0.0", ">=2.1.0 <3.0.0")


def test_components_name_the_zips_architecture_and_get_resource_limits(recipes, cfg, tmp_path):
    for arch, spelled in (("aarch64", "aarch64"), ("x86_64", "amd64")):
        p = make_plan(recipes, cfg, tmp_path, arch=arch)
        for c in p.components:
            assert [pl["attributes"] for pl in c["lambdaFunction"]["componentPlatforms"]] == [
                {"os": "linux", "architecture": spelled}]
        assert validate(p) == []
    for r in recipes:
        limits = p.deployment["components"][r.name]["runWith"]["systemResourceLimits"]
        memory = r.params["linuxProcessParams"]["containerParams"]["memorySizeInKB"]
        assert limits == {"memory": memory, "cpus": r.cpus} and 0 < r.cpus <= 1


# -- the deployer's IAM policy in the README covers every call a deploy makes -----------------------


def readme_policy_actions() -> set[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("The deployer (your CLI credentials):")
    block = text[text.index("```json", start) + len("```json"):text.index("```", text.index("```json", start) + 7)]
    statements = json.loads(block)["Statement"]
    return {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


def test_the_readme_policy_allows_every_action_a_deploy_calls(recipes, cfg, tmp_path):
    seen: set[str] = set()

    def record(model, **_):
        prefix = model.service_model.signing_name or model.service_model.endpoint_prefix
        seen.add(f"{prefix}:{model.name}")

    s3, lam, gg = clients()
    for client in (s3, lam, gg):
        client.meta.events.register("before-parameter-build.*.*", record)
    # every path: functions new and existing, the legacy router resolved, a group with a current deployment
    p = make_plan(recipes, cfg, tmp_path, legacy=True)
    from telemetry.tools.deploy import merge_deployment

    expected = merge_deployment(p.deployment, CURRENT)
    expected["components"]["aws.greengrass.LegacySubscriptionRouter"]["componentVersion"] = "2.1.17"
    with Stubber(s3) as s3s, Stubber(lam) as lams, Stubber(gg) as ggs:
        stub_deploy(p, s3s, lams, ggs, existing={"telemetry-aggregator"}, current=CURRENT,
                    router_versions=["2.1.17"], expect=expected)
        Deployer(s3, lam, gg, poll_seconds=0, sleep=lambda s: None).deploy(p)
    assert {"lambda:UpdateFunctionConfiguration", "greengrass:GetDeployment", "s3:GetBucketLocation"} <= seen
    missing = seen - readme_policy_actions()
    assert not missing, f"the README's deployer policy lacks {sorted(missing)}"


# -- the legacy V1 transport, through greengrasssdk's own code ----------------------------------


def test_legacy_transport_publishes_through_greengrasssdk_to_the_router(monkeypatch):
    ipc = mock.MagicMock()
    fakes = {
        "greengrass_common": types.ModuleType("greengrass_common"),
        "greengrass_common.env_vars": types.SimpleNamespace(
            SHADOW_FUNCTION_ARN="arn:shadow", ROUTER_FUNCTION_ARN="arn:router", MY_FUNCTION_ARN="arn:uploader",
            SECRETS_MANAGER_FUNCTION_ARN="arn:secrets"),
        "greengrass_common.function_arn_fields": types.SimpleNamespace(FunctionArnFields=mock.MagicMock()),
        "greengrass_ipc_python_sdk": types.ModuleType("greengrass_ipc_python_sdk"),
        "greengrass_ipc_python_sdk.ipc_client": types.SimpleNamespace(IPCClient=lambda endpoint=None: ipc, IPCException=Exception),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m.startswith("greengrasssdk")]:
        monkeypatch.delitem(sys.modules, name)
    import greengrasssdk

    from telemetry.edge.transport import LegacyCloudTransport

    LegacyCloudTransport(greengrasssdk.client("iot-data")).publish("dt/car-01/alerts", b'{"v":1}')
    function_arn, payload, context, invocation = ipc.post_work.call_args.args
    assert (function_arn, payload, invocation) == ("arn:router", b'{"v":1}', "Event")
    assert json.loads(base64.b64decode(context)) == {
        "custom": {"source": "arn:uploader", "subject": "dt/car-01/alerts", "queueFullPolicy": "AllOrError"}}


def test_the_code_digest_leaves_out_the_bundled_configuration_only(tmp_path):
    from telemetry.tools.deploy import code_digest

    base = {"handler.py": b"code", "solar_car.dbc": b"BO_ 1", "vehicle.toml": b"max = 55.0"}
    a = code_digest(make_zip(tmp_path / "a.zip", base))
    assert code_digest(make_zip(tmp_path / "b.zip", {**base, "vehicle.toml": b"max = 50.0"})) == a
    assert code_digest(make_zip(tmp_path / "c.zip", {**base, "solar_car.dbc": b"BO_ 2"})) != a  # a DBC is code
    assert code_digest(make_zip(tmp_path / "d.zip", {**base, "handler.py": b"code 2"})) != a
    (tmp_path / "e.zip").write_bytes(b"not a zip")
    with pytest.raises(DeployError, match="not a zip file"):
        code_digest(tmp_path / "e.zip")

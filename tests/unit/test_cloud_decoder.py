"""The cloud side: the topic rule, decoder function and permission requests are valid for
botocore's models; the decoder turns a rule event into Parquet on S3 (boto3's own client, its
network replaced by botocore's Stubber); its zip runs on its own, without the DBC or cantools."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.stub import ANY, Stubber

from support.helpers import columns
from telemetry import wire
from telemetry.cloud import decoder
from telemetry.edge import messages
from telemetry.edge.aggregator import Aggregation, dbc_resolutions
from telemetry.edge.config import load_config
from telemetry.tools import cloudrule
from telemetry.tools.paths import SAMPLE
from telemetry.tools.recipes import request_problems


@pytest.fixture(scope="module")
def cfg():
    return load_config(SAMPLE / "vehicle.toml")


@pytest.fixture(scope="module")
def payload(cfg) -> bytes:
    """One aggregates payload of the sample car, as the aggregator makes it."""
    a = Aggregation(cfg.aggregator, cfg.vehicle, res=dbc_resolutions(cfg.dbc))
    batch = columns(**{"BMS_PackStatus.PackVoltage": ([1782900000.5, 1782900001.5], [141.52, 141.71]),
                       "MC_Velocity.VehicleSpeed": ([1782900000.7], [22.5])})
    a.publish(messages.Signals("drive", 1, 1782900000.5, 1782900001.5, {}, batch))
    (out,) = [m for m in a.publish(messages.EndOfStream("drive", 2, None, {})) if m.payload.group == "drive"]
    return out.to_bytes()


def test_every_cloud_request_is_valid_for_botocores_models(cfg):
    p = cloudrule.plan(cfg, region="eu-west-1", account="123456789012", bucket="team-telemetry",
                       role_arn="arn:aws:iam::123456789012:role/telemetry-decoder")
    checked = [(s, o) for s, o, _ in p.requests if s != "s3"]
    assert checked == [("lambda", "CreateFunction"), ("lambda", "AddPermission"), ("iot", "CreateTopicRule")]
    for service, operation, params in p.requests:
        if service != "s3":
            assert request_problems(service, operation, params) == [], operation
    rule = p.requests[-1][2]["topicRulePayload"]
    assert rule["sql"] == "SELECT encode(*, 'base64') AS payload, topic() AS topic FROM 'dt/+/aggregates'"
    assert "PARTITIONED BY (vehicle string, `date` string)" in p.athena_ddl and "s3://team-telemetry/telemetry/aggregates/" in p.athena_ddl


def test_a_rule_event_becomes_one_parquet_object_per_payload_keyed_by_its_identity(payload, sample_schema):
    s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    bodies: list[bytes] = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: bodies.append(params["Body"]))
    event = {"payload": base64.b64encode(payload).decode(), "topic": "dt/sunrace-01/aggregates"}
    with Stubber(s3) as stub:
        key = "telemetry/aggregates/vehicle=sunrace-01/date=2026-07-01/drive-1782900000.0.parquet"
        for _ in range(2):  # delivered twice: the same object, overwritten
            stub.add_response("put_object", {}, {"Bucket": "team-telemetry", "Key": key, "Body": ANY,
                                                 "ContentType": "application/vnd.apache.parquet"})
            result = decoder.handle(event, s3, "team-telemetry", "telemetry/")
            assert result == {"key": key, "rows": 3 * 4, "vehicle": "sunrace-01"}
        stub.assert_no_pending_responses()
    rows = pq.read_table(io.BytesIO(bodies[0])).to_pylist()
    got = {(r["window_start"], r["signal"], r["statistic"]): r["value"] for r in rows}
    assert got[(1782900000.0, "BMS_PackStatus.PackVoltage", "max")] == 141.52
    assert got[(1782900001.0, "BMS_PackStatus.PackVoltage", "mean")] == 141.71
    assert got[(1782900000.0, "MC_Velocity.VehicleSpeed", "count")] == 1
    assert {r["vehicle"] for r in rows} == {"sunrace-01"} and len(rows) == 12


def test_a_bad_event_is_refused_and_nothing_is_written():
    s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(s3):  # no response queued: a put would fail the test
        with pytest.raises(ValueError, match="base64 'payload'"):
            decoder.handle({"topic": "dt/x/aggregates"}, s3, "b")
        with pytest.raises(wire.WireError, match="no TLMA prefix"):
            decoder.handle({"payload": base64.b64encode(b"{}").decode()}, s3, "b")


def test_the_decoder_zip_runs_on_its_own_without_the_dbc_or_cantools(cfg, payload, tmp_path):
    p = cloudrule.plan(cfg, region="eu-west-1", account="123456789012", bucket="b", role_arn="arn:aws:iam::1:role/r")
    code = cloudrule.decoder_zip(p, tmp_path / "decoder.zip")
    with zipfile.ZipFile(code) as z:
        assert sorted(z.namelist()) == sorted(["telemetry/__init__.py", "telemetry/wire.py", "telemetry/cloud/__init__.py",
                                               "telemetry/cloud/decoder.py", f"telemetry/cloud/schema-{p.schema.id}.json"])
        z.extractall(tmp_path / "task")
    (tmp_path / "payload.bin").write_bytes(payload)
    script = f"""
import sys, json, io
sys.path.insert(0, {str(tmp_path / 'task')!r})
import telemetry, telemetry.cloud.decoder as d
assert telemetry.__file__.startswith({str(tmp_path / 'task')!r}), telemetry.__file__
d.load_schemas({f'schema-{p.schema.id}.json'!r})
class S3:
    def put_object(self, **kw): self.kw = kw
s3 = S3()
import base64
out = d.handle({{"payload": base64.b64encode(open({str(tmp_path / 'payload.bin')!r}, 'rb').read()).decode()}}, s3, "b")
import pyarrow.parquet as pq
print(json.dumps({{"out": out, "rows": pq.read_table(io.BytesIO(s3.kw["Body"])).num_rows,
                  "cantools": "cantools" in sys.modules}}), flush=True)
import os
os._exit(0)  # pyarrow's thread pool can abort the interpreter's own shutdown ("terminate called ...")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == report["out"]["rows"] == 12 and report["cantools"] is False


def test_a_schema_file_says_the_same_schema(sample_schema):
    again = wire.Schema.from_json(sample_schema.to_json())
    assert again == sample_schema and again.id == sample_schema.id
    data = json.loads(sample_schema.to_json())
    data["names"] = data["names"][::-1]
    with pytest.raises(wire.WireError, match="says id"):
        wire.Schema.from_json(json.dumps(data))
    assert list(sample_schema.names) == sorted(sample_schema.names) and len(sample_schema.names) > 60


def test_the_cloud_side_deploys_with_the_sdks_clients_and_again_over_itself(cfg, tmp_path):
    """Every call checked against botocore's models by the Stubber: a first deploy creates, a
    second updates the function and replaces the rule; the README's policy allows each call."""
    region, account = "eu-west-1", "123456789012"
    p = cloudrule.plan(cfg, region=region, account=account, bucket="team-telemetry",
                       role_arn=f"arn:aws:iam::{account}:role/telemetry-decoder")
    code = cloudrule.decoder_zip(p, tmp_path / "decoder.zip")
    kw = {"region_name": region, "aws_access_key_id": "x", "aws_secret_access_key": "y"}
    s3, lambda_, iot = boto3.client("s3", **kw), boto3.client("lambda", **kw), boto3.client("iot", **kw)
    calls: list[str] = []
    for client, prefix in ((s3, "s3"), (lambda_, "lambda"), (iot, "iot")):
        client.meta.events.register("before-call.*.*", lambda model, prefix=prefix, **_: calls.append(f"{prefix}:{model.name}"))
    function = {"FunctionName": cloudrule.FUNCTION, "FunctionArn": f"arn:aws:lambda:{region}:{account}:function:{cloudrule.FUNCTION}",
                "State": "Active", "LastUpdateStatus": "Successful"}
    with Stubber(s3) as s, Stubber(lambda_) as lam, Stubber(iot) as i:
        s.add_response("put_object", {}, {"Bucket": "team-telemetry", "Key": p.zip_key, "Body": ANY})
        lam.add_response("create_function", function, p.requests[1][2])
        lam.add_response("add_permission", {"Statement": "{}"}, p.requests[2][2])
        i.add_response("create_topic_rule", {}, p.requests[3][2])
        assert cloudrule.deploy(p, s3, lambda_, iot, code)[-1] == f"created topic rule {cloudrule.RULE}"
        # again: everything exists
        s.add_response("put_object", {}, {"Bucket": "team-telemetry", "Key": p.zip_key, "Body": ANY})
        lam.add_client_error("create_function", "ResourceConflictException", http_status_code=409)
        lam.add_response("update_function_code", function, {"FunctionName": cloudrule.FUNCTION,
                                                             "S3Bucket": "team-telemetry", "S3Key": p.zip_key})
        lam.add_response("get_function", {"Configuration": function}, {"FunctionName": cloudrule.FUNCTION})
        lam.add_response("update_function_configuration", function,
                         {k: v for k, v in p.requests[1][2].items() if k not in ("Code", "Architectures")})
        lam.add_client_error("add_permission", "ResourceConflictException", http_status_code=409)
        i.add_client_error("create_topic_rule", "ResourceAlreadyExistsException", http_status_code=409)
        i.add_response("replace_topic_rule", {}, {"ruleName": cloudrule.RULE,
                                                  "topicRulePayload": p.requests[3][2]["topicRulePayload"]})
        done = cloudrule.deploy(p, s3, lambda_, iot, code)
        assert done[1] == f"updated function {cloudrule.FUNCTION}" and done[-1] == f"replaced topic rule {cloudrule.RULE}"
        for stub in (s, lam, i):
            stub.assert_no_pending_responses()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    policy = readme[readme.index("The cloud side's deployer"):]
    policy = policy[:policy.index("```\n", policy.index("```json") + 7)]
    wanted = {f"{service}:{name}" for service, name in (c.split(":") for c in calls)}
    missing = sorted(a for a in wanted if f'"{a}"' not in policy)
    assert not missing, f"the README's cloud-side policy lacks {missing}"
    assert "iam:PassRole" in policy

"""The cloud side of a deployment: the IoT topic rule on the fleet's aggregates topic, the
decoder Lambda function it invokes (``telemetry.cloud.decoder``), the permission between them,
and the Athena table over what the function writes. ``requests()`` builds every AWS request,
checked offline against botocore's ``iot`` and ``lambda`` models like the rest of ``deploy``;
``decoder_zip()`` builds the function's code (``telemetry.wire`` and the decoder, with the
vehicles' schema files, no DBC and no cantools: numpy and pyarrow come from the AWS SDK for
pandas layer)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry import wire
from telemetry.edge.aggregator import dbc_resolutions
from telemetry.edge.config import VehicleConfig
from telemetry.tools.paths import REPO

FUNCTION = "telemetry-cloud-decoder"
RULE = "telemetry_aggregates"
# AWS SDK for pandas (numpy, pyarrow, boto3) for Python 3.11, published by AWS in every Region
# under this account; pass --pandas-layer to pin another version.
PANDAS_LAYER = "arn:aws:lambda:{region}:336392948345:layer:AWSSDKPandas-Python311:{version}"
PANDAS_LAYER_VERSION = 20


@dataclass(frozen=True)
class CloudPlan:
    bucket: str
    prefix: str
    zip_key: str
    schema: wire.Schema
    requests: list[tuple[str, str, dict[str, Any]]]
    athena_ddl: str


def topic_filter(cfg: VehicleConfig) -> str:
    """The aggregates topic of every vehicle of the fleet: the prefix with ``{vehicle}`` as ``+``."""
    return f"{cfg.uploader.topic_prefix.replace('{vehicle}', '+').rstrip('/')}/aggregates"


def plan(cfg: VehicleConfig, *, region: str, account: str, bucket: str, role_arn: str, prefix: str = "telemetry/",
         layer_version: int = PANDAS_LAYER_VERSION) -> CloudPlan:
    schema = wire.Schema.of(dbc_resolutions(cfg.dbc))
    function_arn = f"arn:aws:lambda:{region}:{account}:function:{FUNCTION}"
    zip_key = f"{prefix}{FUNCTION}-{schema.id}.zip"
    create: dict[str, Any] = {
        "FunctionName": FUNCTION, "Runtime": "python3.11", "Handler": "telemetry.cloud.decoder.function_handler",
        "Role": role_arn, "Code": {"S3Bucket": bucket, "S3Key": zip_key}, "Timeout": 60, "MemorySize": 512,
        "Architectures": ["x86_64"], "Layers": [PANDAS_LAYER.format(region=region, version=layer_version)],
        "Description": "Aggregates payloads of the vehicles' telemetry to Parquet on S3",
        "Environment": {"Variables": {"TELEMETRY_BUCKET": bucket, "TELEMETRY_PREFIX": prefix,
                                      "TELEMETRY_SCHEMA": f"schema-{schema.id}.json"}},
    }
    permission = {
        "FunctionName": FUNCTION, "StatementId": f"{RULE}-invoke", "Action": "lambda:InvokeFunction",
        "Principal": "iot.amazonaws.com", "SourceArn": f"arn:aws:iot:{region}:{account}:rule/{RULE}",
        "SourceAccount": account,
    }
    rule: dict[str, Any] = {
        "ruleName": RULE,
        "topicRulePayload": {
            # binary payloads reach a Lambda action base64-encoded; topic() says which vehicle sent it
            "sql": f"SELECT encode(*, 'base64') AS payload, topic() AS topic FROM '{topic_filter(cfg)}'",
            "awsIotSqlVersion": "2016-03-23",
            "description": "Vehicle telemetry aggregates to Parquet (telemetry.cloud.decoder)",
            "ruleDisabled": False,
            "actions": [{"lambda": {"functionArn": function_arn}}],
            # what the function refuses (or cannot reach) is kept, never dropped
            "errorAction": {"s3": {"roleArn": role_arn, "bucketName": bucket,
                                   "key": f"{prefix}errors/${{topic()}}/${{timestamp()}}-${{newuuid()}}"}},
        },
    }
    requests: list[tuple[str, str, dict[str, Any]]] = [("s3", "PutObject", {"Bucket": bucket, "Key": zip_key, "Body": f"<{FUNCTION}.zip>"}),
                ("lambda", "CreateFunction", create), ("lambda", "AddPermission", permission),
                ("iot", "CreateTopicRule", rule)]
    return CloudPlan(bucket, prefix, zip_key, schema, requests, athena_ddl(bucket, prefix))


def athena_ddl(bucket: str, prefix: str, table: str = "telemetry_aggregates") -> str:
    """The Athena table over the decoder's output: partitions by vehicle and day found by
    partition projection (no crawler, no MSCK REPAIR)."""
    location = f"s3://{bucket}/{prefix}aggregates/"
    return f"""CREATE EXTERNAL TABLE IF NOT EXISTS {table} (
  `group` string, window_start double, window_end double, signal string, statistic string, value double
)
PARTITIONED BY (vehicle string, `date` string)
STORED AS PARQUET
LOCATION '{location}'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.vehicle.type' = 'injected',
  'projection.date.type' = 'date', 'projection.date.format' = 'yyyy-MM-dd', 'projection.date.range' = '2024-01-01,NOW',
  'storage.location.template' = '{location}vehicle=${{vehicle}}/date=${{date}}/'
);
"""


def decoder_zip(p: CloudPlan, out: Path) -> Path:
    """The decoder function's code: the wire format, the decoder, the schema file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    package = REPO / "shared" / "telemetry"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in ("__init__.py", "wire.py", "cloud/__init__.py", "cloud/decoder.py"):
            z.write(package / rel, f"telemetry/{rel}")
        z.writestr(f"telemetry/cloud/schema-{p.schema.id}.json", p.schema.to_json())
    return out


def write(p: CloudPlan, folder: Path) -> list[Path]:
    """The cloud side's requests (one JSON file each), the decoder's zip and the Athena DDL."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (service, operation, params) in enumerate(p.requests, 1):
        path = folder / f"{i:02d}-{service}-{operation}.json"
        path.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    paths.append(decoder_zip(p, folder / f"{FUNCTION}.zip"))
    ddl = folder / "athena-create-table.sql"
    ddl.write_text(p.athena_ddl)
    paths.append(ddl)
    return paths


def deploy(p: CloudPlan, s3: Any, lambda_: Any, iot: Any, code: Path) -> list[str]:
    """Run the cloud side's requests with the clients given: upload the decoder, create it (or
    update its code and configuration), let the rule invoke it, create (or replace) the rule.
    Returns what was done, one line each."""
    done = []
    _, _, put = p.requests[0]
    s3.put_object(Bucket=put["Bucket"], Key=put["Key"], Body=code.read_bytes())
    done.append(f"uploaded s3://{put['Bucket']}/{put['Key']}")
    create = p.requests[1][2]
    try:
        lambda_.create_function(**create)
        done.append(f"created function {FUNCTION}")
    except lambda_.exceptions.ResourceConflictException:
        lambda_.update_function_code(FunctionName=FUNCTION, S3Bucket=create["Code"]["S3Bucket"],
                                     S3Key=create["Code"]["S3Key"])
        lambda_.get_waiter("function_updated_v2").wait(FunctionName=FUNCTION)
        lambda_.update_function_configuration(**{k: v for k, v in create.items() if k not in ("Code", "Architectures")})
        done.append(f"updated function {FUNCTION}")
    try:
        lambda_.add_permission(**p.requests[2][2])
        done.append(f"allowed the rule {RULE} to invoke {FUNCTION}")
    except lambda_.exceptions.ResourceConflictException:
        done.append(f"the rule {RULE} may already invoke {FUNCTION}")
    rule = p.requests[3][2]
    try:
        iot.create_topic_rule(**rule)
        done.append(f"created topic rule {RULE}")
    except iot.exceptions.ResourceAlreadyExistsException:
        iot.replace_topic_rule(**rule)
        done.append(f"replaced topic rule {RULE}")
    return done

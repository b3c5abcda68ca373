"""The cloud decoder: an AWS Lambda function behind an IoT topic rule on ``<prefix>/aggregates``.

The rule (``SELECT encode(*, 'base64') AS payload, topic() AS topic FROM 'dt/+/aggregates'``,
built by ``rule_requests``) hands each binary payload to this function, which decodes it with
the same ``telemetry.wire`` the vehicle encoded it with and writes its rows as one Parquet object
to S3, partitioned by vehicle and day (Hive style, so Athena reads it with partition
projection)::

    s3://<bucket>/<prefix>aggregates/vehicle=<vehicle>/date=<YYYY-MM-DD>/<group>-<period start>[-<part>].parquet

The object's key is the payload's identity: a payload delivered twice (QoS 1 is at least once)
overwrites itself, so the table holds each window once. The vehicle's DBC files are bundled with
the function as schema files (``TELEMETRY_SCHEMA``), so the schema the payloads number their
signals in resolves here. numpy and pyarrow come from the AWS SDK for pandas layer.
"""

from __future__ import annotations

import base64
import datetime
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from telemetry import wire

HERE = Path(__file__).resolve().parent


def object_key(payload: wire.Payload, prefix: str = "") -> str:
    day = datetime.datetime.fromtimestamp(payload.start, datetime.UTC).strftime("%Y-%m-%d")
    i, n = payload.part
    part = f"-{i}of{n}" if n > 1 else ""
    return f"{prefix}aggregates/vehicle={payload.vehicle}/date={day}/{payload.group}-{payload.start!r}{part}.parquet"


def parquet(payload: wire.Payload) -> bytes:
    """The payload's rows (vehicle, group, window start and end, signal, statistic, value) as
    Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = payload.columns()
    buffer = io.BytesIO()
    pq.write_table(pa.table({k: cols[k] for k in wire.ROW_COLUMNS}), buffer)
    return buffer.getvalue()


def load_schemas(paths: str | None = None) -> list[wire.Schema]:
    """Register the schema files bundled with the function (``TELEMETRY_SCHEMA``: file names
    beside the handler, or absolute paths; ``deploy`` writes them from the vehicles' DBC files,
    so the function needs neither the DBC nor cantools)."""
    names = (os.environ.get("TELEMETRY_SCHEMA", "") if paths is None else paths).split(os.pathsep)
    out = []
    for name in filter(None, names):
        path = Path(name) if Path(name).is_absolute() else HERE / name
        out.append(wire.register(wire.Schema.from_json(path.read_text())))
    return out


def handle(event: Mapping[str, Any], s3: Any, bucket: str, prefix: str = "") -> dict[str, Any]:
    """One rule event: decode its payload and put its rows to S3. A payload that does not decode
    raises (the rule's error action keeps it), never writes a partial object."""
    data = event.get("payload")
    if not isinstance(data, str):
        raise ValueError("event without a base64 'payload' (the rule must SELECT encode(*, 'base64') AS payload)")
    payload = wire.decode(base64.b64decode(data, validate=True))
    key = object_key(payload, prefix)
    s3.put_object(Bucket=bucket, Key=key, Body=parquet(payload), ContentType="application/vnd.apache.parquet")
    return {"key": key, "rows": len(payload.table) * len(payload.stats), "vehicle": payload.vehicle}


_LOADED: list[wire.Schema] = []


def function_handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    import boto3

    if not _LOADED:
        _LOADED.extend(load_schemas() or [wire.Schema((), ())])

    return handle(event, boto3.client("s3"), os.environ["TELEMETRY_BUCKET"], os.environ.get("TELEMETRY_PREFIX", ""))

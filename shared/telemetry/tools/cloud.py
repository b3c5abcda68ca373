"""The cloud side: aggregates payloads (``telemetry.wire``) back to rows, from a replay's
``cloud.jsonl``, a folder of them, or a folder of captured MQTT payloads (one file per publish).

A row is ``(vehicle, group, window_start, window_end, signal, statistic, value)``: long format,
what a notebook, Athena or Grafana reads. ``./build.sh decode-cloud`` writes them as CSV, JSON
lines or Parquet (pyarrow, a laptop dependency, never in the Lambda zips).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from telemetry import wire
from telemetry.edge.errors import TelemetryError
from telemetry.tools.paths import SAMPLE

COLUMNS = wire.ROW_COLUMNS


class CloudError(TelemetryError):
    pass


def payloads(source: str | Path) -> Iterator[tuple[str, wire.Payload]]:
    """Every aggregates payload under ``source`` with where it came from (``file:line``). Other
    publishes (alerts, gaps, health: JSON) are skipped; a payload that does not decode raises
    CloudError naming it."""
    path = Path(source)
    if not path.exists():
        raise CloudError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        data = file.read_bytes()
        if wire.is_payload(data):  # a captured MQTT payload
            yield str(file), _decoded(data, str(file))
            continue
        if not file.name.endswith((".jsonl", ".json")):
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if '"payload_base64"' not in line:
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
                payload = wire.from_outbox_line(record)
            except (ValueError, wire.WireError) as exc:
                raise CloudError(f"{where}: not an aggregates payload: {exc}") from None
            if payload is not None:
                yield where, payload


def _decoded(data: bytes, where: str) -> wire.Payload:
    try:
        return wire.decode(data)
    except wire.WireError as exc:
        raise CloudError(f"{where}: {exc}") from None


def register_schema(config: str | Path | None, dbc: list[str]) -> wire.Schema:
    """The schema of the vehicle's DBC files (``--dbc``, else the configuration's), registered
    so that payloads numbering their signals in it decode."""
    from telemetry.edge.aggregator import register_dbc_schema
    from telemetry.tools.replay import resolve_config

    if not dbc:
        dbc = list(resolve_config(config or SAMPLE / "vehicle.toml").dbc)
    return register_dbc_schema(dbc)


def convert(source: str | Path, out: str | Path, to: str) -> dict[str, Any]:
    """Write every row of every payload under ``source`` to ``out``; returns counts."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_payloads = n_rows = 0
    if to == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CloudError("--to parquet needs pyarrow (pip install pyarrow; ./build.sh setup installs it)") from None
        schema = pa.schema([("vehicle", pa.string()), ("group", pa.string()), ("window_start", pa.float64()),
                            ("window_end", pa.float64()), ("signal", pa.string()), ("statistic", pa.string()),
                            ("value", pa.float64())])
        with pq.ParquetWriter(str(out), schema) as writer:
            for _, payload in payloads(source):
                cols = payload.columns()
                writer.write_table(pa.table({k: cols[k] for k in COLUMNS}, schema=schema))
                n_payloads += 1
                n_rows += len(cols["value"])
    elif to in ("csv", "jsonl"):
        with out.open("w", newline="") as f:
            w = csv.writer(f) if to == "csv" else None
            if w is not None:
                w.writerow(COLUMNS)
            for _, payload in payloads(source):
                cols = payload.columns()
                rows = zip(*(cols[k].tolist() for k in COLUMNS))
                if w is not None:
                    w.writerows(rows)
                else:
                    f.writelines(json.dumps(dict(zip(COLUMNS, r)), allow_nan=False) + "\n" for r in rows)
                n_payloads += 1
                n_rows += len(cols["value"])
    else:
        raise CloudError(f"--to must be csv, jsonl or parquet, not {to!r}")
    return {"payloads": n_payloads, "rows": n_rows, "out": str(out)}

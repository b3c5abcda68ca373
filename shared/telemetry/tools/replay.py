"""Replaying a recorded CAN log through all four components on the local runtime.

Writes ``<out>/cloud.jsonl`` (one line per message handed to the cloud transport) and
``<out>/summary.json``, and returns the summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from telemetry.edge.config import VehicleConfig, load_config
from telemetry.edge.errors import ConfigError
from telemetry.edge.components import CanReaderComponent
from telemetry.edge.components import AnomalyDetectorComponent
from telemetry.tools.paths import RECIPES
from telemetry.tools.runtime import LocalRuntime
from telemetry.edge.transport import OutboxFile
from telemetry.edge.components import UploaderComponent
from telemetry.edge.uploader import unpack
from telemetry.edge.components import AggregatorComponent

LOG = logging.getLogger(__name__)



def resolve_config(config: str | Path | VehicleConfig | None, dbc: Sequence[str | Path] = ()) -> VehicleConfig:
    """The configuration of a replay: a file (or none), with ``--dbc`` files taking precedence."""
    if isinstance(config, VehicleConfig):
        cfg = config
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = VehicleConfig(vehicle="replay")
    if dbc:
        cfg = dataclasses.replace(cfg, dbc=tuple(str(p) for p in dbc))
    if not cfg.dbc:
        raise ConfigError("no DBC file: give --dbc, or list 'dbc' in the configuration")
    return cfg


def replay(
    log: str | Path,
    *,
    out_dir: str | Path,
    config: str | Path | VehicleConfig | None = None,
    dbc: Sequence[str | Path] = (),
    speed: float = 0.0,
    recipes_dir: str | Path = RECIPES,
) -> dict[str, Any]:
    cfg = resolve_config(config, dbc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cloud = OutboxFile(out / "cloud.jsonl")
    spool = out / "spool.db"
    for stale in (spool, Path(f"{spool}-wal"), Path(f"{spool}-shm")):
        stale.unlink(missing_ok=True)  # a replay starts with an empty spool
    env = {"TELEMETRY_LOG": str(Path(log).resolve()), "TELEMETRY_REPLAY_SPEED": str(speed), "TELEMETRY_SPOOL": str(spool)}
    started = time.monotonic()
    try:
        with LocalRuntime(recipes_dir, cfg, cloud, env=env, root=Path(recipes_dir).resolve().parent) as runtime:
            runtime.wait_for_sources()
            runtime.drain()
            components = {name: runtime.component(name) for name in runtime.runners}
            summary = build_summary(runtime, components.values(), cfg, log)
        summary["cloud_messages"] = cloud.messages
        summary["cloud_bytes"] = cloud.bytes
    finally:
        cloud.close()
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_summary(runtime: LocalRuntime, components: Any, cfg: VehicleConfig, log: str | Path) -> dict[str, Any]:
    reader = next(c for c in components if isinstance(c, CanReaderComponent))
    aggregator = next(c for c in components if isinstance(c, AggregatorComponent))
    detector = next(c for c in components if isinstance(c, AnomalyDetectorComponent))
    uploader = next(c for c in components if isinstance(c, UploaderComponent))
    totals = reader.core.totals
    source = reader.source
    malformed = Counter({type(c).__name__: c.stats["malformed"] for c in (aggregator, detector, uploader) if c.stats["malformed"]})
    windows, alerts, upload = aggregator.totals(), detector.totals(), uploader.totals()
    return {
        "log": str(log),
        "dbc": list(cfg.dbc),
        "vehicle": cfg.vehicle,
        "frames_read": totals["read"],
        "error_frames": totals["error"],
        "remote_frames": totals["remote"],
        "frames_decoded": totals["decoded"],
        "frames_unknown_id": totals["unknown_id"],
        "decode_errors": totals["decode_error"],
        "bad_lines": len(source.bad_records),
        "bad_records": [str(r) for r in source.bad_records],
        "unknown_ids": {f"0x{k:X}": n for k, n in reader.core.unknown_ids.most_common()},
        "decode_error_ids": {f"0x{k:X}": n for k, n in reader.core.decode_error_ids.most_common()},
        "dbc_collisions": [str(c) for c in getattr(reader.decoder, "collisions", [])],
        "signal_samples": totals["signal_samples"],
        "non_finite_values": totals["non_finite_values"],
        "batches": totals["batches"],
        "event_start": reader.core.first_time,
        "event_end": reader.core.last_time,
        "aggregates": aggregator.stats["aggregates"],
        "late_samples": windows["late_samples"],
        "forced_window_closes": windows["forced_closes"],
        "alerts": sum(alerts[f"alert_{kind}"] for kind in ("raised", "update", "cleared")),
        "alerts_raised": alerts["alert_raised"],
        "alerts_updated": alerts["alert_update"],
        "alerts_cleared": alerts["alert_cleared"],
        "alerts_active_at_end": len(detector.core.active),
        "uploaded_messages": upload["messages_sent"],
        "uploaded_raw_bytes": upload["raw_bytes_sent"],
        "bundles": upload["bundles_sent"],
        "spool_left": uploader.pending(),
        "evicted_messages": upload["evicted_messages"],
        "set_aside": upload["set_aside"],
        "retries": upload["retries"],
        "local_messages": dict(runtime.published),
        "local_bytes": dict(runtime.published_bytes),
        "malformed_messages": dict(malformed),
        "handler_errors": runtime.errors,
    }


def messages_from_outbox(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The messages inside the bundles of a replay's cloud.jsonl, in the order sent."""
    out = []
    with Path(path).open() as f:
        for line in f:
            payload = json.loads(line)["payload"]
            if payload.get("kind") != "bundle":
                continue
            out += [item["message"] for item in unpack(payload) if kind is None or item["message"].get("kind") == kind]
    return out


def alerts_from_outbox(path: str | Path) -> list[dict[str, Any]]:
    return sorted(messages_from_outbox(path, "alert"), key=lambda a: a["t"])


def format_summary(summary: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    s = summary
    lines = [
        f"Replayed {s['log']}",
        f"  frames read        {s['frames_read']:>10}   ({s['frames_decoded']} decoded, {s['error_frames']} error, "
        f"{s['remote_frames']} remote, {s['frames_unknown_id']} unknown id, {s['decode_errors']} decode errors)",
        f"  bad log lines      {s['bad_lines']:>10}",
        f"  signal samples     {s['signal_samples']:>10}   in {s['batches']} batches",
        f"  aggregates         {s['aggregates']:>10}   windows ({s['late_samples']} late samples)",
        f"  alerts             {s['alerts']:>10}   ({s['alerts_raised']} raised, {s['alerts_updated']} updated, "
        f"{s['alerts_cleared']} cleared, {s['alerts_active_at_end']} still active at the end)",
        f"  to the cloud       {s['cloud_messages']:>10}   publishes, {s['cloud_bytes']} bytes "
        f"({s['uploaded_messages']} messages, {s['uploaded_raw_bytes']} bytes before packing)",
        f"  wall time          {s['seconds']:>10.2f}   s (peak RSS {s['peak_rss_mb']} MB)",
    ]
    for record in s["bad_records"][:10]:
        lines.append(f"  bad line: {record}")
    if len(s["bad_records"]) > 10:
        lines.append(f"  ... and {len(s['bad_records']) - 10} more bad lines (summary.json lists them all)")
    if s["unknown_ids"]:
        top = ", ".join(f"{k} x{n}" for k, n in list(s["unknown_ids"].items())[:8])
        lines.append(f"  unknown ids ({len(s['unknown_ids'])}): {top}")
    for collision in s["dbc_collisions"]:
        lines.append(f"  DBC collision: {collision}")
    for component, count in s["malformed_messages"].items():
        lines.append(f"  malformed messages dropped by {component}: {count}")
    for error in s["handler_errors"]:
        lines.append(f"  HANDLER ERROR: {error}")
    if alerts:
        t0 = s["event_start"] or 0.0
        lines.append("Alerts (t: seconds from the first frame of the log):")
        for a in alerts:
            worst = a["detail"].get("worst")
            lines.append(
                f"  t={a['t'] - t0:8.3f}  {a['state']:<7} {a['severity']:<8} {a['rule']:<22} {a['signal']:<32} "
                f"value={_num(a['value'])}" + (f" worst={_num(worst)}" if a["state"] != "raised" else "")
            )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"

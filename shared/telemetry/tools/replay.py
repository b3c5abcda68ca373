"""Replaying a recorded CAN log through all four components on the local runtime.

Writes ``<out>/cloud.jsonl`` (one line per message handed to the cloud transport),
``<out>/summary.json`` and ``<out>/report.html`` (``report.py``), and returns the summary. The
report's windows and alerts are what the components published on their local topics, heard by
taps (``taps.py``), not read back from ``cloud.jsonl``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from telemetry.edge.config import VehicleConfig, load_config
from telemetry.edge.errors import ConfigError
from telemetry.edge.logparse import asc_start_time
from telemetry.edge.messages import Alert, delivered, dumps
from telemetry.edge.transport import OutboxFile
from telemetry.tools.export import FORMATS, ExportError, SignalsWriter, write_aggregates
from telemetry.tools.forkserver import start_forkserver
from telemetry.tools.paths import RECIPES
from telemetry.tools.procruntime import ProcessRuntime, cpu_seconds_used
from telemetry.tools.report import alert_intervals, report_data, signal_units, write_report
from telemetry.tools.runtime import LocalRuntime
from telemetry.tools.signals import check_rules_match, decode_error_reasons
from telemetry.tools.taps import MeteredCloud, ReplayTaps

LOG = logging.getLogger(__name__)

UNLIMITED = 1e15  # a rate or size no replay reaches
ABSOLUTE_AFTER = 3e8  # a first frame after 1979 is on a wall clock, not seconds from the start
DECODED_AT_LEAST = 0.5  # under this share of data frames decoded, the replay warns

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
    processes: bool = False,
    one_cpu: bool = True,
    taps: ReplayTaps | None = None,
    report: bool = True,
    export: tuple[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Replay ``log``; with ``processes``, each component runs in its own process (as on a core
    device, and on as many cores as there are), else all four in this one. With ``one_cpu``, the
    threads of this process that do the work (the components' in one process; the nucleus's
    relays and the taps with ``processes``) share one CPU: they share one interpreter lock, and
    hand it over more cheaply on one core than between cores (``affinity.py``). The children
    run on any.

    As fast as possible (``speed`` 0), the uploader's pacing to the link (bytes and publishes per
    second, the hourly budget) and its spool cap are lifted: they are wall-clock and backlog
    limits of a car sending in real time, and a replay a hundred times faster would only wait on
    them, or evict what the car would have sent. At a recorded pace every setting applies.

    ``taps`` (made here if not given) hears what the components publish; the report is drawn
    from it. A rule whose patterns match no signal of the DBCs is refused before anything runs.
    ``export`` (format, folder) writes the decoded signals and the windows there (``export.py``)."""
    if processes:
        start_forkserver()  # its imports run while this process reads the configuration and the DBCs
    cfg = resolve_config(config, dbc)
    check_rules_match(cfg)
    if export is not None and export[0] not in FORMATS:
        raise ExportError(f"unknown export format {export[0]!r} (known: {', '.join(FORMATS)})")
    taps = taps or ReplayTaps()
    writer = None
    if export is not None:
        writer = SignalsWriter(export[1], export[0], signal_units(cfg.dbc))
        taps.on_signals = writer.take
    lifted = speed <= 0
    if lifted:
        cfg = dataclasses.replace(cfg, uploader=dataclasses.replace(
            cfg.uploader, max_bytes_per_second=UNLIMITED, max_publishes_per_second=UNLIMITED,
            budget_bytes_per_hour=0, spool_max_bytes=int(UNLIMITED)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cloud = OutboxFile(out / "cloud.jsonl")
    metered = MeteredCloud(cloud, lambda: taps.latest)
    spool = out / "spool.db"
    for stale in (spool, Path(f"{spool}-wal"), Path(f"{spool}-shm")):
        stale.unlink(missing_ok=True)  # a replay starts with an empty spool
    env = {"TELEMETRY_LOG": str(Path(log).resolve()), "TELEMETRY_REPLAY_SPEED": str(speed), "TELEMETRY_SPOOL": str(spool)}
    started, cpu_at_start = time.monotonic(), cpu_seconds_used()
    try:
        root = Path(recipes_dir).resolve().parent
        runtime: LocalRuntime | ProcessRuntime
        if processes:
            runtime = ProcessRuntime(recipes_dir, cfg, metered, env=env, root=root, one_cpu=one_cpu)
        else:
            runtime = LocalRuntime(recipes_dir, cfg, metered, env=env, root=root, one_cpu=one_cpu)
        taps.attach(runtime)
        with runtime:
            runtime.wait_for_sources()
            runtime.drain()
            components = {name: runtime.component(name) for name in runtime.runners}
            summary = build_summary(runtime, components.values(), cfg, log)
            if isinstance(runtime, ProcessRuntime):  # the components' memory is in their processes
                summary["peak_rss_mb_processes"] = runtime.peak_rss_mb()
                summary["cpu_seconds_processes"] = {**runtime.cpu_seconds(), "runtime": round(cpu_seconds_used() - cpu_at_start, 2)}
        summary["uploader_limits_lifted"] = lifted
        summary["cloud_messages"] = cloud.messages
        summary["cloud_bytes"] = cloud.bytes
        summary["cloud_bytes_by_topic"] = dict(sorted(cloud.bytes_by_topic.items()))
        summary["log_bytes"] = Path(log).stat().st_size
        # the link's figure of merit: what goes out against what the bus logged
        summary["cloud_to_log_ratio"] = round(cloud.bytes / summary["log_bytes"], 5) if summary["log_bytes"] else None
    finally:
        cloud.close()
        if writer is not None:
            writer.close()
    if export is not None and writer is not None:
        rows = write_aggregates(export[1], export[0], taps.windows, writer.units)
        summary["exports"] = {"dir": str(export[1]), "format": export[0], "signal_rows": writer.rows, "aggregate_rows": rows}
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    summary["time_base"] = time_base(log, summary.get("event_start"))
    summary["warnings"] = warnings(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report:
        # the reader counts the frames that fail per id; why they fail is asked of cantools
        # here, on each id's first failing frame (a second read of the log, only if any failed)
        reasons = decode_error_reasons(log, cfg.dbc, summary["decode_error_ids"]) if summary["decode_error_ids"] else {}
        data = report_data(summary, taps.payloads, taps.alerts, metered.publishes, taps.uplink, cfg.dbc, reasons,
                           summary_text=format_summary(summary, taps.alerts),
                           rules={rule.name: rule.signals for rule in cfg.rules})
        write_report(out / "report.html", data)
    return summary


def time_base(log: str | Path, first: float | None) -> str:
    """Which clock the log's times are on, in words (the summary and the report say it)."""
    if Path(log).suffix.lower() == ".asc":
        start = asc_start_time(log)
        if start is not None:
            return (f"absolute, from the .asc header's date ({start[1]}, read in this computer's time zone "
                    "as python-can reads it) plus each frame's offset")
        return "relative: seconds from the start of the log (its .asc header has no date)"
    if first is not None and first > ABSOLUTE_AFTER:
        return "absolute: the log's own timestamps (seconds since 1970, UTC)"
    return "relative: the log's timestamps start near 0 (it carries no date)"


def warnings(summary: dict[str, Any]) -> list[str]:
    """What makes a replay's results doubtful, in sentences (``--strict`` fails on any)."""
    out = []
    data_frames = summary["frames_read"] - summary["error_frames"] - summary["remote_frames"]
    decoded = summary["frames_decoded"]
    if data_frames and decoded < DECODED_AT_LEAST * data_frames:
        top = ", ".join(f"{k} ({n} frames)" for k, n in list(summary["unknown_ids"].items())[:5])
        out.append(f"only {decoded} of {data_frames} data frames decoded ({100 * decoded / data_frames:.0f} %): "
                   f"is this the right DBC for this log?"
                   + (f" Most frequent unknown ids: {top}." if top else "")
                   + (f" {summary['decode_errors']} frames of known ids failed to decode." if summary["decode_errors"] else ""))
    elif not data_frames and not summary.get("frames_quarantined"):
        out.append("the log holds no data frames")
    if summary.get("frames_quarantined"):
        out.append(f"{summary['frames_quarantined']} frames quarantined for their timestamps (never decoded): too far "
                   f"from the stream's event time and not confirmed by the frames after them, not finite, or past "
                   f"2255 (a log in milliseconds or microseconds read as seconds?); docs/CONFIG.md, \"Event time\"")
    if summary["handler_errors"]:
        out.append(f"{len(summary['handler_errors'])} handler errors (listed below)")
    return out


def build_summary(runtime: LocalRuntime | ProcessRuntime, components: Any, cfg: VehicleConfig, log: str | Path) -> dict[str, Any]:
    """The run in numbers, from what each component reports of itself (``counters()``) and
    what the runtime saw on its topics; nothing here reaches into a component."""
    summary: dict[str, Any] = {"log": str(log), "dbc": list(cfg.dbc), "vehicle": cfg.vehicle}
    malformed: dict[str, int] = {}
    for component in components:
        counters = dict(component.counters())
        refused = counters.pop("malformed", 0)
        counters.pop("malformed_reasons", None)
        if refused:
            malformed[getattr(component, "class_name", type(component).__name__)] = refused
        summary.update(counters)
    summary.update({
        "local_messages": dict(runtime.published),
        "local_bytes": dict(runtime.published_bytes),
        "malformed_messages": malformed,
        "handler_errors": runtime.errors,
        "pinned_cpu": runtime.pinned_cpu,  # the CPU the runtime's threads share (its one_cpu)
    })
    return summary


def messages_from_outbox(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The messages inside the bundles of a replay's cloud.jsonl, in the order sent; an
    aggregates payload as its windows (``wire.Payload.window_messages``)."""
    wanted = "window" if kind == "aggregates" else kind
    out: list[dict[str, Any]] = []
    with Path(path).open() as f:
        for line in f:
            record = json.loads(line)
            data = base64.b64decode(record["payload_base64"]) if "payload_base64" in record else dumps(record["payload"])
            out += [m for m in delivered(data) if wanted is None or m.get("kind") == wanted]
    return out


def alerts_from_outbox(path: str | Path) -> list[dict[str, Any]]:
    return sorted(messages_from_outbox(path, "alert"), key=lambda a: a["t"])


def format_summary(summary: dict[str, Any], alerts: Sequence[Alert], *, verbose: bool = False) -> str:
    """The replay in a screenful: warnings first, the counts, then the alerts condensed per
    rule (every raised, updated and cleared message with ``verbose``)."""
    s = summary
    lines = [f"WARNING: {w}" for w in s.get("warnings", ())]
    lines += [
        f"Replayed {s['log']}",
        f"  frames read        {s['frames_read']:>10}   ({s['frames_decoded']} decoded, {s['error_frames']} error, "
        f"{s['remote_frames']} remote, {s['frames_unknown_id']} unknown id, {s['decode_errors']} decode errors)",
        f"  bad log lines      {s['bad_lines']:>10}",
        *([f"  quarantined        {s['frames_quarantined']:>10}   frames, for their timestamps (never decoded)"]
          if s.get("frames_quarantined") else []),
        f"  signal samples     {s['signal_samples']:>10}   in {s['batches']} batches",
        f"  aggregates         {s['aggregates']:>10}   payloads of {s.get('windows', 0)} windows ({s['late_samples']} late samples)",
        f"  alerts             {s['alerts']:>10}   ({s['alerts_raised']} raised, {s['alerts_updated']} updated, "
        f"{s['alerts_cleared']} cleared, {s['alerts_active_at_end']} still active at the end)",
        f"  to the cloud       {s['cloud_messages']:>10}   publishes, {s['cloud_bytes']} bytes"
        + (f" = 1/{1 / s['cloud_to_log_ratio']:.1f} of the log's {s['log_bytes']} bytes" if s.get("cloud_to_log_ratio") else "")
        + (" (" + ", ".join(f"{t.rsplit('/', 1)[-1]} {b}" for t, b in s.get("cloud_bytes_by_topic", {}).items()) + ")"),
        f"                                  ({s['uploaded_messages']} messages, {s['uploaded_raw_bytes']} bytes before packing"
        + ("; as fast as possible: no link pacing, no spool cap)" if s.get("uploader_limits_lifted") else ")"),
        f"  wall time          {s['seconds']:>10.2f}   s (peak RSS {s['peak_rss_mb']} MB)",
    ]
    if s.get("time_base"):
        lines.append(f"  time base          {s['time_base']}")
    if s.get("peak_rss_mb_processes"):
        lines.append("  processes          " + ", ".join(f"{name} {mb} MB" for name, mb in s["peak_rss_mb_processes"].items())
                     + " (peak RSS of each)")
    if s.get("cpu_seconds_processes"):
        lines.append("                     " + ", ".join(f"{name} {cpu:.2f}" for name, cpu in s["cpu_seconds_processes"].items())
                     + " (CPU seconds of each; runtime: this process's, the nucleus's and the taps')")
    for record in s["bad_records"][:10]:
        lines.append(f"  bad line: {record}")
    if len(s["bad_records"]) > 10:
        lines.append(f"  ... and {len(s['bad_records']) - 10} more bad lines (summary.json lists them all)")
    if s["unknown_ids"]:
        top = ", ".join(f"{k} x{n}" for k, n in list(s["unknown_ids"].items())[:8])
        lines.append(f"  unknown ids ({len(s['unknown_ids'])}): {top}")
    if s.get("decode_error_ids"):
        top = ", ".join(f"{k} x{n}" for k, n in list(s["decode_error_ids"].items())[:8])
        lines.append(f"  decode errors by id ({len(s['decode_error_ids'])}): {top} (report.html gives the reasons)")
    if s.get("fallback_frames"):
        lines.append(f"  decoded frame by frame by cantools (no vectorised plan): {s['fallback_frames']} frames")
    for collision in s["dbc_collisions"]:
        lines.append(f"  DBC collision: {collision}")
    for component, count in s["malformed_messages"].items():
        lines.append(f"  malformed messages dropped by {component}: {count}")
    for error in s["handler_errors"]:
        lines.append(f"  HANDLER ERROR: {error}")
    if alerts:
        lines += format_alerts(alerts, s.get("event_start") or 0.0, s.get("event_end"), verbose=verbose)
    return "\n".join(lines)


def alert_line(a: Alert, t0: float) -> str:
    """One alert message as it happened."""
    worst = a.detail.get("worst")
    return (f"  t={a.t - t0:8.3f}  {a.state:<7} {a.severity:<8} {a.rule:<22} {a.signal:<32} "
            f"value={_num(a.value)}" + (f" worst={_num(worst)}" if a.state != "raised" else ""))


def format_alerts(alerts: Sequence[Alert], t0: float, t_end: float | None, *, verbose: bool = False) -> list[str]:
    """Per rule, one line per alert: when raised and cleared (or still active), its worst value
    and how many updates it sent; ``verbose``: every message."""
    if verbose:
        return ["Alerts (t: seconds from the first frame of the log):",
                *(alert_line(a, t0) for a in sorted(alerts, key=lambda a: a.t))]
    lines = ["Alerts per rule (t: seconds from the first frame of the log; --verbose lists every update):"]
    records = alert_intervals(alerts, t_end)
    for rule in dict.fromkeys(r["rule"] for r in records):
        mine = [r for r in records if r["rule"] == rule]
        updates = sum(r["updates"] for r in mine)
        lines.append(f"  {rule} ({mine[0]['severity']}): {len(mine)} alert{'s' if len(mine) != 1 else ''}"
                     + (f", {updates} update{'s' if updates != 1 else ''}" if updates else ""))
        for r in mine[:20]:
            end = (f"cleared t={r['cleared'] - t0:.1f}" if r["cleared"] is not None else "still active at the end")
            lines.append(f"    t={r['raised'] - t0:8.1f}  {r['signal']:<32} {end} ({r['duration']:.1f} s), "
                         f"worst {_num(r['worst'])}" + (", flapping" if r["flapping"] else ""))
        if len(mine) > 20:
            lines.append(f"    ... and {len(mine) - 20} more (report.html shows them all)")
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"

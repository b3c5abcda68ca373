"""The signal catalogue of a car (``telemetry signals``) and the check that every rule watches something.

``catalogue`` lists every signal of the DBC files (message, name, unit, scale, range); with a log,
``log_statistics`` adds per signal the samples, rate, min, max and percentiles, decoded by the
same decoder as the reader; with a configuration, ``rule_matches`` says which signals each rule's
patterns match and ``would_raise`` runs the detector over the log to list the alerts it would
raise. ``check_rules_match`` refuses a rule whose patterns match no signal (a typo would
otherwise silently watch nothing): ``replay`` calls it before it starts.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telemetry.edge.config import VehicleConfig
from telemetry.edge.decode import DbcDecoder, DecodedBatch, load_dbc
from telemetry.edge.detector import Detector
from telemetry.edge.errors import ConfigError
from telemetry.edge.frames import Frames
from telemetry.edge.messages import EVENT_COUNTERS, Alert
from telemetry.edge.rules.bus import BusRule
from telemetry.edge.sources import LogSource
from telemetry.tools.report import alert_intervals

PERCENTILES = (1, 50, 99)


@dataclass(frozen=True)
class SignalInfo:
    """One signal as the DBC defines it. ``name`` is ``<Message>.<Signal>``, as decoded."""

    name: str
    message: str
    frame_id: int
    extended: bool
    unit: str
    scale: float
    offset: float
    minimum: float | None  # the DBC's declared range, if any
    maximum: float | None
    raw_minimum: float  # what the bit field can hold, scaled
    raw_maximum: float
    multiplexed: bool


def catalogue(dbc_paths: Sequence[str | Path]) -> list[SignalInfo]:
    """Every signal of the DBC files, by message; a later file's message replaces an earlier
    one of the same frame id, as in decoding."""
    by_frame: dict[tuple[int, bool], Any] = {}
    for path in dbc_paths:
        for message in load_dbc(path).messages:
            by_frame[(message.frame_id, bool(message.is_extended_frame))] = message
    out = []
    for (frame_id, extended), message in sorted(by_frame.items(), key=lambda kv: kv[1].name):
        for s in message.signals:
            lo_raw, hi_raw = _raw_range(s)
            scaled = sorted((lo_raw * s.scale + s.offset, hi_raw * s.scale + s.offset))
            out.append(SignalInfo(f"{message.name}.{s.name}", message.name, frame_id, extended, s.unit or "",
                                  float(s.scale), float(s.offset), _opt(s.minimum), _opt(s.maximum),
                                  scaled[0], scaled[1], s.multiplexer_ids is not None or s.is_multiplexer))
    return out


def _raw_range(s: Any) -> tuple[float, float]:
    if s.is_float:
        return (-math.inf, math.inf)
    if s.is_signed:
        return (-(2 ** (s.length - 1)), 2 ** (s.length - 1) - 1)
    return (0, 2 ** s.length - 1)


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def signal_names(dbc_paths: Sequence[str | Path]) -> list[str]:
    return [s.name for s in catalogue(dbc_paths)]


def rule_matches(cfg: VehicleConfig, names: Iterable[str]) -> dict[str, list[str]]:
    """Rule name -> the signals its patterns match (bus rules watch frame counters, not signals:
    they are left out)."""
    names = list(names)
    return {rule.name: [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in rule.signals)]
            for rule in cfg.rules if not isinstance(rule, BusRule)}


def check_rules_match(cfg: VehicleConfig) -> None:
    """Refuse a configuration with a rule whose patterns match no signal of its DBC files,
    naming the rule, its patterns and the nearest signal names."""
    if not cfg.dbc or not cfg.rules:
        return
    names = signal_names(cfg.dbc)
    problems = []
    for rule, matched in rule_matches(cfg, names).items():
        if matched:
            continue
        patterns = next(r.signals for r in cfg.rules if r.name == rule)
        near = list(dict.fromkeys(m for p in patterns for m in difflib.get_close_matches(p, names, n=3, cutoff=0.5)))
        problems.append(f"rule {rule!r}: its signals {', '.join(map(repr, patterns))} match no signal of "
                        f"{', '.join(Path(d).name for d in cfg.dbc)}"
                        + (f" (did you mean {', '.join(near)}?)" if near else " (./build.sh signals --dbc DBC lists them)"))
    if problems:
        raise ConfigError("; ".join(problems))


# -- a log's signals -------------------------------------------------------------------------------


def decoded_batches(log: str | Path, dbc_paths: Sequence[str | Path]) -> Iterator[tuple[Frames, DecodedBatch]]:
    """The log's frames, a chunk at a time, with what the reader's decoder makes of them."""
    decoder = DbcDecoder(dbc_paths)
    source = LogSource(log)
    try:
        for frames in source.frame_batches(threading.Event()):
            yield frames, decoder.decode_frames(frames)
    finally:
        source.close()


@dataclass(frozen=True)
class SignalStats:
    count: int
    rate: float  # samples per second over the log's span
    minimum: float
    maximum: float
    percentiles: tuple[float, ...]  # PERCENTILES


@dataclass
class LogScan:
    stats: dict[str, SignalStats]
    frames: int
    span: float  # seconds from first to last frame
    start: float  # the first frame's time
    alerts: list[Alert]


def scan_log(log: str | Path, dbc_paths: Sequence[str | Path], cfg: VehicleConfig | None = None) -> LogScan:
    """Decode the whole log: per signal its statistics; with ``cfg``, the alerts its rules raise."""
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    detector = Detector(cfg.rules, cfg.vehicle, cfg.detector) if cfg is not None and cfg.rules else None
    alerts: list[Alert] = []
    first = last = None
    frames_total = 0
    for frames, decoded in decoded_batches(log, dbc_paths):
        if not len(frames):
            continue
        frames_total += len(frames)
        lo, hi = float(frames.t.min()), float(frames.t.max())
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
        for name, column in decoded.batch.columns().items():
            values[name].append(column.v)
        if detector is not None:
            events = {k: np.sort(frames.t[rows]) for k, rows in decoded.event_rows.items() if k in EVENT_COUNTERS}
            alerts += detector.add(decoded.batch, decoded.frames, hi, events)
    span = (last - first) if first is not None and last is not None else 0.0
    stats = {}
    for name, parts in values.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        stats[name] = SignalStats(len(v), len(v) / span if span > 0 else math.nan, float(v.min()), float(v.max()),
                                  tuple(float(x) for x in np.percentile(v, PERCENTILES)))
    return LogScan(stats, frames_total, span, first or 0.0, alerts)


def decode_error_reasons(log: str | Path, dbc_paths: Sequence[str | Path], ids: Iterable[str]) -> dict[str, str]:
    """For each CAN id (``0x1A2``) that failed to decode, why its first failing frame failed, in
    cantools' words with the frame's length (e.g. ``wrong data size: 1 instead of 2 bytes``)."""
    wanted = {int(i, 16) for i in ids}
    if not wanted:
        return {}
    messages: dict[int, Any] = {}
    for path in dbc_paths:
        for m in load_dbc(path).messages:
            if m.frame_id in wanted:
                messages[m.frame_id] = m
    reasons: dict[str, str] = {}
    source = LogSource(log)
    try:
        for frames in source.frame_batches(threading.Event()):
            rows = np.flatnonzero(np.isin(frames.id, list(wanted - {int(k, 16) for k in reasons}))
                                  & ~frames.error & ~frames.remote)
            for row in rows.tolist():
                frame_id = int(frames.id[row])
                key = f"0x{frame_id:X}"
                message = messages.get(frame_id)
                if key in reasons or message is None:
                    continue
                n = int(frames.length[row])
                try:
                    message.decode(frames.data[row, :n].tobytes(), decode_choices=False)
                except Exception as exc:  # cantools.DecodeError, struct errors on odd lengths
                    text = " ".join(str(exc).split())
                    if n != message.length and "size" not in text.lower():
                        text = f"wrong data size: {n} instead of {message.length} bytes ({text})"
                    reasons[key] = text
            if len(reasons) == len(wanted):
                break
    finally:
        source.close()
    return reasons


# -- the command's output -------------------------------------------------------------------------


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def outside(info: SignalInfo, stats: SignalStats) -> bool:
    """Whether the log's values left the range the DBC declares (a glitch, or a wrong scale); a
    declared range whose minimum is above its maximum declares nothing."""
    if info.minimum is not None and info.maximum is not None and info.minimum > info.maximum:
        return False
    return ((info.minimum is not None and stats.minimum < info.minimum)
            or (info.maximum is not None and stats.maximum > info.maximum))


def format_catalogue(infos: Sequence[SignalInfo], scan: LogScan | None = None) -> str:
    head = ["signal", "unit", "scale", "offset", "DBC range", "raw range"]
    if scan is not None:
        head += ["count", "rate/s", "min", "max", *(f"p{p}" for p in PERCENTILES), ""]
    rows = [head]
    for s in infos:
        declared = f"{_num(s.minimum)}..{_num(s.maximum)}" if s.minimum is not None or s.maximum is not None else ""
        if s.minimum is not None and s.maximum is not None and s.minimum > s.maximum:
            declared += " (inverted)"
        row = [s.name, s.unit, _num(s.scale), _num(s.offset), declared, f"{_num(s.raw_minimum)}..{_num(s.raw_maximum)}"]
        if scan is not None:
            st = scan.stats.get(s.name)
            row += ([str(st.count), f"{st.rate:.1f}", _num(st.minimum), _num(st.maximum), *map(_num, st.percentiles),
                     "!" if outside(s, st) else ""]
                    if st else ["0", "", "", "", *([""] * len(PERCENTILES)), ""])
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    messages = len({s.message for s in infos})
    text += f"\n{len(infos)} signals in {messages} messages"
    if scan is not None:
        silent = sum(1 for s in infos if s.name not in scan.stats)
        text += f"; the log: {scan.frames} frames over {scan.span:.1f} s, {len(infos) - silent} signals seen, {silent} never"
        out = [s.name for s in infos if s.name in scan.stats and outside(s, scan.stats[s.name])]
        if out:
            text += (f"\n{len(out)} signals went outside the range their DBC declares (marked !): "
                     + ", ".join(out[:8]) + (", ..." if len(out) > 8 else ""))
    return text


def format_rules(cfg: VehicleConfig, names: Sequence[str], scan: LogScan | None = None) -> str:
    lines = ["Rules:"]
    matches = rule_matches(cfg, names)
    for rule in cfg.rules:
        if isinstance(rule, BusRule):
            lines.append(f"  {rule.name} ({rule.kind}): frame counters ({rule.counter or 'all'})")
        else:
            matched = matches[rule.name]
            shown = ", ".join(matched[:6]) + (f", ... ({len(matched)} in all)" if len(matched) > 6 else "")
            lines.append(f"  {rule.name} ({rule.kind}, {' '.join(rule.signals)}): "
                         + (f"{len(matched)} signals: {shown}" if matched else "MATCHES NO SIGNAL"))
        if scan is not None:
            mine = alert_intervals([a for a in scan.alerts if a.rule == rule.name], None)
            if mine:
                signals = sorted({r["signal"] for r in mine})
                lines.append(f"    would raise {len(mine)} alert{'s' if len(mine) != 1 else ''} on this log (first at "
                             f"t={mine[0]['raised'] - scan.start:.1f} s, worst {_num(mine[0]['worst'])}) on "
                             f"{', '.join(signals[:4])}" + (" ..." if len(signals) > 4 else ""))
            else:
                lines.append("    would raise no alert on this log")
    return "\n".join(lines)


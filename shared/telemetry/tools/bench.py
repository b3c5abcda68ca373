"""Throughput of the aggregator and the anomaly detector, against plain per-sample Python loops
measured in the same run on the same data.

    ./build.sh bench [--log LOG --dbc DBC [--config FILE]] [--repeat N] [--live-seconds S] [--no-memory]

Default data: the sample drive with the sample vehicle's configuration. The frames are decoded
into the reader's batches first (not timed); then each stage is timed over all batches, best of
``--repeat`` runs. It prints figures and ratios; it asserts nothing about speed.

The whole pipeline (the log repeated to ``--frames``, 300,000 by default): the naive loop
(python-can's reader and cantools' decode, frame by frame), the reader's stages, and the whole
replay in one process and in four, in ``--rounds`` rounds (3) of every stage in turn; each
stage's best, and each round's ratio to that round's naive loop.

Then, on the sample vehicle, the live stages of ``livebench`` (CPU of the four components on a
python-can virtual bus at 2,000 and 8,000 frames/s, frames dropped, alert latency at the car's
rate; ``--live-seconds 0`` skips them) and the peak memory of each component in its own process
(``memory``; ``--no-memory`` skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import can
import numpy as np

from telemetry.edge import messages
from telemetry.edge.aggregator import Aggregation
from telemetry.edge.config import parse_config
from telemetry.edge.decode import DbcDecoder, forget_loaded_dbcs
from telemetry.edge.detector import Detector
from telemetry.edge.frames import Frames
from telemetry.edge.reader import batch_ends
from telemetry.edge.rules import LimitRule, RateRule
from telemetry.edge.sources import LogSource
from telemetry.tools import livebench, memory
from telemetry.tools.forkserver import start_forkserver
from telemetry.tools.paths import SAMPLE
from telemetry.tools.replay import resolve_config


def signal_messages(log: Path, cfg) -> list[dict]:
    """The reader's batches of the log, through their wire form, as JSON objects."""
    decoder = DbcDecoder(cfg.dbc)
    out: list[dict] = []
    frames: list[can.Message] = []

    def flush() -> None:
        decoded = decoder.decode(frames)
        message = messages.Signals(log.name, len(out) + 1, frames[0].timestamp, max(f.timestamp for f in frames),
                                   decoded.frames, decoded.batch)
        out.append(messages.decode(message.to_bytes()).encode())  # through the wire form, as JSON
        frames.clear()

    for frame in LogSource(log).frames(threading.Event()):
        if frame is None:
            continue
        frames.append(frame)
        if len(frames) >= cfg.reader.batch_max_frames or frame.timestamp - frames[0].timestamp >= cfg.reader.batch_max_seconds:
            flush()
    if frames:
        flush()
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- the same jobs as plain per-sample Python loops, written to be fast --------------------------


def loop_aggregate(msgs: list[dict], width: float) -> list[dict]:
    """Per (window, signal): count, min, max, mean, std (Welford), first, last, t_min, t_max."""
    open_windows: dict[int, dict[str, list]] = {}
    out = []
    floor = math.floor
    for message in msgs:
        for name, column in message["signals"].items():
            for t, v in zip(column["t"], column["v"]):
                window = open_windows.setdefault(floor(t / width), {})
                s = window.get(name)
                if s is None:  # n, min, max, mean, m2, first_t, first, last_t, last, t_min, t_max
                    window[name] = [1, v, v, v, 0.0, t, v, t, v, t, t]
                    continue
                n = s[0] = s[0] + 1
                delta = v - s[3]
                s[3] += delta / n
                s[4] += delta * (v - s[3])
                if v < s[1] or (v == s[1] and t < s[9]):
                    s[1], s[9] = v, t
                if v > s[2] or (v == s[2] and t < s[10]):
                    s[2], s[10] = v, t
                if t < s[5]:
                    s[5], s[6] = t, v
                if t >= s[7]:
                    s[7], s[8] = t, v
        end = message["span"]["end"]
        for k in sorted(k for k in open_windows if (k + 1) * width <= end):
            out.append(_loop_window(k, width, open_windows.pop(k)))
    out += [_loop_window(k, width, open_windows.pop(k)) for k in sorted(open_windows)]
    return out


def _loop_window(k: int, width: float, signals: dict[str, list]) -> dict:
    return {"window": {"start": k * width, "end": (k + 1) * width}, "signals": {
        name: {"count": s[0], "min": s[1], "max": s[2], "mean": s[3], "last": s[8], "std": math.sqrt(s[4] / s[0]),
               "first": s[6], "t_min": s[9], "t_max": s[10]} for name, s in sorted(signals.items())}}


def loop_detect(msgs: list[dict], rules: list[LimitRule | RateRule]) -> list[dict]:
    """Limit (with hysteresis) and rate rules, raise and clear, one sample at a time."""
    import fnmatch

    active: dict[tuple[str, str], bool] = {}
    last: dict[tuple[str, str], tuple[float, float]] = {}
    matches: dict[str, list[LimitRule | RateRule]] = {}
    out = []
    for message in msgs:
        for name, column in message["signals"].items():
            rules_here = matches.get(name)
            if rules_here is None:
                rules_here = matches[name] = [r for r in rules if any(fnmatch.fnmatchcase(name, p) for p in r.signals)]
            if not rules_here:
                continue
            for t, v in zip(column["t"], column["v"]):
                for rule in rules_here:
                    key = (rule.name, name)
                    if isinstance(rule, LimitRule):
                        lo = -math.inf if rule.min is None else rule.min
                        hi = math.inf if rule.max is None else rule.max
                        x = max(v - hi, lo - v)
                    else:
                        prev = last.get(key)
                        last[key] = (t, v)
                        if prev is None or t <= prev[0]:
                            continue
                        x = abs((v - prev[1]) / (t - prev[0])) - rule.max_rate
                    was = active.get(key, False)
                    if not was and x > 0:
                        active[key] = True
                        out.append({"rule": rule.name, "signal": name, "state": "raised", "t": t, "value": v})
                    elif was and x <= -rule.hysteresis:
                        active[key] = False
                        out.append({"rule": rule.name, "signal": name, "state": "cleared", "t": t, "value": v})
    return out


def run_stages(msgs: list[dict], cfg, width: float, flat, simple: list[LimitRule | RateRule], repeat: int,
               configured: bool = True) -> tuple[float, float]:
    """Check that ours and the loop give the same answers, then time both; print a table."""
    samples = sum(len(c["t"]) for m in msgs for c in m["signals"].values())

    def ours_aggregate(agg_cfg=flat):
        agg = Aggregation(agg_cfg, cfg.vehicle)
        out = []
        for m in msgs:
            signals = messages.Signals.decode(m)  # what the handler does with its event
            out += agg.add(signals.batch, signals.end)
        return [a.encode() for a in out + agg.flush()]

    def ours_detect(rules=tuple(simple)):
        det = Detector(rules, cfg.vehicle, cfg.detector)
        out = []
        for m in msgs:
            signals = messages.Signals.decode(m)
            out += det.add(signals.batch, signals.frames, signals.end)
        return [a.encode() for a in out]

    # the same answers first, then the time
    ours, theirs = ours_aggregate(), loop_aggregate(msgs, width)
    assert [(m["window"], set(m["signals"])) for m in ours] == [(m["window"], set(m["signals"])) for m in theirs]
    ours_alerts = [(a["rule"], a["signal"], a["state"], a["t"]) for a in ours_detect() if a["state"] != "update"]
    loop_alerts = [(a["rule"], a["signal"], a["state"], a["t"]) for a in loop_detect(msgs, simple)]
    assert sorted(ours_alerts) == sorted(loop_alerts), "the loop and the detector disagree"

    rows = [
        ("aggregator, 1 group, 9 statistics", best(ours_aggregate, repeat), best(lambda: loop_aggregate(msgs, width), repeat)),
        (f"detector, the {len(simple)} limit/rate rules", best(ours_detect, repeat), best(lambda: loop_detect(msgs, simple), repeat)),
    ]
    print(f"{'stage':<46}{'ours (samples/s)':>18}{'per-sample loop':>18}{'ratio':>9}")
    for label, ours_s, loop_s in rows:
        print(f"{label:<46}{samples / ours_s:>18,.0f}{samples / loop_s:>18,.0f}{loop_s / ours_s:>8.2f}x")
    if not configured:
        return rows[0][1], rows[1][1]
    extra = [
        ("aggregator, the configured groups/selection", best(lambda: ours_aggregate(cfg.aggregator), repeat)),
        (f"detector, all {len(cfg.rules)} configured rules", best(lambda: ours_detect(cfg.rules), repeat)),
    ]
    for label, ours_s in extra:
        print(f"{label:<46}{samples / ours_s:>18,.0f}{'(no loop)':>18}")
    return extra[0][1], extra[1][1]


def dense_messages(batch_seconds: float, seconds: float = 30.0) -> list[dict]:
    rng = np.random.default_rng(5)
    out = []
    t0 = 1_782_900_000.0
    for i in range(int(seconds / batch_seconds)):
        t = t0 + i * batch_seconds + np.arange(0.0, batch_seconds, 0.001)
        signals = {f"IMU.Axis{j:02d}": {"t": t.tolist(), "v": (10 * np.sin(t / 3 + j) + rng.normal(0, 1, len(t))).tolist()}
                   for j in range(20)}
        out.append({"v": 1, "kind": "signals", "span": {"start": float(t[0]), "end": float(t[-1])},
                    "frames": {"read": len(t) * 5}, "signals": signals})
    return out


def wire_messages(outbox: Path) -> list[bytes | dict]:
    """What the uploader received in a replay, from what it sent: each aggregates payload's bytes
    (sent as received) and each alert (from the bundles), in order."""
    from telemetry import wire

    out: list[bytes | dict] = []
    for line in outbox.read_text().splitlines():
        record = json.loads(line)
        if "payload_base64" in record:
            out.append(__import__("base64").b64decode(record["payload_base64"]))
        elif record["payload"].get("kind") == "bundle" and record["payload"].get("of") == "alert":
            out += [item["message"] for item in messages.unpack(record["payload"])]
    assert all(isinstance(m, dict) or wire.is_payload(m) for m in out)
    return out


def spool_stage(log: Path, msgs_out: list[bytes | dict], cfg, tmp: Path) -> None:
    """Messages per second into the durable spool and out through the sender (an in-memory cloud,
    no rate limits), and the bytes on the wire against the raw size of the replayed log."""
    from telemetry.edge.clock import SystemClock
    from telemetry.edge.components import Services, UploaderComponent
    from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport

    unlimited = {"max_publishes_per_second": 1e9, "max_bytes_per_second": 1e12, "health_seconds": 1e9}
    rows: list[tuple[str, float, float, int, int]] = []
    for label, spool, compress in (("sqlite WAL, synchronous=FULL", "file", True),
                                   ("sqlite WAL, synchronous=FULL, no compression", "file", False),
                                   ("in memory (no disk), compressed", ":memory:", True)):
        path = tmp / f"bench-{len(rows)}.db"
        up_cfg = dataclasses.replace(cfg.uploader, compress=compress, **unlimited)
        vcfg = dataclasses.replace(cfg, uploader=up_cfg)
        cloud = InMemoryCloudTransport()
        services = Services(InMemoryLocalTransport(), cloud, vcfg, SystemClock(),
                            {"TELEMETRY_SPOOL": str(path) if spool == "file" else ":memory:"})
        up = UploaderComponent(services)
        start = time.perf_counter()
        for m in msgs_out:
            up.handle(m)
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        while up.pending():
            up.core.sender.step()
        send_s = time.perf_counter() - start
        wire = sum(len(p) for _, p in cloud.sent)
        rows.append((label, len(msgs_out) / put_s, len(msgs_out) / send_s, wire, len(cloud.sent)))
        up.close()
    raw_log = log.stat().st_size
    raw_messages = sum(len(m) if isinstance(m, bytes) else len(json.dumps(m, separators=(",", ":"))) for m in msgs_out)
    print(f"\nspool: {len(msgs_out)} aggregates payloads and alerts of the drive ({raw_messages:,} bytes as received); "
          f"the raw log is {raw_log:,} bytes")
    print(f"{'spool':<48}{'in (msg/s)':>12}{'out (msg/s)':>13}{'on the wire':>14}{'publishes':>11}{'wire/log':>10}")
    for label, put_rate, send_rate, wire, publishes in rows:
        print(f"{label:<48}{put_rate:>12,.0f}{send_rate:>13,.0f}{wire:>14,}{publishes:>11}{wire / raw_log:>9.1%}")


def encoding_stage(log: Path, msgs: list[dict], cfg) -> None:
    """Bytes on the wire of the log's aggregates, per (window, signal) cell, for each encoding:
    the JSON bundles this format replaced, and the binary payloads with and without the DBC's
    schema, for all nine statistics and the default four, at 10 s and 60 s publishes. The
    windows are the configuration's (its groups and window lengths); only the encoding changes."""
    from telemetry import wire
    from telemetry.edge import uploader
    from telemetry.edge.aggregator import dbc_resolutions
    from telemetry.edge.spool import Entry

    res = dbc_resolutions(cfg.dbc)
    signals: list[messages.Signals | messages.EndOfStream] = [messages.Signals.decode(m) for m in msgs]
    end = messages.EndOfStream(log.name, len(msgs) + 1, None, {})

    def windows_of() -> list[messages.Window]:
        a = Aggregation(cfg.aggregator, cfg.vehicle)
        return [w for m in [*signals, end] for w in a.process(m)]

    windows = windows_of()
    cells = sum(len(w.signals) for w in windows)
    raw_log = log.stat().st_size
    rows: list[tuple[str, int, int]] = []
    # before: one JSON message per window, nine statistics, in the uploader's bundles of up to 100 kB
    # (compressed as bundles are now, zd1: the zlib+base64 of the time took up to 6 % more)
    entries = [Entry(i, "window", 2, w.start, w.to_bytes(), 0, f"{w.group}/{w.start!r}") for i, w in enumerate(windows)]
    total, publishes = 0, 0
    while entries:
        payload, n = uploader.fit(entries, vehicle=cfg.vehicle, spool_id="bench", compress=True, max_bytes=100_000)
        total, publishes, entries = total + len(payload), publishes + 1, entries[n:]
    rows.append(("JSON per window, 9 statistics, zd1 bundles", total, publishes))
    for label, stats, period, schema in (
            ("binary, 9 statistics, names in each payload, 10 s", wire.STATISTICS, 10.0, False),
            ("binary, 9 statistics, DBC schema, 10 s", wire.STATISTICS, 10.0, True),
            ("binary, count/min/max/mean, DBC schema, 10 s", wire.DEFAULT_STATS, 10.0, True),
            ("binary, count/min/max/mean, DBC schema, 60 s", wire.DEFAULT_STATS, 60.0, True),
            ("binary, as configured", None, None, True)):
        agg_cfg = cfg.aggregator
        if stats is not None:
            agg_cfg = dataclasses.replace(agg_cfg, stats=stats, publish_seconds=period, groups=tuple(
                dataclasses.replace(g, stats=stats, publish_seconds=period) for g in agg_cfg.groups))
        a = Aggregation(agg_cfg, cfg.vehicle, res=res if schema else None, max_bytes=cfg.uploader.max_payload_bytes)
        if not schema:
            for publisher in a.publishers.values():
                publisher.schema = None
                publisher.res = res
        out = [p for m in [*signals, end] for p in a.publish(m)]
        rows.append((label, sum(len(p.to_bytes()) for p in out), len(out)))
    print(f"\naggregates on the wire: {log.name} ({raw_log:,} bytes), {len(windows)} windows, {cells:,} (window, signal) cells")
    print(f"{'encoding':<56}{'bytes':>10}{'publishes':>11}{'per cell':>10}{'log / wire':>12}")
    for label, size, publishes in rows:
        print(f"{label:<56}{size:>10,}{publishes:>11}{size / max(cells, 1):>10.2f}{raw_log / size:>11.1f}x")
    # the cloud side: a day of payloads (the drive's, repeated) decoded back to rows
    a = Aggregation(cfg.aggregator, cfg.vehicle, res=res)
    payloads = [p.to_bytes() for m in [*signals, end] for p in a.publish(m)]
    span = (msgs[-1]["span"]["end"] - msgs[0]["span"]["start"]) if msgs else 0.0
    if payloads and span > 0:
        repeat = max(1, round(10 * 3600 / span))
        start = time.perf_counter()
        values = 0
        for _ in range(repeat):
            for data in payloads:
                p = wire.decode(data)
                values += len(p.table) * len(p.stats)
        seconds = time.perf_counter() - start
        print(f"decoding 10 hours of payloads ({repeat} x the drive: {repeat * len(payloads):,} payloads, "
              f"{values:,} values): {seconds:.1f} s")


def long_log(log: Path, frames: int, out: Path) -> tuple[Path, int]:
    """The log repeated, timestamps shifted by its span each time, to at least ``frames`` frames,
    as a candump file (the format teams log in)."""
    source = [m for m in LogSource(log).frames(threading.Event()) if m is not None]
    if not source:
        raise SystemExit(f"{log}: no frames")
    span = source[-1].timestamp - source[0].timestamp + 1.0
    path = out / f"{log.stem}-x{-(-frames // len(source))}.log"
    written = 0
    with can.Logger(str(path)) as writer:
        shift = 0.0
        while written < frames:
            for m in source:
                writer.on_message_received(can.Message(
                    timestamp=m.timestamp + shift, arbitration_id=m.arbitration_id, is_extended_id=m.is_extended_id,
                    is_error_frame=m.is_error_frame, is_remote_frame=m.is_remote_frame, is_fd=m.is_fd, dlc=m.dlc,
                    data=m.data, channel=m.channel))
            written += len(source)
            shift += span
    return path, written


def pipeline_stage(log: Path, cfg, config: str | None, dbc: list[str], frames: int, tmp: Path, rounds: int = 3) -> None:
    """Frames per second through the whole replay, against the naive loop (python-can's reader
    and cantools' decode, frame by frame), on one long log, in the same run: ``rounds`` rounds of
    every stage in turn, each stage's best, so that a busy moment of the machine does not land
    on one side of a ratio only."""
    from telemetry.tools.replay import replay

    path, n = long_log(log, frames, tmp)
    from telemetry.edge.decode import load_dbc

    dbs = [load_dbc(d) for d in cfg.dbc]
    index = {(m.frame_id, m.is_extended_frame): m for db in dbs for m in db.messages}

    def naive() -> None:
        for msg in can.LogReader(str(path)):
            message = index.get((msg.arbitration_id, msg.is_extended_id))
            if message is not None and not msg.is_error_frame and not msg.is_remote_frame:
                try:
                    message.decode(bytes(msg.data), decode_choices=False)
                except Exception:  # a frame cantools refuses: counted by the pipeline, skipped here
                    pass

    def parse() -> None:
        for _ in LogSource(path).frames(threading.Event()):
            pass

    chunks: list[Frames] = []

    def parse_columns() -> None:
        chunks.clear()
        chunks.extend(LogSource(path).frame_batches(threading.Event()))

    decoder = DbcDecoder(cfg.dbc)

    def decode() -> None:  # in the reader's batches
        for chunk in chunks:
            start = 0
            for end in batch_ends(chunk.t, cfg.reader.replay_batch_frames, cfg.reader.replay_batch_seconds):
                decoder.decode_frames(chunk.take(slice(start, end)))
                start = end

    summary: dict = {}  # the first replay's

    def whole(processes: bool, one_cpu: bool = True) -> Callable[[], None]:
        def run() -> None:
            forget_loaded_dbcs()  # each replay parses its DBC files, as one started afresh does
            out = tmp / ("replay-processes" if processes else "replay")
            result = replay(path, out_dir=out, config=config, dbc=dbc, processes=processes, one_cpu=one_cpu)
            summary.update(summary or result)
        return run

    stages = (("naive loop: can.LogReader + cantools decode", naive),
              ("parse: python-can's reader, frame by frame", parse),
              ("parse: bulk, into columns (frame_batches)", parse_columns),
              ("decode: vectorised, in the reader's batches", decode),
              ("whole replay, four components", whole(False)),
              ("  the same, their threads on any CPU", whole(False, one_cpu=False)),
              ("  the same, each component in its own process", whole(True)))
    seconds: dict[str, list[float]] = {label: [] for label, _ in stages}
    for _ in range(rounds):
        for label, fn in stages:
            start = time.perf_counter()
            fn()
            seconds[label].append(time.perf_counter() - start)
    print(f"\nwhole pipeline: {path.name}, {n:,} frames ({summary['frames_decoded']:,} decoded, "
          f"{summary['aggregates']} aggregates, {summary['alerts']} alerts); each stage's best of {rounds} rounds, "
          f"the stages in turn in each round")
    naive_s = min(seconds[stages[0][0]])
    print(f"{'stage':<48}{'frames/s':>16}{'vs naive loop':>16}{'rounds, vs that round':>26}")
    for label, _ in stages:
        best_s = min(seconds[label])
        per_round = " ".join(f"{a / b:.2f}x" for a, b in zip(seconds[stages[0][0]], seconds[label]))
        print(f"{label:<48}{n / best_s:>16,.0f}{naive_s / best_s:>15.2f}x{per_round:>26}")
    print(f"replay peak RSS {summary['peak_rss_mb']} MB (one process, all four components); "
          f"{summary['cloud_bytes']:,} bytes to the cloud, {summary['evicted_messages']} evicted")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", default=str(SAMPLE / "drive.log"))
    p.add_argument("--dbc", action="append", default=[])
    p.add_argument("--config", default=None)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch-seconds", type=float, help="override [reader] batch_max_seconds")
    p.add_argument("--batch-frames", type=int, help="override [reader] batch_max_frames")
    p.add_argument("--no-spool", dest="spool", action="store_false", help="skip the spool stage")
    p.add_argument("--frames", type=int, default=300_000,
                   help="the whole-pipeline stage replays the log repeated to at least this many frames (0: skip)")
    p.add_argument("--rounds", type=int, default=3,
                   help="the whole-pipeline stage: rounds of all its stages in turn, each stage's best (default 3)")
    livebench.add_arguments(p)
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak memory of each component (./build.sh memory)")
    args = p.parse_args()
    if args.frames:
        # as `telemetry replay --processes` does first thing: the forkserver's imports overlap with
        # this process's work, not with the timed replay in processes
        start_forkserver()
    config = args.config or (str(SAMPLE / "vehicle.toml") if args.log == str(SAMPLE / "drive.log") else None)
    cfg = resolve_config(config, args.dbc)
    reader = cfg.reader
    if args.batch_seconds or args.batch_frames:
        reader = dataclasses.replace(reader, batch_max_seconds=args.batch_seconds or reader.batch_max_seconds,
                                     batch_max_frames=args.batch_frames or reader.batch_max_frames)
        cfg = dataclasses.replace(cfg, reader=reader)
    print(f"batches: up to {reader.batch_max_frames} frames or {reader.batch_max_seconds} s of event time")
    msgs = signal_messages(Path(args.log), cfg)
    samples = sum(len(c["t"]) for m in msgs for c in m["signals"].values())
    print(f"data: {args.log}: {samples} signal samples in {len(msgs)} batches (the reader's, as JSON messages)")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}, best of {args.repeat}\n")

    width = cfg.aggregator.window_seconds
    flat = parse_config({"vehicle": cfg.vehicle, "aggregator": {"window_seconds": width}}).aggregator

    simple = [r for r in cfg.rules if isinstance(r, (LimitRule, RateRule)) and r.min_duration == 0 and r.clear_duration == 0]

    agg_s, det_s = run_stages(msgs, cfg, width, flat, simple, args.repeat)
    # the same stages on dense data: 20 signals at 1 kHz (an IMU, a fast current sensor)
    dense = dense_messages(cfg.reader.batch_max_seconds)
    print(f"\ndense synthetic data: {sum(len(c['t']) for m in dense for c in m['signals'].values())} samples, "
          f"20 signals at 1 kHz, {len(dense)} batches of {cfg.reader.batch_max_seconds} s")
    dense_rules: list[LimitRule | RateRule] = [
        LimitRule(name="imu-limit", signals=("IMU.*",), min=-40.0, max=40.0),
        RateRule(name="imu-jump", signals=("IMU.*",), max_rate=50_000.0)]
    run_stages(dense, cfg, width, flat, dense_rules, args.repeat, configured=False)
    encoding_stage(Path(args.log), msgs, cfg)
    if args.spool:
        import tempfile

        from telemetry.tools.replay import replay

        with tempfile.TemporaryDirectory() as tmp:
            replay(args.log, out_dir=tmp, config=config, dbc=args.dbc)
            spool_stage(Path(args.log), wire_messages(Path(tmp) / "cloud.jsonl"), cfg, Path(tmp))
    if args.frames:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pipeline_stage(Path(args.log), cfg, config, args.dbc, args.frames, Path(tmp), max(1, args.rounds))
    span = msgs[-1]["span"]["end"] - msgs[0]["span"]["start"] if msgs else 0.0
    total = agg_s + det_s
    print(f"\nthe recording spans {span:.0f} s; aggregating and checking it as configured takes {total:.3f} s "
          f"({span / total:,.0f}x real time)")
    livebench.run(args)  # always the sample vehicle: its drive's frames, its rules
    if args.memory:
        print()
        memory.main()  # its own verdict on the recipes is printed; not the benchmark's exit status
    return 0


if __name__ == "__main__":
    sys.exit(main())

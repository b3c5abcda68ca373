"""Throughput of the aggregator and the anomaly detector, against plain per-sample Python loops
measured in the same run on the same data.

    ./build.sh bench [--log LOG --dbc DBC [--config FILE]] [--repeat N]

Default data: the sample drive with the sample vehicle's configuration. The frames are decoded
into the reader's batches first (not timed); then each stage is timed over all batches, best of
``--repeat`` runs. It prints figures and ratios; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np

from telemetry.config import Rule, parse_config
from telemetry.decode import DbcDecoder
from telemetry.replay import SAMPLE, resolve_config
from telemetry.rules import Detector
from telemetry.sources import LogSource
from telemetry.windows import Aggregation


def batches(log: Path, cfg) -> list[tuple[dict, dict, float]]:
    decoder = DbcDecoder(cfg.dbc)
    out, frames = [], []
    for frame in LogSource(log).frames(threading.Event()):
        frames.append(frame)
        if len(frames) >= cfg.reader.batch_max_frames or frame.timestamp - frames[0].timestamp >= cfg.reader.batch_max_seconds:
            decoded = decoder.decode(frames)
            out.append((decoded.signals, dict(decoded.frames), max(f.timestamp for f in frames)))
            frames = []
    if frames:
        decoded = decoder.decode(frames)
        out.append((decoded.signals, dict(decoded.frames), max(f.timestamp for f in frames)))
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- plain per-sample loops: the same statistics and limit/rate checks, one sample at a time ----


def loop_aggregate(data, width: float) -> int:
    open_windows: dict[tuple[int, str], list] = {}
    closed = 0
    watermark = -math.inf
    for signals, _, end in data:
        for name, column in signals.items():
            for t, v in zip(column.t.tolist(), column.v.tolist()):
                key = (math.floor(t / width), name)
                s = open_windows.get(key)
                if s is None:
                    open_windows[key] = [1, v, v, v, 0.0, v, t, v, t, t, t]  # n min max mean m2 first ft last lt tmin tmax
                    continue
                s[0] += 1
                delta = v - s[3]
                s[3] += delta / s[0]
                s[4] += delta * (v - s[3])
                if v < s[1]:
                    s[1], s[9] = v, t
                if v > s[2]:
                    s[2], s[10] = v, t
                if t >= s[8]:
                    s[7], s[8] = v, t
        watermark = max(watermark, end)
        for key in [k for k in open_windows if (k[0] + 1) * width <= watermark]:
            del open_windows[key]
            closed += 1
    return closed + len(open_windows)


def loop_detect(data, rules: list[Rule]) -> int:
    alerts = 0
    active: dict[tuple[str, str], bool] = {}
    last: dict[tuple[str, str], tuple[float, float]] = {}
    import fnmatch

    matches: dict[str, list[Rule]] = {}
    for signals, _, _ in data:
        for name, column in signals.items():
            if name not in matches:
                matches[name] = [r for r in rules if any(fnmatch.fnmatchcase(name, p) for p in r.signals)]
            for t, v in zip(column.t.tolist(), column.v.tolist()):
                for rule in matches[name]:
                    key = (rule.name, name)
                    if rule.kind == "limit":
                        bad = (rule.max is not None and v > rule.max) or (rule.min is not None and v < rule.min)
                    else:  # rate
                        prev = last.get(key)
                        last[key] = (t, v)
                        bad = prev is not None and t > prev[0] and abs((v - prev[1]) / (t - prev[0])) > rule.max_rate
                    if bad != active.get(key, False):
                        active[key] = bad
                        alerts += 1
    return alerts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", default=str(SAMPLE / "drive.log"))
    p.add_argument("--dbc", action="append", default=[])
    p.add_argument("--config", default=None)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    config = args.config or (str(SAMPLE / "vehicle.toml") if args.log == str(SAMPLE / "drive.log") else None)
    cfg = resolve_config(config, args.dbc)
    data = batches(Path(args.log), cfg)
    samples = sum(len(c) for signals, _, _ in data for c in signals.values())
    print(f"data: {args.log}: {samples} signal samples in {len(data)} batches")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}, best of {args.repeat}\n")

    width = cfg.aggregator.window_seconds
    flat = parse_config({"vehicle": cfg.vehicle, "aggregator": {"window_seconds": width}}).aggregator

    def ours_aggregate(agg_cfg=flat):
        agg = Aggregation(agg_cfg, cfg.vehicle)
        for signals, _, end in data:
            agg.add(signals, end)
        agg.flush()

    simple = [r for r in cfg.rules if r.kind in ("limit", "rate")]

    def ours_detect(rules=tuple(simple)):
        det = Detector(rules, cfg.vehicle, cfg.detector)
        for signals, frames, end in data:
            det.add(signals, frames, end)

    rows = [
        ("aggregator, all signals, 9 statistics", best(ours_aggregate, args.repeat), best(lambda: loop_aggregate(data, width), args.repeat)),
        (f"detector, {len(simple)} limit/rate rules", best(ours_detect, args.repeat), best(lambda: loop_detect(data, simple), args.repeat)),
    ]
    print(f"{'stage':<44}{'ours (samples/s)':>18}{'per-sample loop':>18}{'ratio':>9}")
    for label, ours, loop in rows:
        print(f"{label:<44}{samples / ours:>18,.0f}{samples / loop:>18,.0f}{loop / ours:>8.1f}x")
    extra = [
        ("aggregator, configured groups and selection", best(lambda: ours_aggregate(cfg.aggregator), args.repeat)),
        (f"detector, all {len(cfg.rules)} configured rules", best(lambda: ours_detect(cfg.rules), args.repeat)),
    ]
    for label, ours in extra:
        print(f"{label:<44}{samples / ours:>18,.0f}{'(no baseline)':>18}")
    real_time = (data[-1][2] - min(c.t.min() for c in data[0][0].values())) if data else 0.0
    total = rows[0][1] + extra[1][1]
    print(f"\nthe recording spans {real_time:.0f} s; aggregating and checking it all takes {total:.3f} s "
          f"({real_time / total:,.0f}x real time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The live half of the benchmark: the four components reading a python-can ``virtual`` bus.

    ./build.sh bench --live-seconds 10        (part of the benchmark of record)
    python -m telemetry.tools.livebench --live-seconds 10        (the live part alone)

Each run is a child process (``--child``) holding the local runtime with all four components,
the reader on a ``virtual`` bus (``TELEMETRY_CAN_INTERFACE=virtual``, as a device would set
``socketcan``), and a feeder thread that puts the sample drive's frames on that bus, cycling its
ids and payloads, at a fixed rate, each frame stamped with the wall clock when sent (python-can's
virtual bus only reaches buses of its own process, hence a thread and not another process).

* CPU: the child's CPU time (``time.process_time``: every thread, user + system) over the measured
  interval only (after a warm-up), minus the feeder thread's own CPU time over the same interval
  (``time.thread_time`` read inside that thread), as a percentage of one core. The feeder shares
  the GIL with the components: it can slow them, it is not counted in their figure.
* Frames dropped: frames sent minus the reader's own ``frames_read`` counter, after the feeder has
  stopped and the reader has been given ``grace`` seconds to catch up. The virtual bus queues
  without limit (a SocketCAN socket would drop once its receive buffer is full), so a reader that
  falls behind shows as a slow drain here, and what it has not read by then counts as dropped.
* Alert latency: the cloud transport the runtime is given is an ``InMemoryCloudTransport`` whose
  handler notes the wall clock of every publish; violations of a limit rule without debounce are
  put on the bus between the drive's frames, each a distinct value, and each is found by its
  value among the ``raised`` alerts in the published bundles. Latency: the wall clock when the
  bundle carrying the alert was handed to the transport, minus the one just before the frame was
  put on the bus. The detector's flap guard is switched off for this run (each violation must
  raise a fresh alert: raise, cleared by the drive's next frame, raise), nothing else changes.

Nothing here reaches into a component: the runtime, ``counters()`` and the transports only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can

from telemetry.edge.config import VehicleConfig, load_config
from telemetry.edge.decode import load_dbc
from telemetry.edge.messages import unpack
from telemetry.edge.rules import LimitRule
from telemetry.edge.sources import LogSource
from telemetry.edge.transport import InMemoryCloudTransport
from telemetry.tools.paths import RECIPES, SAMPLE
from telemetry.tools.runtime import LocalRuntime

RATES = (2000.0, 8000.0)
CAR_RATE = 150.0  # frames/s: the sample drive's own rate (34,253 frames in 240 s)
ALERT_RULE = "pack-overcurrent"
SPACING = (0.25, 0.45)  # seconds between violations: the drive's 10 Hz BMS_PackStatus clears each one first


@dataclasses.dataclass
class LiveResult:
    rate: float  # frames/s asked of the feeder
    seconds: float  # the measured interval, wall clock
    warmup: float
    sent: int  # frames put on the bus, warm-up and injections included
    sent_measured: int  # of which during the measured interval
    read: int  # the reader's frames_read once stopped
    dropped: int  # sent - read
    drain_seconds: float  # from the feeder's stop until the reader had read every frame (or gave up)
    cpu_seconds: float  # the process's CPU time over the interval
    feeder_cpu_seconds: float  # the feeder thread's, over the same interval
    injected: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, one per matched alert
    unmatched: int = 0  # raised alerts of the rule that no injection explains
    handler_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def cpu_percent(self) -> float:
        """CPU of the four components, % of one core (the feeder's subtracted)."""
        return 100.0 * max(0.0, self.cpu_seconds - self.feeder_cpu_seconds) / self.seconds

    @property
    def feeder_percent(self) -> float:
        return 100.0 * self.feeder_cpu_seconds / self.seconds

    @property
    def achieved(self) -> float:
        return self.sent_measured / self.seconds


def drive_frames(log: str | Path) -> list[can.Message]:
    frames = [m for m in LogSource(log).frames(threading.Event()) if m is not None]
    if not frames:
        raise SystemExit(f"{log}: no frames")
    return frames


def violations(cfg: VehicleConfig, frames: Sequence[can.Message], rule_name: str, count: int) -> list[tuple[can.Message, float]]:
    """``count`` frames, each violating the limit rule ``rule_name`` with a value of its own: the
    first frame of the drive that carries the rule's signal, that signal re-encoded by the DBC."""
    rule = next((r for r in cfg.rules if r.name == rule_name), None)
    if not isinstance(rule, LimitRule) or rule.min_duration or rule.clear_duration:
        raise SystemExit(f"{rule_name}: not a limit rule without debounce in the configuration")
    if len(rule.signals) != 1 or any(c in rule.signals[0] for c in "*?[") or "." not in rule.signals[0]:
        raise SystemExit(f"{rule_name}: its signal must be one exact 'Message.Signal' name")
    message_name, signal_name = rule.signals[0].split(".", 1)
    message = next((m for path in cfg.dbc for m in load_dbc(path).messages if m.name == message_name), None)
    if message is None:
        raise SystemExit(f"{rule_name}: message {message_name} is in no DBC")
    signal = message.get_signal_by_name(signal_name)
    template = next((f for f in frames if f.arbitration_id == message.frame_id and not f.is_error_frame), None)
    if template is None:
        raise SystemExit(f"{rule_name}: the drive has no frame of {message_name}")
    step = max(0.25, abs(signal.scale) * 25)
    out = []
    for i in range(count):
        k = i % 100  # distinct values, a hundred of them, cycled
        if rule.max is not None:
            value = rule.max + 10 + step * k
        else:
            assert rule.min is not None  # a limit rule has one or both
            value = rule.min - 10 - step * k
        value = round(value / signal.scale) * signal.scale
        if (signal.maximum is not None and value > signal.maximum) or (signal.minimum is not None and value < signal.minimum):
            raise SystemExit(f"{rule_name}: {value} is beyond what {rule.signals[0]} can carry")
        decoded = message.decode(bytes(template.data), decode_choices=False)
        decoded[signal_name] = value
        data = message.encode(decoded, strict=False)
        out.append((can.Message(arbitration_id=template.arbitration_id, is_extended_id=template.is_extended_id,
                                dlc=len(data), data=data), value))
    return out


class Feeder(threading.Thread):
    """Puts frames on the bus at ``rate`` frames/s, from its start until ``t_end`` (monotonic),
    inserting each violation at its time; notes its own CPU time at ``t_start`` and ``t_end``."""

    def __init__(self, bus: can.BusABC, frames: Sequence[can.Message], rate: float, t_start: float, t_end: float,
                 inject: Sequence[tuple[float, can.Message, float]] = ()) -> None:
        super().__init__(name="live-feeder", daemon=True)
        self.bus, self.frames, self.rate = bus, frames, rate
        self.t_start, self.t_end = t_start, t_end
        self.inject = list(inject)  # (monotonic time, frame, value), in time order
        self.sent = 0
        self.sent_at_start = 0
        self.sent_at_end = 0
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self.injected: list[tuple[float, float]] = []  # (value, wall clock just before the send)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _feed(self) -> None:
        bus, frames, n, rate = self.bus, self.frames, len(self.frames), self.rate
        clock = time.monotonic
        begin = clock()
        i = 0  # next frame of the drive
        while True:
            now = clock()
            if self.cpu_start is None and now >= self.t_start:
                self.cpu_start, self.sent_at_start = time.thread_time(), self.sent
            if now >= self.t_end:
                self.cpu_end, self.sent_at_end = time.thread_time(), self.sent
                return
            while self.inject and self.inject[0][0] <= now:
                _, frame, value = self.inject.pop(0)
                self.injected.append((value, time.time()))
                bus.send(frame)  # the virtual bus stamps it with time.time()
                self.sent += 1
            due = int((now - begin) * rate)
            while self.sent - len(self.injected) < due:
                bus.send(frames[i])
                i = (i + 1) % n
                self.sent += 1
            next_due = begin + (self.sent - len(self.injected) + 1) / rate
            time.sleep(min(max(0.0, next_due - clock()), 0.001 if rate > 1000 else 0.01))


def _frames_read(runtime: LocalRuntime) -> int:
    total = 0
    for adapter in runtime.sources():
        for _ in range(10):  # counters() of a running reader: a dict may change size under us
            try:
                total += int(adapter.component.counters()["frames_read"])
                break
            except RuntimeError:
                time.sleep(0.001)
    return total


def run_live(rate: float, seconds: float, *, warmup: float = 2.0, alerts: int = 0, rule: str = ALERT_RULE,
             log: str | Path = SAMPLE / "drive.log", config: str | Path = SAMPLE / "vehicle.toml",
             grace: float = 5.0, spool: str = "file", seed: int = 1, recipes_dir: str | Path = RECIPES) -> LiveResult:
    """One live run in this process: the runtime, its reader on a fresh virtual bus, the feeder
    thread. With ``alerts``, that many violations of ``rule`` during the measured interval (which
    is then at least as long as they need)."""
    cfg = load_config(config)
    frames = drive_frames(log)
    rng = random.Random(seed)
    gaps = [rng.uniform(*SPACING) for _ in range(alerts)]
    if alerts:
        cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, flap_raises=1 << 30))
        seconds = max(seconds, sum(gaps) + 1.0)
        bad = violations(cfg, frames, rule, alerts)
    published: list[tuple[float, bytes]] = []
    cloud = InMemoryCloudTransport(lambda topic, payload: published.append((time.time(), bytes(payload))))
    channel = f"livebench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TELEMETRY_CAN_INTERFACE": "virtual", "TELEMETRY_CAN_CHANNEL": channel, "TELEMETRY_LOG": "",
               "TELEMETRY_SPOOL": str(Path(tmp) / "spool.db") if spool == "file" else ":memory:"}
        # the components' threads on one CPU, as ``telemetry run`` runs them; the feeder thread
        # (the bus, in a car) is started by this one, which is not pinned
        with LocalRuntime(recipes_dir, cfg, cloud, env=env, root=Path(recipes_dir).resolve().parent,
                          one_cpu=True) as runtime:
            if len(runtime.sources()) != 1:
                raise SystemExit("expected exactly one source component (the CAN reader)")
            reader = runtime.sources()[0].component
            bus = can.Bus(interface="virtual", channel=channel)
            try:
                t_start = time.monotonic() + warmup
                t_end = t_start + seconds
                inject, at = [], t_start + 0.25
                for gap, (frame, value) in zip(gaps, bad if alerts else []):
                    inject.append((at, frame, value))
                    at += gap
                feeder = Feeder(bus, frames, rate, t_start, t_end, inject)
                feeder.start()
                time.sleep(max(0.0, t_start - time.monotonic()))
                cpu0 = time.process_time()
                wall0 = time.monotonic()
                time.sleep(max(0.0, t_end - time.monotonic()))
                feeder.join()
                cpu1 = time.process_time()
                wall1 = time.monotonic()
                if feeder.error is not None:
                    raise feeder.error
                stopped = time.monotonic()
                while _frames_read(runtime) < feeder.sent and time.monotonic() - stopped < grace:
                    time.sleep(0.01)
                drain = time.monotonic() - stopped
                try:
                    runtime.drain(timeout=grace)  # the alerts still on their way to the cloud
                except TimeoutError:
                    pass
            finally:
                bus.shutdown()
        read = int(reader.counters()["frames_read"])  # stopped: its last batch counted
    assert feeder.cpu_start is not None and feeder.cpu_end is not None
    result = LiveResult(rate=rate, seconds=wall1 - wall0, warmup=warmup, sent=feeder.sent,
                        sent_measured=feeder.sent_at_end - feeder.sent_at_start, read=read, dropped=feeder.sent - read,
                        drain_seconds=drain, cpu_seconds=cpu1 - cpu0,
                        feeder_cpu_seconds=feeder.cpu_end - feeder.cpu_start, injected=len(feeder.injected),
                        handler_errors=list(runtime.errors))
    if alerts:
        result.latencies, result.unmatched = match_alerts(published, feeder.injected, rule)
    return result


def match_alerts(published: Sequence[tuple[float, bytes]], injected: Sequence[tuple[float, float]],
                 rule: str) -> tuple[list[float], int]:
    """Latency of each injected violation (seconds), found by its value among the raised alerts
    of ``rule`` in the bundles handed to the cloud, in order; and how many such alerts no
    injection explains."""
    pending = list(injected)  # (value, sent at)
    latencies: list[float] = []
    unmatched = 0
    for handed_at, payload in published:
        try:
            items = unpack(payload)
        except Exception:  # health reports and the like: not bundles
            continue
        for item in items:
            m = item["message"]
            if m.get("kind") != "alert" or m.get("rule") != rule or m.get("state") != "raised":
                continue
            k = next((j for j, (value, _) in enumerate(pending) if abs(value - m["value"]) < 1e-6 + 1e-9 * abs(value)), None)
            if k is None:
                unmatched += 1
                continue
            _, sent_at = pending.pop(k)
            latencies.append(handed_at - sent_at)
    return latencies, unmatched


# -- child processes ------------------------------------------------------------------------------


def run_child(**params: Any) -> LiveResult:
    """``run_live`` in a process of its own (the parent's imports and data are not counted)."""
    out = subprocess.run([sys.executable, "-m", "telemetry.tools.livebench", "--child", json.dumps(params, default=str)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"live run {params} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    fields = json.loads(out.stdout.strip().splitlines()[-1])
    return LiveResult(**fields)


def child(params: str) -> int:
    result = run_live(**json.loads(params))
    print(json.dumps(dataclasses.asdict(result)))
    return 0


# -- the report -----------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores{f' ({model})' if model else ''}, python {sys.version.split()[0]}"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def print_cpu(results: Sequence[LiveResult]) -> None:
    print(f"{'rate (frames/s)':<18}{'achieved':>10}{'components CPU':>16}{'feeder CPU':>12}"
          f"{'sent':>10}{'read':>10}{'dropped':>9}{'drain (s)':>11}")
    for r in results:
        print(f"{r.rate:<18,.0f}{r.achieved:>10,.0f}{r.cpu_percent:>15.1f}%{r.feeder_percent:>11.1f}%"
              f"{r.sent:>10,}{r.read:>10,}{r.dropped:>9,}{r.drain_seconds:>11.2f}")
        for error in r.handler_errors:
            print(f"  HANDLER ERROR: {error}")


def print_latency(r: LiveResult, rule: str) -> None:
    ms = [x * 1000 for x in r.latencies]
    print(f"{'violations':<12}{'alerts found':>14}{'unexplained':>13}{'p50 (ms)':>10}{'p99 (ms)':>10}"
          f"{'min (ms)':>10}{'max (ms)':>10}")
    print(f"{r.injected:<12}{len(ms):>14}{r.unmatched:>13}{percentile(ms, 50):>10.0f}{percentile(ms, 99):>10.0f}"
          f"{min(ms, default=math.nan):>10.0f}{max(ms, default=math.nan):>10.0f}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live-seconds", type=float, default=10.0,
                   help="seconds measured per live rate (after a warm-up); 0 skips the live part")
    p.add_argument("--live-rates", type=float, nargs="+", default=list(RATES), metavar="FPS",
                   help="frames/s put on the virtual bus for the CPU figures")
    p.add_argument("--live-warmup", type=float, default=2.0, help="seconds fed before the measurement starts")
    p.add_argument("--live-alerts", type=int, default=60,
                   help=f"violations of {ALERT_RULE} injected at {CAR_RATE:.0f} frames/s for the alert latency (0: skip)")
    p.add_argument("--live-spool", choices=("file", "memory"), default="file",
                   help="the uploader's spool: SQLite in a temp dir, as on the device (default), or in memory")


def run(args: argparse.Namespace, log: str | Path = SAMPLE / "drive.log",
        config: str | Path = SAMPLE / "vehicle.toml") -> list[LiveResult]:
    """The live stages as the benchmark prints them."""
    if args.live_seconds <= 0:
        return []
    common = {"warmup": args.live_warmup, "log": str(log), "config": str(config), "spool": args.live_spool}
    print(f"\nlive: the four components in one process (their threads on one CPU, as `telemetry run` runs them) "
          f"on a python-can virtual bus, fed by a thread with "
          f"{Path(log).name}'s frames (ids and payloads cycled, wall-clock timestamps); "
          f"{args.live_warmup:g} s warm-up, then {args.live_seconds:g} s measured; CPU in % of one core, "
          f"the feeder thread's own CPU (time.thread_time) subtracted; spool: {args.live_spool}")
    print(f"machine: {machine()}")
    results = [run_child(rate=rate, seconds=args.live_seconds, **common) for rate in args.live_rates]
    latency = None
    if args.live_alerts > 0:
        latency = run_child(rate=CAR_RATE, seconds=0.0, alerts=args.live_alerts, rule=ALERT_RULE, **common)
        results.append(latency)
    print_cpu(results)
    if latency is not None:
        print(f"\nalert latency at {CAR_RATE:.0f} frames/s ({latency.seconds:.0f} s): a frame violating "
              f"{ALERT_RULE} put on the bus -> the bundle carrying its alert handed to the cloud transport "
              f"(flap guard off, so each violation raises afresh)")
        print_latency(latency, ALERT_RULE)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    add_arguments(p)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A replay with each component in its own process (``ProcessRuntime``) gives what the one-process
runtime gives: the same alerts and windows in the cloud, the same counters, the same handler
errors and start-up errors; and it leaves no process behind."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from support.helpers import set_queue_sizes
from telemetry import wire
from telemetry.edge.config import load_config
from telemetry.edge.errors import DbcError
from telemetry.edge.transport import InMemoryCloudTransport
from telemetry.tools import replay as replay_module
from telemetry.tools.procruntime import ProcessRuntime
from telemetry.tools.replay import messages_from_outbox, replay
from telemetry.tools.taps import ReplayTaps

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
COUNTERS = ("frames_read", "frames_decoded", "error_frames", "remote_frames", "frames_unknown_id", "decode_errors",
            "signal_samples", "batches", "bad_lines", "unknown_ids", "event_start", "event_end", "aggregates",
            "late_samples", "forced_window_closes", "alerts", "alerts_raised", "alerts_updated", "alerts_cleared",
            "alerts_active_at_end", "uploaded_messages", "uploaded_raw_bytes", "spool_left", "evicted_messages",
            "set_aside", "malformed_messages", "handler_errors")


@pytest.fixture
def runtimes(monkeypatch) -> list[ProcessRuntime]:
    """Every ProcessRuntime a replay makes, kept for a look at its processes afterwards."""
    made: list[ProcessRuntime] = []

    class Recorded(ProcessRuntime):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(replay_module, "ProcessRuntime", Recorded)
    return made


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_no_component_process_left(runtime: ProcessRuntime) -> None:
    assert len(runtime.pids()) == 4
    assert [pid for pid in runtime.pids() if alive(pid)] == []
    assert multiprocessing.active_children() == []


def windows_and_alerts(out: Path) -> tuple[list[dict], list[dict]]:
    inside = messages_from_outbox(out / "cloud.jsonl")
    alerts = sorted((m for m in inside if m["kind"] == "alert"), key=lambda m: (m["t"], m["id"], m["state"]))
    windows = sorted((m for m in inside if m["kind"] == "window"), key=lambda m: (m["group"], m["window"]["start"]))
    return windows, alerts


class HeardTaps(ReplayTaps):
    """A replay's taps that also keep every payload of the components' topics as it was heard."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: dict[str, list[bytes]] = {}

    def attach(self, runtime) -> list[str]:
        topics = super().attach(runtime)
        for topic in topics:
            runtime.subscribe(topic, lambda event, topic=topic: self.heard.setdefault(topic, []).append(
                bytes(event) if isinstance(event, bytes) else json.dumps(event, sort_keys=True).encode()))
        return topics


def test_the_sample_drive_in_four_processes_gives_what_one_process_gives(tmp_path, runtimes, monkeypatch):
    # GIVEN the demo's replay in one process and in four, each by a process that has not loaded the
    # vehicle's wire schema yet (a fresh `telemetry replay`): in four, no component runs in it
    config = SAMPLE / "vehicle.toml"
    taps_one, taps_four = HeardTaps(), HeardTaps()
    monkeypatch.setattr(wire, "_SCHEMAS", {})
    one = replay(SAMPLE / "drive.log", out_dir=tmp_path / "one", config=config, taps=taps_one)
    monkeypatch.setattr(wire, "_SCHEMAS", {})
    four = replay(SAMPLE / "drive.log", out_dir=tmp_path / "four", config=config, processes=True, taps=taps_four)
    # THEN every component published the same bytes, in the same order, on every topic
    assert taps_four.heard.keys() == taps_one.heard.keys() == {"telemetry/signals", "telemetry/aggregates", "telemetry/alerts"}
    for topic, payloads in taps_one.heard.items():
        assert taps_four.heard[topic] == payloads, topic
    # AND the replay's taps (its report) read every aggregates payload and alert in both
    assert taps_four.refused == taps_one.refused == 0
    assert [p.window_messages() for p in taps_four.payloads] == [p.window_messages() for p in taps_one.payloads]
    assert len(taps_one.payloads) == one["aggregates"] > 0
    assert taps_four.alerts == taps_one.alerts and len(taps_one.alerts) == one["alerts"]
    # THEN the cloud got the same alerts and the same windows (bundled as timing made them)
    windows_one, alerts_one = windows_and_alerts(tmp_path / "one")
    windows_four, alerts_four = windows_and_alerts(tmp_path / "four")
    assert alerts_four == alerts_one and len(alerts_one) == one["alerts"] > 10
    assert len(windows_four) == len(windows_one) == one["windows"]
    for ours, theirs in zip(windows_four, windows_one):
        assert ours.keys() == theirs.keys() and ours["window"] == theirs["window"], ours["window"]
        for name, stats in ours["signals"].items():
            for stat, value in stats.items():
                assert value == pytest.approx(theirs["signals"][name][stat], rel=1e-12, abs=1e-12), (name, stat)
    # AND the summary's counters are the same; only how the work was spread may differ
    assert {k: four[k] for k in COUNTERS} == {k: one[k] for k in COUNTERS}
    assert four["handler_errors"] == [] and four["spool_left"] == 0
    assert four["local_messages"] == one["local_messages"]
    # AND the summary says what each process cost: every component's did the work of a drive
    cpu = four["cpu_seconds_processes"]
    assert set(cpu) == set(four["peak_rss_mb_processes"]) | {"runtime"}
    assert all(0 < seconds < 120 for seconds in cpu.values()), cpu
    assert "cpu_seconds_processes" not in one
    # AND every component's process has ended
    assert len(runtimes) == 1
    assert_no_component_process_left(runtimes[0])


def test_each_component_runs_in_its_own_process_and_gets_its_events_as_its_recipe_says(short_drive):
    cfg = load_config(SAMPLE / "vehicle.toml")
    cloud = InMemoryCloudTransport()
    with ProcessRuntime(ROOT / "recipes", cfg, cloud, env={"TELEMETRY_LOG": str(short_drive)}) as runtime:
        pids = runtime.pids()
        # forks of a forkserver that imported the components: none has loaded asammdf or pandas
        # (python-can's .mf4 support, deferred by telemetry/edge/lazymf4.py): none of their libraries is mapped
        mapped = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in pids}
        # a malformed JSON message reaches the uploader (json) as an object it refuses; a
        # malformed signals message reaches the aggregator and the detector (binary) as bytes
        runtime.deliver("telemetry/aggregates", b'{"hello": "world"}')
        runtime.deliver("telemetry/signals", b'{"v": 1, "kind": "signals", "signals": "oops"}')
        # bytes that begin as the runtime's frames do (an event's mark, a pickle's): bytes all the same
        runtime.deliver("telemetry/signals", b"E" + b'{"v": 1}')
        runtime.deliver("telemetry/signals", b"\x80\x04\x95 not a pickle")
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
        malformed = {name: runtime.component(name).counters().get("malformed") for name in runtime.started}
        aggregates = runtime.component("telemetry.Aggregator").counters()["windows"]
    assert len(set(pids)) == 4 and os.getpid() not in pids
    assert all("/numpy/" in maps for maps in mapped.values())  # (what a loaded package's libraries look like)
    assert [pid for pid, maps in mapped.items() if "/pandas/" in maps or "/asammdf/" in maps] == []
    assert malformed == {"telemetry.Uploader": 1, "telemetry.Aggregator": 3, "telemetry.AnomalyDetector": 3,
                         "telemetry.CanReader": None}
    assert aggregates == 26  # the short drive (20 s): 5 s windows (4), 10 s for temperatures (2), 1 s for the drive group (20)
    assert cloud.payloads()  # the uploader's cloud is the parent's transport
    assert runtime.stopped == list(reversed(runtime.started)) and runtime.errors == []
    assert [pid for pid in pids if alive(pid)] == []


def test_full_queues_slow_the_publishers_across_processes_and_lose_nothing(project, short_drive):
    # GIVEN recipes whose queues hold one message
    tmp_path = project
    set_queue_sizes(project, 1)
    cfg = load_config(SAMPLE / "vehicle.toml")
    # batches of 2 s: the 20 s drive makes enough messages to fill the queues
    cfg = dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, replay_batch_seconds=2.0))
    normal = replay(short_drive, out_dir=tmp_path / "normal", config=cfg)
    cloud = InMemoryCloudTransport()
    with ProcessRuntime(tmp_path / "recipes", cfg, cloud, env={"TELEMETRY_LOG": str(short_drive)}) as runtime:
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
        waits = sum(runtime.runner(n).stats["publisher_waits"] for n in runtime.started)
    # THEN publishers waited, and the cloud got every message of the normal replay
    assert waits > 0
    got = cloud.delivered()
    assert sum(1 for m in got if m["kind"] == "window") == normal["windows"]
    key = lambda m: json.dumps(m, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, messages_from_outbox(tmp_path / "normal" / "cloud.jsonl")))
    assert len(got) == normal["windows"] + normal["alerts"] and runtime.errors == []


def test_a_handler_error_in_a_child_is_reported_as_in_one_process(project, short_drive, runtimes):
    tmp_path = project
    handler = tmp_path / "lambdas" / "uploader" / "handler.py"
    handler.write_text(handler.read_text() + "\n\ndef function_handler(event, context):\n    raise RuntimeError('boom')\n")
    kwargs = dict(config=SAMPLE / "vehicle.toml", recipes_dir=tmp_path / "recipes")
    one = replay(short_drive, out_dir=tmp_path / "one", **kwargs)
    four = replay(short_drive, out_dir=tmp_path / "four", processes=True, **kwargs)
    assert four["handler_errors"] == one["handler_errors"]
    # every invocation failed: one per local message (the windows of one batch travel together)
    invocations = sum(four["local_messages"].get(t, 0) for t in ("telemetry/aggregates", "telemetry/alerts"))
    assert len(four["handler_errors"]) == invocations > 0 and four["windows"] == 26
    assert four["handler_errors"][0] == "telemetry.Uploader: handler raised RuntimeError: boom"
    assert four["uploaded_messages"] == 0
    assert_no_component_process_left(runtimes[0])


def test_a_component_that_fails_to_start_fails_the_replay_with_the_same_error(tmp_path, short_drive, runtimes):
    bad = tmp_path / "bad.dbc"
    bad.write_text("BO_ 1 X: 8 Y\n SG_ A : 0|8@1+ (1,0) [0|1] \"\" Y\n SG_ B : oops\n")
    with pytest.raises(DbcError) as in_one:
        replay(short_drive, out_dir=tmp_path / "one", dbc=[bad])
    with pytest.raises(DbcError) as in_four:
        replay(short_drive, out_dir=tmp_path / "four", dbc=[bad], processes=True)
    assert str(in_four.value) == str(in_one.value)
    assert str(in_four.value).startswith(f"{bad}: not a valid DBC file")
    # the components that had started (the uploader, the aggregator...) were stopped, their processes ended
    assert_no_component_process_left(runtimes[0])


def _cpus_allowed(status: Path) -> set[int]:
    line = next(x for x in status.read_text().splitlines() if x.startswith("Cpus_allowed_list:"))
    out: set[int] = set()
    for part in line.split(":", 1)[1].strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_one_cpu_pins_the_nucleus_s_relay_threads_and_no_component(short_drive, method):
    # the threads relaying to and from the children (and the taps they call) share one CPU;
    # a child runs on any, even one forked from a pinned thread (its spec gives it the mask back)
    mask = os.sched_getaffinity(0)
    cfg = load_config(SAMPLE / "vehicle.toml")
    with ProcessRuntime(ROOT / "recipes", cfg, InMemoryCloudTransport(), env={"TELEMETRY_LOG": str(short_drive)},
                        method=method, one_cpu=True) as runtime:
        relays = {t.name: _cpus_allowed(Path(f"/proc/self/task/{t.native_id}/status"))
                  for t in threading.enumerate() if t.name.startswith(("from-telemetry.", "to-telemetry."))}
        children = [_cpus_allowed(Path(f"/proc/{pid}/status")) for pid in runtime.pids()]
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
        cpu = runtime.pinned_cpu
    assert os.sched_getaffinity(0) == mask
    assert len(relays) == 8 and children == [mask] * 4
    if len(mask) > 1:
        assert cpu in mask and all(cpus == {cpu} for cpus in relays.values())
    else:
        assert cpu is None

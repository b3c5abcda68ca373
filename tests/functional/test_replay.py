"""The sample recording end to end, as ``./build.sh replay`` and ``./build.sh demo`` run it:
aggregates equal an independent cantools reference, the injected faults come out as alerts,
corrupt logs and broken DBCs are reported, not fatal or cryptic."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.reference import compare, compare_counts, messages_of, reference
from telemetry.edge.config import load_config
from telemetry.tools.replay import replay
from telemetry.tools.simulator import FAULTS, write_drive
from telemetry.tools.taps import ReplayTaps

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
DRIVE = SAMPLE / "drive.log"
DBC = SAMPLE / "solar_car.dbc"


@pytest.fixture(scope="module")
def sample_replay(tmp_path_factory):
    """The demo: the sample drive with the sample vehicle's configuration."""
    out = tmp_path_factory.mktemp("sample")
    summary = replay(DRIVE, out_dir=out, config=SAMPLE / "vehicle.toml")
    lines = [json.loads(line) for line in (out / "cloud.jsonl").read_text().splitlines()]
    return out, summary, lines


def test_aggregates_equal_the_cantools_reference(tmp_path):
    # every signal, one group of 1 s windows: what the reference computes
    summary = replay(DRIVE, out_dir=tmp_path, dbc=[DBC])
    lines = [json.loads(line) for line in (tmp_path / "cloud.jsonl").read_text().splitlines()]
    ref = reference(DRIVE, [DBC], window=1.0)
    assert compare_counts(ref, summary) == []
    assert compare(ref, lines, window=1.0) == []
    assert summary["windows"] == len(ref["windows"]) == 240


def test_summary_accounts_for_every_frame(sample_replay):
    out, summary, lines = sample_replay
    for key in ("frames_read", "error_frames", "frames_decoded", "frames_unknown_id", "decode_errors", "signal_samples",
                "aggregates", "alerts", "cloud_messages", "cloud_bytes", "seconds"):
        assert key in summary, key
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["frames_read"] == sum(1 for _ in DRIVE.open())
    assert summary["frames_read"] == (summary["frames_decoded"] + summary["error_frames"] + summary["remote_frames"]
                                      + summary["frames_unknown_id"] + summary["decode_errors"])
    assert summary["error_frames"] == 43 and summary["unknown_ids"] == {"0x7E0": 240}
    assert summary["cloud_messages"] == len(lines)
    assert summary["cloud_bytes"] == sum(len(json.dumps(line["payload"], separators=(",", ":"))) if "payload" in line
                                         else len(base64.b64decode(line["payload_base64"])) for line in lines)
    inside = messages_of(lines)
    assert summary["uploaded_messages"] == summary["aggregates"] + summary["alerts"]
    assert len(inside) == summary["windows"] + summary["alerts"]
    assert summary["spool_left"] == 0 and summary["evicted_messages"] == 0 and summary["set_aside"] == 0
    assert {line["topic"] for line in lines} == {"dt/sunrace-01/aggregates", "dt/sunrace-01/alerts", "dt/sunrace-01/health"}
    assert summary["handler_errors"] == [] and summary["bad_lines"] == 0


def test_each_injected_fault_raises_exactly_its_alerts_at_the_right_time(sample_replay):
    _, summary, lines = sample_replay
    alerts = sorted((m for m in messages_of(lines) if m["kind"] == "alert"), key=lambda a: a["t"])
    start = summary["event_start"]
    update_seconds = 10.0  # [detector] of vehicle.toml
    expected = {(e.rule, e.key): e for fault in FAULTS for e in fault.alerts if e.rule != "cell-imbalance"}
    imbalance = [e for fault in FAULTS for e in fault.alerts if e.rule == "cell-imbalance"]
    by_alert: dict[str, list[dict]] = {}
    for alert in alerts:
        by_alert.setdefault(alert["id"], []).append(alert)
    # the clean stretches raise nothing: every alert belongs to an injected fault
    seen_keys = {(a["rule"], a["signal"]) for a in alerts}
    assert seen_keys == set(expected) | {("cell-imbalance", "cell-imbalance")}
    episodes = sorted(by_alert.values(), key=lambda episode: episode[0]["t"])
    imbalance_episodes = [e for e in episodes if e[0]["rule"] == "cell-imbalance"]
    assert len(imbalance_episodes) == len(imbalance)
    pairs = [(expected[(e[0]["rule"], e[0]["signal"])], e) for e in episodes if e[0]["rule"] != "cell-imbalance"]
    pairs += list(zip(imbalance, imbalance_episodes))
    assert len(pairs) == len(episodes) == len(expected) + len(imbalance)
    for want, episode in pairs:
        states = [a["state"] for a in episode]
        # raised once, then updates only, then cleared once (or still active at the end)
        assert states[0] == "raised" and set(states[1:-1]) <= {"update"}, (want, states)
        if want.end is not None:
            assert states[-1] == "cleared", (want, states)
        else:  # still active at the end; a stale alert's worst does not grow after its raise
            assert "cleared" not in states, (want, states)
        # (times from the first frame, which is a few ms after the drive's start: 10 ms of slack)
        assert want.start - 0.01 <= episode[0]["t"] - start <= want.start + want.latency, (want, episode[0]["t"] - start)
        if want.end is not None:
            assert want.end - 0.01 <= episode[-1]["t"] - start <= want.end + want.latency, (want, episode[-1]["t"] - start)
        updates = [a["t"] for a in episode if a["state"] == "update"]
        assert all(b - a >= update_seconds for a, b in zip([episode[0]["t"], *updates], updates)), want
        assert len({a["id"] for a in episode}) == 1
    assert summary["alerts_active_at_end"] == sum(1 for e in expected.values() if e.end is None)


def test_the_committed_recording_is_what_the_simulator_writes(tmp_path):
    path = tmp_path / "drive.log"
    write_drive(path)
    assert path.read_bytes() == DRIVE.read_bytes(), "vehicles/sample/drive.log is stale: run ./build.sh simulate"
    assert DRIVE.stat().st_size < 5_000_000


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "telemetry", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_replay_of_a_corrupt_log_keeps_every_good_frame_and_names_the_bad_lines(tmp_path):
    lines = DRIVE.read_text().splitlines()[:2000]
    lines[100] = "(1782900000.5) can0 10Q#0011"
    lines[700] = "garbage from a flaky SD card"
    lines[-1] = lines[-1][:12]
    log = tmp_path / "cut.log"
    log.write_text("\n".join(lines))  # no newline at the end: the logger lost power
    result = cli("replay", str(log), "--dbc", str(DBC), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_read"] == 1997
    assert summary["bad_records"][0].startswith(f"{log}:101: ")
    assert summary["bad_records"][1].startswith(f"{log}:701: ")
    assert summary["bad_records"][2].startswith(f"{log}:2000: ")
    assert f"bad line: {log}:701:" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_broken_dbc_is_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "car.dbc"
    bad.write_text('BO_ 256 Pack: 8 BMS\n SG_ Voltage : 0|16@1+ (0.01,0) [0|250] "V" X\n SG_ Current : 16|16@1- (0.01\n')
    result = cli("replay", str(DRIVE), "--dbc", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: not a valid DBC file: ")
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_log_and_missing_dbc(tmp_path):
    result = cli("replay", str(tmp_path / "nope.log"), "--dbc", str(DBC), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = cli("replay", str(DRIVE), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no DBC file" in result.stderr


def test_importing_the_reader_handler_outside_greengrass_starts_nothing():
    code = (
        "import importlib.util, threading, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {str(ROOT / 'lambdas/can_reader/handler.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert m.adapter.thread is None and threading.active_count() == 1\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_alerts_and_windows_of_a_replay_do_not_depend_on_its_batches(tmp_path):
    """Replays batch big (thousands of frames) to carry real work; rules decide at the data's own
    event times, so every alert (time, value, detail, id) and every window is the same whatever
    the batches: from a few dozen frames to the whole drive in one."""
    cfg = load_config(SAMPLE / "vehicle.toml")
    runs = {}
    for frames, seconds in ((37, 0.25), (500, 0.5), (8192, 10.0), (10**6, 10**6)):
        reader = dataclasses.replace(cfg.reader, replay_batch_frames=frames, replay_batch_seconds=seconds)
        out = tmp_path / str(frames)
        summary = replay(DRIVE, out_dir=out, config=dataclasses.replace(cfg, reader=reader))
        inside = messages_of([json.loads(line) for line in (out / "cloud.jsonl").read_text().splitlines()])
        alerts = sorted((m for m in inside if m["kind"] == "alert"), key=lambda m: (m["t"], m["id"], m["state"]))
        windows = sorted((m for m in inside if m["kind"] == "window"), key=lambda m: (m["group"], m["window"]["start"]))
        for m in windows + alerts:
            m.pop("seq", None)  # numbered as published
        runs[frames] = (summary["batches"], alerts, windows)
    batches = [b for b, _, _ in runs.values()]
    assert batches == sorted(batches, reverse=True) and batches[0] > 900 and batches[-1] == 1
    first = runs[37]
    assert len(first[1]) >= 15 and {a["rule_kind"] for a in first[1]} >= {"limit", "spread", "stale", "bus", "rate", "zscore"}
    for frames, run in runs.items():
        assert run[1] == first[1], f"alerts differ with batches of {frames} frames"
        # the same samples in every window: exact statistics equal; the mean and the standard
        # deviation are sums folded batch by batch, so equal up to float rounding
        assert [exact(w) for w in run[2]] == [exact(w) for w in first[2]], f"windows differ with batches of {frames}"
        for ours, theirs in zip(run[2], first[2]):
            for name, stats in ours["signals"].items():
                for stat in ("mean", "std"):
                    if stat not in stats:  # a statistic the configuration does not send
                        continue
                    assert stats[stat] == pytest.approx(theirs["signals"][name][stat], rel=1e-12, abs=1e-12), (name, stat)


def exact(window: dict) -> dict:
    return {**window, "signals": {name: {k: v for k, v in stats.items() if k not in ("mean", "std")}
                                  for name, stats in window["signals"].items()}}


def test_a_replay_in_one_process_runs_its_components_threads_on_one_cpu(tmp_path):
    # they share one interpreter lock: on one CPU its hand-offs are cheap (affinity.py)
    mask = os.sched_getaffinity(0)
    seen: list[tuple[str, frozenset[int]]] = []

    def note(_message: object) -> None:
        seen.append((threading.current_thread().name, frozenset(os.sched_getaffinity(0))))

    taps = ReplayTaps(on_alert=note, on_signals=note)
    summary = replay(DRIVE, out_dir=tmp_path / "one", config=SAMPLE / "vehicle.toml", taps=taps)
    assert os.sched_getaffinity(0) == mask  # this thread's own mask, given back
    threads = {name for name, _ in seen}
    assert any("CanReader" in name for name in threads) and any("AnomalyDetector" in name for name in threads)
    if len(mask) > 1:
        assert summary["pinned_cpu"] in mask
        assert {cpus for _, cpus in seen} == {frozenset({summary["pinned_cpu"]})}
    else:
        assert summary["pinned_cpu"] is None
    seen.clear()
    spread = replay(DRIVE, out_dir=tmp_path / "all", config=SAMPLE / "vehicle.toml", one_cpu=False,
                    taps=ReplayTaps(on_alert=note, on_signals=note))
    assert spread["pinned_cpu"] is None
    assert {cpus for _, cpus in seen} == {frozenset(mask)}
    assert (spread["alerts"], spread["aggregates"], spread["signal_samples"]) == (
        summary["alerts"], summary["aggregates"], summary["signal_samples"])

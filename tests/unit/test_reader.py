"""The CAN reader: batching by size and event time, counters, end of stream, a live bus."""

from __future__ import annotations

import contextlib
import itertools
import threading
from pathlib import Path

import can
import cantools
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.helpers import frame
from telemetry.edge import messages
from telemetry.edge.clock import ManualClock, SystemClock
from telemetry.edge.components import CanReaderComponent
from telemetry.edge.frames import Frames
from telemetry.edge.reader import FrameBatcher, batch_ends
from telemetry.edge.sources import BusSource, LogSource


def test_batcher_flushes_by_count_and_by_event_time_span():
    b = FrameBatcher(max_frames=3, max_seconds=1.0)
    assert not b.add(frame(0.0, 1), 0)
    assert not b.add(frame(0.5, 1), 0)
    assert b.add(frame(0.6, 1), 0)  # three frames
    b.take()
    assert not b.add(frame(5.0, 1), 0)
    assert b.add(frame(6.0, 1), 0)  # spans one second
    assert len(b.take()) == 2 and b.frames == []


def write_candump(path, frames):
    with can.Logger(str(path)) as w:
        for f in frames:
            w.on_message_received(f)
    return path


@pytest.fixture
def pack_frames(sample_dbc):
    db = cantools.database.load_file(str(sample_dbc))
    pack = db.get_message_by_name("BMS_PackStatus")
    data = pack.encode({"PackVoltage": 140.0, "PackCurrent": 10.0, "SOC": 80, "BmsState": 1})
    return [frame(100.0 + i * 0.1, pack.frame_id, data) for i in range(25)]


def test_replay_publishes_batches_then_end_of_stream(tmp_path, make_services, pack_frames):
    log = write_candump(tmp_path / "d.log", pack_frames + [frame(102.55, 0x7E0, b"\x01")])
    services = make_services(reader={"replay_batch_frames": 10, "replay_batch_seconds": 100.0})
    reader = CanReaderComponent(services, source=LogSource(log))
    reader.run(threading.Event())
    out = services.local.messages("telemetry/out")
    kinds = [m["kind"] for m in out]
    assert kinds == ["signals"] * 3 + ["end_of_stream"]
    assert [m["seq"] for m in out] == [1, 2, 3, 4]
    assert [m["frames"]["read"] for m in out[:3]] == [10, 10, 6]
    assert out[2]["frames"]["unknown_id"] == 1
    # one message carries a whole batch of each signal as columns
    assert len(out[0]["signals"]["BMS_PackStatus.PackVoltage"]["t"]) == 10
    assert out[0]["span"] == {"start": 100.0, "end": pytest.approx(100.9)}
    assert out[-1]["totals"]["read"] == 26 and out[-1]["totals"]["decoded"] == 25 and out[-1]["totals"]["unknown_id"] == 1
    assert reader.finished.is_set()


@contextlib.contextmanager
def live_reader(services, channel: str):
    """The reader's loop in a thread on a virtual bus; yields (the car's end of the bus, reader)."""
    with can.Bus(interface="virtual", channel=channel) as car:
        reader = CanReaderComponent(services, source=BusSource(interface="virtual", channel=channel, idle_timeout=0.01))
        stop = threading.Event()
        thread = threading.Thread(target=reader.run, args=(stop,))
        thread.start()
        try:
            yield car, reader
        finally:
            stop.set()
            thread.join(5)
            reader.close()


def wait_until(predicate, tries: int) -> None:
    waiter = threading.Event()
    for _ in range(tries):
        if predicate():
            return
        waiter.wait(0.01)


def test_live_bus_flushes_a_quiet_bus_by_wall_clock(make_services, pack_frames):
    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 0.05})
    services.clock = SystemClock()
    with live_reader(services, "reader-live") as (car, _):
        for f in pack_frames[:3]:
            car.send(f)
        # the bus then goes quiet: the batch must still come out, without any more frames
        wait_until(lambda: services.local.messages("telemetry/out"), 200)
    out = services.local.messages("telemetry/out")
    assert out and out[0]["kind"] == "signals"
    assert sum(m["frames"]["read"] for m in out if m["kind"] == "signals") == 3
    assert out[-1]["kind"] == "end_of_stream"


def test_source_from_environment_beats_the_configuration(tmp_path, make_services, pack_frames):
    log = write_candump(tmp_path / "env.log", pack_frames)
    services = make_services(env={"TELEMETRY_LOG": str(log), "TELEMETRY_REPLAY_SPEED": "2"}, reader={"log": "other.log"})
    services.clock = ManualClock(0.0)
    reader = CanReaderComponent(services)
    assert isinstance(reader.source, LogSource) and reader.source.path == log and reader.source.speed == 2.0
    reader.run(threading.Event())
    assert services.clock.slept == pytest.approx((pack_frames[-1].timestamp - pack_frames[0].timestamp) / 2)


def test_live_interface_from_configuration(make_services):
    services = make_services(reader={"interface": "virtual", "channel": "cfg-bus"})
    reader = CanReaderComponent(services)
    try:
        assert reader.source is None and reader.live  # opened by the reading loop, not at import
        bus = reader._open_bus()
        assert isinstance(bus, BusSource) and bus.bus.channel_info.endswith("cfg-bus")
        bus.close()
    finally:
        reader.close()


def test_a_quiet_live_bus_still_closes_the_aggregators_windows(make_services, sample_dbc):
    """Windows close by event time; on a live bus that goes silent the reader's idle ticks move
    event time on with the wall clock, so the last window does not wait forever."""
    from telemetry.edge.components import AggregatorComponent

    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 0.05}, aggregator={"window_seconds": 0.2, "publish_seconds": 0.2})
    services.clock = SystemClock()
    aggregator = AggregatorComponent(services)
    services.local.subscribe("telemetry/out", lambda m: aggregator.handle(m) if messages.is_binary(m) else None)
    db = cantools.database.load_file(str(sample_dbc))
    pack = db.get_message_by_name("BMS_PackStatus")
    data = pack.encode({"PackVoltage": 140.0, "PackCurrent": 10.0, "SOC": 80, "BmsState": 1})
    with live_reader(services, "quiet-bus") as (car, reader):
        car.send(can.Message(arbitration_id=pack.frame_id, data=data, is_extended_id=False))  # stamped now
        # then silence
        wait_until(lambda: any(m["kind"] == "aggregates" for m in services.local.messages("telemetry/out")), 300)
    aggregates = [m for m in services.local.messages("telemetry/out") if m["kind"] == "aggregates"]
    assert aggregates, "the window of the only frame never closed"
    (window,) = aggregates[0]["windows"].values()
    assert window["BMS_PackStatus.PackVoltage"]["count"] == 1
    assert reader.core.totals["ticks"] > 0


@given(st.lists(st.floats(0.0, 5.0, allow_nan=False), max_size=300), st.integers(1, 40),
       st.sampled_from([0.0, 0.05, 0.5, 2.0]), st.booleans())
def test_columns_are_cut_where_the_batcher_would_never_inside_an_instant(gaps, max_frames, max_seconds, shuffle):
    t = np.cumsum(gaps) if not shuffle else np.asarray(gaps)  # also out-of-order timestamps
    t = np.round(t, 1)  # many frames of the same instant
    batcher = FrameBatcher(max_frames, max_seconds)
    want, i, n = [], 0, len(t)
    while i < n:  # frame by frame, then past the frames of the last one's instant
        full = batcher.add(frame(float(t[i]), 0x100), 0.0)
        i += 1
        if full:
            while i < n and t[i] == t[i - 1]:
                i += 1
            if i == n:
                break  # open: the next chunk may hold more of this instant
            batcher.take()
            want.append(i)
    ends = batch_ends(np.asarray(t, dtype=float), max_frames, max_seconds)
    assert ends == want
    assert all(t[e] != t[e - 1] for e in ends)


@given(st.lists(st.floats(0.0, 5.0, allow_nan=False), max_size=200), st.integers(1, 40),
       st.sampled_from([0.0, 0.05, 0.5, 2.0]), st.lists(st.integers(1, 50), min_size=1), st.booleans())
def test_frames_added_in_bursts_make_the_batches_frames_added_one_by_one_make(gaps, max_frames, max_seconds,
                                                                            sizes, shuffle):
    t = np.cumsum(gaps) if not shuffle else np.asarray(gaps)  # also out-of-order timestamps
    frames = [frame(float(x), 0x100) for x in t]

    def batches(feed):
        batcher, out = FrameBatcher(max_frames, max_seconds), []
        for burst in feed:
            while burst:
                taken, full = batcher.extend(burst, 0.0)
                assert taken >= 1
                burst = burst[taken:]
                if full:
                    out.append([f.timestamp for f in batcher.take()])
        return out, [f.timestamp for f in batcher.take()]

    cuts = list(itertools.accumulate(sizes))
    in_bursts = [frames[a:b] for a, b in itertools.pairwise([0, *[c for c in cuts if c < len(frames)], len(frames)])]
    assert batches(in_bursts) == batches([[f] for f in frames])


def pack_frame(db, t: float, current: float) -> can.Message:
    pack = db.get_message_by_name("BMS_PackStatus")
    return frame(t, pack.frame_id, pack.encode({"PackVoltage": 140.0, "PackCurrent": current, "SOC": 80, "BmsState": 1}))


def test_live_bus_publishes_long_batches_and_at_once_when_a_signal_crosses_a_limit(make_services, sample_dbc):
    # GIVEN a live reader with long batches and a limit rule on the pack current
    db = cantools.database.load_file(str(sample_dbc))
    rules = [{"name": "overcurrent", "kind": "limit", "signals": "BMS_PackStatus.PackCurrent", "max": 100.0}]
    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 60.0, "limit_check_seconds": 0.02},
                             rules=rules)
    services.clock = SystemClock()
    out = lambda: [m for m in services.local.messages("telemetry/out") if m["kind"] == "signals"]  # noqa: E731
    waiter = threading.Event()
    with live_reader(services, "reader-limit") as (car, reader):
        for i in range(3):  # inside the limit: the batch stays open
            car.send(pack_frame(db, 100.0 + i, 10.0))
        waiter.wait(0.3)
        assert out() == []
        # WHEN a frame takes the current across the limit
        car.send(pack_frame(db, 104.0, 150.0))
        wait_until(lambda: out(), 300)
        # THEN the batch goes out at once, with every frame read so far
        assert [m["frames"]["read"] for m in out()] == [4]
        assert reader.counters()["limit_flushes"] == 1
        # a signal that stays across does not cut the next batch short ...
        car.send(pack_frame(db, 105.0, 160.0))
        waiter.wait(0.3)
        assert len(out()) == 1
        # ... one that comes back, then crosses again, does
        car.send(pack_frame(db, 106.0, 20.0))
        car.send(pack_frame(db, 107.0, 170.0))
        wait_until(lambda: len(out()) == 2, 300)
        assert [m["frames"]["read"] for m in out()] == [4, 3]
        assert reader.counters()["limit_flushes"] == 2
    # what a batch carries is what one batch of all its frames gives
    assert out()[1]["signals"]["BMS_PackStatus.PackCurrent"]["v"] == [160.0, 20.0, 170.0]


def test_limit_check_says_when_a_crossing_starts():
    from telemetry.edge.config import parse_config
    from telemetry.edge.reader import LimitCheck

    cfg = parse_config({"vehicle": "v", "dbc": [str(SAMPLE_DBC)], "rules": [
        {"name": "hot", "kind": "limit", "signals": "M.T*", "max": 50.0},
        {"name": "band", "kind": "limit", "signals": "M.V", "min": 3.0, "max": 4.2},
        {"name": "stale", "kind": "stale", "signals": "M.*", "timeout": 1.0}]}, base=Path("/"))
    check = LimitCheck(cfg.rules)
    assert len(check.evaluators) == 2  # only limit rules

    def batch(**signals):
        return messages.FlatBatch.from_columns(
            {f"M.{name}": messages.SignalColumns(np.arange(len(v), dtype=float), np.array(v, float))
             for name, v in signals.items()})

    assert not check.crossed(batch(T1=[20, 30], V=[3.5]))
    assert check.crossed(batch(T1=[40, 60]))  # starts
    assert not check.crossed(batch(T1=[70]))  # stays across
    assert check.crossed(batch(T2=[55]))  # another signal of the rule starts
    assert not check.crossed(batch(V=[3.9]))  # the others say nothing of T1 and T2: they stay across
    assert check.crossed(batch(T1=[20, 60, 20]))  # back, across again: a spike inside one check counts
    assert check.crossed(batch(V=[2.0]))  # below a minimum
    assert not check.crossed(batch(X=[1e9]))  # no rule watches it
    assert not check.crossed(messages.FlatBatch.empty())
    assert check.crossings == 4


SAMPLE = Path(__file__).resolve().parents[2] / "vehicles" / "sample"
SAMPLE_DBC = SAMPLE / "solar_car.dbc"


@pytest.fixture(scope="module")
def sample_drive_frames():
    """The first 3,000 frames of the sample drive (unknown ids and error frames among them)."""
    chunk = next(iter(LogSource(SAMPLE / "drive.log").frame_batches(threading.Event(), 8192)))
    return chunk.take(slice(0, 3000))


@pytest.fixture(scope="module")
def decoder():
    from telemetry.edge.decode import DbcDecoder

    return DbcDecoder([SAMPLE_DBC])


@settings(max_examples=40)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2999), max_size=6, unique=True))
def test_a_batch_admitted_in_parts_is_the_batch_taken_at_once(sample_drive_frames, decoder, cuts):
    from telemetry.edge.reader import ReaderCore

    frames = sample_drive_frames
    at_once = ReaderCore(decoder, "can")
    whole = at_once.batch_message(frames)
    core = ReaderCore(decoder, "can")
    bounds = [0, *sorted(cuts), len(frames)]
    admitted = Frames.concat([core.admit(frames.take(slice(a, b))) for a, b in itertools.pairwise(bounds)])
    parted = core.message_of(admitted)
    assert core.totals == at_once.totals and core.totals["read"] == len(frames)
    assert parted.batch.names == whole.batch.names
    for key in ("ids", "t", "v"):
        assert np.array_equal(getattr(parted.batch, key), getattr(whole.batch, key))
    assert dict(parted.frames) == dict(whole.frames)
    assert (parted.start, parted.end) == (whole.start, whole.end)
    assert parted.events.keys() == whole.events.keys()
    assert all(np.array_equal(parted.events[k], whole.events[k]) for k in whole.events)


def test_a_limit_rule_added_live_to_a_reader_without_one_cuts_its_batch_at_the_crossing(make_services, sample_dbc):
    from telemetry.edge import component_config

    db = cantools.database.load_file(str(sample_dbc))
    rule = {"name": "overcurrent", "kind": "limit", "signals": "BMS_PackStatus.PackCurrent", "max": 100.0}
    reader_cfg = {"batch_max_frames": 1000, "batch_max_seconds": 60.0, "limit_check_seconds": 0.02}
    old, new = make_services(reader=reader_cfg).config, make_services(reader=reader_cfg, rules=[rule]).config
    services = make_services(reader=reader_cfg)
    services.clock = SystemClock()
    out = lambda: [m for m in services.local.messages("telemetry/out") if m["kind"] == "signals"]  # noqa: E731
    with live_reader(services, "reader-limit-added") as (car, reader):
        car.send(pack_frame(db, 100.0, 10.0))
        # WHEN a deployment adds the reader's first limit rule, live
        component_config.retune(reader, old, new, component_config.classify(
            "CanReaderComponent", component_config.changed_keys(old, new)))
        car.send(pack_frame(db, 101.0, 150.0))
        wait_until(lambda: out(), 300)
        # THEN the open batch goes out at the crossing, not after batch_max_seconds
        assert [m["frames"]["read"] for m in out()] == [2]


def test_a_rules_update_reaches_the_readers_limit_check_live(make_services):
    from telemetry.edge import component_config

    rule = {"name": "overcurrent", "kind": "limit", "signals": "BMS_PackStatus.PackCurrent", "max": 100.0}
    old = make_services(rules=[rule]).config
    new = make_services(rules=[{**rule, "max": 50.0}]).config
    services = make_services(rules=[rule])
    reader = CanReaderComponent(services, source=BusSource(can.Bus(interface="virtual", channel="reader-retune")))
    try:
        change = component_config.classify("CanReaderComponent", component_config.changed_keys(old, new))
        assert change.live == ("rules.overcurrent",) and change.restart == ()
        cfg = component_config.retune(reader, old, new, change)
        assert cfg.rules == new.rules
        batch = messages.FlatBatch.from_columns({"BMS_PackStatus.PackCurrent": messages.SignalColumns(
            np.array([1.0]), np.array([70.0]))})
        assert reader.limits.crossed(batch)  # 70 A is across the new limit, not the old one
    finally:
        reader.source.bus.shutdown()

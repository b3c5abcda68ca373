"""Issue 11, point 8: one bad timestamp never poisons the event clock.

A frame far from the stream's event time is quarantined (counted, never decoded, never moving the
clock); a backward jump of the clock (a logger's clock reset) starts a new epoch that continues
event time, so nothing is late and no alert storm follows.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from telemetry.edge import messages
from telemetry.edge.aggregator import Aggregation
from telemetry.edge.config import load_config
from telemetry.edge.decode import DbcDecoder
from telemetry.edge.detector import Detector
from telemetry.edge.errors import MessageError
from telemetry.edge.frames import Frames
from telemetry.edge.reader import ReaderCore
from telemetry.edge.sources import LogSource

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "vehicles" / "sample" / "vehicle.toml")
DECODER = DbcDecoder(CONFIG.dbc)


@pytest.fixture(scope="module")
def drive() -> Frames:
    """The first 60 s of the sample drive."""
    frames = Frames.concat(list(LogSource(ROOT / "vehicles" / "sample" / "drive.log").frame_batches(threading.Event())))
    return frames.take(frames.t < frames.t[0] + 60)


def replay(frames: Frames, batch: int = 2000):
    """The frames through the reader's core, the aggregator and the detector, in batches."""
    core = ReaderCore(DECODER, "test")
    aggregation = Aggregation(CONFIG.aggregator, CONFIG.vehicle)
    detector = Detector(CONFIG.rules, CONFIG.vehicle, CONFIG.detector)
    aggregates, alerts = [], []
    for start in range(0, len(frames), batch):
        message = core.batch_message(frames.take(slice(start, start + batch)))
        aggregates += aggregation.process(message)
        alerts += detector.process(message)
    aggregates += aggregation.process(core.end_message())
    return core, aggregation.totals(), aggregates, alerts


def with_time(frames: Frames, t: np.ndarray) -> Frames:
    return dataclasses.replace(frames, t=t)


def insert(frames: Frames, at: int, t: float) -> Frames:
    one = frames.take(slice(at, at + 1))
    return Frames.concat([frames.take(slice(0, at)), with_time(one, np.array([t])), frames.take(slice(at, None))])


def summary(alerts) -> list[tuple[str, str, str]]:
    return sorted((a.rule, a.signal, a.state) for a in alerts)


@pytest.fixture(scope="module")
def clean(drive):
    return replay(drive)


@pytest.mark.parametrize("when", ["future", "epoch"])
def test_one_frame_far_from_the_stream_is_quarantined_and_moves_nothing(drive, clean, when):
    # GIVEN the drive with one frame dated a million seconds ahead, or at 1970
    middle = len(drive) // 2
    t = drive.t[middle] + 1e6 if when == "future" else 0.0
    core, totals, aggregates, alerts = replay(insert(drive, middle, t))
    # THEN nothing is late, the alerts are those of the clean drive, none is dated outside it
    assert totals["late_samples"] == 0
    assert summary(alerts) == summary(clean[3])
    assert all(drive.t[0] <= a.t <= drive.t[-1] + 1 for a in alerts)
    assert [a.start for a in aggregates] == [a.start for a in clean[2]]
    # AND the frame is counted as quarantined, never decoded
    assert core.faults()["frames_quarantined"] == 1
    assert core.totals["signal_samples"] == clean[0].totals["signal_samples"]


def test_a_bad_first_timestamp_does_not_set_the_clock(drive, clean):
    core, totals, aggregates, alerts = replay(insert(drive, 0, 0.0))
    assert core.faults()["frames_quarantined"] == 1
    assert totals["late_samples"] == 0 and summary(alerts) == summary(clean[3])
    assert aggregates[0].start == clean[2][0].start


def test_a_backward_clock_jump_starts_a_new_epoch_without_losing_samples_or_raising_alerts(drive, clean):
    # GIVEN the drive whose logger's clock is set back 20 s half way through
    t = drive.t.copy()
    middle = len(t) // 2
    t[middle:] -= 20.0
    core, totals, aggregates, alerts = replay(with_time(drive, t))
    # THEN no sample is late or lost, and the alerts are the clean drive's
    assert totals["late_samples"] == 0
    assert core.totals["signal_samples"] == clean[0].totals["signal_samples"]
    assert sum(sum(s["count"] for s in a.signals.values()) for a in aggregates) == \
        sum(sum(s["count"] for s in a.signals.values()) for a in clean[2])
    assert summary(alerts) == summary(clean[3])
    # AND the new epoch is reported with its jump; event time never ran backwards
    faults = core.faults()
    assert faults["frames_quarantined"] == 0
    assert len(faults["clock_epochs"]) == 1 and faults["clock_epochs"][0]["jump"] == pytest.approx(20.0, abs=0.1)
    ends = [a.end for a in aggregates if a.group == "default"]
    assert ends == sorted(ends)


def test_a_gap_in_the_recording_is_no_fault(drive, clean):
    # GIVEN the drive with a 10-minute silence half way (the logger paused)
    t = drive.t.copy()
    t[len(t) // 2:] += 600.0
    core, _, _, _ = replay(with_time(drive, t))
    # THEN every frame is decoded at its own time: a gap, not a fault
    faults = core.faults()
    assert faults["frames_quarantined"] == 0 and faults["clock_epochs"] == [] and faults["clock_gaps"] == 1
    assert core.totals["signal_samples"] == clean[0].totals["signal_samples"]
    assert core.last_time == pytest.approx(drive.t[-1] + 600.0)


@pytest.mark.parametrize("t0", [1e100, -1e100, 1.7829e12, 1.7829e15, messages.MAX_EVENT_TIME + 10.0])
def test_a_log_whose_every_time_is_past_2255_is_quarantined_whole_and_nothing_reaches_the_components(drive, t0):
    # GIVEN the drive with every time moved past 2**53 us either side of 1970 (a log in ms or us
    # read as seconds: 1.78e12, 1.78e15; a corrupt field: 1e100), frames agreeing with each other
    t = t0 + (drive.t - drive.t[0]) * (1 if abs(t0) < 1e17 else 0)
    core, totals, aggregates, alerts = replay(with_time(drive, t))
    # THEN every frame is quarantined, counted, none decoded, and no window or alert is made of them
    assert core.faults()["frames_quarantined"] == len(drive)
    assert core.totals["signal_samples"] == 0 and core.totals["read"] == 0
    assert aggregates == [] and alerts == [] and totals["windows"] == 0


def test_the_stream_may_run_up_to_2255_and_not_past_it(drive):
    # GIVEN the drive ending exactly at the bound, then the same frames again just past it
    span = float(drive.t[-1] - drive.t[0])
    before = drive.t - drive.t[-1] + messages.MAX_EVENT_TIME
    after = drive.t - drive.t[0] + messages.MAX_EVENT_TIME + 1e-3
    core, _, aggregates, _ = replay(with_time(Frames.concat([drive, drive]), np.concatenate([before, after])))
    # THEN the first copy is decoded, the second quarantined, and every window is inside the bound
    assert core.faults()["frames_quarantined"] == len(drive)
    assert core.totals["read"] == len(drive) and span > 0
    assert aggregates and max(a.start for a in aggregates) <= messages.MAX_EVENT_TIME


def test_a_clock_reset_shift_cannot_carry_frames_past_2255(drive):
    # GIVEN a stream reaching 1 s before the bound, whose logger's clock is then set back an hour:
    # the new epoch continues event time from the clock, which would carry it past the bound
    half = len(drive) // 2
    t = drive.t - drive.t[half - 1] + messages.MAX_EVENT_TIME - 1.0
    t[half:] -= 3600.0
    core, _, aggregates, _ = replay(with_time(drive, t))
    # THEN the first half and the second's first second are decoded, the rest is counted, and
    # nothing admitted lies past the bound
    faults = core.faults()
    assert len(faults["clock_epochs"]) == 1
    kept = int((drive.t[half:] - drive.t[half] + t[half - 1] + 1e-6 <= messages.MAX_EVENT_TIME).sum())
    assert 0 < faults["frames_quarantined"] < len(drive) - half
    assert core.totals["read"] + faults["frames_quarantined"] == len(drive)
    assert core.last_time is not None and core.last_time <= messages.MAX_EVENT_TIME
    assert core.totals["read"] >= half + kept - 16  # up to one confirmation's frames held at the bound
    assert all(a.start <= messages.MAX_EVENT_TIME for a in aggregates)


@pytest.mark.parametrize("where", ["samples", "event_times", "span"])
def test_a_signals_message_with_a_time_past_2255_is_refused_in_every_form(drive, where):
    # GIVEN a signals batch of the drive with one time past the bound
    message = ReaderCore(DECODER, "test").batch_message(drive.take(slice(0, 500)))
    far = messages.MAX_EVENT_TIME * 1.5
    if where == "samples":
        t = message.batch.t.copy()
        t[-1] = far
        message = dataclasses.replace(message, batch=dataclasses.replace(message.batch, t=t))
    elif where == "event_times":
        message = dataclasses.replace(message, events={"error": np.array([far])})
    else:
        message = dataclasses.replace(message, end=far)
    # THEN its binary form, its header alone and its JSON form are each refused, with the reason
    for read in (messages.Signals.from_bytes, messages.Signals.head_from_bytes):
        with pytest.raises(MessageError, match=r"beyond .* 1970"):
            read(message.to_bytes())
    with pytest.raises(MessageError, match=r"beyond .* 1970"):
        messages.Signals.decode(message.encode())
    # AND an end of stream dated past it too; one at the bound is taken
    with pytest.raises(MessageError, match=r"beyond .* 1970"):
        messages.EndOfStream.decode({"v": 1, "kind": "end_of_stream", "end": -far, "totals": {}})
    assert messages.EndOfStream.decode({"v": 1, "kind": "end_of_stream", "end": messages.MAX_EVENT_TIME,
                                        "totals": {}}).end == messages.MAX_EVENT_TIME

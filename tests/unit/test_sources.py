"""Frame sources: every log format python-can reads, corrupt and truncated lines, pacing, a live bus."""

from __future__ import annotations

import threading
from pathlib import Path

import can
import numpy as np
import pytest

from support.helpers import frame, write_lines
from telemetry.edge.clock import ManualClock
from telemetry.edge.errors import LogFormatError
from telemetry.edge.frames import Frames
from telemetry.edge.sources import BusSource, LogSource

FRAMES = [
    frame(1.0, 0x100, bytes([1, 2, 3, 4])),
    frame(1.5, 0x101, bytes(range(8))),
    frame(2.0, 0x18FF50E5, bytes([9, 9]), is_extended_id=True),
    frame(2.5, 0x102, bytes([7] * 8)),
    frame(3.0, 0x103, bytes([5])),
]


def read_all(source: LogSource) -> list[can.Message]:
    return [m for m in source.frames(threading.Event()) if m is not None]


def same(a: can.Message, b: can.Message) -> bool:
    return (a.arbitration_id, a.is_extended_id, bytes(a.data)) == (b.arbitration_id, b.is_extended_id, bytes(b.data)) and abs(
        a.timestamp - b.timestamp
    ) < 1e-5


def write_log(path: Path, frames=FRAMES) -> Path:
    with can.Logger(str(path)) as writer:
        for f in frames:
            writer.on_message_received(f)
    return path


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".csv", ".mf4"])
def test_every_format_reads_what_can_logreader_reads(tmp_path, suffix):
    # GIVEN a log written by python-can's own writer for the format
    path = write_log(tmp_path / f"drive{suffix}")
    # WHEN our source reads it
    ours = read_all(LogSource(path))
    # THEN it yields exactly the frames can.LogReader yields (an ASC log's times from its header's
    # date, as python-can's ASCReader gives them with relative_timestamp=False)
    theirs = list(can.ASCReader(str(path), relative_timestamp=False) if suffix == ".asc" else can.LogReader(str(path)))
    assert len(ours) == len(theirs) == len(FRAMES)
    assert all(same(a, b) for a, b in zip(ours, theirs))


def test_unsupported_format_is_a_clear_error(tmp_path):
    path = tmp_path / "drive.txt"
    path.write_text("hello\n")
    with pytest.raises(LogFormatError, match=r"unsupported log format '\.txt'.*\.asc"):
        LogSource(path)


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(LogFormatError, match="no such file"):
        LogSource(tmp_path / "nope.log")


def test_candump_corrupt_lines_are_skipped_and_named(tmp_path):
    # GIVEN a candump log with a garbled line in the middle and a line cut short at the end
    path = write_lines(
        tmp_path / "cut.log",
        [
            "(1.000000) can0 100#01020304",
            "(1.100000) can0 1Z0#0102",  # bad id
            "(1.200000) can0 101#0001020304050607",
            "(1.3000 can0 garbage",  # bad timestamp
            "(1.400000) can0 102#0707070707070707",
            "(1.500000) can0 10",  # logger lost power mid-line
        ],
        newline_at_end=False,
    )
    source = LogSource(path)
    got = read_all(source)
    # THEN every good frame is there, in order
    assert [(m.arbitration_id, m.timestamp) for m in got] == [(0x100, 1.0), (0x101, 1.2), (0x102, 1.4)]
    # AND each bad line is reported with its file and line number
    assert [(r.file, r.line) for r in source.bad_records] == [(str(path), 2), (str(path), 4), (str(path), 6)]
    assert "1Z0" in source.bad_records[0].text
    assert str(source.bad_records[0]).startswith(f"{path}:2: ")


def test_asc_corrupt_line_keeps_the_header_and_truncated_frame_is_caught(tmp_path):
    # GIVEN an ASC log (header with hex base) with a corrupt data byte and a truncated last frame
    path = write_log(tmp_path / "drive.asc")
    lines = path.read_text().splitlines()
    data_lines = [i for i, line in enumerate(lines) if " Rx " in line]
    lines[data_lines[1]] = lines[data_lines[1]].replace("00 01 02", "00 0G 02")
    last = lines[data_lines[-1]]
    lines[data_lines[-1]] = last.rsplit(" ", 1)[0]  # keeps "Rx d 1", drops the one data byte
    write_lines(path, lines)
    source = LogSource(path)
    got = read_all(source)
    # THEN the frames after the bad line are still read with the header's settings (hex ids)
    assert [m.arbitration_id for m in got] == [0x100, 0x18FF50E5, 0x102]
    assert [r.line for r in source.bad_records] == [data_lines[1] + 1, data_lines[-1] + 1]
    assert "DLC 1 but 0 data bytes" in source.bad_records[1].reason


def test_trc_and_csv_corrupt_lines(tmp_path):
    for suffix, corrupt in [(".trc", lambda line: line.replace(" DT ", " DT zz ")), (".csv", lambda line: line.replace(",", ",x", 1))]:
        path = write_log(tmp_path / f"drive{suffix}")
        lines = path.read_text().splitlines()
        target = next(i for i, line in enumerate(lines) if "101" in line.upper() and not line.startswith(";"))
        lines[target] = corrupt(lines[target])
        write_lines(path, lines)
        source = LogSource(path)
        got = read_all(source)
        assert [m.arbitration_id for m in got] == [0x100, 0x18FF50E5, 0x102, 0x103], suffix
        assert [r.line for r in source.bad_records] == [target + 1], suffix


def test_truncated_binary_log_keeps_what_came_before(tmp_path):
    # GIVEN a BLF log of several compressed containers, cut in half (a logger that lost power)
    frames = [frame(i * 0.001, 0x100 + i % 50, bytes([i % 256] * 8)) for i in range(20_000)]
    path = write_log(tmp_path / "drive.blf", frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = LogSource(path)
    got = read_all(source)
    # THEN the frames of the complete containers are read, in order, and the cut is reported
    assert 0 < len(got) < len(frames)
    assert all(same(a, b) for a, b in zip(got, frames))
    assert len(source.bad_records) == 1
    assert f"truncated after frame {len(got)}" in source.bad_records[0].reason


def test_replay_at_recorded_pace_sleeps_on_the_clock(tmp_path):
    path = write_log(tmp_path / "drive.log")
    clock = ManualClock(0.0)
    got = read_all(LogSource(path, speed=1.0, clock=clock))
    assert len(got) == len(FRAMES)
    assert clock.slept == pytest.approx(FRAMES[-1].timestamp - FRAMES[0].timestamp)
    clock2 = ManualClock(0.0)
    read_all(LogSource(path, speed=4.0, clock=clock2))
    assert clock2.slept == pytest.approx((FRAMES[-1].timestamp - FRAMES[0].timestamp) / 4)


def test_bus_source_reads_a_live_virtual_bus_and_reports_idle():
    with can.Bus(interface="virtual", channel="test-live") as sender:
        source = BusSource(interface="virtual", channel="test-live", idle_timeout=0.01)
        try:
            stop = threading.Event()
            for f in FRAMES[:3]:
                sender.send(f)
            it = source.frames(stop)
            got = [next(it) for _ in range(3)]
            assert [m.arbitration_id for m in got] == [0x100, 0x101, 0x18FF50E5]
            assert next(it) is None  # nothing more within the idle timeout
            stop.set()
            assert list(it) == []
        finally:
            source.close()


class CountingBus(can.BusABC):
    """A python-can bus over a list of frames that counts how the reader asks for them."""

    def __init__(self, frames: list[can.Message], arrive_with_first: int) -> None:
        super().__init__(channel="counting")
        self.queue = list(frames)
        self.available = arrive_with_first  # frames there when the first one is read
        self.blocking = self.polls = 0

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if timeout:
            self.blocking += 1
            self.available = max(self.available, 1)
        else:
            self.polls += 1
        if self.queue and self.available:
            self.available -= 1
            return self.queue.pop(0), False
        return None, False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise NotImplementedError


def test_bus_source_reads_in_bursts_not_a_wake_up_a_frame():
    # GIVEN 10 frames that all arrive while the reader waits for the first
    frames = [can.Message(timestamp=i / 1000, arbitration_id=0x100, data=bytes([i])) for i in range(10)]
    bus = CountingBus(frames, arrive_with_first=10)
    source = BusSource(bus, idle_timeout=0.01, poll_seconds=0.001)
    it = source.frames(threading.Event())
    # WHEN they are read
    got = [next(it) for _ in range(11)]
    # THEN one blocking wait, then the rest drained without waiting, then a pause (None)
    assert [m.data[0] for m in got[:10]] == list(range(10)) and got[10] is None
    assert bus.blocking == 1 and bus.polls == 10  # the 10th poll finds the bus empty
    bus.shutdown()


def test_bus_source_bounds_a_burst_on_a_bus_faster_than_it_is_read():
    frames = [can.Message(timestamp=i / 1000, arbitration_id=0x100, data=bytes([i])) for i in range(10)]
    source = BusSource(CountingBus(frames, arrive_with_first=10), idle_timeout=0.01, poll_seconds=0.0, max_burst=4)
    it = source.frames(threading.Event())
    got = [next(it) for _ in range(12)]
    # a pause after every 4 frames: the reader checks its clock (flushes on time) even then
    assert [m is None for m in got] == [False] * 4 + [True] + [False] * 4 + [True] + [False, False]
    source.bus.shutdown()


def test_bus_source_counts_and_skips_a_frame_it_cannot_use_in_a_burst():
    good = can.Message(timestamp=1.0, arbitration_id=0x100, data=b"\x01")
    bad = can.Message(timestamp=1.0, arbitration_id=0x100, data=bytes(9))  # a classic frame of 9 bytes
    source = BusSource(CountingBus([good, bad, good], arrive_with_first=3), idle_timeout=0.01, poll_seconds=0.0)
    it = source.frames(threading.Event())
    got = [next(it) for _ in range(3)]
    assert [m is None for m in got] == [False, False, True]
    assert source.refused == 1 and "frame 2" in str(source.bad_records[0])
    source.bus.shutdown()


def columns_of(messages: list[can.Message]) -> list[np.ndarray]:
    cols = Frames.from_messages(messages)
    return [cols.t, cols.id, cols.extended, cols.error, cols.remote, cols.fd, cols.length, cols.data]


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".csv", ".mf4"])
def test_frame_batches_are_the_frames_of_frames_as_columns(tmp_path, suffix):
    # GIVEN a log of any format
    path = write_log(tmp_path / f"drive{suffix}")
    # WHEN it is read in batches of at most 2 frames
    batches = list(LogSource(path).frame_batches(threading.Event(), max_frames=2))
    # THEN the batches hold exactly what frames() yields, in order
    assert [len(b) for b in batches] == [2, 2, 1]
    got = Frames.concat(batches)
    want = columns_of(read_all(LogSource(path)))
    assert all(np.array_equal(a, b) for a, b in zip(
        [got.t, got.id, got.extended, got.error, got.remote, got.fd, got.length, got.data], want))


@pytest.mark.parametrize("suffix", [".log", ".asc"])
def test_frame_batches_record_the_bad_lines_frames_records(tmp_path, suffix):
    # GIVEN a text log with a corrupt line in the middle and a last line cut without newline
    path = write_log(tmp_path / f"drive{suffix}")
    lines = path.read_text().splitlines()
    frame_lines = [i for i, line in enumerate(lines) if "101" in line]
    lines[frame_lines[0]] = lines[frame_lines[0]].replace("101", "1Z1")
    lines = lines[:-1] if suffix == ".asc" else lines  # no "End TriggerBlock": the last line is a frame
    lines[-1] = lines[-1][:-3]
    write_lines(path, lines, newline_at_end=False)
    by_frame, by_batch = LogSource(path), LogSource(path)
    frames = read_all(by_frame)
    batches = list(by_batch.frame_batches(threading.Event()))
    # THEN the same frames are kept and the same records made, and nothing needed python-can's reader
    # but the bad lines
    assert Frames.concat(batches).id.tolist() == [m.arbitration_id for m in frames] == [0x100, 0x18FF50E5, 0x102]
    assert by_batch.bad_records == by_frame.bad_records and len(by_frame.bad_records) >= 2
    assert by_batch.parse_counts.slow_lines == 2


def test_frame_batches_stop_when_asked(tmp_path):
    path = write_log(tmp_path / "drive.log")
    stop = threading.Event()
    batches = LogSource(path).frame_batches(stop, max_frames=1)
    assert len(next(batches)) == 1
    stop.set()
    assert list(batches) == []


def test_crlf_log_cut_into_blocks_between_cr_and_lf(tmp_path):
    # GIVEN a CRLF candump whose first 64 KiB end between a CR and its LF, and whose last line ends in CR
    lines = ["(0.000000) can0 1234#0102030405"] + [f"({i / 1000:.6f}) can0 123#0102030405" for i in range(1, 2100)]
    lines[2060] = "(2.060000) can0 1Z3#0102030405"  # a bad line after the cut: its number must be right
    data = "\r\n".join(lines) + "\r"
    assert data.encode()[65535:65537] == b"\r\n"
    path = tmp_path / "crlf.log"
    path.write_bytes(data.encode())
    # THEN the bulk parser sees the lines python-can sees, and the last one is not truncated
    source, reference = LogSource(path), LogSource(path)
    got = Frames.concat(list(source.frame_batches(threading.Event(), max_frames=1000)))
    assert got.t.tolist() == [m.timestamp for m in read_all(reference)] and len(got) == len(lines) - 1
    assert [r.line for r in source.bad_records] == [r.line for r in reference.bad_records] == [2061]

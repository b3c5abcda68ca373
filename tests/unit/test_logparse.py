"""Bulk parsing of candump and ASC logs: the same frames and the same bad records as python-can's
readers through LogSource.frames, field by field, for the sample drive, for logs python-can's own
writers make of random frames, and for lines that are corrupt or that only python-can reads."""

from __future__ import annotations

import threading
from pathlib import Path

import can
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.helpers import frame, write_lines
from telemetry.edge.frames import Frames
from telemetry.edge.logparse import ParseCounts, parse_asc, parse_candump
from telemetry.edge.sources import LogSource

ROOT = Path(__file__).resolve().parents[2]
DRIVE = ROOT / "vehicles" / "sample" / "drive.log"
FIELDS = ("t", "id", "extended", "error", "remote", "fd", "length", "data")
PARSE = {".log": parse_candump, ".asc": parse_asc}
UNFIT = ("does not fit 32 bits", "more than CAN FD's 64")


def python_can(path: Path) -> tuple[Frames, list]:
    """What LogSource.frames (python-can's reader, line by line) makes of the log, as columns
    (a frame no row of Frames can hold is a bad record there too)."""
    source = LogSource(path)
    source.time_offset = 0.0  # the bulk parsers give an ASC log's times from 0, as python-can's defaults do
    messages = [m for m in source.frames(threading.Event()) if m is not None]
    return Frames.from_messages(messages), source.bad_records


def bulk(path: Path, chunk_frames: int = 1000) -> tuple[Frames, list, ParseCounts]:
    bad: list = []
    counts = ParseCounts()
    chunks = list(PARSE[path.suffix](path, bad, chunk_frames=chunk_frames, counts=counts))
    assert all(0 < len(c) <= chunk_frames for c in chunks)
    return Frames.concat(chunks), bad, counts


def assert_same(got: Frames, want: Frames) -> None:
    assert len(got) == len(want)
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def assert_same_as_python_can(path: Path, chunk_frames: int = 1000) -> ParseCounts:
    want, want_bad = python_can(path)
    got, bad, counts = bulk(path, chunk_frames)
    assert_same(got, want)
    assert bad == want_bad
    return counts


def write_log(path: Path, messages: list[can.Message]) -> Path:
    with can.Logger(str(path)) as writer:
        for m in messages:
            writer.on_message_received(m)
    return path


def test_sample_drive_is_read_as_python_can_reads_it():
    # GIVEN the sample drive (candump -L), WHEN it is parsed in bulk, in chunks
    counts = assert_same_as_python_can(DRIVE, chunk_frames=4096)
    # THEN every frame equals python-can's, field by field, and no line needed python-can's reader
    reference = Frames.from_messages(list(can.LogReader(str(DRIVE))))
    assert_same(Frames.concat(list(parse_candump(DRIVE, []))), reference)
    assert counts.frames == len(reference) and counts.slow_lines == 0


MIXED = [
    frame(1.0, 0x100, bytes([1, 2, 3, 4]), channel=0),
    frame(1.25, 0x18FF50E5, bytes(range(8)), is_extended_id=True, is_rx=False),
    frame(1.5, 0x7E0, is_remote_frame=True, dlc=8),
    frame(1.75, 0x1ABCDE, is_remote_frame=True, is_extended_id=True),
    frame(2.0, 0, is_error_frame=True),
    frame(2.25, 0x123, bytes(range(64)), is_fd=True, bitrate_switch=True),
    frame(2.5, 0x1F334455, bytes(range(12)), is_fd=True, is_extended_id=True, error_state_indicator=True),
    frame(2.75, 0x7FF, bytes([0xAB] * 5), is_fd=True),
    frame(3.0, 0x001),
    frame(3.5, 0x200, bytes([0xFF])),
]


@pytest.mark.parametrize("suffix", [".log", ".asc"])
def test_every_kind_of_frame_python_cans_writers_make(tmp_path, suffix):
    # GIVEN classic, extended, remote, error and CAN FD frames written by python-can's writer
    path = write_log(tmp_path / f"mixed{suffix}", MIXED)
    # THEN the bulk parser reads each exactly as python-can's reader, with no line left to it
    counts = assert_same_as_python_can(path, chunk_frames=3)
    assert counts.slow_lines == 0 and counts.frames == len(MIXED)


@st.composite
def messages(draw) -> list[can.Message]:
    out = []
    t = draw(st.floats(0, 2e9, allow_nan=False))
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.floats(0, 10, allow_nan=False))
        kind = draw(st.sampled_from(["classic", "remote", "error", "fd"]))
        extended = draw(st.booleans())
        can_id = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
        common = {"timestamp": t, "arbitration_id": can_id, "is_extended_id": extended, "is_rx": draw(st.booleans()),
                  "channel": draw(st.sampled_from([None, 0, 1]))}
        if kind == "classic":
            out.append(can.Message(data=draw(st.binary(max_size=8)), **common))
        elif kind == "remote":
            out.append(can.Message(is_remote_frame=True, dlc=draw(st.integers(0, 8)), **common))
        elif kind == "error":
            out.append(can.Message(is_error_frame=True, **common))
        else:
            size = draw(st.sampled_from([0, 1, 7, 8, 12, 16, 20, 24, 32, 48, 64]))
            out.append(can.Message(is_fd=True, data=draw(st.binary(min_size=size, max_size=size)),
                                   bitrate_switch=draw(st.booleans()), error_state_indicator=draw(st.booleans()),
                                   **common))
    return out


@settings(max_examples=60)
@given(messages(), st.sampled_from([".log", ".asc"]), st.integers(1, 30))
def test_random_frames_as_python_can_reads_them(tmp_path_factory, frames, suffix, chunk_frames):
    path = write_log(tmp_path_factory.mktemp("random") / f"random{suffix}", frames)
    counts = assert_same_as_python_can(path, chunk_frames)
    assert counts.slow_lines == 0


@settings(max_examples=80)
@given(messages(), st.sampled_from([".log", ".asc"]), st.data())
def test_damaged_logs_give_the_same_frames_and_bad_records(tmp_path_factory, frames, suffix, data):
    # GIVEN a log with lines cut short, bytes replaced (by anything, tabs and UTF-8 included) and
    # maybe no newline at the end
    path = write_log(tmp_path_factory.mktemp("damaged") / f"damaged{suffix}", frames)
    lines = [ASC_HEADER[0] if line.startswith("date ") else line for line in path.read_text().split("\n")]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        at = data.draw(st.integers(0, len(line)))
        char = data.draw(st.sampled_from(list("#.xX rR09aFG\t\r-+_é()")))
        lines[i] = data.draw(st.sampled_from([line[:at], line[:at] + char + line[at + 1:], line[:at] + char + line[at:],
                                              line[:at] + line[at + 1:]]))
    text = "\n".join(lines)
    path.write_text(text.rstrip("\n") if data.draw(st.booleans()) else text)
    # THEN the bulk parser keeps every good frame and records every bad line as LogSource does
    assert_same_as_python_can(path, chunk_frames=data.draw(st.integers(1, 8)))


def test_candump_corrupt_lines_are_skipped_and_named(tmp_path):
    # GIVEN the corrupt candump of test_sources: a bad id, a bad timestamp, a line cut by a power loss
    path = write_lines(
        tmp_path / "cut.log",
        [
            "(1.000000) can0 100#01020304",
            "(1.100000) can0 1Z0#0102",
            "(1.200000) can0 101#0001020304050607",
            "(1.3000 can0 garbage",
            "(1.400000) can0 102#0707070707070707",
            "(1.500000) can0 10",
        ],
        newline_at_end=False,
    )
    frames, bad, counts = bulk(path)
    # THEN the good frames are kept and the bad lines named with their reasons, as LogSource does
    assert frames.id.tolist() == [0x100, 0x101, 0x102] and frames.t.tolist() == [1.0, 1.2, 1.4]
    assert [(r.file, r.line) for r in bad] == [(str(path), 2), (str(path), 4), (str(path), 6)]
    assert "invalid literal for int() with base 16: '1Z0'" in bad[0].reason and "1Z0" in bad[0].text
    assert "ValueError" in bad[1].reason and "not enough values to unpack" in bad[2].reason
    assert counts.slow_lines == 3
    assert_same_as_python_can(path)


def test_asc_corrupt_byte_and_truncated_frame(tmp_path):
    # GIVEN the ASC log of test_sources, a data byte corrupted and the last frame cut short
    path = write_log(tmp_path / "drive.asc", MIXED[:2] + [frame(2.5, 0x102, bytes([7] * 8)), frame(3.0, 0x103, b"\x05")])
    lines = path.read_text().splitlines()
    data_lines = [i for i, line in enumerate(lines) if " Rx " in line or " Tx " in line]
    lines[data_lines[1]] = lines[data_lines[1]].replace("00 01 02", "00 0G 02")
    lines[data_lines[-1]] = lines[data_lines[-1]].rsplit(" ", 1)[0]
    write_lines(path, lines)
    frames, bad, _ = bulk(path)
    # THEN the frames after the bad line are read with the header's base, and the cut frame is named
    assert frames.id.tolist() == [0x100, 0x102]
    assert [r.line for r in bad] == [data_lines[1] + 1, data_lines[-1] + 1]
    assert "invalid literal for int() with base 16: '0G'" in bad[0].reason
    assert "DLC 1 but 0 data bytes" in bad[1].reason
    assert_same_as_python_can(path)


@pytest.mark.parametrize("last", ["(9.000000) can0 1FF#0102", "(9.000000) can0 1FF#010", "(9.000000) can0 1FF#01 R",
                                  "(9.0) can0", "   "])
def test_candump_last_line_without_newline(tmp_path, last):
    # a good frame, a cut frame (a DLC check and a truncated line), a cut line that python-can fails on,
    # a blank line: each recorded exactly as LogSource records it
    path = write_lines(tmp_path / "end.log", ["(1.000000) can0 100#01", last], newline_at_end=False)
    assert_same_as_python_can(path)


@pytest.mark.parametrize("last", ["End TriggerBlock", "   2.000000 1  123  Rx   d 8 01 02", "   2.000000 1  123  Rx"])
def test_asc_last_line_without_newline(tmp_path, last):
    path = write_log(tmp_path / "end.asc", MIXED[:3])
    lines = path.read_text().splitlines()[:-1] + [last]
    write_lines(path, lines, newline_at_end=False)
    _, bad, _ = bulk(path)
    assert bad and bad[-1].line == len(lines)
    assert_same_as_python_can(path)


CANDUMP_ODDITIES = [
    "(1.000000) can0 100#0102 R",  # the common case
    "  (1.100000)  can0   101#0A0b  t  ",  # spaces around and between: python-can splits them away
    "(1.200000)\tcan0\t102#01",  # tabs
    "(1.300000) can0 0x1F#01",  # int() reads a 0x prefix
    "(1.400000) can0 1_2#01",  # and underscores
    "(1.500000) can0 123#r",  # lowercase remote
    "(1.600000) can0 123#R8",  # remote with a DLC
    "(1.700000) can0 123#R12",  # remote with a two-digit DLC
    "(1.800000) can0 123##3AABB",  # CAN FD with flags
    "(1.900000) can0 0123#01",  # 4 digits: an extended id
    "(1.000000001) can0 124#01",  # nanoseconds
    "(1782900000.123456789) can0 125#02",  # nanoseconds on an epoch: not exact as n / 10**9
    "(1e3) can0 126#03",  # float() reads exponents
    "[2.000000] can0 127#04",  # python-can ignores what encloses the timestamp
    "(2.100000) can0 20000004#0000000000000000",  # error flag without the bus-error bit: a frame
    "(2.200000) can0 200000FF##1",  # error frame written as CAN FD
    "(2.300000) can0 123#" + "00" * 65,  # 65 bytes: python-can's frame, no CAN frame
    "(2.400000) can0 123#" + "11" * 64,  # 64 bytes without FD marker
    "(2.500000) cän0 128#05",  # UTF-8
    "(2.600000) can0 129#06 X",  # an unknown direction letter
    "",
    "(2.700000) can0 12A#07\r",  # CR LF
    "(2.800000) can0 12B#08\r(2.900000) can0 12C#09",  # a lone CR ends a line too
]


def test_candump_lines_only_python_can_reads_are_left_to_it(tmp_path):
    path = write_lines(tmp_path / "odd.log", CANDUMP_ODDITIES)
    counts = assert_same_as_python_can(path, chunk_frames=4)
    assert 0 < counts.slow_lines < len(CANDUMP_ODDITIES) - 2
    _, bad, _ = bulk(path)
    unfit = [r for r in bad if r.reason.endswith(UNFIT)]
    assert [(r.line, r.reason) for r in unfit] == [(17, "65 data bytes, more than CAN FD's 64")]


ASC_HEADER = ["date Thu Nov 26 09:15:12.123 pm 2026", "base hex  timestamps absolute", "// a comment",
              "internal events logged", "Begin Triggerblock Thu Nov 26 09:15:12.123 pm 2026",
              "   0.000000 Start of measurement"]
ASC_ODDITIES = [
    "   0.100000 1  123             Rx   d 8 01 02 03 04 05 06 07 08",
    "   0.110000 1  123             Rx   d 8 01 02 03 04 05 06 07 08  Length = 228000 BitCount = 118 ID = 291",
    "   0.120000 2  18FF50E5x       Tx   d 2 0A b",  # one-digit and lowercase bytes
    "   0.130000 1  7E0             Rx   r 8",
    "   0.140000 1  7E1             Rx   r",
    "   0.150000 1  ErrorFrame       00 00 00 01",
    "   0.160000 1  ErrorFrameECC",
    "   0.170000 1  124             TxRq d 1 05",
    "   0.180000 1  125             Rx   d 0",
    "   0.190000 1  126             Rx   d 2 01 02 03",  # more bytes than the DLC: python-can takes 2
    "   0.200000 1  127             Rx   d C 01 02 03 04 05 06 07 08",  # DLC 12 on a classic line
    "   0.210000 1  128             XX   d 1 01",  # no direction: not a frame line for python-can
    "   0.220000 1  Statistic: D 1 R 0 XD 0 XR 0 E 0 O 0 B 0.10%",
    "   0.230000 CANFD   1 Rx        123                                   1 0 f 64 " + "AA " * 64 + "0 0 1000 0 0 0 0 0",
    "   0.240000 CANFD   2 Tx   1FFFFFFFx  EngineData  0 1 9 12 " + "01 " * 12 + "0 0 1000 0 0 0 0 0",
    "   0.250000 CANFD   1 Rx        321                                   1 0 8  0 0 0 1000 0 0 0 0 0",
    "   0.260000 CANFD   1 Rx   ErrorFrame",
    "   0.270000 CANFD   1 Rx        322                                   1 0 9  8 " + "02 " * 8 + "0 0",
    "   0.280000 canfd   1 Rx        323  1 0 1 1 01 0 0",  # python-can wants CANFD in capitals
    "   0.290000\t1  129             Rx   d 1 01",
    "   0.300000 1  0x12A           Rx   d 1 01",
    "   1.0000000000000001 1  12B   Rx   d 1 01",  # more digits than a float holds
    "   0.310000 1  12C             Rx   d 1 1FF",  # not a byte
    "End TriggerBlock",
]


def test_asc_lines_only_python_can_reads_are_left_to_it(tmp_path):
    path = write_lines(tmp_path / "odd.asc", ASC_HEADER + ASC_ODDITIES)
    counts = assert_same_as_python_can(path, chunk_frames=5)
    assert 0 < counts.slow_lines < len(ASC_ODDITIES) // 2


def test_asc_decimal_base(tmp_path):
    lines = [line.replace("base hex", "base dec") for line in ASC_HEADER] + [
        "   0.100000 1  291             Rx   d 8 1 2 3 4 5 6 7 255",
        "   0.110000 1  536870911x      Rx   d 2 10 20",
        "   0.120000 1  292             Rx   d 1 256",  # not a byte
        "   0.130000 1  29A             Rx   d 1 1",  # a hex digit in a decimal log
    ]
    path = write_lines(tmp_path / "dec.asc", lines)
    frames, bad, _ = bulk(path)
    assert frames.id.tolist() == [291, 536870911] and frames.data[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 255]
    assert [r.line for r in bad] == [len(ASC_HEADER) + 3, len(ASC_HEADER) + 4]
    assert_same_as_python_can(path)


@pytest.mark.parametrize("header", [
    ["base HEX timestamps absolute", "internal events logged"],  # python-can's header parser fails on it
    ["date Thu Nov 26 09:15:12.123 pm 2026", "base hex"],  # no "internal events logged": one line more is eaten
    [],  # no header at all: python-can's header parser eats the first frame line
    ["", "base dec"],  # a blank line ends the header: the base stays hex
])
def test_asc_headers_are_read_by_python_cans_own_rules(tmp_path, header):
    path = write_lines(tmp_path / "header.asc", [*header, *ASC_ODDITIES[:6]])
    assert_same_as_python_can(path)


def test_asc_header_only_cut_without_newline(tmp_path):
    path = write_lines(tmp_path / "header.asc", ["date Thu Nov 26 09:15:12.123 pm 2026", "base hex"],
                       newline_at_end=False)
    _, bad, _ = bulk(path)
    assert [r.line for r in bad] == [2]
    assert_same_as_python_can(path)


def test_empty_logs(tmp_path):
    for suffix in (".log", ".asc"):
        path = tmp_path / f"empty{suffix}"
        path.write_text("")
        frames, bad, _ = bulk(path)
        assert len(frames) == 0 and bad == []

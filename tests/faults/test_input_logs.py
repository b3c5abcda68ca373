"""Issue 11, points 9 and 15: logs that are not what they claim to be.

9: a frame longer than its bus allows is a bad record, never decoded; a frame whose length is not
   its DBC message's is counted per id, with the reason.
15: an empty or garbage .blf/.mf4 is one line naming the file and exit status 2; garbage in an
   .asc counts every bad line; a UTF-8 byte-order mark does not cost the first frame.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from telemetry.edge.decode import DbcDecoder
from telemetry.edge.errors import LogFormatError
from telemetry.edge.frames import Frames
from telemetry.edge.reader import ReaderCore
from telemetry.edge.sources import LogSource

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
DRIVE_LINES = (SAMPLE / "drive.log").read_text().splitlines()[:40]
ASC_HEADER = ["date Thu Nov 26 09:15:12.123 pm 2026", "base hex  timestamps absolute", "internal events logged",
              "Begin Triggerblock Thu Nov 26 09:15:12.123 pm 2026", "   0.000000 Start of measurement"]
ASC_DEC = [f"   {i / 100:.6f} 1  256             Rx   d 8 {i} 57 144 253 164 1 0 10" for i in range(1, 41)]
ASC_FRAMES = [f"   {i / 100:.6f} 1  100             Rx   d 8 0{i % 10} 39 90 FD A4 01 00 00" for i in range(1, 41)]


def both_ways(path: Path) -> tuple[tuple[int, list[str]], tuple[int, list[str]]]:
    """(frames, bad record reasons) as the bulk parser and as python-can's reader line by line read the log."""
    bulk = LogSource(path)
    n_bulk = sum(len(f) for f in bulk.frame_batches(threading.Event()))
    each = LogSource(path)
    n_each = sum(1 for m in each.frames(threading.Event()) if m is not None)
    return ((n_bulk, [r.reason for r in bulk.bad_records]), (n_each, [r.reason for r in each.bad_records]))


# -- 15: binary logs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".blf", ".mf4"])
@pytest.mark.parametrize("content", [b"", bytes(random.Random(7).randrange(256) for _ in range(3000))],
                         ids=["empty", "garbage"])
def test_an_unreadable_binary_log_is_refused_when_opened(tmp_path, suffix, content):
    path = tmp_path / f"drive{suffix}"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=f"^{path}: "):
        LogSource(path)


def test_the_replay_command_says_one_line_and_exits_2_on_a_garbage_blf(tmp_path):
    path = tmp_path / "drive.blf"
    path.write_bytes(b"LOGG" + bytes(300))
    done = subprocess.run([sys.executable, "-m", "telemetry", "replay", str(path), "--dbc", str(SAMPLE / "solar_car.dbc"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and str(path) in done.stderr


# -- 15: text logs -----------------------------------------------------------------------------------------


def test_every_garbage_line_of_an_asc_log_is_counted(tmp_path):
    rng = random.Random(11)
    garbage = ["".join(rng.choice("abcdefXYZ0123456789 .#:;!") for _ in range(rng.randrange(5, 60))).strip() or "x"
               for _ in range(len(ASC_FRAMES))]
    garbage = [g if not g[0].isdigit() else "z" + g for g in garbage]  # a leading number would be an event line
    body = [line for pair in zip(ASC_FRAMES, garbage) for line in pair]
    path = tmp_path / "damaged.asc"
    path.write_text("\n".join(ASC_HEADER + body + ["End TriggerBlock"]) + "\n")
    bulk, each = both_ways(path)
    assert bulk == each
    assert bulk[0] == len(ASC_FRAMES)
    assert bulk[1] == ["not a line of an ASC log"] * len(garbage)
    # AND Vector's event lines, which carry no frame, are no garbage
    events = ["   1.000000 1  Statistic: D 0 R 0 XD 0 XR 0 E 0 O 0 B 0.00%", "   1.100000 CAN 1 Status:chip status error active",
              "// a comment", "   1.200000 1  J1939TP FEEBp 6 0 0 - Rx d 23 00 01 02"]
    path.write_text("\n".join(ASC_HEADER + ASC_FRAMES[:5] + events + garbage[:1] + ["End TriggerBlock"]) + "\n")
    assert both_ways(path) == ((5, ["not a line of an ASC log"]),) * 2


@pytest.mark.parametrize("suffix", [".log", ".asc"])
def test_a_utf8_byte_order_mark_does_not_cost_the_first_frame(tmp_path, suffix):
    # (an ASC log in decimal: read as hex, as it would be without its header, its frames differ)
    lines = DRIVE_LINES if suffix == ".log" else [line.replace("hex", "dec") for line in ASC_HEADER] + ASC_DEC
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text("\n".join(lines) + "\n")
    marked.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    want = both_ways(plain)
    assert want[0][1] == [] and want[0][0] == 40
    assert both_ways(marked) == want
    frames = [Frames.concat(list(LogSource(p).frame_batches(threading.Event()))) for p in (plain, marked)]
    assert frames[0].id.tolist() == frames[1].id.tolist() and frames[0].data.tolist() == frames[1].data.tolist()


# -- 9: impossible frames -----------------------------------------------------------------------------------


def test_frames_longer_than_their_bus_allows_are_bad_records_never_decoded(tmp_path):
    path = tmp_path / "long.log"
    lines = [DRIVE_LINES[0],
             "(1782900000.010000) can0 100#" + "00" * 9,  # classic, 9 bytes
             "(1782900000.020000) can0 100#" + "11" * 17,  # classic, 17 bytes
             "(1782900000.030000) can0 100#" + "22" * 5_000,  # classic, 5,000 bytes
             "(1782900000.040000) can0 100##1" + "33" * 9,  # CAN FD, 9 bytes: no CAN FD length
             "(1782900000.050000) can0 100##1" + "44" * 12,  # CAN FD, 12 bytes: a frame
             DRIVE_LINES[1]]
    path.write_text("\n".join(lines) + "\n")
    bulk, each = both_ways(path)
    assert bulk[0] == 3 and bulk[1][:2] == ["classic CAN frame with 9 data bytes (at most 8)",
                                            "classic CAN frame with 17 data bytes (at most 8)"]
    assert len(bulk[1]) == 4 and "CAN FD frame with 9 data bytes" in bulk[1][3]
    assert each[0] == bulk[0] and each[1][:2] == bulk[1][:2]


def test_a_frame_of_another_length_than_its_dbc_message_is_counted_per_id_with_the_reason(tmp_path):
    path = tmp_path / "lengths.log"
    path.write_text("\n".join([DRIVE_LINES[0],  # 0x100, 8 bytes as the DBC says
                               "(1782900000.010000) can0 100#003990FDA401",  # 6 bytes: cannot decode
                               "(1782900000.020000) can0 100##1" + "00" * 12,  # CAN FD, 12 bytes: decodes, counted
                               ]) + "\n")
    core = ReaderCore(DbcDecoder([SAMPLE / "solar_car.dbc"]), "test")
    for chunk in LogSource(path).frame_batches(threading.Event()):
        core.batch_message(chunk)
    faults = core.faults()
    assert faults["length_mismatch_ids"] == {"0x100": {"frames": 2, "reason": "BMS_PackStatus: 6, 12 data bytes, the DBC says 8"}}
    assert core.totals["decoded"] == 2 and core.totals["decode_error"] == 1


def test_a_live_bus_frame_longer_than_classic_can_is_refused(tmp_path):
    import can

    from telemetry.edge.sources import BusSource

    with can.Bus(interface="virtual", channel="faults-long", receive_own_messages=True) as bus:
        bus.send(can.Message(arbitration_id=0x100, data=bytes(8), is_extended_id=False))
        bus.send(can.Message(arbitration_id=0x100, data=bytes(12), is_extended_id=False, check=False, dlc=12))
        source = BusSource(bus, idle_timeout=0.05)
        stop = threading.Event()
        got = []
        for msg in source.frames(stop):
            if msg is None:
                break
            got.append(msg)
    assert len(got) == 1 and source.refused == 1
    assert "classic CAN frame with 12 data bytes" in source.bad_records[0].reason
    assert len(Frames.from_messages(got)) == 1

"""An ASC log's frames carry real time: its header's date plus each line's offset, as python-can's
``ASCReader(relative_timestamp=False)`` reads them, on both of LogSource's paths."""

from __future__ import annotations

import threading
from pathlib import Path

import can
import numpy as np
import pytest

from telemetry.edge.frames import Frames
from telemetry.edge.logparse import asc_start_time
from telemetry.edge.sources import LogSource

ASC = """date Sat Jun 22 09:44:02 pm 2024
base hex timestamps absolute
// CAN channel: 1 2
Begin Triggerblock
      0.332004112 1  300          Tx   d   8 02 2C 04 17 06 18 00 00
      0.340903612 1  752          Rx   d   8 00 00 40 3C 7D 40 F5 3F
      1.500000000 1  300          Tx   d   8 02 2C 04 17 06 18 00 01
End TriggerBlock
"""


def write(tmp_path: Path, text: str, name: str = "drive.asc") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_header_date_starts_the_log_as_python_can_reads_it(tmp_path):
    path = write(tmp_path, ASC)
    want = [m.timestamp for m in can.ASCReader(str(path), relative_timestamp=False)]
    assert want[0] > 1.7e9  # 2024, not 1970
    start, text = asc_start_time(path)
    assert text == "Jun 22 09:44:02 pm 2024"  # python-can drops the weekday
    source = LogSource(path)
    assert source.time_offset == start and source.start_date == text
    fast = Frames.concat(list(source.frame_batches(threading.Event())))
    paced = [m.timestamp for m in LogSource(path).frames(threading.Event()) if m is not None]
    assert fast.t.tolist() == want == paced
    assert np.allclose(np.diff(fast.t), [0.0088995, 1.159096388])


def test_a_log_without_a_date_keeps_times_from_zero(tmp_path):
    path = write(tmp_path, ASC.split("\n", 1)[1])
    assert asc_start_time(path) is None
    fast = Frames.concat(list(LogSource(path).frame_batches(threading.Event())))
    assert fast.t.tolist() == [0.332004112, 0.340903612, 1.5]


def test_a_date_python_can_does_not_understand_is_not_guessed(tmp_path):
    path = write(tmp_path, ASC.replace("Sat Jun 22 09:44:02 pm 2024", "Sat sometime in June"))
    assert asc_start_time(path) is None
    assert LogSource(path).time_offset == 0.0


@pytest.mark.parametrize("events", [True, False])
def test_a_trigger_block_date_replaces_the_header_date_where_python_can_reads_it(tmp_path, events):
    # python-can's own writer: the header's date is when the file was written, the trigger
    # block's (after "internal events logged") is the first frame's time. Without that line,
    # python-can's header parser swallows the trigger block line: the header's date stays.
    header_end = "internal events logged\n" if events else ""
    text = ASC.replace("Begin Triggerblock\n", f"{header_end}Begin Triggerblock Sat Jun 22 10:00:00.5 pm 2024\n")
    path = write(tmp_path, text)
    want = [m.timestamp for m in can.ASCReader(str(path), relative_timestamp=False)]
    assert Frames.concat(list(LogSource(path).frame_batches(threading.Event()))).t.tolist() == want
    header_only = asc_start_time(write(tmp_path, ASC, "header_only.asc"))[0]
    assert asc_start_time(path)[1] == ("Jun 22 10:00:00.5 pm 2024" if events else "Jun 22 09:44:02 pm 2024")
    assert want[0] - header_only == pytest.approx((15 * 60 + 58.5 if events else 0) + 0.332004112)

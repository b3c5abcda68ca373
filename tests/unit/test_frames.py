"""Frames as columns: python-can's frames in and out unchanged, batches joined and cut."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from support.helpers import frame
from telemetry.edge.frames import Frames

MESSAGES = [
    frame(1.5, 0x123, b"\x01\x02"),
    frame(2.0, 0x1FFFFFFF, bytes(range(12)), is_fd=True),
    frame(2.5, 0x7E0, is_remote_frame=True),
    frame(3.0, 0x20000004, bytes(8), is_error_frame=True),
]


def fields(m):
    return (m.timestamp, m.arbitration_id, m.is_extended_id, m.is_error_frame, m.is_remote_frame, m.is_fd, bytes(m.data))


def test_python_can_frames_round_trip_through_columns():
    cols = Frames.from_messages(MESSAGES)
    assert len(cols) == 4 and cols.data.shape == (4, 64)  # one FD frame of 12 bytes: 64 wide
    assert cols.length.tolist() == [2, 12, 0, 8] and cols.extended.tolist() == [False, True, False, True]
    assert cols.data[0, :3].tolist() == [1, 2, 0]  # zero-padded past the frame's length
    assert [fields(m) for m in cols.to_messages()] == [fields(m) for m in MESSAGES]


def test_classic_batches_are_eight_bytes_wide_and_join_with_fd_ones():
    classic = Frames.from_messages(MESSAGES[:1])
    assert classic.data.shape == (1, 8)
    joined = Frames.concat([classic, Frames.from_messages(MESSAGES[1:2]), Frames.empty()])
    assert joined.data.shape == (2, 64) and joined.id.tolist() == [0x123, 0x1FFFFFFF]
    assert joined.take(np.array([False, True])).t.tolist() == [2.0]
    assert len(Frames.concat([])) == 0


@given(st.lists(st.tuples(st.integers(0, 64), st.booleans(), st.booleans(), st.integers(0, 0x1FFFFFFF)), max_size=40))
def test_any_mix_of_frames_round_trips_through_columns(specs):
    """Full and short payloads, FD and classic, remote frames with no data: every row is the
    frame's bytes, zero-padded to the batch's width (8, or 64 once a frame carries more than 8)."""
    messages = [frame(float(i), ident, bytes((i + j) % 256 for j in range(size)), is_fd=size > 8 or fd,
                      is_remote_frame=remote and size == 0) for i, (size, fd, remote, ident) in enumerate(specs)]
    cols = Frames.from_messages(messages)
    width = 64 if any(len(m.data) > 8 for m in messages) else 8
    assert cols.data.shape == (len(messages), width)
    for row, m in zip(cols.data.tolist(), messages):
        assert bytes(row) == bytes(m.data) + bytes(width - len(m.data))
    assert [fields(m) for m in cols.to_messages()] == [fields(m) for m in messages]

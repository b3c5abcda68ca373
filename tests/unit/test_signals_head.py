"""``Signals.head_from_bytes`` (what the replay's taps read of a signals batch when the components
decode theirs in other processes) against ``Signals.from_bytes``, the whole decoding, as the
reference: the same span, counters and sample count for every payload the decoding accepts, and
the same refusal, with the same reason, for every payload it refuses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.edge.errors import MessageError
from telemetry.edge.messages import COLUMNS_MAGIC, EVENT_COUNTERS, FRAME_COUNTERS, FlatBatch, Signals
from telemetry.tools.taps import ReplayTaps

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def signals(draw) -> Signals:
    names = draw(st.lists(st.text("abcXYZ_.0", min_size=1, max_size=6), unique=True, max_size=5))
    counts = [draw(st.integers(0, 6)) for _ in names]
    total = sum(counts)
    values = floats if draw(st.booleans()) else finite  # a NaN or an infinity now and then
    t = np.array(draw(st.lists(values, min_size=total, max_size=total)), dtype=np.float64)
    v = np.array(draw(st.lists(values, min_size=total, max_size=total)), dtype=np.float64)
    events = {key: np.array(draw(st.lists(values, max_size=3)), dtype=np.float64)
              for key in draw(st.lists(st.sampled_from(EVENT_COUNTERS), unique=True))}
    frames = {key: draw(st.integers(0, 10**12)) for key in draw(st.lists(st.sampled_from(FRAME_COUNTERS), unique=True))}
    span = sorted([draw(finite), draw(finite)])
    batch = FlatBatch(tuple(names), np.repeat(np.arange(len(names)), counts), t, v)
    return Signals(draw(st.text(max_size=5)), draw(st.integers(0, 2**40)), span[0], span[1], frames, batch, events)


def payload(message: Signals, **changes) -> bytes:
    """The message's binary form, with its JSON header changed (a key set to None is removed)."""
    wire = message.to_bytes()
    size = struct.unpack_from("<I", wire, 4)[0]
    head = json.loads(wire[8:8 + size])
    for key, value in changes.items():
        if value is None:
            head.pop(key, None)
        else:
            head[key] = value
    text = json.dumps(head).encode()
    return struct.pack("<4sI", COLUMNS_MAGIC, len(text)) + text + wire[8 + size:]


def outcome(read, data: bytes):
    try:
        return read(data)
    except MessageError as exc:
        return f"refused: {exc}"


def same(data: bytes) -> None:
    full, head = outcome(Signals.from_bytes, data), outcome(Signals.head_from_bytes, data)
    if isinstance(full, str):
        assert head == full
    else:
        assert not isinstance(head, str), head
        assert (head.source, head.seq, head.start, head.end, dict(head.frames), head.samples) == \
               (full.source, full.seq, full.start, full.end, dict(full.frames), len(full.batch))


@given(signals())
def test_a_batch_as_sent_reads_the_same(message):
    same(message.to_bytes())


@given(signals(), st.data())
def test_a_damaged_batch_is_refused_for_the_same_reason(message, data):
    wire = bytearray(message.to_bytes())
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "prefix"]))
    if how == "flip" and wire:
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del wire[data.draw(st.integers(0, len(wire))):]
    elif how == "grow":
        wire += bytes(data.draw(st.integers(1, 17)))
    else:
        wire[4:8] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    same(bytes(wire))


ODD = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), st.text(max_size=3),
                st.lists(st.integers(-1, 3), max_size=3), st.dictionaries(st.sampled_from(["start", "end", "read", "x"]),
                                                                          st.one_of(st.integers(-2, 5), finite, st.text(max_size=2)), max_size=3))


@given(signals(), st.sampled_from(["v", "kind", "span", "frames", "seq", "names", "counts", "columns", "events", "source"]), ODD)
def test_a_header_of_wrong_fields_is_refused_for_the_same_reason(message, key, value):
    same(payload(message, **{key: value}))


def test_every_reason_is_reached():
    # the checks past the layout, each on its own (the property tests may not draw each of them)
    message = Signals("s", 1, 0.0, 1.0, {"read": 3}, FlatBatch(("a",), np.zeros(2, np.int64), np.array([0.0, 1.0]),
                                                            np.array([1.0, np.nan])), {"error": np.array([np.inf])})
    reasons = [outcome(Signals.head_from_bytes, data) for data in (
        message.to_bytes(),
        payload(message, span={"start": "x", "end": 1}),
        payload(message, frames={"read": -1}),
        payload(message, seq=-1),
        b"TLMC",
        b"",
    )]
    assert reasons == [outcome(Signals.from_bytes, d) for d in (message.to_bytes(), payload(message, span={"start": "x", "end": 1}),
                                                              payload(message, frames={"read": -1}), payload(message, seq=-1),
                                                              b"TLMC", b"")]
    assert reasons[0] == "refused: signals message has a time or value that is not a finite number"
    assert all(isinstance(r, str) for r in reasons)


@pytest.mark.parametrize("shared", [False, True])
def test_the_taps_count_the_same_from_the_header_as_from_the_message(shared):
    from telemetry.edge.messages import Shared

    good = Signals("r", 0, 10.0, 12.5, {"read": 7, "decoded": 5}, FlatBatch(("a",), np.zeros(2, np.int64), np.array([10.0, 11.0]),
                                                                            np.array([1.0, 2.0])))
    empty = Signals("r", 1, 13.0, 14.0, {}, FlatBatch.empty())
    bad = payload(good, span=None)
    wrap = Shared if shared else bytes
    taps = ReplayTaps()
    for data in (good.to_bytes(), empty.to_bytes(), bad):
        taps.take(wrap(data))
    # the empty batch holds no samples but carries its (zero) counters: it moves the latest time on
    assert (taps.frames_read, taps.first, taps.latest, taps.refused) == (7, 10.0, 14.0, 1)

"""The binary signals batch written and read with fewer Python calls, against the code as it was
(``support.messages_before``): the same bytes for any batch, the same message back from any
payload, the same refusal (and reason) of a malformed one; and the decoder's order of a batch's
samples (``decode._by_name_then_row``) against the full sort it replaces."""

from __future__ import annotations

import json
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from support import messages_before
from telemetry.edge import decode, messages
from telemetry.edge.errors import MessageError

names_ = st.lists(st.text(min_size=1, max_size=12), max_size=12, unique=True)
floats_ = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def signals(draw):
    names = draw(names_)
    counts = [draw(st.integers(0, 5)) for _ in names]
    total = sum(counts)
    t = np.array(draw(st.lists(floats_, min_size=total, max_size=total)), np.float64)
    v = np.array(draw(st.lists(floats_, min_size=total, max_size=total)), np.float64)
    ids = np.repeat(np.arange(len(names)), counts)
    events = {key: np.array(draw(st.lists(floats_, max_size=4)), np.float64)
              for key in draw(st.lists(st.sampled_from(messages.EVENT_COUNTERS), unique=True))}
    frames = draw(st.dictionaries(st.sampled_from(messages.FRAME_COUNTERS), st.integers(0, 2**40)))
    span = draw(st.tuples(st.floats(width=64), st.floats(width=64)))
    return messages.Signals(draw(st.text(max_size=8)), draw(st.integers(0, 2**40)), span[0], span[1], frames,
                            messages.FlatBatch(tuple(names), ids, t, v), events)


def same(got: messages.Signals, want: messages.Signals) -> None:
    assert (got.source, got.seq, got.start, got.end, dict(got.frames)) == \
           (want.source, want.seq, want.start, want.end, dict(want.frames))
    assert got.batch.names == want.batch.names
    for a, b in ((got.batch.ids, want.batch.ids), (got.batch.t, want.batch.t), (got.batch.v, want.batch.v)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert got.events.keys() == want.events.keys()
    assert all(got.events[k].tobytes() == want.events[k].tobytes() for k in got.events)


def outcome(fn, *args):
    try:
        return fn(*args), None
    except (MessageError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


@settings(max_examples=150)
@given(signals())
def test_a_batch_is_the_bytes_it_was_and_reads_back_as_before(message):
    got, error = outcome(message.to_bytes)
    want, want_error = outcome(messages_before.to_bytes, message)
    assert error == want_error  # a NaN span is no JSON either way
    if want is None:
        return
    assert got == want
    read, read_error = outcome(messages.Signals.from_bytes, got)
    before, before_error = outcome(messages_before.from_bytes, want)
    assert read_error == before_error  # a NaN or infinite time or value is refused alike
    if before is not None:
        same(read, before)


def test_names_kept_as_json_follow_the_batch():
    """The same names twice, then others: each payload says its own."""
    a = messages.FlatBatch(("x", "y"), np.array([0, 1]), np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    b = messages.FlatBatch(("y", "é\"\\"), np.array([0, 1]), np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    for batch in (a, a, b, a):
        message = messages.Signals("s", 1, 0.0, 1.0, {}, batch)
        assert message.to_bytes() == messages_before.to_bytes(message)
        assert messages.Signals.from_bytes(message.to_bytes()).batch.names == batch.names


odd_counts = st.one_of(st.integers(-3, 6), st.integers(2**62, 2**70), st.booleans(), st.floats(-2, 6),
                       st.text(max_size=2), st.none(), st.lists(st.integers(0, 2), max_size=2))


@settings(max_examples=300)
@given(st.lists(st.text(min_size=0, max_size=3), max_size=5), st.lists(odd_counts, max_size=6),
       st.one_of(st.none(), st.dictionaries(st.sampled_from([*messages.EVENT_COUNTERS, "x"]), odd_counts, max_size=3)),
       st.integers(0, 80))
def test_a_malformed_payload_is_refused_as_before(names, counts, events, extra):
    head = {"v": 1, "kind": "signals", "span": {"start": 0.0, "end": 1.0}, "names": names, "counts": counts,
            "columns": {"t": "<f8", "v": "<f8"}}
    if events is not None:
        head["events"] = events
    text = json.dumps(head).encode()
    text += b" " * (-(len(text) + 8) % 8)
    whole = sum(c for c in counts if type(c) is int and 0 <= c < 50)
    payload = struct.pack("<4sI", b"TLMC", len(text)) + text + b"\0" * (16 * whole + 8 * (extra % 3) * (extra > 40))
    got, error = outcome(messages.Signals.from_bytes, payload)
    want, want_error = outcome(messages_before.from_bytes, payload)
    assert error == want_error
    if want is not None:
        same(got, want)


cells = st.integers(0, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6), min_size=n, max_size=n), st.lists(st.integers(0, 2**40), min_size=n, max_size=n),
    st.booleans()))


@settings(max_examples=300)
@given(cells)
def test_cells_are_ordered_by_name_then_row_as_by_the_full_sort(case):
    ids, rows, in_row_order = case
    if not ids:
        return
    ids_, rows_ = np.array(ids, np.int64), np.array(rows, np.int64)
    if in_row_order:  # the common case: the fast path's
        rows_ = np.sort(rows_)
    want = np.argsort(ids_ * (int(rows_.max()) + 1) + rows_, kind="stable")
    assert decode._by_name_then_row(ids_, rows_, int(ids_.max()) + 1).tolist() == want.tolist()
    assert decode._by_name_then_row(ids_, rows_, 2**15).tolist() == want.tolist()  # too many names: the full sort

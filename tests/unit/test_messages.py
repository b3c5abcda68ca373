"""Message formats: what a handler accepts, and what it refuses with a reason."""

from __future__ import annotations

import math

import pytest
from support.helpers import columns

from telemetry.edge import messages
from telemetry.edge.errors import MessageError


def test_signals_round_trip():
    cols = columns(**{"A.x": ([1.0, 2.0], [3.0, 4.0])})
    msg = messages.signals_message(source="s", seq=1, start=1.0, end=2.0, frames={"read": 2, "decoded": 2}, signals=cols)
    parsed = messages.parse(msg, messages.SIGNALS)
    got = messages.flat_signals(parsed).columns()
    assert got["A.x"].t.tolist() == [1.0, 2.0] and got["A.x"].v.tolist() == [3.0, 4.0]
    assert msg["v"] == 1 and msg["kind"] == "signals"
    assert set(msg["frames"]) == set(messages.FRAME_COUNTERS)


@pytest.mark.parametrize(
    "event, reason",
    [
        ("text", "not a JSON object"),
        ({"kind": "signals"}, "unsupported message version None"),
        ({"v": 2, "kind": "signals"}, "unsupported message version 2"),
        ({"v": 1, "kind": "bogus"}, "unknown message kind 'bogus'"),
        ({"v": 1, "kind": "alert"}, "unexpected message kind 'alert'"),
        ({"v": 1, "kind": "signals", "signals": {}}, "span"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}}, "without a 'signals' object"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": {"t": [1], "v": []}}}, "1 times but 0 values"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": [1, 2]}}, "not an object"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(event, reason):
    with pytest.raises(MessageError, match=reason):
        messages.parse(event, messages.SIGNALS, messages.END_OF_STREAM)


def test_non_numeric_values_are_refused():
    event = {"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": {"t": [1], "v": ["hot"]}}}
    with pytest.raises(MessageError, match="non-numeric"):
        messages.flat_signals(messages.parse(event))


def test_nan_is_refused_at_the_sender():
    with pytest.raises(MessageError, match="not valid JSON"):
        messages.dumps({"v": 1, "x": math.nan})

"""The frames ``ProcessRuntime`` and its children exchange (``procruntime._Frames``): an event's
bytes unpickled, read whole, must arrive as ``Connection.send``/``recv`` would deliver them (the
old path, kept as the reference): the same messages, the same types, in the same order, mixed
with the plain methods on the same connection, over a real socket pair."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.tools.procruntime import _EVENT, _Frames, _widen


@pytest.fixture()
def pipe() -> Any:
    a, b = multiprocessing.get_context("forkserver").Pipe(duplex=True)
    _widen(a)
    _widen(b)
    yield a, b
    a.close()
    b.close()


def _exchange(a: Any, b: Any, sends: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    """Send ``sends`` from ``a`` (("event", payload) by ``_Frames.send_event``, ("plain", message)
    by ``Connection.send``) in a thread, receive as many with ``_Frames.recv`` on ``b``."""
    out = _Frames(a)
    into = _Frames(b)

    def write() -> None:
        for how, value in sends:
            if how == "event":
                out.send_event(value)
            else:
                a.send(value)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        got = [into.recv() for _ in sends]
    finally:
        writer.join(30)
        out.close()
        into.close()
    return got


def _expected(sends: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    return [("event", value) if how == "event" else value for how, value in sends]


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert got == want
    for g, w in zip(got, want):  # bytes stay bytes, a bytearray a bytearray
        assert [type(x) for x in g] == [type(x) for x in w]


payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=4).map(lambda head: head + os.urandom(70_000)),  # over one write
    st.sampled_from([b"", _EVENT, _EVENT + b"x", b"\x80\x04", b"\x80\x04\x95", b"TLMC"]),  # a frame's markers
)
messages = st.one_of(
    st.tuples(st.just("event"), payloads),
    st.tuples(st.just("event"), payloads.map(bytearray)),  # not bytes: pickled, received as it was
    st.tuples(st.just("plain"), st.tuples(st.just("event"), payloads)),  # an event by the plain method
    st.tuples(st.just("plain"), st.tuples(st.sampled_from(["call", "stop", "cloud_done"]),
                                          st.one_of(st.none(), st.text(max_size=20), st.integers()))),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(messages, min_size=1, max_size=12))
def test_frames_deliver_what_the_plain_connection_would(sends: list[tuple[str, Any]]) -> None:
    a, b = multiprocessing.get_context("forkserver").Pipe(duplex=True)
    try:
        _same(_exchange(a, b, sends), _expected(sends))
    finally:
        a.close()
        b.close()


def test_a_batch_larger_than_the_socket_buffer_arrives_whole(pipe: Any) -> None:
    a, b = pipe
    big = os.urandom(9 << 20)  # over the 4 MB the connection's socket holds
    sends = [("event", big), ("plain", ("call", "counters")), ("event", big[:1000])]
    _same(_exchange(a, b, sends), _expected(sends))


def test_the_plain_receiver_reads_frames_events_as_bytes(pipe: Any) -> None:
    """An event frame is a ``Connection`` frame: the plain ``recv_bytes`` reads it whole."""
    a, b = pipe
    frames = _Frames(a)
    frames.send_event(b"\x00abc")
    assert b.recv_bytes() == _EVENT + b"\x00abc"
    frames.close()


def test_end_of_file_and_a_cut_frame(pipe: Any) -> None:
    a, b = pipe
    into = _Frames(b)
    a.send_bytes(b"\x80")  # a frame whose bytes are no pickle
    with pytest.raises(pickle.UnpicklingError):  # as ``Connection.recv`` raises it
        into.recv()
    a._send(b"\x00\x00\x00\x10abc")  # a length of 16, 3 bytes, then the end
    a.close()
    with pytest.raises(OSError, match="end of file during message"):
        into.recv()
    with pytest.raises(EOFError):
        into.recv()
    into.close()


def test_closing_the_frames_leaves_the_connection_open(pipe: Any) -> None:
    a, b = pipe
    _Frames(a).close()
    a.send(("stop",))
    assert b.recv() == ("stop",)

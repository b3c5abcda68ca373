"""The uploader checks an aggregates payload (``wire.check``) instead of reading its values
(``wire.decode``): it stores the bytes as they came, so only the refusals matter, and they must be
the same. Against the decoder, from any payload the encoder makes, any such payload cut, garbled
or with a section replaced, and any bytes: the same WireError with the same reason, or the header
the decoded payload has. Then the messages the uploader is handed (alone, in a batch with bad
items) and what its component spools and counts: as when it read every payload whole."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wire_decode_fast import SCHEMA, body_of, encoded, garbled, joined, sections, with_body

from telemetry import wire
from telemetry.edge import messages
from telemetry.edge.clock import ManualClock
from telemetry.edge.components import Services, UploaderComponent
from telemetry.edge.config import VehicleConfig
from telemetry.edge.spool import MemorySpool
from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport


def outcome(read, data: bytes):
    try:
        return "ok", read(data, SCHEMA)
    except wire.WireError as exc:
        return "refused", str(exc)
    except (ValueError, OverflowError, MemoryError) as exc:  # numpy's own: the same either way
        return "failed", type(exc)


def assert_checked_as_decoded(data: bytes) -> None:
    want = outcome(wire.decode, data)
    for _ in range(2):  # the second time from what the decoder remembers of the payload's cells
        got = outcome(wire.check, data)
        if want[0] != "ok":
            assert got == want
            continue
        assert got[0] == "ok", got
        p = want[1]
        assert got[1] == {"vehicle": p.vehicle, "seq": p.seq, "group": p.group, "width": p.width, "start": p.start,
                          "end": p.end, "part": p.part}
    # and the other way round: what the check remembered, the decoder reads the same
    assert outcome(wire.decode, data)[0] == want[0]


@settings(max_examples=100)
@given(encoded())
def test_any_payload_is_checked_as_it_decodes(data):
    assert_checked_as_decoded(data)


@settings(max_examples=250)
@given(garbled())
def test_a_malformed_payload_is_refused_by_the_check_with_the_decoders_reason(data):
    assert_checked_as_decoded(data)


@settings(max_examples=200)
@given(st.binary(max_size=80), st.sampled_from([b"TLMA\x02\x01", b"TLMA\x03\x01", b"TLMA\x03\x00", b"TLMA\x01\x01",
                                                b"TLMA\x02\x00", b"TLMA\x04\x01", b"TLMA\x03\x07", b"TLMA", b"TLM"]))
def test_any_bytes_are_checked_as_they_decode(raw, prefix):
    assert_checked_as_decoded(prefix + len(raw).to_bytes(4, "little") + raw)
    assert_checked_as_decoded(prefix + raw)


@st.composite
def revalued(draw) -> bytes:
    """A payload with one section's values replaced by as many others (so its length still fits):
    the checks of values (windows in order, counts, the first window's range, flags) are reached."""
    data = draw(encoded())
    parts = sections(body_of(data))
    if len(parts) < 3:
        return data
    at = draw(st.integers(2, len(parts) - 1))
    n = sum(1 for b in parts[at] if b < 0x80)  # its varints (or, in a section of bytes, some number)
    values = draw(st.lists(st.one_of(st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["signed", "unsigned", "bytes"]))
    if kind == "signed":
        parts[at] = wire._varints(np.array(values, np.int64))
    elif kind == "unsigned":
        parts[at] = wire._uvarints(np.array([abs(v) for v in values], np.uint64))
    else:
        parts[at] = draw(st.binary(min_size=len(parts[at]), max_size=len(parts[at])))
    return with_body(data, joined(parts))


@settings(max_examples=250)
@given(revalued())
def test_a_payload_with_other_values_in_a_column_is_checked_as_it_decodes(data):
    assert_checked_as_decoded(data)


def test_a_section_cut_short_in_every_column_is_refused_as_the_decoder_refuses_it():
    """Every section after the dictionary, one at a time, one byte short, empty, one byte more."""
    t = wire.Table(("A.x", "A.y", "B.f"), np.array([1, 2, 1, 2, 1]), np.array([0, 0, 1, 1, 2]),
                   {"count": np.array([2, 1, 2, 1, 3]), "mean": np.array([1.0, 2.0, 3.0, 4.0, 0.1]),
                    "min": np.array([0.5, 2.0, 3.0, 4.0, 0.05]), "max": np.array([1.5, 2.0, 3.0, 4.0, 0.2]),
                    "std": np.array([0.5, 0.0, 0.0, 0.0, 0.01]), "t_min": np.array([1.1, 2.0, 1.2, 2.0, 1.3]),
                    "t_max": np.array([1.9, 2.0, 1.8, 2.0, 1.7])})
    for layout in (2, 3):
        data = wire.encode(wire.Payload("car", 7, "g", 1.0, 0.0, 10.0, t, res={"A.x": (0.5, 0.0), "A.y": (0.5, 0.0),
                                                                                 "B.f": None}),
                           layout=layout, codec="none")
        parts = sections(body_of(data))
        tried = 0
        for at in range(2, len(parts)):
            for changed in (parts[at][:-1], b"", parts[at] + b"\x00", parts[at] + b"\x80"):
                bad = with_body(data, joined([*parts[:at], changed, *parts[at + 1:]]))
                assert_checked_as_decoded(bad)
                tried += outcome(wire.decode, bad)[0] == "refused"
        assert tried > 2 * (len(parts) - 2)  # most of them are refused: the checks were reached


# -- the messages the uploader is handed ---------------------------------------------------------


def batch_of(items: list[bytes]) -> bytes:
    head = messages.dumps({"v": 1, "kind": "batch", "of": "aggregates", "sizes": [len(x) for x in items]})
    return struct.pack("<4sI", b"TLMB", len(head)) + head + b"".join(items)


def message_outcome(data: bytes, values: bool):
    try:
        m = messages.decode(data, messages.AGGREGATES, messages.BATCH, values=values)
    except messages.MessageError as exc:
        return "refused", str(exc)
    items = m.items if isinstance(m, messages.Batch) else (m,)
    summary = [(x.kind, x.key, x.event_time, x.to_bytes(),
                *((x.payload.vehicle, x.payload.seq) if isinstance(x, messages.Aggregates) else (x.vehicle, x.seq)))
               for x in items]
    return "ok", summary, getattr(m, "refused", ())


@settings(max_examples=60)
@given(st.lists(st.one_of(encoded(), garbled()), min_size=1, max_size=4), st.booleans())
def test_a_payload_or_a_batch_of_them_is_the_same_message_checked_as_read(payloads, batched):
    data = batch_of(payloads) if batched else payloads[0]
    read = message_outcome(data, values=True)
    checked = message_outcome(data, values=False)
    assert checked == read
    if not batched and read[0] == "ok":
        assert isinstance(messages.decode(data, values=False), messages.CheckedAggregates)


def test_a_shared_payload_is_read_whole_for_every_subscriber():
    data = wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 10.0, wire.Table.empty()))
    shared = messages.Shared(data)
    assert isinstance(messages.decode(shared, values=False), messages.Aggregates)


# -- the component: what it spools and counts ----------------------------------------------------


class Reading(UploaderComponent):
    """The uploader as it was: every aggregates payload read whole."""

    def decode(self, event):
        return messages.decode(event, *self.accepts)


def component(cls):
    services = Services(InMemoryLocalTransport(), InMemoryCloudTransport(), VehicleConfig(vehicle="car"), ManualClock(), {})
    return cls(services, spool=MemorySpool())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.lists(st.one_of(encoded(), garbled()), min_size=1, max_size=3), st.booleans()),
                min_size=1, max_size=4))
def test_the_uploader_spools_and_refuses_what_it_did_when_it_read_every_payload(events):
    wires = [batch_of(items) if batched else items[0] for items, batched in events]
    new, old = component(UploaderComponent), component(Reading)
    for data in wires:
        new.handle(data)
        old.handle(data)
    assert new.stats == old.stats and new.malformed == old.malformed
    assert new.seq.missed == old.seq.missed and new.seq.restarts == old.seq.restarts
    took = [(e.kind, e.key, e.t, e.payload) for s in (new, old)
            for e in s.core.spool.take(max_bytes=1 << 30, max_count=10_000)]
    half = len(took) // 2
    assert took[:half] == took[half:]
    assert new.core.spool.depth() == old.core.spool.depth()


@pytest.mark.parametrize("bad", [b"TLMA\x03\x01" + b"\xff" * 12, b"TLMA\x09\x01\x00\x00\x00\x00", b"TLMA"])
def test_a_malformed_payload_is_counted_with_its_reason_and_nothing_is_stored(bad):
    new, old = component(UploaderComponent), component(Reading)
    for c in (new, old):
        c.handle(bad)
        c.handle(batch_of([bad]))
    assert new.malformed == old.malformed and sum(new.malformed.values()) == 2
    assert new.core.spool.depth() == (0, 0)

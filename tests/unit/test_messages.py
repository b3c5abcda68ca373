"""Message kinds: one encoder and one decoder each, what a decoder refuses and why, and what a
kind carries (its spool priority, its cloud topic)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import zlib

import pytest

from support.helpers import columns
from telemetry.edge import messages
from telemetry.edge.errors import MessageError
from telemetry.edge.messages import Aggregates, Alert, Batch, Bundle, EndOfStream, Gap, Health, Signals, Window

SIGNALS = Signals("drive.log", 1, 1.0, 2.0, {"read": 2, "decoded": 2},
                  columns(**{"A.x": ([1.0, 2.0], [3.0, 4.0]), "B.y": ([1.5], [-1.0])}))
WINDOW = Window("car", 4, "default", 10.0, 11.0, {"A.x": {"count": 2, "min": 1.0, "max": 2.0, "mean": 1.5}}, 1, 9.5)
AGGREGATES = Aggregates.of_window(WINDOW)
ALERT = Alert("car", "car/r/A.x/10.500000", "raised", "r", "limit", "A.x", "critical", 10.5, 99.0, {"max": 60})
EXAMPLES = [
    SIGNALS,
    EndOfStream("drive.log", 2, 2.0, {"read": 2}),
    WINDOW,
    AGGREGATES,
    ALERT,
    Gap("car", 100.0, "aggregates", 3, 3000, 1.0, 3.0, 7, 9),
    Health("car", 100.0, {"messages": 1, "bytes": 10, "oldest_age_seconds": None, "by_kind": {"alert": 1}, "damaged": [],
                          "errors": 0},
           {"bundles": 1, "messages": 2, "bytes": 300}, 0, {"messages": 0, "gaps": 0}, 0,
           {"bytes_last_hour": 0, "limit": None, "thinned": 0}),
    Batch("alert", (ALERT,)),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_every_kind_round_trips_through_its_wire_form_and_json(message):
    wire = message.to_bytes()
    assert messages.is_binary(wire) == message.binary == (message.kind in ("signals", "batch", "aggregates"))
    forms = [wire] if message.kind == "aggregates" else [wire, json.loads(json.dumps(message.encode()))]
    for event in forms:  # as bytes, and as a JSON object (aggregates travel binary only)
        again = messages.decode(event)
        assert type(again) is type(message)
        assert again.encode() == message.encode()
    if not message.binary:
        assert json.loads(wire)["kind"] == message.kind


def test_a_binary_signals_batch_is_raw_columns_after_a_json_header():
    wire = SIGNALS.to_bytes()
    assert wire[:4] == b"TLMC"
    size = int.from_bytes(wire[4:8], "little")
    head = json.loads(wire[8:8 + size])
    assert (8 + size) % 8 == 0  # the columns are aligned
    assert head["names"] == ["A.x", "B.y"] and head["counts"] == [2, 1] and head["columns"] == {"t": "<f8", "v": "<f8"}
    assert head["span"] == {"start": 1.0, "end": 2.0} and head["seq"] == 1
    assert len(wire) == 8 + size + 3 * 16
    batch = messages.decode(wire, "signals").batch
    assert batch.t.tolist() == [1.0, 2.0, 1.5] and batch.v.tolist() == [3.0, 4.0, -1.0] and batch.ids.tolist() == [0, 0, 1]


def _binary(head_changes=None, tail=b"", cut=0):
    wire = SIGNALS.to_bytes()
    size = int.from_bytes(wire[4:8], "little")
    head = json.loads(wire[8:8 + size])
    head.update(head_changes or {})
    text = json.dumps(head).encode()
    text += b" " * (-(len(text) + 8) % 8)
    out = b"TLMC" + len(text).to_bytes(4, "little") + text + wire[8 + size:] + tail
    return out[:len(out) - cut]


@pytest.mark.parametrize(("payload", "reason"), [
    (b"TLMC", "no TLMC header"),
    (b"TLMC" + (10**6).to_bytes(4, "little") + b"{}", "header of 1000000 bytes in a payload of 10"),
    (b"TLMC" + (2).to_bytes(4, "little") + b"{x", "header is not JSON"),
    (_binary({"v": 2}), "version 2"),
    (_binary({"columns": {"t": "<f4", "v": "<f8"}}), "columns"),
    (_binary({"names": ["A.x", "A.x"]}), "distinct"),
    (_binary({"counts": [2]}), "one count per name"),
    (_binary({"counts": [2, -1]}), "whole number"),
    (_binary({"counts": [2, 5]}), "its header says"),
    (_binary(tail=b"\0" * 8), "its header says"),
    (_binary(cut=1), "its header says"),
    (_binary({"span": {"start": "x", "end": 2.0}}), "numeric 'span'"),
    (b"\xf0\x9f not json", "neither JSON nor a binary payload"),
    (b'{"v": 1, "kind": "alert", "value": NaN}', "neither JSON nor a binary payload"),
])
def test_a_malformed_binary_payload_is_refused_with_a_reason(payload, reason):
    with pytest.raises(MessageError, match=reason.replace("(", r"\(")):
        messages.decode(payload)


def test_a_binary_batch_with_a_non_finite_value_is_refused():
    bad = Signals("x", 1, 1.0, 2.0, {}, columns(**{"A.x": ([1.0], [float("nan")])}))
    with pytest.raises(MessageError, match="not a finite number"):
        messages.decode(bad.to_bytes())


def test_a_binary_signals_batch_goes_only_where_signals_are_expected():
    with pytest.raises(MessageError, match="unexpected message kind 'signals'"):
        messages.decode(SIGNALS.to_bytes(), "aggregates", "alert")


def test_signals_travel_as_columns():
    event = SIGNALS.encode()
    assert event["signals"] == {"A.x": {"t": [1.0, 2.0], "v": [3.0, 4.0]}, "B.y": {"t": [1.5], "v": [-1.0]}}
    assert set(event["frames"]) == set(messages.FRAME_COUNTERS)
    batch = messages.decode(event).batch
    assert batch.names == ("A.x", "B.y") and batch.ids.tolist() == [0, 0, 1] and batch.v.tolist() == [3.0, 4.0, -1.0]


def test_what_a_kind_is_lives_on_its_class():
    assert [k for k, cls in messages.KINDS.items() if cls.priority is not None] == ["aggregates", "alert", "gap"]
    assert Alert.priority < Aggregates.priority and Gap.priority == Alert.priority  # alerts and gaps first
    assert {k: cls.cloud_topic for k, cls in messages.KINDS.items() if cls.cloud_topic} == {
        "aggregates": "aggregates", "alert": "alerts", "gap": "gaps", "health": "health"}
    assert AGGREGATES.key == "default/10.0" and AGGREGATES.event_time == 10.0
    assert ALERT.key == "car/r/A.x/10.500000/raised/10.5" and ALERT.event_time == 10.5


def test_a_bundle_embeds_the_spooled_bytes_as_they_are():
    items = (("car:alert:1", ALERT.to_bytes()), ("car:alert:2", ALERT.to_bytes()))
    for compress in (True, False):
        payload = Bundle("car", "alert", items, compress).to_bytes()
        envelope = json.loads(payload)
        assert envelope["encoding"] == ("zd1" if compress else "none") and envelope["count"] == 2
        assert messages.unpack(payload) == [{"id": i, "message": ALERT.encode()} for i, _ in items]
        assert Bundle.decode(envelope).items == items  # the same bytes, not a re-encoding
    plain = Bundle("car", "alert", items, False).to_bytes()
    assert plain == json.dumps({"v": 1, "kind": "bundle", "vehicle": "car", "of": "alert", "count": 2, "encoding": "none",
                                "messages": [{"id": i, "message": ALERT.encode()} for i, _ in items]},
                               separators=(",", ":")).encode()


def old_bundle(vehicle, of, items):
    """A bundle as the uploader wrote them before ``zd1`` (zlib+base64, whole messages): what a
    spool or a capture may still hold."""
    body = json.dumps([{**({"id": i} if i else {}), "message": json.loads(p)} for i, p in items], separators=(",", ":"))
    return json.dumps({"v": 1, "kind": "bundle", "vehicle": vehicle, "of": of, "count": len(items),
                       "encoding": "zlib+base64", "data": base64.b64encode(zlib.compress(body.encode(), 9)).decode()})


CLEARED = Alert("car-01", "car-01/bus-errors/bus.error/1719090917.016389", "cleared", "bus-errors", "bus", "bus.error",
                "warning", 1719090922.037628, 0.8, {"max_per_second": 1.0, "window_seconds": 5.0, "raised_t": 1719090917.016389,
                                                   "worst": 3.0, "worst_t": 1719090917.072477, "flapping": False}, 2)
STALE = Alert("car-01", "car-01/node-offline/PackHealth/1719090924.902288", "raised", "node-offline", "stale", "PackHealth",
              "critical", 1719090924.9022884, 5.0, {"timeout": 5.0, "raised_t": 1719090924.9022884, "worst": 5.0,
                                                     "worst_t": 1719090924.9022884, "flapping": False, "silent_for": None}, 3)


def test_the_zd1_dictionary_is_the_published_one():
    """The dictionary is part of the ``zd1`` encoding: a bundle published with it is read with it
    for ever. A different dictionary needs a new encoding name (docs/MESSAGES.md, "bundle")."""
    assert hashlib.sha256(messages.ZD1_DICTIONARY).hexdigest()[:16] == "66fd820750cb406c"


def test_a_zd1_bundle_says_once_what_its_envelope_says_and_the_readers_put_it_back():
    vehicle = "car-01"
    gap = Gap(vehicle, 100.0, "aggregates", 3, 3000, 1.0, 3.0, 7, 9)
    for of, items in (("alert", (("", CLEARED.to_bytes()), ("", STALE.to_bytes()))),
                      ("gap", (("car-01:gap:s-4", gap.to_bytes()),))):
        payload = Bundle(vehicle, of, items).to_bytes()
        envelope = json.loads(payload)
        assert (envelope["kind"], envelope["of"], envelope["vehicle"], envelope["count"]) == ("bundle", of, vehicle, len(items))
        body = messages.zd1_decompress(base64.b64decode(envelope["data"])).decode()
        assert '"v":' not in body and '"kind":"alert"' not in body and vehicle not in body.replace("car-01:gap", "")
        got = messages.unpack(payload)
        assert [g["message"] for g in got] == [messages.decode(p).encode() for _, p in items]  # whole again
        assert [g["id"] for g in got] == [i or f"{vehicle}:alert:{messages.decode(p).key}" for i, p in items]
        assert Bundle.decode(envelope).items == tuple((g["id"], p) for g, (_, p) in zip(got, items))  # the same bytes
        assert messages.delivered(payload) == [messages.decode(p).encode() for _, p in items]
        # what the previous encoding wrote still reads, to the same messages and ids
        assert messages.unpack(old_bundle(vehicle, of, items)) == got
        assert len(payload) < len(old_bundle(vehicle, of, items)) * 3 / 4


def test_a_zd1_item_of_another_vehicle_keeps_its_own_fields():
    other = dataclasses.replace(STALE, vehicle="car-02", id="car-02/node-offline/PackHealth/1719090924.902288")
    got = messages.unpack(Bundle("car-01", "alert", (("", other.to_bytes()),)).to_bytes())
    assert got == [{"id": f"car-01:alert:{other.key}", "message": other.encode()}]  # the id: as the uploader makes it


@pytest.mark.parametrize("data, reason", [
    ("not base64!", "does not decompress"),
    (base64.b64encode(messages.zd1_compress(b"[]") + b"tail").decode(), "does not decompress"),
    (base64.b64encode(messages.zd1_compress(b"[]")[:-1]).decode(), "does not decompress"),
    (base64.b64encode(zlib.compress(b"[]")).decode(), "does not decompress"),  # zlib+base64's data under zd1
    (base64.b64encode(messages.zd1_compress(b"[3]")).decode(), "bundle items must be objects"),
    (base64.b64encode(messages.zd1_compress(b'[{"state":NaN}]')).decode(), "does not decompress"),
])
def test_a_malformed_zd1_bundle_is_refused_with_its_reason(data, reason):
    envelope = {"v": 1, "kind": "bundle", "vehicle": "car", "of": "alert", "count": 1, "encoding": "zd1", "data": data}
    with pytest.raises(MessageError, match=reason):
        messages.unpack(envelope)


def alert_event(**change):
    event = ALERT.encode()
    event.update(change)
    return {k: v for k, v in event.items() if v is not ...}


@pytest.mark.parametrize(
    "event, reason",
    [
        ("text", "not a JSON object"),
        ({"kind": "signals"}, "unsupported message version None"),
        ({"v": 2, "kind": "signals"}, "unsupported message version 2"),
        ({"v": 1, "kind": "bogus"}, "unknown message kind 'bogus'"),
        ({"v": 1, "kind": "signals", "signals": {}}, "without 'span'"),
        ({"v": 1, "kind": "signals", "span": {"start": 0}, "signals": {}}, "numeric 'span'"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}}, "without 'signals'"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": {"t": [1], "v": []}}}, "1 times but 0 values"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": [1, 2]}}, "not an object"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": {"t": [1], "v": ["hot"]}}}, "non-numeric"),
        ({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"A.x": {"t": [1], "v": [None]}}}, "not a finite number"),
        ({"v": 1, "kind": "window"}, "window message without 'window'"),
        ({**WINDOW.encode(), "window": {"start": 5.0, "end": 5.0}}, "is not before"),
        ({**WINDOW.encode(), "signals": {"A.x": {"count": 1, "pad": 3}}}, "unknown statistic 'pad'"),
        ({**WINDOW.encode(), "signals": {"A.x": {"mean": "x"}}}, "must be a finite number"),
        ({"v": 1, "kind": "aggregates"}, "aggregates travel binary"),
        (b"TLMA\x01\x00\x10\x00\x00\x00garbage", "does not decompress"),
        (AGGREGATES.to_bytes()[:-3], "not one complete deflate stream"),
        ({"v": 1, "kind": "alert"}, "alert message without 'state'"),
        ({"v": 1, "kind": "alert", "id": "a", "t": 1.0}, "without 'state'"),
        (alert_event(state="burning"), "alert state must be one of"),
        (alert_event(severity="meh"), "severity must be one of"),
        (alert_event(t=1e400), "t must be a finite number"),
        (alert_event(id=""), "id must be a non-empty string"),
        (alert_event(rule=...), "without 'rule'"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(event, reason):
    with pytest.raises(MessageError, match=reason):
        messages.decode(event)


def test_a_kind_a_component_does_not_take_is_refused():
    with pytest.raises(MessageError, match="unexpected message kind 'alert'"):
        messages.decode(ALERT.encode(), messages.SIGNALS, messages.END_OF_STREAM)


def test_nan_is_refused_at_the_sender():
    with pytest.raises(MessageError, match="not valid JSON"):
        Alert("car", "a", "raised", "r", "limit", "A.x", "warning", 1.0, math.nan, {}).to_bytes()


def test_a_batch_holds_messages_of_one_kind_each_checked_on_its_own():
    good = ALERT.encode()
    batch = messages.decode({"v": 1, "kind": "batch", "of": "alert",
                             "messages": [good, {"v": 1, "kind": "alert"}, WINDOW.encode(), "x", good]})
    assert isinstance(batch, Batch) and [m.encode() for m in batch.items] == [good, good]
    assert batch.refused == ("in a batch: alert message without 'state'",
                             "in a batch: unexpected message kind 'window' (expected alert)",
                             "in a batch: message is a str, not a JSON object")
    for event, reason in (({"v": 1, "kind": "batch", "of": "signals", "messages": []}, "not 'signals'"),
                          ({"v": 1, "kind": "batch", "of": "alert", "messages": {}}, "must be an array"),
                          ({"v": 1, "kind": "batch", "messages": []}, "without 'of'")):
        with pytest.raises(MessageError, match=reason):
            messages.decode(event)


def test_a_binary_batch_carries_its_items_bytes_as_they_are():
    other = Aggregates.of_window(Window("car", 5, "default", 11.0, 12.0, {"A.x": {"count": 1, "min": 2.0, "max": 2.0, "mean": 2.0}}))
    wire = Batch("aggregates", (AGGREGATES, other)).to_bytes()
    assert wire[:4] == b"TLMB"
    size = int.from_bytes(wire[4:8], "little")
    assert json.loads(wire[8:8 + size]) == {"v": 1, "kind": "batch", "of": "aggregates",
                                              "sizes": [len(AGGREGATES.to_bytes()), len(other.to_bytes())]}
    assert wire[8 + size:] == AGGREGATES.to_bytes() + other.to_bytes()
    batch = messages.decode(wire, "batch")
    assert [m.encode()["windows"] for m in batch.items] == [AGGREGATES.encode()["windows"], other.encode()["windows"]]
    assert [m.to_bytes() for m in batch.items] == [AGGREGATES.to_bytes(), other.to_bytes()]  # stored as they came


@pytest.mark.parametrize(("cut", "reason"), [(1, "its header says"), (-1, "its header says")])
def test_a_truncated_or_padded_binary_batch_is_refused(cut, reason):
    wire = Batch("aggregates", (AGGREGATES,)).to_bytes()
    with pytest.raises(MessageError, match=reason):
        messages.decode(wire[:-1] if cut == 1 else wire + b" ")


def test_a_bad_item_in_a_binary_batch_is_refused_alone():
    good = AGGREGATES.to_bytes()
    bad = b'{"v":1,"kind":"aggregates","window":{"start":1,"end":2},"value":NaN}'
    head = json.dumps({"v": 1, "kind": "batch", "of": "aggregates", "sizes": [len(good), len(bad), len(good)]}).encode()
    batch = messages.decode(b"TLMB" + len(head).to_bytes(4, "little") + head + good + bad + good)
    assert len(batch.items) == 2 and batch.refused == ("in a batch: message is neither JSON nor a binary payload (signals, batch, aggregates)",)


def test_an_alert_is_published_compact_and_decodes_whole():
    raised = Alert("car", "car/stale-bms/BMS/12.250000", "raised", "stale-bms", "stale", "BMS", "critical", 12.25, 5.0,
                   {"timeout": 5.0, "silent_for": None, "raised_t": 12.25, "worst": 5.0, "worst_t": 12.25, "flapping": False})
    published = json.loads(raised.to_bytes())
    # the id and every default of the detail are left out: they follow from the rest
    assert "id" not in published and published["detail"] == {"timeout": 5.0}
    assert messages.decode(raised.to_bytes()).encode() == raised.encode()
    cleared = Alert("car", raised.id, "cleared", "stale-bms", "stale", "BMS", "critical", 20.0, 0.0,
                    {"timeout": 5.0, "silent_for": 7.75, "raised_t": 12.25, "worst": 7.75, "worst_t": 19.5, "flapping": True})
    published = json.loads(cleared.to_bytes())
    assert "id" not in published and published["detail"]["raised_t"] == 12.25 and published["detail"]["flapping"] is True
    assert messages.decode(cleared.to_bytes()).encode() == cleared.encode()
    # an id its fields do not make, or a detail without the detector's fields, travels whole
    for whole in (ALERT, Alert("car", "car/r/A.x/10.5", "raised", "r", "limit", "A.x", "critical", 10.5, 99.0)):
        assert json.loads(whole.to_bytes()) == whole.encode()
        assert messages.decode(whole.to_bytes()).encode() == whole.encode()


def test_an_alerts_bundle_item_leaves_out_the_id_that_follows_from_the_alert():
    bundle = messages.Bundle("car-01", "alert", (("", ALERT.to_bytes()), ("car-01:gap:x", ALERT.to_bytes())), False)
    published = json.loads(bundle.to_bytes())
    assert "id" not in published["messages"][0] and published["messages"][1]["id"] == "car-01:gap:x"
    ids = [item["id"] for item in messages.unpack(bundle.to_bytes())]
    assert ids == [f"car-01:alert:{ALERT.key}", "car-01:gap:x"]
    gaps = {**published, "of": "gap"}
    with pytest.raises(MessageError, match="an alert's 'id' may be left out"):
        messages.unpack(gaps)

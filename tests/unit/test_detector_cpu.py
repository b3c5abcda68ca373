"""The detector's pieces that session 22 made cheaper, against the code they replaced
(``support.detector_cpu_before``, ``support.messages_before``): the z-score rule's quick test of
a clean batch gives the same answer, the spread rule's forward-filled table the same cells, and
a signals payload reads back as before (the same message or the same refusal, with the same
reason) however often its name table came before, on adversarial input: NaN, infinities, huge
values, constant runs (a MAD of 0), one sample, headers whose names are not where they seem."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_messages_fast import same

from support import detector_cpu_before, messages_before
from telemetry.edge import messages
from telemetry.edge.config import parse_config
from telemetry.edge.errors import MessageError
from telemetry.edge.rules.spread import _forward_filled

ORDINARY = st.one_of(st.floats(-10, 10), st.sampled_from([0.0, -0.0, 1.0, 1.0, 2.0]))
ODD = st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e300, 5e-324])
VALUES = st.one_of(ORDINARY, ORDINARY, ORDINARY, ORDINARY, ORDINARY, ODD)


def zscore_evaluator(baseline: int, threshold: float, min_scale: float):
    rule = parse_config({"vehicle": "car", "rules": [dict(name="z", kind="zscore", signals="M.*", threshold=threshold,
                                                          baseline=baseline, warmup=2, min_scale=min_scale)]}).rules[0]
    return rule.evaluator()


@st.composite
def full_baselines(draw):
    """Signals whose histories are full, and their samples: ``padded`` as the rule lays it out."""
    size = draw(st.integers(5, 24))
    noisy = st.one_of(VALUES, st.floats(40, 60)) if draw(st.booleans()) else st.sampled_from([3.0, 3.0, 3.0, 3.5])
    runs = []
    for _ in range(draw(st.integers(1, 3))):
        history = draw(st.lists(noisy, min_size=size, max_size=size))
        samples = draw(st.lists(noisy, min_size=1, max_size=3 * size))
        runs.append((np.array(history, float), np.array(samples, float)))
    return size, runs


@given(full_baselines(), st.sampled_from([1.0, 3.0, 6.0]), st.sampled_from([0.0, 0.0, 0.5, 5e-324]))
@settings(max_examples=120, deadline=None)
def test_the_zscore_quick_test_answers_as_before(case, threshold, min_scale):
    size, runs = case
    ev = zscore_evaluator(size, threshold, min_scale)
    v = np.concatenate([s for _, s in runs])
    padded = np.concatenate([piece for run in runs for piece in run])
    lengths = np.array([len(s) for _, s in runs])
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    starts, ends = first.tolist(), (first + lengths).tolist()
    # as the rule worked them out before
    start = np.arange(len(v)) + np.repeat(np.arange(len(runs)), lengths) * size
    within = np.arange(len(v)) - np.repeat(first, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an overflow, both alike
        got = ev._cannot_cross(v, padded, starts, ends)
        if np.isnan(padded).any():  # the rule did not ask then: the baselines decide
            assert got is False
        else:
            assert got == detector_cpu_before.cannot_cross(ev, v, padded, start, within)


@st.composite
def tables(draw):
    width = draw(st.integers(1, 6))
    n = draw(st.integers(1, 12))
    cells = sorted(draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, width - 1)), max_size=width * n)))
    row = np.array([r for r, _ in cells], np.int64)
    col = np.array([c for _, c in cells], np.int64)
    v = np.array(draw(st.lists(VALUES, min_size=len(cells), max_size=len(cells))), float)
    latest = np.array(draw(st.lists(st.one_of(VALUES, st.just(np.nan)), min_size=width, max_size=width)), float)
    return latest, row, col, v, n


@given(st.lists(tables(), min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_the_forward_filled_table_is_the_old_one(cases):
    new, old = [np.empty(0)], [np.empty(0, np.int64)]  # scratch kept from one table to the next
    for latest, row, col, v, n in cases:
        got = _forward_filled(latest, row, col, v, n, new).copy()
        want = detector_cpu_before.forward_filled(latest, row, col, v, n, old)
        assert got.shape == want.shape and got.tobytes() == want.tobytes()


# -- signals payloads: a name table seen before --------------------------------------------------

names_ = st.lists(st.text(alphabet='ab."\\,:[]{}é', min_size=1, max_size=10), max_size=6, unique=True)
floats_ = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def signals(draw) -> messages.Signals:
    names = draw(names_)
    counts = [draw(st.integers(0, 4)) for _ in names]
    total = sum(counts)
    values = floats_ if draw(st.integers(0, 3)) == 0 else st.floats(-1e6, 1e6)
    t = np.array(draw(st.lists(values, min_size=total, max_size=total)), np.float64)
    v = np.array(draw(st.lists(values, min_size=total, max_size=total)), np.float64)
    events = {key: np.array(draw(st.lists(st.floats(0, 100), max_size=3)), np.float64)
              for key in draw(st.lists(st.sampled_from(messages.EVENT_COUNTERS), unique=True))}
    frames = draw(st.dictionaries(st.sampled_from(messages.FRAME_COUNTERS), st.integers(0, 2**40)))
    return messages.Signals(draw(st.text(alphabet='x"\\,names:[]', max_size=12)), draw(st.integers(0, 2**40)), 0.0, 1.0,
                            frames, messages.FlatBatch(tuple(names), np.repeat(np.arange(len(names)), counts), t, v), events)


def rewritten(wire: bytes, change: str, draw) -> bytes:
    """The payload with its header's text changed where a quick reading of the names could be
    fooled: a "names" key nested in another object, the key twice, a key between "names" and
    "counts", spaces, names that are not a list, a header that is no JSON."""
    size = struct.unpack_from("<I", wire, 4)[0]
    text, columns = wire[8:8 + size].rstrip(b" "), wire[8 + size:]
    names = text[text.index(b'"names":') + 8:text.index(b',"counts":')]
    if change == "nested":
        text = text.replace(b'"frames":{', b'"frames":{"names":' + names + b",", 1)
    elif change == "twice":
        text = text.replace(b',"counts":', b',"names":' + names + b',"counts":', 1)
    elif change == "twice-other":
        text = text.replace(b'"names":', b'"names":["other"],"names":', 1)
    elif change == "between":
        text = text.replace(b',"counts":', b',"events":{},"counts":', 1)
    elif change == "spaces":
        text = text.replace(b'"names":', b'"names": ', 1)
    elif change == "in-source":
        text = text.replace(b'"source":"', b'"source":"\\"names\\":' + names.replace(b'"', b'\\"') + b'",'
                            + b'"x":"', 1)
    elif change == "broken":
        text = text.replace(b',"counts":', b',"counts":' + draw(st.sampled_from([b"[", b"{", b'"', b"x"])), 1)
    elif change == "empty-names":
        text = text.replace(b'"names":' + names, b'"names":[]', 1)
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<4sI", messages.COLUMNS_MAGIC, len(text)) + text + columns


def outcome(read, payload: bytes):
    try:
        return read(payload), None
    except (MessageError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


CHANGES = ["none", "nested", "twice", "twice-other", "between", "spaces", "in-source", "broken", "empty-names"]


@given(st.lists(signals(), min_size=1, max_size=3), st.lists(st.sampled_from(CHANGES), min_size=1, max_size=8), st.data())
@settings(max_examples=60, deadline=None)
def test_a_payload_reads_as_before_however_often_its_names_came(batches, changes, data):
    wires = [m.to_bytes() for m in batches if np.isfinite(m.start)]
    for change in changes:
        for wire in wires:
            payload = rewritten(wire, change, data.draw) if change != "none" else wire
            for _ in range(3):  # the second sight of a table learns it; the third reads it so
                got, error = outcome(messages.Signals.from_bytes, payload)
                want, want_error = outcome(messages_before.from_bytes, payload)
                assert error == want_error
                if want is not None:
                    same(got, want)


def test_a_name_table_read_before_is_the_same_tuple():
    batch = messages.FlatBatch(("a.x", "b.y"), np.array([0, 1]), np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    wire = messages.Signals("s", 1, 0.0, 1.0, {}, batch).to_bytes()
    first, second, third = (messages.Signals.from_bytes(wire) for _ in range(3))
    assert first.batch.names == second.batch.names == third.batch.names == ("a.x", "b.y")
    assert second.batch.names is third.batch.names  # learnt at the second sight, shared from then on
    # the same names in a header that is not what the table was learnt from: read in full
    text = wire[8:8 + struct.unpack_from("<I", wire, 4)[0]]
    head = json.loads(text)
    head["frames"] = {"names": 1}
    other = json.dumps(head, separators=(",", ":")).encode()
    other += b" " * (-(len(other) + 8) % 8)
    payload = struct.pack("<4sI", messages.COLUMNS_MAGIC, len(other)) + other + wire[8 + len(text):]
    for _ in range(3):
        got, want = messages.Signals.from_bytes(payload), messages_before.from_bytes(payload)
        same(got, want)
        assert dict(got.frames) == {"names": 1}

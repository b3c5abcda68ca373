"""The layout-2/3 decoder that reads every column of a payload at once against the one that read
them one by one (``support.wire_decode_before``): the same payload back, bit for bit, from any
table the encoder takes (NaN, infinities, huge values, the float fallback of huge sums, grids,
shared cells, one cell, none); and from any bytes, malformed or not, the same payload or the
same WireError with the same reason (where the old one failed with numpy's own error instead,
a WireError). Its parts against theirs: the varint columns, the joining of delta-coded columns;
and what it remembers of a payload's cells shares nothing a caller could change."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import wire_decode_before as before
from telemetry import wire

RES = {"A.x": (0.5, 0.0), "A.y": (0.1, -40.0), "A.z": (1.0, 0.0), "B.f": None, "B.g": None, "C.us": (1.0, 0.0),
       "C.m": (0.001, -1000.0), "D.extra": (0.25, 1.0)}
SCHEMA = wire.register(wire.Schema.of({k: v for k, v in RES.items() if k != "D.extra"}))
ODD = np.array([0.0, -0.0, 1.0, -1.0, 0.1, 1e300, -1e300, 2.0**63, -(2.0**63), 1.7e15, 4.5e12, 5e-324, 1e-300,
                2.0**-12, 3 * 2.0**-40, 2.0**52 + 1, np.nan, np.inf, -np.inf])
COUNTS = np.array([1, 1, 2, 3, 10, 10_000, 2**32, 2**61])
NAMES = st.lists(st.sampled_from(sorted(RES)), unique=True, max_size=len(RES))
STATS = st.sets(st.sampled_from(wire.STATISTICS[1:]))
WINDOWS = st.sets(st.integers(-3, 40), min_size=1, max_size=5)
CODECS = st.sampled_from(wire.CODECS)


@st.composite
def tables(draw):
    """Signals whose cells are often those of another (the signals of one CAN message); values on
    their step (of any size), or anything at all (NaN, infinities, 1e300, subnormal), or both;
    every statistic or some; counts of 1 to 2**61; collapsed cells. The structure is drawn, the
    values made from a drawn seed (fast)."""
    names = draw(NAMES)
    some = draw(STATS)
    stats = [s for s in wire.STATISTICS if s == "count" or s in some]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layouts: list[tuple[np.ndarray, np.ndarray]] = []  # the cells of earlier signals (windows, counts), to share
    sid, window, cols = [], [], {s: [] for s in stats}
    for i, name in enumerate(names):
        if layouts and draw(st.booleans()):
            k, count = layouts[draw(st.integers(0, len(layouts) - 1))]
        else:
            k = np.array(sorted(draw(WINDOWS)), np.int64)
            count = rng.choice(COUNTS, len(k))
            layouts.append((k, count))
        n = len(k)
        scale, offset = RES[name] or (2.0 ** -int(rng.integers(0, 21)), 0.0)
        size = draw(st.sampled_from([1000, 2**62]))
        exact = rng.random(n) < draw(st.sampled_from([1.0, 1.0, 0.7, 0.0]))  # on the step, or anything

        raw = rng.integers(-size, size, (2, n)).astype(np.float64)
        odd = np.where(rng.random((2, n)) < 0.5, rng.choice(ODD, (2, n)), rng.uniform(-1e6, 1e6, (2, n)))
        lo, hi = np.sort(np.where(exact, raw * scale + offset, odd), axis=0)  # NaN last
        same = (count == 1) | (rng.random(n) < 0.2)  # one value: the cell collapses
        hi = np.where(same, lo, hi)
        with np.errstate(invalid="ignore", over="ignore"):
            mean = np.where(rng.random(n) < 0.8, (lo + hi) / 2, rng.choice(ODD, n))
        value = {"min": lo, "max": hi, "mean": np.where(same, lo, mean), "first": lo, "last": hi,
                 "std": np.where(rng.random(n) < 0.3, 0.0, np.where(rng.random(n) < 0.5, rng.uniform(0, 1e6, n),
                                                                     rng.choice(ODD, n))),
                 "t_min": k * 2.0 + rng.choice([0.0, 0.25, 1.999999], n),
                 "t_max": k * 2.0 + rng.choice([0.0, 1.5, 1.999999, np.nan], n)}
        sid += [i] * n
        window += k.tolist()
        for s in stats:
            cols[s] += (count if s == "count" else value[s]).tolist()
    return wire.Table(tuple(names), np.array(window, np.int64), np.array(sid, np.int64),
                      {s: np.array(v, np.int64 if s == "count" else np.float64) for s, v in cols.items()})


@st.composite
def encoded(draw) -> bytes:
    table = draw(tables())
    thinned = {"factor": 2, "from_width": 1.0, "stats": list(table.stats)} if draw(st.booleans()) else None
    p = wire.Payload("car", draw(st.integers(0, 2**40)), "g", 2.0, draw(st.sampled_from([0.0, -8.0, 1.7e9])),
                     draw(st.sampled_from([90.0, 1.8e9])), table, draw(st.integers(0, 3)), None,
                     thinned=thinned, res=RES)
    schema, layout, codec = SCHEMA if draw(st.booleans()) else None, draw(st.sampled_from([2, 3])), draw(CODECS)
    with np.errstate(all="ignore"):  # the encoder's checks of values like 1e300 (not what this tests)
        return wire.encode(p, schema=schema, layout=layout, codec=codec)


def assert_same(got: wire.Payload, want: wire.Payload) -> None:
    for field in ("vehicle", "seq", "group", "width", "start", "end", "late_samples", "late_oldest", "part",
                  "thinned", "res", "schema"):
        assert getattr(got, field) == getattr(want, field), field
    t, u = got.table, want.table
    assert t.names == u.names and list(t.stats) == list(u.stats)
    for x, y in ((t.window, u.window), (t.sid, u.sid), *((t.stats[s], u.stats[s]) for s in u.stats)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()  # bit for bit: NaN, -0.0


def outcome(decode, data: bytes):
    try:
        return "payload", decode(data, SCHEMA)
    except wire.WireError as exc:
        return "refused", str(exc)
    except (ValueError, OverflowError, MemoryError) as exc:  # numpy's own, from the old decoder
        return "failed", type(exc)


def assert_as_before(data: bytes) -> None:
    """The decoder reads ``data`` as the old one did: the same payload, or the same reason."""
    want = outcome(before.decode, data)
    for _ in range(2):  # the second time from what the decoder remembers of the payload's cells
        got = outcome(wire.decode, data)
        if want[0] == "payload":
            assert got[0] == "payload", got
            assert_same(got[1], want[1])
        elif want[0] == "refused":
            assert got == want
        else:  # the old one failed with numpy's error: this one says why
            assert got[0] == "refused" or got == want, (got, want)


@settings(max_examples=200)
@given(encoded())
def test_any_payload_decodes_to_what_it_did(data):
    assert_as_before(data)


# -- malformed payloads: the encoder's, with their body cut, garbled or a section replaced --------


def body_of(data: bytes) -> bytes:
    size = int.from_bytes(data[6:10], "little")
    return wire._decompress(data[10:], wire.CODECS[data[5]], size, data[4])


def with_body(data: bytes, body: bytes) -> bytes:
    """``data`` with another body, its prefix and compression made for it (so the decoder reads it)."""
    packed = body
    if wire.CODECS[data[5]] == "zlib":
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, wire._ZDICT)
        packed = z.compress(body) + z.flush()
    return data[:6] + len(body).to_bytes(4, "little") + packed


def sections(body: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(body):
        n, shift = 0, 0
        while True:
            byte = body[at]
            at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(body[at:at + n])
        at += n
    return out


def joined(parts: list[bytes]) -> bytes:
    return b"".join(wire._uvarints(np.array([len(x)], np.uint64)) + x for x in parts)


VARINTS = st.lists(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1), st.sampled_from([2**62, 2**62 + 1, 2**63])),
                   max_size=12).map(lambda v: wire._uvarints(np.array(v, np.uint64)))


@st.composite
def garbled(draw) -> bytes:
    data = draw(encoded())
    body = body_of(data)
    parts = sections(body)
    how = draw(st.sampled_from(["cut", "bytes", "section", "drop", "extra", "raw"]))
    if how == "cut":
        body = body[:draw(st.integers(0, max(0, len(body) - 1)))]
    elif how == "bytes":  # a few bytes changed anywhere after the header
        changed = bytearray(body)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(changed) - 1))
            changed[at] = draw(st.one_of(st.integers(0, 255), st.sampled_from([0x00, 0x7F, 0x80, 0xFF])))
        body = bytes(changed)
    elif how == "section" and len(parts) > 2:  # one column replaced: varints, bytes, or itself changed by one
        at = draw(st.integers(2, len(parts) - 1))
        parts[at] = draw(st.one_of(VARINTS, st.binary(max_size=24), st.just(parts[at][:-1]), st.just(parts[at] + b"\x00"),
                                   st.just(b"\x01" + parts[at][1:]), st.just(b"\x02" + parts[at][1:]),
                                   st.just(b"\x03" + parts[at][1:]), st.just(parts[at][:1] + b"\x80" * 11 + b"\x01")))
        body = joined(parts)
    elif how == "drop" and len(parts) > 2:
        del parts[draw(st.integers(2, len(parts) - 1))]
        body = joined(parts)
    elif how == "extra":
        body = body + draw(st.binary(min_size=1, max_size=4))
    elif how == "raw":  # garbage after a valid header and dictionary
        body = joined(parts[:2]) + draw(st.binary(max_size=60))
    return with_body(data, body)


@settings(max_examples=300)
@given(garbled())
def test_a_malformed_payload_is_refused_with_the_reason_it_was(data):
    assert_as_before(data)


@settings(max_examples=200)
@given(st.binary(max_size=80), st.sampled_from([b"TLMA\x02\x01", b"TLMA\x03\x01", b"TLMA\x03\x00", b"TLMA\x01\x01"]))
def test_any_bytes_are_read_as_they_were(raw, prefix):
    assert_as_before(prefix + len(raw).to_bytes(4, "little") + raw)
    assert_as_before(prefix + raw)


def test_a_count_of_more_cells_than_the_payload_holds_is_refused_not_allocated():
    """A cells column that says 2**62 cells: the old decoder asked numpy for the memory first
    (ValueError: array is too big); this one reads the windows' column first, and refuses."""
    table = wire.Table(("A.x", "A.y"), np.array([1, 1]), np.array([0, 1]), {"count": np.array([2, 2]),
                       "mean": np.array([1.0, 2.0])})
    data = wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 10.0, table, res=RES), codec="none")
    parts = sections(body_of(data))
    assert parts[5] == b"\x01"  # A.y shares A.x's cells: one signal's, one cell
    parts[5] = wire._uvarints(np.array([2**62], np.uint64))
    bad = with_body(data, joined(parts))
    with pytest.raises(ValueError, match="too big"):
        before.decode(bad)
    with pytest.raises(wire.WireError, match="does not hold 4611686018427387904 values"):
        wire.decode(bad)


def test_a_first_window_past_int64_is_refused():
    table = wire.Table(("A.x",), np.array([1]), np.array([0]), {"count": np.array([2]), "mean": np.array([1.0])})
    data = wire.encode(wire.Payload("car", 1, "g", 1.0, 2.0**61, 2.0**61 + 4096, table, res=RES), codec="none")
    parts = sections(body_of(data))
    parts[3] = wire._varints(np.array([2**63 - 1], np.int64))  # the first window, from the period's
    bad = with_body(data, joined(parts))
    with pytest.raises(OverflowError):
        before.decode(bad)
    with pytest.raises(wire.WireError, match="first window is out of range"):
        wire.decode(bad)


# -- the parts, against the old ones --------------------------------------------------------------


@given(st.lists(st.binary(max_size=14), max_size=6), st.lists(st.integers(0, 16), min_size=6, max_size=6))
def test_varint_columns_read_at_once_are_each_column_read_alone(columns, counts):
    u, at, complete, over, widest = wire._uvarint_columns(b"".join(columns), [len(x) for x in columns])
    for j, (raw, count) in enumerate(zip(columns, counts)):
        try:
            want = before._read_uvarints(raw, count)
        except wire.WireError as exc:
            reason = str(exc)
            got = None if complete[j] and at[j + 1] - at[j] == count else "does not hold"
            if got is None:
                assert over[j]
                got = "over 64 bits"
            assert got in reason
        else:
            assert complete[j] and not over[j] and at[j + 1] - at[j] == count
            assert u[at[j]:at[j + 1]].tolist() == want.tolist()
            assert not len(want) or want.max() < 2 ** (7 * widest)


@given(st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8).map(lambda v: np.array(v, np.int64)),
                min_size=1, max_size=3), st.data())
def test_delta_coded_columns_joined_at_once_are_each_column_joined_alone(columns, data):
    firsts = []
    for col in columns:  # where a signal's run begins in each: at its first cell, and anywhere
        first = np.array(data.draw(st.lists(st.booleans(), min_size=len(col), max_size=len(col))), bool)
        first[:1] = True
        firsts.append(first)
    starts = np.cumsum([0] + [len(c) for c in columns])[:-1].tolist()
    got = wire._join(np.concatenate(columns), wire._join_plan(np.concatenate(firsts), starts))
    want = np.concatenate([before._join_delta(c, f) for c, f in zip(columns, firsts)])
    assert got.dtype == np.int64 and got.tolist() == want.tolist()


def test_what_the_decoder_remembers_of_a_payloads_cells_is_not_the_callers():
    """Two payloads of the same cells: the second is laid out from the decoder's memory of the
    first's, yet the tables are their own (a caller that changes one changes nothing else)."""
    def payload(mean: float) -> bytes:
        table = wire.Table(("A.x", "A.y"), np.array([3, 4, 3, 4]), np.array([0, 0, 1, 1]),
                           {"count": np.array([2, 2, 2, 2]), "mean": np.array([mean, 1.0, 2.0, 3.0])})
        return wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 10.0, table, res=RES))

    wire._KNOWN_CELLS.clear()
    first = wire.decode(payload(0.5))
    assert len(wire._KNOWN_CELLS) == 1
    first.table.sid[:] = 7
    first.table.window[:] = 7
    first.table.stats["count"][:] = 7
    second = wire.decode(payload(1.5))
    assert len(wire._KNOWN_CELLS) == 1
    assert second.table.sid.tolist() == [0, 0, 1, 1] and second.table.window.tolist() == [3, 4, 3, 4]
    assert second.table.stats["count"].tolist() == [2, 2, 2, 2] and second.table.stats["mean"].tolist() == [1.5, 1.0, 2.0, 3.0]


def test_the_memory_of_cells_is_bounded():
    """A long-running decoder sees many vehicles: at most 32 layouts remembered, none of more
    than ``_KNOWN_CELLS_MAX`` cells."""
    wire._KNOWN_CELLS.clear()
    for n in range(1, 40):
        table = wire.Table(("A.x",), np.arange(n, dtype=np.int64), np.zeros(n, np.int64),
                           {"count": np.ones(n, np.int64), "mean": np.zeros(n)})
        assert len(wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 60.0, table, res=RES))).table) == n
        assert 1 <= len(wire._KNOWN_CELLS) <= 32
    n = wire._KNOWN_CELLS_MAX + 1
    big = wire.Table(("A.x",), np.arange(n, dtype=np.int64), np.zeros(n, np.int64),
                     {"count": np.ones(n, np.int64), "mean": np.zeros(n)})
    wire._KNOWN_CELLS.clear()
    assert len(wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 1e5, big, res=RES))).table) == n
    assert not wire._KNOWN_CELLS

"""The wire format's faster encode and decode against the wire format as it was
(``support.wire_before``): the same bytes for any table, the same payload back from any bytes,
the same refusal of malformed varints; and the decoder's memory of dictionaries shares nothing
a caller could change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import wire_before, wire_range
from telemetry import wire

uint64s = st.one_of(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=2**64 - 1),
                    st.sampled_from([0, 127, 128, 16383, 16384, 2**56 - 1, 2**56, 2**63, 2**64 - 1]))


@given(st.lists(uint64s, max_size=60))
def test_varints_are_the_bytes_they_were_and_read_back(values):
    u = np.array(values, np.uint64)
    raw = wire._uvarints(u)
    assert raw == wire_before._uvarints(u)
    assert wire._read_uvarints(raw, len(values)).tolist() == values


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=45))
def test_malformed_varints_are_refused_as_before(raw, count):
    try:
        want = wire_before._read_uvarints(raw, count)
    except wire_before.WireError as exc:
        with pytest.raises(wire.WireError) as got:
            wire._read_uvarints(raw, count)
        assert str(got.value) == str(exc)
    else:
        assert wire._read_uvarints(raw, count).tolist() == want.tolist()


@st.composite
def tables(draw, sorted_cells: bool = True):
    n = draw(st.integers(min_value=0, max_value=7))
    cells = []
    for sid in range(n):
        windows = sorted(draw(st.sets(st.integers(min_value=-3, max_value=20), max_size=6)))
        cells += [(sid, k) for k in windows]
    if not sorted_cells:
        cells = draw(st.permutations(cells))
    sid = np.array([c[0] for c in cells], np.int64)
    window = np.array([c[1] for c in cells], np.int64)
    stats = {"count": np.arange(1, len(cells) + 1, dtype=np.int64), "mean": np.linspace(0.0, 1.0, len(cells))}
    return wire.Table(tuple(f"S{i}" for i in range(n)), window, sid, stats)


@given(tables(), st.data())
def test_signals_renumbered_by_blocks_as_a_sort_would(table, data):
    order = np.array(data.draw(st.permutations(range(len(table.names)))), np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    want = wire.Table(tuple(table.names[i] for i in order.tolist()), table.window, inverse[table.sid], table.stats).sorted()
    got = wire._renumbered(table, order)
    assert got.names == want.names
    for a, b in ((got.window, want.window), (got.sid, want.sid), *((got.stats[k], want.stats[k]) for k in want.stats)):
        assert np.array_equal(a, b)


@given(tables(sorted_cells=False), st.data())
def test_a_table_not_in_order_is_renumbered_by_a_sort(table, data):
    order = np.array(data.draw(st.permutations(range(len(table.names)))), np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    want = wire.Table(tuple(table.names[i] for i in order.tolist()), table.window, inverse[table.sid], table.stats).sorted()
    got = wire._renumbered(table, order)
    assert np.array_equal(got.sid, want.sid) and np.array_equal(got.window, want.window)


POOL = ["A.x", "A.y", "B.z", "B.w", "C.f", "X.extra"]
RES = {"A.x": (0.5, 0.0), "A.y": (0.1, -40.0), "B.z": (1.0, 0.0), "B.w": None, "C.f": None, "X.extra": (0.25, 1.0)}
SCHEMA = wire.Schema.of({k: v for k, v in RES.items() if k != "X.extra"})
SCHEMA_BEFORE = wire_before.Schema.of({k: v for k, v in RES.items() if k != "X.extra"})


@st.composite
def payloads(draw):
    """Payloads of any signals, in any order of names, with values on a signal's grid or not,
    collapsed cells, and every statistic or some."""
    names = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL)))
    stats = ["count", *draw(st.lists(st.sampled_from(wire.STATISTICS[1:]), unique=True))]
    stats = [s for s in wire.STATISTICS if s in stats]
    sid, window, cols = [], [], {s: [] for s in stats}
    for i, name in enumerate(names):
        scale, offset = RES[name] or (2.0**-draw(st.integers(0, 12)), 0.0)
        for k in sorted(draw(st.sets(st.integers(min_value=0, max_value=11), max_size=5))):
            count = draw(st.sampled_from([1, 1, 2, 3, 10, 2**40]))
            on_grid = draw(st.integers(0, 4)) > 0
            raw = sorted(draw(st.lists(st.integers(-1000, 1000), min_size=2, max_size=2)))
            lo, hi = (raw[0] * scale + offset, raw[1] * scale + offset) if on_grid else \
                tuple(sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2))))
            if count == 1:
                hi = lo
            sid.append(i)
            window.append(k)
            value = {"count": count, "min": lo, "max": hi, "mean": (lo + hi) / 2, "first": lo, "last": hi,
                     "std": (hi - lo) / 3, "t_min": k * 2.0 + 0.25, "t_max": k * 2.0 + 1.5}
            for s in stats:
                cols[s].append(value[s])
    table = wire.Table(tuple(names), np.array(window, np.int64), np.array(sid, np.int64),
                       {s: np.array(v, np.int64 if s == "count" else np.float64) for s, v in cols.items()})
    return table.sorted(), draw(st.booleans()), draw(st.sampled_from([2, 3])), draw(st.booleans())


@settings(max_examples=200)
@given(payloads())
def test_payload_bytes_and_what_they_decode_to_are_as_before(case):
    table, by_schema, layout, thinned = case
    thin = {"factor": 2, "from_width": 1.0, "stats": list(table.stats)} if thinned else None
    new = wire.Payload("car", 3, "g", 2.0, 0.0, 24.0, table, 1, 0.5, thinned=thin, res=RES)
    old = wire_before.Payload("car", 3, "g", 2.0, 0.0, 24.0, wire_before.Table(table.names, table.window, table.sid,
                              table.stats), 1, 0.5, thinned=thin, res=RES)
    data = wire.encode(new, schema=SCHEMA if by_schema else None, layout=layout)
    old_data = wire_before.encode(old, schema=SCHEMA_BEFORE if by_schema else None, layout=layout)
    if data != old_data:  # only where the old encoder's integers overflowed: the cells it got wrong are fixed, no other broken
        old_off = {c[:3] for c in wire_range.off(old, wire_before.decode(old_data, SCHEMA_BEFORE))}
        assert {c[:3] for c in wire_range.off(new, wire.decode(data, SCHEMA))} < old_off
        return
    for _ in range(2):  # the second time from the decoder's memory of the dictionary
        got, want = wire.decode(data, SCHEMA), wire_before.decode(data, SCHEMA_BEFORE)
        assert got.table.names == want.table.names and got.res == want.res and got.schema == want.schema
        assert np.array_equal(got.table.window, want.table.window) and np.array_equal(got.table.sid, want.table.sid)
        assert got.table.stats.keys() == want.table.stats.keys()
        for s in want.table.stats:
            assert np.array_equal(got.table.stats[s], want.table.stats[s], equal_nan=True), s


def test_decoded_payloads_share_nothing_a_caller_could_change():
    """Two payloads with the same dictionary: the second is read from the decoder's memory of
    it, yet each has its own resolutions; a grid one payload infers is not the other's."""
    def payload(values: list[float]) -> bytes:
        n = len(values)
        table = wire.Table(("A.x", "C.f"), np.array([0] * n + [0], np.int64), np.array([0] * n + [1], np.int64),
                           {"count": np.ones(n + 1, np.int64), "mean": np.array([*values, 0.3])})
        return wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 60.0, table, res=RES), schema=SCHEMA)

    first = wire.decode(payload([0.5]), SCHEMA)
    first.res["A.x"] = (9.0, 9.0)  # type: ignore[index]
    second = wire.decode(payload([1.5]), SCHEMA)
    assert second.res["A.x"] == (0.5, 0.0) and second.table.stats["mean"].tolist() == [1.5, 0.3]
    on_grid = wire.Table(("C.f",), np.array([0], np.int64), np.array([0], np.int64),
                         {"count": np.ones(1, np.int64), "mean": np.array([0.25])})
    a = wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 60.0, on_grid, res=RES), schema=SCHEMA), SCHEMA)
    assert a.table.stats["mean"].tolist() == [0.25] and a.res["C.f"] is None


def test_a_huge_dictionary_is_checked_every_time_not_remembered():
    """The decoder remembers a vehicle's few small dictionaries; one a sender made huge (names of
    a hundred thousand signals) is read and checked, never kept, so a long-running decoder's
    memory does not follow what the wire sends."""
    def payload(n: int, prefix: str) -> bytes:
        names = tuple(f"{prefix}_Message_With_A_Long_Name.Signal_{i:06d}" for i in range(n))
        table = wire.Table(names, np.zeros(n, np.int64), np.arange(n, dtype=np.int64),
                           {"count": np.ones(n, np.int64), "mean": np.arange(n, dtype=np.float64)})
        return wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 60.0, table))

    wire._KNOWN_SIGNALS.clear()
    small = wire.decode(payload(20, "Small"))
    assert len(wire._KNOWN_SIGNALS) == 1
    huge = payload(5_000, "Huge")
    for _ in range(2):
        decoded = wire.decode(huge)
        assert len(decoded.table.names) == 5_000 and decoded.table.stats["mean"][-1] == 4_999.0
    assert len(wire._KNOWN_SIGNALS) == 1
    assert wire.decode(payload(20, "Small")).table.names == small.table.names

"""The wire encoder that computes a payload's columns for all its cells at once and writes its
integer columns in one pass, against the encoder as it was (``support.wire_encode_before``):
the same bytes, exactly, for any table: values on a signal's grid or not, NaN, infinities,
values past 2**53 and 1e300, cells of one sample, counts and sums so large that a signal falls
back to float (``test_wire_range``), empty tables and empty columns, any statistics, names in
any order, in a schema or not, layouts 2 and 3, thinned or not, split or not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from support import wire_encode_before as before
from telemetry import wire

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # both encoders' overflow in NaN, inf, 1e300

RES = {"A.x": (0.5, 0.0), "A.y": (0.1, -40.0), "B.z": (1.0, 0.0), "B.w": None, "C.f": None,
       "C.g": (2.0**-12, 0.0), "D.us": (1.0, 0.0), "X.extra": (0.25, 1.0), "Y.float": None}
SCHEMA = wire.register(wire.Schema.of({k: v for k, v in RES.items() if not k.startswith(("X.", "Y."))}))
ODD = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e100, 2.0**53 + 2, -(2.0**62), 1.7e15, -0.0, 5e-324]
HUGE_RAW = [0, 1, -1, 2**31, 2**51 - 1, 2**52, 2**53 + 2, 2**62, -(2**62), 2**63 - 1024]


@st.composite
def tables(draw) -> wire.Table:
    """Cells of any signals (names in any order), each signal's windows in order; each cell's
    values on the signal's grid (small or huge raw values) or anything at all, collapsed or not."""
    names = draw(st.lists(st.sampled_from(sorted(RES)), unique=True, max_size=len(RES)))
    stats = ["count", *draw(st.sets(st.sampled_from(wire.STATISTICS[1:])))]
    stats = [s for s in wire.STATISTICS if s in stats]
    sid, window, cols = [], [], {s: [] for s in stats}
    for i, name in enumerate(names):
        scale, offset = RES[name] or (2.0**-draw(st.integers(0, 14)), 0.0)
        windows = sorted(draw(st.sets(st.integers(-3, 40), max_size=6)))
        for k in windows:
            count = draw(st.sampled_from([1, 1, 2, 3, 10, 10_000, 2**40, 2**61]))
            kind = draw(st.integers(0, 5))
            if kind <= 2:  # on the grid: small raw values, or huge ones
                raw = draw(st.one_of(st.integers(-1000, 1000), st.sampled_from(HUGE_RAW)))
                lo = raw * scale + offset
                hi = lo if count == 1 or kind == 0 else (raw + draw(st.integers(0, 2**20))) * scale + offset
                mean = draw(st.sampled_from([lo, (lo + hi) / 2, hi, lo + (hi - lo) / 3]))
            else:  # anything
                lo, hi, mean = (draw(st.one_of(st.floats(-1e6, 1e6), st.sampled_from(ODD))) for _ in range(3))
                if count == 1 and kind == 3:
                    hi = mean = lo
            value = {"count": count, "min": lo, "max": hi, "mean": mean, "first": lo, "last": hi,
                     "std": draw(st.one_of(st.floats(0.0, 1e3), st.sampled_from([0.0, 1e30, float("nan"), float("inf")]))),
                     "t_min": k * 2.0 + draw(st.one_of(st.floats(0.0, 2.0), st.sampled_from(ODD))),
                     "t_max": k * 2.0 + draw(st.floats(0.0, 2.0))}
            sid.append(i)
            window.append(k)
            for s in stats:
                cols[s].append(value[s])
    return wire.Table(tuple(names), np.array(window, np.int64), np.array(sid, np.int64),
                      {s: np.array(v, np.int64 if s == "count" else np.float64) for s, v in cols.items()})


@settings(max_examples=200)
@given(tables(), st.booleans(), st.sampled_from([3, 3, 2]), st.booleans(), st.sampled_from(["zlib", "none"]))
@example(wire.Table.empty(), True, 3, False, "zlib")
@example(wire.Table.empty(("count",)), False, 2, True, "none")
def test_payload_bytes_are_the_bytes_they_were(table, by_schema, layout, thinned, codec):
    thin = {"factor": 2, "from_width": 1.0, "stats": list(table.stats)} if thinned else None
    p = wire.Payload("car", 7, "g", 2.0, 0.0, 84.0, table, 3, 0.5, thinned=thin, res=RES)
    schema = SCHEMA if by_schema else None
    assert wire.encode(p, codec=codec, schema=schema, layout=layout) == \
        before.encode(p, codec=codec, schema=schema, layout=layout)
    for part in wire.split(p, 2) if len(table.names) > 1 else []:
        assert wire.encode(part, schema=schema, layout=layout) == before.encode(part, schema=schema, layout=layout)


@settings(max_examples=25)
@given(st.data())
def test_a_table_of_a_vehicle_with_many_cells_is_as_before(data):
    """A few hundred cells of signals sharing their windows and counts (the signals of one CAN
    message), as a publish period of a real drive has."""
    n_sig = data.draw(st.integers(1, 12))
    n_win = data.draw(st.integers(1, 60))
    names = data.draw(st.permutations(sorted(RES)))[:n_sig] if n_sig <= len(RES) else sorted(RES)
    counts = np.array(data.draw(st.lists(st.integers(1, 400), min_size=n_win, max_size=n_win)), np.int64)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    sid = np.repeat(np.arange(len(names), dtype=np.int64), n_win)
    window = np.tile(np.arange(n_win, dtype=np.int64) + 100, len(names))
    res = [RES[n] or (2.0**-8, 0.0) for n in names]
    scale = np.array([r[0] for r in res])[sid]
    offset = np.array([r[1] for r in res])[sid]
    lo = rng.integers(-5000, 5000, len(sid)) * scale + offset
    hi = lo + rng.integers(0, 300, len(sid)) * scale
    count = np.tile(counts, len(names))
    hi[count == 1] = lo[count == 1]
    stats = {"count": count, "min": lo, "max": hi, "mean": (lo + hi) / 2, "last": hi, "std": (hi - lo) / 4,
             "first": lo, "t_min": window * 1.0 + 0.25, "t_max": window * 1.0 + 0.75}
    keep = data.draw(st.sets(st.sampled_from(wire.STATISTICS[1:]), min_size=1))
    table = wire.Table(tuple(names), window, sid, {s: stats[s] for s in wire.STATISTICS if s == "count" or s in keep})
    p = wire.Payload("car", 1, "drive", 1.0, 100.0, 160.0, table, res=RES)
    for schema in (SCHEMA, None):
        assert wire.encode(p, schema=schema) == before.encode(p, schema=schema)


@given(st.lists(st.tuples(st.booleans(), st.lists(st.one_of(st.integers(-300, 300), st.integers(-(2**63), 2**63 - 1)),
                                                  max_size=12)), max_size=8),
       st.lists(st.binary(max_size=5), max_size=3))
def test_a_body_of_integer_columns_is_each_column_as_leb128(columns, raws):
    """``_Body`` writes its integer columns in one pass: each section is the column's own LEB128
    (zigzag if signed; unsigned: an int64 as its uint64 bits), its length before it."""
    body = wire._Body()
    want = []
    for raw in raws:
        body.raw(raw)
        want.append(raw)
    for signed, values in columns:
        x = np.array(values, np.int64)
        if signed:
            body.ints(x, b"\x00")
            want.append(b"\x00" + wire._varints(x))
        else:
            body.uints(x)
            want.append(wire._uvarints(x.astype(np.uint64)))
    assert body.bytes() == b"".join(wire._uvarint(len(x)) + x for x in want)


def test_a_payload_whose_resolutions_are_lists_is_as_before():
    """Resolutions are remembered by their tuple (``_scales``); a mapping that gives lists (as
    JSON would) is read as well, not remembered, and the payload is the same bytes."""
    table = wire.Table(("A.x", "B.z"), np.array([3, 3], np.int64), np.array([0, 1], np.int64),
                       {"count": np.array([2, 1], np.int64), "min": np.array([1.5, 7.0]), "max": np.array([2.0, 7.0]),
                        "mean": np.array([1.75, 7.0])})
    as_lists = {"A.x": [0.5, 0.0], "B.z": [1.0, 0.0]}
    p = wire.Payload("car", 1, "g", 2.0, 0.0, 84.0, table, res=as_lists)  # type: ignore[arg-type]
    assert wire.encode(p) == before.encode(p)
    assert wire.encode(p) == wire.encode(wire.Payload("car", 1, "g", 2.0, 0.0, 84.0, table, res=RES))

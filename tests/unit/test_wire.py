"""The aggregates wire format (telemetry.wire): decode(encode(x)) equals x at the DBC's resolution
for generated windows of generated signals; malformed payloads are refused with a reason;
thinning and splitting keep what they say they keep."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import wire

SCALES = (1.0, 0.1, 0.01, 0.001, 0.0001, 0.5, 0.25, 0.05, 1e-7, 2.0, -0.1)
OFFSETS = (0.0, -40.0, 273.15, -1000.0, 0.5)


@st.composite
def tables(draw):
    """Windows of signals: each signal integer raw values on its DBC grid (or IEEE floats), each
    (window, signal) cell made of real samples, so its statistics are consistent."""
    n_signals = draw(st.integers(1, 6))
    width = draw(st.sampled_from((0.1, 1.0, 5.0, 10.0)))
    k0 = draw(st.integers(0, 2_000_000_000))
    n_windows = draw(st.integers(1, 12))
    res, rows = {}, []
    for s in range(n_signals):
        name = f"M{s}.S{s}"
        is_float = draw(st.booleans()) and s % 3 == 2
        scale, offset = draw(st.sampled_from(SCALES)), draw(st.sampled_from(OFFSETS))
        res[name] = None if is_float else (scale, offset)
        bits = draw(st.sampled_from((1, 8, 12, 16, 32)))
        signed = draw(st.booleans())
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed and bits > 1 else (0, 2**bits - 1)
        constant = draw(st.booleans())
        for k in range(k0, k0 + n_windows):
            if draw(st.integers(0, 4)) == 0:
                continue  # a window without this signal
            n = draw(st.integers(1, 6))
            if is_float:
                v = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n)), np.float64)
            else:
                raw = np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), np.int64)
                if constant:
                    raw[:] = raw[0]
                v = raw * scale + offset  # what cantools decodes
            t = k * width + np.sort(np.array(draw(st.lists(st.integers(0, 999_999), min_size=n, max_size=n)))) / 1e6 * width
            rows.append((k, name, v, t))
    return width, res, rows


def table_of(rows, names):
    sid = {n: i for i, n in enumerate(names)}
    stats = {s: [] for s in wire.STATISTICS}
    ks, ids = [], []
    for k, name, v, t in rows:
        ks.append(k)
        ids.append(sid[name])
        stats["count"].append(len(v))
        stats["min"].append(v.min())
        stats["max"].append(v.max())
        stats["mean"].append(v.mean())
        stats["last"].append(v[-1])
        stats["std"].append(v.std())
        stats["first"].append(v[0])
        stats["t_min"].append(t[np.argmin(v)])
        stats["t_max"].append(t[np.argmax(v)])
    return wire.Table(tuple(names), np.array(ks, np.int64), np.array(ids, np.int64),
                      {s: np.array(x, np.int64 if s == "count" else np.float64) for s, x in stats.items()}).sorted()


def check_equal(table: wire.Table, got: wire.Table, res: dict, width: float, *, mean_exact: bool = False,
                magnitude: np.ndarray | None = None) -> None:
    """``got`` is ``table`` as the layout states: count, min, max, first, last bit for bit; the
    mean within half a DBC step (layout 3; ``mean_exact``: from the sum of raw values, layout 2),
    a float signal's exact or within half the step of the grid it travels on (at most 2**-9);
    std within half a step; times to the microsecond. ``magnitude`` (per cell of ``table``: its
    largest |value|) bounds the float error of ``table``'s own mean (``v.mean()`` of large values
    that cancel: the exact mean from the raw sum is the better one)."""
    assert got.names == table.names or sorted(got.names) == sorted(table.names)
    order = {n: i for i, n in enumerate(got.names)}
    back = np.array([order[n] for n in table.names], np.int64)
    rank = np.lexsort((got.window, got.sid))
    mine = np.lexsort((table.window, back[table.sid]))
    assert np.array_equal(got.window[rank], table.window[mine])
    big = (np.zeros(len(table.window)) if magnitude is None else magnitude)[mine].tolist()
    for stat, values in table.stats.items():
        if stat not in got.stats:
            continue
        x, y = values[mine], got.stats[stat][rank]
        names = [table.names[i] for i in table.sid[mine].tolist()]
        for name, a, b, m in zip(names, x.tolist(), y.tolist(), big):
            r = res.get(name)
            if stat in ("count", "min", "max", "first", "last"):
                assert a == b, (name, stat, a, b)  # exact
            elif stat == "mean" and mean_exact:
                assert b == pytest.approx(a, rel=1e-12, abs=1e-9 * (abs(r[0]) if r else 1) + 2e-15 * m), (name, stat, a, b)
            elif stat == "mean" and not r:  # a float signal: exact, or within half its grid's step 2**-s, s >= 8,
                # and 1/(2n) of a step more, n >= 2, where its samples are finer than the grid (wire.py)
                assert b == pytest.approx(a, rel=1e-12, abs=1e-9) or abs(a - b) <= 0.75 * 2.0**-8, (name, stat, a, b)
            elif stat == "mean":  # the stated bound: half a step (and float rounding)
                assert abs(a - b) <= abs(r[0]) / 2 + 1e-9 * max(1.0, abs(a)), (name, stat, a, b)
            elif stat == "std":
                assert abs(a - b) <= (abs(r[0]) / 2 if r else 0) + 1e-9 * max(1.0, abs(a)), (name, stat, a, b)
            else:  # t_min, t_max: to the microsecond
                assert abs(a - b) <= 5e-7 + 1e-15 * abs(a), (name, stat, a, b)


@settings(max_examples=150, deadline=None)
@given(tables(), st.sampled_from([wire.STATISTICS, wire.DEFAULT_STATS, ("count",), ("count", "mean"),
                                  ("count", "min", "t_min"), ("count", "last", "std")]),
       st.booleans(), st.sampled_from(wire.CODECS), st.sampled_from((2, 3)))
def test_decode_of_encode_is_the_same_windows_at_the_dbc_resolution(data, stats, by_schema, codec, layout):
    width, res, rows = data
    names = sorted({name for _, name, _, _ in rows})
    if not names:
        return
    full = table_of(rows, names)
    table = full.select(stats)
    payload = wire.Payload("car", 7, "default", width, min(table.window) * width, (max(table.window) + 1) * width,
                           table, 3, 12.5, res=res)
    schema = wire.Schema.of(res) if by_schema else None
    data_bytes = wire.encode(payload, codec=codec, schema=schema, layout=layout)
    got = wire.decode(data_bytes, schema)
    assert (got.vehicle, got.seq, got.group, got.width, got.start, got.end) == ("car", 7, "default", width,
                                                                                payload.start, payload.end)
    assert (got.late_samples, got.late_oldest, got.stats) == (3, 12.5, tuple(stats))
    magnitude = np.maximum(np.abs(full.stats["min"]), np.abs(full.stats["max"]))
    check_equal(table, got.table, res, width, mean_exact=layout == 2, magnitude=magnitude)


def test_a_float_mean_from_values_finer_than_its_inferred_grid_is_within_its_bound():
    # Found by hypothesis: the grid 2**-8 is inferred from the exact statistics (1.29296875 =
    # 331/256), but a mean's samples need not be among them (1.099609375 = 563/512): the sum of
    # raw values, 793.5 steps, is rounded to 794 before the mean to 199/256, 0.0024 from the true
    # 0.7749: half a step and 1/(2n) of a step more (wire.py's bound), not half a step alone.
    rows = [(0, "M0.S0", np.zeros(5), np.zeros(5)),
            (6, "M2.S2", np.array([1.29296875]), np.array([0.6])),
            (8, "M2.S2", np.array([0.0, 0.0, 1.099609375, 2.0]), np.full(4, 0.8))]
    table = table_of(rows, ["M0.S0", "M2.S2"])
    payload = wire.Payload("car", 7, "default", 0.1, 0.0, 0.9, table, 3, 12.5, res={"M0.S0": (1.0, 0.0), "M2.S2": None})
    got = wire.decode(wire.encode(payload, codec="zlib", layout=3)).table
    i = got.names.index("M2.S2")
    mean = got.stats["mean"][(got.sid == i) & (got.window == 8)][0]
    step, n = 2.0**-8, 4
    assert abs(mean - (1.099609375 + 2.0) / 4) <= step / 2 + step / (2 * n)
    assert mean * 256 == round(mean * 256)  # on the grid


def test_signals_on_their_grid_travel_as_small_integers():
    names = tuple(f"BMS.Cell{i:02d}" for i in range(40))
    k = np.repeat(np.arange(60), 40)
    sid = np.tile(np.arange(40), 60)
    rng = np.random.default_rng(1)
    raw = 40_000 + np.round(np.sin(k / 10.0) * 100) + rng.integers(-3, 4, len(k))  # 0.1 mV steps, a little noise
    lo, hi = raw - rng.integers(0, 4, len(k)), raw + rng.integers(0, 4, len(k))
    stats = {"count": np.full(len(k), 10), "min": lo * 0.0001, "max": hi * 0.0001, "mean": raw * 0.0001}
    table = wire.Table(names, k, sid, stats).sorted()
    payload = wire.Payload("car", 1, "cells", 1.0, 0.0, 60.0, table, res={n: (0.0001, 0.0) for n in names})
    schema = wire.Schema.of(payload.res)
    small = wire.encode(payload, schema=schema)
    as_floats = wire.encode(wire.Payload("car", 1, "cells", 1.0, 0.0, 60.0, table), schema=None)
    assert len(small) * 2 < len(as_floats)  # integers at the resolution beat float64
    assert len(small) < 2400 * 3  # 2,400 cells, three values each besides a constant count: under a byte a value


def test_a_value_off_its_grid_makes_its_signal_travel_as_float():
    table = wire.Table(("A.x",), np.array([0, 1]), np.array([0, 0]),
                       {"count": np.array([1, 1]), "min": np.array([1.0, 1.05]), "max": np.array([1.0, 1.05]),
                        "mean": np.array([1.0, 1.05])})
    p = wire.Payload("car", 1, "g", 1.0, 0.0, 2.0, table, res={"A.x": (0.1, 0.0)})
    got = wire.decode(wire.encode(p))
    assert got.res["A.x"] is None and got.table.stats["min"].tolist() == [1.0, 1.05]  # exact, as float


def good_payload() -> bytes:
    table = wire.Table(("A.x", "B.y"), np.array([5, 5, 6]), np.array([0, 1, 1]),
                       {"count": np.array([2, 1, 3]), "min": np.array([1.0, 2.0, 3.0]), "max": np.array([1.5, 2.0, 4.0]),
                        "mean": np.array([1.25, 2.0, 3.5])})
    return wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 10.0, table.sorted(), res={"A.x": (0.5, 0.0)}))


def inflate(data: bytes) -> bytes:
    """A layout-2 body: raw deflate with the layout's preset dictionary (docs/MESSAGES.md)."""
    return zlib.decompressobj(-15, wire._ZDICT).decompress(data[10:])


def deflate(raw: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, wire._ZDICT)
    return z.compress(raw) + z.flush()


def sections(raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        n, shift = 0, 0
        while True:
            byte = raw[at]
            at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(raw[at:at + n])
        at += n
    return out


def joined(parts: list[bytes]) -> bytes:
    out = b""
    for x in parts:
        assert len(x) < 128 * 128
        out += (bytes((len(x),)) if len(x) < 128 else bytes((0x80 | len(x) & 0x7F, len(x) >> 7))) + x
    return out


def rebuilt(head_change=None, body=None, dictionary_change=None, grid=None) -> bytes:
    """The good payload with its header, dictionary or grid section changed, or its body replaced."""
    data = good_payload()
    parts = sections(inflate(data))
    head, dictionary = json.loads(parts[0]), json.loads(parts[1])
    head.update(head_change or {})
    dictionary.update(dictionary_change or {})
    if grid is not None:
        parts[2] = grid  # layout 3 (by names): header, dictionary, grids, cells...
    raw = joined([json.dumps(head).encode(), json.dumps(dictionary).encode(), *parts[2:]]) if body is None else body
    return data[:6] + struct.pack("<I", len(raw)) + deflate(raw)


@pytest.mark.parametrize(("data", "reason"), [
    (b"TLMA", "no TLMA prefix"),
    (b"XXXX\x02\x00\x00\x00\x00\x00", "no TLMA prefix"),
    (b"TLMA\x04\x00\x00\x00\x00\x00", "version 4"),
    (b"TLMA\x02\x07\x00\x00\x00\x00", "unknown codec"),
    (b"TLMA\x02\x00\xff\xff\xff\xff", "over"),
    (b"TLMA\x02\x00\x10\x00\x00\x00" + deflate(b"x" * 15), "its prefix says 16"),
    (b"TLMA\x02\x00\x10\x00\x00\x00garbage", "does not decompress"),
    (None, "not one complete deflate stream"),
    ("head:vehicle", "without a vehicle"),
    ("head:width", "width must be positive"),
    ("head:start", "is not a finite number"),
    ("head:stats", "in that order"),
    ("head:seq", "not a count"),
    ("dict:names", "names must be distinct strings"),
    ("grid:\x00\x03", "'grid' must list"),  # A.x, a signal with a resolution, on a grid
    ("grid:\x01\x03\x00\x03", "positions must increase"),
    ("grid:\x01", "pairs of"),
    ("body:tail", "bytes after its last column"),
    ("body:short", "ends early"),
])
def test_a_malformed_payload_is_refused_with_its_reason(data, reason):
    if data is None:
        data = good_payload()[:-2]
    elif isinstance(data, str):
        where, what = data.split(":")
        if where == "head":
            change = {"vehicle": {"vehicle": ""}, "width": {"width": 0}, "start": {"start": "x"},
                      "stats": {"stats": ["min", "count"]}, "seq": {"seq": -1}}[what]
            data = rebuilt(change)
        elif where == "dict":
            data = rebuilt(dictionary_change={"names": {"names": ["A.x", "A.x"]}}[what])
        elif where == "grid":
            data = rebuilt(grid=what.encode("latin-1"))
        else:
            raw = inflate(good_payload())
            data = rebuilt(body=raw + b"\x00" if what == "tail" else raw[:-3])
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(data)


# A layout-1 payload (made by the previous encoder): a spool written before an update still holds
# them, and the cloud still receives them, so the decoder reads both layouts.
V1_BY_NAMES = ("VExNQQEAbQEAAHjaVU/BbsMgDIWk/RGfEUq17cKh7dbPiHJACaJohLRA2m1VpH3aPm02rTSNg/38/PxsfhhjN7iA2gh4d2EABdraaK"
               "zOJoGAizm63hukex2xTuZctDZO8wlZi9zVDfmIrGywn3XMoBrChuw2zYPOCVQL/TSHjDOjCxT1B0WjA3QCeuM9ip5R7mzQhJ8EeLwE1A2SHk"
               "8eb1JoN/nBJFwTZu+XZVv+EPRoyopXSaZv8hPjQX6RcyydtpEvAs/pREu3FkQO3bJCB8YrXlFer1l5nBeAbMUx76t7hWFVF1jXfzJy2NX3wU"
               "f9vf3f3+9+AfaDTuQ=")
V1_BY_SCHEMA = ("VExNQQEAfQEAAHjaVU/LTsMwEMyj/ZE9RyhpObQ+0F75hgqhjbM4EY5TbKdUqiLxaXwKn8JuUgnhw3h2PDu7/k6S5AYXUFUB751rQAEa48"
                "lgpAAFXKjttCWWNXquA33MXuOH8cyqYe2za2LL6kPJ7xF9BFUKJ4mryrscA6gT6GF0kXv6zgniVZDQwUsBmqxl0yPbO+NQ+LYAy5uAukHA/m"
                "x5J8Vxg20o8Bg3WjtNz/Mfgm6pR16p0lW92+7rTV3TTtcbnoDh9c0OyB0nnkPX6FEiHfYSKJpfyDSlHPazYkjSLM3kXq+T+aTpTFjNxHTMlo"
                "phlc80z/9sknDIl8Z7/fX0//14+AVYIVYz")
V1_WINDOWS = {5.0: {"A.x": {"count": 2, "min": 1.0, "max": 1.5, "mean": 1.25}, "B.y": {"count": 1, "min": 2.0, "max": 2.0, "mean": 2.0}},
              6.0: {"B.y": {"count": 3, "min": 3.0, "max": 4.0, "mean": 10 / 3}, "C.z": {"count": 2, "min": 0.25, "max": 0.75, "mean": 0.5}}}


def test_a_layout_1_payload_still_decodes_and_comes_back_as_layout_3():
    schema = wire.register(wire.Schema.of({"A.x": (0.5, 0.0), "B.y": (1.0, 0.0), "C.z": None, "D.w": (0.1, 0.0)}))
    rounded = {k: {n: dict(s) for n, s in w.items()} for k, w in V1_WINDOWS.items()}
    rounded[6.0]["B.y"]["mean"] = 3.0  # 10/3 to the nearest step of 1.0: layout 3's stated precision
    rounded[5.0]["A.x"]["mean"] = 1.5  # 1.25, 2.5 steps of 0.5: half up (half a step off)
    for text in (V1_BY_NAMES, V1_BY_SCHEMA):
        old = base64.b64decode(text)
        assert old[4] == 1
        got = wire.decode(old)
        assert got.windows() == V1_WINDOWS
        again = wire.encode(got, schema=schema)
        assert again[4] == 3 and wire.decode(again).windows() == rounded
        assert len(again) < len(old)
        layout_2 = wire.encode(got, schema=schema, layout=2)  # still read: a spool may hold them
        assert layout_2[4] == 2 and wire.decode(layout_2).windows() == V1_WINDOWS


def test_a_payload_by_an_unknown_schema_says_what_the_decoder_needs():
    res = {"Z.unknown_to_anyone_else": (0.5, 0.0)}
    table = wire.Table(tuple(res), np.array([1]), np.array([0]), {"count": np.array([1]), "mean": np.array([2.0])})
    data = wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 10.0, table, res=res), schema=wire.Schema(tuple(res), (None,)))
    with pytest.raises(wire.WireError, match=r"schema '[0-9a-f]{16}'.*give it the vehicle's DBC files"):
        wire.decode(data)
    schema = wire.register(wire.Schema(tuple(res), (None,)))
    assert wire.decode(data).table.names == tuple(res) and wire.decode(data, schema).table.stats["mean"].tolist() == [2.0]


def test_signals_outside_the_schema_travel_by_name():
    schema = wire.Schema.of({"A.x": (1.0, 0.0), "C.z": (0.1, 0.0)})
    res = {"A.x": (1.0, 0.0), "B.extra": (0.5, 0.0)}
    table = wire.Table(("B.extra", "A.x"), np.array([0, 0]), np.array([0, 1]),
                       {"count": np.array([1, 2]), "min": np.array([1.5, 3.0]), "max": np.array([1.5, 4.0])})
    got = wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 1.0, table, res=res), schema=schema), schema)
    assert got.windows() == {0.0: {"A.x": {"count": 2, "min": 3.0, "max": 4.0}, "B.extra": {"count": 1, "min": 1.5, "max": 1.5}}}


def test_thinning_merges_windows_exactly_and_says_so():
    rng = np.random.default_rng(5)
    rows = []
    for k in range(20):
        v = rng.integers(0, 100, 7) * 0.5
        rows.append((k, "A.x", v, k + np.linspace(0, 0.9, 7)))
    table = table_of(rows, ["A.x"])
    p = wire.Payload("car", 1, "g", 1.0, 0.0, 20.0, table, res={"A.x": (0.5, 0.0)})
    thin = wire.thin(p, 5)
    assert thin.width == 5.0 and thin.thinned == {"factor": 5, "from_width": 1.0, "stats": list(wire.STATISTICS)}
    for j in range(4):
        v = np.concatenate([r[2] for r in rows[5 * j:5 * j + 5]])
        i = int(np.flatnonzero(thin.table.window == j)[0])
        s = {name: col[i] for name, col in thin.table.stats.items()}
        assert (s["count"], s["min"], s["max"], s["first"], s["last"]) == (35, v.min(), v.max(), v[0], v[-1])
        assert s["mean"] == pytest.approx(v.mean()) and s["std"] == pytest.approx(v.std())
    fewer = wire.decode(wire.encode(wire.thin(p, 1, ("count", "mean"))))
    assert fewer.stats == ("count", "mean") and fewer.thinned == {"factor": 1, "from_width": 1.0, "stats": ["count", "mean"]}
    assert len(wire.encode(wire.thin(p, 10, ("count", "mean")))) < len(wire.encode(p)) / 2


def test_a_mean_rounded_on_the_wire_stays_within_half_a_step_when_the_uploader_thins_it():
    """The uploader thins payloads it decoded (means already rounded to the step): a thinned
    payload carries its means as exact sums of raw values, so the bound holds after thinning."""
    rng = np.random.default_rng(7)
    rows = [(k, "A.x", rng.integers(0, 1000, 5) * 0.1, k + np.linspace(0, 0.9, 5)) for k in range(20)]
    table = table_of(rows, ["A.x"]).select(wire.DEFAULT_STATS)
    sent = wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 20.0, table, res={"A.x": (0.1, 0.0)})))
    means = sent.table.stats["mean"]
    assert not np.array_equal(means, table.stats["mean"])  # rounded, to the step
    assert np.abs(means - table.stats["mean"]).max() <= 0.05 + 1e-9
    thinned = wire.decode(wire.encode(wire.thin(sent, 5)))
    for j in range(4):
        v = np.concatenate([r[2] for r in rows[5 * j:5 * j + 5]])
        assert abs(thinned.table.stats["mean"][j] - v.mean()) <= 0.05 + 1e-9
        assert thinned.table.stats["mean"][j] == pytest.approx(means[5 * j:5 * j + 5].mean(), abs=1e-12)  # exact sum


def test_a_split_payload_holds_every_cell_once_with_its_own_id():
    names = tuple(f"S.{i}" for i in range(10))
    table = wire.Table(names, np.repeat(np.arange(3), 10), np.tile(np.arange(10), 3),
                       {"count": np.ones(30, np.int64), "mean": np.arange(30.0)}).sorted()
    p = wire.Payload("car", 1, "g", 1.0, 0.0, 3.0, table)
    parts = wire.split(p, 3)
    assert [q.key for q in parts] == ["g/0.0/0of3", "g/0.0/1of3", "g/0.0/2of3"]
    cells = sorted((q.table.names[s], int(k), m) for q in parts for s, k, m in
                   zip(q.table.sid.tolist(), q.table.window.tolist(), q.table.stats["mean"].tolist()))
    assert cells == sorted((names[s], int(k), m) for s, k, m in zip(table.sid.tolist(), table.window.tolist(),
                                                                   table.stats["mean"].tolist()))
    assert all(wire.decode(wire.encode(q)).part == q.part for q in parts)


def test_every_statistic_survives_a_payload_without_a_resolution():
    rows = [(k, "F.v", np.array([math.pi * k, -1e150, 1e-300]), k + np.array([0.1, 0.2, 0.3])) for k in range(3)]
    table = table_of(rows, ["F.v"])
    got = wire.decode(wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 3.0, table)))
    check_equal(table, got.table, {}, 1.0)


def test_an_ieee_float_signal_on_a_power_of_two_grid_travels_as_integers_and_comes_back_at_its_resolution():
    rng = np.random.default_rng(3)
    k = np.repeat(np.arange(30), 2)
    sid = np.tile(np.arange(2), 30)
    raw = rng.integers(-2000, 2000, (len(k), 5))  # an accelerometer: int16 / 4096 g, as float32
    values = np.where(sid[:, None] == 0, raw / 4096.0, raw * 0.01 + 0.001)  # the second: decimals
    stats = {"count": np.full(len(k), 5), "min": values.min(axis=1), "max": values.max(axis=1),
             "mean": values.sum(axis=1) / 5}
    table = wire.Table(("IMU.AccX", "IMU.Decimal"), k, sid, stats).sorted()
    p = wire.Payload("car", 1, "g", 1.0, 0.0, 30.0, table, res={"IMU.AccX": None, "IMU.Decimal": None})
    data = wire.encode(p)
    assert sections(inflate(data))[2] == bytes((0, 12))  # only the accelerometer is on a grid: 2**-12
    got = wire.decode(data)
    for stat in ("count", "min", "max"):
        assert got.table.stats[stat].tolist() == table.stats[stat].tolist(), stat  # bit for bit
    error = np.abs(got.table.stats["mean"] - table.stats["mean"])
    assert error[table.sid == 0].max() <= 2.0**-13 and error[table.sid == 0].max() > 0  # rounded: half a step
    assert error[table.sid == 1].max() == 0  # the decimals, as float: exact
    layout_2 = wire.decode(wire.encode(p, layout=2))
    assert json.loads(sections(inflate(wire.encode(p, layout=2)))[1])["grid"] == [[0, 12]]
    assert layout_2.table.stats["mean"].tolist() == table.stats["mean"].tolist()  # layout 2: bit for bit
    assert got.res == {"IMU.AccX": None, "IMU.Decimal": None}  # what the DBC says, not the grid
    as_float = wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 30.0, wire.Table(
        ("IMU.Decimal",), table.window[table.sid == 1], np.zeros(30, np.int64),
        {s: v[table.sid == 1] for s, v in stats.items()})))
    assert len(data) - len(as_float) < len(as_float) / 2  # the accelerometer costs under half the decimals


def test_cells_shared_by_the_signals_of_one_message_travel_once():
    names = tuple(f"M.S{i:02d}" for i in range(40))
    k = np.repeat(np.arange(20), 40)
    sid = np.tile(np.arange(40), 20)
    count = np.repeat(np.random.default_rng(2).integers(1, 9, 20), 40)  # every signal of M in each frame
    table = wire.Table(names, k, sid, {"count": count, "mean": np.ones(len(k))}).sorted()
    p = wire.Payload("car", 1, "g", 1.0, 0.0, 20.0, table, res={n: (1.0, 0.0) for n in names})
    parts = sections(inflate(wire.encode(p)))
    same = parts[4]  # header, dictionary, grids, k0, same
    assert same == bytes([0] + [1] * 39)  # each signal shares the cells of the one before it
    assert wire.decode(wire.encode(p)).table.stats["count"].tolist() == table.stats["count"].tolist()


def test_a_mean_rounded_to_a_grid_is_the_same_however_the_aggregator_folded_its_sum():
    """Layout 3 rounds the mean of a float signal on a fine grid: a mean one float rounding off
    (the sums of another batching) travels on the same grid and comes back the same."""
    raw = np.random.default_rng(11).integers(-3000, 3000, (40, 3))
    values = raw / 4096.0  # an accelerometer on 2**-12
    stats = {"count": np.full(40, 3), "min": values.min(axis=1), "max": values.max(axis=1), "mean": values.mean(axis=1)}
    table = wire.Table(("IMU.AccX",), np.arange(40), np.zeros(40, np.int64), stats)
    nudged = {**stats, "mean": np.nextafter(stats["mean"], np.inf)}
    data = [wire.encode(wire.Payload("car", 1, "g", 1.0, 0.0, 40.0, wire.Table(table.names, table.window, table.sid, s)))
            for s in (stats, nudged)]
    assert [sections(inflate(d))[2] for d in data] == [bytes((0, 12))] * 2  # on the grid both times
    got = [wire.decode(d).table.stats["mean"] for d in data]
    assert got[0].tolist() == got[1].tolist() and np.abs(got[0] - stats["mean"]).max() <= 2.0**-13


def test_a_payload_as_the_first_release_of_layout_2_wrote_it_still_decodes():
    """Bytes written by layout 2 as it first shipped (main at 6a33334): windows 100 and 101 of two
    signals at 0.5 and 0.25 resolution. A spool on a car may still hold such payloads."""
    data = bytes.fromhex(
        "544c4d410200dc0000002b43b63039b10866a73991761a1a206c35343022d65a1344b42af9ea2502257cf59294e0311c6da0"
        "67aa0334385607c8328230636b19199818189898985840240b1b13231ba302a304230b339b121333030303230b0b132310b0b"
        "030822900")
    p = wire.decode(data)
    assert (p.vehicle, p.seq, p.start, p.end) == ("car", 7, 100.0, 102.0)
    t = p.table
    assert t.names == ("M.a", "M.b") and t.window.tolist() == [100, 101, 100, 101] and t.sid.tolist() == [0, 0, 1, 1]
    assert {k: v.tolist() for k, v in t.stats.items()} == {
        "count": [3, 2, 1, 4], "mean": [1.5, 2.0, 3.0, 4.25], "min": [1.0, 1.5, 3.0, 4.0], "max": [2.0, 2.5, 3.0, 4.5]}

"""The report's numbers made in numpy (``_r_list``, ``_t_list``, ``_buckets``, ``payload_series``)
against the code they replaced, kept here as the reference: a value, a bucket and a series per
signal, formatted one by one in Python. Equal means the same doubles (``repr``: -0.0 and NaN
as null included), so the page's JSON is the same bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from telemetry import wire
from telemetry.tools import report
from telemetry.tools.report import _r, _r_list, _t, _t_list, bucketed, payload_series


def reference_bucketed(a: np.ndarray, max_points: int) -> dict[str, list[Any]]:
    """``report.bucketed`` as it was: one signal, each value formatted on its own."""
    if len(a) > max_points:
        starts = np.linspace(0, len(a), max_points, endpoint=False).astype(np.int64)
        n = np.add.reduceat(a[:, 5], starts)
        weighted = np.add.reduceat(a[:, 4] * a[:, 5], starts)
        ends = np.append(starts[1:], len(a)) - 1
        a = np.column_stack([a[starts, 0], a[ends, 1], np.minimum.reduceat(a[:, 2], starts),
                             np.maximum.reduceat(a[:, 3], starts), np.where(n > 0, weighted / np.maximum(n, 1), a[starts, 4]), n])
    return {key: [(_t if key[0] == "t" else _r)(x) for x in a[:, i].tolist()]
            for i, key in enumerate(("t0", "t1", "min", "max", "mean", "n"))}


def reference_series(payloads: Sequence[wire.Payload], max_points: int) -> dict[str, dict[str, list[Any]]]:
    """``report.payload_series`` as it was: every row sorted by all its columns, then a signal at a time."""
    index: dict[str, int] = {}
    parts: list[np.ndarray] = []
    for payload in payloads:
        t = payload.table
        if not len(t):
            continue
        ids = np.array([index.setdefault(name, len(index)) for name in t.names], dtype=np.float64)[t.sid]
        stats = t.stats
        nan = np.full(len(t), math.nan)
        mean = stats.get("mean", stats.get("last", nan)).astype(np.float64)
        start = t.window * payload.width
        parts.append(np.column_stack([ids, start, start + payload.width,
                                      stats.get("min", mean).astype(np.float64), stats.get("max", mean).astype(np.float64),
                                      mean, stats["count"].astype(np.float64) if "count" in stats else np.ones(len(t))]))
    if not parts:
        return {}
    rows = np.concatenate(parts)
    rows = rows[np.lexsort(rows.T[::-1])]
    names = list(index)
    bounds = np.searchsorted(rows[:, 0], np.arange(len(names) + 1))
    return {names[i]: reference_bucketed(rows[bounds[i]:bounds[i + 1], 1:], max_points)
            for i in sorted(range(len(names)), key=names.__getitem__)}


def same(got: Any, want: Any) -> bool:
    """Equal to the bit: repr tells -0.0 from 0.0 and shows every digit a double has."""
    return repr(got) == repr(want)


# Anything a double can be, and numbers made to sit on (or next to) a rounding tie of 6
# significant digits or of milliseconds, where a fast path could round the other way.
ANY = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
TIES = st.builds(lambda m, e, nudge: float(f"{m}5e{e}") * (1 + nudge * 2.0**-52),
                 st.integers(-999999, 999999), st.integers(-330, 310), st.integers(-3, 3))
MILLI = st.builds(lambda m, frac: float(f"{m}.{frac:03d}5") if frac >= 0 else m / 1000 + 0.0005,
                  st.one_of(st.integers(-2**55, 2**55), st.integers(-10**4, 10**4)), st.integers(-1, 999))
VALUES = st.lists(st.one_of(ANY, TIES, MILLI, st.sampled_from([0.0, -0.0, 1e5, 1e6, 999999.5, 99999.95, 1e-300, 5e-324,
                                                                 1.7976931348623157e308, 1782900000.0005])),
                  max_size=60)


@given(VALUES)
def test_six_significant_digits_in_numpy_are_the_same_doubles_as_formatting_each_value(values):
    assert same(_r_list(np.array(values, dtype=np.float64)), [_r(x) for x in values])


@given(VALUES)
def test_milliseconds_in_numpy_are_the_same_doubles_as_round_of_each_value(values):
    finite = [x for x in values if math.isfinite(x)]  # times are finite (round refuses NaN and inf)
    assert same(_t_list(np.array(finite, dtype=np.float64)), [_t(x) for x in finite])


def test_the_fast_path_takes_nearly_every_value_and_gives_way_only_where_it_must():
    calls: list[float] = []
    values = np.concatenate([np.random.default_rng(1).normal(0, 1e4, 10000), [0.0, -0.0, math.nan, 1.5e-7, 123456.5]])
    slow = report._r

    def counted(x: float) -> float | None:
        calls.append(x)
        return slow(x)

    report._r = counted
    try:
        got = _r_list(values)
    finally:
        report._r = slow
    assert same(got, [slow(x) for x in values.tolist()])
    assert math.isnan(calls[0]) and calls[1:] == [123456.5]  # NaN (null) and an exact tie, not the rest


ROW = st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), ANY, ANY, ANY,
                st.one_of(st.integers(0, 5).map(float), st.sampled_from([math.nan, math.inf, 1e300, -1.0])))


@given(st.lists(ROW, max_size=40), st.integers(1, 12), st.booleans())
def test_buckets_of_one_signal_equal_the_reference(rows, max_points, in_order):
    a = np.array(sorted(rows, key=lambda r: (r[0], r[1])) if in_order else rows, dtype=np.float64).reshape(-1, 6)
    with np.errstate(all="ignore"):  # inf * 0 and the like: NaN on both sides
        assert same(bucketed(a, max_points), reference_bucketed(a, max_points))


NAMES = ["A.x", "A.y", "B.z", "C.w", "C.a"]


@st.composite
def payloads(draw: st.DrawFn) -> list[wire.Payload]:
    """Payloads as the taps hear them: any order, windows repeated across payloads (a late
    sample's second payload), any statistics present, adversarial values, empty tables."""
    out = []
    for seq in range(draw(st.integers(0, 6))):
        names = tuple(draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=5)))
        n = draw(st.integers(0, 30)) if names else 0
        sid = np.array(draw(st.lists(st.integers(0, max(len(names) - 1, 0)), min_size=n, max_size=n)), np.int64)
        window = np.array(draw(st.lists(st.integers(-3, 40), min_size=n, max_size=n)), np.int64)
        stats: dict[str, np.ndarray] = {}
        for stat in draw(st.lists(st.sampled_from(["count", "min", "max", "mean", "last"]), unique=True)):
            if stat == "count":
                stats[stat] = np.array(draw(st.lists(st.integers(0, 10**7), min_size=n, max_size=n)), np.int64)
            else:
                stats[stat] = np.array(draw(st.lists(st.one_of(ANY, TIES), min_size=n, max_size=n)), np.float64)
        width = draw(st.sampled_from([1.0, 0.5, 0.1, 10.0]))
        table = wire.Table(names, window, sid, stats)
        out.append(wire.Payload("car", seq, "g", width, 0.0, 50 * width, table))
    return out


@given(payloads(), st.integers(1, 8))
def test_series_from_payloads_equal_the_reference(heard, max_points):
    with np.errstate(all="ignore"):
        assert same(payload_series(heard, max_points), reference_series(heard, max_points))


def test_series_with_a_window_heard_twice_sort_by_every_column_as_before():
    """Two rows of one signal and window (a second payload for a late sample): ordered by their
    other columns, so the merged buckets (and the page) do not depend on the order heard."""
    def one(mean: float, count: int) -> wire.Payload:
        table = wire.Table(("M.s",), np.array([3, 4], np.int64), np.array([0, 0], np.int64),
                           {"count": np.array([count, 1], np.int64), "mean": np.array([mean, 1.0])})
        return wire.Payload("car", 0, "g", 1.0, 0.0, 10.0, table)
    heard = [one(5.0, 2), one(-1.0, 7)]
    for max_points in (1, 2, 400):
        assert same(payload_series(heard, max_points), reference_series(heard, max_points))
        assert same(payload_series(heard[::-1], max_points), payload_series(heard, max_points))
    assert payload_series(heard)["M.s"]["mean"] == [-1.0, 5.0, 1.0, 1.0]

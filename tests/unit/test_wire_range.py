"""Large values in many samples: a signal whose statistics would leave the integers the wire
carries them in (a mean's sum of raw values ``count * (mean - offset) / scale``, a std in
steps) travels as float in that payload and comes back as the aggregator made it, instead of
wrapping around in int64 (a microsecond timestamp of 1.7e15 in a window of 10,000 samples made
the mean 0.0). Round trips of the aggregator's payloads, and of tables with counts no test could
feed it, over extreme values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.helpers import columns
from telemetry import wire
from telemetry.edge.aggregator import Aggregation, Resolutions, dbc_resolutions
from telemetry.edge.config import parse_config
from telemetry.edge.messages import EndOfStream, Signals

ALL = ["count", "min", "max", "mean", "last", "std", "first", "t_min", "t_max"]
DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 1280 Clock: 8 ECU
 SG_ Micros : 0|64@1+ (1,0) [0|0] "us" ECU

BO_ 1281 Odometer: 8 ECU
 SG_ Distance : 0|64@1- (0.001,-1000) [0|0] "m" ECU
"""


def decoded_windows(aggregation: Aggregation, batches: list) -> list[tuple[dict, dict]]:
    """Each payload the aggregator makes of the batches: (its windows as it made them, the same
    read back from its bytes by ``wire.decode``, as the cloud decoder reads them)."""
    out = []
    msgs = [Signals("drive", i, 0.0, 0.0, {}, b) for i, b in enumerate(batches)]
    for message in [*msgs, EndOfStream("drive", len(msgs), None, {})]:
        for a in aggregation.publish(message):
            out.append((a.payload.windows(), wire.decode(a.to_bytes()).windows()))
    assert out
    return out


@pytest.mark.parametrize("samples", [3000, 10_000])
@pytest.mark.parametrize("stats", [["count", "min", "max", "mean"], ALL])
def test_a_microsecond_timestamp_signal_keeps_its_mean(tmp_path, samples, stats):
    """A 64-bit DBC signal of microseconds (scale 1), 1.7e15, sampled at 1 kHz in 10 s windows:
    the sum of a window's raw values is past 2**62 (3,000 samples: ``2 S + count`` wrapped
    silently) or past 2**63 (10,000: the cast to int64 gave -2**63), and the mean came back
    -1.37e15 or 0.0. Every statistic now comes back as the aggregator made it, to the layout's
    accuracy (10,000 samples: the mean and std as float, exact)."""
    (tmp_path / "clock.dbc").write_text(DBC)
    cfg = parse_config({"vehicle": "car", "aggregator": {"window_seconds": 10.0, "stats": stats}}).aggregator
    aggregation = Aggregation(cfg, "car", res=dbc_resolutions([str(tmp_path / "clock.dbc")]))
    t = 1782900000.0 + np.arange(samples) / 1000.0
    micros = 1.7e15 + np.arange(samples) * 1000.0  # on the grid, exact in float64
    metres = 2.0e12 + np.arange(samples) * 0.5  # raw (v + 1000) / 0.001: 2e15, on the grid
    batch = columns(**{"Clock.Micros": (t.tolist(), micros.tolist()), "Odometer.Distance": (t.tolist(), metres.tolist())})
    ((sent, got),) = decoded_windows(aggregation, [batch])
    (start,) = sent
    assert abs(sent[start]["Clock.Micros"]["mean"] - (1.7e15 + (samples - 1) * 500.0)) < 1.0  # the aggregator's float sum
    for name, step in (("Clock.Micros", 1.0), ("Odometer.Distance", 0.001)):
        want, have = sent[start][name], got[start][name]
        for stat in stats:
            if stat in ("mean", "std", "t_min", "t_max"):  # to half a step, half a microsecond
                assert close(have[stat], want[stat], 1e-6 if stat[0] == "t" else step, want), (name, stat)
            else:
                assert have[stat] == want[stat], (name, stat)


# -- round trips of what the aggregator makes, values and counts at their extremes ------------

RES = {"A.us": (1.0, 0.0), "A.m": (0.001, -1000.0), "B.t": (0.1, -40.0), "B.g": (2.0**-12, 0.0), "C.f": None}
BASES = [0, 1, -1, 2**31, 2**40, 2**51 - 1, 2**52 - 1, 2**52, 2**53 + 2, 2**62, -(2**62), 2**63 - 1024, 1_700_000_000_000_000]
CONFIGS = [["count", "min", "max", "mean"], ALL, ["count", "mean", "std"], ["count", "mean"], ["count", "std", "t_max"]]


@st.composite
def runs(draw):
    """Per signal a run of samples on its grid (or a decimal for the float signal), from a base
    of any size, moving by a few steps a sample; a few or thousands of samples a window."""
    batches = []
    t0 = 1782900000.0 + draw(st.integers(0, 50))
    for name in draw(st.lists(st.sampled_from(sorted(RES)), min_size=1, max_size=len(RES), unique=True)):
        n = draw(st.sampled_from([1, 2, 3, 40, 3000, 12_000]))
        base = draw(st.one_of(st.sampled_from(BASES), st.integers(-(2**63), 2**63 - 1)))
        base = base * draw(st.sampled_from([1, -1]))
        step = draw(st.integers(-3, 3))
        raw = np.float64(base) + step * np.arange(n, dtype=np.float64)
        if draw(st.booleans()):
            raw = raw + np.arange(n) % draw(st.integers(1, 5))  # a sawtooth
        scale, offset = RES[name] or (draw(st.sampled_from([2.0**-12, 0.1, 1.0])), 0.0)
        values = raw * scale + offset
        values = values[np.isfinite(values) & (np.abs(values) <= 1e100)]  # the reader's bound
        rate = draw(st.sampled_from([1.0, 100.0, 1000.0, 4000.0]))
        t = t0 + np.arange(len(values)) / rate
        batches.append(columns(**{name: (t.tolist(), values.tolist())}))
    return batches


def close(got: float, want: float, step: float, cell: dict[str, float], size: float = 0.0) -> bool:
    """Within half a step, up to the float64 rounding of the cell's values (a mean of 1.7e15 is
    itself only good to 0.25; the std of samples all 4.5e12 comes out of the aggregator's float
    sums as 0.001, not 0): their largest magnitude is ``size``, or what the cell's statistics
    say. A value on a grid with an offset (raw * 0.1 - 40) is itself good to the offset's float64
    rounding, not its own: ``size`` then counts the offset (a mean of -0.65 made of such values
    came out of the aggregator as -0.6499999999999971, and the wire's mean, exact from the raw
    values and between two steps, as -0.6: half a step and 2.9e-15 away)."""
    size = max(size, *(abs(cell.get(s, 0.0)) for s in ("min", "max", "mean")))
    return abs(got - want) <= 0.5 * step + 2.0**-48 * max(abs(want), size)


def largest(batches: list, name: str, start: float, width: float) -> float:
    """The largest magnitude among the samples of ``name`` in the window that starts at ``start``."""
    k = round(start / width)
    out = 0.0
    for b in batches:
        if b.names == (name,):
            v = b.v[np.floor(b.t / width) == k]
            if len(v):
                out = max(out, float(np.abs(v).max()))
    return out


@settings(max_examples=60, deadline=None)
@given(runs(), st.sampled_from(CONFIGS), st.sampled_from([0.5, 10.0]))
def test_any_values_in_any_numbers_come_back_as_the_aggregator_made_them(batches, stats, width):
    cfg = parse_config({"vehicle": "car", "aggregator": {"window_seconds": width, "publish_seconds": 30.0,
                                                         "stats": stats}}).aggregator
    aggregation = Aggregation(cfg, "car", res=Resolutions(RES, {}))
    for sent, got in decoded_windows(aggregation, batches):
        assert got.keys() == sent.keys()
        for start, signals in sent.items():
            assert got[start].keys() == signals.keys()
            for name, want in signals.items():
                have = got[start][name]
                res = RES[name]
                step = abs(res[0]) if res else 2.0**-8  # a float signal's mean: to its grid, 2**-8 or finer
                assert have["count"] == want["count"]
                for stat in ("min", "max", "first", "last"):
                    if stat in want:
                        assert have[stat] == want[stat], (name, stat, have[stat], want[stat])
                size = max(largest(batches, name, start, width), abs(res[1]) if res else 0.0)
                if "mean" in want:
                    assert close(have["mean"], want["mean"], step, want, size), (name, have["mean"], want["mean"])
                if "std" in want:
                    assert close(have["std"], want["std"], step if res else 0.0, want, size), (name, have["std"], want["std"])
                for stat in ("t_min", "t_max"):
                    if stat in want:
                        assert close(have[stat], want[stat], 1e-6, {}), (name, stat)


@pytest.mark.parametrize("offset", [1, 6])
def test_a_mean_between_two_steps_comes_back_within_half_a_step_of_the_float_mean(offset):
    # hypothesis found it: B.t (0.1 a step, -40 offset) from -40.0 up by a step a second; in a
    # 10 s window its float mean is -0.6499999999999971 and the wire's, exact and rounded from
    # between two steps, -0.6: half a step and 2.9e-15 apart (the values' rounding at -40)
    t0 = 1782900000.0 + offset
    t = t0 + np.arange(3000, dtype=np.float64)
    v = np.arange(3000, dtype=np.float64) * 0.1 - 40.0
    batches = [columns(**{"B.t": (t.tolist(), v.tolist())})]
    cfg = parse_config({"vehicle": "car", "aggregator": {"window_seconds": 10.0, "publish_seconds": 30.0,
                                                         "stats": ["count", "mean", "std"]}}).aggregator
    ties = 0
    for sent, got in decoded_windows(Aggregation(cfg, "car", res=Resolutions(RES, {})), batches):
        for start, signals in sent.items():
            want, have = signals["B.t"], got[start]["B.t"]
            size = max(largest(batches, "B.t", start, 10.0), 40.0)
            assert close(have["mean"], want["mean"], 0.1, want, size), (start, have["mean"], want["mean"])
            ties += abs(have["mean"] - want["mean"]) > 0.05
    assert ties  # the case itself: the wire's mean is past half a step from the float mean


# -- tables with counts the aggregator would take days to reach --------------------------------

TABLE_RES = {"A.us": (1.0, 0.0), "A.m": (0.001, -1000.0), "B.t": (0.1, -40.0), "C.f": None}
SCHEMA = wire.Schema.of(TABLE_RES)


@st.composite
def tables(draw):
    names = draw(st.lists(st.sampled_from(sorted(TABLE_RES)), min_size=1, unique=True))
    stats = [s for s in wire.STATISTICS if s == "count" or s in draw(st.sets(st.sampled_from(wire.STATISTICS[1:])))]
    sid, window, cols = [], [], {s: [] for s in stats}
    for i, name in enumerate(names):
        scale, offset = TABLE_RES[name] or (2.0**-draw(st.integers(0, 12)), 0.0)
        for k in sorted(draw(st.sets(st.integers(0, 5), min_size=1, max_size=3))):
            n = draw(st.sampled_from([1, 2, 3, 10_000, 2**32, 2**40, 2**61]))
            lo = draw(st.one_of(st.sampled_from(BASES), st.integers(-(2**62), 2**62)))
            hi = lo if n == 1 else lo + draw(st.integers(0, 2**20))
            total = n * lo + draw(st.integers(0, n * (hi - lo)))  # the sum of n raw values in [lo, hi]
            low, high = lo * scale + offset, hi * scale + offset
            same = low == high  # one value (as floats): the cell collapses
            value = {"count": n, "min": low, "max": high, "mean": low if same else total / n * scale + offset,
                     "first": low, "last": high,
                     "std": 0.0 if same else (hi - lo) / 2 * scale * draw(st.sampled_from([0.0, 0.5, 1.0])),
                     "t_min": k * 2.0 + 0.25, "t_max": k * 2.0 + (0.25 if same else 1.5)}
            sid.append(i)
            window.append(k)
            for s in stats:
                cols[s].append(value[s])
    table = wire.Table(tuple(names), np.array(window, np.int64), np.array(sid, np.int64),
                       {s: np.array(v, np.int64 if s == "count" else np.float64) for s, v in cols.items()})
    return table, draw(st.booleans()), draw(st.sampled_from([2, 3])), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(tables())
def test_tables_of_extreme_counts_and_values_come_back(case):
    table, by_schema, layout, thinned = case
    thin = {"factor": 2, "from_width": 1.0, "stats": list(table.stats)} if thinned else None
    p = wire.Payload("car", 1, "g", 2.0, 0.0, 12.0, table, thinned=thin, res=TABLE_RES)
    got = wire.decode(wire.encode(p, schema=SCHEMA if by_schema else None, layout=layout), SCHEMA).windows()
    sent = p.windows()
    assert got.keys() == sent.keys()
    for start, signals in sent.items():
        for name, want in signals.items():
            have, res = got[start][name], TABLE_RES[name]
            step = abs(res[0]) if res else 2.0**-8
            assert have["count"] == want["count"]
            for stat in ("min", "max", "first", "last"):
                if stat in want:
                    assert have[stat] == want[stat], (name, stat)
            if "mean" in want:
                assert close(have["mean"], want["mean"], step, want), (name, have["mean"], want["mean"], want["count"])
            if "std" in want:
                assert close(have["std"], want["std"], step if res else 0.0, want), (name, have["std"], want["std"])
            for stat in ("t_min", "t_max"):
                if stat in want:
                    assert math.isclose(have[stat], want[stat], abs_tol=1e-6)

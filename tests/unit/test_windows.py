"""The aggregator's statistics against a plain numpy reference, for arbitrary batches split
arbitrarily across invocations and windows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.helpers import OnTheWire, columns, signals_event
from telemetry.edge import messages
from telemetry.edge.aggregator import Aggregation, WindowAggregator
from telemetry.edge.components import AggregatorComponent
from telemetry.edge.config import parse_config
from telemetry.edge.messages import FlatBatch


def reference(samples: dict[str, list[tuple[float, float]]], width: float) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for name, points in samples.items():
        t = np.array([p[0] for p in points])
        v = np.array([p[1] for p in points])
        k = np.floor(t / width).astype(int)
        for window in np.unique(k):
            sel = k == window
            tt, vv = t[sel], v[sel]
            last = np.flatnonzero(tt == tt.max())[-1]
            first = np.flatnonzero(tt == tt.min())[0]
            out.setdefault(int(window), {})[name] = {
                "count": int(sel.sum()),
                "min": float(vv.min()),
                "max": float(vv.max()),
                "mean": float(vv.mean()),
                "last": float(vv[last]),
                "first": float(vv[first]),
                "std": float(vv.std()),
                "t_min": float(tt[vv == vv.min()].min()),
                "t_max": float(tt[vv == vv.max()].min()),
            }
    return out


def run(aggregator: OnTheWire, batches: list[FlatBatch]) -> list[dict]:
    out = []
    for batch in batches:
        out += aggregator.add(batch)
    return out + aggregator.flush()


def as_windows(out: list[dict], width: float) -> dict[int, dict[str, dict]]:
    return {round(m["window"]["start"] / width): m["signals"] for m in out}


def assert_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert set(got[k]) == set(want[k])
        for name, stats in want[k].items():
            assert got[k][name]["count"] == stats["count"]
            for key in ("min", "max", "mean", "last", "first", "t_min", "t_max"):
                assert math.isclose(got[k][name][key], stats[key], rel_tol=1e-9, abs_tol=1e-9), (k, name, key)
            # a variance merged from partial sums loses a little to cancellation when the spread
            # is tiny next to the values: compare at the precision float64 allows there
            scale = max(abs(stats["min"]), abs(stats["max"]), 1.0)
            assert math.isclose(got[k][name]["std"], stats["std"], rel_tol=1e-7, abs_tol=1e-7 * scale), (k, name, "std")


sample_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def streams(draw):
    """A time-ordered stream of samples of a few signals, cut into arbitrary batches."""
    n = draw(st.integers(min_value=1, max_value=300))
    steps = draw(st.lists(st.floats(min_value=0.0, max_value=0.7), min_size=n, max_size=n))
    t0 = draw(st.floats(min_value=-50.0, max_value=1e9))
    times = t0 + np.cumsum(steps)
    names = draw(st.lists(st.sampled_from(["A.x", "A.y", "B.z"]), min_size=n, max_size=n))
    values = draw(st.lists(sample_values, min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(min_value=0, max_value=n), max_size=10))))
    return list(zip(times.tolist(), names, values)), cuts


@given(streams(), st.sampled_from([0.25, 1.0, 2.5, 10.0]))
def test_statistics_equal_the_numpy_reference_however_the_stream_is_split(stream, width):
    samples, cuts = stream
    bounds = [0, *cuts, len(samples)]
    batches = []
    for a, b in itertools.pairwise(bounds):
        part: dict[str, tuple[list, list]] = {}
        for t, name, v in samples[a:b]:
            part.setdefault(name, ([], []))
            part[name][0].append(t)
            part[name][1].append(v)
        if part:
            batches.append(columns(**part))
    by_signal: dict[str, list] = {}
    for t, name, v in samples:
        by_signal.setdefault(name, []).append((t, v))
    aggregator = OnTheWire(WindowAggregator(width, "car"))
    out = run(aggregator, batches)
    assert_equal(as_windows(out, width), reference(by_signal, width))
    assert aggregator.stats["late_samples"] == 0
    # windows are published in event-time order, each once, aligned to multiples of the width
    starts = [m["window"]["start"] for m in out]
    assert starts == sorted(set(starts))
    assert all(math.isclose(s / width, round(s / width), abs_tol=1e-9) for s in starts)
    assert [m["seq"] for m in out] == list(range(1, len(out) + 1))


def test_windows_close_as_event_time_passes_their_end():
    agg = OnTheWire(WindowAggregator(1.0, "car"))
    assert agg.add(columns(**{"A.x": ([10.1, 10.5], [1.0, 2.0])})) == []
    out = agg.add(columns(**{"A.x": ([10.9, 11.2], [3.0, 4.0])}))
    assert [m["window"] for m in out] == [{"start": 10.0, "end": 11.0}]
    stats = out[0]["signals"]["A.x"]
    assert stats == {"count": 3, "min": 1.0, "max": 3.0, "mean": 2.0, "last": 3.0, "first": 1.0,
                     "std": pytest.approx(math.sqrt(2 / 3)), "t_min": 10.1, "t_max": 10.9}
    assert out[0]["group"] == "default" and out[0]["late"] == {"samples": 0, "oldest": None}
    assert out[0]["vehicle"] == "car" and out[0]["kind"] == "window" and out[0]["v"] == 1
    # a batch's span end moves event time on even when it carries no sample of this signal
    out = agg.add(FlatBatch.empty(), watermark=13.0)
    assert [m["window"]["start"] for m in out] == [11.0]
    assert agg.flush() == []


def test_late_samples_are_counted_not_put_in_another_window():
    agg = OnTheWire(WindowAggregator(1.0, "car"))
    agg.add(columns(**{"A.x": ([5.5], [1.0])}))
    closed = agg.add(columns(**{"A.x": ([6.5], [2.0])}))
    assert [m["window"]["start"] for m in closed] == [5.0]
    agg.add(columns(**{"A.x": ([5.9, 6.7], [100.0, 3.0])}))  # 5.9 belongs to a closed window
    out = agg.flush()
    assert agg.stats["late_samples"] == 1
    assert out[0]["signals"]["A.x"]["count"] == 2 and out[0]["signals"]["A.x"]["max"] == 3.0
    # reported with the next window the group publishes
    assert out[0]["late"] == {"samples": 1, "oldest": 5.9}


def test_lateness_keeps_a_window_open_for_late_samples():
    agg = OnTheWire(WindowAggregator(1.0, "car", lateness=0.5))
    assert agg.add(columns(**{"A.x": ([5.5, 6.2], [1.0, 2.0])})) == []  # 6.2 < 6.0 + 0.5
    assert agg.add(columns(**{"A.x": ([5.8], [3.0])})) == []  # late, but within the lateness
    out = agg.add(columns(**{"A.x": ([6.6], [4.0])}))
    assert [m["window"]["start"] for m in out] == [5.0]
    assert out[0]["signals"]["A.x"]["count"] == 2 and out[0]["signals"]["A.x"]["last"] == 3.0
    assert agg.stats["late_samples"] == 0


def test_memory_is_bounded_whatever_the_timestamps():
    agg = WindowAggregator(1.0, "car", lateness=1e9, max_open_windows=8)  # nothing would ever close
    for i in range(100):
        agg.add(columns(**{"A.x": ([float(i * 3)], [1.0])}))
        assert len(agg.open) <= 8
    assert agg.stats["forced_closes"] == 92


def aggregation(**aggregator):
    return OnTheWire(Aggregation(parse_config({"vehicle": "car", "aggregator": aggregator}).aggregator, "car"))


def test_signal_selection_by_include_and_exclude_patterns():
    agg = aggregation(include=["BMS_*", "MC_Drive.MotorRpm"], exclude=["*.Module"])
    out = agg.add(columns(**{
        "BMS_CellTemps.Temp01": ([0.5], [30.0]), "BMS_CellTemps.Module": ([0.5], [1.0]),
        "MC_Drive.MotorRpm": ([0.5], [100.0]), "MC_Drive.MotorTemp": ([0.5], [50.0]),
    }), 0.6) + agg.flush()
    assert set(out[0]["signals"]) == {"BMS_CellTemps.Temp01", "MC_Drive.MotorRpm"}
    assert agg.totals()["samples_not_selected"] == 2


def test_window_groups_have_their_own_length_and_one_sequence():
    agg = aggregation(window_seconds=1.0, groups=[{"name": "slow", "signals": "BMS_CellTemps.*", "window_seconds": 5.0}])
    out = []
    for t in np.arange(0.0, 10.0, 0.5):
        out += agg.add(columns(**{"BMS_CellTemps.Temp01": ([t], [30.0]), "MC_Drive.MotorRpm": ([t], [t])}), t)
    out += agg.flush()
    slow = [m for m in out if m["group"] == "slow"]
    fast = [m for m in out if m["group"] == "default"]
    assert [m["window"] for m in slow] == [{"start": 0.0, "end": 5.0}, {"start": 5.0, "end": 10.0}]
    assert slow[0]["signals"]["BMS_CellTemps.Temp01"]["count"] == 10
    assert len(fast) == 10 and all(set(m["signals"]) == {"MC_Drive.MotorRpm"} for m in fast)
    assert [m["seq"] for m in out] == list(range(1, len(out) + 1))
    assert [m["window"]["end"] for m in out] == sorted(m["window"]["end"] for m in out)


def test_component_publishes_each_closed_window_and_flushes_at_end_of_stream(make_services):
    services = make_services(aggregator={"window_seconds": 2.0, "publish_seconds": 2.0})
    component = AggregatorComponent(services)
    component.handle(signals_event(columns(**{"A.x": ([0.5, 1.5], [1.0, 2.0])})))
    component.handle(signals_event(columns(**{"A.x": ([2.5], [3.0])})))
    assert len(services.local.messages("telemetry/out")) == 1
    component.handle(messages.EndOfStream("s", 3, 2.5, {}).encode())
    out = services.local.messages("telemetry/out")
    assert [w for m in out for w in m["windows"]] == ["0.0", "2.0"]
    component.handle({"v": 1, "kind": "signals"})  # malformed: counted, not raised
    assert component.stats["malformed"] == 1


@given(st.data(), st.sampled_from([0.25, 1.0, 2.5]))
def test_window_reduce_needs_no_sort_for_a_batch_in_signal_then_time_order(data, width):
    """A batch as the reader makes it (each signal's samples together, in time order) is reduced
    without sorting its samples; the result is the one the sorting path gives, exactly."""
    from telemetry.edge.aggregator import window_reduce

    counts = data.draw(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5))
    sid = np.repeat(np.array(data.draw(st.permutations(range(len(counts))))), counts)
    t = np.concatenate([np.sort(np.array(data.draw(st.lists(st.floats(min_value=-20, max_value=20), min_size=n, max_size=n,
                                                                  unique=True)))) for n in counts])
    v = np.array(data.draw(st.lists(sample_values, min_size=len(t), max_size=len(t))))
    grouped = window_reduce(sid, t, v, width)
    shuffle = np.array(data.draw(st.permutations(range(len(t)))))
    sorted_path = window_reduce(sid[shuffle], t[shuffle], v[shuffle], width)
    assert grouped.keys() == sorted_path.keys()
    for key in grouped:
        assert np.array_equal(grouped[key], sorted_path[key]), key
    pairs = list(zip(grouped["window"].tolist(), grouped["sid"].tolist()))
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)  # (window, signal) order, each once

"""The aggregator's fast paths (a batch's runs of signals reduced without a sort or per-group
masks, each window's statistics in one 2-D store, payload columns gathered from the stores)
against the aggregator as it was (``support.aggregator_before``, with the wire format as it
was): the same aggregates payloads byte for byte, the same windows and counters, for any
stream cut into any batches, adversarial values and times included."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from support import aggregator_before as before
from support import wire_before, wire_range
from telemetry import wire
from telemetry.edge.aggregator import Aggregation, Resolutions, WindowAggregator
from telemetry.edge.config import parse_config
from telemetry.edge.messages import MAX_EVENT_TIME, EndOfStream, FlatBatch, Signals

NAMES = ["A.x", "A.y", "B.z", "C.temp", "C.skip", "D.Module"]
RES = {"A.x": (0.5, 0.0), "A.y": (0.1, -40.0), "B.z": None, "C.temp": (1.0, 0.0), "D.Module": (1.0, 0.0)}

ODD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e300, -1e100, 1e100, 1.0000000000000002e100, -0.0, 5e-324]
values = st.one_of(
    st.integers(min_value=-400, max_value=400).map(lambda k: k * 0.5),  # on A.x's grid
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from(ODD_VALUES),
)
ODD_TIMES = [float("nan"), float("inf"), -float("inf"), 1e300]


@st.composite
def streams(draw, odd_times: bool = True):
    """Batches as the reader makes them (each name's samples together, usually in time order),
    or not quite: unsorted or repeated times, a name twice, NaN and infinite times and values,
    empty batches, huge jumps in time."""
    t = draw(st.floats(min_value=-30.0, max_value=1e6))
    batches = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        names = draw(st.lists(st.sampled_from(NAMES), max_size=len(NAMES), unique=True))
        if names and draw(st.integers(0, 9)) == 0:
            names.append(names[0])  # a name twice in one batch
        ts: list[float] = []
        vs: list[float] = []
        counts = []
        span = draw(st.floats(min_value=0.0, max_value=8.0))
        for _ in names:
            n = draw(st.integers(min_value=0, max_value=12))
            times = sorted(draw(st.lists(st.floats(min_value=t, max_value=t + span), min_size=n, max_size=n)))
            shape = draw(st.integers(0, 11))
            if shape == 0 and n > 1:
                times = times[::-1]  # out of order
            elif shape == 1 and n > 1:
                times[1] = times[0]  # a repeated time
            elif shape == 2 and n and odd_times:
                times[draw(st.integers(0, n - 1))] = draw(st.sampled_from(ODD_TIMES))
            elif shape == 3 and n:
                times = [x - draw(st.floats(min_value=0.0, max_value=6.0)) for x in times]  # late
            ts += times
            vs += draw(st.lists(values, min_size=n, max_size=n))
            counts.append(n)
        ids = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        tt, vv = np.array(ts, float), np.array(vs, float)
        if len(ids) and draw(st.integers(0, 9)) == 0:  # a name's samples apart (not as FlatBatch promises)
            mixed = np.array(draw(st.permutations(range(len(ids)))), np.int64)
            ids, tt, vv = ids[mixed], tt[mixed], vv[mixed]
        batches.append((FlatBatch(tuple(names), ids, tt, vv), t + span))
        t += span if draw(st.integers(0, 9)) else draw(st.floats(min_value=0.0, max_value=1e4))
    return batches


CONFIGS = [
    {},
    {"window_seconds": 0.5, "publish_seconds": 2.0, "exclude": ["*.Module"], "lateness_seconds": 0.7,
     "stats": ["count", "min", "max", "mean", "last", "std", "first", "t_min", "t_max"],
     "groups": [{"name": "slow", "signals": ["C.*"], "window_seconds": 3.0, "publish_seconds": 9.0},
                {"name": "drive", "signals": ["A.y"], "window_seconds": 0.25, "stats": ["count", "max"]}]},
    {"window_seconds": 1.0, "publish_seconds": 1.0, "max_open_windows": 2, "stats": ["count", "mean", "std"]},
    {"window_seconds": 2.5, "publish_seconds": 5.0, "stats": ["count", "first", "last", "t_min"],
     "groups": [{"name": "b", "signals": ["B.*", "A.x"], "window_seconds": 0.1}]},
]


def pair(config: dict, with_res: bool, max_bytes: int) -> tuple[Aggregation, before.Aggregation]:
    cfg = parse_config({"vehicle": "car", "aggregator": config}).aggregator
    new = Aggregation(cfg, "car", res=Resolutions(RES, {}) if with_res else None, max_bytes=max_bytes)
    old = before.Aggregation(cfg, "car", res=before.Resolutions(RES, {}) if with_res else None, max_bytes=max_bytes)
    return new, old


def messages(batches) -> list:
    out: list = [Signals("s", i, 0.0, end, {}, batch) for i, (batch, end) in enumerate(batches)]
    return [*out, EndOfStream("s", len(out), None, {})]


def dated(message):
    """``message`` without its samples dated past ``MAX_EVENT_TIME`` (2255): what the aggregator as
    it was should be given to match this one, which drops and counts them as it drops a NaN time
    (the old one made windows of them that no decoder could read)."""
    if not isinstance(message, Signals):
        return message
    b = message.batch
    keep = ~(np.isfinite(b.t) & (np.abs(b.t) > MAX_EVENT_TIME))  # NaN and inf kept: both drop them
    return dataclasses.replace(message, batch=FlatBatch(b.names, b.ids[keep], b.t[keep], b.v[keep]))


def past_2255(batches) -> int:
    return sum(int(np.count_nonzero(np.isfinite(b.t) & (np.abs(b.t) > MAX_EVENT_TIME))) for b, _ in batches)


def same_totals(new, old, batches) -> None:
    """The same counters, but for the samples ``dated`` kept from the old aggregator: each is
    counted here as dropped, or as not selected where its signal is in no group."""
    got, want = new.totals(), old.totals()
    left_out = ("dropped_samples", "samples_not_selected")
    assert sum(got[k] for k in left_out) == sum(want[k] for k in left_out) + past_2255(batches)
    assert +Counter({k: n for k, n in got.items() if k not in left_out}) == \
        +Counter({k: n for k, n in want.items() if k not in left_out})


def readable(windows) -> str:
    return json.dumps([w.encode() for w in windows], sort_keys=True)


HUGE_MEAN = [(FlatBatch(("A.x", "A.y"), np.zeros(6, np.int64), np.zeros(6), np.zeros(6)), 0.0),
             (FlatBatch(("A.x",), np.zeros(1, np.int64), np.zeros(1), np.array([-1e100])), 0.0)]
# A time of 1e300 among good ones (hypothesis found it: a payload whose window start overflowed)
PAST_2255 = [(FlatBatch(("A.x", "A.y"), np.array([0, 0, 0, 1, 1]), np.array([1.0, 1e300, 1.5, 1.0, 1.2]), np.zeros(5)), 1.5),
             (FlatBatch(("A.x",), np.zeros(2, np.int64), np.array([3.0, 3.5]), np.ones(2)), 4.0)]


@settings(max_examples=60)
@given(streams(), st.sampled_from(range(len(CONFIGS))), st.booleans(), st.sampled_from([100_000, 700]))
@example(HUGE_MEAN, 2, True, 100_000)  # a mean of -1.4e99 in 7 samples: the old encoder's sum wrapped
@example(PAST_2255, 2, True, 100_000)  # the old aggregator made a window no decoder could read of it
def test_payloads_are_the_bytes_the_aggregator_made_before(batches, config, with_res, max_bytes):
    new, old = pair(CONFIGS[config], with_res, max_bytes)
    for message in messages(batches):
        got, want = new.publish(message), old.publish(dated(message))
        if [a.to_bytes() for a in got] != [a.to_bytes() for a in want]:
            # only where the old encoder's integers overflowed (a mean or std of huge values in
            # many samples came back wrong): the new payloads fix those cells and break none
            new_off = {c[:3] for a in got for c in wire_range.off(a.payload, wire.decode(a.to_bytes()))}
            try:
                old_off = {c[:3] for a in want for c in wire_range.off(a.payload, wire_before.decode(a.to_bytes()))}
            except wire_before.WireError:  # the old payload did not even decode: the new one does, right
                assert not new_off
                continue
            assert new_off < old_off
            continue
        assert [a.key for a in got] == [a.key for a in want]
    same_totals(new, old, batches)


@settings(max_examples=60)
@given(streams(), st.sampled_from(range(len(CONFIGS))))
def test_windows_are_the_windows_the_aggregator_made_before(batches, config):
    new, old = pair(CONFIGS[config], False, 100_000)
    for message in messages(batches):
        assert readable(new.process(message)) == readable(old.process(dated(message)))
    same_totals(new, old, batches)


@settings(max_examples=80)
@given(st.data(), st.sampled_from([0.1, 1.0, 7.5]))
def test_a_group_fed_samples_in_any_order_is_as_before(data, width):
    """``add_samples`` with signal numbers in any order (interleaved, repeated runs), or as the
    reader's runs: the fast path where it applies, the sorting path where not, as before."""
    n = data.draw(st.integers(min_value=0, max_value=40))
    sid = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64)
    if data.draw(st.booleans()):
        sid = np.sort(sid, kind="stable")
    t = np.array(data.draw(st.lists(st.floats(min_value=-5.0, max_value=30.0), min_size=n, max_size=n)))
    if data.draw(st.booleans()):
        t = np.sort(t)
    v = np.array(data.draw(st.lists(values, min_size=n, max_size=n)))
    new, old = WindowAggregator(width, "car", lateness=0.3), before.WindowAggregator(width, "car", lateness=0.3)
    for agg in (new, old):
        for name in ("a", "b", "c", "d"):
            agg.sid(name)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    for a, b in zip([0, *cuts], [*cuts, n]):
        watermark = data.draw(st.one_of(st.none(), st.floats(min_value=-5.0, max_value=40.0)))
        assert readable(new.add_samples(sid[a:b], t[a:b], v[a:b], watermark)) == \
            readable(old.add_samples(sid[a:b], t[a:b], v[a:b], watermark))
    assert readable(new.flush()) == readable(old.flush())
    assert new.stats == old.stats


def test_the_fast_path_takes_a_batch_as_the_reader_makes_it():
    """A batch of runs in time order is reduced without the sorting path (``window_reduce``),
    and gives what it gave before; one with a signal's times out of order takes that path."""
    import telemetry.edge.aggregator as aggregator

    calls = []
    original = aggregator.window_reduce

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    aggregator.window_reduce = counted
    try:
        new, old = WindowAggregator(1.0, "car"), before.WindowAggregator(1.0, "car")
        for agg in (new, old):
            for name in ("a", "b", "c"):
                agg.sid(name)
        sid = np.array([0, 0, 0, 1, 1, 2])
        t = np.array([0.1, 0.5, 1.5, 0.2, 2.2, 1.0])
        v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        assert readable(new.add_samples(sid, t, v, 5.0)) == readable(old.add_samples(sid, t, v, 5.0))
        assert calls == []
        t2 = np.array([5.5, 5.1, 6.5, 5.2, 7.2, 6.0])
        assert readable(new.add_samples(sid, t2, v, 9.0)) == readable(old.add_samples(sid, t2, v, 9.0))
        assert calls == [1]
    finally:
        aggregator.window_reduce = original


@settings(max_examples=60)
@given(streams(), st.sampled_from(range(len(CONFIGS))), st.booleans())
def test_every_group_folded_at_once_is_each_group_folded_alone(batches, config, with_res):
    """``Aggregation._fold_together`` (every group's runs reduced in one pass, where the batch
    has them) against each group folding its own runs (``WindowAggregator.add_runs``, what it
    does when that case does not hold): the same windows, payloads and counters."""
    cfg = parse_config({"vehicle": "car", "aggregator": CONFIGS[config]}).aggregator
    res = Resolutions(RES, {}) if with_res else None
    together, alone = Aggregation(cfg, "car", res=res, max_bytes=700), Aggregation(cfg, "car", res=res, max_bytes=700)
    alone._fold_together = lambda *args: None  # type: ignore[method-assign]
    for message in messages(batches):
        got, want = together.publish(message), alone.publish(message)
        assert [a.to_bytes() for a in got] == [a.to_bytes() for a in want]
        assert json.dumps([a.payload.window_messages() for a in got]) == json.dumps([a.payload.window_messages() for a in want])
    assert together.totals() == alone.totals()


# groups that publish different statistics: each group's own, or the others' too in one pass
LEAN_CONFIGS = [*CONFIGS, {"window_seconds": 2.0, "publish_seconds": 4.0, "stats": ["count", "max", "t_max"],
                           "groups": [{"name": "g", "signals": ["A.*"], "stats": ["count", "mean", "std"]}]}]
# samples of every signal spread over a few windows, in time order (the one pass for every group)
SPREAD = [(FlatBatch(("A.x", "A.y", "B.z", "C.temp"), np.repeat(np.arange(4), 12), np.tile(np.linspace(0.0, 5.5, 12), 4),
                     np.arange(48.0) % 7 * 0.5), 6.0)]


@settings(max_examples=60)
@given(streams(), st.sampled_from(range(len(LEAN_CONFIGS))), st.booleans())
@example(SPREAD, 1, True)
@example(SPREAD, 4, True)
def test_only_the_published_statistics_make_the_same_payloads(batches, config, with_res):
    """``Aggregation(only_published=True)`` (the component's: no squared deviations where no
    group publishes ``std``, no times of the extremes where none publishes ``t_min`` or
    ``t_max``) against one that works out every statistic: the same payloads byte for byte and
    the same counters, whichever groups publish what (one path or the other for a batch)."""
    cfg = parse_config({"vehicle": "car", "aggregator": LEAN_CONFIGS[config]}).aggregator
    res = Resolutions(RES, {}) if with_res else None
    lean = Aggregation(cfg, "car", res=res, max_bytes=700, only_published=True)
    full = Aggregation(cfg, "car", res=res, max_bytes=700)
    for message in messages(batches):
        got, want = lean.publish(message), full.publish(message)
        assert [a.to_bytes() for a in got] == [a.to_bytes() for a in want]
    assert lean.totals() == full.totals()


def test_only_the_published_statistics_are_worked_out():
    """The groups' published statistics say what each works out, and what is not published is
    NaN in its windows (not a value that looks measured)."""
    cfg = parse_config({"vehicle": "car", "aggregator": CONFIGS[1]}).aggregator  # every statistic, but drive's
    lean = Aggregation(cfg, "car", only_published=True)
    assert {n: (a.spread, a.ext_times) for n, a in lean.groups.items()} == \
        {"slow": (True, True), "drive": (False, False), "default": (True, True)}
    cfg = parse_config({"vehicle": "car", "aggregator": {"stats": ["count", "max"]}}).aggregator
    lean = Aggregation(cfg, "car", only_published=True)
    batch = FlatBatch(("A.x",), np.zeros(3, np.int64), np.array([0.1, 0.2, 0.3]), np.array([1.0, 3.0, 2.0]))
    (window,) = lean.process(Signals("s", 0, 0.0, 1.0, {}, batch)) + lean.flush()
    stats = window.signals["A.x"]
    assert (stats["count"], stats["max"], stats["min"], stats["mean"]) == (3, 3.0, 1.0, 2.0)
    assert all(np.isnan(stats[k]) for k in ("std", "t_min", "t_max"))


def test_a_batch_as_the_reader_makes_it_is_folded_for_every_group_at_once():
    """Runs of three groups, interleaved (a group's runs not together), in time order: one
    pass for all of them, and the windows each group would have made alone."""
    cfg = parse_config({"vehicle": "car", "aggregator": CONFIGS[1]}).aggregator
    names = ("A.x", "C.temp", "A.y", "B.z", "C.skip")  # default, slow, drive, default, slow
    n = 40
    batch = FlatBatch(names, np.repeat(np.arange(5, dtype=np.int64), n), np.tile(np.linspace(0.0, 7.9, n), 5),
                      np.arange(5 * n, dtype=np.float64) * 0.5)
    together, alone = Aggregation(cfg, "car"), Aggregation(cfg, "car")
    alone._fold_together = lambda *args: None  # type: ignore[method-assign]
    calls = []
    original = together._fold_together

    def counted(*args):
        result = original(*args)
        calls.append(result is not None)
        return result

    together._fold_together = counted  # type: ignore[method-assign]
    got, want = together.add(batch, 8.0), alone.add(batch, 8.0)
    assert calls == [True] and len(got) > 3
    assert readable(got) == readable(want)
    assert readable(together.flush()) == readable(alone.flush())


@settings(max_examples=40)
@given(streams(), st.sampled_from(range(len(CONFIGS))), st.sampled_from([100_000, 700, 120]))
def test_a_period_is_made_in_the_schemas_order_and_cut_in_the_groups(batches, config, max_bytes):
    """With a schema, ``Publisher`` makes a period's table in the order ``wire.encode`` sends the
    signals in (the schema's, then the names it lacks in the group's order), so encode never
    renumbers it; a period cut for the size cap is cut from the table in the group's order. Where
    a payload is the old aggregator's bytes (all but the cells its integers overflowed in,
    ``test_payloads_are_the_bytes_the_aggregator_made_before``), its windows are the old one's."""
    new, old = pair(CONFIGS[config], True, max_bytes)
    renumbered = []
    original = wire._renumbered

    def spy(t, order):
        renumbered.append(len(t.names))
        return original(t, order)

    wire._renumbered = spy
    try:
        for message in messages(batches):
            got, want = new.publish(message), old.publish(dated(message))
            for a, b in zip(got, want):
                if a.to_bytes() == b.to_bytes():
                    assert a.payload.windows() == b.payload.windows()
            split = any(a.payload.part != (0, 1) for a in got)
            assert not renumbered or split  # renumbered only where a period was cut
            renumbered.clear()
    finally:
        wire._renumbered = original


def test_names_in_no_order_of_the_schemas_travel_in_it():
    """Signals first seen in an order other than the schema's (and one the schema lacks): the
    period's table is in the schema's order, the one the lacking name last, and its bytes are
    the old aggregator's."""
    cfg = parse_config({"vehicle": "car", "aggregator": {"window_seconds": 1.0, "publish_seconds": 2.0}}).aggregator
    new = Aggregation(cfg, "car", res=Resolutions(RES, {}))
    old = before.Aggregation(cfg, "car", res=before.Resolutions(RES, {}))
    names = ("D.Module", "C.skip", "A.y", "C.temp", "A.x")  # C.skip: not in the schema
    batch = FlatBatch(names, np.repeat(np.arange(5, dtype=np.int64), 4), np.tile([0.1, 0.6, 1.1, 1.7], 5),
                      np.arange(20, dtype=np.float64))
    end = EndOfStream("s", 1, None, {})
    got = new.publish(Signals("s", 0, 0.0, 2.0, {}, batch)) + new.publish(end)
    want = old.publish(Signals("s", 0, 0.0, 2.0, {}, batch)) + old.publish(end)
    assert [a.to_bytes() for a in got] == [a.to_bytes() for a in want] and len(got) == 1
    assert got[0].payload.table.names == ("A.x", "A.y", "C.temp", "D.Module", "C.skip")

"""The rules' quick tests of a batch that cannot matter to them (no value beyond a limit, no
silence ended, no spread or z-score past its threshold, told from each signal's run numbers or
bounds) against the rules as they were before them (tests/support/rules_before.py): the same
metrics, value for value, and the same alerts from a detector, rules retuned mid-stream. On
adversarial input: NaN and infinite values and times, huge values, empty and one-sample
batches, duplicate and unsorted times, constant runs (a MAD of 0), a name twice in a table."""

from __future__ import annotations

import itertools
import json
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rules_fast import rule, same_metrics

from support.rules_before import LimitBefore, SpreadBefore, StaleBefore, ZScoreBefore
from telemetry.edge.config import DetectorConfig, parse_config
from telemetry.edge.detector import Detector
from telemetry.edge.messages import Alert, FlatBatch
from telemetry.edge.rules import Rule, zscore
from telemetry.edge.rules import base as rules_base
from telemetry.edge.rules import spread as spread_rule
from telemetry.edge.rules.base import run_stats
from telemetry.edge.rules.limit import LimitEvaluator
from telemetry.edge.rules.spread import SpreadEvaluator
from telemetry.edge.rules.stale import StaleEvaluator
from telemetry.edge.rules.zscore import ZScoreEvaluator


@pytest.fixture(autouse=True)
def runs_whatever_the_size():
    """These batches are small: judged by their runs anyway, as a replay's batches are."""
    with mock.patch.object(rules_base, "_RUNS_FROM", 0):
        yield


# mostly ordinary numbers, so that the quick tests are taken; now and then what they must refuse
ORDINARY = st.one_of(st.floats(-10, 10), st.sampled_from([0.0, -0.0, 1.0, 1.0, 2.0]))
ODD = st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e300, 5e-324])
VALUES = st.one_of(ORDINARY, ORDINARY, ORDINARY, ORDINARY, ORDINARY, ORDINARY, ODD)


@st.composite
def batches(draw, names=("A.x", "A.y", "B.z", "C.q"), max_samples=40, odd=True, values=VALUES):
    """Batches as the reader makes them (each signal's samples together, in table order), with
    signals sharing the times of the one before (one frame), duplicate and unsorted times,
    NaN times, now and then a name twice in the table; ``odd``: with the values above, else
    ordinary ones only."""
    out = []
    t0 = 0.0
    for _ in range(draw(st.integers(1, 6))):
        table, ts, vs = [], [], []
        for name in names:
            n = draw(st.integers(0, max_samples))
            if not n:
                continue
            if ts and draw(st.integers(0, 2)) == 0:
                t = ts[-1].copy()
                n = len(t)
            else:
                steps = draw(st.lists(st.sampled_from([0.0, 0.05, 0.25, 0.5, 1.0, 2.5, -0.3]), min_size=n, max_size=n))
                t = t0 + np.cumsum(steps)
                if odd and draw(st.integers(0, 11)) == 0:
                    t[draw(st.integers(0, n - 1))] = np.nan
            v = np.array(draw(st.lists(values if odd else ORDINARY, min_size=n, max_size=n)), float)
            table.append(name)
            ts.append(t)
            vs.append(v)
            if odd and draw(st.integers(0, 15)) == 0:  # the same name again (a hand-built batch)
                table.append(name)
                ts.append(t + 0.01)
                vs.append(v[::-1].copy())
        t0 += draw(st.sampled_from([5.0, 20.0, 50.0]))
        if not table:
            out.append(FlatBatch.empty())
            continue
        out.append(FlatBatch(tuple(table), np.repeat(np.arange(len(table)), [len(t) for t in ts]),
                             np.concatenate(ts), np.concatenate(vs)))
    return out


def compare(fast, slow, batches, data, now_after=(0.0, 0.5, 3.0)) -> None:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for batch in batches:
            hot = data.draw(st.booleans())
            now = float(np.nanmax(batch.t, initial=0.0)) + data.draw(st.sampled_from(now_after))
            same_metrics(fast.metrics(batch, {}, now, hot), slow.metrics(batch, {}, now, hot))


# -- limit -------------------------------------------------------------------------------------


@given(batches(), st.sampled_from([(-5.0, 5.0), (None, 2.0), (-1.0, None), (None, 1e308), (-1e308, None), (0.0, 1e300)]),
       st.data())
@settings(max_examples=50, deadline=None)
def test_limit_metrics_are_the_old_ones(stream, bounds, data):
    lo, hi = bounds
    kw = {k: b for k, b in (("min", lo), ("max", hi)) if b is not None}
    r = rule(kind="limit", signals=["A.*", "C.*"], **kw)
    compare(r.evaluator(), LimitBefore(r), stream, data)


# -- stale -------------------------------------------------------------------------------------


@given(batches(max_samples=25), st.sampled_from(["message", "signal"]), st.sampled_from([0.3, 1.5, 6.0]),
       st.sampled_from([0.0, 0.7]), st.data())
@settings(max_examples=70, deadline=None)
def test_stale_metrics_are_the_old_ones(stream, scope, timeout, delay, data):
    r = rule(kind="stale", signals=["A.*", "B.*"], timeout=timeout, scope=scope, min_duration=delay)
    compare(r.evaluator(), StaleBefore(r), stream, data, (0.0, 0.2, 1.0, 8.0))


def test_a_stale_rule_with_no_silence_ended_sorts_nothing():
    r = rule(kind="stale", signals="A.*", timeout=1.0)
    fast, slow = r.evaluator(), StaleBefore(r)
    t = np.arange(0.0, 10.0, 0.1)
    with mock.patch.object(fast, "keyed", side_effect=AssertionError("sorted")):
        for i in range(3):
            batch = FlatBatch(("A.x", "A.y"), np.repeat([0, 1], len(t)), np.concatenate((t, t)) + 10 * i, np.zeros(2 * len(t)))
            same_metrics(fast.metrics(batch, {}, 10.0 * i + 9.9, False), slow.metrics(batch, {}, 10.0 * i + 9.9, False))
    np.testing.assert_array_equal(fast.seen.values, slow.seen.values)


# -- spread ------------------------------------------------------------------------------------


@given(batches(names=("C.v2", "C.v0", "C.v1", "D.v3"), max_samples=15), st.sampled_from([0.5, 3.0, 25.0, 1e308]),
       st.sampled_from([spread_rule.CELLS_AT_ONCE, 4]), st.data())
@settings(max_examples=60, deadline=None)
def test_spread_metrics_are_the_old_ones(stream, max_spread, cells, data):
    r = rule(kind="spread", signals="C.*", max_spread=max_spread)
    with mock.patch.object(spread_rule, "CELLS_AT_ONCE", cells):
        fast, slow = r.evaluator(), SpreadBefore(r)
        compare(fast, slow, stream, data)
        np.testing.assert_array_equal(fast.latest.values, slow.latest.values)


def test_a_spread_within_bounds_builds_no_table():
    r = rule(kind="spread", signals="C.*", max_spread=1.0)
    fast = r.evaluator()
    t = np.arange(50.0)
    batch = FlatBatch(("C.a", "C.b", "C.c"), np.repeat([0, 1, 2], 50), np.tile(t, 3), np.concatenate([np.full(50, 3.0), np.full(50, 3.5), np.linspace(3.0, 3.9, 50)]))
    with mock.patch.object(spread_rule, "_forward_filled", side_effect=AssertionError("a table was built")):
        assert fast.metrics(batch, {}, 49.0, False) is None
    np.testing.assert_array_equal(fast.latest.values, [3.0, 3.5, 3.9])


# -- z-score -----------------------------------------------------------------------------------


@st.composite
def signal_values(draw, n):
    """Noise around a level, with constant runs (a MAD of 0), ties, spikes and odd values."""
    kind = draw(st.sampled_from(["noise", "steps", "odd"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        v = rng.normal(draw(st.sampled_from([0.0, 48.0, 1e6])), draw(st.sampled_from([1e-9, 0.5, 3.0])), n)
    else:
        v = rng.choice([0.0, 1.0, 1.0, 1.0, 2.0, -0.0], n)
    for _ in range(draw(st.integers(0, 2))):  # spikes (or a value equal to the threshold's edge)
        if n:
            v[draw(st.integers(0, n - 1))] += draw(st.sampled_from([5.0, -40.0, 1e3]))
    if kind == "odd" and n:
        v[draw(st.integers(0, n - 1))] = draw(ODD)
    return v


@st.composite
def zscore_stream(draw):
    out = []
    t0 = 0.0
    for _ in range(draw(st.integers(1, 6))):
        table, vs = [], []
        for name in ("M.a", "M.b", "N.c"):
            n = draw(st.integers(0, 60))
            if n:
                table.append(name)
                vs.append(draw(signal_values(n)))
        t = [t0 + np.arange(len(v)) * 0.2 for v in vs]
        t0 += 20.0
        out.append(FlatBatch(tuple(table), np.repeat(np.arange(len(table)), [len(v) for v in vs]),
                             np.concatenate(t or [np.empty(0)]), np.concatenate(vs or [np.empty(0)])))
    return out


@given(zscore_stream(), st.integers(5, 24), st.sampled_from([1.0, 3.0, 6.0]), st.data())
@settings(max_examples=70, deadline=None)
def test_zscore_metrics_are_the_old_ones(stream, baseline, threshold, data):
    warmup = data.draw(st.integers(2, baseline))
    min_scale = data.draw(st.sampled_from([0.0, 0.0, 0.5]))
    cells = data.draw(st.sampled_from([zscore.CELLS_AT_ONCE, baseline, 4 * baseline]))
    r = rule(kind="zscore", signals="M.*", threshold=threshold, baseline=baseline, warmup=warmup, min_scale=min_scale)
    with mock.patch.object(zscore, "CELLS_AT_ONCE", cells):
        fast, slow = r.evaluator(), ZScoreBefore(r)
        compare(fast, slow, stream, data)
        assert fast.history.keys() == slow.history.keys()
        for name in fast.history:
            np.testing.assert_array_equal(fast.history[name], slow.history[name])


def test_a_clean_zscore_batch_sorts_no_baseline():
    r = rule(kind="zscore", signals="M.*", threshold=6.0, baseline=150, warmup=50)
    fast, slow = r.evaluator(), ZScoreBefore(r)
    rng = np.random.default_rng(7)
    taken = []
    cannot_cross = ZScoreEvaluator._cannot_cross

    def spy(self, *args):
        taken.append(cannot_cross(self, *args))
        return taken[-1]

    raised = []
    with mock.patch.object(ZScoreEvaluator, "_cannot_cross", spy):
        for i in range(6):
            v = rng.normal(48.0, 0.5, (2, 100))
            if i == 4:
                v[1, 30] = 90.0  # one spike: the baselines decide, and raise it
            batch = FlatBatch(("M.a", "M.b"), np.repeat([0, 1], 100), np.tile(np.arange(100.0) + 100 * i, 2), v.ravel())
            want = slow.metrics(batch, {}, 100.0 * i + 99, False)
            same_metrics(fast.metrics(batch, {}, 100.0 * i + 99, False), want)
            raised.append(want is not None)
    # two batches fill the baselines (no quick test while one has a gap), then clean ones are told at once
    assert taken == [True, True, False, True]
    assert raised == [False, False, False, False, True, False]


# -- the detector: every kind, rules retuned mid-stream ------------------------------------------

BEFORE = {LimitEvaluator: LimitBefore, StaleEvaluator: StaleBefore, SpreadEvaluator: SpreadBefore,
          ZScoreEvaluator: ZScoreBefore}


class DetectorBefore(Detector):
    """The detector with the rules' evaluators as they were."""

    def __init__(self, rules: tuple[Rule, ...], vehicle: str, cfg: DetectorConfig | None = None) -> None:
        super().__init__(rules, vehicle, cfg)
        self._old()

    def retune(self, rules: tuple[Rule, ...], cfg: DetectorConfig) -> None:
        super().retune(rules, cfg)
        self._old()

    def _old(self) -> None:
        self.evaluators = [(r, BEFORE[type(ev)](r) if type(ev) in BEFORE else ev) for r, ev in self.evaluators]


def alerts(messages: list[Alert]) -> list[str]:
    """As JSON text: a NaN time (from a hand-built batch) then compares equal to itself."""
    return [json.dumps(m.encode(), sort_keys=True) for m in messages]


def _rules(limit_max: float, spread: float, timeout: float, threshold: float) -> tuple[Rule, ...]:
    return parse_config({"vehicle": "car", "rules": [
        dict(name="lim", kind="limit", signals="A.*", min=-5.0, max=limit_max, hysteresis=0.5),
        dict(name="lim-b", kind="limit", signals="B.*", max=3.0, min_duration=0.3, clear_duration=0.2),
        dict(name="quiet", kind="stale", signals=["A.*", "B.*"], timeout=timeout),
        dict(name="quiet-c", kind="stale", signals="C.*", timeout=timeout, scope="signal", min_duration=0.5),
        dict(name="spread", kind="spread", signals="A.*", max_spread=spread, hysteresis=0.5),
        dict(name="z", kind="zscore", signals="C.*", threshold=threshold, baseline=8, warmup=4, hysteresis=1.0),
    ]}).rules


@given(batches(names=("A.x", "A.y", "B.z", "C.q"), max_samples=30), st.lists(st.integers(0, 5), max_size=2),
       st.sampled_from([0.0, 1.0]))
@settings(max_examples=60, deadline=None)
def test_the_detector_alerts_as_with_the_old_rules(stream, retune_at, update_seconds):
    cfg = DetectorConfig(update_seconds=update_seconds, flap_raises=3, flap_window_seconds=5.0, flap_hold_seconds=1.0)
    tunings = itertools.cycle([(5.0, 6.0, 1.5, 3.0), (3.0, 2.0, 0.3, 2.0), (5.0, 6.0, 1.5, 6.0)])
    rules = _rules(*next(tunings))
    fast, slow = Detector(rules, "car", cfg), DetectorBefore(rules, "car", cfg)
    assert any(isinstance(ev, ZScoreBefore) for _, ev in slow.evaluators)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, batch in enumerate(stream):
            if i in retune_at:
                rules = _rules(*next(tunings))
                fast.retune(rules, cfg)
                slow.retune(rules, cfg)
            now = float(np.nanmax(batch.t, initial=0.0)) + 0.5
            assert alerts(fast.add(batch, None, now)) == alerts(slow.add(batch, None, now))
    assert fast.stats == slow.stats


def test_run_stats_are_those_of_each_run():
    t = np.array([0.0, 1.0, 3.0, 2.0, 5.0, 5.0, 9.0])
    v = np.array([1.0, np.nan, -2.0, 4.0, 0.5, 7.0, 3.0])
    batch = FlatBatch(("a", "b", "c", "d"), np.array([0, 0, 0, 2, 2, 2, 3]), t, v)
    stats = run_stats(batch)
    assert stats is not None and run_stats(batch) is stats  # once per batch
    np.testing.assert_array_equal(stats.count, [3, 0, 3, 1])
    np.testing.assert_array_equal(stats.ordered, [True, True, True, True])
    np.testing.assert_array_equal(stats.v_max, [np.nan, -np.inf, 7.0, 3.0])
    np.testing.assert_array_equal(stats.v_min, [np.nan, np.inf, 0.5, 3.0])
    np.testing.assert_array_equal(stats.v_last, [-2.0, np.nan, 7.0, 3.0])
    np.testing.assert_array_equal(stats.t_first, [0.0, np.inf, 2.0, 9.0])
    np.testing.assert_array_equal(stats.t_last, [3.0, -np.inf, 5.0, 9.0])
    np.testing.assert_array_equal(stats.t_step, [2.0, -np.inf, 3.0, -np.inf])
    unsorted = FlatBatch(("a",), np.zeros(3, np.int64), np.array([0.0, 2.0, 1.0]), np.zeros(3))
    assert not run_stats(unsorted).ordered[0]  # type: ignore[union-attr]
    assert run_stats(FlatBatch(("a", "b"), np.array([1, 0]), np.zeros(2), np.zeros(2))) is None  # not in runs

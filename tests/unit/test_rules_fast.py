"""The rules' fast paths against the plain code they replaced (kept here as the reference): the
same metrics, value for value, on adversarial input (NaN, inf, huge values, constant runs where
the MAD is 0, duplicate and unsorted times, one sample, batches cut anywhere)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from telemetry.edge.config import DetectorConfig, parse_config
from telemetry.edge.detector import CLEARED, RAISED, UPDATE, Detector, _State
from telemetry.edge.messages import Alert, FlatBatch
from telemetry.edge.rules import Metrics, Rule, zscore
from telemetry.edge.rules import base as rules_base
from telemetry.edge.rules import spread as spread_rule
from telemetry.edge.rules.base import NO_EVENTS, Metric, by_key_then_time
from telemetry.edge.rules.spread import SpreadEvaluator
from telemetry.edge.rules.stale import StaleEvaluator
from telemetry.edge.rules.zscore import ZScoreEvaluator, median_mad


@pytest.fixture(autouse=True)
def select_by_runs_whatever_the_size():
    """These batches are small: selected by runs anyway, the path big batches take (a small
    batch's mask path is the one test_rules.py exercises)."""
    with mock.patch.object(rules_base, "_RUNS_FROM", 0):
        yield

def rule(**kw) -> Rule:
    kw.setdefault("name", "r")
    return parse_config({"vehicle": "car", "rules": [kw]}).rules[0]


# -- the reference: the z-score rule as it was (np.median / np.nanmedian per baseline) ------------


class ZScoreReference(ZScoreEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch)
        if sel is None:
            return None
        ids, t, v = by_key_then_time(*sel)
        size = self.rule.baseline
        z = np.zeros(len(v))
        x = np.full(len(v), -np.inf)
        bounds = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1], [True])))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            name = batch.names[ids[a]]
            history = self.history.get(name, np.empty(0))
            padded = np.concatenate((np.full(size - len(history), np.nan), history, v[a:b]))
            every = sliding_window_view(padded, size)[: b - a]
            step = max(1, zscore.CELLS_AT_ONCE // size)
            for c in range(0, b - a, step):
                windows = every[c:c + step]
                ready = np.sum(~np.isnan(windows), axis=1) >= self.rule.warmup
                if not ready.any():
                    continue
                w = windows[ready]
                median_of = np.median if len(history) + c >= size else np.nanmedian
                median = median_of(w, axis=1)
                mad = median_of(np.abs(w - median[:, None]), axis=1)
                scale = np.maximum(1.4826 * mad, self.rule.min_scale)
                here = slice(a + c, a + c + len(windows))
                dev = v[here][ready] - median
                with np.errstate(divide="ignore", invalid="ignore"):
                    zz = np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0), np.where(dev == 0, 0.0, np.inf))
                z[here][ready] = zz
                x[here][ready] = np.abs(zz) - self.rule.threshold
            self.history[name] = padded[~np.isnan(padded)][-size:]
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"threshold": self.rule.threshold}, {"z": z})


# -- the reference: the spread rule as it was (a NaN table filled down by fancy indexing) ----------


class SpreadReference(SpreadEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch)
        if sel is None:
            return None
        cols_of_name = self.per_name(batch.names, self.latest.number)
        if not len(sel[1]):
            return None
        # by time, then signal in the order of their first samples, then batch order
        first = np.unique(sel[0], return_index=True, return_inverse=True)
        order = np.lexsort((first[1][first[2]], sel[1]))
        col, t, v = cols_of_name[sel[0][order]], sel[1][order], sel[2][order]
        width = len(self.latest.names)
        # Samples stamped at the same moment are simultaneous: the state is judged once per
        # instant, after all of them (a table row per instant, not per sample: a frame carries
        # several cells). Of one signal's samples in an instant the last counts; they are
        # adjacent here, in batch order (sorted by time, then signal: a batch whose signals'
        # samples are not together, as FlatBatch promises they are, too).
        new_instant = np.concatenate(([True], t[1:] != t[:-1]))
        instant = np.cumsum(new_instant) - 1
        last = np.concatenate(((instant[1:] != instant[:-1]) | (col[1:] != col[:-1]), [True]))
        instant, col, v = instant[last], col[last], v[last]
        t = t[np.concatenate((new_instant[1:], [True]))]  # each instant's time
        n = len(t)
        # the table's columns are the signals in name order: of equal values, the first by name
        # is the highest (lowest), not the first the batches happened to show
        by_name = np.argsort(np.array(self.latest.names))
        place = np.empty(width, dtype=np.int64)
        place[by_name] = np.arange(width)
        col = place[col]
        # A table of every signal's latest value at each instant, a block of rows at a time:
        # memory stays a few MB, however many samples a batch holds.
        rows_at_once = max(1, spread_rule.CELLS_AT_ONCE // max(width, 1))
        parts: list[tuple[np.ndarray, ...]] = []
        latest = self.latest.values[by_name]
        for a in range(0, n, rows_at_once):
            b = min(n, a + rows_at_once)
            lo_i, hi_i = np.searchsorted(instant, [a, b])
            table = np.full((b - a + 1, width), np.nan)
            table[0] = latest
            table[instant[lo_i:hi_i] - a + 1, col[lo_i:hi_i]] = v[lo_i:hi_i]
            # carry each signal's latest value down the rows (forward fill)
            row = np.where(np.isnan(table), 0, np.arange(b - a + 1)[:, None])
            np.maximum.accumulate(row, axis=0, out=row)
            table = table[row, np.arange(width)]
            latest = table[-1].copy()
            table = table[1:]
            unknown = np.isnan(table)  # a signal not seen yet
            counted = width - np.sum(unknown, axis=1)
            known = counted >= 2
            if not known.any():
                continue
            table = table[known]
            hi = lo = table
            if unknown.any():
                unknown = unknown[known]
                hi, lo = np.where(unknown, -np.inf, table), np.where(unknown, np.inf, table)
            # at each point: how many signals are known, and which are highest and lowest
            rows = np.arange(len(table))
            highest, lowest = hi.argmax(axis=1), lo.argmin(axis=1)
            parts.append((t[a:b][known], hi[rows, highest] - lo[rows, lowest], counted[known],
                          by_name[highest], by_name[lowest]))
        self.latest.values = np.empty(width)
        self.latest.values[by_name] = latest
        if not parts:
            return None
        t, spread, signals, highest, lowest = (np.concatenate(c) for c in zip(*parts))
        x = spread - self.rule.max_spread
        if not hot and not (x > 0).any():
            return None
        extra = {"signals": signals, "highest": highest, "lowest": lowest}
        names = list(self.latest.names)
        return Metrics([self.rule.name], np.zeros(len(t), dtype=np.int64), t, x, spread,
                       {"max_spread": self.rule.max_spread}, extra, {"highest": names, "lowest": names})


# -- the reference: the stale rule as it was (one sort of all its samples by key, then time) ------


class StaleReference(StaleEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        timeout = self.rule.timeout
        assert timeout is not None  # check() requires it
        points: list[tuple[int, float, float, float]] = []  # key, time, age, silent_for
        k = t = silent = np.empty(0)
        keep = np.empty(0, bool)
        sel = self.select(batch)
        if sel is not None:
            key_of_name = self.per_name(batch.names, self.key_number)
            k, t = by_key_then_time(key_of_name[sel[0]], sel[1])
            first = np.concatenate(([True], k[1:] != k[:-1]))
            prev = np.concatenate(([np.nan], t[:-1]))
            prev[first] = self.seen.values[k[first]]
            silent = t - prev
            ended = np.flatnonzero(silent > timeout)  # silences that ended inside this batch
            for i in ended.tolist():
                self._silence(int(k[i]), float(prev[i]), float(t[i]), points)
            # the samples are points while an alert may be in flight: always when the rule is
            # hot, else those of keys whose silence ended here (a clear delay runs on them)
            keep = np.ones(len(t), bool) if hot else np.isin(k, k[ended])
            last = np.append(np.flatnonzero(first)[1:], len(k)) - 1
            self.seen.values[k[last]] = t[last]
        # silences still going on at the batch's event time
        for key in np.flatnonzero(now - self.seen.values > timeout).tolist():
            self._silence(key, float(self.seen.values[key]), now, points)
        if not points and not keep.any():
            return None
        silent = np.where(silent > timeout, silent, np.nan)
        pk, pt, page, psilent = (np.array(c, dtype=float) for c in zip(*points)) if points else (np.empty(0),) * 4
        kk = np.concatenate((k[keep], pk)).astype(np.int64)
        tt = np.concatenate((t[keep], pt))
        age = np.concatenate((np.zeros(int(keep.sum())), page))
        silent_for = np.concatenate((silent[keep], psilent))
        kk, tt, age, silent_for = by_key_then_time(kk, tt, age, silent_for)
        x = np.where(age > 0, age - timeout + self.EPSILON, age - timeout)
        return Metrics(list(self.seen.names), kk, tt, x, age, {"timeout": timeout}, {"silent_for": silent_for})


# -- the reference: the detector's state machine as it was (numpy over every run of points) -------


class DetectorReference(Detector):
    def _step(self, rule: Rule, m: Metric, now: float) -> list[Alert]:
        state = self.states.setdefault((rule.name, m.key), _State())
        out: list[Alert] = []
        violated = m.x > 0
        normal = m.x <= -rule.hysteresis
        # hysteresis: between the two bands the state stays what it was
        marker = np.where(violated, 1, np.where(normal, 0, -1))
        last = np.maximum.accumulate(np.where(marker >= 0, np.arange(len(marker)), -1))
        h = np.where(last >= 0, marker[np.maximum(last, 0)] == 1, state.violated)
        bounds = [0, *(np.flatnonzero(h[1:] != h[:-1]) + 1).tolist(), len(h)]
        for a, b in itertools.pairwise(bounds):
            t = m.t[a:b]
            if h[a]:
                state.clearing_since = None
                if not state.active:
                    if state.pending_since is None:
                        state.pending_since = float(t[0])
                    i = int(np.searchsorted(t, state.pending_since + rule.min_duration, side="left"))
                    if i >= len(t):
                        continue
                    self._raise(rule, m, state, a + i)
                    out.append(self._message(rule, m, state, RAISED, a + i))
                    a += i + 1
                self._while_active(rule, m, state, a, b, True, out)
            else:
                state.pending_since = None
                if not state.active:
                    continue
                if state.clearing_since is None:
                    state.clearing_since = float(t[0])
                hold = rule.clear_duration
                if state.flapping:
                    hold = max(hold, self.cfg.flap_hold_seconds)
                i = int(np.searchsorted(t, state.clearing_since + hold, side="left"))
                self._while_active(rule, m, state, a, a + i, False, out)
                if i < len(t):
                    out.append(self._message(rule, m, state, CLEARED, a + i))
                    state.active = False
                    state.clearing_since = None
                    self.stats["alerts_cleared"] += 1
        state.violated = bool(h[-1])
        return out

    def _while_active(self, rule: Rule, m: Metric, state: _State, lo: int, hi: int, violated: bool,
                      out: list[Alert]) -> None:
        """Points ``lo:hi`` of an active alert: track its worst (where violated), and send an
        update at each point due (``update_seconds`` after its last message) where the worst so
        far is worse than the one last sent."""
        every = self.cfg.update_seconds
        while lo < hi:
            worst = np.full(hi - lo, state.worst_x)
            if violated:
                np.maximum(worst, np.maximum.accumulate(m.x[lo:hi]), out=worst)
            due = np.flatnonzero((m.t[lo:hi] >= state.last_sent + every) & (worst > state.sent_worst_x))
            if not len(due):
                break
            i = lo + int(due[0])
            if violated:
                self._track_worst(m, state, lo, i + 1)
            out.append(self._message(rule, m, state, UPDATE, i))
            lo = i + 1
        if violated:
            self._track_worst(m, state, lo, hi)


# -- inputs ---------------------------------------------------------------------------------------

# few distinct values (ties, constant runs: MAD 0), signed zeros, the extremes
VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, 1.0, 2.0, -3.5, 100.0]),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324]),
    st.floats(-1e6, 1e6),
)


@st.composite
def flat_batches(draw, names=("A.x", "A.y", "B.z"), max_samples=60):
    """Batches as the reader makes them (each signal's samples contiguous, signals in table
    order), with unsorted and duplicate times now and then, and signals with the same times."""
    out = []
    t0 = 0.0
    for _ in range(draw(st.integers(1, 5))):
        cols = {}
        for name in names:
            n = draw(st.integers(0, max_samples))
            if not n:
                continue
            if cols and draw(st.integers(0, 2)) == 0:  # the times of the signal before (one frame, two signals)
                t = list(cols.values())[-1][0].copy()
                n = len(t)
            else:
                steps = draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 4.0, -0.3]), min_size=n, max_size=n))
                t = t0 + np.cumsum(steps)
                if draw(st.integers(0, 9)) == 0:  # a time that is not a number
                    t[draw(st.integers(0, n - 1))] = np.nan
            v = np.array(draw(st.lists(VALUES, min_size=n, max_size=n)), float)
            cols[name] = (t, v)
        t0 += 50.0
        if not cols:
            out.append(FlatBatch.empty())
            continue
        table = tuple(cols)
        out.append(FlatBatch(table, np.repeat(np.arange(len(table)), [len(c[0]) for c in cols.values()]),
                             np.concatenate([c[0] for c in cols.values()]), np.concatenate([c[1] for c in cols.values()])))
    return out


def same_metrics(got: Metrics | None, want: Metrics | None) -> None:
    assert (got is None) == (want is None)
    if got is None or want is None:
        return
    assert got.keys == want.keys and got.detail == want.detail and got.labels == want.labels
    for a, b in [(got.k, want.k), (got.t, want.t), (got.x, want.x), (got.value, want.value)]:
        np.testing.assert_array_equal(a, b)
    assert set(got.extra) == set(want.extra)
    for name in got.extra:
        np.testing.assert_array_equal(got.extra[name], want.extra[name])


# -- z-score ------------------------------------------------------------------------------------


@given(st.lists(st.lists(VALUES, min_size=1, max_size=12), min_size=1, max_size=30), st.booleans())
@settings(max_examples=100)
def test_median_mad_of_sorted_rows_is_numpys(rows, full):
    n = max(len(r) for r in rows)
    w = np.array([r + [np.nan] * (n - len(r)) for r in rows])
    if full:
        w = np.array([(r * n)[:n] for r in rows])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-NaN slices
        median_of = np.median if full else np.nanmedian
        want_median = median_of(w, axis=1)
        want_mad = median_of(np.abs(w - want_median[:, None]), axis=1)
        s = np.sort(w, axis=1)
        median, mad = median_mad(s, np.sum(~np.isnan(s), axis=1), full)
    np.testing.assert_array_equal(median, want_median)
    np.testing.assert_array_equal(mad, want_mad)


@given(flat_batches(max_samples=30), st.integers(5, 12), st.data())
@settings(max_examples=80)
def test_the_zscore_metric_is_the_per_baseline_medians_one(batches, baseline, data):
    warmup = data.draw(st.integers(2, baseline))
    min_scale = data.draw(st.sampled_from([0.0, 0.0, 0.5]))
    cells = data.draw(st.sampled_from([zscore.CELLS_AT_ONCE, baseline, 3 * baseline]))  # blocks of baselines
    r = rule(kind="zscore", signals="A.*", threshold=2.0, baseline=baseline, warmup=warmup, min_scale=min_scale)
    fast, slow = r.evaluator(), ZScoreReference(r)
    with mock.patch.object(zscore, "CELLS_AT_ONCE", cells), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, batch in enumerate(batches):
            hot = i % 2 == 1
            same_metrics(fast.metrics(batch, {}, 0.0, hot), slow.metrics(batch, {}, 0.0, hot))


# -- spread ------------------------------------------------------------------------------------


@given(flat_batches(names=("C.v2", "C.v0", "C.v1", "D.v3"), max_samples=12), st.data())
@settings(max_examples=80)
def test_the_spread_metric_is_the_nan_table_one(batches, data):
    cells = data.draw(st.sampled_from([spread_rule.CELLS_AT_ONCE, 1, 4, 9]))  # blocks of rows
    r = rule(kind="spread", signals="C.*", max_spread=1.0)
    fast, slow = r.evaluator(), SpreadReference(r)
    with mock.patch.object(spread_rule, "CELLS_AT_ONCE", cells), np.errstate(all="ignore"):
        for i, batch in enumerate(batches):
            hot = i % 2 == 1
            same_metrics(fast.metrics(batch, {}, 0.0, hot), slow.metrics(batch, {}, 0.0, hot))


# -- stale -------------------------------------------------------------------------------------


@given(flat_batches(names=("A.x", "A.y", "B.z", "A.w", "C.q"), max_samples=12), st.sampled_from(["message", "signal"]),
       st.sampled_from([0.0, 0.7]), st.data())
@settings(max_examples=80)
def test_the_stale_metric_is_the_one_sort_one(batches, scope, delay, data):
    r = rule(kind="stale", signals=["A.*", "B.*"], timeout=1.5, scope=scope, min_duration=delay)
    fast, slow = r.evaluator(), StaleReference(r)
    for batch in batches:
        hot = data.draw(st.booleans())
        now = float(np.nanmax(batch.t, initial=0.0)) + data.draw(st.sampled_from([0.0, 1.0, 3.0]))
        same_metrics(fast.metrics(batch, {}, now, hot), slow.metrics(batch, {}, now, hot))


# -- the state machine -------------------------------------------------------------------------

MACHINE_RULES = [
    dict(name="lim", kind="limit", signals="A.*", min=-5.0, max=5.0, hysteresis=0.5),
    dict(name="lim-slow", kind="limit", signals="B.*", max=3.0, min_duration=0.3, clear_duration=0.2),
    dict(name="quiet", kind="stale", signals="B.*", timeout=0.5),
    dict(name="spread", kind="spread", signals="A.*", max_spread=6.0, hysteresis=1.0),
]


@given(st.lists(st.tuples(st.sampled_from(["A.x", "A.y", "B.z"]), st.sampled_from([0.0, 0.0625, 0.25, 0.5, 0.75]),
                          st.one_of(st.floats(-9, 9).map(lambda x: round(x, 1)), st.just(np.nan))),
                min_size=1, max_size=150), st.lists(st.integers(1, 149), max_size=6), st.sampled_from([0.0, 0.25, 1.0]))
@settings(max_examples=200)
def test_the_state_machine_decides_as_the_numpy_one(samples, cuts, update_seconds):
    """Times on a binary grid, so that points fall exactly when an update is due."""
    names = np.array([s[0] for s in samples])
    t = 100.0 + np.cumsum([s[1] for s in samples])
    v = np.array([s[2] for s in samples])
    rules = tuple(rule(**r) for r in MACHINE_RULES)
    cfg = DetectorConfig(update_seconds=update_seconds, flap_raises=3, flap_window_seconds=2.0, flap_hold_seconds=0.5)
    fast, slow = Detector(rules, "car", cfg), DetectorReference(rules, "car", cfg)
    bounds = sorted({0, len(t), *[c for c in cuts if c < len(t)]})
    for a, b in itertools.pairwise(bounds):
        table = tuple(n for n in ("A.x", "A.y", "B.z") if (names[a:b] == n).any())
        parts = [np.flatnonzero(names[a:b] == n) + a for n in table]
        batch = FlatBatch(table, np.repeat(np.arange(len(table)), [len(p) for p in parts]),
                          np.concatenate((parts and [t[p] for p in parts]) or [np.empty(0)]),
                          np.concatenate((parts and [v[p] for p in parts]) or [np.empty(0)]))
        now = float(t[b - 1])
        with np.errstate(invalid="ignore"):
            assert [m.encode() for m in fast.add(batch, None, now)] == [m.encode() for m in slow.add(batch, None, now)]



@pytest.mark.parametrize("hysteresis", [0.0, 0.5])
def test_a_margin_of_zero_is_not_violated_without_hysteresis_either(hysteresis):
    """Margins on both sides of 0 in one batch, some exactly 0 (a value on the bound), no NaN:
    without hysteresis the state is each point's own (the state machine's shortcut), with it the
    band decides; both as the numpy reference."""
    r = rule(name="lim", kind="limit", signals="A.*", max=3.0, hysteresis=hysteresis)
    v = np.array([4.0, 3.0, 2.0, 4.0, 3.0, 2.0])
    batch = FlatBatch(("A.x",), np.zeros(len(v), np.int64), 10.0 + np.arange(len(v)), v)
    fast, slow = Detector((r,), "car"), DetectorReference((r,), "car")
    out = [(m.state, m.t) for m in fast.add(batch, None, 15.0)]
    assert out == [(m.state, m.t) for m in slow.add(batch, None, 15.0)]
    if hysteresis == 0.0:  # on the bound is inside: cleared there
        assert out == [("raised", 10.0), ("cleared", 11.0), ("raised", 13.0), ("cleared", 14.0)]
    else:  # cleared only at 2.5 or below
        assert out == [("raised", 10.0), ("cleared", 12.0), ("raised", 13.0), ("cleared", 15.0)]

def test_the_spread_of_samples_without_a_time_keeps_batch_order():
    # hypothesis found it: two signals' samples at NaN times, each its own instant, in batch order
    empty = FlatBatch((), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    for last in ([0.0, np.inf], [0.0, 0.0]):
        batches = [FlatBatch(("C.v2", "C.v1", "D.v3"), np.repeat([0, 1, 2], 6), np.zeros(18), np.zeros(18)), empty, empty,
                   FlatBatch(("C.v0", "C.v1"), np.array([0, 1]), np.array([np.nan, np.nan]), np.array(last))]
        r = rule(kind="spread", signals="C.*", max_spread=1.0)
        fast, slow = r.evaluator(), SpreadReference(r)
        with np.errstate(all="ignore"):
            for i, batch in enumerate(batches):
                same_metrics(fast.metrics(batch, {}, 0.0, i % 2 == 1), slow.metrics(batch, {}, 0.0, i % 2 == 1))

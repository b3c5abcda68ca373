"""The rules' fast paths against the plain code they replaced (kept here as the reference): the
same metrics, value for value, on adversarial input (NaN, inf, huge values, constant runs where
the MAD is 0, duplicate and unsorted times, one sample, batches cut anywhere)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from unittest import mock

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from telemetry.edge.config import parse_config
from telemetry.edge.messages import FlatBatch
from telemetry.edge.rules import Metrics, Rule, zscore
from telemetry.edge.rules.base import NO_EVENTS, by_key_then_time
from telemetry.edge.rules.zscore import ZScoreEvaluator, median_mad


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
    order), with unsorted and duplicate times now and then."""
    out = []
    t0 = 0.0
    for _ in range(draw(st.integers(1, 5))):
        cols = {}
        for name in names:
            n = draw(st.integers(0, max_samples))
            if not n:
                continue
            steps = draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 4.0, -0.3]), min_size=n, max_size=n))
            t = t0 + np.cumsum(steps)
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


@given(flat_batches(), st.integers(5, 12), st.data())
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

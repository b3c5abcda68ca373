"""The detector's rules as they were before they told a batch that cannot matter to them from
each signal's run numbers (main at dd9d763): the references the tests compare the rules with.
Each class is today's evaluator with its ``metrics`` (and the z-score's median and MAD) as they
were, code and comments unchanged (``CELLS_AT_ONCE`` read from the rule's module, where the
tests change it); their state (histories, latest values, last seen) is the same, so a test can
feed both the same batches."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from telemetry.edge.messages import FlatBatch
from telemetry.edge.rules import spread as spread_rule
from telemetry.edge.rules import zscore as zscore_rule
from telemetry.edge.rules.base import NO_EVENTS, Metrics, by_key_then_time
from telemetry.edge.rules.limit import LimitEvaluator
from telemetry.edge.rules.spread import SpreadEvaluator, _forward_filled
from telemetry.edge.rules.stale import StaleEvaluator
from telemetry.edge.rules.zscore import ZScoreEvaluator


class LimitBefore(LimitEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        lo = -math.inf if self.rule.min is None else self.rule.min
        hi = math.inf if self.rule.max is None else self.rule.max
        x = np.maximum(v - hi, lo - v)
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"min": self.rule.min, "max": self.rule.max})


class StaleBefore(StaleEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        timeout = self.rule.timeout
        assert timeout is not None  # check() requires it
        points: list[tuple[int, float, float, float]] = []  # key, time, age, silent_for
        k = t = silent = np.empty(0)
        keep = np.empty(0, bool)
        sel = self.keyed(batch)
        if sel is not None:
            k, t = sel
            first = np.concatenate(([True], k[1:] != k[:-1]))
            prev = np.concatenate(([np.nan], t[:-1]))
            prev[first] = self.seen.values[k[first]]
            silent = t - prev
            ended = np.flatnonzero(silent > timeout)  # silences that ended inside this batch
            for i in ended.tolist():
                self._silence(int(k[i]), float(prev[i]), float(t[i]), points)
            # the samples are points while an alert may be in flight: always when the rule is
            # hot, else those of keys whose silence ended here (a clear delay runs on them)
            if hot:
                keep = np.ones(len(t), bool)
            else:
                keep = np.isin(k, k[ended]) if len(ended) else np.zeros(len(t), bool)
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
        if points:  # the samples kept are in order already: only points among them need a sort
            kk, tt, age, silent_for = by_key_then_time(kk, tt, age, silent_for)
        x = np.where(age > 0, age - timeout + self.EPSILON, age - timeout)
        return Metrics(list(self.seen.names), kk, tt, x, age, {"timeout": timeout}, {"silent_for": silent_for})


class SpreadBefore(SpreadEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch)
        if sel is None:
            return None
        cols_of_name = self.per_name(batch.names, self.latest.number, batch.memo)
        if not len(sel[1]):
            return None
        order = np.argsort(sel[1], kind="stable")
        col, t, v = cols_of_name[sel[0][order]], sel[1][order], sel[2][order]
        width = len(self.latest.names)
        # Samples stamped at the same moment are simultaneous: the state is judged once per
        # instant, after all of them (a table row per instant, not per sample: a frame carries
        # several cells). Of one signal's samples in an instant the last counts; they are
        # adjacent here (a batch holds each signal's samples together, and the sort is stable).
        new_instant = np.concatenate(([True], t[1:] != t[:-1]))
        instant = np.cumsum(new_instant) - 1
        last = np.concatenate(((instant[1:] != instant[:-1]) | (col[1:] != col[:-1]), [True]))
        instant, col, v = instant[last], col[last], v[last]
        t = t[np.concatenate((new_instant[1:], [True]))]  # each instant's time
        n = len(t)
        # the table's columns are the signals in name order: of equal values, the first by name
        # is the highest (lowest), not the first the batches happened to show
        if self._by_name[0] != width:  # the signals only grow: worked out again when one is added
            by_name = np.argsort(np.array(self.latest.names))
            place = np.empty(width, dtype=np.int64)
            place[by_name] = np.arange(width)
            self._by_name = (width, by_name, place)
        _, by_name, place = self._by_name
        col = place[col]
        # A table of every signal's latest value at each instant, a block of rows at a time:
        # memory stays a few MB, however many samples a batch holds. A NaN sample changes
        # nothing: the signal keeps its latest value.
        ok = ~np.isnan(v)
        instant, col, v = instant[ok], col[ok], v[ok]
        rows_at_once = max(1, spread_rule.CELLS_AT_ONCE // max(width, 1))
        parts: list[tuple[np.ndarray, ...]] = []
        latest = self.latest.values[by_name]
        for a in range(0, n, rows_at_once):
            b = min(n, a + rows_at_once)
            lo_i, hi_i = np.searchsorted(instant, [a, b])
            table = _forward_filled(latest, instant[lo_i:hi_i] - a, col[lo_i:hi_i], v[lo_i:hi_i], b - a, self.scratch)
            latest = table[-1].copy()
            hi = lo = table
            if np.isnan(table[0]).any():  # a signal not seen yet (once seen, a signal stays known)
                unknown = np.isnan(table)
                counted = width - np.sum(unknown, axis=1)
                known = counted >= 2
                if not known.any():
                    continue
                table, unknown = table[known], unknown[known]
                hi, lo = np.where(unknown, -np.inf, table), np.where(unknown, np.inf, table)
            elif width < 2:
                continue
            else:
                counted, known = np.full(len(table), width), slice(None)  # type: ignore[assignment]
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


class ZScoreBefore(ZScoreEvaluator):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        size, warmup = self.rule.baseline, self.rule.warmup
        z = np.zeros(len(v))
        x = np.full(len(v), -np.inf)
        # Every signal's baselines at once: one array of each signal's history (NaN before it
        # fills) then its samples, signal after signal; sample i's baseline is the ``size``
        # values before it there, from ``i + size * (its signal's rank)``.
        first = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1]))) if len(ids) else np.empty(0, np.int64)
        lengths = np.diff(np.append(first, len(ids)))
        names = [batch.names[i] for i in ids[first].tolist()]
        pieces, held = [], []
        for name, a, b in zip(names, first.tolist(), (first + lengths).tolist()):
            history = self.history.get(name, np.empty(0))
            pieces += [np.full(size - len(history), np.nan), history, v[a:b]]
            held.append(len(history))
        padded = np.concatenate(pieces) if pieces else np.empty(0)
        rank = np.repeat(np.arange(len(first)), lengths)
        start = np.arange(len(v)) + rank * size
        nans = np.concatenate(([0], np.cumsum(np.isnan(padded))))
        counts = size - (nans[start + size] - nans[start])  # the values (not NaN) of each baseline
        # A full baseline has no gaps: it is judged as np.median would (a NaN in it makes the
        # median NaN), one with gaps as np.nanmedian would; which one is decided per block of
        # ``step`` baselines of a signal, at the block's first (as the blocks went, signal by signal)
        step = max(1, zscore_rule.CELLS_AT_ONCE // size)
        within = np.arange(len(v)) - np.repeat(first, lengths)
        full = np.repeat(np.array(held, np.int64), lengths) + within // step * step >= size
        every = as_strided(padded, (max(len(padded) - size + 1, 0), size), padded.strides * 2, writeable=False)
        ready = np.flatnonzero(counts >= warmup)
        for c in range(0, len(ready), step):  # a block of baselines at a time: bounded memory
            rows = ready[c:c + step]
            w = every[start[rows]]
            w.sort(axis=1)  # NaN last
            is_full = full[rows]
            if is_full.all() or not is_full.any():
                median, mad = _median_mad(w, counts[rows], bool(is_full[0]))
            else:
                median, mad = np.empty(len(rows)), np.empty(len(rows))
                for part in (is_full, ~is_full):
                    median[part], mad[part] = _median_mad(w[part], counts[rows][part], bool(part is is_full))
            scale = np.maximum(1.4826 * mad, self.rule.min_scale)
            dev = v[rows] - median
            with np.errstate(divide="ignore", invalid="ignore"):
                zz = np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0), np.where(dev == 0, 0.0, np.inf))
            z[rows] = zz
            x[rows] = np.abs(zz) - self.rule.threshold
        valid = ~np.isnan(padded)
        for name, s, a, b in zip(names, range(len(names)), first.tolist(), (first + lengths).tolist()):
            segment = slice(a + s * size, b + (s + 1) * size)
            self.history[name] = padded[segment][valid[segment]][-size:]
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"threshold": self.rule.threshold}, {"z": z})


def _median_mad(w: np.ndarray, counts: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """The median of each row of ``w`` (each baseline, sorted, NaN last; ``counts``: the values
    of each that are not NaN) and the median of its absolute deviations from it (MAD), with the
    values ``np.median`` (``full``) or ``np.nanmedian`` (not ``full``) gives on the unsorted rows.

    Sorting the rows (numpy's vectorised sort) costs less than the two partitions the two medians
    take, and on a sorted row the MAD needs no second sort: the deviations fall then rise along
    it, so its k smallest are a run of k neighbours, and the k-th smallest is the least, over
    every run of k, of the larger of its two ends."""
    n = w.shape[1]
    if full:
        k = n // 2
        median = w[:, k] if n % 2 else (w[:, k - 1] + w[:, k]) / 2
        median = np.where(counts < n, np.nan, median)  # a NaN in the row makes it NaN
        dev = np.abs(w - median[:, None])  # its NaNs (inf - inf gives some too) reach the MAD
        kth = _kth_of_valley(dev, k) if n % 2 else (_kth_of_valley(dev, k - 1) + _kth_of_valley(dev, k)) / 2
        return median, kth
    rows = np.arange(len(w))
    median = _middle(w, counts, rows)
    dev = np.sort(np.abs(w - median[:, None]), axis=1)
    return median, _middle(dev, n - np.sum(np.isnan(dev), axis=1), rows)


def _kth_of_valley(dev: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest (from 0) of each row, its values falling then rising along it."""
    n = dev.shape[1]
    return np.min(np.maximum(dev[:, : n - k], dev[:, k:]), axis=1)


def _middle(w: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """np.nanmedian's median of sorted rows with ``counts`` values each (NaN after them): the
    sum of the two middle values (the middle one twice, for an odd count) halved; NaN for none."""
    high = counts // 2
    low = np.where(counts % 2 == 1, high, high - 1)
    with np.errstate(invalid="ignore"):
        out = (w[rows, np.maximum(low, 0)] + w[rows, np.minimum(high, w.shape[1] - 1)]) / 2
    return np.where(counts > 0, out, np.nan)

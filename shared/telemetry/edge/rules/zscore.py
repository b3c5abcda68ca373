"""``zscore``: statistical, for signals without fixed limits (a robust z-score per sample)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import CELLS_AT_ONCE, NO_EVENTS, Evaluator, Metrics, Rule

_NONE = np.empty(0)  # the history of a signal not seen yet


@dataclass(frozen=True, kw_only=True)
class ZScoreRule(Rule):
    kind = "zscore"

    threshold: float | None = None  # robust z-score
    baseline: int = 100  # samples in the rolling baseline
    warmup: int = 30  # samples seen before the rule may raise
    min_scale: float = 0.0  # floor of the robust scale (1.4826 * MAD), in signal units

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("threshold", where)
        if not isinstance(self.baseline, int) or self.baseline < 5:
            raise ConfigError(f"{where}: 'baseline' must be a whole number of samples, at least 5")
        if not isinstance(self.warmup, int) or not 2 <= self.warmup <= self.baseline:
            raise ConfigError(f"{where}: 'warmup' must be a whole number of samples from 2 to baseline")
        self._check_number("min_scale", where, positive=False)

    def evaluator(self) -> ZScoreEvaluator:
        return ZScoreEvaluator(self)


class ZScoreEvaluator(Evaluator[ZScoreRule]):
    """Robust z-score of each sample against the median and MAD of the ``baseline`` samples
    before it; silent until ``warmup`` samples have been seen."""

    def __init__(self, rule: ZScoreRule) -> None:
        super().__init__(rule)
        self.history: dict[str, np.ndarray] = {}
        # the MAD's working rows: memory kept and reused (a fresh array of this size, beside the
        # baselines, costs more in page faults than its filling)
        self.scratch = np.empty(0)

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        size = self.rule.baseline
        # Every signal's baselines at once: one array of each signal's history (NaN before it
        # fills) then its samples, signal after signal; sample i's baseline is the ``size``
        # values before it there, from ``i + size * (its signal's rank)``.
        first = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1]))) if len(ids) else np.empty(0, np.int64)
        starts = first.tolist()
        ends = [*starts[1:], len(v)]
        names = [batch.names[i] for i in ids[first].tolist()]
        pieces, held = [], []
        for name, a, b in zip(names, starts, ends):
            history = self.history.get(name, _NONE)
            if len(history) < size:
                pieces.append(np.full(size - len(history), np.nan))
            pieces += (history, v[a:b])
            held.append(len(history))
        padded = np.concatenate(pieces) if pieces else np.empty(0)
        # a clean batch (the common case) is told so without its baselines (see _cannot_cross):
        # only where every baseline is full (every history is: no gap) and none holds a NaN
        if not hot and len(v) and min(held) >= size and self._cannot_cross(v, padded, starts, ends):
            self._keep(names, padded, starts, ends, None)
            return None
        z, x, valid = self._scores(v, padded, first, held)
        self._keep(names, padded, starts, ends, valid)
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"threshold": self.rule.threshold}, {"z": z})

    def _keep(self, names: list[str], padded: np.ndarray, starts: list[int], ends: list[int],
              valid: np.ndarray | None) -> None:
        """Each signal's history for the next batch: the last ``size`` values (not NaN; ``valid``
        says which are, None: all of them) of its part of ``padded``."""
        size = self.rule.baseline
        for s, (name, a, b) in enumerate(zip(names, starts, ends)):
            segment = slice(a + s * size, b + (s + 1) * size)
            kept = padded[segment] if valid is None else padded[segment][valid[segment]]
            self.history[name] = kept[-size:].copy() if valid is None else kept[-size:]

    def _scores(self, v: np.ndarray, padded: np.ndarray, first: np.ndarray,
                held: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each sample's z-score and margin (-inf where its baseline holds fewer than ``warmup``
        values), from its baseline's median and MAD; and which values of ``padded`` are not NaN."""
        size, warmup = self.rule.baseline, self.rule.warmup
        z = np.zeros(len(v))
        x = np.full(len(v), -np.inf)
        lengths = np.diff(np.append(first, len(v)))
        rank = np.repeat(np.arange(len(first)), lengths)
        start = np.arange(len(v)) + rank * size
        valid = ~np.isnan(padded)
        nans = np.concatenate(([0], np.cumsum(~valid)))
        counts = size - (nans[start + size] - nans[start])  # the values (not NaN) of each baseline
        # A full baseline has no gaps: it is judged as np.median would (a NaN in it makes the
        # median NaN), one with gaps as np.nanmedian would; which one is decided per block of
        # ``step`` baselines of a signal, at the block's first (as the blocks went, signal by signal)
        step = max(1, CELLS_AT_ONCE // size)
        within = np.arange(len(v)) - np.repeat(first, lengths)
        full = np.repeat(np.array(held, np.int64), lengths) + within // step * step >= size
        every = np.ndarray((max(len(padded) - size + 1, 0), size), padded.dtype, padded, 0, padded.strides * 2)
        every.flags.writeable = False
        ready = np.flatnonzero(counts >= warmup)
        if len(self.scratch) < min(len(ready), step) * size:
            self.scratch = np.empty(min(len(ready), step) * size)
        for c in range(0, len(ready), step):  # a block of baselines at a time: bounded memory
            rows = ready[c:c + step]
            w = every[start[rows]]
            w.sort(axis=1)  # NaN last
            is_full = full[rows]
            if is_full.all() or not is_full.any():
                median, mad = median_mad(w, counts[rows], bool(is_full[0]), self.scratch)
            else:
                median, mad = np.empty(len(rows)), np.empty(len(rows))
                for part in (is_full, ~is_full):
                    median[part], mad[part] = median_mad(w[part], counts[rows][part], bool(part is is_full))
            scale = np.maximum(1.4826 * mad, self.rule.min_scale)
            dev = v[rows] - median
            with np.errstate(divide="ignore", invalid="ignore"):
                zz = np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0), np.where(dev == 0, 0.0, np.inf))
            z[rows] = zz
            x[rows] = np.abs(zz) - self.rule.threshold
        return z, x, valid

    # baselines judged together by their common part (see _cannot_cross)
    SHARED = 8

    def _cannot_cross(self, v: np.ndarray, padded: np.ndarray, starts: list[int], ends: list[int]) -> bool:
        """Whether no sample's robust z-score can pass the threshold, told from bounds on the
        median and MAD of its baseline, every baseline being full; False when that cannot be
        told (a NaN in ``padded``: the baselines then decide, as always when it is hot).
        ``starts``, ``ends``: where each signal's samples lie in ``v``.

        The baselines of B (``SHARED``) consecutive samples of a signal (a block) share all but
        B - 1 of their values: the core, sorted once for them. A baseline's r-th smallest value
        lies between the core's (r - B + 1)-th and r-th, so its median lies between the core's
        (k - B)-th and k-th (k = baseline // 2, from 0). Its (k - 1)-th smallest deviation from
        the median, and so its MAD, is at least the core's (k - B)-th smallest distance from
        that range: nearer than that lie at most k - B of the core and the B - 1 others, fewer
        than k. A sample whose distance from the range, over the smallest scale so allowed, is
        within the threshold has a z-score within it; the farthest of a block is its largest or
        its smallest value. The rounded numbers keep these orders (each step rounds
        monotonically); values so large that the sum of two overflows, and NaN, are left to the
        baselines."""
        size, k = self.rule.baseline, self.rule.baseline // 2
        shared = min(self.SHARED, k, size - k)
        if shared < 1 or not np.abs(padded).max(initial=0.0) <= 1e300:  # NaN fails it too
            return False
        width = size - shared + 1
        heads: list[int] = []  # each block's first sample in v
        cores: list[int] = []  # where its core starts in padded
        for s, (a, b) in enumerate(zip(starts, ends)):
            heads += range(a, b, shared)
            at = a + s * size + shared - 1
            cores += range(at, at + b - a, shared)
        if len(heads) * width > CELLS_AT_ONCE:  # bounded memory: the baselines decide
            return False
        core = np.ndarray((len(padded) - width + 1, width), padded.dtype, padded, 0, padded.strides * 2)[cores]
        core.sort(axis=1)
        low, high = core[:, k - shared], core[:, k]
        distance = np.maximum(low[:, None] - core, core - high[:, None])
        np.maximum(distance, 0.0, out=distance)  # falls then rises along the sorted core
        scale = np.maximum(1.4826 * _kth_of_valley(distance, k - shared), self.rule.min_scale)
        if not (scale > 0).all():
            return False
        # every value is finite and within 1e300: no division here can be by 0 or give NaN
        deviation = np.maximum(np.maximum.reduceat(v, heads) - low, high - np.minimum.reduceat(v, heads))
        return bool((deviation / scale <= self.rule.threshold).all())


def median_mad(w: np.ndarray, counts: np.ndarray, full: bool,
               scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The median of each row of ``w`` (each baseline, sorted, NaN last; ``counts``: the values
    of each that are not NaN) and the median of its absolute deviations from it (MAD), with the
    values ``np.median`` (``full``) or ``np.nanmedian`` (not ``full``) gives on the unsorted rows.
    ``scratch``: memory for the work (at least ``w.size`` floats), then ``w`` is overwritten.

    Sorting the rows (numpy's vectorised sort) costs less than the two partitions the two medians
    take, and on a sorted row the MAD needs no second sort: the deviations fall then rise along
    it, so its k smallest are a run of k neighbours, and the k-th smallest is the least, over
    every run of k, of the larger of its two ends."""
    n = w.shape[1]
    if full:
        k = n // 2
        median = w[:, k] if n % 2 else (w[:, k - 1] + w[:, k]) / 2
        median = np.where(counts < n, np.nan, median)  # a NaN in the row makes it NaN
        # its NaNs (inf - inf gives some too) reach the MAD
        if scratch is None:
            dev = np.abs(w - median[:, None])
        else:
            dev = np.subtract(w, median[:, None], out=w)
            np.abs(dev, out=dev)
        if n % 2:
            return median, _kth_of_valley(dev, k, scratch)
        return median, (_kth_of_valley(dev, k - 1, scratch) + _kth_of_valley(dev, k, scratch)) / 2
    rows = np.arange(len(w))
    median = _middle(w, counts, rows)
    dev = np.sort(np.abs(w - median[:, None]), axis=1)
    return median, _middle(dev, n - np.sum(np.isnan(dev), axis=1), rows)


def _kth_of_valley(dev: np.ndarray, k: int, scratch: np.ndarray | None = None) -> np.ndarray:
    """The k-th smallest (from 0) of each row, its values falling then rising along it.
    ``scratch``: memory for the work (at least ``dev.size`` floats)."""
    rows, n = dev.shape
    out = None if scratch is None else scratch[: rows * (n - k)].reshape(rows, n - k)
    return np.min(np.maximum(dev[:, : n - k], dev[:, k:], out=out), axis=1)


def _middle(w: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """np.nanmedian's median of sorted rows with ``counts`` values each (NaN after them): the
    sum of the two middle values (the middle one twice, for an odd count) halved; NaN for none."""
    high = counts // 2
    low = np.where(counts % 2 == 1, high, high - 1)
    with np.errstate(invalid="ignore"):
        out = (w[rows, np.maximum(low, 0)] + w[rows, np.minimum(high, w.shape[1] - 1)]) / 2
    return np.where(counts > 0, out, np.nan)

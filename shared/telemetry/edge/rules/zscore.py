"""``zscore``: statistical, for signals without fixed limits (a robust z-score per sample)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import CELLS_AT_ONCE, NO_EVENTS, Evaluator, Metrics, Rule


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

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        size = self.rule.baseline
        z = np.zeros(len(v))
        x = np.full(len(v), -np.inf)
        bounds = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1], [True])))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            name = batch.names[ids[a]]
            history = self.history.get(name, np.empty(0))
            padded = np.concatenate((np.full(size - len(history), np.nan), history, v[a:b]))
            every = as_strided(padded, (b - a, size), padded.strides * 2, writeable=False)  # the baselines
            # how many values (not NaN) each baseline holds, from a running count
            nans = np.concatenate(([0], np.cumsum(np.isnan(padded))))
            counts = size - (nans[size:size + b - a] - nans[: b - a])
            step = max(1, CELLS_AT_ONCE // size)  # a block of baselines at a time: bounded memory
            for c in range(0, b - a, step):
                ready = counts[c:c + step] >= self.rule.warmup
                if not ready.any():
                    continue
                windows = every[c:c + step]
                w = np.sort(windows if ready.all() else windows[ready], axis=1)  # NaN last
                # a full baseline has no gaps: it is judged as np.median would (a NaN in it makes
                # the median NaN), one with gaps as np.nanmedian would
                median, mad = median_mad(w, counts[c:c + step][ready], len(history) + c >= size)
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


def median_mad(w: np.ndarray, counts: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
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

"""``zscore``: statistical, for signals without fixed limits (a robust z-score per sample)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import CELLS_AT_ONCE, NO_EVENTS, Evaluator, Metrics, Rule, by_key_then_time


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
            step = max(1, CELLS_AT_ONCE // size)  # a block of baselines at a time: bounded memory
            for c in range(0, b - a, step):
                windows = every[c:c + step]
                ready = np.sum(~np.isnan(windows), axis=1) >= self.rule.warmup
                if not ready.any():
                    continue
                w = windows[ready]
                # a full baseline has no gaps: the plain median is much faster than nanmedian
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

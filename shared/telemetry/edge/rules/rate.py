"""``rate``: a change per second beyond a bound, between consecutive samples of a signal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..messages import FlatBatch
from .base import NO_EVENTS, Evaluator, Metrics, Rule


@dataclass(frozen=True, kw_only=True)
class RateRule(Rule):
    kind = "rate"

    max_rate: float | None = None  # units per second

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("max_rate", where)

    def evaluator(self) -> RateEvaluator:
        return RateEvaluator(self)


class RateEvaluator(Evaluator[RateRule]):
    """Change per second between consecutive samples (the last one of the previous batch
    included), against ``max_rate``."""

    def __init__(self, rule: RateRule) -> None:
        super().__init__(rule)
        self.last: dict[str, tuple[float, float]] = {}

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        first = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        last = np.append(first[1:], len(ids)) - 1
        prev_t = np.concatenate(([np.nan], t[:-1]))
        prev_v = np.concatenate(([np.nan], v[:-1]))
        names = batch.names
        carried = [self.last.get(names[i], (np.nan, np.nan)) for i in ids[first].tolist()]
        prev_t[first] = [c[0] for c in carried]
        prev_v[first] = [c[1] for c in carried]
        for i, j in zip(ids[last].tolist(), last.tolist()):
            self.last[names[i]] = (float(t[j]), float(v[j]))
        dt = t - prev_t
        ok = dt > 0  # NaN (no previous sample) and repeated times compare False
        rate = (v[ok] - prev_v[ok]) / dt[ok]
        x = np.abs(rate) - self.rule.max_rate
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(names), ids[ok], t[ok], x, rate, {"max_rate": self.rule.max_rate})

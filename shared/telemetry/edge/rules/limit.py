"""``limit``: a value outside fixed bounds (``min``, ``max`` or both; a value on a bound is inside)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import NO_EVENTS, Evaluator, Metrics, Rule, run_stats


@dataclass(frozen=True, kw_only=True)
class LimitRule(Rule):
    kind = "limit"

    min: float | None = None
    max: float | None = None

    def check(self, where: str) -> None:
        super().check(where)
        if self.min is None and self.max is None:
            raise ConfigError(f"{where}: a limit rule needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ConfigError(f"{where}: min {self.min} is not below max {self.max}")

    def evaluator(self) -> LimitEvaluator:
        return LimitEvaluator(self)


class LimitEvaluator(Evaluator[LimitRule]):
    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        lo = -math.inf if self.rule.min is None else self.rule.min
        hi = math.inf if self.rule.max is None else self.rule.max
        if not hot and not self._may_cross(batch, lo, hi):
            return None
        sel = self.select(batch, ordered=True)
        if sel is None:
            return None
        ids, t, v = sel
        x = np.maximum(v - hi, lo - v)
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"min": self.rule.min, "max": self.rule.max})

    def _may_cross(self, batch: FlatBatch, lo: float, hi: float) -> bool:
        """Whether a sample of the batch may be beyond a bound, judged by each signal's largest
        and smallest value (``run_stats``): a sample is beyond one (its margin positive) only if
        it is above ``hi`` or below ``lo``. True for a batch without them (the general path),
        or with a NaN among them (a NaN is never beyond a bound, but the numbers do not tell)."""
        stats = run_stats(batch)
        if stats is None:
            return True
        hits = self.name_mask(batch.names, batch.memo)
        highest = stats.v_max[hits].max(initial=-math.inf)
        lowest = stats.v_min[hits].min(initial=math.inf)
        return not (highest <= hi and lowest >= lo)

"""``spread``: imbalance across a group of signals (max minus min of their latest values)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..messages import FlatBatch
from .base import NO_EVENTS, Evaluator, Index, Metrics, Rule


@dataclass(frozen=True, kw_only=True)
class SpreadRule(Rule):
    kind = "spread"

    max_spread: float | None = None

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("max_spread", where)

    def evaluator(self) -> SpreadEvaluator:
        return SpreadEvaluator(self)


class SpreadEvaluator(Evaluator[SpreadRule]):
    """Max minus min over the latest values of every signal the patterns match (e.g. all cell
    voltages), at each moment one of them changes."""

    def __init__(self, rule: SpreadRule) -> None:
        super().__init__(rule)
        self.latest = Index()  # per signal: its latest value

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        sel = self.select(batch)
        if sel is None:
            return None
        cols_of_name = self.per_name(batch.names, self.latest.number)
        order = np.argsort(sel[1], kind="stable")
        col, t, v = cols_of_name[sel[0][order]], sel[1][order], sel[2][order]
        n, width = len(t), len(self.latest.names)
        table = np.full((n + 1, width), np.nan)
        table[0] = self.latest.values
        table[np.arange(1, n + 1), col] = v
        # carry each signal's latest value down the rows (forward fill)
        row = np.where(np.isnan(table), 0, np.arange(n + 1)[:, None])
        np.maximum.accumulate(row, axis=0, out=row)
        table = table[row, np.arange(width)]
        self.latest.values = table[-1].copy()
        table = table[1:]
        # samples stamped at the same moment are simultaneous: judge the state after all of them
        known = np.sum(~np.isnan(table), axis=1) >= 2
        known &= np.concatenate((t[1:] != t[:-1], [True]))
        if not known.any():
            return None
        table, t = table[known], t[known]
        hi = np.where(np.isnan(table), -np.inf, table)
        lo = np.where(np.isnan(table), np.inf, table)
        spread = hi.max(axis=1) - lo.min(axis=1)
        x = spread - self.rule.max_spread
        if not hot and not (x > 0).any():
            return None
        # at each point: how many signals are known, and which are highest and lowest (of equal
        # ones, the first by name: not by the order the batches happened to show them in)
        by_name = np.argsort(np.array(self.latest.names))
        extra = {"signals": np.sum(~np.isnan(table), axis=1), "highest": by_name[hi[:, by_name].argmax(axis=1)],
                 "lowest": by_name[lo[:, by_name].argmin(axis=1)]}
        names = list(self.latest.names)
        return Metrics([self.rule.name], np.zeros(len(t), dtype=np.int64), t, x, spread,
                       {"max_spread": self.rule.max_spread}, extra, {"highest": names, "lowest": names})

"""``stale``: a message (or a single signal) not seen for ``timeout`` seconds of event time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import Evaluator, Index, Metrics, Rule, by_key_then_time


@dataclass(frozen=True, kw_only=True)
class StaleRule(Rule):
    kind = "stale"

    timeout: float | None = None  # seconds
    scope: str = "message"  # "message" (any signal of it) or "signal"

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("timeout", where)
        if self.scope not in ("message", "signal"):
            raise ConfigError(f"{where}: scope must be 'message' or 'signal'")

    def evaluator(self) -> StaleEvaluator:
        return StaleEvaluator(self)


class StaleEvaluator(Evaluator[StaleRule]):
    """A message (or signal) not seen for ``timeout`` seconds of event time, and its return.
    A key is watched from the first time it is seen."""

    def __init__(self, rule: StaleRule) -> None:
        super().__init__(rule)
        self.seen = Index()  # per key: when it was last seen

    def key_number(self, signal: str) -> int:
        return self.seen.number(signal.split(".", 1)[0] if self.rule.scope == "message" else signal)

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool) -> Metrics | None:
        timeout = self.rule.timeout
        assert timeout is not None  # check() requires it
        gap_at = gap_len = return_at = np.empty(0)
        gap_key = np.empty(0, dtype=np.int64)
        sel = self.select(batch)
        if sel is not None:
            key_of_name = self.per_name(batch.names, self.key_number)
            k, t = by_key_then_time(key_of_name[sel[0]], sel[1])
            first = np.concatenate(([True], k[1:] != k[:-1]))
            prev = np.concatenate(([np.nan], t[:-1]))
            prev[first] = self.seen.values[k[first]]
            gaps = t - prev
            inside = gaps > timeout  # silences that ended inside this batch
            gap_key, gap_at, gap_len, return_at = k[inside], prev[inside] + timeout, gaps[inside], t[inside]
            last = np.append(np.flatnonzero(first)[1:], len(k)) - 1
            self.seen.values[k[last]] = t[last]
        last_seen = self.seen.values
        age = now - last_seen
        over = np.flatnonzero(age > timeout)
        if not hot and not len(gap_key) and not len(over):
            return None
        # points: each silence inside the batch (stale from prev + timeout, back at its return),
        # then every key's age at the end of the batch
        known = np.flatnonzero(~np.isnan(last_seen))
        k = np.concatenate((gap_key, gap_key, known))
        t = np.concatenate((gap_at, return_at, np.maximum(np.full(len(known), now), last_seen[known])))
        age_points = np.concatenate((gap_len, np.zeros(len(gap_key)), np.maximum(age[known], 0.0)))
        k, t, age_points = by_key_then_time(k, t, age_points)
        return Metrics(list(self.seen.names), k, t, age_points - timeout, age_points, {"timeout": timeout})

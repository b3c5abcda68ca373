"""``bus``: bus health, the rate of one kind of frame (errors, unknown ids, ...) per second."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import Evaluator, Metrics, Rule

BUS_COUNTERS = ("error", "unknown_id", "decode_error", "remote")


@dataclass(frozen=True, kw_only=True)
class BusRule(Rule):
    kind = "bus"

    signals: tuple[str, ...] = ("bus.*",)  # the key is "bus.<counter>": nothing to choose
    counter: str | None = None  # one of BUS_COUNTERS: a frame counter of the signals message
    max_per_second: float | None = None
    window_seconds: float = 5.0

    def check(self, where: str) -> None:
        super().check(where)
        if self.counter not in BUS_COUNTERS:
            raise ConfigError(f"{where}: 'counter' must be one of {', '.join(BUS_COUNTERS)}")
        self._check_number("max_per_second", where)
        self._check_number("window_seconds", where)

    def evaluator(self) -> BusEvaluator:
        return BusEvaluator(self)


class BusEvaluator(Evaluator[BusRule]):
    """Frames of one kind (error, unknown id, decode error) per second over the last
    ``window_seconds`` of event time, against ``max_per_second``."""

    def __init__(self, rule: BusRule) -> None:
        super().__init__(rule)
        self.recent: deque[tuple[float, int]] = deque()
        self.total = 0

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool) -> Metrics | None:
        count = int(frames.get(self.rule.counter or "", 0))
        if count:
            self.recent.append((now, count))
            self.total += count
        while self.recent and self.recent[0][0] <= now - self.rule.window_seconds:
            self.total -= self.recent.popleft()[1]
        rate = self.total / self.rule.window_seconds
        assert self.rule.max_per_second is not None  # check() requires it
        x = rate - self.rule.max_per_second
        if not hot and x <= 0:
            return None
        detail = {"max_per_second": self.rule.max_per_second, "window_seconds": self.rule.window_seconds}
        return Metrics([f"bus.{self.rule.counter}"], np.zeros(1, dtype=np.int64), np.array([now]), np.array([x]),
                       np.array([rate]), detail)

"""``bus``: bus health, the rate of one kind of frame (errors, unknown ids, ...) per second."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import NO_EVENTS, Evaluator, Metrics, Rule

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
    """Frames of one kind (error, unknown id, decode error, remote) per second over the last
    ``window_seconds`` of event time, against ``max_per_second``, at each such frame and at each
    instant one of them leaves the window: moments of the data, not of its batches, so a
    replay's alerts do not depend on how it was batched. A batch that carries only the count
    (no event times) counts its frames at its own event time."""

    def __init__(self, rule: BusRule) -> None:
        super().__init__(rule)
        self.times = np.empty(0)  # event times still inside some window, sorted
        self.until = -np.inf  # the window-leave instants up to here are done

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        counter = self.rule.counter or ""
        width = self.rule.window_seconds
        new = events.get(counter)
        if new is None:
            new = np.full(int(frames.get(counter, 0)), now)
        if not len(new) and not len(self.times):  # no such frame, none in a window: nothing to look at
            self.until = max(self.until, now)
            return None
        new = np.sort(new)
        times = self.times = np.sort(np.concatenate((self.times, new))) if len(new) else self.times
        leave = times + width
        leave = leave[(leave > self.until) & (leave <= now)]
        self.until = max(self.until, now)
        self.times = times[times > now - width]
        if not hot and not len(new):
            return None
        points = np.sort(np.concatenate((new, leave)))
        rate = (np.searchsorted(times, points, "right") - np.searchsorted(times, points - width, "right")) / width
        assert self.rule.max_per_second is not None  # check() requires it
        x = rate - self.rule.max_per_second
        if not len(points) or (not hot and not (x > 0).any()):
            return None
        detail = {"max_per_second": self.rule.max_per_second, "window_seconds": self.rule.window_seconds}
        return Metrics([f"bus.{counter}"], np.zeros(len(points), dtype=np.int64), points, x, rate, detail)

"""The aggregator: tumbling event-time windows of statistics per signal, computed with numpy.

Signals are selected by name patterns (``include`` / ``exclude``) and fall into window groups:
the first group whose pattern matches, else the default group. Window ``k`` of a group of length
``W`` covers event times ``[k*W, (k+1)*W)``; a sample at time ``t`` belongs to window
``floor(t / W)``.

Each batch is grouped by window with one sort and reduced with ``ufunc.reduceat``: the Python
loop runs over (signal, window) pairs, never over samples. Partial results merge exactly
(counts, sums of squared deviations by Chan's formula), so the statistics do not depend on how
the stream was cut into batches.

A window closes when the stream's event time (the end of the latest batch; on a quiet live bus,
the reader's idle ticks) has passed its end plus ``lateness_seconds``, and at the end of the
stream. A sample for a window that has already closed is late: it is counted and reported in the
group's next aggregates message, never put into another window. At most ``max_open_windows``
windows per group stay open, so memory is bounded whatever the timestamps do.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import messages
from .component import MessageComponent, Services
from .config import AggregatorConfig
from .messages import SignalColumns

DEFAULT_GROUP = "default"


class _Stats:
    """Running statistics of one signal in one window."""

    __slots__ = ("count", "min", "max", "mean", "m2", "first_t", "first", "last_t", "last", "t_min", "t_max")

    def __init__(self) -> None:
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.first_t = math.inf
        self.first = math.nan
        self.last_t = -math.inf
        self.last = math.nan
        self.t_min = math.inf
        self.t_max = math.inf

    def merge(self, n: int, mean: float, m2: float, vmin: float, t_min: float, vmax: float, t_max: float,
              first_t: float, first: float, last_t: float, last: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        if vmin < self.min or (vmin == self.min and t_min < self.t_min):
            self.min, self.t_min = vmin, t_min
        if vmax > self.max or (vmax == self.max and t_max < self.t_max):
            self.max, self.t_max = vmax, t_max
        if first_t < self.first_t:
            self.first_t, self.first = first_t, first
        if last_t >= self.last_t:
            self.last_t, self.last = last_t, last

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "last": self.last,
            "std": math.sqrt(max(self.m2, 0.0) / self.count),
            "first": self.first,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }


def window_reduce(t: np.ndarray, v: np.ndarray, width: float) -> dict[str, np.ndarray]:
    """Per-window statistics of one signal's samples, all with numpy. Returns arrays indexed by
    window (in increasing window order): window, count, mean, m2, min, t_min, max, t_max,
    first_t, first, last_t, last."""
    k = np.floor(t / width).astype(np.int64)
    order = np.lexsort((t, k))  # by window, then by time (stable for equal times)
    k, t, v = k[order], t[order], v[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    ends = np.concatenate((starts[1:], [len(k)]))
    counts = ends - starts
    mean = np.add.reduceat(v, starts) / counts
    dev = v - np.repeat(mean, counts)
    m2 = np.add.reduceat(dev * dev, starts)
    vmin = np.minimum.reduceat(v, starts)
    vmax = np.maximum.reduceat(v, starts)
    # the earliest time at which each window's min (max) occurs
    t_min = np.minimum.reduceat(np.where(v == np.repeat(vmin, counts), t, np.inf), starts)
    t_max = np.minimum.reduceat(np.where(v == np.repeat(vmax, counts), t, np.inf), starts)
    return {
        "window": k[starts], "count": counts, "mean": mean, "m2": m2, "min": vmin, "t_min": t_min,
        "max": vmax, "t_max": t_max, "first_t": t[starts], "first": v[starts], "last_t": t[ends - 1], "last": v[ends - 1],
    }


class WindowAggregator:
    """Windows of one group: pure logic, columns in, closed-window aggregate messages out."""

    def __init__(self, window_seconds: float, vehicle: str, *, group: str = DEFAULT_GROUP,
                 lateness: float = 0.0, max_open_windows: int = 64) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.width = float(window_seconds)
        self.vehicle = vehicle
        self.group = group
        self.lateness = float(lateness)
        self.max_open = max_open_windows
        self.open: dict[int, dict[str, _Stats]] = {}
        self.closed_through: int | None = None  # index of the newest closed window
        self.watermark = -math.inf
        self.seq = 0
        self.stats: Counter[str] = Counter()
        self._late = 0  # late samples not yet reported
        self._late_oldest = math.inf

    def add(self, columns: Mapping[str, SignalColumns], watermark: float | None = None) -> list[dict[str, Any]]:
        """Fold a batch in; return the aggregates of the windows it closes."""
        newest = -math.inf
        for name, column in columns.items():
            if len(column):
                self._fold(name, column)
                newest = max(newest, float(column.t.max()))
        self.watermark = max(self.watermark, newest if watermark is None else watermark)
        return self.advance(self.watermark)

    def advance(self, watermark: float) -> list[dict[str, Any]]:
        """Event time has reached ``watermark``: close what is due."""
        self.watermark = max(self.watermark, watermark)
        out = self._close(lambda k: (k + 1) * self.width + self.lateness <= self.watermark)
        while len(self.open) > self.max_open:  # bounded memory: close the oldest early
            self.stats["forced_closes"] += 1
            oldest = min(self.open)
            out += self._close(lambda k: k <= oldest)
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Close every open window (the source has ended)."""
        out = self._close(lambda k: True)
        if self._late and not out:
            self.stats["late_unreported"] += self._late
        return out

    def _fold(self, name: str, column: SignalColumns) -> None:
        t, v = column.t, column.v
        if self.closed_through is not None:
            late = np.floor(t / self.width).astype(np.int64) <= self.closed_through
            n_late = int(late.sum())
            if n_late:
                self.stats["late_samples"] += n_late
                self._late += n_late
                self._late_oldest = min(self._late_oldest, float(t[late].min()))
                keep = ~late
                t, v = t[keep], v[keep]
                if not len(t):
                    return
        r = window_reduce(t, v, self.width)
        rows = zip(*(r[key].tolist() for key in (
            "window", "count", "mean", "m2", "min", "t_min", "max", "t_max", "first_t", "first", "last_t", "last")))
        for window, *values in rows:
            per_signal = self.open.get(window)
            if per_signal is None:
                per_signal = self.open[window] = {}
            stats = per_signal.get(name)
            if stats is None:
                stats = per_signal[name] = _Stats()
            stats.merge(*values)

    def _close(self, due: Any) -> list[dict[str, Any]]:
        out = []
        for window in sorted(self.open):
            if not due(window):
                break
            signals = self.open.pop(window)
            self.closed_through = window if self.closed_through is None else max(self.closed_through, window)
            self.seq += 1
            self.stats["windows"] += 1
            message = messages.aggregates_message(
                vehicle=self.vehicle,
                seq=self.seq,
                start=window * self.width,
                end=(window + 1) * self.width,
                signals={name: signals[name].as_dict() for name in sorted(signals)},
                group=self.group,
                late_samples=self._late,
                late_oldest=self._late_oldest if self._late else None,
            )
            self._late, self._late_oldest = 0, math.inf
            out.append(message)
        return out


class Aggregation:
    """All window groups of a vehicle: selects signals and routes each to its group."""

    def __init__(self, cfg: AggregatorConfig, vehicle: str) -> None:
        self.cfg = cfg
        kw = {"lateness": cfg.lateness_seconds, "max_open_windows": cfg.max_open_windows}
        self.groups = {g.name: WindowAggregator(g.window_seconds, vehicle, group=g.name, **kw) for g in cfg.groups}
        self.groups[DEFAULT_GROUP] = WindowAggregator(cfg.window_seconds, vehicle, group=DEFAULT_GROUP, **kw)
        self._route: dict[str, str | None] = {}
        self.stats: Counter[str] = Counter()
        self.seq = 0

    def group_of(self, signal: str) -> str | None:
        """The group a signal is aggregated in, or None if it is not selected."""
        if signal not in self._route:
            selected = any(fnmatch.fnmatchcase(signal, p) for p in self.cfg.include) and not any(
                fnmatch.fnmatchcase(signal, p) for p in self.cfg.exclude
            )
            group = None
            if selected:
                group = next((g.name for g in self.cfg.groups if any(fnmatch.fnmatchcase(signal, p) for p in g.signals)),
                             DEFAULT_GROUP)
            self._route[signal] = group
        return self._route[signal]

        self.seq = 0

    def add(self, columns: Mapping[str, SignalColumns], watermark: float) -> list[dict[str, Any]]:
        routed: dict[str, dict[str, SignalColumns]] = {}
        for name, column in columns.items():
            group = self.group_of(name)
            if group is None:
                self.stats["samples_not_selected"] += len(column)
                continue
            routed.setdefault(group, {})[name] = column
        out = []
        for name, aggregator in self.groups.items():
            out += aggregator.add(routed.get(name, {}), watermark)
        return self._sorted(out)

    def flush(self) -> list[dict[str, Any]]:
        return self._sorted([m for a in self.groups.values() for m in a.flush()])

    def _sorted(self, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """In event-time order, numbered across groups: (vehicle, kind, seq) is unique."""
        out.sort(key=lambda m: (m["window"]["end"], m["group"]))
        for message in out:
            self.seq += 1
            message["seq"] = self.seq
        return out

    def totals(self) -> Counter[str]:
        total = Counter(self.stats)
        for aggregator in self.groups.values():
            total.update(aggregator.stats)
        return total


class AggregatorComponent(MessageComponent):
    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        self.aggregation = Aggregation(services.config.aggregator, services.config.vehicle)

    def on_message(self, message: Mapping[str, Any]) -> None:
        if message["kind"] == messages.SIGNALS:
            out = self.aggregation.add(messages.signal_columns(message), float(message["span"]["end"]))
        else:
            out = self.aggregation.flush()
        for aggregate in out:
            self.services.local.publish(self.topic, aggregate)
        self.stats["aggregates"] += len(out)

    def totals(self) -> Counter[str]:
        total = self.aggregation.totals()
        total.update(self.stats)
        return total

"""The aggregator: tumbling event-time windows of statistics per signal, computed with numpy.

Window ``k`` of length ``W`` covers event times ``[k*W, (k+1)*W)``; a sample at time ``t`` belongs
to window ``floor(t / W)``. Each batch is grouped by window with one sort and reduced with
``ufunc.reduceat``: the Python loop runs over (signal, window) pairs, never over samples.
A window closes when the stream's event time (the end of the latest batch) has passed its end,
and at the end of the stream. A sample for a window that has already closed is counted as late,
never put into another window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import messages
from .component import MessageComponent, Services
from .messages import SignalColumns


class _Stats:
    __slots__ = ("count", "min", "max", "sum", "last_t", "last")

    def __init__(self) -> None:
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.sum = 0.0
        self.last_t = -math.inf
        self.last = math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.sum / self.count,
            "last": self.last,
        }


class WindowAggregator:
    """Pure windowing logic: columns in, closed-window aggregate messages out."""

    def __init__(self, window_seconds: float, vehicle: str) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.width = float(window_seconds)
        self.vehicle = vehicle
        self.open: dict[int, dict[str, _Stats]] = {}
        self.closed_through: int | None = None  # index of the newest closed window
        self.watermark = -math.inf
        self.seq = 0
        self.stats: Counter[str] = Counter()

    def add(self, columns: Mapping[str, SignalColumns], watermark: float | None = None) -> list[dict[str, Any]]:
        """Fold a batch in; return the aggregates of the windows it closes."""
        newest = -math.inf
        for name, column in columns.items():
            if len(column):
                self._fold(name, column)
                newest = max(newest, float(column.t.max()))
        self.watermark = max(self.watermark, newest if watermark is None else watermark)
        return self._close(lambda k: (k + 1) * self.width <= self.watermark)

    def flush(self) -> list[dict[str, Any]]:
        """Close every open window (the source has ended)."""
        return self._close(lambda k: True)

    def _fold(self, name: str, column: SignalColumns) -> None:
        t, v = column.t, column.v
        k = np.floor(t / self.width).astype(np.int64)
        if self.closed_through is not None:
            late = k <= self.closed_through
            n_late = int(late.sum())
            if n_late:
                self.stats["late_samples"] += n_late
                keep = ~late
                t, v, k = t[keep], v[keep], k[keep]
                if not len(t):
                    return
        order = np.lexsort((t, k))  # by window, then by time within the window
        k, t, v = k[order], t[order], v[order]
        starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
        ends = np.concatenate((starts[1:], [len(k)]))
        counts = ends - starts
        mins = np.minimum.reduceat(v, starts)
        maxs = np.maximum.reduceat(v, starts)
        sums = np.add.reduceat(v, starts)
        last_t = t[ends - 1]
        last_v = v[ends - 1]
        for i, window in enumerate(k[starts].tolist()):
            stats = self.open.setdefault(window, {}).get(name)
            if stats is None:
                stats = self.open[window][name] = _Stats()
            stats.count += int(counts[i])
            stats.min = min(stats.min, float(mins[i]))
            stats.max = max(stats.max, float(maxs[i]))
            stats.sum += float(sums[i])
            if last_t[i] >= stats.last_t:
                stats.last_t = float(last_t[i])
                stats.last = float(last_v[i])

    def _close(self, due: Any) -> list[dict[str, Any]]:
        out = []
        for window in sorted(self.open):
            if not due(window):
                break
            signals = self.open.pop(window)
            self.closed_through = window if self.closed_through is None else max(self.closed_through, window)
            self.seq += 1
            self.stats["windows"] += 1
            out.append(
                messages.aggregates_message(
                    vehicle=self.vehicle,
                    seq=self.seq,
                    start=window * self.width,
                    end=(window + 1) * self.width,
                    signals={name: signals[name].as_dict() for name in sorted(signals)},
                )
            )
        return out


class AggregatorComponent(MessageComponent):
    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        self.aggregator = WindowAggregator(services.config.aggregator.window_seconds, services.config.vehicle)
        self.stats = self.aggregator.stats

    def on_message(self, message: Mapping[str, Any]) -> None:
        if message["kind"] == messages.SIGNALS:
            out = self.aggregator.add(messages.signal_columns(message), float(message["span"]["end"]))
        else:
            out = self.aggregator.flush()
        for aggregate in out:
            self.services.local.publish(self.topic, aggregate)

"""The anomaly detector: the vehicle's rules, evaluated on each batch of signal columns.

Every rule kind turns the batch into a *metric* series per key (a signal, a message, a group or
a bus counter): event times, a margin ``x`` (positive: the condition is violated; how far) and
the value to report. One state machine per (rule, key) then does what all kinds share:

* **debounce**: raise only once the violation has lasted ``min_duration`` seconds;
* **hysteresis**: once raised, clear only when the margin is back below ``-hysteresis``;
* **clear delay**: clear only once the condition has been gone ``clear_duration`` seconds;
* **flapping**: an alert raised ``flap_raises`` times within ``flap_window_seconds`` clears only
  after ``flap_hold_seconds`` clean, so one misbehaving signal cannot flood the link;
* **updates**: while active, the alert is re-sent with the worst value seen at most every
  ``update_seconds`` (and only when it got worse), and per key at most that often across rules.

An alert is raised once, updated, cleared once; its id is deterministic (vehicle, rule, key, the
event time it was raised) so the cloud can drop duplicates. Alerts are published as soon as the
batch that raises them is processed, never at the end of a window.

The metrics are numpy over whole columns; the state machine loops over runs of constant state
(the rare changes), never over samples.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import messages
from .component import MessageComponent, Services
from .config import DetectorConfig, Rule
from .messages import SignalColumns

RAISED, UPDATE, CLEARED = "raised", "update", "cleared"


@dataclass
class Metric:
    """A rule's view of one key in one batch, sorted by time."""

    key: str
    t: np.ndarray
    x: np.ndarray  # > 0: violated, by this much
    value: np.ndarray  # what the alert reports at each point
    detail: dict[str, Any] = field(default_factory=dict)


def alert_id(vehicle: str, rule: str, key: str, raised_t: float) -> str:
    """Deterministic: the same raise in a re-run or a retry gets the same id."""
    return f"{vehicle}/{rule}/{key}/{raised_t:.6f}"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _sorted(column: SignalColumns) -> tuple[np.ndarray, np.ndarray]:
    if len(column) > 1 and np.any(np.diff(column.t) < 0):
        order = np.argsort(column.t, kind="stable")
        return column.t[order], column.v[order]
    return column.t, column.v


# -- metrics, one class per rule kind ------------------------------------------------------------


class _Evaluator:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._match: dict[str, bool] = {}

    def matching(self, columns: Mapping[str, SignalColumns]) -> dict[str, SignalColumns]:
        out = {}
        for name, column in columns.items():
            hit = self._match.get(name)
            if hit is None:
                hit = self._match[name] = _matches(name, self.rule.signals)
            if hit and len(column):
                out[name] = column
        return out

    def metrics(self, columns: Mapping[str, SignalColumns], frames: Mapping[str, int], now: float) -> list[Metric]:
        raise NotImplementedError


class LimitEvaluator(_Evaluator):
    def metrics(self, columns, frames, now):
        out = []
        lo = -math.inf if self.rule.min is None else self.rule.min
        hi = math.inf if self.rule.max is None else self.rule.max
        for name, column in self.matching(columns).items():
            t, v = _sorted(column)
            out.append(Metric(name, t, np.maximum(v - hi, lo - v), v, {"min": self.rule.min, "max": self.rule.max}))
        return out


class RateEvaluator(_Evaluator):
    """Change per second between consecutive samples (the last one of the previous batch
    included), against ``max_rate``."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.last: dict[str, tuple[float, float]] = {}

    def metrics(self, columns, frames, now):
        out = []
        for name, column in self.matching(columns).items():
            t, v = _sorted(column)
            prev = self.last.get(name)
            self.last[name] = (float(t[-1]), float(v[-1]))
            if prev is not None:
                t, v = np.concatenate(([prev[0]], t)), np.concatenate(([prev[1]], v))
            dt = np.diff(t)
            ok = dt > 0
            if not ok.any():
                continue
            rate = np.diff(v)[ok] / dt[ok]
            out.append(Metric(name, t[1:][ok], np.abs(rate) - self.rule.max_rate, rate, {"max_rate": self.rule.max_rate}))
        return out


class StaleEvaluator(_Evaluator):
    """A message (or signal) not seen for ``timeout`` seconds of event time, and its return.
    A key is watched from the first time it is seen."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.last_seen: dict[str, float] = {}

    def key(self, signal: str) -> str:
        return signal.split(".", 1)[0] if self.rule.scope == "message" else signal

    def metrics(self, columns, frames, now):
        timeout = self.rule.timeout
        times: dict[str, list[np.ndarray]] = {}
        for name, column in self.matching(columns).items():
            times.setdefault(self.key(name), []).append(column.t)
        out = []
        for key in sorted(set(times) | set(self.last_seen)):
            seen = np.unique(np.concatenate(times[key])) if key in times else np.empty(0)
            last = self.last_seen.get(key)
            points_t, points_age = [], []
            if len(seen):
                ext = seen if last is None else np.concatenate(([last], seen))
                gaps = np.diff(ext)
                for i in np.flatnonzero(gaps > timeout).tolist():  # silences inside the batch
                    points_t += [ext[i] + timeout, ext[i + 1]]
                    points_age += [gaps[i], 0.0]
                self.last_seen[key] = last = float(seen[-1])
            if now > last:
                points_t.append(now)
                points_age.append(now - last)
            elif len(seen) and not points_t:
                points_t.append(float(seen[-1]))
                points_age.append(0.0)
            if points_t:
                age = np.asarray(points_age)
                out.append(Metric(key, np.asarray(points_t), age - timeout, age, {"timeout": timeout, "last_seen": last}))
        return out


class SpreadEvaluator(_Evaluator):
    """Max minus min over the latest values of every signal the patterns match (e.g. all cell
    voltages), at each moment one of them changes."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.latest: dict[str, float] = {}

    def metrics(self, columns, frames, now):
        matched = self.matching(columns)
        if not matched:
            return []
        names = sorted(set(self.latest) | set(matched))
        union = np.unique(np.concatenate([c.t for c in matched.values()]))
        table = np.empty((len(union), len(names)))
        for j, name in enumerate(names):
            column = matched.get(name)
            carried = self.latest.get(name, np.nan)
            if column is None:
                table[:, j] = carried
                continue
            t, v = _sorted(column)
            idx = np.searchsorted(t, union, side="right") - 1
            table[:, j] = np.where(idx >= 0, v[np.maximum(idx, 0)], carried)
            self.latest[name] = float(v[-1])
        known = np.sum(~np.isnan(table), axis=1) >= 2
        if not known.any():
            return []
        table, union = table[known], union[known]
        hi, lo = np.nanargmax(table, axis=1), np.nanargmin(table, axis=1)
        rows = np.arange(len(union))
        spread = table[rows, hi] - table[rows, lo]
        worst = int(np.argmax(spread))
        detail = {"max_spread": self.rule.max_spread, "signals": len(names),
                  "highest": names[hi[worst]], "lowest": names[lo[worst]]}
        return [Metric(self.rule.name, union, spread - self.rule.max_spread, spread, detail)]


class ZScoreEvaluator(_Evaluator):
    """Robust z-score of each sample against the median and MAD of the ``baseline`` samples
    before it; silent until ``warmup`` samples have been seen."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.history: dict[str, np.ndarray] = {}

    def metrics(self, columns, frames, now):
        out = []
        size = self.rule.baseline
        for name, column in self.matching(columns).items():
            t, v = _sorted(column)
            history = self.history.get(name, np.empty(0))
            padded = np.concatenate((np.full(size - len(history), np.nan), history, v))
            windows = sliding_window_view(padded, size)[: len(v)]
            count = np.sum(~np.isnan(windows), axis=1)
            ready = count >= self.rule.warmup
            z = np.zeros(len(v))
            if ready.any():
                w = windows[ready]
                median = np.nanmedian(w, axis=1)
                mad = np.nanmedian(np.abs(w - median[:, None]), axis=1)
                scale = np.maximum(1.4826 * mad, self.rule.min_scale)
                dev = v[ready] - median
                with np.errstate(divide="ignore", invalid="ignore"):
                    z[ready] = np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0), np.where(dev == 0, 0.0, np.inf))
            x = np.where(ready, np.abs(z) - self.rule.threshold, -np.inf)
            self.history[name] = padded[~np.isnan(padded)][-size:]
            out.append(Metric(name, t, x, v, {"threshold": self.rule.threshold, "_z": z}))
        return out


class BusEvaluator(_Evaluator):
    """Frames of one kind (error, unknown id, decode error) per second over the last
    ``window_seconds`` of event time, against ``max_per_second``."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.recent: deque[tuple[float, int]] = deque()
        self.total = 0

    def metrics(self, columns, frames, now):
        count = int(frames.get(self.rule.counter or "", 0))
        self.recent.append((now, count))
        self.total += count
        while self.recent and self.recent[0][0] <= now - self.rule.window_seconds:
            self.total -= self.recent.popleft()[1]
        rate = self.total / self.rule.window_seconds
        key = f"bus.{self.rule.counter}"
        detail = {"max_per_second": self.rule.max_per_second, "window_seconds": self.rule.window_seconds}
        return [Metric(key, np.array([now]), np.array([rate - self.rule.max_per_second]), np.array([rate]), detail)]


EVALUATORS: dict[str, type[_Evaluator]] = {
    "limit": LimitEvaluator,
    "rate": RateEvaluator,
    "stale": StaleEvaluator,
    "spread": SpreadEvaluator,
    "zscore": ZScoreEvaluator,
    "bus": BusEvaluator,
}


# -- the state machine every rule shares ---------------------------------------------------------


@dataclass
class _State:
    violated: bool = False  # the hysteresis state after the last point
    active: bool = False
    pending_since: float | None = None  # violated since, not yet raised (debounce)
    clearing_since: float | None = None  # back to normal since, not yet cleared
    alert_id: str = ""
    raised_t: float = 0.0
    worst_x: float = -math.inf
    worst_value: float = math.nan
    worst_t: float = 0.0
    worst_detail: dict[str, Any] = field(default_factory=dict)
    sent_worst_x: float = -math.inf
    last_sent: float = -math.inf
    raises: deque[float] = field(default_factory=deque)
    flapping: bool = False


class Detector:
    """Pure detection logic: columns (and the batch's frame counters) in, alert messages out."""

    def __init__(self, rules: tuple[Rule, ...], vehicle: str, cfg: DetectorConfig | None = None) -> None:
        self.rules = rules
        self.vehicle = vehicle
        self.cfg = cfg or DetectorConfig()
        self.evaluators = [(rule, EVALUATORS[rule.kind](rule)) for rule in rules]
        self.states: dict[tuple[str, str], _State] = {}
        self.last_update: dict[str, float] = {}  # per key, across rules
        self.stats: Counter[str] = Counter()

    @property
    def active(self) -> dict[tuple[str, str], _State]:
        return {k: s for k, s in self.states.items() if s.active}

    def add(self, columns: Mapping[str, SignalColumns], frames: Mapping[str, int] | None = None,
            now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate a batch. ``now`` is its event time (the end of its span)."""
        if now is None:
            now = max((float(c.t.max()) for c in columns.values() if len(c)), default=0.0)
        out: list[dict[str, Any]] = []
        for rule, evaluator in self.evaluators:
            for metric in evaluator.metrics(columns, frames or {}, now):
                if len(metric.t):
                    out += self._step(rule, metric, now)
        out.sort(key=lambda m: m["t"])
        return out

    def _step(self, rule: Rule, m: Metric, now: float) -> list[dict[str, Any]]:
        state = self.states.setdefault((rule.name, m.key), _State())
        out: list[dict[str, Any]] = []
        violated = m.x > 0
        normal = m.x <= -rule.hysteresis
        # hysteresis: between the two bands the state stays what it was
        marker = np.where(violated, 1, np.where(normal, 0, -1))
        last = np.maximum.accumulate(np.where(marker >= 0, np.arange(len(marker)), -1))
        h = np.where(last >= 0, marker[np.maximum(last, 0)] == 1, state.violated)
        bounds = [0, *(np.flatnonzero(h[1:] != h[:-1]) + 1).tolist(), len(h)]
        for a, b in zip(bounds, bounds[1:]):
            t = m.t[a:b]
            if h[a]:
                state.clearing_since = None
                if not state.active:
                    if state.pending_since is None:
                        state.pending_since = float(t[0])
                    i = int(np.searchsorted(t, state.pending_since + rule.min_duration, side="left"))
                    if i >= len(t):
                        continue
                    self._raise(rule, m, state, a + i)
                    out.append(self._message(rule, m, state, RAISED, a + i))
                    a += i
                self._track_worst(m, state, a, b)
            else:
                state.pending_since = None
                if not state.active:
                    continue
                if state.clearing_since is None:
                    state.clearing_since = float(t[0])
                hold = rule.clear_duration
                if state.flapping:
                    hold = max(hold, self.cfg.flap_hold_seconds)
                i = int(np.searchsorted(t, state.clearing_since + hold, side="left"))
                if i < len(t):
                    out.append(self._message(rule, m, state, CLEARED, a + i))
                    state.active = False
                    state.clearing_since = None
                    self.stats["alerts_cleared"] += 1
        state.violated = bool(h[-1])
        if state.active and state.worst_x > state.sent_worst_x:
            due = state.last_sent + self.cfg.update_seconds
            if now >= due and now >= self.last_update.get(m.key, -math.inf) + self.cfg.update_seconds:
                out.append(self._message(rule, m, state, UPDATE, len(m.t) - 1))
                self.last_update[m.key] = now
            else:
                self.stats["updates_held"] += 1
        return out

    def _raise(self, rule: Rule, m: Metric, state: _State, i: int) -> None:
        t = float(m.t[i])
        state.active = True
        state.pending_since = None
        state.alert_id = alert_id(self.vehicle, rule.name, m.key, t)
        state.raised_t = t
        state.worst_x = -math.inf
        self._track_worst(m, state, i, i + 1)
        state.sent_worst_x = state.worst_x  # the raise itself reports it
        while state.raises and state.raises[0] < t - self.cfg.flap_window_seconds:
            state.raises.popleft()
        state.raises.append(t)
        state.flapping = len(state.raises) >= self.cfg.flap_raises
        self.stats["alerts_raised"] += 1

    @staticmethod
    def _track_worst(m: Metric, state: _State, a: int, b: int) -> None:
        if b <= a:
            return
        i = a + int(np.argmax(m.x[a:b]))
        if m.x[i] > state.worst_x:
            state.worst_x = float(m.x[i])
            state.worst_value = float(m.value[i])
            state.worst_t = float(m.t[i])
            state.worst_detail = _point_detail(m, i)

    def _message(self, rule: Rule, m: Metric, state: _State, kind: str, i: int) -> dict[str, Any]:
        t = float(m.t[i]) if kind != UPDATE else float(m.t[-1])
        if kind == UPDATE:
            state.sent_worst_x = state.worst_x
        state.last_sent = t
        self.stats[f"alert_{kind}"] += 1
        detail = {key: value for key, value in m.detail.items() if not key.startswith("_")}
        detail.update(_point_detail(m, i))
        detail.update({
            "raised_t": state.raised_t,
            "worst": None if math.isnan(state.worst_value) else state.worst_value,
            "worst_t": state.worst_t if state.worst_x > -math.inf else None,
            "flapping": state.flapping,
        })
        return messages.alert_message(
            vehicle=self.vehicle,
            alert_id=state.alert_id,
            state=kind,
            rule=rule.name,
            rule_kind=rule.kind,
            signal=m.key,
            severity=rule.severity,
            t=t,
            value=_finite(float(m.value[i])),
            detail=detail,
        )


def _point_detail(m: Metric, i: int) -> dict[str, Any]:
    z = m.detail.get("_z")
    return {"z": _finite(float(z[i]))} if z is not None else {}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# Kept for the first cut's callers.
LimitDetector = Detector


class AnomalyDetectorComponent(MessageComponent):
    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        cfg = services.config
        self.detector = Detector(cfg.rules, cfg.vehicle, cfg.detector)

    def on_message(self, message: Mapping[str, Any]) -> None:
        if message["kind"] != messages.SIGNALS:
            return  # alerts still active at the end of a replay stay active: nothing cleared them
        alerts = self.detector.add(messages.signal_columns(message), message.get("frames", {}), float(message["span"]["end"]))
        for alert in alerts:
            self.services.local.publish(self.topic, alert)

    def totals(self) -> Counter[str]:
        total = Counter(self.detector.stats)
        total.update(self.stats)
        return total

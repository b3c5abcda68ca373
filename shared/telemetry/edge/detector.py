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
from .config import DetectorConfig, Rule
from .messages import FlatBatch, SignalColumns

RAISED, UPDATE, CLEARED = "raised", "update", "cleared"


@dataclass
class Metric:
    """A rule's view of one key in one batch, sorted by time."""

    key: str
    t: np.ndarray
    x: np.ndarray  # > 0: violated, by this much
    value: np.ndarray  # what the alert reports at each point
    detail: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-point values for the alert's detail


@dataclass
class Metrics:
    """A rule's metric for every key it looked at in a batch: points sorted by (key, time)."""

    keys: list[str]
    k: np.ndarray  # key number per point
    t: np.ndarray
    x: np.ndarray
    value: np.ndarray
    detail: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def violated_keys(self) -> set[int]:
        return set(np.unique(self.k[self.x > 0]).tolist())

    def present_keys(self) -> set[int]:
        return set(np.unique(self.k).tolist())

    def metric(self, key: int) -> Metric:
        a, b = np.searchsorted(self.k, [key, key + 1])
        return Metric(self.keys[key], self.t[a:b], self.x[a:b], self.value[a:b], self.detail,
                      {name: arr[a:b] for name, arr in self.extra.items()})


def alert_id(vehicle: str, rule: str, key: str, raised_t: float) -> str:
    """Deterministic: the same raise in a re-run or a retry gets the same id."""
    return f"{vehicle}/{rule}/{key}/{raised_t:.6f}"


def _by_key_then_time(k: np.ndarray, t: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((t, k))
    return (k[order], t[order], *(m[order] for m in more))


# -- metrics, one class per rule kind ------------------------------------------------------------


class _Evaluator:
    """Turns a batch into the rule's Metrics, or None when there is nothing for the state machine
    to look at (no violation, and no key of this rule in a non-idle state)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._match: dict[str, bool] = {}
        self._masks: dict[tuple[str, ...], np.ndarray] = {}
        self._numbers: dict[tuple[str, ...], np.ndarray] = {}

    def name_mask(self, names: tuple[str, ...]) -> np.ndarray:
        """Which of a batch's signal names the rule's patterns match. Batches repeat the same
        name tables, so the answer is kept per table (a few of them at most)."""
        mask = self._masks.get(names)
        if mask is None:
            match = self._match
            mask = np.array([match[n] if n in match else match.setdefault(n, _matches(n, self.rule.signals))
                             for n in names], dtype=bool)
            if len(self._masks) >= 256:
                self._masks.clear()
            self._masks[names] = mask
        return mask

    def per_name(self, names: tuple[str, ...], number: Any) -> np.ndarray:
        """``number(name)`` for each matching name of a batch's table (-1 for the others), kept
        per table like ``name_mask``."""
        out = self._numbers.get(names)
        if out is None:
            mask = self.name_mask(names)
            out = np.array([number(n) if hit else -1 for n, hit in zip(names, mask.tolist())], dtype=np.int64)
            if len(self._numbers) >= 256:
                self._numbers.clear()
            self._numbers[names] = out
        return out

    def select(self, batch: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The samples of matching signals: (name number, time, value)."""
        hits = self.name_mask(batch.names)
        if not hits.any():
            return None
        mask = hits[batch.ids]
        return batch.ids[mask], batch.t[mask], batch.v[mask]

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool) -> Metrics | None:
        raise NotImplementedError


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class _Index:
    """Names numbered in the order first seen, with one float per name (NaN until set)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._numbers: dict[str, int] = {}
        self.values = np.empty(0)

    def number(self, name: str) -> int:
        n = self._numbers.get(name)
        if n is None:
            n = self._numbers[name] = len(self.names)
            self.names.append(name)
            self.values = np.append(self.values, np.nan)
        return n


class LimitEvaluator(_Evaluator):
    def metrics(self, batch, frames, now, hot):
        sel = self.select(batch)
        if sel is None:
            return None
        ids, t, v = sel
        lo = -math.inf if self.rule.min is None else self.rule.min
        hi = math.inf if self.rule.max is None else self.rule.max
        x = np.maximum(v - hi, lo - v)
        if not hot and not (x > 0).any():
            return None
        ids, t, x, v = _by_key_then_time(ids, t, x, v)
        return Metrics(list(batch.names), ids, t, x, v, {"min": self.rule.min, "max": self.rule.max})


class RateEvaluator(_Evaluator):
    """Change per second between consecutive samples (the last one of the previous batch
    included), against ``max_rate``."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.last: dict[str, tuple[float, float]] = {}

    def metrics(self, batch, frames, now, hot):
        sel = self.select(batch)
        if sel is None:
            return None
        ids, t, v = _by_key_then_time(*sel)
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


class StaleEvaluator(_Evaluator):
    """A message (or signal) not seen for ``timeout`` seconds of event time, and its return.
    A key is watched from the first time it is seen."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.seen = _Index()  # per key: when it was last seen

    def key_number(self, signal: str) -> int:
        return self.seen.number(signal.split(".", 1)[0] if self.rule.scope == "message" else signal)

    def metrics(self, batch, frames, now, hot):
        timeout = self.rule.timeout
        gap_at = gap_len = return_at = np.empty(0)
        gap_key = np.empty(0, dtype=np.int64)
        sel = self.select(batch)
        if sel is not None:
            key_of_name = self.per_name(batch.names, self.key_number)
            k, t = _by_key_then_time(key_of_name[sel[0]], sel[1])
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
        k, t, age_points = _by_key_then_time(k, t, age_points)
        return Metrics(list(self.seen.names), k, t, age_points - timeout, age_points, {"timeout": timeout})


class SpreadEvaluator(_Evaluator):
    """Max minus min over the latest values of every signal the patterns match (e.g. all cell
    voltages), at each moment one of them changes."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.latest = _Index()  # per signal: its latest value

    def metrics(self, batch, frames, now, hot):
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
        worst = int(np.argmax(spread))
        detail = {"max_spread": self.rule.max_spread, "signals": width,
                  "highest": self.latest.names[int(hi[worst].argmax())], "lowest": self.latest.names[int(lo[worst].argmin())]}
        return Metrics([self.rule.name], np.zeros(len(t), dtype=np.int64), t, x, spread, detail)


class ZScoreEvaluator(_Evaluator):
    """Robust z-score of each sample against the median and MAD of the ``baseline`` samples
    before it; silent until ``warmup`` samples have been seen."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.history: dict[str, np.ndarray] = {}

    def metrics(self, batch, frames, now, hot):
        sel = self.select(batch)
        if sel is None:
            return None
        ids, t, v = _by_key_then_time(*sel)
        size = self.rule.baseline
        z = np.zeros(len(v))
        x = np.full(len(v), -np.inf)
        bounds = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1], [True])))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            name = batch.names[ids[a]]
            history = self.history.get(name, np.empty(0))
            padded = np.concatenate((np.full(size - len(history), np.nan), history, v[a:b]))
            windows = sliding_window_view(padded, size)[: b - a]
            ready = np.sum(~np.isnan(windows), axis=1) >= self.rule.warmup
            if ready.any():
                w = windows[ready]
                # a full baseline has no gaps: the plain median is much faster than nanmedian
                median_of = np.median if len(history) >= size else np.nanmedian
                median = median_of(w, axis=1)
                mad = median_of(np.abs(w - median[:, None]), axis=1)
                scale = np.maximum(1.4826 * mad, self.rule.min_scale)
                dev = v[a:b][ready] - median
                with np.errstate(divide="ignore", invalid="ignore"):
                    zz = np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0), np.where(dev == 0, 0.0, np.inf))
                z[a:b][ready] = zz
                x[a:b][ready] = np.abs(zz) - self.rule.threshold
            self.history[name] = padded[~np.isnan(padded)][-size:]
        if not hot and not (x > 0).any():
            return None
        return Metrics(list(batch.names), ids, t, x, v, {"threshold": self.rule.threshold}, {"z": z})


class BusEvaluator(_Evaluator):
    """Frames of one kind (error, unknown id, decode error) per second over the last
    ``window_seconds`` of event time, against ``max_per_second``."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.recent: deque[tuple[float, int]] = deque()
        self.total = 0

    def metrics(self, batch, frames, now, hot):
        count = int(frames.get(self.rule.counter or "", 0))
        if count:
            self.recent.append((now, count))
            self.total += count
        while self.recent and self.recent[0][0] <= now - self.rule.window_seconds:
            self.total -= self.recent.popleft()[1]
        rate = self.total / self.rule.window_seconds
        x = rate - self.rule.max_per_second
        if not hot and x <= 0:
            return None
        detail = {"max_per_second": self.rule.max_per_second, "window_seconds": self.rule.window_seconds}
        return Metrics([f"bus.{self.rule.counter}"], np.zeros(1, dtype=np.int64), np.array([now]), np.array([x]),
                       np.array([rate]), detail)


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
        self.hot: dict[str, set[str]] = {rule.name: set() for rule in rules}  # keys not idle, per rule
        self.last_update: dict[str, float] = {}  # per key, across rules
        self.stats: Counter[str] = Counter()

    @property
    def active(self) -> dict[tuple[str, str], _State]:
        return {k: s for k, s in self.states.items() if s.active}

    def process(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A (checked) signals message in, the alerts it raises, updates or clears out. At the end
        of a stream nothing changes: alerts still active stay active, nothing cleared them."""
        if message["kind"] != messages.SIGNALS:
            return []
        return self.add(messages.flat_signals(message), message.get("frames", {}), float(message["span"]["end"]))

    def add(self, columns: Mapping[str, SignalColumns] | FlatBatch, frames: Mapping[str, int] | None = None,
            now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate a batch. ``now`` is its event time (the end of its span)."""
        batch = columns if isinstance(columns, FlatBatch) else FlatBatch.from_columns(columns)
        if now is None:
            now = float(batch.t.max()) if len(batch) else 0.0
        out: list[dict[str, Any]] = []
        for rule, evaluator in self.evaluators:
            hot = self.hot[rule.name]
            metrics = evaluator.metrics(batch, frames or {}, now, bool(hot))
            if metrics is None:
                continue
            present = metrics.present_keys()
            keys = metrics.violated_keys() | {i for i in present if metrics.keys[i] in hot}
            for key in sorted(keys):
                m = metrics.metric(key)
                out += self._step(rule, m, now)
                state = self.states[(rule.name, m.key)]
                if state.active or state.violated or state.pending_since is not None or state.clearing_since is not None:
                    hot.add(m.key)
                else:
                    hot.discard(m.key)
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
        detail = dict(m.detail)
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
    return {name: _finite(float(values[i])) for name, values in m.extra.items()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

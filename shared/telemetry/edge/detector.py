"""The anomaly detector: the vehicle's rules, evaluated on each batch of signal columns.

Each rule's evaluator (see ``telemetry.edge.rules``, one module per kind) turns the batch into a
*metric* series per key (a signal, a message, a group or a bus counter): event times, a margin
``x`` (positive: the condition is violated; how far) and the value to report. One state machine
per (rule, key) then does what all kinds share:

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

The state machine loops over runs of constant state (the rare changes), never over samples.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DetectorConfig
from .messages import Alert, EndOfStream, FlatBatch, Signals
from .rules import Metric, Rule

RAISED, UPDATE, CLEARED = "raised", "update", "cleared"


def alert_id(vehicle: str, rule: str, key: str, raised_t: float) -> str:
    """Deterministic: the same raise in a re-run or a retry gets the same id."""
    return f"{vehicle}/{rule}/{key}/{raised_t:.6f}"


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
        self.evaluators = [(rule, rule.evaluator()) for rule in rules]
        self.states: dict[tuple[str, str], _State] = {}
        self.hot: dict[str, set[str]] = {rule.name: set() for rule in rules}  # keys not idle, per rule
        self.last_update: dict[str, float] = {}  # per key, across rules
        self.stats: Counter[str] = Counter()

    @property
    def active(self) -> dict[tuple[str, str], _State]:
        return {k: s for k, s in self.states.items() if s.active}

    def process(self, message: Signals | EndOfStream) -> list[Alert]:
        """A signals message in, the alerts it raises, updates or clears out. At the end of a
        stream nothing changes: alerts still active stay active, nothing cleared them."""
        if not isinstance(message, Signals):
            return []
        return self.add(message.batch, message.frames, message.end)

    def add(self, batch: FlatBatch, frames: Mapping[str, int] | None = None,
            now: float | None = None) -> list[Alert]:
        """Evaluate a batch. ``now`` is its event time (the end of its span)."""
        if now is None:
            now = float(batch.t.max()) if len(batch) else 0.0
        out: list[Alert] = []
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
        out.sort(key=lambda m: m.t)
        return out

    def _step(self, rule: Rule, m: Metric, now: float) -> list[Alert]:
        state = self.states.setdefault((rule.name, m.key), _State())
        out: list[Alert] = []
        violated = m.x > 0
        normal = m.x <= -rule.hysteresis
        # hysteresis: between the two bands the state stays what it was
        marker = np.where(violated, 1, np.where(normal, 0, -1))
        last = np.maximum.accumulate(np.where(marker >= 0, np.arange(len(marker)), -1))
        h = np.where(last >= 0, marker[np.maximum(last, 0)] == 1, state.violated)
        bounds = [0, *(np.flatnonzero(h[1:] != h[:-1]) + 1).tolist(), len(h)]
        for a, b in itertools.pairwise(bounds):
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

    def _message(self, rule: Rule, m: Metric, state: _State, kind: str, i: int) -> Alert:
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
        return Alert(
            vehicle=self.vehicle,
            id=state.alert_id,
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

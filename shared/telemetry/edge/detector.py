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
* **updates**: while active, the alert is re-sent at the first point at least
  ``update_seconds`` of event time after the last message of the alert at which its worst value
  is worse than the one last sent.

An alert is raised once, updated, cleared once; its id is deterministic (vehicle, rule, key, the
event time it was raised) so the cloud can drop duplicates. Alerts are published as soon as the
batch that raises them is processed, never at the end of a window.

The state machine loops over runs of constant state (the rare changes), never over samples
(but over the few points, up to ``_FEW``, of a short violated run of an active alert).
Every decision is taken at a point's event time, never at a batch's end, so the alerts of a
replay do not depend on how its frames were batched (tested).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DetectorConfig
from .messages import Alert, EndOfStream, FlatBatch, Signals, alert_id
from .rules import Metric, Rule

LOG = logging.getLogger(__name__)

RAISED, UPDATE, CLEARED = "raised", "update", "cleared"
_FEW = 16  # an active alert's violated points up to this many are followed one by one


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
        self.stats: Counter[str] = Counter()

    def retune(self, rules: tuple[Rule, ...], cfg: DetectorConfig) -> None:
        """New rules and settings while running. A rule that is unchanged keeps its evaluator (and
        what it has learnt: a z-score's history); a changed or new one gets a new evaluator. The
        alert state of every rule name that stays is kept: an active alert stays active and is
        updated or cleared under the new threshold. A removed rule's active alerts are left as
        they are (nothing clears them) and logged."""
        evaluators = {rule.name: (rule, ev) for rule, ev in self.evaluators}
        removed = set(evaluators) - {r.name for r in rules}
        for (name, key), state in self.states.items():
            if name in removed and state.active:
                LOG.warning("rule %r was removed with its alert on %s still active (it will not be cleared)", name, key)
        for rule in rules:  # first the keys a new rule needs, then the evaluators that use them
            self.hot.setdefault(rule.name, set())
        self.cfg = cfg
        self.evaluators = [evaluators[r.name] if evaluators.get(r.name, (None,))[0] == r else (r, r.evaluator())
                           for r in rules]
        self.rules = rules

    @property
    def active(self) -> dict[tuple[str, str], _State]:
        return {k: s for k, s in self.states.items() if s.active}

    def process(self, message: Signals | EndOfStream) -> list[Alert]:
        """A signals message in, the alerts it raises, updates or clears out. At the end of a
        stream nothing changes: alerts still active stay active, nothing cleared them."""
        if not isinstance(message, Signals):
            return []
        return self.add(message.batch, message.frames, message.end, message.events)

    def add(self, batch: FlatBatch, frames: Mapping[str, int] | None = None,
            now: float | None = None, events: Mapping[str, np.ndarray] | None = None) -> list[Alert]:
        """Evaluate a batch. ``now`` is its event time (the end of its span); ``events``: the
        event times of the frames each counter counted (bus rules)."""
        if now is None:
            now = float(batch.t.max()) if len(batch) else 0.0
        out: list[Alert] = []
        for rule, evaluator in self.evaluators:
            hot = self.hot[rule.name]
            metrics = evaluator.metrics(batch, frames or {}, now, bool(hot), events or {})
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
        lowest, highest = float(m.x.min()), float(m.x.max())  # NaN if one is: then neither test holds
        if highest <= -rule.hysteresis or lowest > 0:  # one band throughout (the usual batch)
            h = np.full(len(m.x), lowest > 0)
            bounds = [0, len(h)]
        elif rule.hysteresis == 0 and lowest == lowest and highest == highest:
            # no band between the two and no NaN (min and max would be): the state is the point's
            h = m.x > 0
            bounds = [0, *(np.flatnonzero(h[1:] != h[:-1]) + 1).tolist(), len(h)]
        else:
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
                    a += i + 1
                self._while_active(rule, m, state, a, b, True, out)
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
                self._while_active(rule, m, state, a, a + i, False, out)
                if i < len(t):
                    out.append(self._message(rule, m, state, CLEARED, a + i))
                    state.active = False
                    state.clearing_since = None
                    self.stats["alerts_cleared"] += 1
        state.violated = bool(h[-1])
        return out

    def _while_active(self, rule: Rule, m: Metric, state: _State, lo: int, hi: int, violated: bool,
                      out: list[Alert]) -> None:
        """Points ``lo:hi`` of an active alert: track its worst (where violated), and send an
        update at each point due (``update_seconds`` after its last message) where the worst so
        far is worse than the one last sent."""
        every = self.cfg.update_seconds
        if violated and hi - lo <= _FEW:
            xs = m.x[lo:hi].tolist()
            if not any(x != x for x in xs):  # no NaN (a NaN stops the worst's tracking: the long way)
                # a few points (a silence, a spike): the same, point by point, without numpy
                for i, (t, x) in enumerate(zip(m.t[lo:hi].tolist(), xs), lo):
                    if x > state.worst_x:
                        self._track_worst(m, state, i, i + 1)
                    if t >= state.last_sent + every and state.worst_x > state.sent_worst_x:
                        out.append(self._message(rule, m, state, UPDATE, i))
                return
        while lo < hi:
            # nothing can be due: the points end before the next update may go (times are sorted;
            # a NaN time fails this test and takes the long way), or the worst cannot grow
            if m.t[hi - 1] < state.last_sent + every or (not violated and not state.worst_x > state.sent_worst_x):
                break
            worst = np.full(hi - lo, state.worst_x)
            if violated:
                np.maximum(worst, np.maximum.accumulate(m.x[lo:hi]), out=worst)
            due = np.flatnonzero((m.t[lo:hi] >= state.last_sent + every) & (worst > state.sent_worst_x))
            if not len(due):
                break
            i = lo + int(due[0])
            if violated:
                self._track_worst(m, state, lo, i + 1)
            out.append(self._message(rule, m, state, UPDATE, i))
            lo = i + 1
        if violated:
            self._track_worst(m, state, lo, hi)

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
            state.worst_detail = m.point_detail(i)

    def _message(self, rule: Rule, m: Metric, state: _State, kind: str, i: int) -> Alert:
        t = float(m.t[i])
        if kind == UPDATE:
            state.sent_worst_x = state.worst_x
        state.last_sent = t
        self.stats[f"alert_{kind}"] += 1
        detail = dict(m.detail)
        detail.update(m.point_detail(i))
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


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

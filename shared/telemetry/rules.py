"""The anomaly detector: rules from the vehicle configuration, evaluated on signal columns.

First rule kind, ``limit``: a signal below ``min`` or above ``max``. One state machine per
(rule, signal): an alert is raised on the first sample outside the limits and cleared on the
first sample back inside, each published the moment the batch that holds it arrives. The
violation test and the search for state changes are numpy operations over the whole column; the
Python loop runs only over the (rare) state changes.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import messages
from .component import MessageComponent, Services
from .config import LimitRule
from .messages import SignalColumns


@dataclass
class _Active:
    alert_id: str
    raised_t: float
    worst: float
    worst_excess: float


def alert_id(vehicle: str, rule: str, signal: str, raised_t: float) -> str:
    """Deterministic: the same raise in a re-run or a retry gets the same id."""
    return f"{vehicle}/{rule}/{signal}/{raised_t:.6f}"


class LimitDetector:
    """Pure detection logic: columns in, alert messages out."""

    def __init__(self, rules: tuple[LimitRule, ...], vehicle: str) -> None:
        self.rules = rules
        self.vehicle = vehicle
        self._matches: dict[str, list[LimitRule]] = {}
        self.active: dict[tuple[str, str], _Active] = {}
        self.stats: Counter[str] = Counter()

    def rules_for(self, signal: str) -> list[LimitRule]:
        rules = self._matches.get(signal)
        if rules is None:
            rules = self._matches[signal] = [r for r in self.rules if fnmatch.fnmatchcase(signal, r.signals)]
        return rules

    def add(self, columns: Mapping[str, SignalColumns]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, column in columns.items():
            if not len(column):
                continue
            rules = self.rules_for(name)
            if not rules:
                continue
            order = np.argsort(column.t, kind="stable")
            t, v = column.t[order], column.v[order]
            for rule in rules:
                out.extend(self._evaluate(rule, name, t, v))
        return out

    def _evaluate(self, rule: LimitRule, signal: str, t: np.ndarray, v: np.ndarray) -> list[dict[str, Any]]:
        excess = np.full(v.shape, -np.inf)
        if rule.max is not None:
            excess = np.maximum(excess, v - rule.max)
        if rule.min is not None:
            excess = np.maximum(excess, rule.min - v)
        bad = excess > 0
        key = (rule.name, signal)
        state = self.active.get(key)
        before = np.concatenate(([state is not None], bad[:-1]))
        changes = np.flatnonzero(bad != before).tolist()
        out = []
        segment_start = 0
        for i in changes:
            if bad[i]:
                state = _Active(alert_id(self.vehicle, rule.name, signal, float(t[i])), float(t[i]), float(v[i]), float(excess[i]))
                self.active[key] = state
                out.append(self._message(rule, signal, state, "raised", float(t[i]), float(v[i])))
            else:
                assert state is not None
                self._track_worst(state, excess[segment_start:i], v[segment_start:i])
                del self.active[key]
                out.append(self._message(rule, signal, state, "cleared", float(t[i]), float(v[i])))
                state = None
            segment_start = i
        if state is not None:
            self._track_worst(state, excess[segment_start:], v[segment_start:])
        return out

    @staticmethod
    def _track_worst(state: _Active, excess: np.ndarray, v: np.ndarray) -> None:
        if len(excess):
            i = int(np.argmax(excess))
            if excess[i] > state.worst_excess:
                state.worst_excess = float(excess[i])
                state.worst = float(v[i])

    def _message(self, rule: LimitRule, signal: str, state: _Active, kind: str, t: float, value: float) -> dict[str, Any]:
        self.stats[f"alerts_{kind}"] += 1
        return messages.alert_message(
            vehicle=self.vehicle,
            alert_id=state.alert_id,
            state=kind,
            rule=rule.name,
            rule_kind=rule.kind,
            signal=signal,
            severity=rule.severity,
            t=t,
            value=value,
            detail={"min": rule.min, "max": rule.max, "raised_t": state.raised_t, "worst": state.worst},
        )


class AnomalyDetectorComponent(MessageComponent):
    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        self.detector = LimitDetector(services.config.rules, services.config.vehicle)
        self.stats = self.detector.stats

    def on_message(self, message: Mapping[str, Any]) -> None:
        if message["kind"] != messages.SIGNALS:
            return  # alerts still active at the end of a replay stay active: nothing cleared them
        for alert in self.detector.add(messages.signal_columns(message)):
            self.services.local.publish(self.topic, alert)

"""What every rule kind shares: the common keys and their checks, and the evaluator machinery.

A rule is a frozen dataclass built from one ``[[rules]]`` table: its fields are exactly the keys
the table may hold, so the loader derives the allowed keys from the class. Each kind adds its own
keys, extends ``check()`` for them, and says which evaluator watches its signals.

An evaluator is the stateful half of a rule: it turns each batch into a *metric* series per key
(a signal, a message, a group or a bus counter): event times, a margin ``x`` (positive: the
condition is violated; how far) and the value to report. The detector's state machine does the
rest, the same for every kind. Metrics are numpy over whole columns, never loops over samples.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from ..errors import ConfigError
from ..messages import SEVERITIES, FlatBatch

NO_EVENTS: Mapping[str, np.ndarray] = {}
# A batch of at least this many samples is selected from by its runs (slices, a few calls
# whatever its size); a smaller one by a mask (fewer numpy calls: a live batch at the car's rate)
_RUNS_FROM = 8192
# A rule that works on a table of (samples x signals) or (samples x baseline) builds it this many
# cells at a time (2 MB of floats): its memory is linear in the batch, with a small constant.
CELLS_AT_ONCE = 1 << 18


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One detector rule: the keys every kind takes (see docs/CONFIG.md)."""

    kind: ClassVar[str]

    name: str
    signals: tuple[str, ...] = ()  # fnmatch patterns over "<Message>.<Signal>"
    severity: str = "warning"
    min_duration: float = 0.0  # debounce: the condition must hold this long before raising
    clear_duration: float = 0.0  # the condition must be gone this long before clearing
    hysteresis: float = 0.0  # clear only once back inside by this margin (rule's units)

    def check(self, where: str) -> None:
        """Refuse an inconsistent rule, naming ``where`` it came from. Kinds extend this for
        their own keys, after the common ones."""
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"{where}: needs a 'name' (without '/')")
        if not self.signals:
            raise ConfigError(f"{where}: needs 'signals' (a pattern or a list of patterns)")
        if not isinstance(self.signals, tuple) or not all(isinstance(p, str) and p for p in self.signals):
            raise ConfigError(f"{where} signals: must be a pattern or a list of patterns")
        if self.severity not in SEVERITIES:
            raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        for key in ("min_duration", "clear_duration", "hysteresis"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}: '{key}' must be zero or more")

    def evaluator(self) -> Evaluator[Rule]:
        """A new evaluator for this rule: the state it keeps across batches is its own."""
        raise NotImplementedError

    def _check_number(self, key: str, where: str, *, positive: bool = True) -> None:
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"{where}: a {self.kind} rule needs '{key}'")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (positive and value <= 0):
            raise ConfigError(f"{where}: '{key}' must be a {'positive ' if positive else ''}number, not {value!r}")


@dataclass
class Metric:
    """A rule's view of one key in one batch, sorted by time."""

    key: str
    t: np.ndarray
    x: np.ndarray  # > 0: violated, by this much
    value: np.ndarray  # what the alert reports at each point
    detail: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-point values for the alert's detail
    labels: dict[str, list[str]] = field(default_factory=dict)  # an extra that numbers these names

    def point_detail(self, i: int) -> dict[str, Any]:
        """The alert's detail at point ``i``: each extra's value there (a name, for a labelled
        one; a whole number, for an integer one; None for what is not finite)."""
        out: dict[str, Any] = {}
        for name, values in self.extra.items():
            if name in self.labels:
                out[name] = self.labels[name][int(values[i])]
            elif values.dtype.kind in "iu":
                out[name] = int(values[i])
            else:
                value = float(values[i])
                out[name] = value if math.isfinite(value) else None
        return out


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
    labels: dict[str, list[str]] = field(default_factory=dict)

    def violated_keys(self) -> set[int]:
        return _distinct(self.k[self.x > 0])

    def present_keys(self) -> set[int]:
        return _distinct(self.k)

    def metric(self, key: int) -> Metric:
        a, b = np.searchsorted(self.k, [key, key + 1])
        return Metric(self.keys[key], self.t[a:b], self.x[a:b], self.value[a:b], self.detail,
                      {name: arr[a:b] for name, arr in self.extra.items()}, self.labels)


def _distinct(k: np.ndarray) -> set[int]:
    """The keys in ``k``: where it changes from one point to the next (its points come key by key)."""
    if not len(k):
        return set()
    return set(k[np.concatenate(([True], k[1:] != k[:-1]))].tolist())


R_co = TypeVar("R_co", bound=Rule, covariant=True)
T = TypeVar("T")


def per_table(cache: dict[tuple[str, ...], T], names: tuple[str, ...], make: Callable[[], T]) -> T:
    """What ``make`` gives for a batch's name table, kept per table in ``cache``: batches repeat
    the same few tables (256 at most are kept, then all forgotten at once)."""
    out = cache.get(names)
    if out is None:
        if len(cache) >= 256:
            cache.clear()
        out = cache[names] = make()
    return out


class Evaluator(Generic[R_co]):
    """Turns a batch into the rule's Metrics, or None when there is nothing for the state machine
    to look at (no violation, and no key of this rule in a non-idle state)."""

    def __init__(self, rule: R_co) -> None:
        self.rule = rule
        self._match: dict[str, bool] = {}
        self._masks: dict[tuple[str, ...], np.ndarray] = {}
        self._numbers: dict[tuple[str, ...], np.ndarray] = {}

    def name_mask(self, names: tuple[str, ...]) -> np.ndarray:
        """Which of a batch's signal names the rule's patterns match. Batches repeat the same
        name tables, so the answer is kept per table (a few of them at most)."""
        match = self._match
        return per_table(self._masks, names, lambda: np.array(
            [match[n] if n in match else match.setdefault(n, _matches(n, self.rule.signals)) for n in names], dtype=bool))

    def per_name(self, names: tuple[str, ...], number: Callable[[str], int]) -> np.ndarray:
        """``number(name)`` for each matching name of a batch's table (-1 for the others), kept
        per table like ``name_mask``."""
        return per_table(self._numbers, names, lambda: np.array(
            [number(n) if hit else -1 for n, hit in zip(names, self.name_mask(names).tolist())], dtype=np.int64))

    def select(self, batch: FlatBatch, ordered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The samples of matching signals: (name number, time, value); ``ordered``: sorted by
        name number, then time (``by_key_then_time``). Matching signals next to each other in
        the batch's table are one slice of its columns (a view, no copy), and signals whose
        samples are already in time order need no sort."""
        hits = self.name_mask(batch.names)
        if not hits.any():
            return None
        runs = batch.layout if len(batch) >= _RUNS_FROM else None
        if runs is None:  # a small batch, or not one run per signal in table order: by a mask
            mask = hits[batch.ids]
            sel = batch.ids[mask], batch.t[mask], batch.v[mask]
            return by_key_then_time(*sel) if ordered else sel  # type: ignore[return-value]
        bounds, unordered = runs
        edges = np.flatnonzero(np.diff(np.concatenate(([False], hits, [False]))))
        starts, ends = bounds[edges[0::2]].tolist(), bounds[edges[1::2]].tolist()
        if len(starts) == 1:
            a, b = starts[0], ends[0]
            sel = batch.ids[a:b], batch.t[a:b], batch.v[a:b]
        else:
            sel = tuple(np.concatenate([col[a:b] for a, b in zip(starts, ends)])  # type: ignore[assignment]
                        for col in (batch.ids, batch.t, batch.v))
        if ordered and unordered[hits].any():
            return by_key_then_time(*sel)  # type: ignore[return-value]
        return sel

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        """``frames``: the batch's frame counters; ``now``: its event time (the end of its span);
        ``hot``: some key of this rule is not idle, so its metrics are wanted even when clean;
        ``events``: per frame counter, the event times of the frames it counted."""
        raise NotImplementedError


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Index:
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


def by_key_then_time(k: np.ndarray, t: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """The points sorted by key, then time (stable: equal times keep their order)."""
    order = np.lexsort((t, k))
    return (k[order], t[order], *(m[order] for m in more))

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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
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


def runs_of(batch: FlatBatch) -> tuple[np.ndarray, np.ndarray] | None:
    """The batch's runs (``FlatBatch.layout``) where the rules select by them: a batch of at
    least ``_RUNS_FROM`` samples (a smaller one is selected from whole, as quickly); else None."""
    return batch.layout if len(batch) >= _RUNS_FROM else None


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


# -- names: a number per signal name, the same for every rule -----------------------------------

_NAMES: dict[str, int] = {}  # every name seen, numbered in that order
_NAMES_LOCK = threading.Lock()
_MAX_NAMES = 1 << 16  # then all forgotten at once (a new generation): names from the wire are not trusted
_generation = 0


def numbered(batch_names: tuple[str, ...], memo: dict[Any, Any] | None = None) -> tuple[np.ndarray, int]:
    """The number of each name of a table (the same name, the same number, in every batch and
    for every rule) and the generation of the numbering. ``memo``: a batch's (``FlatBatch.memo``),
    where the answer is kept for the other rules of the batch."""
    if memo is not None:
        got = memo.get("numbered")
        if got is not None and got[0] is batch_names:
            return got[1], got[2]
    get = _NAMES.get
    numbers = [get(n, -1) for n in batch_names]
    generation = _generation
    if -1 in numbers:
        numbers, generation = _number(batch_names)
    out = np.array(numbers, dtype=np.int64)
    if memo is not None:
        memo["numbered"] = (batch_names, out, generation)
    return out, generation


def _number(batch_names: tuple[str, ...]) -> tuple[list[int], int]:
    global _generation
    with _NAMES_LOCK:
        if len(_NAMES) + len(batch_names) > _MAX_NAMES:
            _NAMES.clear()
            _generation += 1
        return [_NAMES.setdefault(n, len(_NAMES)) for n in batch_names], _generation


class PerName:
    """``value(name)`` for each name of a table, worked out once per name (by its number, see
    ``numbered``), so that a table never seen before costs a numpy lookup, not a loop over its
    names (a live batch's table is new more often than not: its signals in the order they came)."""

    UNKNOWN = -2

    def __init__(self, value: Callable[[str], int]) -> None:
        self.value = value
        self.values = np.empty(0, np.int64)  # by name number; UNKNOWN: not asked yet
        self.generation = -1
        self._last: tuple[tuple[str, ...] | None, np.ndarray] = (None, self.values)

    def of(self, names: tuple[str, ...], memo: dict[Any, Any] | None = None) -> np.ndarray:
        last = self._last
        if last[0] is names:
            return last[1]
        numbers, generation = numbered(names, memo)
        if generation != self.generation:
            self.values, self.generation = np.empty(0, np.int64), generation
        if len(self.values) < len(_NAMES):  # every number is below it
            grown = np.full(max(len(_NAMES), 2 * len(self.values)), self.UNKNOWN, np.int64)
            grown[:len(self.values)] = self.values
            self.values = grown
        out = self.values[numbers]
        if len(out) and out.min() == self.UNKNOWN:
            for i in np.flatnonzero(out == self.UNKNOWN).tolist():
                self.values[numbers[i]] = self.value(names[i])
            out = self.values[numbers]
        self._last = (names, out)
        return out


class Evaluator(Generic[R_co]):
    """Turns a batch into the rule's Metrics, or None when there is nothing for the state machine
    to look at (no violation, and no key of this rule in a non-idle state)."""

    def __init__(self, rule: R_co) -> None:
        self.rule = rule
        self._match = PerName(lambda n: int(self.matches(n)))
        self._mask: tuple[tuple[str, ...] | None, np.ndarray] = (None, np.empty(0, bool))
        self._numbers: PerName | None = None

    def matches(self, name: str) -> bool:
        """Whether the rule's patterns match a signal name."""
        return _matches(name, self.rule.signals)

    def name_mask(self, names: tuple[str, ...], memo: dict[Any, Any] | None = None) -> np.ndarray:
        """Which of a batch's signal names the rule's patterns match (each name is matched once)."""
        last = self._mask
        if last[0] is not names:
            last = self._mask = (names, self._match.of(names, memo) > 0)
        return last[1]

    def per_name(self, names: tuple[str, ...], number: Callable[[str], int],
                 memo: dict[Any, Any] | None = None) -> np.ndarray:
        """``number(name)`` for each matching name of a batch's table (-1 for the others), asked
        once per name (an evaluator passes the same ``number`` every time)."""
        if self._numbers is None:
            self._numbers = PerName(lambda n: number(n) if self.matches(n) else -1)
        return self._numbers.of(names, memo)

    def select(self, batch: FlatBatch, ordered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The samples of matching signals: (name number, time, value); ``ordered``: sorted by
        name number, then time (``by_key_then_time``). Read-only: the rules of a batch that
        match the same signals share them (kept in ``batch.memo``). Matching signals next to
        each other in the batch's table are one slice of its columns (a view, no copy), and
        signals whose samples are already in time order need no sort."""
        memo = batch.memo
        hits = self.name_mask(batch.names, memo)
        key = (hits.tobytes(), ordered)
        sel = memo.get(key, memo)
        if sel is memo:
            sel = memo[key] = _select(batch, hits, ordered)
        return sel  # type: ignore[no-any-return]

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        """``frames``: the batch's frame counters; ``now``: its event time (the end of its span);
        ``hot``: some key of this rule is not idle, so its metrics are wanted even when clean;
        ``events``: per frame counter, the event times of the frames it counted."""
        raise NotImplementedError


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _select(batch: FlatBatch, hits: np.ndarray, ordered: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not hits.any():
        return None
    runs = runs_of(batch)
    if runs is None:  # a small batch, or not one run per signal in table order: by a mask
        mask = hits[batch.ids]
        sel = batch.ids[mask], batch.t[mask], batch.v[mask]
        if ordered:
            sel = by_key_then_time(*sel)  # type: ignore[assignment]
    else:
        bounds, unordered = runs
        padded = np.concatenate(([False], hits, [False]))
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        starts, ends = bounds[edges[0::2]].tolist(), bounds[edges[1::2]].tolist()
        if len(starts) == 1:
            a, b = starts[0], ends[0]
            sel = batch.ids[a:b], batch.t[a:b], batch.v[a:b]
        else:
            sel = tuple(np.concatenate([col[a:b] for a, b in zip(starts, ends)])  # type: ignore[assignment]
                        for col in (batch.ids, batch.t, batch.v))
        if ordered and unordered[hits].any():
            sel = by_key_then_time(*sel)  # type: ignore[assignment]
    for column in sel:
        column.flags.writeable = False
    return sel


class RunStats:
    """A few numbers of each name's run of samples in a batch held in runs (``FlatBatch.layout``),
    one entry per name of its table, each worked out on first use with a fixed number of numpy
    calls over the whole batch (see ``run_stats``)."""

    def __init__(self, batch: FlatBatch, bounds: np.ndarray, unordered: np.ndarray) -> None:
        # its columns, not the batch: the batch keeps this in its memo, and a cycle would hold
        # every batch's columns until the cyclic collector ran (several batches at a time)
        self.t, self.v, self.bounds, self.unordered = batch.t, batch.v, bounds, unordered
        self.count = np.diff(bounds)  # samples
        some = self.count > 0
        self.some, self.starts, self.ends = some, bounds[:-1][some], bounds[1:][some]

    def _per_run(self, ufunc: np.ufunc, column: np.ndarray, none: float) -> np.ndarray:
        out = np.full(len(self.count), none)
        if len(self.starts):
            out[self.some] = ufunc.reduceat(column, self.starts)
        return out

    @cached_property
    def v_max(self) -> np.ndarray:
        """The largest value (-inf for no sample; NaN where one is NaN)."""
        return self._per_run(np.maximum, self.v, -np.inf)

    @cached_property
    def v_min(self) -> np.ndarray:
        """The smallest value (inf for no sample; NaN where one is NaN)."""
        return self._per_run(np.minimum, self.v, np.inf)

    @cached_property
    def v_last(self) -> np.ndarray:
        """The last value in the run's order (NaN for no sample)."""
        out = np.full(len(self.count), np.nan)
        out[self.some] = self.v[self.ends - 1]
        return out

    @cached_property
    def ordered(self) -> np.ndarray:
        """Its times are in order, none NaN: a stable sort by time keeps the run as it is."""
        t_first, t_last = self.t_first, self.t_last
        return ~self.unordered & (t_first == t_first) & (t_last == t_last)

    @cached_property
    def t_first(self) -> np.ndarray:
        """The first time (inf for no sample)."""
        out = np.full(len(self.count), np.inf)
        out[self.some] = self.t[self.starts]
        return out

    @cached_property
    def t_last(self) -> np.ndarray:
        """The last time (-inf for no sample)."""
        out = np.full(len(self.count), -np.inf)
        out[self.some] = self.t[self.ends - 1]
        return out

    @cached_property
    def t_step(self) -> np.ndarray:
        """The longest step from one time to the next (-inf for fewer than two samples; NaN
        where a time is NaN)."""
        t = self.t
        steps = np.empty(len(t))
        np.subtract(t[1:], t[:-1], out=steps[:-1])
        if len(self.ends):
            steps[self.ends - 1] = -np.inf  # from one run to the next: not a step
        return self._per_run(np.maximum, steps, -np.inf)


def run_stats(batch: FlatBatch) -> RunStats | None:
    """The batch's ``RunStats``, the same for every rule (kept in ``batch.memo``); None for a
    batch not held in runs, or too small to be selected from by runs (``_RUNS_FROM``): the rules
    then take their general path. The rules use them to tell at once that a batch cannot matter
    to them (no value beyond a limit, no silence: the common case), without selecting its samples."""
    memo = batch.memo
    got = memo.get("run_stats", memo)
    if got is memo:
        runs = runs_of(batch)
        got = memo["run_stats"] = None if runs is None else RunStats(batch, *runs)
    return got  # type: ignore[no-any-return]


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

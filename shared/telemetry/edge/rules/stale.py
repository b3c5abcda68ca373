"""``stale``: a message (or a single signal) not seen for ``timeout`` seconds of event time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..messages import FlatBatch
from .base import NO_EVENTS, Evaluator, Index, Metrics, Rule, by_key_then_time, per_table, run_stats, runs_of


@dataclass(frozen=True, kw_only=True)
class StaleRule(Rule):
    kind = "stale"

    timeout: float | None = None  # seconds
    scope: str = "message"  # "message" (any signal of it) or "signal"

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("timeout", where)
        if self.scope not in ("message", "signal"):
            raise ConfigError(f"{where}: scope must be 'message' or 'signal'")

    def evaluator(self) -> StaleEvaluator:
        return StaleEvaluator(self)


class StaleEvaluator(Evaluator[StaleRule]):
    """A message (or signal) not seen for ``timeout`` seconds of event time, and its return.
    A key is watched from the first time it is seen.

    The points are the data's own moments, never a batch's end, so a replay's alerts do not
    depend on its batches: the instant a key's silence passes ``timeout`` (reported once the
    batch's event time has passed it), the instant it has lasted ``min_duration`` more (for the
    debounce), and its return (with ``silent_for``, the whole silence). While the rule has an
    alert in flight, the samples of its keys are points too, so clear delays can run out."""

    EPSILON = 1e-9  # the age is past the timeout from that instant on: a margin just above zero

    def __init__(self, rule: StaleRule) -> None:
        super().__init__(rule)
        self.seen = Index()  # per key: when it was last seen
        self.flagged: dict[int, float] = {}  # key -> the last-seen time whose silence was reported
        self._groups: dict[tuple[str, ...], list[tuple[int, np.ndarray]]] = {}  # per table: each key's signals
        self._by_key: dict[tuple[str, ...], tuple[np.ndarray, ...]] = {}  # per table: its signals key by key

    def key_number(self, signal: str) -> int:
        return self.seen.number(signal.split(".", 1)[0] if self.rule.scope == "message" else signal)

    def _silence(self, key: int, since: float, until: float, out: list[tuple[int, float, float, float]]) -> None:
        """The points of a silence that began after ``since`` (last seen) and is known to have
        lasted until ``until``, unless already reported."""
        timeout, delay = self.rule.timeout or 0.0, self.rule.min_duration
        start = since + timeout
        if self.flagged.get(key) == since or not start < until:
            return
        out.append((key, start, timeout, np.nan))
        if delay > 0:
            if not start + delay < until:
                return  # the debounce point is not known yet: report the silence again later
            out.append((key, start + delay, timeout + delay, np.nan))
        self.flagged[key] = since

    def _key_groups(self, names: tuple[str, ...]) -> list[tuple[int, np.ndarray]]:
        """Each key of a name table and the numbers of its signals there (``_signals_by_key``,
        split key by key)."""
        signals, starts, _, keys = per_table(self._by_key, names, lambda: self._signals_by_key(names))
        return list(zip(keys.tolist(), np.split(signals, starts[1:]), strict=True)) if len(signals) else []

    def _signals_by_key(self, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        """A name table's matching signals (their numbers there) key by key, where each key's
        signals start among them, how many it has, and the keys."""
        key_of_name = self.per_name(names, self.key_number)
        hit = np.flatnonzero(key_of_name >= 0)
        signals = hit[np.argsort(key_of_name[hit], kind="stable")]
        keys_of = key_of_name[signals]
        starts = np.flatnonzero(np.concatenate(([True], keys_of[1:] != keys_of[:-1]))) if len(signals) else hit
        return signals, starts, np.diff(np.append(starts, len(signals))), keys_of[starts]

    def _quiet(self, batch: FlatBatch, timeout: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The keys seen in the batch and the last time each was seen, if no silence of a key
        ended in it (the common case); None if one did, or if it cannot be told this way.

        Told without sorting, from each signal's first and last time and longest step between
        two of its times (``run_stats``): a key's times are the union of its signals'; no step
        between two of them is longer than a signal's own (its times are among them), nor than
        the distance from the key's first time to the signal's first or from the signal's last
        to the key's last. So if one signal of each key has none of the three longer than
        ``timeout``, no step of its key is (times are rounded the same way: the rounded
        differences are ordered as the exact ones)."""
        stats = run_stats(batch)
        if stats is None:
            return None
        signals, starts, sizes, keys = per_table(self._by_key, batch.names, lambda: self._signals_by_key(batch.names))
        if not len(signals):
            return keys, np.empty(0)
        if not stats.ordered[signals].all():
            return None
        first, last, step = stats.t_first[signals], stats.t_last[signals], stats.t_step[signals]
        since, until = np.minimum.reduceat(first, starts), np.maximum.reduceat(last, starts)
        # of a signal with no sample: first - since is inf (or NaN), it covers nothing
        longest = np.maximum(np.maximum(step, first - np.repeat(since, sizes)), np.repeat(until, sizes) - last)
        present = since <= until
        if not (np.logical_or.reduceat(longest <= timeout, starts) | ~present).all():
            return None
        keys, since, until = keys[present], since[present], until[present]
        if (since - self.seen.values[keys] > timeout).any():  # the silence before its first time
            return None
        return keys, until

    def keyed(self, batch: FlatBatch) -> tuple[np.ndarray, np.ndarray] | None:
        """The samples of matching signals as (key, time), sorted by key, then time (stable:
        equal times in the batch's order), as ``by_key_then_time`` sorts them; None if none.
        A key's signals are taken from the batch's per-signal runs and sorted key by key, which
        is a merge of runs already in time order (a message's signals: the same times); a small
        batch's are sorted at once, as ``Evaluator.select`` takes them by a mask."""
        runs = runs_of(batch)
        if runs is None:  # a small batch (its sort costs less than a loop over its keys), or not in runs
            sel = self.select(batch)
            if sel is None:
                return None
            return by_key_then_time(self.per_name(batch.names, self.key_number, batch.memo)[sel[0]], sel[1])  # type: ignore[return-value]
        groups = per_table(self._groups, batch.names, lambda: self._key_groups(batch.names))
        if not groups:
            return None
        bounds = runs[0]
        ks, ts = [], []
        for key, names in groups:
            starts, ends = bounds[names], bounds[names + 1]
            if len(names) == 1 or (starts[1:] == ends[:-1]).all():  # one slice of the batch
                t = batch.t[starts[0]:ends[-1]]
            else:
                t = np.concatenate([batch.t[a:b] for a, b in zip(starts.tolist(), ends.tolist())])
            if len(names) > 1 and _same_rising_times(t, ends - starts):
                t = np.repeat(t[: ends[0] - starts[0]], len(names))  # what the sort gives, without it
            elif len(names) > 1 or runs[1][names[0]]:
                t = t[np.argsort(t, kind="stable")]
            ks.append(np.full(len(t), key, np.int64))
            ts.append(t)
        k, t = np.concatenate(ks), np.concatenate(ts)
        return (k, t) if len(k) else None

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        timeout = self.rule.timeout
        assert timeout is not None  # check() requires it
        points: list[tuple[int, float, float, float]] = []  # key, time, age, silent_for
        k = t = silent = np.empty(0)
        keep = np.empty(0, bool)
        quiet = None if hot else self._quiet(batch, timeout)
        if quiet is not None:  # no silence ended: no sample is a point, only the last times change
            self.seen.values[quiet[0]] = quiet[1]
        sel = None if quiet is not None else self.keyed(batch)
        if sel is not None:
            k, t = sel
            first = np.concatenate(([True], k[1:] != k[:-1]))
            prev = np.concatenate(([np.nan], t[:-1]))
            prev[first] = self.seen.values[k[first]]
            silent = t - prev
            ended = np.flatnonzero(silent > timeout)  # silences that ended inside this batch
            for i in ended.tolist():
                self._silence(int(k[i]), float(prev[i]), float(t[i]), points)
            # the samples are points while an alert may be in flight: always when the rule is
            # hot, else those of keys whose silence ended here (a clear delay runs on them)
            if hot:
                keep = np.ones(len(t), bool)
            else:
                keep = np.isin(k, k[ended]) if len(ended) else np.zeros(len(t), bool)
            last = np.append(np.flatnonzero(first)[1:], len(k)) - 1
            self.seen.values[k[last]] = t[last]
        # silences still going on at the batch's event time
        for key in np.flatnonzero(now - self.seen.values > timeout).tolist():
            self._silence(key, float(self.seen.values[key]), now, points)
        if not points and not keep.any():
            return None
        silent = np.where(silent > timeout, silent, np.nan)
        pk, pt, page, psilent = (np.array(c, dtype=float) for c in zip(*points)) if points else (np.empty(0),) * 4
        kk = np.concatenate((k[keep], pk)).astype(np.int64)
        tt = np.concatenate((t[keep], pt))
        age = np.concatenate((np.zeros(int(keep.sum())), page))
        silent_for = np.concatenate((silent[keep], psilent))
        if points:  # the samples kept are in order already: only points among them need a sort
            kk, tt, age, silent_for = by_key_then_time(kk, tt, age, silent_for)
        x = np.where(age > 0, age - timeout + self.EPSILON, age - timeout)
        return Metrics(list(self.seen.names), kk, tt, x, age, {"timeout": timeout}, {"silent_for": silent_for})


def _same_rising_times(t: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether ``t`` is one strictly rising run of times repeated (bit for bit) once per signal
    (``lengths``): the signals of one message, decoded from the same frames."""
    n = int(lengths[0])
    if not n or not (lengths == n).all():
        return False
    runs = t.reshape(len(lengths), n)
    return bool((runs[0, 1:] > runs[0, :-1]).all() and (runs.view(np.int64) == runs[0].view(np.int64)).all())

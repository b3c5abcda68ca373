"""``spread``: imbalance across a group of signals (max minus min of their latest values)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..messages import FlatBatch
from .base import CELLS_AT_ONCE, NO_EVENTS, Evaluator, Index, Metrics, Rule, per_table, run_stats


@dataclass(frozen=True, kw_only=True)
class SpreadRule(Rule):
    kind = "spread"

    max_spread: float | None = None

    def check(self, where: str) -> None:
        super().check(where)
        self._check_number("max_spread", where)

    def evaluator(self) -> SpreadEvaluator:
        return SpreadEvaluator(self)


class SpreadEvaluator(Evaluator[SpreadRule]):
    """Max minus min over the latest values of every signal the patterns match (e.g. all cell
    voltages), at each moment one of them changes."""

    def __init__(self, rule: SpreadRule) -> None:
        super().__init__(rule)
        self.latest = Index()  # per signal: its latest value
        self.scratch: list[np.ndarray] = [np.empty(0)]  # the table's memory, kept
        self._by_name = (0, np.empty(0, np.int64), np.empty(0, np.int64))  # (width, signals in name order, place of each)
        self._columns: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray] | None] = {}  # per table, see _quiet

    def _columns_of(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """A table's matching signals (their numbers there) and the column of each; None if two
        share a column (one name twice in the table)."""
        signals = np.flatnonzero(self.name_mask(names))
        columns = self.per_name(names, self.latest.number)[signals]
        ordered = np.sort(columns)  # not np.unique: it imports numpy.ma (tens of ms) on first use
        return (signals, columns) if not (ordered[1:] == ordered[:-1]).any() else None

    def _quiet(self, batch: FlatBatch) -> bool:
        """Whether the batch cannot take the spread beyond ``max_spread`` at any instant, told
        without building its table (the common case), and if so the latest values taken from it.

        Every value in the table is one of the batch's or a latest one, so no spread in it is
        wider than the largest of them minus the smallest (the rounded differences are ordered
        as the exact ones). Each signal's latest value is then its run's last (``run_stats``),
        when its times are in order and none of its values is NaN (a NaN changes nothing); False,
        for the table to decide, otherwise."""
        stats = run_stats(batch)
        if stats is None:
            return False
        columns = per_table(self._columns, batch.names, lambda: self._columns_of(batch.names))
        if columns is None:
            return False
        signals, cols = columns
        if not stats.ordered[signals].all():
            return False
        highest, lowest = stats.v_max[signals], stats.v_min[signals]
        latest = self.latest.values
        # NaN if a value of the batch is (a latest one is NaN until its signal is known)
        high = np.maximum(highest.max(initial=-np.inf), np.fmax.reduce(latest, initial=-np.inf))
        low = np.minimum(lowest.min(initial=np.inf), np.fmin.reduce(latest, initial=np.inf))
        assert self.rule.max_spread is not None  # check() requires it
        if not (high - low) - self.rule.max_spread <= 0:  # a NaN value, or maybe beyond
            return False
        seen = stats.count[signals] > 0
        latest[cols[seen]] = stats.v_last[signals[seen]]
        return True

    def metrics(self, batch: FlatBatch, frames: Mapping[str, int], now: float, hot: bool,
                events: Mapping[str, np.ndarray] = NO_EVENTS) -> Metrics | None:
        if not self.name_mask(batch.names, batch.memo).any():
            return None
        cols_of_name = self.per_name(batch.names, self.latest.number, batch.memo)
        if not hot and self._quiet(batch):
            return None
        sel = self.select(batch)
        assert sel is not None  # a name matches
        if not len(sel[1]):
            return None
        width = len(self.latest.names)
        # the table's columns are the signals in name order: of equal values, the first by name
        # is the highest (lowest), not the first the batches happened to show
        if self._by_name[0] != width:  # the signals only grow: worked out again when one is added
            by_name = np.argsort(np.array(self.latest.names))
            place = np.empty(width, dtype=np.int64)
            place[by_name] = np.arange(width)
            self._by_name = (width, by_name, place)
        _, by_name, place = self._by_name
        column = place[cols_of_name]  # per name of the table (a name that does not match: any)
        if batch.layout is not None:
            order = np.argsort(sel[1], kind="stable")
        else:  # a batch whose signals' samples are not together (not as FlatBatch promises):
            # by time, then signal in the order of their first samples, then batch order, which
            # is what the stable sort gives a batch whose signals' samples are together
            first = np.unique(sel[0], return_index=True, return_inverse=True)
            order = np.lexsort((first[1][first[2]], sel[1]))
        col, t, v = column[sel[0][order]], sel[1][order], sel[2][order]
        # Samples stamped at the same moment are simultaneous: the state is judged once per
        # instant, after all of them (a table row per instant, not per sample: a frame carries
        # several cells). Of one signal's samples in an instant the last counts; they are
        # adjacent here, in batch order (a batch holds each signal's samples together, and the
        # sort is stable; else the sort is by time, then signal, as above). A NaN sample changes
        # nothing: the signal keeps its latest value.
        ends = np.empty(len(t), bool)  # the last sample of its instant
        np.not_equal(t[1:], t[:-1], out=ends[:-1])
        ends[-1] = True
        instant = np.empty(len(t), np.int64)
        instant[0] = 0
        np.cumsum(ends[:-1], out=instant[1:])
        last = np.empty(len(t), bool)  # the last sample of its signal in its instant
        np.not_equal(col[1:], col[:-1], out=last[:-1])
        last[:-1] |= ends[:-1]
        last[-1] = True
        last &= v == v  # not NaN
        instant, col, v = instant[last], col[last], v[last]
        t = t[np.flatnonzero(ends)]  # each instant's time (by index: a sparse mask copies run by run)
        n = len(t)
        # A table of every signal's latest value at each instant, a block of rows at a time:
        # memory stays a few MB, however many samples a batch holds.
        rows_at_once = max(1, CELLS_AT_ONCE // max(width, 1))
        parts: list[tuple[np.ndarray, ...]] = []
        latest = self.latest.values[by_name]
        for a in range(0, n, rows_at_once):
            b = min(n, a + rows_at_once)
            lo_i, hi_i = np.searchsorted(instant, [a, b])
            table = _forward_filled(latest, instant[lo_i:hi_i] - a, col[lo_i:hi_i], v[lo_i:hi_i], b - a, self.scratch)
            latest = table[-1].copy()
            hi = lo = table
            if np.isnan(table[0]).any():  # a signal not seen yet (once seen, a signal stays known)
                unknown = np.isnan(table)
                counted = width - np.sum(unknown, axis=1)
                known = counted >= 2
                if not known.any():
                    continue
                table, unknown = table[known], unknown[known]
                hi, lo = np.where(unknown, -np.inf, table), np.where(unknown, np.inf, table)
            elif width < 2:
                continue
            else:
                counted, known = np.full(len(table), width), slice(None)  # type: ignore[assignment]
            # at each point: how many signals are known, and which are highest and lowest
            rows = np.arange(len(table))
            highest, lowest = hi.argmax(axis=1), lo.argmin(axis=1)
            parts.append((t[a:b][known], hi[rows, highest] - lo[rows, lowest], counted[known],
                          by_name[highest], by_name[lowest]))
        self.latest.values = np.empty(width)
        self.latest.values[by_name] = latest
        if not parts:
            return None
        t, spread, signals, highest, lowest = (np.concatenate(c) for c in zip(*parts))
        x = spread - self.rule.max_spread
        if not hot and not (x > 0).any():
            return None
        extra = {"signals": signals, "highest": highest, "lowest": lowest}
        names = list(self.latest.names)
        return Metrics([self.rule.name], np.zeros(len(t), dtype=np.int64), t, x, spread,
                       {"max_spread": self.rule.max_spread}, extra, {"highest": names, "lowest": names})


def _forward_filled(latest: np.ndarray, row: np.ndarray, col: np.ndarray, v: np.ndarray, n: int,
                    scratch: list[np.ndarray]) -> np.ndarray:
    """The ``n`` rows of a table whose column ``col[i]`` takes the value ``v[i]`` from row
    ``row[i]`` on (``row`` sorted, one value per row and column), and ``latest`` before its
    first. Each column is runs of one value: the runs, column after column, repeated each over
    its rows, then one transposing copy. The table lives in ``scratch`` (kept by the caller,
    grown as needed, overwritten by the next call): a fresh array of this size costs more in
    page faults than its filling."""
    width = len(latest)
    cells = width * n
    if len(scratch[0]) < cells:
        scratch[:] = [np.empty(cells)]
    order = np.argsort(col.astype(np.int16) if width < 1 << 15 else col, kind="stable")  # by column, then row
    per_col = np.bincount(col, minlength=width)
    first = np.concatenate(([0], np.cumsum(per_col + 1)[:-1]))  # where each column's runs start
    runs = len(col) + width
    is_first = np.zeros(runs, bool)
    is_first[first] = True
    values, start = np.empty(runs), np.zeros(runs, np.int64)
    values[first] = latest
    values[~is_first] = v[order]
    start[~is_first] = row[order]
    start += np.repeat(np.arange(width) * n, per_col + 1)  # where each run starts in the column-by-column table
    used = np.append(start[1:] > start[:-1], True)  # not a run of no rows (``latest``, replaced in its first row)
    start = start[used]  # the first starts at 0: column 0's first run
    by_col = np.repeat(values[used], np.diff(start, append=cells))
    out = scratch[0][:cells].reshape(n, width)
    np.copyto(out, by_col.reshape(width, n).T)
    return out

"""The aggregator: tumbling event-time windows of statistics per signal, computed with numpy.

Signals are selected by name patterns (``include`` / ``exclude``) and fall into window groups:
the first group whose pattern matches, else the default group. Window ``k`` of a group of length
``W`` covers event times ``[k*W, (k+1)*W)``; a sample at time ``t`` belongs to window
``floor(t / W)``.

Each batch is grouped by window with one sort and reduced with ``ufunc.reduceat``: the Python
loop runs over (signal, window) pairs, never over samples. Partial results merge exactly
(counts, sums of squared deviations by Chan's formula), so the statistics do not depend on how
the stream was cut into batches.

A window closes when the stream's event time (the end of the latest batch; on a quiet live bus,
the reader's idle ticks) has passed its end plus ``lateness_seconds``, and at the end of the
stream. A sample for a window that has already closed is late: it is counted and reported in the
group's next aggregates message, never put into another window. At most ``max_open_windows``
windows per group stay open, so memory is bounded whatever the timestamps do.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections import Counter
from collections.abc import Callable

import numpy as np

from .config import AggregatorConfig
from .messages import Aggregates, EndOfStream, FlatBatch, Signals

DEFAULT_GROUP = "default"
MAX_MAGNITUDE = 1e100  # as decode.MAX_MAGNITUDE: a value beyond it is no measurement


_FIELDS = ("count", "mean", "m2", "min", "t_min", "max", "t_max", "first_t", "first", "last_t", "last")
_EMPTY = {"count": 0, "mean": 0.0, "m2": 0.0, "min": np.inf, "t_min": np.inf, "max": -np.inf, "t_max": np.inf,
          "first_t": np.inf, "first": np.nan, "last_t": -np.inf, "last": np.nan}


class _Window:
    """Running statistics of every signal of a group in one window: one array per statistic,
    indexed by the group's signal number."""

    def __init__(self, size: int) -> None:
        self.a = {key: np.full(size, _EMPTY[key], dtype=np.int64 if key == "count" else np.float64) for key in _FIELDS}

    def grow(self, size: int) -> None:
        have = len(self.a["count"])
        if size > have:
            for key in _FIELDS:
                self.a[key] = np.concatenate((self.a[key], np.full(size - have, _EMPTY[key], dtype=self.a[key].dtype)))

    def merge(self, sid: np.ndarray, r: dict[str, np.ndarray]) -> None:
        """Fold in partial statistics of signals ``sid`` (each at most once): Chan's formula for
        mean and squared deviations, earliest time on ties of min and max."""
        a = self.a
        n_a, n_b = a["count"][sid], r["count"]
        n = n_a + n_b
        delta = r["mean"] - a["mean"][sid]
        a["mean"][sid] += delta * n_b / n
        a["m2"][sid] += r["m2"] + delta * delta * n_a * n_b / n
        a["count"][sid] = n
        for ext, better in (("min", np.less), ("max", np.greater)):
            cur, cur_t = a[ext][sid], a[f"t_{ext}"][sid]
            take = better(r[ext], cur) | ((r[ext] == cur) & (r[f"t_{ext}"] < cur_t))
            a[ext][sid] = np.where(take, r[ext], cur)
            a[f"t_{ext}"][sid] = np.where(take, r[f"t_{ext}"], cur_t)
        take = r["first_t"] < a["first_t"][sid]
        a["first_t"][sid] = np.where(take, r["first_t"], a["first_t"][sid])
        a["first"][sid] = np.where(take, r["first"], a["first"][sid])
        take = r["last_t"] >= a["last_t"][sid]
        a["last_t"][sid] = np.where(take, r["last_t"], a["last_t"][sid])
        a["last"][sid] = np.where(take, r["last"], a["last"][sid])

    def signals(self, names: list[str]) -> dict[str, dict[str, float | int]]:
        a = self.a
        present = np.flatnonzero(a["count"] > 0)
        cols = {key: a[key][present].tolist() for key in _FIELDS}
        std = np.sqrt(np.maximum(a["m2"][present], 0.0) / a["count"][present]).tolist()
        out = {}
        for i, sid in enumerate(present.tolist()):
            out[names[sid]] = {
                "count": cols["count"][i], "min": cols["min"][i], "max": cols["max"][i], "mean": cols["mean"][i],
                "last": cols["last"][i], "std": std[i], "first": cols["first"][i],
                "t_min": cols["t_min"][i], "t_max": cols["t_max"][i],
            }
        return dict(sorted(out.items()))


def window_reduce(sid: np.ndarray, t: np.ndarray, v: np.ndarray, width: float) -> dict[str, np.ndarray]:
    """Statistics per (window, signal) of a batch, all with numpy: one sort, then reduceat.
    Returns arrays, one entry per (window, signal) pair present, ordered by window."""
    k = np.floor(t / width).astype(np.int64)
    order = np.lexsort((t, sid, k))  # by window, signal, then time (stable for equal times)
    k, sid, t, v = k[order], sid[order], t[order], v[order]
    new = np.empty(len(k), dtype=bool)
    new[0] = True
    np.not_equal(k[1:], k[:-1], out=new[1:])
    new[1:] |= sid[1:] != sid[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(k))
    counts = ends - starts
    mean = np.add.reduceat(v, starts) / counts
    dev = v - np.repeat(mean, counts)
    vmin = np.minimum.reduceat(v, starts)
    vmax = np.maximum.reduceat(v, starts)
    return {
        "window": k[starts], "sid": sid[starts], "count": counts, "mean": mean,
        "m2": np.add.reduceat(dev * dev, starts), "min": vmin, "max": vmax,
        # the earliest time at which each pair's min (max) occurs
        "t_min": np.minimum.reduceat(np.where(v == np.repeat(vmin, counts), t, np.inf), starts),
        "t_max": np.minimum.reduceat(np.where(v == np.repeat(vmax, counts), t, np.inf), starts),
        "first_t": t[starts], "first": v[starts], "last_t": t[ends - 1], "last": v[ends - 1],
    }


class WindowAggregator:
    """Windows of one group: pure logic, samples in, closed-window aggregate messages out."""

    def __init__(self, window_seconds: float, vehicle: str, *, group: str = DEFAULT_GROUP,
                 lateness: float = 0.0, max_open_windows: int = 64) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.width = float(window_seconds)
        self.vehicle = vehicle
        self.group = group
        self.lateness = float(lateness)
        self.max_open = max_open_windows
        self.names: list[str] = []
        self._sid: dict[str, int] = {}
        self.open: dict[int, _Window] = {}
        self.closed_through: int | None = None  # index of the newest closed window
        self.watermark = -math.inf
        self.seq = 0
        self.stats: Counter[str] = Counter()
        self._late = 0  # late samples not yet reported
        self._late_oldest = math.inf

    def sid(self, name: str) -> int:
        sid = self._sid.get(name)
        if sid is None:
            sid = self._sid[name] = len(self.names)
            self.names.append(name)
        return sid

    def add(self, batch: FlatBatch, watermark: float | None = None) -> list[Aggregates]:
        """Fold a batch in; return the aggregates of the windows it closes."""
        local = np.array([self.sid(name) for name in batch.names], dtype=np.int64)
        return self.add_samples(local[batch.ids] if len(batch) else batch.ids, batch.t, batch.v, watermark)

    def add_samples(self, sid: np.ndarray, t: np.ndarray, v: np.ndarray, watermark: float | None = None) -> list[Aggregates]:
        """Fold in samples of this group's signals (numbered by ``sid``)."""
        with np.errstate(invalid="ignore"):
            sound = (np.abs(v) <= MAX_MAGNITUDE) & np.isfinite(t)  # NaN: False
        if not sound.all():  # no sum or square of a window may overflow (the reader drops these first)
            self.stats["dropped_samples"] += int(len(sound) - sound.sum())
            sid, t, v = sid[sound], t[sound], v[sound]
        if len(t):
            self._fold(sid, t, v)
        newest = float(t.max()) if len(t) else -math.inf
        return self.advance(newest if watermark is None else max(watermark, newest))

    def advance(self, watermark: float) -> list[Aggregates]:
        """Event time has reached ``watermark``: close what is due."""
        self.watermark = max(self.watermark, watermark)
        out = self._close(lambda k: (k + 1) * self.width + self.lateness <= self.watermark)
        while len(self.open) > self.max_open:  # bounded memory: close the oldest early
            self.stats["forced_closes"] += 1
            oldest = min(self.open)

            def forced(k: int, last: int = oldest) -> bool:
                return k <= last

            out += self._close(forced)
        return out

    def flush(self) -> list[Aggregates]:
        """Close every open window (the source has ended)."""
        out = self._close(lambda k: True)
        if self._late and not out:
            self.stats["late_unreported"] += self._late
        return out

    def _fold(self, sid: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        if self.closed_through is not None:
            late = np.floor(t / self.width) <= self.closed_through
            if late.any():
                n_late = int(late.sum())
                self.stats["late_samples"] += n_late
                self._late += n_late
                self._late_oldest = min(self._late_oldest, float(t[late].min()))
                keep = ~late
                sid, t, v = sid[keep], t[keep], v[keep]
                if not len(t):
                    return
        r = window_reduce(sid, t, v, self.width)
        windows = r["window"]
        bounds = np.flatnonzero(np.diff(windows)) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(windows)]):
            k = int(windows[a])
            window = self.open.get(k)
            if window is None:
                window = self.open[k] = _Window(len(self.names))
            else:
                window.grow(len(self.names))
            window.merge(r["sid"][a:b], {key: r[key][a:b] for key in _FIELDS})

    def _close(self, due: Callable[[int], bool]) -> list[Aggregates]:
        out = []
        for k in sorted(self.open):
            if not due(k):
                break
            window = self.open.pop(k)
            self.closed_through = k if self.closed_through is None else max(self.closed_through, k)
            self.seq += 1
            self.stats["windows"] += 1
            out.append(
                Aggregates(
                    vehicle=self.vehicle,
                    seq=self.seq,
                    group=self.group,
                    start=k * self.width,
                    end=(k + 1) * self.width,
                    signals=window.signals(self.names),
                    late_samples=self._late,
                    late_oldest=self._late_oldest if self._late else None,
                )
            )
            self._late, self._late_oldest = 0, math.inf
        return out


class Aggregation:
    """All window groups of a vehicle: selects signals and routes each to its group."""

    def __init__(self, cfg: AggregatorConfig, vehicle: str) -> None:
        self.cfg = cfg
        def group(name: str, width: float) -> WindowAggregator:
            return WindowAggregator(width, vehicle, group=name, lateness=cfg.lateness_seconds,
                                    max_open_windows=cfg.max_open_windows)

        self.groups = {g.name: group(g.name, g.window_seconds) for g in cfg.groups}
        self.groups[DEFAULT_GROUP] = group(DEFAULT_GROUP, cfg.window_seconds)
        self._route: dict[str, str | None] = {}
        self._where: dict[str, tuple[int, int]] = {}  # name -> (group number, signal number)
        self.stats: Counter[str] = Counter()
        self.seq = 0

    def _place(self, signal: str) -> tuple[int, int]:
        group = self.group_of(signal)
        if group is None:
            place = (-1, -1)
        else:
            place = (list(self.groups).index(group), self.groups[group].sid(signal))
        self._where[signal] = place
        return place

    def group_of(self, signal: str) -> str | None:
        """The group a signal is aggregated in, or None if it is not selected."""
        if signal not in self._route:
            selected = any(fnmatch.fnmatchcase(signal, p) for p in self.cfg.include) and not any(
                fnmatch.fnmatchcase(signal, p) for p in self.cfg.exclude
            )
            group = None
            if selected:
                group = next((g.name for g in self.cfg.groups if any(fnmatch.fnmatchcase(signal, p) for p in g.signals)),
                             DEFAULT_GROUP)
            self._route[signal] = group
        return self._route[signal]

    def add(self, batch: FlatBatch, watermark: float) -> list[Aggregates]:
        groups = list(self.groups.values())
        # per name of the batch: its group (-1: not selected) and its number in that group
        where = self._where
        pairs = [where.get(n) or self._place(n) for n in batch.names]
        route = np.array([p[0] for p in pairs], dtype=np.int64)
        local = np.array([p[1] for p in pairs], dtype=np.int64)
        out = []
        if len(batch):
            group = route[batch.ids]
            sid = local[batch.ids]
            skipped = int(np.count_nonzero(group < 0))
            if skipped:
                self.stats["samples_not_selected"] += skipped
            present = set(np.unique(group).tolist()) if len(groups) > 1 else {0 if skipped < len(batch) else -1}
        else:
            present = set()
        for g, aggregator in enumerate(groups):
            if g in present:
                mask = group == g
                out += aggregator.add_samples(sid[mask], batch.t[mask], batch.v[mask], watermark)
            else:
                out += aggregator.advance(watermark)
        return self._sorted(out)

    def process(self, message: Signals | EndOfStream) -> list[Aggregates]:
        """A signals or end_of_stream message in, the aggregates it completes out."""
        if isinstance(message, Signals):
            return self.add(message.batch, message.end)
        return self.flush()

    def flush(self) -> list[Aggregates]:
        return self._sorted([m for a in self.groups.values() for m in a.flush()])

    def _sorted(self, out: list[Aggregates]) -> list[Aggregates]:
        """In event-time order, numbered across groups: (vehicle, kind, seq) is unique."""
        out.sort(key=lambda m: (m.end, m.group))
        numbered = []
        for message in out:
            self.seq += 1
            numbered.append(dataclasses.replace(message, seq=self.seq))
        return numbered

    def totals(self) -> Counter[str]:
        total = Counter(self.stats)
        for aggregator in self.groups.values():
            total.update(aggregator.stats)
        return total

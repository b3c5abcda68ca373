"""The aggregator as it was before its batches were reduced by runs and its windows stored
in one 2-D array each (main at 836fc76): the reference the tests compare the aggregator
with, payload bytes and statistics. Its docstrings are as they were.

The aggregator: tumbling event-time windows of statistics per signal, computed with numpy.

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
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from support import wire_before as wire
from telemetry.edge.config import AggregatorConfig
from telemetry.edge.messages import Aggregates, EndOfStream, FlatBatch, Signals, Window

DEFAULT_GROUP = "default"
MAX_MAGNITUDE = 1e100  # as decode.MAX_MAGNITUDE: a value beyond it is no measurement


_FIELDS = ("count", "mean", "m2", "min", "t_min", "max", "t_max", "first_t", "first", "last_t", "last")
_EMPTY = {"count": 0, "mean": 0.0, "m2": 0.0, "min": np.inf, "t_min": np.inf, "max": -np.inf, "t_max": np.inf,
          "first_t": np.inf, "first": np.nan, "last_t": -np.inf, "last": np.nan}
_FLOATS = _FIELDS[1:]
_EMPTY_FLOATS = np.array([_EMPTY[key] for key in _FLOATS])[:, None]


class _Window:
    """Running statistics of every signal of a group in one window: one array per statistic,
    indexed by the group's signal number."""

    def __init__(self, size: int, sid: np.ndarray | None = None, r: Mapping[str, np.ndarray] | None = None) -> None:
        """Empty, or holding the partial statistics ``r`` of signals ``sid`` (a window a batch opens)."""
        floats = np.empty((len(_FLOATS), size))  # one allocation for every float statistic
        floats[:] = _EMPTY_FLOATS
        self.a = dict(zip(_FLOATS, floats))
        self.a["count"] = np.zeros(size, dtype=np.int64)
        if sid is not None and r is not None:
            for key in _FIELDS:
                self.a[key][sid] = r[key]

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

    def cells(self, names: list[str]) -> Cells:
        a = self.a
        present = np.flatnonzero(a["count"] > 0)
        stats = {key: a[key][present] for key in ("count", "min", "max", "mean", "last", "first", "t_min", "t_max")}
        stats["std"] = np.sqrt(np.maximum(a["m2"][present], 0.0) / a["count"][present])
        return Cells(names, present, stats)


class Cells(Mapping[str, Mapping[str, float]]):
    """The statistics of a closed window in columns (signal numbers of its group, one array per
    statistic); read as ``{signal: {statistic: value}}`` only when someone asks (tests, tools):
    the aggregates payload is made from the columns."""

    def __init__(self, names: list[str], sid: np.ndarray, stats: dict[str, np.ndarray]) -> None:
        self.names, self.sid, self.stats = names, sid, stats
        self._dict: dict[str, dict[str, float]] | None = None

    def _as_dict(self) -> dict[str, dict[str, float]]:
        if self._dict is None:
            cols = {key: self.stats[key].tolist() for key in wire.STATISTICS}
            rows = {self.names[sid]: {key: cols[key][i] for key in wire.STATISTICS}
                    for i, sid in enumerate(self.sid.tolist())}
            self._dict = dict(sorted(rows.items()))
        return self._dict

    def __getitem__(self, name: str) -> Mapping[str, float]:
        return self._as_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(self.sid)


def window_reduce(sid: np.ndarray, t: np.ndarray, v: np.ndarray, width: float) -> dict[str, np.ndarray]:
    """Statistics per (window, signal) of a batch, all with numpy: runs of (window, signal), then
    reduceat. Returns arrays, one entry per (window, signal) pair present, ordered by window then
    signal. The samples are sorted first unless each signal's are together and in time order."""
    k = np.floor(t / width).astype(np.int64)
    same = sid[1:] == sid[:-1]
    if bool(np.all(~same | (t[1:] >= t[:-1]))) and len(np.unique(sid[np.append(True, ~same)])) == int((~same).sum()) + 1:
        # each signal's samples together and in time order (a batch as the reader makes it): the
        # runs of (signal, window) are already there, no sort of the samples is needed; the pairs
        # are put in (window, signal) order after the reduction, a few per signal
        order = None
    else:
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
    out = {
        "window": k[starts], "sid": sid[starts], "count": counts, "mean": mean,
        "m2": np.add.reduceat(dev * dev, starts), "min": vmin, "max": vmax,
        # the earliest time at which each pair's min (max) occurs
        "t_min": np.minimum.reduceat(np.where(v == np.repeat(vmin, counts), t, np.inf), starts),
        "t_max": np.minimum.reduceat(np.where(v == np.repeat(vmax, counts), t, np.inf), starts),
        "first_t": t[starts], "first": v[starts], "last_t": t[ends - 1], "last": v[ends - 1],
    }
    if order is None:  # pairs in (signal, window) order: into (window, signal) order
        pairs = np.lexsort((out["sid"], out["window"]))
        out = {key: value[pairs] for key, value in out.items()}
    return out


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

    def add(self, batch: FlatBatch, watermark: float | None = None) -> list[Window]:
        """Fold a batch in; return the windows it closes."""
        local = np.array([self.sid(name) for name in batch.names], dtype=np.int64)
        return self.add_samples(local[batch.ids] if len(batch) else batch.ids, batch.t, batch.v, watermark)

    def add_samples(self, sid: np.ndarray, t: np.ndarray, v: np.ndarray, watermark: float | None = None) -> list[Window]:
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

    def advance(self, watermark: float) -> list[Window]:
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

    def flush(self) -> list[Window]:
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
            part = {key: r[key][a:b] for key in _FIELDS}
            window = self.open.get(k)
            if window is None:  # a window this batch opens: its statistics are the batch's
                self.open[k] = _Window(len(self.names), r["sid"][a:b], part)
            else:
                window.grow(len(self.names))
                window.merge(r["sid"][a:b], part)

    def _close(self, due: Callable[[int], bool]) -> list[Window]:
        out = []
        for k in sorted(self.open):
            if not due(k):
                break
            window = self.open.pop(k)
            self.closed_through = k if self.closed_through is None else max(self.closed_through, k)
            self.seq += 1
            self.stats["windows"] += 1
            out.append(
                Window(
                    vehicle=self.vehicle,
                    seq=self.seq,
                    group=self.group,
                    start=k * self.width,
                    end=(k + 1) * self.width,
                    signals=window.cells(self.names),
                    late_samples=self._late,
                    late_oldest=self._late_oldest if self._late else None,
                )
            )
            self._late, self._late_oldest = 0, math.inf
        return out


class Resolutions(dict[str, wire.Resolution]):
    """Signal name -> DBC (scale, offset), by the decoder's names. Its keys are the fixed names
    (the schema's); a J1939 signal, ``<Message>@sa<SA>.<Signal>``, finds its resolution by its
    message and signal whatever the source address (and travels by name, outside the schema)."""

    def get(self, name: str, default: wire.Resolution = None) -> wire.Resolution:  # type: ignore[override]
        if name in self:
            return self[name]
        head, sep, tail = name.partition("@sa")
        if sep and "." in tail:
            return self.j1939.get(f"{head}@sa*.{tail.split('.', 1)[1]}", default)
        return default

    def __init__(self, fixed: Mapping[str, wire.Resolution], j1939: Mapping[str, wire.Resolution]) -> None:
        super().__init__(fixed)
        self.j1939 = dict(j1939)


def dbc_resolutions(dbc_paths: Sequence[str]) -> Resolutions:
    """Each signal's (scale, offset) from the DBC files, by the decoder's own signal names (a
    renamed message's, a J1939 source address's); None for an IEEE float signal (sent as float)."""
    from telemetry.edge.decode import DbcDecoder

    every = DbcDecoder(dbc_paths).resolutions()
    return Resolutions({k: v for k, v in every.items() if "@sa*." not in k},
                       {k: v for k, v in every.items() if "@sa*." in k})


class Publisher:
    """The closed windows of one group, into one aggregates payload per publish period: the
    windows whose start is in ``[j*P, (j+1)*P)`` travel together, encoded once
    (``telemetry.wire``), once the last of them has closed. Which windows share a payload
    depends only on event time, so a payload's id (group and period start) names the same
    windows in every run, however the stream was batched."""

    def __init__(self, group: WindowAggregator, *, period: float, stats: tuple[str, ...], res: Mapping[str, wire.Resolution],
                 codec: str, max_bytes: int, schema: wire.Schema | None = None) -> None:
        self.group, self.stats, self.res, self.codec, self.max_bytes = group, stats, res, codec, max_bytes
        self.schema = schema
        self.period = max(float(period), group.width)
        self.pending: list[Window] = []
        self.j: int | None = None  # the period of the pending windows
        self.stats_out: Counter[str] = Counter()

    def _period(self, start: float) -> int:
        return math.floor(start / self.period + 1e-9)

    def add(self, windows: list[Window]) -> list[tuple[Window, ...]]:
        """Closed windows (in order) in; the periods they complete out, each as its windows."""
        out = []
        for w in windows:
            j = self._period(w.start)
            if self.j is not None and j != self.j:
                out.append(tuple(self.pending))
                self.pending = []
            self.j = j
            self.pending.append(w)
        if self.pending and self.j is not None:
            # the period's last window is [k_last*W, (k_last+1)*W), k_last the last window starting in it
            k_next = math.ceil((self.j + 1) * self.period / self.group.width - 1e-9)
            if k_next * self.group.width + self.group.lateness <= self.group.watermark:
                out.append(tuple(self.pending))
                self.pending, self.j = [], None
        return out

    def flush(self) -> list[tuple[Window, ...]]:
        out = [tuple(self.pending)] if self.pending else []
        self.pending, self.j = [], None
        return out

    def payloads(self, windows: tuple[Window, ...], seq: int) -> list[tuple[wire.Payload, bytes]]:
        """One period's windows, encoded: one payload, or several (cut by signal) if one would
        be over ``max_bytes``."""
        g = self.group
        j = self._period(windows[0].start)
        sids: list[np.ndarray] = []
        ks: list[np.ndarray] = []
        cols: dict[str, list[np.ndarray]] = {key: [] for key in self.stats}
        for w in windows:
            cells = w.signals
            assert isinstance(cells, Cells)
            sids.append(cells.sid)
            ks.append(np.full(len(cells.sid), round(w.start / g.width), np.int64))
            for key in self.stats:
                cols[key].append(cells.stats[key])
        sid = np.concatenate(sids)
        present = np.unique(sid)
        remap = np.zeros(len(g.names), np.int64)
        remap[present] = np.arange(len(present))
        table = wire.Table(tuple(g.names[i] for i in present.tolist()), np.concatenate(ks), remap[sid],
                           {key: np.concatenate(v) for key, v in cols.items()}).sorted()
        late = sum(w.late_samples for w in windows)
        oldest = min((w.late_oldest for w in windows if w.late_oldest is not None), default=None)
        payload = wire.Payload(g.vehicle, seq, g.group, g.width, j * self.period, (j + 1) * self.period, table,
                               late, oldest, res=self.res)
        data = wire.encode(payload, codec=self.codec, schema=self.schema)
        parts = 1
        while len(data) > self.max_bytes and parts < len(table.names):
            parts = min(len(table.names), parts * 2)
            pieces = wire.split(payload, parts)
            encoded = [wire.encode(p, codec=self.codec, schema=self.schema) for p in pieces]
            if max(map(len, encoded)) <= self.max_bytes or parts == len(table.names):
                self.stats_out["payloads_split"] += 1
                return list(zip(pieces, encoded))
        return [(payload, data)]


class Aggregation:
    """All window groups of a vehicle: selects signals and routes each to its group; and (with
    ``publish``) packs each group's closed windows into aggregates payloads per publish period."""

    def __init__(self, cfg: AggregatorConfig, vehicle: str, *, res: Mapping[str, wire.Resolution] | None = None,
                 max_bytes: int = 100_000) -> None:
        self.cfg = cfg
        def group(name: str, width: float) -> WindowAggregator:
            return WindowAggregator(width, vehicle, group=name, lateness=cfg.lateness_seconds,
                                    max_open_windows=cfg.max_open_windows)

        self.groups = {g.name: group(g.name, g.window_seconds) for g in cfg.groups}
        self.groups[DEFAULT_GROUP] = group(DEFAULT_GROUP, cfg.window_seconds)
        settings = {g.name: (g.publish_seconds or cfg.publish_seconds, g.stats or cfg.stats) for g in cfg.groups}
        settings[DEFAULT_GROUP] = (cfg.publish_seconds, cfg.stats)
        # with the DBC's resolutions, payloads number their signals in the DBC's schema
        self.schema = wire.register(wire.Schema.of(res)) if res else None
        self.publishers = {name: Publisher(a, period=settings[name][0], stats=settings[name][1], res=res or {},
                                           codec=cfg.codec, max_bytes=max_bytes, schema=self.schema)
                           for name, a in self.groups.items()}
        self.payload_seq = 0
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

    def add(self, batch: FlatBatch, watermark: float) -> list[Window]:
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

    def process(self, message: Signals | EndOfStream) -> list[Window]:
        """A signals or end_of_stream message in, the aggregates it completes out."""
        if isinstance(message, Signals):
            return self.add(message.batch, message.end)
        return self.flush()

    def flush(self) -> list[Window]:
        return self._sorted([m for a in self.groups.values() for m in a.flush()])

    def publish(self, message: Signals | EndOfStream) -> list[Aggregates]:
        """A signals or end_of_stream message in, the aggregates payloads it completes out (in
        event-time order, numbered across groups)."""
        windows = self.process(message)
        by_group: dict[str, list[Window]] = {}
        for w in windows:
            by_group.setdefault(w.group, []).append(w)
        done: list[tuple[Publisher, tuple[Window, ...]]] = []
        for name, publisher in self.publishers.items():
            periods = publisher.add(by_group.get(name, []))
            if isinstance(message, EndOfStream):
                periods += publisher.flush()
            done += [(publisher, p) for p in periods]
        done.sort(key=lambda d: (d[1][-1].end, d[0].group.group))
        out = []
        for publisher, period in done:
            self.payload_seq += 1
            for payload, data in publisher.payloads(period, self.payload_seq):
                out.append(Aggregates.of(payload, data))
        return out

    def _sorted(self, out: list[Window]) -> list[Window]:
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
        for publisher in self.publishers.values():
            total.update(publisher.stats_out)
        return total

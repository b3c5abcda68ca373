"""The aggregator: tumbling event-time windows of statistics per signal, computed with numpy.

Signals are selected by name patterns (``include`` / ``exclude``) and fall into window groups:
the first group whose pattern matches, else the default group. Window ``k`` of a group of length
``W`` covers event times ``[k*W, (k+1)*W)``; a sample at time ``t`` belongs to window
``floor(t / W)``.

A batch as the reader makes it (each signal's samples together, in time order) is cut into runs
of (signal, window) without a sort or a copy, each run's windows its group's, and the runs of
every group are reduced in one pass (``ufunc.reduceat``), then folded into their groups; a batch
that is not quite that (a name twice, a run out of order, a late or unsound sample) is routed to its groups
run by run and each group folds its own, sorting what needs it. Each open window keeps its
statistics in one 2-D array (a row per statistic, a column per signal), the windows a batch
opens in one array together, so a batch is folded in with a few vector operations: Python
loops run over windows, never over samples or (signal, window) cells. Partial results merge
exactly (counts, sums of squared deviations by Chan's formula), so the statistics do not
depend on how the stream was cut into batches.

A window closes when the stream's event time (the end of the latest batch; on a quiet live bus,
the reader's idle ticks) has passed its end plus ``lateness_seconds``, and at the end of the
stream. A sample for a window that has already closed is late: it is counted and reported in the
group's next aggregates message, never put into another window. At most ``max_open_windows``
windows per group stay open, so memory is bounded whatever the timestamps do.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from .. import wire
from . import arrays
from .config import AggregatorConfig
from .messages import MAX_EVENT_TIME, Aggregates, EndOfStream, FlatBatch, Signals, Window

DEFAULT_GROUP = "default"
MAX_MAGNITUDE = 1e100  # as decode.MAX_MAGNITUDE: a value beyond it is no measurement


_FIELDS = ("count", "mean", "m2", "min", "t_min", "max", "t_max", "first_t", "first", "last_t", "last")
COUNT, MEAN, M2, MIN, T_MIN, MAX, T_MAX, FIRST_T, FIRST, LAST_T, LAST = range(len(_FIELDS))
_ROW = {key: i for i, key in enumerate(_FIELDS)}
_EXT, _T_EXT = [MIN, MAX], [T_MIN, T_MAX]
assert (MIN, T_MIN, MAX, T_MAX, FIRST_T, FIRST, LAST_T, LAST) == tuple(range(MIN, len(_FIELDS)))  # pairs from MIN on
_SIGN = np.array([[1.0], [-1.0]])  # min as is, max negated: both the smaller wins
# an empty cell: no samples; min and max lose to any value, first and last to any time
_EMPTY = np.array([0.0, 0.0, 0.0, np.inf, np.inf, -np.inf, np.inf, np.inf, np.nan, -np.inf, np.nan])


def _empty(size: int) -> np.ndarray:
    """Statistics of no sample, for ``size`` signals."""
    out = np.empty((len(_FIELDS), size))
    out[...] = _EMPTY[:, None]
    return out


class _Window:
    """Running statistics of every signal of a group in one window: one 2-D array ``a``, a row
    per statistic (``_FIELDS``; the count as float64, exact below 2**53), a column per signal
    number of the group."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def grow(self, size: int) -> None:
        have = self.a.shape[1]
        if size > have:
            self.a = np.concatenate((self.a, _empty(size - have)), axis=1)

    def merge(self, sid: np.ndarray, r: np.ndarray) -> None:
        """Fold in partial statistics ``r`` (rows as ``a``'s) of signals ``sid`` (each at most
        once): Chan's formula for mean and squared deviations, earliest time on ties of min and
        max. The rows from ``MIN`` on are pairs of a value and its time, each pair taken from
        ``r`` or kept as a whole: which, worked out for the four pairs at once."""
        cur = self.a.take(sid, axis=1)
        n_a, n_b = cur[COUNT], r[COUNT]
        n = n_a + n_b
        delta = r[MEAN] - cur[MEAN]
        out = np.empty_like(cur)
        out[COUNT] = n
        out[MEAN] = cur[MEAN] + delta * n_b / n
        out[M2] = cur[M2] + (r[M2] + delta * delta * n_a * n_b / n)
        take = np.empty((4, len(sid)), dtype=bool)  # per pair (min, max, first, last): r's
        # min and max: the smaller value, the larger as the smaller negated (exact), or the
        # same value at an earlier time
        new, old = r[MIN:T_MAX:2] * _SIGN, cur[MIN:T_MAX:2] * _SIGN
        np.logical_or(new < old, (new == old) & (r[T_MIN:FIRST_T:2] < cur[T_MIN:FIRST_T:2]), out=take[:2])
        np.less(r[FIRST_T], cur[FIRST_T], out=take[2])
        np.greater_equal(r[LAST_T], cur[LAST_T], out=take[3])
        np.copyto(out[MIN:], cur[MIN:])
        np.copyto(out[MIN:], r[MIN:], where=take.repeat(2, axis=0))
        self.a[:, sid] = out


class Cells(Mapping[str, Mapping[str, float]]):
    """The statistics of a closed window: the window's store (a row per statistic, a column per
    signal number of its group), read in columns (``sid``, ``stats``: signals present, one array
    per statistic) or as ``{signal: {statistic: value}}`` only when someone asks (tests, tools):
    the aggregates payload is made from the store."""

    def __init__(self, names: list[str], a: np.ndarray) -> None:
        self.names, self.a = names, a
        self._cols: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._dict: dict[str, dict[str, float]] | None = None

    def _columns(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._cols is None:
            a = self.a
            present = np.flatnonzero(a[COUNT] > 0)
            count = a[COUNT, present]
            stats = {key: a[_ROW[key], present] for key in ("min", "max", "mean", "last", "first", "t_min", "t_max")}
            stats["count"] = count.astype(np.int64)
            stats["std"] = np.sqrt(np.maximum(a[M2, present], 0.0) / count)
            self._cols = present, stats
        return self._cols

    @property
    def sid(self) -> np.ndarray:
        return self._columns()[0]

    @property
    def stats(self) -> dict[str, np.ndarray]:
        return self._columns()[1]

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
    if bool(np.all(~same | (t[1:] >= t[:-1]))) and len(arrays.distinct(sid[np.append(True, ~same)])) == int((~same).sum()) + 1:
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
    out = _reduce(t, v, starts)
    r = dict(zip(_FIELDS, out))
    r["count"] = r["count"].astype(np.int64)
    r["window"], r["sid"] = k[starts], sid[starts]
    if order is None:  # pairs in (signal, window) order: into (window, signal) order
        pairs = np.lexsort((r["sid"], r["window"]))
        r = {key: value[pairs] for key, value in r.items()}
    return r


def _reduce(t: np.ndarray, v: np.ndarray, starts: np.ndarray, spread: bool = True, ext_times: bool = True) -> np.ndarray:
    """The statistics (rows as ``_FIELDS``) of each run of samples ``starts[i]:starts[i+1]`` (in
    time order, or sorted by time with ties in batch order). Without ``spread`` the squared
    deviations (``M2``), without ``ext_times`` the times of the min and max are NaN, not worked
    out (whoever publishes no ``std``, ``t_min`` or ``t_max`` needs none of them)."""
    n = len(t)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1:] = n
    counts = ends - starts
    out = np.empty((len(_FIELDS), len(starts)))
    out[COUNT] = counts
    mean = out[MEAN]
    np.divide(np.add.reduceat(v, starts), counts, out=mean)
    if spread:
        dev = v - mean.repeat(counts)
        out[M2] = np.add.reduceat(dev * dev, starts)
    else:
        out[M2] = np.nan
    np.minimum.reduceat(v, starts, out=out[MIN])
    np.maximum.reduceat(v, starts, out=out[MAX])
    if ext_times:  # the earliest time at which each run's min (max) occurs: both at once
        at_ext = np.where(v == out[_EXT].repeat(counts, axis=1), t, np.inf)
        out[_T_EXT] = np.minimum.reduceat(at_ext, starts, axis=1)
    else:
        out[_T_EXT] = np.nan
    last = ends - 1
    out[FIRST_T], out[FIRST] = t.take(starts), v.take(starts)
    out[LAST_T], out[LAST] = t.take(last), v.take(last)
    return out


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal ``ids`` starts, and its length."""
    n = len(ids)
    if not n:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(ids[1:], ids[:-1], out=new[1:])
    starts = new.nonzero()[0].astype(np.int64, copy=False)
    lengths = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = n - starts[-1]
    return starts, lengths


def _runs_in_order(t: np.ndarray, run_at: np.ndarray) -> bool:
    """Whether the samples of each run (starting at ``run_at``) are in time order (NaN: not)."""
    n = len(t)
    if n < 2:
        return True
    inorder = t[1:] >= t[:-1]  # NaN: False
    inorder[run_at[1:] - 1] = True
    return bool(np.count_nonzero(inorder) == n - 1)


def _cells(k: np.ndarray, run_at: np.ndarray) -> np.ndarray:
    """Where each (run, window) cell starts, of samples in windows ``k`` and runs at ``run_at``."""
    new = np.empty(len(k), dtype=bool)
    new[0] = True
    np.not_equal(k[1:], k[:-1], out=new[1:])
    new[run_at] = True
    return new.nonzero()[0]


def _unsound(r: np.ndarray) -> np.ndarray:
    """Which cells of statistics ``r`` (rows as ``_FIELDS``, each cell's samples in time order)
    hold a value beyond MAX_MAGNITUDE (min or max does; a NaN makes them NaN) or a time beyond
    MAX_EVENT_TIME (the first or the last is): sums that overflowed, or worse."""
    with np.errstate(invalid="ignore"):
        return ~((r[MIN] >= -MAX_MAGNITUDE) & (r[MAX] <= MAX_MAGNITUDE)) | \
            ~(np.abs(r[FIRST_T]) <= MAX_EVENT_TIME) | ~(np.abs(r[LAST_T]) <= MAX_EVENT_TIME)


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
        # the statistics worked out beyond those always kept (``_reduce``): all of them, unless
        # told that no one reads the others (``Aggregation(only_published=True)``)
        self.spread = self.ext_times = True

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
        newest = None
        if len(t):
            starts, lengths = _runs(sid)
            newest = self._fold_runs(sid[starts], lengths, t, v)
        if newest is None:
            newest = self._fold_any(sid, t, v)
        return self.advance(newest if watermark is None else max(watermark, newest))

    def add_runs(self, sid: np.ndarray, lengths: np.ndarray, t: np.ndarray, v: np.ndarray,
                 watermark: float | None = None) -> list[Window]:
        """Fold in samples given as runs: ``lengths[i]`` samples of signal ``sid[i]``, one after
        the other, each signal in one run (a batch as the reader makes it)."""
        newest = self._fold_runs(sid, lengths, t, v, distinct=True) if len(t) else None
        if newest is None:
            newest = self._fold_any(np.repeat(sid, lengths), t, v)
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
        for window in self.open.values():  # a window left open keeps its own store, not its batch's
            if window.a.base is not None:
                window.a = window.a.copy()
        return out

    def flush(self) -> list[Window]:
        """Close every open window (the source has ended)."""
        out = self._close(lambda k: True)
        if self._late and not out:
            self.stats["late_unreported"] += self._late
        return out

    def _fold_runs(self, sid: np.ndarray, lengths: np.ndarray, t: np.ndarray, v: np.ndarray,
                   distinct: bool = False) -> float | None:
        """The common case without a sort or a copy of the samples: runs of distinct signals
        (``distinct``: known to be), each in time order, every sample sound and none late.
        Folds them in and returns the newest time; or changes nothing and returns None (not
        that case: ``_fold_any``)."""
        keep = lengths > 0
        if np.count_nonzero(keep) < len(lengths):
            sid, lengths = sid[keep], lengths[keep]
        if not distinct and len(arrays.distinct(sid)) != len(sid):
            return None
        run_at = lengths.cumsum() - lengths
        if not _runs_in_order(t, run_at):
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            kf = np.floor(t / self.width)
            k = kf.astype(np.int64)
            if self.closed_through is not None and np.count_nonzero(kf.take(run_at) > self.closed_through) < len(run_at):
                return None  # late samples (or NaN times)
        starts = _cells(k, run_at)
        with np.errstate(invalid="ignore", over="ignore"):
            r = _reduce(t, v, starts, self.spread, self.ext_times)
        if np.count_nonzero(_unsound(r)):  # all this is thrown away
            return None
        self._merge(k.take(starts), sid.take(run_at.searchsorted(starts, side="right") - 1), r)
        return float(np.maximum.reduce(r[LAST_T]))

    def _fold_any(self, sid: np.ndarray, t: np.ndarray, v: np.ndarray) -> float:
        """Any samples: unsound ones dropped, late ones counted, the rest sorted into their
        windows (``window_reduce``) and folded in. Returns the newest sound sample's time."""
        with np.errstate(invalid="ignore"):
            sound = (np.abs(v) <= MAX_MAGNITUDE) & (np.abs(t) <= MAX_EVENT_TIME)  # NaN: False
        if not sound.all():  # no sum or square of a window may overflow (the reader drops these first)
            self.stats["dropped_samples"] += int(len(sound) - sound.sum())
            sid, t, v = sid[sound], t[sound], v[sound]
        newest = float(t.max()) if len(t) else -math.inf
        if self.closed_through is not None:
            late = np.floor(t / self.width) <= self.closed_through
            if late.any():
                n_late = int(late.sum())
                self.stats["late_samples"] += n_late
                self._late += n_late
                self._late_oldest = min(self._late_oldest, float(t[late].min()))
                keep = ~late
                sid, t, v = sid[keep], t[keep], v[keep]
        if len(t):
            r = window_reduce(sid, t, v, self.width)
            self._merge(r["window"], r["sid"], np.stack([r[key] for key in _FIELDS]).astype(np.float64))
        return newest

    def _merge(self, window: np.ndarray, sid: np.ndarray, r: np.ndarray) -> None:
        """Fold in the statistics ``r`` (rows as ``_FIELDS``) of cells (``window``, ``sid``),
        each pair at most once: the windows a batch opens get one store for all of them, the
        statistics put in place; the few already open merge theirs."""
        size = len(self.names)
        lo, hi = int(np.minimum.reduce(window)), int(np.maximum.reduce(window))
        if hi - lo < 4 * len(window) + 64:  # windows close together (as a batch's are): no sort
            seen = np.zeros(hi - lo + 1, dtype=bool)
            slot = window - lo
            seen[slot] = True
            ks = (seen.nonzero()[0] + lo).tolist()
            which = (seen.cumsum() - 1).take(slot)
        else:
            uniq, which = np.unique(window, return_inverse=True)
            ks = uniq.tolist()
        opened = [i for i, k in enumerate(ks) if k not in self.open]
        if opened:  # one store for them all: window j's signal i in column j * size + i
            store = _empty(size * len(opened))
            if len(opened) == len(ks):
                store[:, which * size + sid] = r
            else:
                place = np.empty(len(ks), np.int64)
                place.fill(-1)
                place[opened] = np.arange(len(opened))
                at = place.take(which)
                mine = at >= 0
                store[:, (at * size + sid).compress(mine)] = r.compress(mine, axis=1)
            for j, i in enumerate(opened):
                self.open[ks[i]] = _Window(store[:, j * size:(j + 1) * size])
        if len(opened) < len(ks):
            fresh = set(opened)
            for i, k in enumerate(ks):
                if i not in fresh:
                    cells = which == i
                    self.open[k].grow(size)
                    self.open[k].merge(sid.compress(cells), r.compress(cells, axis=1))

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
                    signals=Cells(self.names, window.a),
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
    from .decode import DbcDecoder

    every = DbcDecoder(dbc_paths).resolutions()
    return Resolutions({k: v for k, v in every.items() if "@sa*." not in k},
                       {k: v for k, v in every.items() if "@sa*." in k})


def register_dbc_schema(dbc_paths: Sequence[str]) -> wire.Schema:
    """The schema of the DBC files' signals (``dbc_resolutions``), registered, so that payloads
    numbering their signals in it decode in this process."""
    return wire.register(wire.Schema.of(dbc_resolutions(dbc_paths)))


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
        self._order = np.zeros(0, np.int64)  # the group's first len() signals in the schema's order

    def _in_schema_order(self, size: int) -> np.ndarray:
        """The group's signals ``0 .. size-1`` in the order ``wire.encode`` sends them in (the
        schema's, then those it does not have, in theirs): a table made in it needs no
        renumbering there."""
        if len(self._order) != size:
            assert self.schema is not None
            index, n_schema = self.schema.index, len(self.schema.names)
            rank = [index.get(name, n_schema + i) for i, name in enumerate(self.group.names[:size])]
            self._order = np.argsort(np.array(rank, np.int64), kind="stable")
        return self._order

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
        # the windows' stores, one after the other: the cells present, read signal by signal
        # (window by window within each), are in the table's order
        stores = []
        for w in windows:
            cells = w.signals
            assert isinstance(cells, Cells)
            stores.append(cells.a)
        size = max(a.shape[1] for a in stores)
        stores = [a if a.shape[1] == size else np.concatenate((a, _empty(size - a.shape[1])), axis=1) for a in stores]
        every = np.concatenate(stores, axis=1)
        present = every[COUNT].reshape(len(stores), size).T > 0  # per signal and window
        late = sum(w.late_samples for w in windows)
        oldest = min((w.late_oldest for w in windows if w.late_oldest is not None), default=None)
        ks = [round(w.start / g.width) for w in windows]

        def payload(table: wire.Table) -> wire.Payload:
            return wire.Payload(g.vehicle, seq, g.group, g.width, j * self.period, (j + 1) * self.period, table,
                                late, oldest, res=self.res)

        if self.schema is not None:
            # the signals in the order encode sends them in (the schema's): the same bytes,
            # without encode renumbering the table; cut (below) as the table in the group's
            # order would be, if one payload would be too large
            order = self._in_schema_order(size)
            rank, slot = present.take(order, axis=0).nonzero()
            whole = payload(self._table(every, size, ks, order.take(rank), slot, rank))
            data = wire.encode(whole, codec=self.codec, schema=self.schema)
            if len(data) <= self.max_bytes or len(whole.table.names) <= 1:
                return [(whole, data)]
        sid, slot = present.nonzero()
        first = payload(self._table(every, size, ks, sid, slot, sid))
        data = wire.encode(first, codec=self.codec, schema=self.schema)
        parts = 1
        while len(data) > self.max_bytes and parts < len(first.table.names):
            parts = min(len(first.table.names), parts * 2)
            pieces = wire.split(first, parts)
            encoded = [wire.encode(p, codec=self.codec, schema=self.schema) for p in pieces]
            if max(map(len, encoded)) <= self.max_bytes or parts == len(first.table.names):
                self.stats_out["payloads_split"] += 1
                return list(zip(pieces, encoded))
        return [(first, data)]

    def _table(self, every: np.ndarray, size: int, ks: list[int], sid: np.ndarray, slot: np.ndarray,
               number: np.ndarray) -> wire.Table:
        """The table of the cells present, signal ``sid[i]`` of window ``slot[i]``, in the order
        of ``number`` (each signal's number in the table's order), then window."""
        cells = every.take(slot * size + sid, axis=1)  # the statistics of every cell present, a row each
        first = np.empty(len(sid), dtype=bool)
        first[:1] = True
        np.not_equal(number[1:], number[:-1], out=first[1:])
        count = cells[COUNT]
        stats = {key: count.astype(np.int64) if key == "count" else
                 np.sqrt(np.maximum(cells[M2], 0.0) / count) if key == "std" else cells[_ROW[key]]
                 for key in self.stats}
        names = self.group.names
        table = wire.Table(tuple(names[i] for i in sid.compress(first).tolist()), np.array(ks, np.int64).take(slot),
                           first.cumsum() - 1, stats)
        if sorted(set(ks)) != ks:  # windows not in order (they come in order, as they close)
            table = table.sorted()
        return table


class Aggregation:
    """All window groups of a vehicle: selects signals and routes each to its group; and (with
    ``publish``) packs each group's closed windows into aggregates payloads per publish period."""

    def __init__(self, cfg: AggregatorConfig, vehicle: str, *, res: Mapping[str, wire.Resolution] | None = None,
                 max_bytes: int = 100_000, only_published: bool = False) -> None:
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
        self._groups = list(self.groups.values())
        if only_published:  # whoever reads only the payloads: a window's other statistics are NaN
            for name, a in self.groups.items():
                stats = self.publishers[name].stats
                a.spread, a.ext_times = "std" in stats, "t_min" in stats or "t_max" in stats
        self._spread = any(a.spread for a in self._groups)  # as ``_fold_together`` works out every group's
        self._ext_times = any(a.ext_times for a in self._groups)
        self._group_of: dict[str, str | None] = {}
        self._where: dict[str, tuple[int, int]] = {}  # name -> (group number, signal number)
        self._names: tuple[str, ...] | None = None  # the names of the last batch, and per name:
        self._route = self._local = np.zeros(0, np.int64)  # its group number, its signal number
        self._distinct = True
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
        if signal not in self._group_of:
            selected = any(fnmatch.fnmatchcase(signal, p) for p in self.cfg.include) and not any(
                fnmatch.fnmatchcase(signal, p) for p in self.cfg.exclude
            )
            group = None
            if selected:
                group = next((g.name for g in self.cfg.groups if any(fnmatch.fnmatchcase(signal, p) for p in g.signals)),
                             DEFAULT_GROUP)
            self._group_of[signal] = group
        return self._group_of[signal]

    def add(self, batch: FlatBatch, watermark: float) -> list[Window]:
        if batch.names != self._names:  # per name of the batch: its group (-1: not selected), its number there
            where = self._where
            pairs = [where.get(n) or self._place(n) for n in batch.names]
            self._names = batch.names
            self._route = np.array([p[0] for p in pairs], dtype=np.int64)
            self._local = np.array([p[1] for p in pairs], dtype=np.int64)
            self._distinct = len(set(batch.names)) == len(batch.names)
        if not len(batch):
            return self._sorted([m for aggregator in self._groups for m in aggregator.advance(watermark)])
        # each name's samples are together (FlatBatch): one run per name, routed as a whole
        starts, lengths = _runs(batch.ids)
        name = batch.ids.take(starts)
        group, sid = self._route.take(name), self._local.take(name)
        # one run per name (as FlatBatch promises), and names distinct: one run per signal
        distinct = self._distinct and int(np.bincount(name, minlength=1).max()) == 1
        unselected = group < 0
        if np.count_nonzero(unselected):
            self.stats["samples_not_selected"] += int(lengths[unselected].sum())
        if distinct:
            together = self._fold_together(batch.t, batch.v, starts, lengths, group, sid, watermark)
            if together is not None:
                return self._sorted(together)
        out = []
        for g, aggregator in enumerate(self._groups):
            runs = (group == g).nonzero()[0]
            if not len(runs):
                out += aggregator.advance(watermark)
                continue
            a, b = int(runs[0]), int(runs[-1])
            if b - a + 1 == len(runs):  # consecutive runs (all of them, with one group): a slice
                lo, hi = int(starts[a]), int(starts[b] + lengths[b])
                t, v = batch.t[lo:hi], batch.v[lo:hi]
            else:
                n = lengths.take(runs)
                take = (starts.take(runs) - (n.cumsum() - n)).repeat(n) + np.arange(int(n.sum()))
                t, v = batch.t.take(take), batch.v.take(take)
            if distinct:
                out += aggregator.add_runs(sid.take(runs), lengths.take(runs), t, v, watermark)
            else:  # a name twice in the batch, or a name's samples apart: a signal in several runs
                out += aggregator.add_samples(np.repeat(sid[runs], lengths[runs]), t, v, watermark)
        return self._sorted(out)

    def _fold_together(self, t: np.ndarray, v: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                       group: np.ndarray, sid: np.ndarray, watermark: float) -> list[Window] | None:
        """The common case, every group's runs at once (``WindowAggregator._fold_runs`` for all
        groups in one pass, the samples where the batch has them): runs of distinct signals,
        each in time order, every sample sound and none late. Folds them in and returns the
        windows closed; or changes nothing and returns None (not that case: each group folds
        its own). A run's windows are its group's; a run not selected is reduced too, and
        thrown away."""
        if not _runs_in_order(t, starts):
            return None
        widths = np.array([1.0, *(a.width for a in self._groups)])  # by group + 1 (0: not selected)
        closed = np.array([-math.inf, *(-math.inf if a.closed_through is None else a.closed_through for a in self._groups)])
        with np.errstate(invalid="ignore", over="ignore"):
            kf = np.floor(t / widths.take(group + 1).repeat(lengths))
            k = kf.astype(np.int64)
            if np.count_nonzero(kf.take(starts) > closed.take(group + 1)) < len(starts):
                return None  # late samples (or NaN times)
            cells = _cells(k, starts)
            r = _reduce(t, v, cells, self._spread, self._ext_times)
        run = starts.searchsorted(cells, side="right") - 1
        cell_group = group.take(run)
        if np.count_nonzero(_unsound(r) & (cell_group >= 0)):  # as ``_fold_runs``
            return None
        cell_k, cell_sid = k.take(cells), sid.take(run)
        out = []
        for g, aggregator in enumerate(self._groups):
            mine = (cell_group == g).nonzero()[0]
            if not len(mine):
                out += aggregator.advance(watermark)
                continue
            r_g = r.take(mine, axis=1)
            aggregator._merge(cell_k.take(mine), cell_sid.take(mine), r_g)
            out += aggregator.advance(max(watermark, float(np.maximum.reduce(r_g[LAST_T]))))
        return out

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
        for message in out:  # made by the groups just now, seen by no one yet: numbered in place
            self.seq += 1
            object.__setattr__(message, "seq", self.seq)
        return out

    def totals(self) -> Counter[str]:
        total = Counter(self.stats)
        for aggregator in self.groups.values():
            total.update(aggregator.stats)
        for publisher in self.publishers.values():
            total.update(publisher.stats_out)
        return total

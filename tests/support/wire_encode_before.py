"""telemetry.wire's encoder as it was at dd9d763 (before a payload's integer columns were written in
one pass and its statistics quantized once): the reference the tests compare ``wire.encode`` with,
byte for byte. Only the encoding half; the payload classes and the registered schemas are
telemetry.wire's own (unchanged). Its docstrings are as they were."""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from telemetry.wire import _SCHEMAS, Payload, Resolution, Schema, Table

VERSION = 3
MAGIC = b"TLMA"

CODECS = ("zlib", "none")  # zstd measured 7 % smaller at level 19 (docs/MESSAGES.md): not worth a native wheel

STATISTICS = ("count", "min", "max", "mean", "last", "std", "first", "t_min", "t_max")

VALUE_STATS = ("min", "max", "first", "last")  # exact, and equal in a collapsed cell

_MAX_EXACT = 2.0**52  # raw values beyond this are sent as float64

_REF_ORDER = ("mean", "min", "max", "first", "last")  # the first of these present is the reference

_OUTER = struct.Struct("<4sBBI")  # magic, version, codec, the body's uncompressed size

_ZDICT = (b'{"schema":"","extra":{"names":[],"res":[]},"as_float":[],"grid":[[0,12]]}'
          b'"thinned":{"factor":2,"from_width":1.0,"stats":["count","mean"]},"part":[0,2],'
          b'"late":{"samples":0,"oldest":null},'
          b'"stats":["count","min","max","mean","last","std","first","t_min","t_max"]}'
          b'{"vehicle":"","seq":1,"group":"default","width":1.0,"start":0.0,"end":60.0,'
          b'"stats":["count","min","max","mean"]}')

_MAX_GRID = 60  # an IEEE float signal on a grid finer than 2**-60 travels as float

_ROUND_GRID = 8  # layout 3: the mean of a signal on an inferred grid 2**-s, s >= 8, is rounded to it

_MAX_GRID_RAW = 2.0**40  # and one whose values on the grid are this large (a float32 needs 24 bits)


def _starts(sid: np.ndarray) -> np.ndarray:
    """True where a new signal's run of cells begins."""
    first = np.ones(len(sid), dtype=bool)
    if len(sid) > 1:
        np.not_equal(sid[1:], sid[:-1], out=first[1:])
    return first


def _delta(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    d = np.empty_like(x)
    if len(x):
        d[0] = x[0]
        np.subtract(x[1:], x[:-1], out=d[1:])
        d[first] = x[first]
    return d


def _quantize(table: Table, res: Mapping[str, Resolution], count: np.ndarray, collapsed: np.ndarray,
              by_grid: np.ndarray) -> np.ndarray:
    """Per name: its (scale, offset) if every exact statistic of it (and the mean of a cell of
    one sample) is on its grid, and every integer its other cells' statistics travel as fits
    its column, else NaN: a mean's sum of raw values ``S = count * (mean - offset) / scale`` an
    int64 (a microsecond timestamp of 1.7e15 in a window of 10,000 samples makes S 1.7e19: it
    would wrap), a std in steps a uint64 (but on an inferred grid, ``by_grid``, where std travels
    as float)."""
    single = count == 1
    n = len(table.names)
    pairs = [(r[0], r[1]) if r is not None and math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] != 0
             else (math.nan, 0.0) for r in map(res.get, table.names)]
    scale = np.array([r[0] for r in pairs], np.float64)
    offset = np.array([r[1] for r in pairs], np.float64)
    ok = ~np.isnan(scale)
    if len(table) and ok.any():
        sc, off = scale[table.sid], offset[table.sid]
        bad = np.zeros(n, dtype=bool)
        exact = [table.stats[s] for s in VALUE_STATS if s in table.stats]
        checks = [(np.stack(exact), sc, off, table.sid)] if exact else []  # every cell
        if "mean" in table.stats:
            checks.append((table.stats["mean"][single], sc[single], off[single], table.sid[single]))
        for x, s_, o_, sid in checks:
            with np.errstate(invalid="ignore", over="ignore"):
                q = np.rint((x - o_) / s_)
                miss = ~((q * s_ + o_ == x) & (np.abs(q) < _MAX_EXACT))
            if miss.ndim > 1:
                miss = miss.any(axis=0)
            bad[sid[miss & ok[sid]]] = True
        wide = ~collapsed
        with np.errstate(invalid="ignore", over="ignore"):
            if "mean" in table.stats:  # as ``encode`` computes S (NaN: never below the bound)
                total = count[wide] * ((table.stats["mean"][wide] - off[wide]) / sc[wide])
                bad[table.sid[wide][~(np.abs(total) < 2.0**63)]] = True
            if "std" in table.stats:
                steps_of = wide & ~by_grid[table.sid]
                steps = table.stats["std"][steps_of] / np.abs(sc[steps_of])
                bad[table.sid[steps_of][~(steps < 2.0**64)]] = True
        scale[bad] = np.nan
    return np.stack((scale, offset))


def _uvarints(u: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low first, the high bit set on every byte but a value's last."""
    u = np.asarray(u, np.uint64)
    if len(u) <= 4:  # a length, a count: numpy's calls would cost more than the bytes
        few = bytearray()
        for value in u.tolist():
            while value > 0x7F:
                few.append(value & 0x7F | 0x80)
                value >>= 7
            few.append(value)
        return bytes(few)
    top = int(u.max())
    if top <= 0x7F:  # every value one byte: the usual column of small offsets
        return u.astype(np.uint8).tobytes()
    width = (top.bit_length() + 6) // 7  # bytes of the largest value
    groups = np.empty((len(u), width), np.uint8)  # each value's 7-bit groups, low first
    longer = np.empty((len(u), width), bool)  # whether a value has more after each group
    rest = u.copy()
    for j in range(width):
        groups[:, j] = rest & np.uint64(0x7F)
        rest >>= np.uint64(7)
        np.greater(rest, 0, out=longer[:, j])
    groups[longer] |= 0x80
    keep = np.empty_like(longer)  # a value's bytes: its first, and one more after each that has more
    keep[:, 0] = True
    keep[:, 1:] = longer[:, :-1]
    return groups[keep].tobytes()


def _varints(x: np.ndarray) -> bytes:
    """Signed integers, zigzag (0, -1, 1, -2, ... as 0, 1, 2, 3, ...) then LEB128: a small value
    is one byte whatever the column's largest."""
    x = np.asarray(x, np.int64)
    return _uvarints(((x << 1) ^ (x >> 63)).view(np.uint64))


def _offsets(x: np.ndarray) -> bytes:
    """A statistic relative to the reference: its sign is most often the same for every cell
    (``min`` at or below the mean, ``max`` at or above), so a byte says it once (1: none
    negative, 2: none positive, sent negated; 0: zigzag) and the values follow unsigned."""
    if not len(x) or x.min() >= 0:
        return b"\x01" + _uvarints(x.astype(np.uint64))
    if x.max() <= 0:
        return b"\x02" + _uvarints((-x).astype(np.uint64))
    return b"\x00" + _varints(x)


def _floats2(x: np.ndarray) -> bytes:
    """Float values: a type byte (4: float32, when every one is one; 8: float64), then the values
    byte-transposed (every value's first byte, then every second byte, ...): the sign and
    exponent bytes of a signal's values are alike, and deflate finds them together."""
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = x.astype("<f4")
    wide = not np.array_equal(narrow.astype(np.float64), x, equal_nan=True)
    data = x.astype("<f8") if wide else narrow
    width = 8 if wide else 4
    return bytes((width,)) + data.view(np.uint8).reshape(-1, width).T.tobytes()


def _split_delta(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """A column delta-coded along time per signal, as each signal's first value, then the deltas."""
    d = _delta(x, first)
    return np.concatenate((d[first], d[~first]))


def _first_window(start: float, width: float) -> int:
    """The index of the window a period starts with (a period starts on a window's start)."""
    k = start / width
    return round(k) if abs(k) < 2.0**62 else 0


def _grid(x: np.ndarray) -> int | None:
    """The smallest s >= 0 such that every value times 2**s is an integer (an IEEE float signal
    decoded from a sensor's integer, such as raw / 4096), or None if none is fine enough."""
    x = np.abs(x[x != 0])
    if not len(x):
        return 0
    if not np.isfinite(x).all():
        return None
    mant, exp = np.frexp(x)
    m = (mant * 2.0**53).astype(np.int64)  # exact: 53 bits
    low = np.log2((m & -m).astype(np.float64)).astype(np.int64)  # trailing zero bits
    s = max(0, int(-(exp - 53 + low).min()))
    return s if s <= _MAX_GRID else None


def _grids(t: Table, res: Mapping[str, Resolution], count: np.ndarray, rounded: bool = False) -> dict[int, int]:
    """Per signal without a resolution: the power-of-two grid its values are on in this payload,
    if every exact statistic is on it and every mean is a sum of samples on it (so the mean
    travels as exactly as a DBC signal's); with ``rounded`` (layout 3), a grid of ``2**-8`` or
    finer needs no more than the exact statistics: the mean travels rounded to it."""
    out: dict[int, int] = {}
    candidates = [i for i, n in enumerate(t.names) if res.get(n) is None]
    if not candidates:
        return out
    exact = [t.stats[s] for s in VALUE_STATS if s in t.stats]
    single = count == 1
    bounds = np.searchsorted(t.sid, np.arange(len(t.names) + 1))  # the table is by signal, then window
    for i in candidates:
        cells = slice(int(bounds[i]), int(bounds[i + 1]))
        values = [x[cells] for x in exact]
        if "mean" in t.stats:
            values.append(t.stats["mean"][cells][single[cells]])
        found = np.concatenate(values) if values else np.zeros(0)
        if not len(found):
            continue  # nothing to infer a grid from
        s = _grid(found)
        if s is None or not (np.abs(found) * 2.0**s < _MAX_GRID_RAW).all():
            continue  # a grid that fine is no sensor's: the values are decimals, not integers scaled
        if "mean" in t.stats and not (rounded and s >= _ROUND_GRID):
            # each cell's sum of raw values must be a whole number, exact, and give back the very
            # mean (as the decoder computes it) bit for bit; not where the mean travels rounded
            # to the grid (layout 3, ``rounded``): there it is within half a step however the
            # aggregator folded its float sums, and the grid is the same whatever the batches
            mean, n = t.stats["mean"][cells], count[cells]
            with np.errstate(invalid="ignore", over="ignore"):
                total = n * mean * 2.0**s
                whole = np.rint(total)
                if not ((np.abs(total - whole) <= 1e-6) & (np.abs(total) < _MAX_EXACT)).all():
                    continue
                q = np.floor_divide(whole, n)
                if not np.array_equal((q + (whole - q * n) / n) * 2.0**-s + 0.0, mean):
                    continue
        out[i] = s
    return out


def _renumbered(t: Table, order: np.ndarray) -> Table:
    """The table with its signals renumbered: signal ``order[i]`` becomes ``i``; its cells
    ordered by signal, then window, as ``Table.sorted`` would: each signal's block of cells
    moved as a whole when the table is in that order already (no sort of the cells)."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    names = tuple(t.names[i] for i in order.tolist())
    sid = t.sid
    if len(sid) > 1 and not ((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (t.window[1:] > t.window[:-1]))).all():
        return Table(names, t.window, inverse[sid], t.stats).sorted()
    bounds = np.searchsorted(sid, np.arange(len(order) + 1))
    n = np.diff(bounds)[order]
    take = np.repeat(bounds[:-1][order] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    return Table(names, t.window[take], np.repeat(np.arange(len(order), dtype=np.int64), n),
                 {k: v[take] for k, v in t.stats.items()})


def encode(p: Payload, *, codec: str = "zlib", level: int | None = None, schema: Schema | None = None,
           layout: int = VERSION) -> bytes:
    """The payload as bytes (layout 3; ``layout=2`` writes the previous one, for tests of the
    decoder): ``TLMA``, version, codec, the body's size, then the compressed body: the header
    (JSON), the signal dictionary (JSON), then the columns (docs/MESSAGES.md)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if layout not in (2, 3):
        raise ValueError(f"encode writes layout 2 or 3, not {layout!r}")
    if schema is None and p.schema is not None:
        schema = _SCHEMAS.get(p.schema)
    t = p.table
    where: list[int] = []  # each name's place in the schema, -1 if it has none
    if schema is not None:  # signals in the schema's order (so runs say which), the others after
        places = schema.index
        where = [places.get(n, -1) for n in t.names]
        n_schema = len(schema.names)
        rank = np.array([w if w >= 0 else n_schema + i for i, w in enumerate(where)], np.int64)
        if len(rank) and (np.diff(rank) < 0).any():
            order = np.argsort(rank, kind="stable")
            t = _renumbered(t, order)
            where = [where[i] for i in order.tolist()]
    for stat in t.stats:
        if stat not in STATISTICS:
            raise ValueError(f"unknown statistic {stat!r}")
    if "count" not in t.stats:
        raise ValueError("a windows payload always carries 'count'")
    stats = [x for x in STATISTICS if x in t.stats]
    count = t.stats["count"].astype(np.int64)
    # each name's resolution: the schema's if it has the name, else what the payload's ``res`` says
    # (its ``get`` may know names no schema lists: a J1939 signal's, whatever its source address)
    if schema is not None:
        res = {n: schema.res[w] if w >= 0 else p.res.get(n) for n, w in zip(t.names, where)}
    else:
        res = {n: p.res.get(n) for n in t.names}
    grids = _grids(t, res, count, rounded=layout == 3 and not p.thinned)
    inferred = dict(res)
    for i, s in grids.items():
        inferred[t.names[i]] = (2.0**-s, 0.0)
    if "min" in t.stats and "max" in t.stats:
        collapsed = (count == 1) | (t.stats["min"] == t.stats["max"])
    else:
        collapsed = count == 1
    by_grid = np.zeros(len(t.names), bool)
    by_grid[list(grids)] = True
    scale, offset = _quantize(t, inferred, count, collapsed, by_grid)
    exact = ~np.isnan(scale)
    head: dict[str, Any] = {"vehicle": p.vehicle, "seq": p.seq, "group": p.group, "width": p.width,
                            "start": p.start, "end": p.end, "stats": stats}
    if p.late_samples or p.late_oldest is not None:
        head["late"] = {"samples": p.late_samples, "oldest": p.late_oldest}
    if p.part != (0, 1):
        head["part"] = list(p.part)
    if p.thinned:
        head["thinned"] = dict(p.thinned)
    dbc_res = [[sc_i, off_i] if ok and i not in grids else None
               for i, (sc_i, off_i, ok) in enumerate(zip(scale.tolist(), offset.tolist(), exact.tolist()))]
    dictionary: dict[str, Any]
    runs = b""
    if schema is None:
        dictionary = {"names": list(t.names), "res": dbc_res}
    else:
        # names by their place in the schema; the few it does not have, by name; and which
        # signals go as float in this payload although the schema gives them a resolution
        index = np.array(where, np.int64)
        extra = np.flatnonzero(index < 0).tolist()
        present = np.zeros(len(schema.names), np.int8)
        present[index[index >= 0]] = 1
        edges = np.flatnonzero(np.diff(np.concatenate(([0], present, [0]))))
        runs = _uvarints(np.diff(np.concatenate(([0], edges))).astype(np.uint64))
        dictionary = {"schema": schema.id}
        if extra:
            dictionary["extra"] = {"names": [t.names[i] for i in extra], "res": [dbc_res[i] for i in extra]}
        as_float = [i for i, w in enumerate(where) if w >= 0 and not exact[i] and schema.res[w] is not None]
        if as_float:
            dictionary["as_float"] = as_float
    on_grid = [[i, s] for i, s in grids.items() if exact[i]]
    if on_grid and layout == 2:
        dictionary["grid"] = on_grid
    sections: list[bytes] = [_json(head), _json(dictionary)]
    if schema is not None:
        sections.append(runs)
    if layout == 3:  # the grids as a count column: position (from the previous one's), s; ...
        flat = np.asarray(on_grid, np.int64).reshape(-1, 2)
        flat[1:, 0] -= flat[:-1, 0].copy()
        sections.append(_uvarints(flat.ravel().astype(np.uint64)))
    sid, window = t.sid, t.window
    n_sig = len(t.names)
    # the cells of a signal (its windows and their counts) are those of an earlier signal more
    # often than not (signals of one CAN message decode from the same frames): say which
    bounds = np.searchsorted(sid, np.arange(n_sig + 1))
    same_list = [0] * n_sig
    seen: dict[tuple[bytes, bytes], int] = {}
    windows, counts = window.astype(np.int64).tobytes(), count.tobytes()  # a signal's: 8 bytes a cell
    for i, (a, b) in enumerate(zip((8 * bounds[:-1]).tolist(), (8 * bounds[1:]).tolist())):
        key = (windows[a:b], counts[a:b])
        if key in seen:
            same_list[i] = i - seen[key]
        seen[key] = i
    same = np.array(same_list, np.int64)
    own = same == 0
    mine = own[sid]
    first = _starts(sid)
    k0 = int(window.min()) if len(window) else 0
    # the first window's index, from the period's first: a small number (the header has the start)
    sections.append(_varints(np.asarray([k0 - _first_window(p.start, p.width)], np.int64)))
    sections.append(_uvarints(same.astype(np.uint64)))
    sections.append(_uvarints(np.diff(bounds)[own].astype(np.uint64)))
    sections.append(_varints(_split_delta(window[mine] - k0, first[mine])))
    sections.append(_varints(_split_delta(count[mine], first[mine])))
    sections.append(np.packbits(collapsed).tobytes())
    wide = ~collapsed
    cell_exact = exact[sid]
    ints, floats = wide & cell_exact, wide & ~cell_exact
    sc = np.where(cell_exact, scale[sid], 1.0)
    off = np.where(cell_exact, offset[sid], 0.0)
    start = window * p.width
    ref = next((x for x in _REF_ORDER if x in t.stats), None)

    def q(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            r = np.rint((values[cells] - off[cells]) / sc[cells])
        return np.where(np.isfinite(r), r, 0).astype(np.int64)

    def us(values: np.ndarray, cells: np.ndarray) -> bytes:
        with np.errstate(invalid="ignore", over="ignore"):
            r = np.rint((values[cells] - start[cells]) * 1e6)
        return _varints(np.where(np.isfinite(r), r, 0).astype(np.int64))

    if ref is not None:
        # a collapsed cell: one value (an exact statistic's, if there is one), along time
        one = t.stats[next(x for x in (*VALUE_STATS, "mean") if x in t.stats)]
        c_int, c_float = collapsed & cell_exact, collapsed & ~cell_exact
        sections.append(_varints(_split_delta(q(one, c_int), _starts(sid[c_int]))))
        sections.append(_floats2(one[c_float]))
        # the reference statistic of the other cells along time, the rest relative to it. The
        # mean as the exact sum of raw values S: floor(S / count) is the reference, S mod count
        # travels too (so the mean is exact, and the same however the samples were batched)
        if ref == "mean":
            # layout 3: the mean rounded to the step (within half a step), but where it travels
            # exact (``_exact_means``) as in layout 2
            coarse = [i for i, s in grids.items() if s < _ROUND_GRID]
            summed = _exact_means(ints, sid, coarse, len(t.names), p.thinned, layout)
            # Both from the exact sum of raw values S (whole: the same however the samples were
            # batched), the rounding in integers (half up), so that the rounded mean does not
            # depend on how the aggregator folded its float sums either
            with np.errstate(invalid="ignore", over="ignore"):
                total = np.rint(count[ints] * ((t.stats["mean"][ints] - off[ints]) / sc[ints]))
            total = np.where(np.isfinite(total), total, 0).astype(np.int64)
            n = count[ints]
            whole, rest = np.divmod(total, n)  # floor((2S + n) / 2n) without 2S, which would wrap past 2**62
            ref_q = np.where(summed[ints], whole, whole + (2 * rest >= n))
            sections.append(_varints(_split_delta(ref_q, _starts(sid[ints]))))
            sections.append(_uvarints(rest[summed[ints]].astype(np.uint64)))
        else:
            ref_q = q(t.stats[ref], ints)
            sections.append(_varints(_split_delta(ref_q, _starts(sid[ints]))))
        sections.append(_floats2(t.stats[ref][floats]))
        for stat in ("mean", "min", "max", "first", "last"):
            if stat in t.stats and stat != ref:
                sections.append(_offsets(q(t.stats[stat], ints) - ref_q))
                sections.append(_floats2(t.stats[stat][floats]))
    if "std" in t.stats:  # in steps of the DBC's resolution; as float for the others (an inferred grid too)
        steps_of, as_is = ints & ~by_grid[sid], wide & (~cell_exact | by_grid[sid])
        with np.errstate(invalid="ignore", over="ignore"):
            steps = np.rint(t.stats["std"][steps_of] / np.abs(sc[steps_of]))
        sections.append(_uvarints(np.where(np.isfinite(steps), np.maximum(steps, 0), 0).astype(np.uint64)))
        sections.append(_floats2(t.stats["std"][as_is]))
    if "t_min" in t.stats or "t_max" in t.stats:
        sections.append(us(t.stats["t_min" if "t_min" in t.stats else "t_max"], collapsed))
        for stat in ("t_min", "t_max"):
            if stat in t.stats:
                sections.append(us(t.stats[stat], wide))
    body = b"".join(_uvarints(np.asarray([len(x)], np.uint64)) + x for x in sections)
    return _OUTER.pack(MAGIC, layout, CODECS.index(codec), len(body)) + _compress(body, codec, level)


def _exact_means(ints: np.ndarray, sid: np.ndarray, on_grid: Sequence[int], n_sig: int,
                 thinned: Mapping[str, Any] | None, layout: int) -> np.ndarray:
    """Per cell: whether its mean travels as the exact sum of its raw values (``floor(S /
    count)``, then ``S mod count``) rather than rounded to the step. Layout 2: every cell. Layout
    3: the cells of a signal on an inferred grid coarser than ``2**-_ROUND_GRID`` (``on_grid``:
    a float signal whose values happen to be whole numbers has no step to round to), and every
    cell of a thinned payload (its means are sums of means already rounded: whole steps, sent
    exactly, so the mean stays within half a step of the samples' whatever the thinning)."""
    if layout == 2 or thinned:
        return ints.copy()
    by_grid = np.zeros(n_sig, bool)
    by_grid[list(on_grid)] = True
    return ints & by_grid[sid]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _compress(body: bytes, codec: str, level: int | None) -> bytes:
    if codec == "zlib":  # layouts 2 and 3: raw deflate with the layout's preset dictionary
        z = zlib.compressobj(9 if level is None else level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
        return z.compress(body) + z.flush()
    return body

"""The compact wire format of aggregates, shared by the device (encode) and the cloud (decode).

One payload carries the windows of one window group over one publish period, as columns of
(window, signal) *cells* (docs/MESSAGES.md, "windows"). Each signal's values are integers at the
signal's DBC resolution (``raw = (value - offset) / scale``), delta-coded along time, so a signal
that barely moves costs a few bits per window; a cell whose statistics collapse (one sample, or
``min == max``) carries one value; names travel once per payload (or as runs over the DBC's
schema); the signals of one CAN message share their window and count columns; integers are
varints; an IEEE float signal whose values sit on a power-of-two grid travels as integers too;
the body is raw deflate with a preset dictionary (layout 3; decode also reads layouts 1 and 2).

Exactness: ``min``, ``max``, ``first``, ``last`` and a collapsed cell's value come back bit for
bit (the encoder checks every one and sends a signal whose values are not on its DBC grid, or
are too large for the integers they would travel as, as float64 instead); ``mean`` within half a DBC step (layout 3: it travels rounded to the step; a
float signal on an inferred grid ``2**-s``, ``s >= 8``, to that grid, within half its step and
``1/(2n)`` of a step more where the window's samples are finer than the grid, which is inferred
from the exact statistics alone: their sum is rounded to the grid before the mean is; exact,
from its sum of raw values, on a coarser grid and in a thinned payload); ``std`` within half a step;
``t_min``/``t_max`` to the microsecond.

This module needs numpy and the standard library only , so the
cloud-side decoder runs wherever numpy does.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import math
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"TLMA"
VERSION = 3  # the layout encode writes; decode reads 1, 2 and 3 (a spool may hold any)
READS = (1, 2, 3)
KIND = "aggregates"
CONTENT_TYPE = "application/vnd.telemetry.windows"  # MQTT 5 content type of a payload

ROW_COLUMNS = ("vehicle", "group", "window_start", "window_end", "signal", "statistic", "value")
STATISTICS = ("count", "min", "max", "mean", "last", "std", "first", "t_min", "t_max")
DEFAULT_STATS = ("count", "min", "max", "mean")
CODECS = ("zlib", "none")  # zstd measured 7 % smaller at level 19 (docs/MESSAGES.md): not worth a native wheel
VALUE_STATS = ("min", "max", "first", "last")  # exact, and equal in a collapsed cell
_LEN = struct.Struct("<I")
_INTS = (np.int8, np.int16, np.int32, np.int64)
_INT_BOUNDS = tuple((int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in _INTS)
_MAX_EXACT = 2.0**52  # raw values beyond this are sent as float64


class WireError(ValueError):
    """A payload that is not a valid windows payload, with the reason."""


Resolution = tuple[float, float] | None  # (scale, offset) from the DBC; None: float64 on the wire


@dataclass(frozen=True)
class Schema:
    """Every signal of a vehicle's DBC files, sorted, with its resolution: a payload names its
    signals by their number in it instead of by name (a 200-signal dictionary costs a kilobyte
    per payload). Both ends build it from the same DBC files (``aggregator.dbc_resolutions``);
    its ``id``, a hash of the list, says whether they did. Signals outside it travel by name."""

    names: tuple[str, ...]
    res: tuple[Resolution, ...]

    @classmethod
    def of(cls, res: Mapping[str, Resolution]) -> Schema:
        names = tuple(sorted(res))
        return cls(names, tuple(res[n] for n in names))

    def to_json(self) -> str:
        """The schema as a file (what the cloud decoder is deployed with, instead of the DBC)."""
        return json.dumps({"id": self.id, "names": list(self.names), "res": [list(r) if r else None for r in self.res]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Schema:
        data = json.loads(text)
        schema = cls(tuple(data["names"]), tuple((float(r[0]), float(r[1])) if r else None for r in data["res"]))
        if data.get("id") not in (None, schema.id):
            raise WireError(f"schema file says id {data.get('id')!r} but its signals make {schema.id!r}")
        return schema

    @property
    def id(self) -> str:
        cached = self.__dict__.get("_id")
        if cached is None:
            text = json.dumps([list(self.names), [list(r) if r else None for r in self.res]], separators=(",", ":"))
            cached = hashlib.sha256(text.encode()).hexdigest()[:16]
            object.__setattr__(self, "_id", cached)
        return cached

    @property
    def index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_index", cached)
        return cached


_SCHEMAS: dict[str, Schema] = {}


def register(schema: Schema) -> Schema:
    """Make ``schema`` known to ``decode`` in this process (a component or a tool that has the
    vehicle's DBC files registers theirs)."""
    _SCHEMAS[schema.id] = schema
    return schema


@dataclass(frozen=True)
class Table:
    """Statistics of (window, signal) cells in columns, ordered by signal, then window."""

    names: tuple[str, ...]
    window: np.ndarray  # int64: the window's index k (it covers [k*width, (k+1)*width))
    sid: np.ndarray  # int64: index into names
    stats: Mapping[str, np.ndarray]  # statistic -> float64 per cell (count: int64)

    def __len__(self) -> int:
        return int(self.window.shape[0])

    @classmethod
    def empty(cls, stats: Sequence[str] = STATISTICS) -> Table:
        return cls((), np.empty(0, np.int64), np.empty(0, np.int64),
                   {s: np.empty(0, np.int64 if s == "count" else np.float64) for s in stats})

    def sorted(self) -> Table:
        order = np.lexsort((self.window, self.sid))
        return Table(self.names, self.window[order], self.sid[order], {k: v[order] for k, v in self.stats.items()})

    def select(self, stats: Sequence[str]) -> Table:
        return Table(self.names, self.window, self.sid, {s: self.stats[s] for s in stats})


def payload_key(group: str, start: float, part: tuple[int, int]) -> str:
    """A payload's identity (``Payload.key``): its group, its period's start, its part if cut."""
    i, n = part
    return f"{group}/{start!r}" + (f"/{i}of{n}" if n > 1 else "")


@dataclass(frozen=True)
class Payload:
    """A decoded (or to-be-encoded) aggregates payload: its header and its cells."""

    vehicle: str
    seq: int
    group: str
    width: float  # window length, seconds (after thinning: the thinned length)
    start: float  # the publish period [start, end) the windows fall in
    end: float
    table: Table
    late_samples: int = 0
    late_oldest: float | None = None
    part: tuple[int, int] = (0, 1)  # (i, n): a period too big for one publish is split by signal
    thinned: Mapping[str, Any] | None = None  # {"factor": f, "from_width": w, "stats": [...]} when thinned
    res: Mapping[str, Resolution] = field(default_factory=dict)
    schema: str | None = None  # the id of the schema its signals were numbered in (decoded payloads)

    @property
    def key(self) -> str:
        """The identity the cloud de-duplicates by: the same however often it is produced or sent."""
        return payload_key(self.group, self.start, self.part)

    @property
    def stats(self) -> tuple[str, ...]:
        return tuple(self.table.stats)

    def rows(self) -> Iterator[tuple[str, str, float, float, str, str, float]]:
        """(vehicle, group, window start, window end, signal, statistic, value), one per value."""
        t = self.table
        starts = (t.window * self.width).tolist()
        names = [t.names[i] for i in t.sid.tolist()]
        cols = {s: v.tolist() for s, v in t.stats.items()}
        for i, start in enumerate(starts):
            for stat, values in cols.items():
                yield self.vehicle, self.group, start, start + self.width, names[i], stat, values[i]

    def columns(self) -> dict[str, np.ndarray]:
        """Its rows as columns (``ROW_COLUMNS``: one row per window, signal and statistic),
        without a Python object per value: what CSV, Parquet and the cloud decoder write."""
        t = self.table
        stats = list(t.stats)
        n, m = len(t), len(stats)
        start = t.window * self.width
        names = np.asarray(t.names, dtype=object)
        return {
            "vehicle": np.full(n * m, self.vehicle, dtype=object),
            "group": np.full(n * m, self.group, dtype=object),
            "window_start": np.repeat(start, m),
            "window_end": np.repeat(start + self.width, m),
            "signal": np.repeat(names[t.sid] if n else np.empty(0, object), m),
            "statistic": np.tile(np.asarray(stats, dtype=object), n),
            "value": np.stack([t.stats[s].astype(np.float64) for s in stats], axis=1).ravel() if n else np.empty(0),
        }

    def window_messages(self) -> list[dict[str, Any]]:
        """Each window as a ``window`` message (messages.Window's JSON form: ``window``,
        ``signals``; the payload's ``seq`` and ``late`` on each): what tools and
        tests compare."""
        late = {"samples": self.late_samples, "oldest": self.late_oldest}
        return [{"v": 1, "kind": "window", "vehicle": self.vehicle, "seq": self.seq, "group": self.group,
                 "window": {"start": start, "end": start + self.width}, "signals": dict(sorted(signals.items())),
                 "late": late}
                for start, signals in sorted(self.windows().items())]

    def windows(self) -> dict[float, dict[str, dict[str, float]]]:
        """{window start: {signal: {statistic: value}}}: the readable form (tests, tools)."""
        out: dict[float, dict[str, dict[str, float]]] = {}
        for _, _, start, _, name, stat, value in self.rows():
            out.setdefault(start, {}).setdefault(name, {})[stat] = value
        return out


# -- encoding ------------------------------------------------------------------------------------


def _starts(sid: np.ndarray) -> np.ndarray:
    """True where a new signal's run of cells begins."""
    first = np.empty(len(sid), dtype=bool)
    first[:1] = True
    np.not_equal(sid[1:], sid[:-1], out=first[1:])
    return first


def _undelta(d: np.ndarray, first: np.ndarray) -> np.ndarray:
    if not len(d):
        return d
    c = np.cumsum(d)
    starts = np.flatnonzero(first)
    base = c[starts] - d[starts]
    return c - base[np.cumsum(first) - 1]


def _ints(x: np.ndarray) -> bytes:
    """An int64 array in the narrowest integer type that holds it: a type code, then the data."""
    code = len(_INTS) - 1
    if len(x):
        lo, hi = int(x.min()), int(x.max())
        code = next(i for i, bound in enumerate(_INT_BOUNDS) if bound[0] <= lo and hi <= bound[1])
    else:
        code = 0
    return bytes((code,)) + x.astype(np.dtype(_INTS[code]).newbyteorder("<"), copy=False).tobytes()


def _floats(x: np.ndarray) -> bytes:
    """Float values: float32 when every one of them is one (IEEE float signals of 32 bits are
    the common case), else float64; a type byte (4 or 8) first."""
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = x.astype("<f4")
    if np.array_equal(narrow.astype(np.float64), x, equal_nan=True):
        return b"\x04" + narrow.tobytes()
    return b"\x08" + x.astype("<f8").tobytes()


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body, self.at = body, 0

    def section(self) -> bytes:
        if self.at + _LEN.size > len(self.body):
            raise WireError("payload body ends early")
        (n,) = _LEN.unpack_from(self.body, self.at)
        self.at += _LEN.size
        if self.at + n > len(self.body):
            raise WireError("payload body ends early")
        out = self.body[self.at:self.at + n]
        self.at += n
        return out

    def ints(self, count: int) -> np.ndarray:
        raw = self.section()
        if not raw or raw[0] >= len(_INTS):
            raise WireError("payload has an integer column of unknown type")
        dtype = np.dtype(_INTS[raw[0]]).newbyteorder("<")
        if len(raw) - 1 != count * dtype.itemsize:
            raise WireError(f"payload integer column of {len(raw) - 1} bytes, {count} values expected")
        return np.frombuffer(raw, dtype, count, 1).astype(np.int64)

    def floats(self, count: int) -> np.ndarray:
        raw = self.section()
        if not raw or raw[0] not in (4, 8) or len(raw) - 1 != raw[0] * count:
            raise WireError(f"payload float column of {len(raw)} bytes, {count} values expected")
        return np.frombuffer(raw, "<f4" if raw[0] == 4 else "<f8", count, 1).astype(np.float64)


def _quantize(table: Table, res: Mapping[str, Resolution], count: np.ndarray, collapsed: np.ndarray,
              by_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per name: its (scale, offset) if every exact statistic of it (and the mean of a cell of
    one sample) is on its grid, and every integer its other cells' statistics travel as fits
    its column, else NaN: a mean's sum of raw values ``S = count * (mean - offset) / scale`` an
    int64 (a microsecond timestamp of 1.7e15 in a window of 10,000 samples makes S 1.7e19: it
    would wrap), a std in steps a uint64 (but on an inferred grid, ``by_grid``, where std travels
    as float). And per cell, what ``encode`` sends of them, computed once for the check and the
    columns (anything in a cell of a name without a resolution): each exact statistic's and the
    mean's raw value ``rint((x - offset) / scale)`` by statistic, S as ``"sum"``, the std in
    steps ``std / |scale|`` as ``"steps"``."""
    single = count == 1
    scale, offset = _scales(tuple(map(res.get, table.names)))
    keys = [s for s in (*VALUE_STATS, "mean") if s in table.stats]
    if not len(table) or not np.count_nonzero(scale == scale):  # no cell could travel as integers
        nothing = np.zeros(len(table))
        return scale, offset, {key: nothing for key in (*keys, "sum", "steps")}
    sid = table.sid
    sc, off = scale.take(sid), offset.take(sid)
    cells: dict[str, np.ndarray] = {}
    bad = None  # per cell: its name's values do not fit
    with np.errstate(invalid="ignore", over="ignore"):
        if keys:  # every exact statistic of every cell; the mean of a cell of one sample
            x = np.array([table.stats[s] for s in keys])
            raw = (x - off) / sc
            q = np.rint(raw)
            miss = (q * sc + off != x) | (np.abs(q) >= _MAX_EXACT)  # NaN: a miss
            if keys[-1] == "mean":
                miss[-1] &= single
                cells["sum"] = total = count * raw[-1]  # as ``encode`` computes S (NaN: never below the bound)
                miss[-1] |= ~(collapsed | (np.abs(total) < 2.0**63))
            bad = np.logical_or.reduce(miss, axis=0)
            cells.update(zip(keys, q))
        if "std" in table.stats:
            cells["steps"] = steps = table.stats["std"] / np.abs(sc)
            too_many = ~(collapsed | by_grid.take(sid) | (steps < 2.0**64))
            bad = too_many if bad is None else bad | too_many
    if bad is not None and np.count_nonzero(bad):
        scale = scale.copy()  # its NaNs are this payload's (``_scales``' arrays are shared)
        scale[sid.compress(bad)] = np.nan
    return scale, offset, cells


def _scales(res: tuple[Resolution, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The scales and offsets of resolutions ``res`` (NaN and 0 where there is none, or it is no
    grid: not finite, scale 0), read only: a window group's payloads have the same few sets,
    remembered (``_scales_of``)."""
    try:
        return _scales_of(res)
    except TypeError:  # a resolution that is no tuple (a list): not remembered
        return _scales_of.__wrapped__(res)


@functools.lru_cache(maxsize=64)
def _scales_of(res: tuple[Resolution, ...]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r[0], r[1]) if r is not None and math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] != 0
             else (math.nan, 0.0) for r in res]
    scale = np.array([r[0] for r in pairs], np.float64)
    offset = np.array([r[1] for r in pairs], np.float64)
    scale.flags.writeable = offset.flags.writeable = False
    return scale, offset


_REF_ORDER = ("mean", "min", "max", "first", "last")  # the first of these present is the reference
_OUTER = struct.Struct("<4sBBI")  # magic, version, codec, the body's uncompressed size


# -- layouts 2 and 3: varints, shared cell columns, inferred grids, a preset dictionary ----------

# The preset dictionary of the deflate stream of layouts 2 and 3 (RFC 1951 raw deflate, no zlib
# wrapper): the JSON a header and a dictionary are made of, so a header costs its values, not its
# keys. Part of the layout: changing it needs a new version.
_ZDICT = (b'{"schema":"","extra":{"names":[],"res":[]},"as_float":[],"grid":[[0,12]]}'
          b'"thinned":{"factor":2,"from_width":1.0,"stats":["count","mean"]},"part":[0,2],'
          b'"late":{"samples":0,"oldest":null},'
          b'"stats":["count","min","max","mean","last","std","first","t_min","t_max"]}'
          b'{"vehicle":"","seq":1,"group":"default","width":1.0,"start":0.0,"end":60.0,'
          b'"stats":["count","min","max","mean"]}')
_MAX_GRID = 60  # an IEEE float signal on a grid finer than 2**-60 travels as float
_ROUND_GRID = 8  # layout 3: the mean of a signal on an inferred grid 2**-s, s >= 8, is rounded to it
_MAX_GRID_RAW = 2.0**40  # and one whose values on the grid are this large (a float32 needs 24 bits)


def _uvarints(u: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low first, the high bit set on every byte but a value's last."""
    u = np.asarray(u, np.uint64)
    if len(u) <= 4:  # a length, a count: numpy's calls would cost more than the bytes
        return b"".join(map(_uvarint, u.tolist()))
    return _leb128(u)


def _zigzag(x: np.ndarray) -> np.ndarray:
    """Signed integers (int64) as unsigned: 0, -1, 1, -2, ... as 0, 1, 2, 3, ..."""
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    """``_zigzag`` undone: (u >> 1) ^ -(u & 1), as int64, in place of a copy where it can."""
    signed = (u >> np.uint64(1)).view(np.int64)
    sign = (u & np.uint64(1)).view(np.int64)
    np.negative(sign, out=sign)
    signed ^= sign
    return signed


def _varints(x: np.ndarray) -> bytes:
    """Signed integers, zigzag (``_zigzag``) then LEB128: a small value is one byte whatever the
    column's largest."""
    return _uvarints(_zigzag(np.asarray(x, np.int64)))


_SEVEN = np.uint64(7)
_UVARINT1 = [bytes((n,)) for n in range(0x80)]  # the values of one byte, made once


def _uvarint(n: int) -> bytes:
    """One unsigned LEB128 value (a section's length), in Python: numpy's calls would cost more."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _leb128(u: np.ndarray) -> bytes:
    """The unsigned LEB128 bytes of every value of ``u`` (uint64), one after the other. Worked
    out a byte at a time for every value at once: rows of the values' j-th byte, each a
    contiguous array (numpy is slow along a short axis), interleaved at the end."""
    top = int(np.maximum.reduce(u)) if len(u) else 0
    if top <= 0x7F:  # every value one byte
        return u.astype(np.uint8).tobytes()
    width = (top.bit_length() + 6) // 7  # bytes of the largest value
    rest = np.empty((width, len(u)), np.uint64)  # row j: each value shifted right by 7j bits
    rest[0] = u
    for j in range(1, width):
        np.right_shift(rest[j - 1], _SEVEN, out=rest[j])
    keep = rest != 0  # a value's byte j > 0 is there if anything is left of it (its byte 0 always)
    keep[0] = True
    groups = rest.astype(np.uint8)  # the low 8 bits: the 7-bit group, and a bit to clear
    groups &= 0x7F
    groups[:-1] |= keep[1:].view(np.uint8) << 7  # the high bit: more bytes follow
    return groups.T[keep.T].tobytes()  # value by value, its bytes low first


class _Body:
    """A payload's body as ``encode`` writes it: its sections in order, each its LEB128 length
    and its bytes. The integer columns among them are kept as arrays and written as LEB128 all
    at once (``bytes``): a payload has a dozen or more, most of a few values, and numpy's calls
    column by column cost more than the values."""

    def __init__(self) -> None:
        self.parts: list[bytes | int] = []  # a section's bytes, or the number of an integer column
        self.prefixes: list[bytes] = []  # per integer column: the bytes before its values (a sign)
        self.columns: list[np.ndarray] = []
        self.signed: list[bool] = []  # per integer column: zigzag (signed) or not

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def uints(self, u: np.ndarray, prefix: bytes = b"") -> None:
        """A column of unsigned integers (as uint64: a negative int64 wraps, as ``_uvarints``)."""
        self._column(u, prefix, False)

    def ints(self, x: np.ndarray, prefix: bytes = b"") -> None:
        """A column of signed integers (int64), zigzag (0, -1, 1, -2, ... as 0, 1, 2, 3, ...)."""
        self._column(x, prefix, True)

    def _column(self, x: np.ndarray, prefix: bytes, signed: bool) -> None:
        self.parts.append(len(self.columns))
        self.prefixes.append(prefix)
        self.columns.append(x)
        self.signed.append(signed)

    def bytes(self) -> bytes:
        signed = [x for x, s in zip(self.columns, self.signed) if s]
        if signed:
            x = np.concatenate(signed, dtype=np.int64)
            zigzag = _zigzag(x)
        pieces, at = [], 0
        for column, s in zip(self.columns, self.signed):
            if s:
                pieces.append(zigzag[at:at + len(column)])
                at += len(column)
            else:
                pieces.append(column)
        data = _leb128(np.concatenate(pieces, dtype=np.uint64, casting="unsafe") if pieces else np.zeros(0, np.uint64))
        # where each column's bytes end: after its last value's last byte (the one below 0x80)
        bounds = list(itertools.accumulate(map(len, self.columns), initial=0))  # in values
        if len(data) > bounds[-1]:  # some longer than a byte: in bytes
            last = np.zeros(bounds[-1] + 1, np.int64)
            last[1:] = (np.frombuffer(data, np.uint8) < 0x80).nonzero()[0] + 1
            bounds = last[bounds].tolist()
        out = []
        for part in self.parts:
            if isinstance(part, int):
                part = self.prefixes[part] + data[bounds[part]:bounds[part + 1]]
            n = len(part)
            out.append(_UVARINT1[n] if n < 0x80 else _uvarint(n))
            out.append(part)
        return b"".join(out)


def _read_uvarints(raw: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(raw, np.uint8)
    last = b < 0x80
    if np.count_nonzero(last) != count or (len(b) and not last[-1]):
        raise WireError(f"payload integer column of {len(b)} bytes does not hold {count} values")
    if count == len(b):  # every value one byte
        return b.astype(np.uint64)
    ends = last.nonzero()[0]
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    lengths = ends - starts + 1
    width = int(lengths.max())
    if width > 10 or (width == 10 and (b[ends[lengths == 10]] > 1).any()):
        raise WireError("payload integer column has a value over 64 bits")
    # each byte's 7 bits moved to their place in its value (7 times its place in the value), the
    # values' bytes added up: their bits do not overlap (a 10th byte is 0 or 1: bit 63)
    bits = (b & 0x7F).astype(np.uint64)
    bits <<= ((np.arange(len(b)) - np.repeat(starts, lengths)) * 7).astype(np.uint64)
    return np.add.reduceat(bits, starts)


def _read_varints(raw: bytes, count: int) -> np.ndarray:
    return _unzigzag(_read_uvarints(raw, count))


def _floats2(x: np.ndarray) -> bytes:
    """Float values: a type byte (4: float32, when every one is one; 8: float64), then the values
    byte-transposed (every value's first byte, then every second byte, ...): the sign and
    exponent bytes of a signal's values are alike, and deflate finds them together."""
    if not len(x):  # no float cell (the usual case): the type byte alone
        return b"\x04"
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = x.astype("<f4")
    wide = not np.array_equal(narrow.astype(np.float64), x, equal_nan=True)
    data = x.astype("<f8") if wide else narrow
    width = 8 if wide else 4
    return bytes((width,)) + data.view(np.uint8).reshape(-1, width).T.tobytes()


def _split_delta(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """A column delta-coded along time per signal, as each signal's first value, then the deltas
    (of each row of ``x``, if it has rows: columns of the same cells)."""
    if len(first) and first[0]:  # (as ``_starts`` makes it): the deltas are those past the first
        later = (x[..., 1:] - x[..., :-1]).compress(~first[1:], axis=-1)
        return np.concatenate((x.compress(first, axis=-1), later), axis=-1)
    d = np.empty_like(x)
    d[..., :1] = x[..., :1]
    np.subtract(x[..., 1:], x[..., :-1], out=d[..., 1:])
    return np.concatenate((x.compress(first, axis=-1), d.compress(~first, axis=-1)), axis=-1)


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
    names = tuple(t.names[i] for i in order.tolist())
    sid, window = t.sid, t.window
    if len(sid) > 1 and np.count_nonzero((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (window[1:] > window[:-1]))) \
            < len(sid) - 1:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return Table(names, window, inverse[sid], t.stats).sorted()
    bounds = sid.searchsorted(np.arange(len(order) + 1))
    n = (bounds[1:] - bounds[:-1])[order]
    take = (bounds[:-1][order] - (n.cumsum() - n)).repeat(n) + np.arange(int(bounds[-1] - bounds[0]))
    return Table(names, window.take(take), np.arange(len(order), dtype=np.int64).repeat(n),
                 {k: v.take(take) for k, v in t.stats.items()})


_Places = tuple[list[int], np.ndarray | None, bytes, list[Resolution]]
_PLACES: dict[tuple[str, tuple[str, ...]], _Places] = {}


def _places(schema: Schema, names: tuple[str, ...]) -> _Places:
    """A payload's names in a schema: each one's place in it (-1 if it has none), in the order
    ``encode`` sends them (the schema's, then the others); the order that renumbers the table
    into it (None if it is in it); the presence runs over the schema's signals (absent, present,
    ...); each one's resolution in the schema (None if it has none). The same for every payload
    of a window group with the same signals: remembered for a few sets of names."""
    key = (schema.id, names)
    known = _PLACES.get(key)
    if known is not None:
        return known
    places = schema.index
    where = [places.get(n, -1) for n in names]
    n_schema = len(schema.names)
    rank = np.array([w if w >= 0 else n_schema + i for i, w in enumerate(where)], np.int64)
    order = None
    if len(rank) and (np.diff(rank) < 0).any():
        order = np.argsort(rank, kind="stable")
        where = [where[i] for i in order.tolist()]
    index = np.array(where, np.int64)
    present = np.zeros(n_schema, np.int8)
    present[index[index >= 0]] = 1
    edges = np.flatnonzero(np.diff(np.concatenate(([0], present, [0]))))
    runs = _uvarints(np.diff(np.concatenate(([0], edges))).astype(np.uint64))
    known = (where, order, runs, [schema.res[w] if w >= 0 else None for w in where])
    if len(names) <= 1024:  # a vehicle's few sets of names, not a huge one a caller made up
        if len(_PLACES) >= 64:
            _PLACES.clear()
        _PLACES[key] = known
    return known


def encode(p: Payload, *, codec: str = "zlib", level: int | None = None, schema: Schema | None = None,
           layout: int = VERSION) -> bytes:
    """The payload as bytes (layout 3; ``layout=2`` writes the previous one, for tests of the
    decoder): ``TLMA``, version, codec, the body's size, then the compressed body: the header
    (JSON), the signal dictionary (JSON), then the columns (docs/MESSAGES.md). Its columns are
    computed for all cells at once, a few of numpy's calls each, and its integer columns written
    in one pass (``_Body``): a payload of a few hundred cells costs numpy's calls, not its values."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if layout not in (2, 3):
        raise ValueError(f"encode writes layout 2 or 3, not {layout!r}")
    if schema is None and p.schema is not None:
        schema = _SCHEMAS.get(p.schema)
    t = p.table
    where: list[int] = []  # each name's place in the schema, -1 if it has none
    runs = b""
    in_schema: list[Resolution] = []
    if schema is not None:  # signals in the schema's order (so runs say which), the others after
        where, order, runs, in_schema = _places(schema, t.names)
        if order is not None:
            t = _renumbered(t, order)
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
        res = dict(zip(t.names, in_schema))
        for i in [i for i, w in enumerate(where) if w < 0]:
            res[t.names[i]] = p.res.get(t.names[i])
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
    if grids:
        by_grid[list(grids)] = True
    scale, offset, raw = _quantize(t, inferred, count, collapsed, by_grid)
    exact = scale == scale  # not NaN
    exact_list = exact.tolist()
    head: dict[str, Any] = {"vehicle": p.vehicle, "seq": p.seq, "group": p.group, "width": p.width,
                            "start": p.start, "end": p.end, "stats": stats}
    if p.late_samples or p.late_oldest is not None:
        head["late"] = {"samples": p.late_samples, "oldest": p.late_oldest}
    if p.part != (0, 1):
        head["part"] = list(p.part)
    if p.thinned:
        head["thinned"] = dict(p.thinned)
    scales, offsets = scale.tolist(), offset.tolist()

    def dbc_res(i: int) -> list[float] | None:
        return [scales[i], offsets[i]] if exact_list[i] and i not in grids else None

    dictionary: dict[str, Any]
    if schema is None:
        dictionary = {"names": list(t.names), "res": [dbc_res(i) for i in range(len(t.names))]}
    else:
        # names by their place in the schema; the few it does not have, by name; and which
        # signals go as float in this payload although the schema gives them a resolution
        dictionary = {"schema": schema.id}
        extra = [i for i, w in enumerate(where) if w < 0]
        if extra:
            dictionary["extra"] = {"names": [t.names[i] for i in extra], "res": [dbc_res(i) for i in extra]}
        as_float = [i for i, w in enumerate(where) if w >= 0 and not exact_list[i] and schema.res[w] is not None]
        if as_float:
            dictionary["as_float"] = as_float
    on_grid = [[i, s] for i, s in grids.items() if exact_list[i]]
    if on_grid and layout == 2:
        dictionary["grid"] = on_grid
    body = _Body()
    body.raw(_json(head))
    body.raw(_json(dictionary))
    if schema is not None:
        body.raw(runs)
    if layout == 3:  # the grids as a count column: position (from the previous one's), s; ...
        flat = np.asarray(on_grid, np.int64).reshape(-1, 2)
        flat[1:, 0] -= flat[:-1, 0].copy()
        body.uints(flat.ravel())
    sid, window = t.sid, t.window.astype(np.int64, copy=False)
    n_sig = len(t.names)
    # the cells of a signal (its windows and their counts) are those of an earlier signal more
    # often than not (signals of one CAN message decode from the same frames): say which
    bounds = sid.searchsorted(np.arange(n_sig + 1))
    same_list = [0] * n_sig
    seen: dict[bytes, int] = {}
    pairs = np.array([window, count]).T.tobytes()  # a cell's window and count: 16 bytes
    at = (16 * bounds).tolist()
    for i in range(n_sig):
        key = pairs[at[i]:at[i + 1]]
        if key in seen:
            same_list[i] = i - seen[key]
        seen[key] = i
    same = np.array(same_list, np.int64)
    own = same == 0
    mine = own.take(sid)
    first = _starts(sid)
    k0 = int(np.minimum.reduce(window)) if len(window) else 0
    # the first window's index, from the period's first: a small number (the header has the start)
    body.ints(np.array([k0 - _first_window(p.start, p.width)], np.int64))
    body.uints(same)
    body.uints((bounds[1:] - bounds[:-1]).compress(own))
    windows_counts = _split_delta(np.array([window - k0, count]).compress(mine, axis=1), first.compress(mine))
    body.ints(windows_counts[0])
    body.ints(windows_counts[1])
    body.raw(np.packbits(collapsed).tobytes())
    wide = ~collapsed
    cell_exact = exact.take(sid)
    ints, floats = wide & cell_exact, wide & ~cell_exact
    some_floats = bool(np.count_nonzero(floats))
    with np.errstate(invalid="ignore", over="ignore"):
        ref = next((x for x in _REF_ORDER if x in t.stats), None)
        if ref is not None:
            # the raw values of the exact statistics (``_quantize``'s): in the cells of signals
            # with a resolution, whole numbers below 2**52 (the others' are never sent)
            keys = [s for s in (*VALUE_STATS, "mean") if s in t.stats]
            q = np.array([raw[s] for s in keys]).astype(np.int64)
            row = {s: i for i, s in enumerate(keys)}
            # a collapsed cell: one value (an exact statistic's, if there is one), along time
            c_int, c_float = collapsed & cell_exact, collapsed & ~cell_exact
            body.ints(_split_delta(q[row[keys[0]]].compress(c_int), _starts(sid.compress(c_int))))
            body.raw(_floats2(t.stats[keys[0]].compress(c_float)))
            # the reference statistic of the other cells along time, the rest relative to it. The
            # mean as the exact sum of raw values S: floor(S / count) is the reference, S mod count
            # travels too (so the mean is exact, and the same however the samples were batched)
            q_ints = q.compress(ints, axis=1)
            ints_first = _starts(sid.compress(ints))
            if ref == "mean":
                # layout 3: the mean rounded to the step (within half a step), but where it
                # travels exact (``_exact_means``) as in layout 2; none does in a layout-3
                # payload not thinned without a coarse grid (the usual)
                coarse = [i for i, s in grids.items() if s < _ROUND_GRID]
                summed = _exact_means(ints, sid, coarse, n_sig, p.thinned, layout).compress(ints) \
                    if coarse or layout == 2 or p.thinned else None
                # Both from the exact sum of raw values S (whole: the same however the samples
                # were batched; below 2**63, ``_quantize``), the rounding in integers (half up),
                # so that the rounded mean does not depend on how the aggregator folded its
                # float sums either
                total = np.rint(raw["sum"].compress(ints)).astype(np.int64)
                n = count.compress(ints)
                whole, rest = np.divmod(total, n)  # floor((2S + n) / 2n) without 2S, which would wrap past 2**62
                rounded = whole + (2 * rest >= n)
                ref_q = rounded if summed is None else np.where(summed, whole, rounded)
                body.ints(_split_delta(ref_q, ints_first))
                body.uints(rest[:0] if summed is None else rest.compress(summed))
            else:
                ref_q = q_ints[row[ref]]
                body.ints(_split_delta(ref_q, ints_first))
            body.raw(_floats2(t.stats[ref].compress(floats)) if some_floats else b"\x04")
            others = [s for s in ("min", "max", "first", "last") if s in t.stats and s != ref]
            if others:
                relative = q_ints[[row[s] for s in others]] - ref_q
                low = np.minimum.reduce(relative, axis=1).tolist() if len(ref_q) else [0] * len(others)
                high = np.maximum.reduce(relative, axis=1).tolist() if len(ref_q) else [0] * len(others)
                for i, stat in enumerate(others):
                    # its sign is most often the same for every cell (``min`` at or below the
                    # mean, ``max`` at or above), so a byte says it once (1: none negative, 2:
                    # none positive, sent negated; 0: zigzag) and the values follow unsigned
                    if low[i] >= 0:
                        body.uints(relative[i], b"\x01")
                    elif high[i] <= 0:
                        body.uints(-relative[i], b"\x02")
                    else:
                        body.ints(relative[i], b"\x00")
                    body.raw(_floats2(t.stats[stat].compress(floats)) if some_floats else b"\x04")
        if "std" in t.stats:  # in steps of the DBC's resolution; as float for the others (an inferred grid too)
            steps_of, as_is = ints & ~by_grid.take(sid), wide & (~cell_exact | by_grid.take(sid))
            steps = np.rint(raw["steps"].compress(steps_of))
            body.uints(np.where(np.isfinite(steps), np.maximum(steps, 0), 0).astype(np.uint64))
            body.raw(_floats2(t.stats["std"].compress(as_is)))
        times = [x for x in ("t_min", "t_max") if x in t.stats]
        if times:  # microseconds from the window's start: one value for a collapsed cell, one each for the others
            us = np.rint((np.array([t.stats[x] for x in times]) - window * p.width) * 1e6)
            us = np.where(np.isfinite(us), us, 0).astype(np.int64)
            body.ints(us[0].compress(collapsed))
            for i in range(len(times)):
                body.ints(us[i].compress(wide))
    data = body.bytes()
    return _OUTER.pack(MAGIC, layout, CODECS.index(codec), len(data)) + _compress(data, codec, level)


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


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # as json.dumps with these, made once


def _json(value: Any) -> bytes:
    return _JSON_ENCODER.encode(value).encode()


def _compress(body: bytes, codec: str, level: int | None) -> bytes:
    if codec == "zlib":  # layouts 2 and 3: raw deflate with the layout's preset dictionary
        z = zlib.compressobj(9 if level is None else level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
        return z.compress(body) + z.flush()
    return body


def _decompress(data: bytes, codec: str, size: int, version: int = VERSION) -> bytes:
    try:
        if codec == "zlib":
            z = zlib.decompressobj() if version == 1 else zlib.decompressobj(-15, _ZDICT)
            out = z.decompress(data, size + 1)
            if not z.eof or z.unused_data or z.unconsumed_tail:
                raise WireError(f"aggregates body is not one complete deflate stream of {size} bytes")
        else:
            out = data
    except zlib.error as exc:
        raise WireError(f"aggregates body does not decompress ({codec}): {exc}") from None
    if len(out) != size:
        raise WireError(f"aggregates body is {len(out)} bytes; its prefix says {size}")
    return out


MAX_BODY = 64 * 1024 * 1024


def from_outbox_line(line: Mapping[str, Any]) -> Payload | None:
    """The aggregates payload of one line of a replay's cloud.jsonl (``payload_base64``), or
    None for a JSON publish."""
    data = line.get("payload_base64")
    if data is None:
        return None
    return decode(base64.b64decode(data))


def is_payload(data: Any) -> bool:
    """Whether ``data`` is an aggregates payload (by its magic)."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) == MAGIC


def codec_of(data: bytes) -> str:
    """The codec a payload's body was compressed with."""
    if not is_payload(data) or len(data) < _OUTER.size or data[5] >= len(CODECS):
        raise WireError("not an aggregates payload (no TLMA prefix)")
    return CODECS[data[5]]


def _check_header(head: Any, version: int) -> dict[str, Any]:
    if version == 1 and (not isinstance(head, dict) or head.get("v") != 1 or head.get("kind") != KIND):
        got = (head.get("v"), head.get("kind")) if isinstance(head, dict) else head
        raise WireError(f"aggregates header of version/kind {got!r} (the layout says v1 {KIND})")
    if not isinstance(head, dict):
        raise WireError("aggregates header is not a JSON object")
    for key in ("vehicle", "group"):
        if not isinstance(head.get(key), str) or not head[key]:
            raise WireError(f"aggregates header without a {key}")
    for key in ("width", "start", "end"):
        if not _finite(head.get(key)):
            raise WireError(f"aggregates header {key} is not a finite number")
    if not head["width"] > 0 or not head["start"] < head["end"]:
        raise WireError("aggregates header: width must be positive and start before end")
    for key in ("seq", "cells", "signals") if version == 1 else ("seq",):
        if not _count(head.get(key)):
            raise WireError(f"aggregates header {key} is not a count")
    stats = head.get("stats")
    if not isinstance(stats, list) or "count" not in stats or stats != [x for x in STATISTICS if x in stats]:
        raise WireError(f"aggregates header stats {stats!r}: 'count' and any of {', '.join(STATISTICS)}, in that order")
    late = head.get("late", {})
    if not isinstance(late, dict) or not _count(late.get("samples", 0)) or \
            not (late.get("oldest") is None or _finite(late.get("oldest"))):
        raise WireError("aggregates header late must be {samples: count, oldest: number or null}")
    part = head.get("part", [0, 1])
    if not (isinstance(part, list) and len(part) == 2 and all(_count(x) for x in part) and part[0] < part[1]):
        raise WireError("aggregates header part must be [i, n] with i < n")
    thinned = head.get("thinned")
    if thinned is not None and not isinstance(thinned, dict):
        raise WireError("aggregates header thinned must be an object")
    return head


def decode(data: bytes | bytearray | memoryview, schema: Schema | None = None) -> Payload:
    """A payload back, checked: every length against the payload's own; WireError if malformed.
    A payload that names its signals by a schema needs that schema: given, or registered."""
    data = bytes(data)
    if not is_payload(data) or len(data) < _OUTER.size:
        raise WireError("not an aggregates payload (no TLMA prefix)")
    _, version, codec_id, size = _OUTER.unpack_from(data)
    if version not in READS:
        raise WireError(f"aggregates payload of version {version} (this build reads {', '.join(f'v{v}' for v in READS)})")
    if codec_id >= len(CODECS):
        raise WireError(f"aggregates payload of unknown codec {codec_id}")
    if size > MAX_BODY:
        raise WireError(f"aggregates body of {size} bytes is over {MAX_BODY}")
    body = _decompress(data[_OUTER.size:], CODECS[codec_id], size, version)
    if version >= 2:
        return _decode_v2(body, schema, version)
    r = _Reader(body)  # layout 1
    try:
        head = _check_header(json.loads(r.section(), parse_constant=_no_constant), 1)
        dictionary = json.loads(r.section(), parse_constant=_no_constant)
    except ValueError as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"aggregates header or dictionary is not JSON: {exc}") from None
    n_sig = head["signals"]
    names: Any
    res: Any
    if isinstance(dictionary, dict) and "schema" in dictionary:
        names, res = _by_schema(dictionary, r, schema)
    else:
        names = dictionary.get("names") if isinstance(dictionary, dict) else None
        res = dictionary.get("res") if isinstance(dictionary, dict) else None
    if not (isinstance(names, list) and isinstance(res, list) and len(names) == len(res) == n_sig
            and all(isinstance(x, str) and x for x in names) and len(set(names)) == n_sig):
        raise WireError("aggregates dictionary: names must be distinct strings, one resolution each")
    scale, offset = _resolutions(names, res)
    cells = head["cells"]
    per_signal = r.ints(n_sig)
    if (per_signal < 0).any() or int(per_signal.sum()) != cells:
        raise WireError("aggregates payload: cells per signal do not add up")
    sid = np.repeat(np.arange(n_sig, dtype=np.int64), per_signal)
    first = _starts(sid)
    k0 = int(r.ints(1)[0])
    window = _undelta(r.ints(cells), first) + k0
    count = _undelta(r.ints(cells), first)
    if len(count) and (count < 1).any():
        raise WireError("aggregates payload has a cell with no samples")
    collapsed, cell_exact, sc, off = _cells(r.section(), cells, sid, scale, offset)
    wide = ~collapsed
    ints, floats = wide & cell_exact, wide & ~cell_exact
    start = window * float(head["width"])
    stats: list[str] = head["stats"]
    ref = next((x for x in _REF_ORDER if x in stats), None)
    cols: dict[str, np.ndarray] = {"count": count}

    def values(q: np.ndarray, cells_mask: np.ndarray, out: np.ndarray) -> None:
        out[cells_mask] = q.astype(np.float64) * sc[cells_mask] + off[cells_mask]

    if ref is not None:
        c_int, c_float = collapsed & cell_exact, collapsed & ~cell_exact
        one = np.zeros(cells)
        values(_undelta(r.ints(int(c_int.sum())), _starts(sid[c_int])), c_int, one)
        one[c_float] = r.floats(int(c_float.sum()))
        ref_q = _undelta(r.ints(int(ints.sum())), _starts(sid[ints]))
        rem = r.ints(int(ints.sum())) if ref == "mean" else None
        for stat in ("mean", "min", "max", "first", "last"):
            if stat not in stats:
                continue
            x = one.copy()
            if stat == "mean" and rem is not None:
                x[ints] = (ref_q + rem / count[ints]) * sc[ints] + off[ints]
            else:
                values(ref_q if stat == ref else ref_q + r.ints(int(ints.sum())), ints, x)
            x[floats] = r.floats(int(floats.sum()))
            cols[stat] = x
    if "std" in stats:
        x = np.zeros(cells)
        x[ints] = r.ints(int(ints.sum())) * np.abs(sc[ints])
        x[floats] = r.floats(int(floats.sum()))
        cols["std"] = x
    _times(r, stats, cells, collapsed, wide, start, cols)
    if r.at != len(r.body):
        raise WireError(f"aggregates body has {len(r.body) - r.at} bytes after its last column")
    table = Table(tuple(names), window, sid, {x: cols[x] for x in stats})
    return _payload(head, table, scale, offset, ~np.isnan(scale),
                    dictionary.get("schema") if isinstance(dictionary, dict) else None)


def _resolutions(names: list[str], res: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The dictionary's resolutions as (scale, offset) columns: NaN scale where a signal has
    none (an IEEE float); a resolution that is not two finite numbers, scale not 0, refused."""
    scale = np.full(len(names), np.nan)
    offset = np.zeros(len(names))
    for i, x in enumerate(res):
        if x is not None:
            if not (isinstance(x, list) and len(x) == 2 and all(_finite(v) for v in x) and x[0] != 0):
                raise WireError(f"aggregates dictionary: resolution of {names[i]!r} is not [scale, offset]")
            scale[i], offset[i] = x
    return scale, offset


def _cells(flags: bytes, cells: int, sid: np.ndarray, scale: np.ndarray,
           offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell (both layouts): collapsed (its flag), exact (its signal has a resolution), and
    the scale and offset its integers are read with (1 and 0 for a float cell)."""
    if len(flags) != (cells + 7) // 8:
        raise WireError("aggregates payload: collapse flags of the wrong length")
    collapsed = np.unpackbits(np.frombuffer(flags, np.uint8), count=cells).astype(bool)
    cell_exact = ~np.isnan(scale)[sid]
    return collapsed, cell_exact, np.where(cell_exact, scale[sid], 1.0), np.where(cell_exact, offset[sid], 0.0)


def _times(r: Any, stats: Sequence[str], cells: int, collapsed: np.ndarray, wide: np.ndarray, start: np.ndarray,
           cols: dict[str, np.ndarray]) -> None:
    """``t_min`` and ``t_max`` (both layouts): microseconds from the window's start, one value
    for a collapsed cell, one each for the others."""
    if "t_min" in stats or "t_max" in stats:
        one_t = np.zeros(cells)
        one_t[collapsed] = start[collapsed] + r.ints(int(collapsed.sum())) / 1e6
        for stat in ("t_min", "t_max"):
            if stat in stats:
                x = one_t.copy()
                x[wide] = start[wide] + r.ints(int(wide.sum())) / 1e6
                cols[stat] = x


def _payload(head: Mapping[str, Any], table: Table, scale: np.ndarray, offset: np.ndarray, dbc: np.ndarray,
             schema: Any, res: dict[str, Resolution] | None = None) -> Payload:
    """The decoded payload (both layouts) from its checked header and its cells; ``dbc``: the
    signals whose (scale, offset) is the DBC's (a float signal sent on a grid has none); or
    ``res``, those resolutions by name, already made."""
    late = head.get("late", {})
    part = head.get("part", [0, 1])
    return Payload(head["vehicle"], head["seq"], head["group"], float(head["width"]), float(head["start"]),
                   float(head["end"]), table, late.get("samples", 0), late.get("oldest"), (int(part[0]), int(part[1])),
                   head.get("thinned"),
                   res if res is not None else
                   {n: (float(scale[i]), float(offset[i])) if dbc[i] else None for i, n in enumerate(table.names)},
                   schema)


def _by_schema(dictionary: dict[str, Any], r: _Reader, schema: Schema | None) -> tuple[list[str], list[Any]]:
    """Names and resolutions of a payload that numbers its signals in a schema."""
    wanted = dictionary.get("schema")
    if schema is None or schema.id != wanted:
        schema = _SCHEMAS.get(str(wanted))
    if schema is None:
        raise WireError(f"aggregates payload names its signals by schema {wanted!r}, which this decoder does not have: "
                        "give it the vehicle's DBC files (decode-cloud --dbc, or the configuration)")
    extra, as_float = dictionary.get("extra"), dictionary.get("as_float")
    if not (isinstance(extra, dict) and isinstance(extra.get("names"), list) and isinstance(extra.get("res"), list)
            and len(extra["names"]) == len(extra["res"]) and isinstance(as_float, list)):
        raise WireError("aggregates dictionary: a schema payload needs 'extra' {names, res} and 'as_float'")
    n_schema = len(schema.names)
    bits = r.section()
    if len(bits) != (n_schema + 7) // 8:
        raise WireError(f"aggregates payload: a presence bitmap of {len(bits)} bytes for a schema of {n_schema} signals")
    present = np.unpackbits(np.frombuffer(bits, np.uint8), count=n_schema).astype(bool)
    return _named(schema, present, extra, as_float)


def _named(schema: Schema, present: np.ndarray, extra: Mapping[str, Any], as_float: list[Any]) -> tuple[list[str], list[Any]]:
    """Names and resolutions (both layouts): the schema's signals present, then ``extra``'s by
    name; a signal listed in ``as_float`` travels as float (no resolution)."""
    n_schema = len(schema.names)
    index = np.concatenate((np.flatnonzero(present), n_schema + np.arange(len(extra["names"]))))
    names = [schema.names[i] if i < n_schema else extra["names"][i - n_schema] for i in index.tolist()]
    res: list[Any] = [list(schema.res[i]) if i < n_schema and schema.res[i] is not None else
                      (None if i < n_schema else extra["res"][i - n_schema]) for i in index.tolist()]
    for i in as_float:
        if not _count(i) or i >= len(res):
            raise WireError("aggregates dictionary: 'as_float' must list signal positions")
        res[i] = None
    return names, res


class _Reader2:
    """Layout 2's body: sections, each a LEB128 length and its bytes (the header, the dictionary,
    the presence runs and the grids; the columns after them are read by ``_Columns``)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.at = body, 0

    def section(self) -> bytes:
        n, shift = 0, 0
        while True:
            if self.at >= len(self.body) or shift > 28:
                raise WireError("payload body ends early")
            byte = self.body[self.at]
            self.at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if self.at + n > len(self.body):
            raise WireError("payload body ends early")
        out = self.body[self.at:self.at + n]
        self.at += n
        return out


_U62 = np.uint64(2**62)  # a count or an offset column's largest value
_NO_FLOATS = np.zeros(0)
_NO_FLOATS.setflags(write=False)


@functools.lru_cache(maxsize=64)
def _column_kinds(stats: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sections after the grids of a layout-2 or -3 body, by kind, as the header's statistics
    make them (``encode``): ``v`` signed varints, ``u`` unsigned, ``o`` offsets (a sign byte,
    then varints), ``f`` floats, ``b`` the collapse flags; and the value statistics, the
    reference first, the others in the order they travel."""
    kinds = ["v", "u", "u", "v", "v", "b"]  # first window, shared cells, cells, windows, counts, flags
    ref = next((x for x in _REF_ORDER if x in stats), None)
    if ref is not None:  # collapsed cells (integers, floats), the reference (its remainders), the others
        kinds += ["v", "f", "v", *(["u"] if ref == "mean" else []), "f"]
        kinds += ["o", "f"] * sum(1 for x in _REF_ORDER if x in stats and x != ref)
    if "std" in stats:
        kinds += ["u", "f"]
    if "t_min" in stats or "t_max" in stats:
        kinds += ["v"] * (1 + ("t_min" in stats) + ("t_max" in stats))
    return tuple(kinds), tuple(x for x in _REF_ORDER if x in stats)


def _uvarint_columns(raw: bytes, lengths: Sequence[int]) -> tuple[np.ndarray, list[int], list[bool], list[bool], int]:
    """Columns of unsigned LEB128 varints laid end to end (``lengths``: each column's bytes), read
    in one pass: every value (a column's last byte ends its last value, whatever it says); where
    each column's values begin (and where the last ends); whether each column's last byte does
    end a value; whether a column has a value over 64 bits (``_read_uvarints`` refuses both); the
    most bytes a value has."""
    b = np.frombuffer(raw, np.uint8)
    n = len(b)
    bytes_at = list(itertools.accumulate(lengths, initial=0))
    lasts = [e - 1 for a, e in itertools.pairwise(bytes_at) if e > a]
    last = b < 0x80
    ended = iter(last[lasts].tolist())
    complete = [next(ended) if e > a else True for a, e in itertools.pairwise(bytes_at)]
    last[lasts] = True
    ends = last.nonzero()[0]
    at = np.searchsorted(ends, bytes_at).tolist()
    if len(ends) == n:  # every value one byte
        return b.astype(np.uint64), at, complete, [False] * len(lengths), 1
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    widths = ends - starts
    widths += 1
    widest = int(np.maximum.reduce(widths))
    over = [False] * len(lengths)
    if widest >= 10:
        bad = (widths > 10) | ((widths == 10) & (b[ends] > 1))
        seen = np.concatenate(([0], bad.cumsum()))[at]
        over = (seen[1:] > seen[:-1]).tolist()
    # as _read_uvarints: each byte's 7 bits moved to their place in its value; a value the sum
    # of its bytes (their bits do not overlap), each the difference of the running sum at its
    # last byte and at the last byte before it (the running sum wraps in uint64: the difference
    # does not)
    shift = np.arange(n) - starts.repeat(widths)
    shift *= 7
    bits = (b & 0x7F).astype(np.uint64)
    bits <<= shift.astype(np.uint64)
    total = bits.cumsum()[ends]
    total[1:] -= total[:-1].copy()
    return total, at, complete, over, widest


class _Columns:
    """The columns of a layout-2 or -3 body (its sections after the grids, of the ``kinds`` its
    header's statistics make): split at once, and the integers of every varint column read in
    one numpy pass (``_uvarint_columns``); then handed out in order, each with the checks and the
    reasons of ``_Reader2``'s column by column reading (a section the body does not have, or a
    column that does not hold the values it must, is refused where it is reached)."""

    def __init__(self, body: bytes, at: int, kinds: Sequence[str]) -> None:
        self.body, self.at, self.next = body, at, 0
        size = len(body)
        self.bounds: list[tuple[int, int]] = []  # each section's bytes, as far as the body has them
        for _ in kinds:
            if at < size and body[at] < 0x80:  # a length of one byte (most are)
                n, at = body[at], at + 1
                if at + n > size:
                    break
                self.bounds.append((at, at + n))
                at += n
                continue
            n, shift, ended = 0, 0, False
            while at < size and shift <= 28:
                byte = body[at]
                at += 1
                n |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    ended = True
                    break
            if not ended or at + n > size:
                break
            self.bounds.append((at, at + n))
            at += n
        spans = [(a + (kind == "o" and a < e), e) for (a, e), kind in zip(self.bounds, kinds) if kind in ("v", "u", "o")]
        self.column = list(itertools.accumulate((kind in ("v", "u", "o") for kind in kinds[:len(self.bounds)]),
                                                initial=0))  # a varint section's number among them
        self.sizes = [e - a for a, e in spans]
        self.u, self.values_at, self.complete, self.over, widest = _uvarint_columns(
            b"".join([body[a:e] for a, e in spans]), self.sizes)
        u = self.u
        self.signed = _unzigzag(u)
        self.big = widest >= 9 and bool(np.maximum.reduce(u) > _U62)  # a value too large for a count somewhere
        self.span = (0, 0)  # the values of the last integer column read

    def _take(self) -> int:
        i = self.next
        if i >= len(self.bounds):
            raise WireError("payload body ends early")
        self.next = i + 1
        self.at = self.bounds[i][1]
        return i

    def _values(self, i: int, count: int) -> tuple[int, int]:
        j = self.column[i]
        a, e = self.values_at[j], self.values_at[j + 1]
        if not self.complete[j] or e - a != count:
            raise WireError(f"payload integer column of {self.sizes[j]} bytes does not hold {count} values")
        if self.over[j]:
            raise WireError("payload integer column has a value over 64 bits")
        return a, e

    def section(self) -> bytes:
        a, e = self.bounds[self._take()]
        return self.body[a:e]

    def peek(self, n: int) -> tuple[bytes, ...] | None:
        """The bytes of the next ``n`` sections, if the body has them."""
        if self.next + n > len(self.bounds):
            return None
        return tuple(self.body[a:e] for a, e in self.bounds[self.next:self.next + n])

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._take()

    def ints(self, count: int) -> np.ndarray:
        a, e = self.span = self._values(self._take(), count)
        return self.signed[a:e]

    def uints(self, count: int) -> np.ndarray:
        a, e = self._values(self._take(), count)
        u = self.u[a:e]
        if self.big and len(u) and u.max() > _U62:
            raise WireError("payload count column has a value out of range")
        return u.view(np.int64)

    def offsets(self, count: int) -> np.ndarray:
        i = self._take()
        at, end = self.bounds[i]
        if at == end or self.body[at] > 2:
            raise WireError("payload offset column without its sign byte")
        a, e = self._values(i, count)
        if self.body[at] == 0:
            return self.signed[a:e]
        u = self.u[a:e]
        if self.big and len(u) and u.max() > _U62:
            raise WireError("payload offset column has a value out of range")
        return u.view(np.int64) if self.body[at] == 1 else -u.view(np.int64)

    def floats(self, count: int) -> np.ndarray:
        a, e = self.bounds[self._take()]
        width = self.body[a] if a < e else 0
        if width not in (4, 8) or e - a - 1 != width * count:
            raise WireError(f"payload float column of {e - a} bytes, {count} values expected")
        if not count:
            return _NO_FLOATS
        data = np.frombuffer(self.body, np.uint8, count * width, a + 1).reshape(width, count).T.copy()
        return data.view("<f4" if width == 4 else "<f8").reshape(count).astype(np.float64)


_Plan = tuple[np.ndarray, np.ndarray]


def _join_plan(first: np.ndarray, starts: Sequence[int]) -> _Plan:
    """How to join columns written by ``_split_delta`` and laid end to end (the i-th begins at
    ``starts[i]``, the first at 0; ``first`` true where a signal's run of cells begins, and at
    each column's first cell): where each cell's value is in them (a run's first among its
    column's first values, a delta after them, in order), and where each cell's run begins."""
    n = len(first)
    rank = first.cumsum()  # the runs begun up to each cell
    if not n:
        return rank, rank
    before = [int(rank[s - 1]) if s else 0 for s in starts]  # the runs begun before each column
    firsts, deltas = rank - 1, np.arange(n) - rank
    for s, e, b, b_next in zip(starts, [*starts[1:], n], before, [*before[1:], int(rank[-1])]):
        if s:
            firsts[s:e] += s - b
        deltas[s:e] += b_next
    return np.where(first, firsts, deltas), first.nonzero()[0][rank - 1]


def _join(col: np.ndarray, plan: _Plan) -> np.ndarray:
    """The columns' values (``_join_delta`` of each, in one pass): the sums wrap in int64 as
    ``_undelta``'s do, and a column's values do not depend on the others'."""
    at, run_start = plan
    if not len(col):
        return np.empty_like(col)
    d = col[at]
    total = d.cumsum()
    return total - (total - d)[run_start]


class _Cells:
    """Where the cells of a layout-2 or -3 payload are, from its columns of shared cells
    (``same``) and cells per signal that has its own (``own_cells``), both checked: the cells
    that travel (``total_own``), and each signal's (its own, or those of the signal it shares
    them with). A vehicle's payloads repeat a few of these: ``_decode_v2`` remembers them
    (``_KNOWN_CELLS``), and each part is made when first needed (after the checks the payload's
    columns make of it: a count column that says more cells than a payload holds allocates
    nothing)."""

    def __init__(self, same: np.ndarray, own_cells: np.ndarray) -> None:
        self.same, self.own_cells = same.copy(), own_cells.copy()
        self.n_sig, self.n_own = len(same), len(own_cells)
        self.total_own = int(own_cells.sum())
        self.plan: _Plan | None = None
        self.own_first = np.zeros(0, bool)
        self.later = np.zeros(0, np.int64)
        self.own_sid = np.zeros(0, np.int64)
        self.per_signal: np.ndarray | None = None
        self.own_no = np.zeros(0, np.int64)  # each signal's cells: those of this signal with its own
        self.cells = 0
        self.sid: np.ndarray | None = None
        self.at: np.ndarray | None = None  # each cell's among the own cells (None: every signal has its own)

    def join(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The own cells' windows (from the first's) and counts, from their columns (one after
        the other)."""
        if self.plan is None:
            self.own_sid = np.arange(self.n_own, dtype=np.int64).repeat(self.own_cells)
            self.own_first = _starts(self.own_sid)
            self.later = (~self.own_first[1:]).nonzero()[0]  # the cells after a signal's first, less one
            self.plan = _join_plan(np.concatenate((self.own_first, self.own_first)), (0, self.total_own))
        joined = _join(columns, self.plan)
        return joined[:self.total_own], joined[self.total_own:]

    def count(self) -> int:
        """How many cells the signals have in all."""
        if self.per_signal is None:
            if self.n_own == self.n_sig:  # no signal shares another's cells
                self.per_signal, self.cells = self.own_cells, self.total_own
            else:
                src = np.arange(self.n_sig) - self.same  # pointer jumping: each back to a signal with its own
                while True:
                    further = src[src]
                    if np.array_equal(further, src):
                        break
                    src = further
                self.own_no = (np.cumsum(self.same == 0) - 1)[src]
                self.per_signal = self.own_cells[self.own_no]
                self.cells = int(self.per_signal.sum())
        return self.cells

    def expand(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Each cell's signal, and where its window and count are among the own cells (None:
        where they are)."""
        if self.sid is None:
            self.count()
            if self.n_own == self.n_sig:
                self.sid = self.own_sid
            else:
                per_signal, cells = self.per_signal, self.cells
                assert per_signal is not None
                self.sid = np.repeat(np.arange(self.n_sig, dtype=np.int64), per_signal)
                own_at = np.concatenate(([0], np.cumsum(self.own_cells)[:-1])).astype(np.int64)
                self.at = np.repeat(own_at[self.own_no] - np.concatenate(([0], np.cumsum(per_signal)[:-1])),
                                    per_signal) + np.arange(cells)
        return self.sid, self.at


_KNOWN_CELLS: dict[tuple[int, bytes, bytes], _Cells] = {}  # a few layouts of cells
_KNOWN_CELLS_MAX = 4096  # a layout remembered has at most this many cells (32 of them: some 7 MB at worst)


def _open_v2(body: bytes, schema: Schema | None, version: int) -> tuple[Any, ...]:
    """What ``_decode_v2`` and ``_check_v2`` read and check first, in this order: the header,
    the dictionary and its signals (their grids), the columns' sections, the layout of the
    cells (remembered), every cell's window and count, and the collapse flags' length. Returns
    (head, dictionary, names, scale, offset, by_name, grid, stats, rows, columns, layout, own
    windows, own counts, collapse flags, each cell's signal, where its window and count are
    (None: in place))."""
    r = _Reader2(body)
    try:
        head = _check_header(_json_of(r.section()), 2)
        raw_dictionary = r.section()
        dictionary = _json_of(raw_dictionary)
    except ValueError as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"aggregates header or dictionary is not JSON: {exc}") from None
    if not isinstance(dictionary, dict):
        raise WireError("aggregates dictionary is not a JSON object")
    names, res, scale, offset, by_name = _signals2(dictionary, raw_dictionary, r, schema)
    n_sig = len(names)
    grid = dictionary.get("grid", []) if version == 2 else _grid_section(r)
    if not (isinstance(grid, list) and all(isinstance(g, list) and len(g) == 2 and _count(g[0]) and g[0] < n_sig
                                           and _count(g[1]) and g[1] <= _MAX_GRID and res[g[0]] is None for g in grid)):
        raise WireError("aggregates dictionary: 'grid' must list [position, s] of signals without a resolution")
    if grid:  # the arrays of _signals2 are shared: changed in a copy
        scale, offset = scale.copy(), offset.copy()
        for i, s in grid:
            scale[i], offset[i] = 2.0**-s, 0.0
    stats: list[str] = head["stats"]
    kinds, rows = _column_kinds(tuple(stats))
    c = _Columns(body, r.at, kinds)
    k0 = int(c.ints(1)[0]) + _first_window(float(head["start"]), float(head["width"]))
    raw = c.peek(2)
    key = (n_sig, raw[0], raw[1]) if raw is not None else None
    layout = _KNOWN_CELLS.get(key) if key is not None else None
    if layout is not None:  # the same columns as a payload before: the same values, which passed
        c.skip(2)
    else:
        same = c.uints(n_sig)
        if (same > np.arange(n_sig)).any():
            raise WireError("aggregates payload: a signal shares the cells of a signal after it")
        layout = _Cells(same, c.uints(int(np.count_nonzero(same == 0))))
    total_own = layout.total_own
    c.ints(total_own)
    windows_at = c.span[0]
    if not -(2**63) <= k0 < 2**63:  # (numpy's OverflowError before)
        raise WireError("aggregates payload: its first window is out of range")
    c.ints(total_own)
    own_window, own_count = layout.join(c.signed[windows_at:c.span[1]])  # the windows' column, then the counts'
    own_window = own_window + k0
    # the checks of every signal's cells, made on the cells that travel (a signal that shares
    # another's has the very same)
    if total_own and np.count_nonzero(own_count < 1):
        raise WireError("aggregates payload has a cell with no samples")
    if total_own > 1 and np.count_nonzero((own_window[1:] - own_window[:-1])[layout.later] <= 0):
        raise WireError("aggregates payload: a signal's windows are not in order")
    cells = layout.count()
    flags = c.section()
    if len(flags) != (cells + 7) // 8:
        raise WireError("aggregates payload: collapse flags of the wrong length")
    sid, at = layout.expand()
    if key is not None and cells <= _KNOWN_CELLS_MAX and key not in _KNOWN_CELLS:
        if len(_KNOWN_CELLS) >= 32:  # bounded: a long-running decoder sees many vehicles
            _KNOWN_CELLS.clear()
        _KNOWN_CELLS[key] = layout
    return head, dictionary, names, scale, offset, by_name, grid, stats, rows, c, layout, own_window, own_count, flags, sid, at


def _decode_v2(body: bytes, schema: Schema | None, version: int = 2) -> Payload:
    """Layouts 2 and 3 (which differ only in how the mean travels: ``_exact_means``). The
    columns are read at once (``_Columns``), the delta-coded ones joined two at a time
    (``_join``), the value statistics made as one matrix, the layout of the cells remembered
    (``_Cells``). Every check of the layout is made in the order a column by column reading made
    it, so a malformed payload is refused with the same reason; where that reading failed with
    numpy's error instead (a count of more cells than the payload holds, to allocate; a first
    window past int64), this says why, in a WireError."""
    head, dictionary, names, scale, offset, by_name, grid, stats, rows, c, layout, own_window, own_count, flags, sid, at = \
        _open_v2(body, schema, version)
    n_sig, cells = len(names), layout.count()
    window, count = (own_window, own_count) if at is None else (own_window[at], own_count[at])
    sid = sid.copy()  # the table's own: a layout remembered is shared
    collapsed = np.unpackbits(np.frombuffer(flags, np.uint8), count=cells).view(bool)
    wide = ~collapsed
    n_wide = int(np.count_nonzero(wide))
    dbc = ~np.isnan(scale)  # a signal's integers read at its step (a float signal's travel as float)
    cell_exact = None if dbc.all() else dbc[sid]
    floats = c_float = None  # the cells of float signals (none in the usual payload)
    if cell_exact is None:  # every cell's values at its signal's step
        ints, n_ints, n_c, n_floats, n_cf = wide, n_wide, cells - n_wide, 0, 0
        kind = wide  # the collapsed cells, then the others (argsort)
    else:
        ints, c_int = wide & cell_exact, collapsed & cell_exact
        floats, c_float = wide & ~cell_exact, collapsed & ~cell_exact
        n_ints, n_c = int(np.count_nonzero(ints)), int(np.count_nonzero(c_int))
        n_floats, n_cf = n_wide - n_ints, cells - n_wide - n_c
        kind = wide + 2 * ~cell_exact  # the collapsed cells at a step, the others, then the float cells
    cols: dict[str, np.ndarray] = {"count": count}
    if rows:  # the reference (the first of _REF_ORDER there is), then the other value statistics
        c.ints(n_c)
        one_at = c.span[0]
        one_f = c.floats(n_cf)
        c.ints(n_ints)
        one_ref = c.signed[one_at:c.span[1]]  # the collapsed cells' column, then the reference's
        rem = None
        if rows[0] == "mean":  # the remainders of the means that travel as sums; the others are rounded
            coarse = [i for i, s in grid if s < _ROUND_GRID]
            summed = _exact_means(ints, sid, coarse, n_sig, head.get("thinned"), version) \
                if version == 2 or head.get("thinned") or coarse else None  # else none
            rem_u = c.uints(0 if summed is None else int(np.count_nonzero(summed)))
            if len(rem_u):
                rem = np.zeros(cells)
                rem[summed] = rem_u / count[summed]
                rem = rem[ints]
        ref_f = c.floats(n_floats)
        offsets, others_f = [], []
        for _ in rows[1:]:
            offsets.append(c.offsets(n_ints))
            others_f.append(c.floats(n_floats))
        # the cells at a step: the collapsed ones' integers and the reference's joined in one
        # pass, then each value statistic a row (the collapsed cell's value, or the reference
        # plus the statistic's offset), all at the step at once
        at_b = np.argsort(kind, kind="stable")[:n_c + n_ints]
        sid_b = sid[at_b]
        first_b = _starts(sid_b)
        if 0 < n_c < len(first_b):
            first_b[n_c] = True
        q = _join(one_ref, _join_plan(first_b, (0, n_c)))
        values = np.empty((len(rows), len(at_b)))
        values[:, :n_c] = q[:n_c]
        ref_q = q[n_c:]
        values[0, n_c:] = ref_q if rem is None else ref_q + rem
        for row, offset_q in enumerate(offsets, 1):
            values[row, n_c:] = ref_q + offset_q
        values *= scale[sid_b]
        values += offset[sid_b]
        out = np.empty((len(rows), cells))
        out[:, at_b] = values
        if c_float is not None and n_cf:
            out[:, c_float] = one_f
        if floats is not None and n_floats:
            out[:, floats] = np.stack((ref_f, *others_f))
        cols.update(zip(rows, out))
    if "std" in stats:
        steps_of, as_is = ints, floats
        if grid:  # a float signal on a grid: its std as float
            by_grid = np.zeros(n_sig, bool)
            by_grid[[i for i, _ in grid]] = True
            steps_of, as_is = ints & ~by_grid[sid], wide & (~dbc[sid] | by_grid[sid])
        x = np.zeros(cells)
        x[steps_of] = c.uints(int(np.count_nonzero(steps_of))) * np.abs(scale[sid[steps_of]])
        std_f = c.floats(0 if as_is is None else int(np.count_nonzero(as_is)))
        if as_is is not None:
            x[as_is] = std_f
        cols["std"] = x
    if "t_min" in stats or "t_max" in stats:
        _times(c, stats, cells, collapsed, wide, window * float(head["width"]), cols)
    if c.at != len(body):
        raise WireError(f"aggregates body has {len(body) - c.at} bytes after its last column")
    table = Table(names, window, sid, {x: cols[x] for x in stats})
    return _payload(head, table, scale, offset, dbc, dictionary.get("schema"), dict(by_name))


_Signals = tuple[tuple[str, ...], list[Any], np.ndarray, np.ndarray, dict[str, Resolution]]
_KNOWN_SIGNALS: dict[tuple[str | None, bytes, bytes], _Signals] = {}  # a few dictionaries, checked
_KNOWN_MAX_BYTES = 16_384  # a dictionary remembered is at most this (some 400 names): 32 of them hold about 25 MB at worst


def _signals2(dictionary: dict[str, Any], raw: bytes, r: _Reader2, schema: Schema | None) -> _Signals:
    """A layout-2 or -3 payload's signals, checked: names, resolutions as the dictionary lists
    them, (scale, offset) columns (``_resolutions``) and by name. A vehicle's payloads repeat
    the same few dictionaries (and presence runs), so each is read and checked once: the
    arrays returned are shared, not to be changed."""
    runs = b""
    if "schema" in dictionary:
        schema, extra, as_float = _schema_of2(dictionary, schema)
        runs = r.section()
    key = (schema.id if schema is not None and "schema" in dictionary else None, raw, runs)
    known = _KNOWN_SIGNALS.get(key)
    if known is not None:
        return known
    names: Any
    res: Any
    if "schema" in dictionary:
        assert schema is not None
        names, res = _present2(runs, schema, extra, as_float)
    else:
        names, res = dictionary.get("names"), dictionary.get("res")
    if not (isinstance(names, list) and isinstance(res, list) and len(names) == len(res)
            and all(isinstance(x, str) and x for x in names) and len(set(names)) == len(names)):
        raise WireError("aggregates dictionary: names must be distinct strings, one resolution each")
    scale, offset = _resolutions(names, res)
    by_name = {n: (s, o) if s == s else None for n, s, o in zip(names, scale.tolist(), offset.tolist())}
    known = (tuple(names), res, scale, offset, by_name)
    if len(raw) + len(runs) <= _KNOWN_MAX_BYTES:  # a vehicle's few dictionaries; not a huge one a sender made up
        if len(_KNOWN_SIGNALS) >= 32:  # bounded: a long-running decoder sees many vehicles
            _KNOWN_SIGNALS.clear()
        _KNOWN_SIGNALS[key] = known
    return known


def _grid_section(r: _Reader2) -> list[list[int]]:
    """Layout 3's grids: a count column of (position from the previous one's, s) pairs."""
    raw = r.section()
    if not raw:  # no grids (the usual payload)
        return []
    flat = _read_uvarints(raw, int((np.frombuffer(raw, np.uint8) < 0x80).sum()))
    if len(flat) % 2 or (len(flat) and flat.max() > np.uint64(2**31)):
        raise WireError("aggregates payload: grids must be pairs of (position, s)")
    pairs = flat.astype(np.int64).reshape(-1, 2)
    if (pairs[1:, 0] < 1).any():
        raise WireError("aggregates payload: grid positions must increase")
    pairs[:, 0] = np.cumsum(pairs[:, 0])
    return [[int(i), int(s)] for i, s in pairs.tolist()]


def _schema_of2(dictionary: dict[str, Any], schema: Schema | None) -> tuple[Schema, Mapping[str, Any], list[Any]]:
    """The schema a layout-2 payload numbers its signals in (``schema`` if it is that one, else
    a registered one), its ``extra`` and its ``as_float``, checked."""
    wanted = dictionary.get("schema")
    if schema is None or schema.id != wanted:
        schema = _SCHEMAS.get(str(wanted))
    if schema is None:
        raise WireError(f"aggregates payload names its signals by schema {wanted!r}, which this decoder does not have: "
                        "give it the vehicle's DBC files (decode-cloud --dbc, or the configuration)")
    extra = dictionary.get("extra", {"names": [], "res": []})
    as_float = dictionary.get("as_float", [])
    if not (isinstance(extra, dict) and isinstance(extra.get("names"), list) and isinstance(extra.get("res"), list)
            and len(extra["names"]) == len(extra["res"]) and isinstance(as_float, list)):
        raise WireError("aggregates dictionary: a schema payload's 'extra' is {names, res}, its 'as_float' a list")
    return schema, extra, as_float


def _present2(raw: bytes, schema: Schema, extra: Mapping[str, Any], as_float: list[Any]) -> tuple[list[str], list[Any]]:
    """Names and resolutions of a layout-2 payload that numbers its signals in a schema: runs
    (``raw``) over the schema's signals (absent, present, absent, ...), then ``extra`` by name."""
    n_schema = len(schema.names)
    runs = _read_uvarints(raw, int((np.frombuffer(raw, np.uint8) < 0x80).sum())).astype(np.int64)
    if int(runs.sum()) > n_schema or (len(runs) > 1 and (runs[1:] == 0).any()):
        raise WireError(f"aggregates payload: presence runs that do not fit a schema of {n_schema} signals")
    present = np.zeros(n_schema, bool)
    edges = np.cumsum(runs)
    for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        present[a:b] = True
    return _named(schema, present, extra, as_float)


def _finite(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _count(x: Any) -> bool:
    return type(x) is int and x >= 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _json_of(raw: bytes) -> Any:
    """``json.loads(raw, parse_constant=_no_constant)``, without a decoder made each time."""
    return _JSON_DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


# -- thinning ------------------------------------------------------------------------------------


def thin(p: Payload, factor: int, stats: Sequence[str] | None = None) -> Payload:
    """Fewer bytes for the same period: windows merged ``factor`` to one (exactly, from the
    statistics that are there), and/or fewer statistics. Says so in ``thinned``."""
    t = p.table
    keep = tuple(s for s in (stats or t.stats) if s in t.stats)
    if "count" not in keep:
        keep = ("count", *keep)
    if factor > 1 and len(t):
        k = t.window // factor
        order = np.lexsort((t.window, k, t.sid))
        sid, kk = t.sid[order], k[order]
        s = {name: v[order] for name, v in t.stats.items()}
        new = _starts(sid) | np.concatenate(([True], kk[1:] != kk[:-1]))
        b = np.flatnonzero(new)
        e = np.append(b[1:], len(sid))
        n = s["count"].astype(np.float64)
        total = np.add.reduceat(n, b)
        out: dict[str, np.ndarray] = {"count": np.add.reduceat(s["count"], b)}
        if "mean" in s:
            mean = np.add.reduceat(n * s["mean"], b) / total
            out["mean"] = mean
            if "std" in s:
                dev = s["mean"] - np.repeat(mean, e - b)
                out["std"] = np.sqrt(np.maximum(np.add.reduceat(n * (s["std"] ** 2 + dev * dev), b) / total, 0.0))
        if "min" in s:
            out["min"] = np.minimum.reduceat(s["min"], b)
        if "max" in s:
            out["max"] = np.maximum.reduceat(s["max"], b)
        if "first" in s:
            out["first"] = s["first"][b]
        if "last" in s:
            out["last"] = s["last"][e - 1]
        for ext, t_ext in (("min", "t_min"), ("max", "t_max")):
            if t_ext in s and ext in s:
                at = np.where(s[ext] == np.repeat(out[ext], e - b), s[t_ext], np.inf)
                out[t_ext] = np.minimum.reduceat(at, b)
        keep = tuple(x for x in keep if x in out)
        t = Table(t.names, kk[b], sid[b], {x: out[x] for x in keep})
    else:
        factor = 1
        t = t.select(keep)
    previous = dict(p.thinned or {})
    thinned = {"factor": factor * int(previous.get("factor", 1)), "from_width": previous.get("from_width", p.width),
               "stats": list(keep)}
    return Payload(p.vehicle, p.seq, p.group, p.width * factor, p.start, p.end, t, p.late_samples, p.late_oldest,
                   p.part, thinned, p.res, p.schema)


def split(p: Payload, parts: int) -> list[Payload]:
    """The payload cut by signal into ``parts`` payloads of about equal cells (for the size cap)."""
    t = p.table
    bounds = np.searchsorted(t.sid, np.linspace(0, len(t.names), parts + 1).round().astype(np.int64))
    out = []
    for i in range(parts):
        a, b = int(bounds[i]), int(bounds[i + 1])
        ids = np.unique(t.sid[a:b])
        remap = np.full(len(t.names), -1, np.int64)
        remap[ids] = np.arange(len(ids))
        names = tuple(t.names[j] for j in ids.tolist())
        sub = Table(names, t.window[a:b], remap[t.sid[a:b]], {s: v[a:b] for s, v in t.stats.items()})
        out.append(Payload(p.vehicle, p.seq, p.group, p.width, p.start, p.end, sub, p.late_samples, p.late_oldest,
                           (i, parts), p.thinned, p.res, p.schema))
    return out


# -- checking without reading the cells ----------------------------------------------------------


def check(data: bytes | bytearray | memoryview, schema: Schema | None = None) -> dict[str, Any]:
    """What ``decode`` refuses, refused with the same WireError, without making the payload's
    values: its header (``vehicle``, ``seq``, ``group``, ``width``, ``start``, ``end`` and
    ``part``, as ``decode``'s Payload has them). For whoever keeps the bytes as they came and
    needs no value (the uploader spools them; the cloud gets those bytes). Layouts 2 and 3 are
    checked here as ``_decode_v2`` checks them, in the same order (every length, count, order
    and section it checks, from the same remembered dictionaries and cells); any other layout
    is decoded."""
    data = bytes(data)
    if not is_payload(data) or len(data) < _OUTER.size:
        raise WireError("not an aggregates payload (no TLMA prefix)")
    _, version, codec_id, size = _OUTER.unpack_from(data)
    if version not in (2, 3):
        p = decode(data, schema)
        return {"vehicle": p.vehicle, "seq": p.seq, "group": p.group, "width": p.width, "start": p.start,
                "end": p.end, "part": p.part}
    if codec_id >= len(CODECS):
        raise WireError(f"aggregates payload of unknown codec {codec_id}")
    if size > MAX_BODY:
        raise WireError(f"aggregates body of {size} bytes is over {MAX_BODY}")
    head = _check_v2(_decompress(data[_OUTER.size:], CODECS[codec_id], size, version), schema, version)
    part = head.get("part", [0, 1])
    return {"vehicle": head["vehicle"], "seq": head["seq"], "group": head["group"], "width": float(head["width"]),
            "start": float(head["start"]), "end": float(head["end"]), "part": (int(part[0]), int(part[1]))}


def _check_v2(body: bytes, schema: Schema | None, version: int) -> dict[str, Any]:
    """``_decode_v2``'s checks, in its order, and its header: each column is read (``_Columns``:
    its bytes, its number of values) but only the windows and counts are made of them (their
    values are checked); the value statistics are not."""
    head, _, names, scale, _, _, grid, stats, rows, c, layout, _, _, flags, sid, _ = _open_v2(body, schema, version)
    n_sig, cells = len(names), layout.count()
    collapsed = np.unpackbits(np.frombuffer(flags, np.uint8), count=cells).view(bool)
    wide = ~collapsed
    n_wide = int(np.count_nonzero(wide))
    n_collapsed = cells - n_wide
    dbc = ~np.isnan(scale)
    floats = None  # the cells of float signals
    if dbc.all():
        ints, n_ints, n_c, n_floats, n_cf = wide, n_wide, n_collapsed, 0, 0
    else:
        cell_exact = dbc[sid]
        ints, floats = wide & cell_exact, wide & ~cell_exact
        n_ints, n_c = int(np.count_nonzero(ints)), int(np.count_nonzero(collapsed & cell_exact))
        n_floats, n_cf = n_wide - n_ints, n_collapsed - n_c
    if rows:
        c.ints(n_c)
        c.floats(n_cf)
        c.ints(n_ints)
        if rows[0] == "mean":
            coarse = [i for i, s in grid if s < _ROUND_GRID]
            summed = _exact_means(ints, sid, coarse, n_sig, head.get("thinned"), version) \
                if version == 2 or head.get("thinned") or coarse else None
            c.uints(0 if summed is None else int(np.count_nonzero(summed)))
        c.floats(n_floats)
        for _ in rows[1:]:
            c.offsets(n_ints)
            c.floats(n_floats)
    if "std" in stats:
        steps_of, as_is = ints, floats
        if grid:
            by_grid = np.zeros(n_sig, bool)
            by_grid[[i for i, _ in grid]] = True
            steps_of, as_is = ints & ~by_grid[sid], wide & (~dbc[sid] | by_grid[sid])
        c.uints(int(np.count_nonzero(steps_of)))
        c.floats(0 if as_is is None else int(np.count_nonzero(as_is)))
    if "t_min" in stats or "t_max" in stats:  # as _times reads them
        c.ints(n_collapsed)
        for stat in ("t_min", "t_max"):
            if stat in stats:
                c.ints(n_wide)
    if c.at != len(body):
        raise WireError(f"aggregates body has {len(body) - c.at} bytes after its last column")
    return head

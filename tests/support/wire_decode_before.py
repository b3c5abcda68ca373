"""The layout-2 and -3 decoder of telemetry.wire as it was before it read every column of a
payload in one pass (main at dd9d763): the reference the tests compare the decoder with, payload
for payload and reason for reason. Its code and docstrings are as they were; the parts the two
share and the new decoder did not change (the header's checks, the dictionary's, the payload
classes, layout 1) are imported from ``telemetry.wire``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from telemetry.wire import (
    _MAX_GRID,
    _OUTER,
    _REF_ORDER,
    _ROUND_GRID,
    CODECS,
    MAX_BODY,
    READS,
    Payload,
    Schema,
    Table,
    WireError,
    _check_header,
    _count,
    _decompress,
    _exact_means,
    _first_window,
    _no_constant,
    _payload,
    _signals2,
    is_payload,
)
from telemetry.wire import decode as _decode_any


def decode(data: bytes | bytearray | memoryview, schema: Schema | None = None) -> Payload:
    """``telemetry.wire.decode`` as it was (layout 1 is read by today's, which it did not change)."""
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
    return _decode_any(data, schema)


def _starts(sid: np.ndarray) -> np.ndarray:
    """True where a new signal's run of cells begins."""
    first = np.ones(len(sid), dtype=bool)
    if len(sid) > 1:
        np.not_equal(sid[1:], sid[:-1], out=first[1:])
    return first

def _undelta(d: np.ndarray, first: np.ndarray) -> np.ndarray:
    if not len(d):
        return d
    c = np.cumsum(d)
    starts = np.flatnonzero(first)
    base = c[starts] - d[starts]
    return c - base[np.cumsum(first) - 1]




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
    u = _read_uvarints(raw, count)
    return (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)



def _join_delta(col: np.ndarray, first: np.ndarray) -> np.ndarray:
    d = np.empty_like(col)
    n = int(first.sum())
    d[first], d[~first] = col[:n], col[n:]
    return _undelta(d, first)


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


class _Reader2:
    """Layout 2's body: sections, each a LEB128 length and its bytes."""

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

    def ints(self, count: int) -> np.ndarray:
        return _read_varints(self.section(), count)

    def offsets(self, count: int) -> np.ndarray:
        raw = self.section()
        if not raw or raw[0] > 2:
            raise WireError("payload offset column without its sign byte")
        if raw[0] == 0:
            return _read_varints(raw[1:], count)
        u = _read_uvarints(raw[1:], count)
        if len(u) and u.max() > np.uint64(2**62):
            raise WireError("payload offset column has a value out of range")
        return u.astype(np.int64) * (1 if raw[0] == 1 else -1)

    def uints(self, count: int) -> np.ndarray:
        u = _read_uvarints(self.section(), count)
        if len(u) and u.max() > np.uint64(2**62):
            raise WireError("payload count column has a value out of range")
        return u.astype(np.int64)

    def floats(self, count: int) -> np.ndarray:
        raw = self.section()
        if not raw or raw[0] not in (4, 8) or len(raw) - 1 != raw[0] * count:
            raise WireError(f"payload float column of {len(raw)} bytes, {count} values expected")
        width = raw[0]
        data = np.frombuffer(raw, np.uint8, count * width, 1).reshape(width, count).T.copy()
        return data.view("<f4" if width == 4 else "<f8").reshape(count).astype(np.float64)


def _decode_v2(body: bytes, schema: Schema | None, version: int = 2) -> Payload:
    """Layouts 2 and 3 (which differ only in how the mean travels: ``_exact_means``)."""
    r = _Reader2(body)
    try:
        head = _check_header(json.loads(r.section(), parse_constant=_no_constant), 2)
        raw_dictionary = r.section()
        dictionary = json.loads(raw_dictionary, parse_constant=_no_constant)
    except ValueError as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"aggregates header or dictionary is not JSON: {exc}") from None
    if not isinstance(dictionary, dict):
        raise WireError("aggregates dictionary is not a JSON object")
    names, res, scale, offset, by_name = _signals2(dictionary, raw_dictionary, r, schema)
    n_sig = len(names)
    scale, offset = scale.copy(), offset.copy()
    dbc = ~np.isnan(scale)
    grid = dictionary.get("grid", []) if version == 2 else _grid_section(r)
    if not (isinstance(grid, list) and all(isinstance(g, list) and len(g) == 2 and _count(g[0]) and g[0] < n_sig
                                           and _count(g[1]) and g[1] <= _MAX_GRID and res[g[0]] is None for g in grid)):
        raise WireError("aggregates dictionary: 'grid' must list [position, s] of signals without a resolution")
    for i, s in grid:
        scale[i], offset[i] = 2.0**-s, 0.0
    k0 = int(r.ints(1)[0]) + _first_window(float(head["start"]), float(head["width"]))
    same = r.uints(n_sig)
    if (same > np.arange(n_sig)).any():
        raise WireError("aggregates payload: a signal shares the cells of a signal after it")
    own = same == 0
    n_own = int(own.sum())
    own_cells = r.uints(n_own)
    own_sid = np.repeat(np.arange(n_own, dtype=np.int64), own_cells)
    own_first = _starts(own_sid)
    total_own = int(own_cells.sum())
    own_window = _join_delta(r.ints(total_own), own_first) + k0
    own_count = _join_delta(r.ints(total_own), own_first)
    # each signal's cells: its own, or those of the signal it shares them with
    src = np.arange(n_sig) - same  # pointer jumping: each points back until a signal with its own
    while n_sig:
        further = src[src]
        if np.array_equal(further, src):
            break
        src = further
    own_no = np.cumsum(own) - 1
    per_signal = own_cells[own_no[src]] if n_sig else np.zeros(0, np.int64)
    cells = int(per_signal.sum())
    sid = np.repeat(np.arange(n_sig, dtype=np.int64), per_signal)
    own_at = np.concatenate(([0], np.cumsum(own_cells)[:-1])).astype(np.int64)
    at = np.repeat(own_at[own_no[src]] - np.concatenate(([0], np.cumsum(per_signal)[:-1])), per_signal) + np.arange(cells)
    window, count = own_window[at], own_count[at]
    if len(count) and (count < 1).any():
        raise WireError("aggregates payload has a cell with no samples")
    first = _starts(sid)
    if len(window) and (np.diff(window)[~first[1:]] <= 0).any():
        raise WireError("aggregates payload: a signal's windows are not in order")
    collapsed, cell_exact, sc, off = _cells(r.section(), cells, sid, scale, offset)
    wide = ~collapsed
    ints, floats = wide & cell_exact, wide & ~cell_exact
    start = window * float(head["width"])
    stats: list[str] = head["stats"]
    ref = next((x for x in _REF_ORDER if x in stats), None)
    cols: dict[str, np.ndarray] = {"count": count}
    n_ints, n_floats = int(ints.sum()), int(floats.sum())

    def values(q: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
        out[mask] = q.astype(np.float64) * sc[mask] + off[mask]

    if ref is not None:
        c_int, c_float = collapsed & cell_exact, collapsed & ~cell_exact
        one = np.zeros(cells)
        values(_join_delta(r.ints(int(c_int.sum())), _starts(sid[c_int])), c_int, one)
        one[c_float] = r.floats(int(c_float.sum()))
        ref_q = _join_delta(r.ints(n_ints), _starts(sid[ints]))
        rem = None
        if ref == "mean":  # the remainders of the means that travel as sums; the others are rounded
            coarse = [i for i, s in grid if s < _ROUND_GRID]
            summed = _exact_means(ints, sid, coarse, n_sig, head.get("thinned"), version)
            rem = np.zeros(cells)
            rem[summed] = r.uints(int(summed.sum())) / count[summed]
            rem = rem[ints]
        ref_f = r.floats(n_floats)
        for stat in ("mean", "min", "max", "first", "last"):
            if stat not in stats:
                continue
            x = one.copy()
            if stat == ref:
                if rem is not None:
                    x[ints] = (ref_q + rem) * sc[ints] + off[ints]
                else:
                    values(ref_q, ints, x)
                x[floats] = ref_f
            else:
                values(ref_q + r.offsets(n_ints), ints, x)
                x[floats] = r.floats(n_floats)
            cols[stat] = x
    if "std" in stats:
        by_grid = np.zeros(n_sig, bool)
        by_grid[[i for i, _ in grid]] = True
        steps_of, as_is = ints & ~by_grid[sid], wide & (~cell_exact | by_grid[sid])
        x = np.zeros(cells)
        x[steps_of] = r.uints(int(steps_of.sum())) * np.abs(sc[steps_of])
        x[as_is] = r.floats(int(as_is.sum()))
        cols["std"] = x
    _times(r, stats, cells, collapsed, wide, start, cols)
    if r.at != len(r.body):
        raise WireError(f"aggregates body has {len(r.body) - r.at} bytes after its last column")
    table = Table(names, window, sid, {x: cols[x] for x in stats})
    return _payload(head, table, scale, offset, dbc, dictionary.get("schema"), dict(by_name))


def _grid_section(r: _Reader2) -> list[list[int]]:
    """Layout 3's grids: a count column of (position from the previous one's, s) pairs."""
    raw = r.section()
    flat = _read_uvarints(raw, int((np.frombuffer(raw, np.uint8) < 0x80).sum()))
    if len(flat) % 2 or (len(flat) and flat.max() > np.uint64(2**31)):
        raise WireError("aggregates payload: grids must be pairs of (position, s)")
    pairs = flat.astype(np.int64).reshape(-1, 2)
    if (pairs[1:, 0] < 1).any():
        raise WireError("aggregates payload: grid positions must increase")
    pairs[:, 0] = np.cumsum(pairs[:, 0])
    return [[int(i), int(s)] for i, s in pairs.tolist()]



"""Every message the components exchange and send to the cloud, typed, in one place.

A message is a frozen dataclass of one *kind*. Each kind has one encoder (``encode()``: a
JSON-ready dict with ``"v"`` and ``"kind"``) and one decoder (``decode(event)``: the dict back
to the dataclass, checked; a malformed event is refused with a ``MessageError`` whose reason a
person can act on). What a kind *is* lives on its class: its name, its spool priority and its
IoT Core topic. ``docs/MESSAGES.md`` documents each kind with an example. New fields may be
added to a kind without a version change; renaming or removing one needs a new ``v``.

Signals travel in columns: one flat batch (names, name number per sample, times, values) per
batch of frames, never one message per frame. On the wire between components a signals batch is
*binary* (``COLUMNS_MAGIC``, a small JSON header, then the raw little-endian float64 columns:
see ``Signals.to_bytes``), because encoding and parsing floats as JSON text cost 10-40 times
more (measured in docs/MESSAGES.md); every other kind is compact JSON.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any, ClassVar, TypeGuard

import numpy as np

from .. import wire
from .errors import MessageError

VERSION = 1

SIGNALS = "signals"
END_OF_STREAM = "end_of_stream"
AGGREGATES = "aggregates"
WINDOW = "window"
ALERT = "alert"
GAP = "gap"
HEALTH = "health"
STATUS = "status"
BUNDLE = "bundle"
BATCH = "batch"

ALERT_STATES = ("raised", "update", "cleared")
SEVERITIES = ("info", "warning", "critical")

# Frame counters carried by every signals batch (per batch) and by end_of_stream (totals).
FRAME_COUNTERS = (
    "read",
    "error",
    "remote",
    "decoded",
    "unknown_id",
    "decode_error",
)
# The counters whose frames' event times a signals batch carries (bus rules count them in time).
EVENT_COUNTERS = ("error", "remote", "unknown_id", "decode_error")

# The latest event time, in seconds either side of 1970, that any component takes: 2**53 us
# (2255-06-05), as far as a float64 count of seconds holds whole microseconds. A time past it is no
# CAN frame's (a log in milliseconds or microseconds read as seconds, a corrupt field): the reader
# quarantines such a frame (``ClockGuard``), and a signals message carrying one is refused.
MAX_EVENT_TIME = 2.0 ** 53 / 1e6


# -- checks shared by the decoders -----------------------------------------------------------------


def _field(event: Mapping[str, Any], key: str) -> Any:
    if key not in event:
        raise MessageError(f"{event.get('kind')} message without '{key}'")
    return event[key]


def _number(value: Any, where: str, *, optional: bool = False) -> float:
    if value is None and optional:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(f"{where} must be a finite number, not {value!r}")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MessageError(f"{where} must be a whole number, zero or more, not {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MessageError(f"{where} must be a non-empty string, not {value!r}")
    return value


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MessageError(f"{where} must be an object")
    return value


def _counters(value: Any, where: str) -> dict[str, int]:
    return {str(k): _count(n, f"{where}.{k}") for k, n in _table(value, where).items()}


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


# -- the kinds -----------------------------------------------------------------------------------


class Message:
    """Base of every kind. ``priority``: spool order (lower is sent first; None: never spooled);
    ``cloud_topic``: the suffix of its IoT Core topic under the vehicle's prefix (None: local)."""

    kind: ClassVar[str]
    binary: ClassVar[bool] = False  # published as bytes (``to_bytes``), not as a JSON object
    bundled: ClassVar[bool] = True  # sent to IoT Core in bundles of several; False: each publish alone
    priority: ClassVar[int | None] = None
    cloud_topic: ClassVar[str | None] = None

    def encode(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Message:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message as published: compact JSON, except for the kinds that travel as binary.
        A message decoded from bytes gives back the bytes it was read from (not encoded again)."""
        data = self.__dict__.get("_wire")
        return data if data is not None else dumps(self.encode())


# The binary layout of a signals batch (docs/MESSAGES.md): the magic, the header's length
# (uint32, little-endian), the header (UTF-8 JSON, space-padded so the columns start at a multiple
# of 8), then each column of the header's "columns" in order, "sum(counts)" items each.
COLUMNS_MAGIC = b"TLMC"
BATCH_MAGIC = b"TLMB"  # a batch: its JSON header (the items' sizes), then the items' JSON bytes
_PREFIX = struct.Struct("<4sI")
_COLUMNS = {"t": "<f8", "v": "<f8"}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


_COLUMNS_JSON = _compact(_COLUMNS)
_NAMES_JSON: dict[tuple[str, ...], bytes] = {}  # a reader's few name tables, as JSON


def _binary_head(payload: bytes, magic: bytes, kind: str, what: str, plural: str) -> tuple[Mapping[str, Any], int]:
    """The JSON header of a binary layout (magic, uint32 length, header), checked, and where the
    rest of the payload starts. ``what`` names the layout in the reasons ("binary <what> ...")."""
    if len(payload) < _PREFIX.size or payload[:4] != magic:
        raise MessageError(f"not a binary {what} (no {magic.decode()} header)")
    size = _PREFIX.unpack_from(payload)[1]
    if size > len(payload) - _PREFIX.size:
        raise MessageError(f"binary {kind} header of {size} bytes in a payload of {len(payload)}")
    try:
        head = _table(json.loads(payload[_PREFIX.size:_PREFIX.size + size]), f"binary {kind} header")
    except ValueError as exc:
        raise MessageError(f"binary {kind} header is not JSON: {exc}") from None
    if head.get("v") != VERSION or head.get("kind") != kind:
        raise MessageError(f"binary payload of version {head.get('v')!r}, kind {head.get('kind')!r} "
                           f"(this build reads v{VERSION} {plural})")
    return head, _PREFIX.size + size


_TABLES: dict[bytes, tuple[str, ...] | None] = {}  # a few name tables of signals headers read, by their JSON text
_NAMES_KEY = b'"names":'


def _signals_head(payload: bytes) -> tuple[Mapping[str, Any], int, tuple[str, ...] | None]:
    """``_binary_head`` of a signals payload, and its names, checked, when its header names them
    as one read before did (None: they are the header's own ``names``, to be checked). The names
    are most of a header and batches repeat a few tables: a table seen before is looked up by its
    JSON text and the rest of the header is parsed alone, with ``[]`` in its place. Taken only
    where that text is certainly the value of the header's one ``"names"`` key (the key once in
    the text, after ``{`` or ``,``: not inside a string; the parse then finds ``[]`` there), so
    the header read is the one ``json.loads`` gives; anything else (and every refusal, with its
    reason) is the whole parse's."""
    if len(payload) > _PREFIX.size and payload[:4] == COLUMNS_MAGIC:
        end = _PREFIX.size + _PREFIX.unpack_from(payload)[1]
        text = payload[_PREFIX.size:end]
        where = _names_value(text) if end <= len(payload) else None
        names = _TABLES.get(text[where[0]:where[1]]) if where is not None else None
        if where is not None and names is not None:
            try:
                head = json.loads(text[:where[0]] + b"[]" + text[where[1]:])
            except ValueError:
                head = None
            if (isinstance(head, dict) and head.get("names") == [] and head.get("v") == VERSION
                    and head.get("kind") == SIGNALS):
                return head, end, names
    head, start = _binary_head(payload, COLUMNS_MAGIC, SIGNALS, "signals payload", "signals")
    return head, start, _learn_table(payload[_PREFIX.size:start], head.get("names"))


def _names_value(text: bytes) -> tuple[int, int] | None:
    """Where the value of a signals header's ``"names"`` key lies in its JSON text, when that is
    certain: the key once in the text, after ``{`` or ``,`` (not inside a string), its value up
    to the next ``,"counts":``; else None."""
    at = text.find(_NAMES_KEY)
    if at <= 0 or text[at - 1] not in b"{," or text.count(_NAMES_KEY) != 1:
        return None
    stop = text.find(b',"counts":', at)
    return None if stop < 0 else (at + len(_NAMES_KEY), stop)


def _distinct_names(names: Any) -> TypeGuard[list[str]]:
    """A list of distinct non-empty strings (a signals header's ``names``)."""
    return isinstance(names, list) and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)


def _learn_table(text: bytes, names: Any) -> tuple[str, ...] | None:
    """Keep a header's names (a valid table) by their JSON text, the second time that text comes
    (a live bus's tables are new more often than not: no cost for them), if it is certainly
    theirs: the one ``"names"`` key, after ``{`` or ``,``, its value up to the next
    ``,"counts":``, and that text alone parses to the same names. The table kept (checked), or
    None: the header's names are yet to be checked."""
    where = _names_value(text)
    if where is None:
        return None
    value = text[where[0]:where[1]]
    if value not in _TABLES:
        if len(_TABLES) >= 32:
            _TABLES.clear()
        _TABLES[value] = None  # seen once
        return None
    if not names or not _distinct_names(names):
        return None
    try:
        if json.loads(value) != names:
            return None
    except ValueError:
        return None
    table = _TABLES[value] = tuple(names)
    return table


def is_binary(payload: Any) -> bool:
    """A payload in one of the binary layouts (a signals batch, a batch of messages), as opposed
    to JSON."""
    return isinstance(payload, (bytes, bytearray, memoryview)) and bytes(payload[:4]) in _BINARY


@dataclass(frozen=True)
class SignalColumns:
    """Event times (seconds) and values of one signal, sorted as read."""

    t: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True)
class FlatBatch:
    """A batch's samples of all signals in three flat arrays plus a name table: how the
    aggregator and the detector process a batch with a fixed number of numpy calls, whatever the
    number of signals in it. Samples of one signal are contiguous and keep their order."""

    names: tuple[str, ...]
    ids: np.ndarray  # index into names, per sample
    t: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls) -> FlatBatch:
        return cls((), np.empty(0, np.int64), np.empty(0), np.empty(0))

    @classmethod
    def from_columns(cls, columns: Mapping[str, SignalColumns]) -> FlatBatch:
        names = tuple(columns)
        if not names:
            return cls.empty()
        return cls(
            names,
            np.repeat(np.arange(len(names)), [len(c) for c in columns.values()]),
            np.concatenate([c.t for c in columns.values()]).astype(np.float64, copy=False),
            np.concatenate([c.v for c in columns.values()]).astype(np.float64, copy=False),
        )

    @cached_property
    def layout(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Where each signal's samples start (``bounds[i]:bounds[i + 1]``) and which signals'
        samples are not in time order; None if the batch does not hold each signal's samples in
        one run, in table order (the reader's batches do). Worked out once a batch: every rule
        of the detector asks it."""
        ids, t = self.ids, self.t
        if len(ids) and not (ids[1:] >= ids[:-1]).all():
            return None
        bounds = np.searchsorted(ids, np.arange(len(self.names) + 1))
        unordered = np.zeros(len(self.names), bool)
        # a later sample of a signal before an earlier one, or a NaN time (it compares false)
        unordered[ids[1:][(ids[1:] == ids[:-1]) & ~(t[1:] >= t[:-1])]] = True
        return bounds, unordered

    @cached_property
    def memo(self) -> dict[Any, Any]:
        """What the detector's rules work out once from this batch and share (the numbers of its
        names, each set of signals' samples): every rule of the detector looks at the same batch."""
        return {}

    def bounds(self) -> np.ndarray:
        """Where each name's samples start (and the last one ends): ``bounds[i]:bounds[i+1]``."""
        return np.searchsorted(self.ids, np.arange(len(self.names) + 1))

    def columns(self) -> dict[str, SignalColumns]:
        b = self.bounds()
        return {name: SignalColumns(self.t[b[i]:b[i + 1]], self.v[b[i]:b[i + 1]]) for i, name in enumerate(self.names)}


@dataclass(frozen=True)
class Signals(Message):
    """A batch of decoded signals, as columns."""

    kind: ClassVar[str] = SIGNALS
    binary: ClassVar[bool] = True

    source: str
    seq: int
    start: float
    end: float
    frames: Mapping[str, int]
    batch: FlatBatch
    # per frame counter but "read" and "decoded": the event times of the frames it counted
    events: Mapping[str, np.ndarray] = field(default_factory=dict)

    def _head(self) -> dict[str, Any]:
        return {
            "v": VERSION, "kind": SIGNALS, "source": self.source, "seq": self.seq,
            "span": {"start": self.start, "end": self.end},
            "frames": {key: int(self.frames.get(key, 0)) for key in FRAME_COUNTERS},
        }

    def _events(self) -> dict[str, np.ndarray]:
        return {key: self.events[key] for key in EVENT_COUNTERS if key in self.events and len(self.events[key])}

    def encode(self) -> dict[str, Any]:
        """The JSON form (readable; what tools and tests print). Publishers send ``to_bytes()``."""
        b = self.batch.bounds().tolist()
        t, v = self.batch.t.tolist(), self.batch.v.tolist()
        return {**self._head(),
                "signals": {name: {"t": t[b[i]:b[i + 1]], "v": v[b[i]:b[i + 1]]} for i, name in enumerate(self.batch.names)},
                "events": {key: times.tolist() for key, times in self._events().items()}}

    def to_bytes(self) -> bytes:
        """The binary form: the columns as raw float64 buffers, the rest in a JSON header."""
        batch = self.batch
        events = self._events()
        # the header as json.dumps writes {**_head(), "names", "counts", "columns", "events"};
        # the names' JSON (the longest part) is kept for the next batch of the same names
        names = _NAMES_JSON.get(batch.names)
        if names is None:
            if len(_NAMES_JSON) >= 16:
                _NAMES_JSON.clear()
            names = _NAMES_JSON[batch.names] = _compact(list(batch.names))
        text = b"".join((_compact(self._head())[:-1], b',"names":', names,
                         b',"counts":', _compact(np.diff(batch.bounds()).tolist()),
                         b',"columns":', _COLUMNS_JSON,
                         b',"events":', _compact({key: len(times) for key, times in events.items()}), b"}"))
        text += b" " * (-(len(text) + _PREFIX.size) % 8)
        # the columns' buffers joined as they are (one copy, not two)
        return b"".join((_PREFIX.pack(COLUMNS_MAGIC, len(text)), text,
                         np.ascontiguousarray(batch.t, "<f8").data, np.ascontiguousarray(batch.v, "<f8").data,
                         *(np.ascontiguousarray(times, "<f8").data for times in events.values())))

    @classmethod
    def from_bytes(cls, payload: bytes | bytearray | memoryview) -> Signals:
        """The binary form back, checked: every length is checked against the payload's own."""
        payload = bytes(payload)
        head, start, names, counts, total, event_counts = cls._layout(payload)
        t = np.frombuffer(payload, "<f8", total, start)
        v = np.frombuffer(payload, "<f8", total, start + 8 * total)
        events, at = {}, start + 16 * total
        for key, n in event_counts.items():
            events[key] = np.frombuffer(payload, "<f8", n, at)
            at += 8 * n
        batch = FlatBatch(names, np.repeat(np.arange(len(names)), np.array(counts, np.int64)), t, v)
        return cls._checked(head, batch, events)

    @classmethod
    def head_from_bytes(cls, payload: bytes | bytearray | memoryview) -> SignalsHead:
        """What the binary form says of itself, without building its batch: for a listener that
        only counts (a replay's taps, in another process than the components). It makes every
        check ``from_bytes`` makes, finite times and values included: a payload that one refuses,
        the other refuses, with the same reason."""
        payload = bytes(payload)
        head, start, _, _, total, event_counts = cls._layout(payload)
        times = np.frombuffer(payload, "<f8", total, start)
        values = np.frombuffer(payload, "<f8", total, start + 8 * total)
        events = np.frombuffer(payload, "<f8", sum(event_counts.values()), start + 16 * total)
        span_start, span_end, frames, seq = _signals_checks(head, times, values, (events,))
        return SignalsHead(str(head.get("source", "")), seq, span_start, span_end, frames, total)

    @classmethod
    def _layout(cls, payload: bytes) -> tuple[Mapping[str, Any], int, tuple[str, ...], list[int], int, dict[str, int]]:
        """The header of the binary form and where its columns lie: (header, where the columns
        start, names, counts, samples, event times per counter), every length checked against the
        payload's own."""
        head, start, names = _signals_head(payload)
        if head.get("columns") != _COLUMNS:
            raise MessageError(f"binary signals columns {head.get('columns')!r} (this build reads {_COLUMNS})")
        counts = head.get("counts")
        if names is None:
            listed = head.get("names")
            if not _distinct_names(listed):
                raise MessageError("binary signals 'names' must be a list of distinct non-empty strings")
            names = tuple(listed)
        if not isinstance(counts, list) or len(counts) != len(names):
            raise MessageError("binary signals 'counts' must be a list with one count per name")
        if all(type(n) is int for n in counts) and min(counts, default=0) >= 0:  # JSON's whole numbers
            total = sum(counts)
        else:
            total = sum(_count(n, "counts[]") for n in counts)  # the one refused, named
        event_counts = _table(head.get("events", {}), "binary signals 'events'")
        if not event_counts.keys() <= set(EVENT_COUNTERS):
            raise MessageError(f"binary signals 'events' of unknown counters: {sorted(set(event_counts) - set(EVENT_COUNTERS))}")
        n_events = sum(_count(n, f"events.{k}") for k, n in event_counts.items())
        expected = start + 16 * total + 8 * n_events
        if len(payload) != expected:
            raise MessageError(f"binary signals payload is {len(payload)} bytes; its header says {expected}")
        return head, start, names, counts, total, dict(event_counts)

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Signals:
        signals = _field(event, "signals")
        if not isinstance(signals, Mapping):
            raise MessageError("signals message without a 'signals' object")
        lengths = []
        for name, column in signals.items():
            if not isinstance(column, Mapping) or not isinstance(column.get("t"), list) or not isinstance(column.get("v"), list):
                raise MessageError(f"signal {name!r} is not an object of 't' and 'v' arrays")
            if len(column["t"]) != len(column["v"]):
                raise MessageError(f"signal {name!r} has {len(column['t'])} times but {len(column['v'])} values")
            lengths.append(len(column["t"]))
        names = tuple(signals)
        total = sum(lengths)
        try:
            t = np.fromiter(chain.from_iterable(signals[n]["t"] for n in names), dtype=np.float64, count=total)
            v = np.fromiter(chain.from_iterable(signals[n]["v"] for n in names), dtype=np.float64, count=total)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"signals message has non-numeric data: {exc}") from None
        events = {}
        for key, times in _table(event.get("events", {}), "signals message 'events'").items():
            if key not in EVENT_COUNTERS or not isinstance(times, list):
                raise MessageError(f"signals 'events' must map counters ({', '.join(EVENT_COUNTERS)}) to arrays of times")
            try:
                events[key] = np.array(times, dtype=np.float64)
            except (TypeError, ValueError):
                raise MessageError(f"signals 'events' {key!r} has a time that is not a number") from None
        return cls._checked(event, FlatBatch(names, np.repeat(np.arange(len(names)), lengths), t, v), events)

    @classmethod
    def _checked(cls, event: Mapping[str, Any], batch: FlatBatch, events: dict[str, np.ndarray]) -> Signals:
        """What both forms share: the span, the counters, finite times and values."""
        start, end, frames, seq = _signals_checks(event, batch.t, batch.v, tuple(events.values()))
        return cls(str(event.get("source", "")), seq, start, end, frames, batch, events)


@dataclass(frozen=True)
class SignalsHead:
    """A signals batch without its samples (``Signals.head_from_bytes``): its span, its frame
    counters and how many samples it holds."""

    source: str
    seq: int
    start: float
    end: float
    frames: Mapping[str, int]
    samples: int


def _within(times: np.ndarray) -> bool:
    """Every (finite) time within ``MAX_EVENT_TIME`` of 1970."""
    return not len(times) or bool(max(-float(times.min()), float(times.max())) <= MAX_EVENT_TIME)


def _signals_checks(event: Mapping[str, Any], times: np.ndarray, values: np.ndarray,
                    event_times: tuple[np.ndarray, ...]) -> tuple[float, float, dict[str, int], int]:
    """The checks of a signals batch past its layout: its span, its samples' times and its event
    times finite and within ``MAX_EVENT_TIME``, its values finite, its counters.
    (start, end, frames, seq)."""
    span = _table(_field(event, "span"), "signals message 'span'")
    try:
        start, end = _number(span.get("start"), "span.start"), _number(span.get("end"), "span.end")
    except MessageError:
        raise MessageError("signals message without a numeric 'span' {start, end}") from None
    if not (np.isfinite(times).all() and np.isfinite(values).all()):  # a null, or a NaN a sender let through
        raise MessageError("signals message has a time or value that is not a finite number")
    if not all(np.isfinite(column).all() for column in event_times):
        raise MessageError("signals message has an event time that is not a finite number")
    if not (_within(times) and all(_within(column) for column in event_times)
            and abs(start) <= MAX_EVENT_TIME and abs(end) <= MAX_EVENT_TIME):
        raise MessageError(f"signals message has a time beyond {MAX_EVENT_TIME:.0f} s either side of 1970 "
                           "(2255): not an event time in seconds")
    frames = _counters(event.get("frames", {}), "frames")
    return start, end, frames, _count(event.get("seq", 0), "seq")


@dataclass(frozen=True)
class EndOfStream(Message):
    """The source has ended (the end of a replayed log)."""

    kind: ClassVar[str] = END_OF_STREAM

    source: str
    seq: int
    end: float | None
    totals: Mapping[str, int]

    def encode(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": END_OF_STREAM, "source": self.source, "seq": self.seq, "end": self.end,
                "totals": dict(self.totals)}

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> EndOfStream:
        end = _or_none(_number(event.get("end"), "end", optional=True))
        if end is not None and abs(end) > MAX_EVENT_TIME:
            raise MessageError(f"end_of_stream 'end' {end!r} is beyond {MAX_EVENT_TIME:.0f} s either side of 1970 (2255)")
        return cls(str(event.get("source", "")), _count(event.get("seq", 0), "seq"), end,
                   _counters(event.get("totals", {}), "totals"))


STATISTICS = ("count", "min", "max", "mean", "last", "std", "first", "t_min", "t_max")
_STATISTICS = frozenset(STATISTICS)


@dataclass(frozen=True)
class Window(Message):
    """Statistics of one event-time window of one window group: what the aggregator computes,
    in its readable form. Local: the uploader and the cloud get them as ``Aggregates``."""

    kind: ClassVar[str] = WINDOW

    vehicle: str
    seq: int
    group: str
    start: float
    end: float
    signals: Mapping[str, Mapping[str, float | int]]
    late_samples: int = 0
    late_oldest: float | None = None

    @property
    def key(self) -> str:
        """Its own identity, the same however often it is produced, spooled or sent."""
        return f"{self.group}/{self.start!r}"

    @property
    def event_time(self) -> float:
        return self.start

    def encode(self) -> dict[str, Any]:
        return {
            "v": VERSION, "kind": WINDOW, "vehicle": self.vehicle, "seq": self.seq, "group": self.group,
            "window": {"start": self.start, "end": self.end},
            "signals": {name: dict(stats) for name, stats in self.signals.items()},
            "late": {"samples": self.late_samples, "oldest": self.late_oldest},
        }

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Window:
        window = _table(_field(event, "window"), "window message 'window'")
        start, end = _number(window.get("start"), "window.start"), _number(window.get("end"), "window.end")
        if not start < end:
            raise MessageError(f"window.start {start} is not before window.end {end}")
        signals = _table(_field(event, "signals"), "window message 'signals'")
        for name, stats in signals.items():
            stats = _table(stats, f"signal {name!r}")
            if not stats:
                raise MessageError(f"signal {name!r} has no statistics")
            values = stats.values()
            # The common case in one pass: known statistics, plain numbers whose sum is finite
            # (a NaN or an infinity anywhere makes it not). Anything else is looked at one by one.
            if stats.keys() <= _STATISTICS and all(type(v) is float or type(v) is int for v in values) \
                    and math.isfinite(sum(values)):
                continue
            for stat, value in stats.items():
                if stat not in _STATISTICS:
                    raise MessageError(f"signal {name!r}: unknown statistic {stat!r}")
                _number(value, f"signal {name!r} {stat}")
        late = _table(event.get("late", {}), "late")
        return cls(
            _text(_field(event, "vehicle"), "vehicle"), _count(_field(event, "seq"), "seq"),
            _text(event.get("group", "default"), "group"), start, end, signals,
            _count(late.get("samples", 0), "late.samples"),
            _or_none(_number(late.get("oldest"), "late.oldest", optional=True)),
        )


@dataclass(frozen=True)
class Aggregates(Message):
    """The windows of one group over one publish period, in the compact columnar layout of
    ``telemetry.wire`` (binary: ``TLMA``): what the aggregator publishes, the uploader stores and
    IoT Core receives, as the same bytes."""

    kind: ClassVar[str] = AGGREGATES
    binary: ClassVar[bool] = True
    bundled: ClassVar[bool] = False  # a payload already holds a publish period: it goes alone
    priority: ClassVar[int | None] = 2
    cloud_topic: ClassVar[str | None] = "aggregates"

    payload: wire.Payload

    @property
    def key(self) -> str:
        return self.payload.key

    @property
    def event_time(self) -> float:
        return self.payload.start

    def to_bytes(self) -> bytes:
        wire_bytes = self.__dict__.get("_wire")
        if wire_bytes is None:
            raise MessageError("aggregates are made by aggregator.encode_payload (their bytes come with them)")
        return wire_bytes

    @classmethod
    def of(cls, payload: wire.Payload, data: bytes) -> Aggregates:
        message = cls(payload)
        object.__setattr__(message, "_wire", data)
        return message

    @classmethod
    def of_window(cls, window: Window, *, codec: str = "zlib") -> Aggregates:
        """One window (e.g. a JSON ``window`` message given to the uploader) as a payload of its
        own: every statistic it has, values as float64 (no DBC resolution is known here)."""
        names = tuple(sorted(window.signals))
        stats = [s for s in wire.STATISTICS if all(s in window.signals[n] for n in names)] if names else ["count"]
        if "count" not in stats:
            raise MessageError("a window whose signals have no 'count' cannot be sent")
        k = round(window.start / (window.end - window.start))
        table = wire.Table(names, np.full(len(names), k, np.int64), np.arange(len(names), dtype=np.int64),
                           {s: np.array([window.signals[n][s] for n in names],
                                        np.int64 if s == "count" else np.float64) for s in stats})
        width = window.end - window.start
        payload = wire.Payload(window.vehicle, window.seq, window.group, width, k * width, (k + 1) * width, table,
                               window.late_samples, window.late_oldest)
        return cls.of(payload, wire.encode(payload, codec=codec))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Aggregates:
        data = bytes(data)
        try:
            return cls.of(wire.decode(data), data)
        except wire.WireError as exc:
            raise MessageError(str(exc)) from None

    def encode(self) -> dict[str, Any]:
        """The readable form (tools, tests): the header and every window's statistics."""
        p = self.payload
        return {"v": VERSION, "kind": AGGREGATES, "vehicle": p.vehicle, "seq": p.seq, "group": p.group,
                "width": p.width, "period": {"start": p.start, "end": p.end}, "stats": list(p.stats),
                "late": {"samples": p.late_samples, "oldest": p.late_oldest}, "part": list(p.part),
                "thinned": p.thinned, "windows": {repr(k): v for k, v in p.windows().items()}}

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Aggregates:
        raise MessageError("aggregates travel binary (TLMA); this is a JSON object")


@dataclass(frozen=True)
class CheckedAggregates(Message):
    """An aggregates payload checked as ``Aggregates.from_bytes`` checks it (the same refusals,
    with the same reasons: ``wire.check``), its values not read: its header and its bytes. What
    ``decode(..., values=False)`` gives whoever only keeps the bytes as they came (the uploader
    spools them; IoT Core receives them)."""

    kind: ClassVar[str] = AGGREGATES
    binary: ClassVar[bool] = True
    bundled: ClassVar[bool] = False
    priority: ClassVar[int | None] = 2
    cloud_topic: ClassVar[str | None] = "aggregates"

    vehicle: str
    seq: int
    key: str  # as ``Aggregates.key`` (``wire.Payload.key``)
    event_time: float  # as ``Aggregates.event_time``: the period's start
    data: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return self.data

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CheckedAggregates:
        data = bytes(data)
        try:
            head = wire.check(data)
        except wire.WireError as exc:
            raise MessageError(str(exc)) from None
        key = wire.payload_key(head["group"], head["start"], head["part"])
        return cls(head["vehicle"], head["seq"], key, head["start"], data)


def alert_id(vehicle: str, rule: str, key: str, raised_t: float) -> str:
    """An alert's id: deterministic, so the same raise in a re-run or a retry gets the same id."""
    return f"{vehicle}/{rule}/{key}/{raised_t:.6f}"


@dataclass(frozen=True)
class Alert(Message):
    """A rule raised, updated or cleared an alert."""

    kind: ClassVar[str] = ALERT
    priority: ClassVar[int | None] = 0
    cloud_topic: ClassVar[str | None] = "alerts"

    vehicle: str
    id: str
    state: str
    rule: str
    rule_kind: str
    signal: str
    severity: str
    t: float
    value: float | None
    detail: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0  # 1, 2, 3, ... as the detector published them (0: not numbered), so a loss is seen

    @property
    def key(self) -> str:
        return f"{self.id}/{self.state}/{self.t!r}"

    @property
    def event_time(self) -> float:
        return self.t

    def encode(self) -> dict[str, Any]:
        return {
            "v": VERSION, "kind": ALERT, "vehicle": self.vehicle, "id": self.id, "state": self.state,
            "rule": self.rule, "rule_kind": self.rule_kind, "signal": self.signal, "severity": self.severity,
            "t": self.t, "value": self.value, "detail": dict(self.detail), **({"seq": self.seq} if self.seq else {}),
        }

    def to_bytes(self) -> bytes:
        """As published: the compact form when it says the same (docs/MESSAGES.md, "alert"):
        without ``id`` (it is ``<vehicle>/<rule>/<signal>/<raised_t>``), and without the detail
        that is its default: ``raised_t`` equal to ``t``, ``worst``/``worst_t`` equal to
        ``value``/``t``, ``flapping`` false, a stale rule's ``silent_for`` null."""
        data = self.__dict__.get("_wire")
        if data is not None:
            return data
        full = self.encode()
        short = _alert_compact(full)
        return dumps(short if short is not None and _alert_restored(short) == full else full)

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Alert:
        if "id" not in event:  # the compact form: what it left out is put back
            _field(event, "state")
            for name in ("vehicle", "rule", "rule_kind", "signal"):
                _text(_field(event, name), name)
            _number(_field(event, "t"), "t")
            _field(event, "value")
            raised = _table(event.get("detail", {}), "detail").get("raised_t", event["t"])
            _number(raised, "detail.raised_t")
            event = _alert_restored(event)
        state = _field(event, "state")
        if state not in ALERT_STATES:
            raise MessageError(f"alert state must be one of {', '.join(ALERT_STATES)}, not {state!r}")
        severity = _field(event, "severity")
        if severity not in SEVERITIES:
            raise MessageError(f"alert severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        return cls(
            _text(_field(event, "vehicle"), "vehicle"), _text(_field(event, "id"), "id"), state,
            _text(_field(event, "rule"), "rule"), _text(_field(event, "rule_kind"), "rule_kind"),
            _text(_field(event, "signal"), "signal"), severity, _number(_field(event, "t"), "t"),
            _or_none(_number(_field(event, "value"), "value", optional=True)),
            _table(event.get("detail", {}), "detail"), _count(event.get("seq", 0), "seq"),
        )


def _alert_compact(full: Mapping[str, Any]) -> dict[str, Any] | None:
    """An alert's JSON without what ``_alert_restored`` puts back, or None if its id is not
    the one its fields make (then it travels whole)."""
    out = dict(full)
    detail = dict(out.pop("detail", {}))
    if detail.get("raised_t") == out["t"]:
        del detail["raised_t"]
    if "worst" in detail and "worst_t" in detail and detail["worst"] == out["value"] and detail["worst_t"] == out["t"]:
        del detail["worst"], detail["worst_t"]
    if detail.get("flapping") is False:
        del detail["flapping"]
    if out.get("rule_kind") == "stale" and "silent_for" in detail and detail["silent_for"] is None:
        del detail["silent_for"]
    raised = detail.get("raised_t", out["t"])
    finite = isinstance(raised, (int, float)) and not isinstance(raised, bool) and math.isfinite(raised)
    if not finite or out.pop("id") != alert_id(out["vehicle"], out["rule"], out["signal"], raised):
        return None
    if detail:
        out["detail"] = detail
    return out


def _whole(message: Any) -> Any:
    """A message as read from a bundle: a compact alert made whole, anything else as it is."""
    if isinstance(message, dict) and message.get("kind") == ALERT and "id" not in message:
        try:
            return Alert.decode(message).encode()
        except MessageError:
            return message  # malformed: the consumer's own decode says why
    return message


def _alert_restored(short: Mapping[str, Any]) -> dict[str, Any]:
    """The whole alert of its compact form (no ``id``): the id and the detail's defaults."""
    out = dict(short)
    detail = dict(out.pop("detail", {}))
    detail.setdefault("raised_t", out["t"])
    if "worst" not in detail and "worst_t" not in detail:
        detail["worst"], detail["worst_t"] = out["value"], out["t"]
    detail.setdefault("flapping", False)
    if out.get("rule_kind") == "stale":
        detail.setdefault("silent_for", None)
    out["id"] = alert_id(out["vehicle"], out["rule"], out["signal"], detail["raised_t"])
    out["detail"] = detail
    return out


@dataclass(frozen=True)
class Gap(Message):
    """Messages the spool evicted (it was full): exactly which hole is a hole."""

    kind: ClassVar[str] = GAP
    priority: ClassVar[int | None] = 0  # the cloud learns of lost data with the alerts
    cloud_topic: ClassVar[str | None] = "gaps"

    vehicle: str
    evicted_at: float
    of: str  # the kind evicted
    count: int
    bytes: int
    t_first: float
    t_last: float
    first_id: int
    last_id: int
    reason: str = "spool full"

    def encode(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": GAP, "vehicle": self.vehicle, "evicted_at": self.evicted_at, "reason": self.reason,
                "evicted": {"kind": self.of, "count": self.count, "bytes": self.bytes, "t_first": self.t_first,
                            "t_last": self.t_last, "first_id": self.first_id, "last_id": self.last_id}}

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Gap:
        e = _table(_field(event, "evicted"), "evicted")
        return cls(_text(_field(event, "vehicle"), "vehicle"), _number(_field(event, "evicted_at"), "evicted_at"),
                   _text(e.get("kind"), "evicted.kind"), _count(e.get("count"), "evicted.count"),
                   _count(e.get("bytes"), "evicted.bytes"), _number(e.get("t_first"), "evicted.t_first"),
                   _number(e.get("t_last"), "evicted.t_last"), _count(e.get("first_id"), "evicted.first_id"),
                   _count(e.get("last_id"), "evicted.last_id"), _text(event.get("reason", "spool full"), "reason"))


@dataclass(frozen=True)
class Health(Message):
    """The uploader's state, sent at a fixed interval (never spooled: the next one says the same,
    newer)."""

    kind: ClassVar[str] = HEALTH
    cloud_topic: ClassVar[str | None] = "health"

    vehicle: str
    t: float
    spool: Mapping[str, Any]
    sent: Mapping[str, int]
    retries: int
    evicted: Mapping[str, int]
    set_aside: int
    budget: Mapping[str, Any]

    # what a field left out of the published form means (docs/MESSAGES.md, "health")
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "spool": {"messages": 0, "bytes": 0, "oldest_age_seconds": None, "by_kind": {}, "damaged": [], "errors": 0},
        "sent": {"bundles": 0, "messages": 0, "bytes": 0}, "retries": 0, "evicted": {"messages": 0, "gaps": 0},
        "set_aside": 0, "budget": {"bytes_last_hour": 0, "limit": None, "thinned": 0}}

    def encode(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": HEALTH, "vehicle": self.vehicle, "t": self.t, "spool": dict(self.spool),
                "sent": dict(self.sent), "retries": self.retries, "evicted": dict(self.evicted),
                "set_aside": self.set_aside, "budget": dict(self.budget)}

    def to_bytes(self) -> bytes:
        """As published: every field at its default (a zero counter, ``null``, an empty list or
        object) left out, times to the millisecond. ``decode`` puts the defaults back."""
        data = self.__dict__.get("_wire")
        if data is not None:
            return data
        full = self.encode()
        full["t"] = round(self.t, 3)
        age = full["spool"].get("oldest_age_seconds")
        if isinstance(age, float):
            full["spool"]["oldest_age_seconds"] = round(age, 3)
        rest = _without_defaults({k: v for k, v in full.items() if k not in ("v", "kind", "vehicle", "t")})
        return dumps({"v": VERSION, "kind": HEALTH, "vehicle": self.vehicle, "t": full["t"], **rest})

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Health:
        d = cls.DEFAULTS

        def part(name: str) -> Any:
            value = event.get(name, d[name])
            return {**d[name], **value} if isinstance(value, Mapping) and isinstance(d[name], dict) else value

        return cls(_text(_field(event, "vehicle"), "vehicle"), _number(_field(event, "t"), "t"),
                   _table(part("spool"), "spool"), _counters(part("sent"), "sent"),
                   _count(part("retries"), "retries"), _counters(part("evicted"), "evicted"),
                   _count(part("set_aside"), "set_aside"), _table(part("budget"), "budget"))


def _without_defaults(value: Any) -> Any:
    """An object without its members at a default: 0, ``null``, ``[]``, ``{}`` (after the same
    is done inside them). Booleans are kept (``false`` is not 0 here)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _without_defaults(item)
            if item is None or (type(item) in (int, float) and item == 0) or item == [] or item == {}:
                continue
            out[key] = item
        return out
    return value


@dataclass(frozen=True)
class Status(Message):
    """What one component reports of itself on the health topic (``<prefix>/health``) when it
    changes: a CAN bus that went down or came back, messages found missing between processes
    (gaps in ``seq``), a loop that died. Best effort, never spooled; the counters are totals since
    the component started."""

    kind: ClassVar[str] = STATUS

    vehicle: str
    component: str
    t: float
    state: str
    counters: Mapping[str, int]
    detail: str = ""

    def encode(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": STATUS, "vehicle": self.vehicle, "component": self.component, "t": self.t,
                "state": self.state, "counters": dict(self.counters), "detail": self.detail}

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Status:
        detail = event.get("detail", "")
        if not isinstance(detail, str):
            raise MessageError(f"status 'detail' must be a string, not {detail!r}")
        return cls(_text(_field(event, "vehicle"), "vehicle"), _text(_field(event, "component"), "component"),
                   _number(_field(event, "t"), "t"), _text(_field(event, "state"), "state"),
                   _counters(_field(event, "counters"), "counters"), detail)


ZD1 = "zd1"  # a bundle's compressed encoding: raw deflate with preset dictionary 1, base64
BUNDLE_ENCODINGS = (ZD1, "zlib+base64", "none")  # zlib+base64: no longer written, still read

# The preset dictionary of the ``zd1`` bundle encoding (docs/MESSAGES.md, "bundle"): the JSON an
# item of a bundle of alerts or gaps is made of (keys in the order the messages write them, the
# rule kinds with their detail keys, states, severities, the bus counters' signals), so that a
# bundle of one alert costs its values, not its keys. Deflate finds a nearer string for fewer
# bits: the likeliest come last. Part of the encoding: once published it never changes (a new
# dictionary is a new encoding name; tests/unit/test_messages.py holds its hash).
ZD1_DICTIONARY = b"".join((
    b'{"id":"","message":{"evicted_at":,"reason":"spool full","evicted":{"kind":"aggregates","count":,"bytes":,'
    b'"t_first":,"t_last":,"first_id":,"last_id":}}}',
    b'"bus.remote""bus.unknown_id""bus.decode_error""severity":"info"',
    b'{"state":"raised","rule":"","rule_kind":"zscore","signal":"","severity":"warning","t":17,"value":,"seq":,'
    b'"detail":{"threshold":3.0,"z":-}}',
    b'{"state":"raised","rule":"","rule_kind":"rate","signal":"","severity":"warning","t":17,"value":,"seq":,'
    b'"detail":{"max_rate":}}',
    b'{"state":"raised","rule":"","rule_kind":"spread","signal":"","severity":"warning","t":17,"value":,"seq":,'
    b'"detail":{"max_spread":0.1,"signals":,"highest":"","lowest":""}}',
    b'{"state":"raised","rule":"","rule_kind":"limit","signal":"","severity":"critical","t":17,"value":,"seq":,'
    b'"detail":{"min":null,"max":null}}',
    b'{"state":"raised","rule":"","rule_kind":"stale","signal":"","severity":"critical","t":17,"value":,"seq":,'
    b'"detail":{"timeout":5.0,"silent_for":}}',
    b'{"state":"raised","rule":"","rule_kind":"bus","signal":"bus.error","severity":"warning","t":17,"value":,"seq":,'
    b'"detail":{"max_per_second":1.0,"window_seconds":5.0}}',
    b',"raised_t":17,"worst":,"worst_t":17,"flapping":true}}',
    b'{"state":"cleared","rule":"{"state":"update","rule":"[{"state":"raised","rule":"',
))


def zd1_compressor(level: int = 9) -> Any:
    """A compressor of the ``zd1`` stream: raw deflate (RFC 1951) with its preset dictionary.
    The uploader sizes a bundle with one as it fills it (``uploader.fit``)."""
    return zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZD1_DICTIONARY)


def zd1_compress(body: bytes) -> bytes:
    z = zd1_compressor()
    return z.compress(body) + z.flush()  # type: ignore[no-any-return]


def zd1_decompress(data: bytes, limit: int = 64 * 1024 * 1024) -> bytes:
    """The body of a ``zd1`` stream: one complete deflate stream, nothing after it, at most
    ``limit`` bytes (a bundle is at most 128 KB on the wire: far less)."""
    z = zlib.decompressobj(-15, ZD1_DICTIONARY)
    out = z.decompress(data, limit)
    if not z.eof or z.unconsumed_tail or z.unused_data:
        raise zlib.error("not one complete deflate stream (or over 64 MB)")
    return out  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Bundle(Message):
    """The uploader's envelope: several spooled messages of one kind in one IoT Core publish,
    each with the id the cloud de-duplicates by. ``items`` are (id, the message's JSON bytes as
    spooled): the encoder embeds those bytes as they are, without parsing them again (in the
    compressed encoding, less the ``v``, ``kind`` and ``vehicle`` the envelope already says)."""

    kind: ClassVar[str] = BUNDLE

    vehicle: str
    of: str
    items: tuple[tuple[str, bytes], ...]
    compress: bool = True

    def to_bytes(self) -> bytes:
        head = self.head(self.vehicle, self.of, len(self.items))
        if self.compress:
            prefix = self.prefix(self.vehicle, self.of)
            body = b"[" + b",".join(self.item(i, p, prefix) for i, p in self.items) + b"]"
            return head + self.ZD1_OPEN + base64.b64encode(zd1_compress(body)) + self.ZD1_CLOSE
        return head + self.PLAIN_OPEN + b",".join(self.item(i, p) for i, p in self.items) + self.PLAIN_CLOSE

    # The envelope's parts, so that the uploader can size a bundle item by item (uploader.fit).
    ZD1_OPEN: ClassVar[bytes] = b'"encoding":"zd1","data":"'
    ZD1_CLOSE: ClassVar[bytes] = b'"}'
    PLAIN_OPEN: ClassVar[bytes] = b'"encoding":"none","messages":['
    PLAIN_CLOSE: ClassVar[bytes] = b"]}"

    @staticmethod
    def head(vehicle: str, of: str, count: int) -> bytes:
        return b'{"v":%d,"kind":"bundle","vehicle":%s,"of":%s,"count":%d,' % (
            VERSION, json.dumps(vehicle).encode(), json.dumps(of).encode(), count)

    @staticmethod
    def prefix(vehicle: str, of: str) -> bytes:
        """How a message of the bundle starts with the ``v``, ``kind`` and ``vehicle`` its envelope
        says: what a ``zd1`` item leaves out (``item``)."""
        return b'{"v":%d,"kind":%s,"vehicle":%s,' % (VERSION, json.dumps(of).encode(), json.dumps(vehicle).encode())

    @staticmethod
    def item(id_: str, payload: bytes, prefix: bytes | None = None) -> bytes:
        """One item; an empty id is left out (an alert's: ``<vehicle>:alert:<its key>``). With the
        bundle's ``prefix`` (the ``zd1`` encoding): the message without it, and an item without an
        id is the message itself."""
        if prefix is not None:
            if payload.startswith(prefix):
                payload = b"{" + payload[len(prefix):]
            if not id_:
                return payload
        if not id_:
            return b'{"message":%s}' % payload
        return b'{"id":%s,"message":%s}' % (json.dumps(id_).encode(), payload)

    def encode(self) -> dict[str, Any]:
        return dict(json.loads(self.to_bytes()))

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Bundle:
        encoding = _field(event, "encoding")
        of = _text(_field(event, "of"), "of")
        vehicle = _text(_field(event, "vehicle"), "vehicle")
        if encoding in (ZD1, "zlib+base64"):
            try:
                data = base64.b64decode(_text(_field(event, "data"), "data"), validate=True)
                items = json.loads(zd1_decompress(data) if encoding == ZD1 else zlib.decompress(data),
                                   parse_constant=_no_constant)
            except (ValueError, zlib.error) as exc:
                raise MessageError(f"bundle data does not decompress: {exc}") from None
            if encoding == ZD1 and isinstance(items, list):
                items = [cls._restored(i, vehicle, of) for i in items]
        elif encoding == "none":
            items = _field(event, "messages")
        else:
            raise MessageError(f"unknown bundle encoding {encoding!r} (known: {', '.join(BUNDLE_ENCODINGS)})")
        if not isinstance(items, list) or not all(isinstance(i, Mapping) and "message" in i
                                                  and ("id" in i or of == ALERT) for i in items):
            raise MessageError("bundle items must be objects of 'id' and 'message' (an alert's 'id' may be left out)")
        return cls(vehicle, of, tuple((str(i["id"]) if "id" in i else cls.alert_item_id(vehicle, i["message"]),
                                       dumps(i["message"])) for i in items), encoding != "none")

    @staticmethod
    def _restored(item: Any, vehicle: str, of: str) -> Any:
        """A ``zd1`` item as the other encodings write it: ``{"id"?, "message"}`` (an item that is
        the message itself has no id), its message with the envelope's ``v``, ``kind`` and
        ``vehicle`` put back first."""
        if not isinstance(item, dict):
            return item  # refused by the caller
        wrapped = "message" in item
        message = item["message"] if wrapped else item
        if isinstance(message, dict):
            message = {"v": message.get("v", VERSION), "kind": message.get("kind", of),
                       "vehicle": message.get("vehicle", vehicle), **message}
        return {**item, "message": message} if wrapped else {"message": message}

    @staticmethod
    def alert_item_id(vehicle: str, message: Any) -> str:
        """The id of an alert's item that left it out: ``<vehicle>:alert:<id>/<state>/<t>``."""
        try:
            return f"{vehicle}:{ALERT}:{Alert.decode(_table(message, 'message')).key}"
        except MessageError as exc:
            raise MessageError(f"bundle item without 'id' whose alert is malformed: {exc}") from None

    def messages(self) -> list[dict[str, Any]]:
        """The items as ``{"id": ..., "message": {...}}``, in order; an alert in its compact
        form comes back whole (its ``id`` and detail defaults put back)."""
        return [{"id": i, "message": _whole(json.loads(p))} for i, p in self.items]


@dataclass(frozen=True)
class Batch(Message):
    """Several messages of one kind published together on a local topic, so that their
    receiver handles (and the uploader stores: one commit) them in one invocation; e.g. all the
    windows one signals batch closed. Local only: never spooled, never sent to the cloud. Each
    item is checked on its own: ``refused`` holds the reasons of the items that were not."""

    kind: ClassVar[str] = BATCH
    binary: ClassVar[bool] = True
    BATCHABLE: ClassVar[tuple[str, ...]] = (AGGREGATES, ALERT)  # aggregates: binary items

    of: str
    items: tuple[Message, ...]
    refused: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        """The JSON form (readable; accepted by the decoder). Publishers send ``to_bytes()``."""
        return {"v": VERSION, "kind": BATCH, "of": self.of, "messages": [item.encode() for item in self.items]}

    def to_bytes(self) -> bytes:
        """Binary: ``TLMB``, the header's length (uint32, little-endian), the header (JSON: ``v``,
        ``kind``, ``of``, ``sizes``), then each item's compact JSON bytes, as ``sizes`` says.
        The receiver checks each item and can store its bytes as they came, without encoding
        it again."""
        wires = [item.to_bytes() for item in self.items]
        head = dumps({"v": VERSION, "kind": BATCH, "of": self.of, "sizes": [len(w) for w in wires]})
        return b"".join((_PREFIX.pack(BATCH_MAGIC, len(head)), head, *wires))

    @classmethod
    def from_bytes(cls, payload: bytes | bytearray | memoryview, *, values: bool = True) -> Batch:
        """``values`` False: aggregates items checked, not read (``CheckedAggregates``)."""
        payload = bytes(payload)
        head, at = _binary_head(payload, BATCH_MAGIC, BATCH, "batch", "batches")
        of = head.get("of")
        if of not in cls.BATCHABLE:
            raise MessageError(f"a batch holds one of {', '.join(cls.BATCHABLE)}, not {of!r}")
        sizes = head.get("sizes")
        if not isinstance(sizes, list):
            raise MessageError("binary batch 'sizes' must be an array")
        if at + sum(_count(n, "sizes[]") for n in sizes) != len(payload):
            raise MessageError(f"binary batch payload is {len(payload)} bytes; its header says "
                               f"{at + sum(sizes)}")
        good: list[Message] = []
        refused: list[str] = []
        for n in sizes:
            try:
                good.append(decode(payload[at:at + n], of, values=values))
            except MessageError as exc:
                refused.append(f"in a batch: {exc}")
            at += n
        return cls(of, tuple(good), tuple(refused))

    @classmethod
    def decode(cls, event: Mapping[str, Any]) -> Batch:
        of = _field(event, "of")
        if of not in cls.BATCHABLE:
            raise MessageError(f"a batch holds one of {', '.join(cls.BATCHABLE)}, not {of!r}")
        items = _field(event, "messages")
        if not isinstance(items, list):
            raise MessageError("batch 'messages' must be an array")
        good: list[Message] = []
        refused: list[str] = []
        for item in items:
            try:
                good.append(decode(item, of))
            except MessageError as exc:
                refused.append(f"in a batch: {exc}")
        return cls(of, tuple(good), tuple(refused))


def unpack(payload: bytes | str | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The (id, message) items of a bundle as published, whatever its encoding: what a cloud
    consumer of ``<prefix>/aggregates``, ``/alerts`` and ``/gaps`` calls."""
    envelope = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    if not isinstance(envelope, Mapping) or envelope.get("kind") != BUNDLE:
        raise MessageError(f"not a bundle: {envelope.get('kind') if isinstance(envelope, Mapping) else envelope!r}")
    return Bundle.decode(envelope).messages()


def delivered(payload: bytes) -> list[dict[str, Any]]:
    """The messages one IoT Core publish delivers: a bundle's items, or an aggregates payload's
    windows (as ``window`` messages); none for a state report (health, status)."""
    if wire.is_payload(payload):
        return wire.decode(payload).window_messages()
    envelope = json.loads(payload)
    return [item["message"] for item in unpack(envelope)] if envelope.get("kind") == BUNDLE else []


KINDS: dict[str, type[Message]] = {
    cls.kind: cls for cls in (Signals, EndOfStream, Window, Aggregates, Alert, Gap, Health, Status, Bundle, Batch)
}


_BINARY: dict[bytes, type[Message]] = {COLUMNS_MAGIC: Signals, BATCH_MAGIC: Batch, wire.MAGIC: Aggregates}


class Shared(bytes):
    """A binary payload the local runtime hands to several subscribers of one process: decoded
    once, by the first of them (``decode``); messages are immutable, so they share it. On a core
    each function has its own process and its own copy, as Greengrass gives it."""

    def __init__(self, _data: bytes) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.message: Message | None = None


def decode(event: Any, *kinds: str, values: bool = True) -> Message:
    """Check an incoming pub/sub event and return it as its typed message.

    ``event`` is what a handler receives: the decoded JSON object (``inputPayloadEncodingType``
    json), or the payload's bytes (binary): a binary signals batch, or JSON as bytes.
    Raises MessageError with a reason a person can act on; the caller counts it and carries on.
    ``values`` False: an aggregates payload's bytes (alone or in a batch) are checked, refused
    as they would be, but its values not read: a ``CheckedAggregates`` (a ``Shared`` payload is
    read whole: its subscribers share one message).
    """
    if isinstance(event, Shared):
        with event.lock:  # the first subscriber decodes it; the others take its message
            if event.message is None:
                event.message = decode(bytes(event))
        if kinds and event.message.kind not in kinds:
            raise MessageError(f"unexpected message kind {event.message.kind!r} (expected {', '.join(kinds)})")
        return event.message
    if isinstance(event, (bytes, bytearray, memoryview)):
        data = bytes(event)
        if is_binary(data):
            cls = _BINARY[data[:4]]
            if kinds and cls.kind not in kinds:
                raise MessageError(f"unexpected message kind {cls.kind!r} (expected {', '.join(kinds)})")
            if not values and cls is Aggregates:
                return CheckedAggregates.from_bytes(data)
            if not values and cls is Batch:
                return Batch.from_bytes(data, values=False)
            return cls.from_bytes(data)  # type: ignore[attr-defined, no-any-return]
        try:
            parsed = json.loads(data, parse_constant=_no_constant)
        except ValueError:
            raise MessageError("message is neither JSON nor a binary payload (signals, batch, aggregates)") from None
        message = decode(parsed, *kinds)
        object.__setattr__(message, "_wire", data)  # what it was read from: to_bytes() gives it back
        return message
    if not isinstance(event, Mapping):
        raise MessageError(f"message is a {type(event).__name__}, not a JSON object")
    version = event.get("v")
    kind = event.get("kind")
    if version != VERSION:
        raise MessageError(f"unsupported message version {version!r} (this build reads v{VERSION})")
    if not isinstance(kind, str) or kind not in KINDS:
        raise MessageError(f"unknown message kind {kind!r}")
    if kinds and kind not in kinds:
        raise MessageError(f"unexpected message kind {kind!r} (expected {', '.join(kinds)})")
    return KINDS[kind].decode(event)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json would read them


def dumps(message: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes. NaN and infinities are not JSON: they are refused here, at the sender."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise MessageError(f"message is not valid JSON: {exc}") from None


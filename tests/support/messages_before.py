"""The binary signals batch as ``telemetry.edge.messages`` wrote and read it at 0242853, before
its header's names were kept as JSON and its checks took fewer Python calls: the reference the
tests compare ``Signals.to_bytes`` and ``Signals.from_bytes`` with, byte for byte and refusal
for refusal."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from telemetry.edge.errors import MessageError
from telemetry.edge.messages import (
    COLUMNS_MAGIC,
    EVENT_COUNTERS,
    SIGNALS,
    FlatBatch,
    Signals,
    _binary_head,
    _count,
    _table,
)

_COLUMNS = {"t": "<f8", "v": "<f8"}
_PREFIX_SIZE = 8


def to_bytes(self: Signals) -> bytes:
    batch = self.batch
    head = self._head()
    head["names"] = list(batch.names)
    head["counts"] = np.diff(batch.bounds()).tolist()
    head["columns"] = _COLUMNS
    events = self._events()
    head["events"] = {key: len(times) for key, times in events.items()}
    text = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-(len(text) + _PREFIX_SIZE) % 8)
    return b"".join((struct.pack("<4sI", COLUMNS_MAGIC, len(text)), text,
                     batch.t.astype("<f8", copy=False).tobytes(), batch.v.astype("<f8", copy=False).tobytes(),
                     *(times.astype("<f8", copy=False).tobytes() for times in events.values())))


def from_bytes(payload: Any) -> Signals:
    payload = bytes(payload)
    head, start = _binary_head(payload, COLUMNS_MAGIC, SIGNALS, "signals payload", "signals")
    if head.get("columns") != _COLUMNS:
        raise MessageError(f"binary signals columns {head.get('columns')!r} (this build reads {_COLUMNS})")
    names, counts = head.get("names"), head.get("counts")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise MessageError("binary signals 'names' must be a list of distinct non-empty strings")
    if not isinstance(counts, list) or len(counts) != len(names):
        raise MessageError("binary signals 'counts' must be a list with one count per name")
    total = sum(_count(n, "counts[]") for n in counts)
    event_counts = _table(head.get("events", {}), "binary signals 'events'")
    if not event_counts.keys() <= set(EVENT_COUNTERS):
        raise MessageError(f"binary signals 'events' of unknown counters: {sorted(set(event_counts) - set(EVENT_COUNTERS))}")
    n_events = sum(_count(n, f"events.{k}") for k, n in event_counts.items())
    expected = start + 16 * total + 8 * n_events
    if len(payload) != expected:
        raise MessageError(f"binary signals payload is {len(payload)} bytes; its header says {expected}")
    t = np.frombuffer(payload, "<f8", total, start)
    v = np.frombuffer(payload, "<f8", total, start + 8 * total)
    events, at = {}, start + 16 * total
    for key, n in event_counts.items():
        events[key] = np.frombuffer(payload, "<f8", n, at)
        at += 8 * n
    batch = FlatBatch(tuple(names), np.repeat(np.arange(len(names)), counts), t, v)
    return Signals._checked(head, batch, events)

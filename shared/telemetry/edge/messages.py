"""The messages the components exchange, in one place.

Every message is a JSON object with ``"v"`` (format version) and ``"kind"``; a handler never needs
to know the topic a message came in on. ``docs/MESSAGES.md`` documents each kind with an
example; this module builds them and checks what comes in. New fields may be added to a kind
without a version change; renaming or removing one needs a new ``v``.

Signals travel in columns: one pair of arrays (event times, values) per signal per batch, never
one message per frame.
"""

from __future__ import annotations

import json
import math
from itertools import chain
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MessageError

VERSION = 1

SIGNALS = "signals"
END_OF_STREAM = "end_of_stream"
AGGREGATES = "aggregates"
ALERT = "alert"

KINDS = frozenset({SIGNALS, END_OF_STREAM, AGGREGATES, ALERT})

# Frame counters carried by every signals batch (per batch) and by end_of_stream (totals).
FRAME_COUNTERS = (
    "read",
    "error",
    "remote",
    "decoded",
    "unknown_id",
    "decode_error",
)


@dataclass(frozen=True)
class SignalColumns:
    """Event times (seconds) and values of one signal, sorted as read."""

    t: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])


def parse(event: Any, *kinds: str) -> Mapping[str, Any]:
    """Check an incoming pub/sub event and return it.

    Raises MessageError with a reason a person can act on; the caller counts it and carries on.
    """
    if not isinstance(event, Mapping):
        raise MessageError(f"message is a {type(event).__name__}, not a JSON object")
    version = event.get("v")
    kind = event.get("kind")
    if version != VERSION:
        raise MessageError(f"unsupported message version {version!r} (this build reads v{VERSION})")
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {kind!r}")
    if kinds and kind not in kinds:
        raise MessageError(f"unexpected message kind {kind!r} (expected {', '.join(kinds)})")
    if kind == SIGNALS:
        _check_signals(event)
    return event


def _check_signals(event: Mapping[str, Any]) -> None:
    span = event.get("span")
    if not isinstance(span, Mapping) or not all(
        isinstance(span.get(key), (int, float)) and not isinstance(span.get(key), bool) for key in ("start", "end")
    ):
        raise MessageError("signals message without a numeric 'span' {start, end}")
    signals = event.get("signals")
    if not isinstance(signals, Mapping):
        raise MessageError("signals message without a 'signals' object")
    for name, column in signals.items():
        if not isinstance(column, Mapping) or not isinstance(column.get("t"), list) or not isinstance(column.get("v"), list):
            raise MessageError(f"signal {name!r} is not an object of 't' and 'v' arrays")
        if len(column["t"]) != len(column["v"]):
            raise MessageError(f"signal {name!r} has {len(column['t'])} times but {len(column['v'])} values")


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
    def from_columns(cls, columns: Mapping[str, SignalColumns]) -> FlatBatch:
        names = tuple(columns)
        lengths = [len(c) for c in columns.values()]
        if not names:
            return cls((), np.empty(0, np.int64), np.empty(0), np.empty(0))
        return cls(
            names,
            np.repeat(np.arange(len(names)), lengths),
            np.concatenate([c.t for c in columns.values()]).astype(np.float64, copy=False),
            np.concatenate([c.v for c in columns.values()]).astype(np.float64, copy=False),
        )

    def columns(self) -> dict[str, SignalColumns]:
        out = {}
        bounds = np.searchsorted(self.ids, np.arange(len(self.names) + 1)) if _ids_sorted(self.ids) else None
        for i, name in enumerate(self.names):
            if bounds is not None:
                a, b = bounds[i], bounds[i + 1]
                out[name] = SignalColumns(self.t[a:b], self.v[a:b])
            else:
                mask = self.ids == i
                out[name] = SignalColumns(self.t[mask], self.v[mask])
        return out


def _ids_sorted(ids: np.ndarray) -> bool:
    return len(ids) < 2 or bool(np.all(ids[1:] >= ids[:-1]))


def flat_signals(event: Mapping[str, Any]) -> FlatBatch:
    """The samples of a (parsed) signals message as a FlatBatch, converted in one pass."""
    signals = event["signals"]
    names = tuple(signals)
    lengths = [len(signals[name]["t"]) for name in names]
    total = sum(lengths)
    try:
        t = np.fromiter(chain.from_iterable(signals[n]["t"] for n in names), dtype=np.float64, count=total)
        v = np.fromiter(chain.from_iterable(signals[n]["v"] for n in names), dtype=np.float64, count=total)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"signals message has non-numeric data: {exc}") from None
    return FlatBatch(names, np.repeat(np.arange(len(names)), lengths), t, v)


def signals_message(
    *,
    source: str,
    seq: int,
    start: float,
    end: float,
    frames: Mapping[str, int],
    signals: Mapping[str, SignalColumns],
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": SIGNALS,
        "source": source,
        "seq": seq,
        "span": {"start": start, "end": end},
        "frames": {key: int(frames.get(key, 0)) for key in FRAME_COUNTERS},
        "signals": {name: {"t": col.t.tolist(), "v": col.v.tolist()} for name, col in signals.items()},
    }


def end_of_stream_message(*, source: str, seq: int, end: float | None, totals: Mapping[str, int]) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": END_OF_STREAM,
        "source": source,
        "seq": seq,
        "end": end,
        "totals": dict(totals),
    }


def aggregates_message(
    *,
    vehicle: str,
    seq: int,
    start: float,
    end: float,
    signals: Mapping[str, Mapping[str, float | int]],
    group: str = "default",
    late_samples: int = 0,
    late_oldest: float | None = None,
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": AGGREGATES,
        "vehicle": vehicle,
        "seq": seq,
        "group": group,
        "window": {"start": start, "end": end},
        "signals": dict(signals),
        "late": {"samples": late_samples, "oldest": late_oldest},
    }


def alert_message(
    *,
    vehicle: str,
    alert_id: str,
    state: str,
    rule: str,
    rule_kind: str,
    signal: str,
    severity: str,
    t: float,
    value: float,
    detail: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": ALERT,
        "vehicle": vehicle,
        "id": alert_id,
        "state": state,
        "rule": rule,
        "rule_kind": rule_kind,
        "signal": signal,
        "severity": severity,
        "t": t,
        "value": value,
        "detail": dict(detail),
    }


def dumps(message: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes. NaN and infinities are not JSON: they are refused here, at the sender."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise MessageError(f"message is not valid JSON: {exc}") from None


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

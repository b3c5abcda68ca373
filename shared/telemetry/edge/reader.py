"""The CAN reader: frames in, batches of decoded signal columns out.

A replay as fast as possible is cut instead by ``replay_batch_frames`` / ``replay_batch_seconds``
(``batch_ends``), never inside one event time; every batch carries the event times of its error,
remote, unknown-id and decode-error frames (``events``, for bus rules).

Frames are collected into a batch that is flushed when it holds ``batch_max_frames`` frames or
spans ``batch_max_seconds`` of event time (a live bus also flushes on wall-clock time, so a quiet
bus does not hold a batch back). Each batch is decoded at once and published as one ``signals``
message; the end of a replay is published as ``end_of_stream`` so downstream components can close
their windows. Event time is the frame's own timestamp.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

import can
import numpy as np

from . import messages
from .decode import Decoder
from .frames import Frames

LOG = logging.getLogger(__name__)


class FrameBatcher:
    """Decides when a batch is full, by count and by event-time span."""

    def __init__(self, max_frames: int, max_seconds: float) -> None:
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.frames: list[can.Message] = []
        self.opened_at = 0.0  # wall-clock (monotonic) time the first frame arrived

    def add(self, frame: can.Message, now: float) -> bool:
        """Add a frame; True when the batch should be flushed now."""
        if not self.frames:
            self.opened_at = now
        self.frames.append(frame)
        return (
            len(self.frames) >= self.max_frames
            or frame.timestamp - self.frames[0].timestamp >= self.max_seconds
        )

    def take(self) -> list[can.Message]:
        frames, self.frames = self.frames, []
        return frames


def batch_ends(t: np.ndarray, max_frames: int, max_seconds: float) -> list[int]:
    """How a replay cuts a run of frames with event times ``t`` (in arrival order, not
    necessarily sorted) into batches: where ``FrameBatcher`` would flush (by count or by
    event-time span), moved past any frames of the same event time as the last one, so frames of
    one instant always travel together (rules judge an instant after all of its samples). The
    end index (exclusive) of each batch known to be complete: what follows the last end, up to
    and including a batch that reaches the end of ``t``, is still open (more frames of the same
    instant may follow in the next chunk)."""
    ends: list[int] = []
    start, n = 0, len(t)
    while start < n:
        window = t[start:start + max_frames]
        over = np.flatnonzero(window - window[0] >= max_seconds)
        # the frame that reaches the span closes its batch; else the count does, if reached
        end = start + (int(over[0]) + 1 if len(over) else max_frames)
        if end >= n:
            break
        same = np.flatnonzero(t[end:] != t[end - 1])  # the instant's other frames come along
        if not len(same):
            break
        end += int(same[0])
        ends.append(end)
        start = end
    return ends


class ReaderCore:
    """Pure core of the reader: decode a batch of frames, keep totals, build the messages."""

    def __init__(self, decoder: Decoder, source_name: str) -> None:
        self.decoder = decoder
        self.source_name = source_name
        self.totals: Counter[str] = Counter()
        self.unknown_ids: Counter[int] = Counter()
        self.decode_error_ids: Counter[int] = Counter()
        self.seq = 0
        self.first_time: float | None = None
        self.last_time: float | None = None

    def batch_message(self, frames: Frames | list[can.Message]) -> messages.Signals:
        """A batch of frames (columns, or python-can's frames from a live bus) decoded into one
        ``signals`` message."""
        if not isinstance(frames, Frames):
            frames = Frames.from_messages(frames)
        decoded = self.decoder.decode_frames(frames)
        self.totals["fallback_frames"] += decoded.fallback
        self.totals.update(decoded.frames)
        self.totals["signal_samples"] += decoded.samples
        self.totals["non_finite_values"] += decoded.non_finite
        self.totals["batches"] += 1
        self.unknown_ids.update(decoded.unknown_ids)
        self.decode_error_ids.update(decoded.decode_errors)
        start, end = float(frames.t.min()), float(frames.t.max())
        self.first_time = start if self.first_time is None else min(self.first_time, start)
        self.last_time = end if self.last_time is None else max(self.last_time, end)
        self.seq += 1
        events = {name: np.sort(frames.t[rows]) for name, rows in decoded.event_rows.items()}
        return messages.Signals(self.source_name, self.seq, start, end, decoded.frames, decoded.batch, events)

    def tick_message(self, now: float) -> messages.Signals:
        """An empty batch: a quiet live bus still moves event time on, so windows close."""
        self.seq += 1
        self.totals["ticks"] += 1
        return messages.Signals(self.source_name, self.seq, now, now, {}, messages.FlatBatch.empty())

    def end_message(self, extra: Mapping[str, int] | None = None) -> messages.EndOfStream:
        self.seq += 1
        totals = {key: int(self.totals.get(key, 0)) for key in messages.FRAME_COUNTERS}
        totals["signal_samples"] = int(self.totals["signal_samples"])
        totals.update(extra or {})
        return messages.EndOfStream(self.source_name, self.seq, self.last_time, totals)

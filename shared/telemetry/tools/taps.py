"""What a replay's components said, heard on the local runtime: the input of its report.

``ReplayTaps`` subscribes to every component's output topic (as the recipes name them) and keeps
the typed messages it hears: the aggregator's windows, the detector's alerts, and the reader's
frame counters for progress. ``MeteredCloud`` wraps the cloud transport of a replay and notes
each publish's size at the event time the replay had reached. Nothing here reads ``cloud.jsonl``:
the wire format to the cloud is the uploader's business, the messages are what they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from telemetry import wire
from telemetry.edge import messages
from telemetry.edge.errors import MessageError
from telemetry.edge.messages import Aggregates, Alert, Batch, EndOfStream, Signals, Window
from telemetry.edge.transport import CloudTransport

OUTPUT_TOPIC = "TELEMETRY_OUTPUT_TOPIC"  # the recipes' environment key of a component's topic


@dataclass(frozen=True)
class CloudPublish:
    t: float | None  # event time the replay had reached (None: before the first window)
    topic: str
    bytes: int


class ReplayTaps:
    """Listens on the output topics of a runtime's components (call ``attach`` before it starts).

    ``on_alert`` is called with each alert as it is heard (live output at ``--speed 1``),
    ``on_signals`` with each signals batch of the reader (exports)."""

    def __init__(self, on_alert: Callable[[Alert], None] | None = None,
                 on_signals: Callable[[Signals], None] | None = None) -> None:
        self.payloads: list[wire.Payload] = []  # the aggregates payloads: their windows, in columns
        self._windows: list[Window] = []  # the payloads read back as windows, when asked (``windows``)
        self._windows_of = 0  # how many payloads ``_windows`` holds
        self.alerts: list[Alert] = []
        self.uplink: list[tuple[float, int]] = []  # (event time, bytes) of each window and alert
        self.frames_read = 0
        self.refused = 0  # payloads on the topics that did not decode (the components count theirs too)
        self.latest: float | None = None  # the newest event time heard
        self.first: float | None = None  # the first frame's time
        self.ended = False
        self.on_alert = on_alert
        self.on_signals = on_signals
        self._lock = threading.Lock()

    @property
    def windows(self) -> list[Window]:
        """Every window heard, as ``Window`` messages, read back from the payloads the first time
        someone asks (exports, tests): the report draws from the columns (``payload_series``)."""
        with self._lock:
            for payload in self.payloads[self._windows_of:]:
                self._windows += [Window.decode(w) for w in payload.window_messages()]
            self._windows_of = len(self.payloads)
            return list(self._windows)

    def attach(self, runtime: Any) -> list[str]:
        """Subscribe to the output topic of every component of ``runtime``; the topics."""
        topics = sorted({r.environment[OUTPUT_TOPIC] for r in runtime.recipes if r.environment.get(OUTPUT_TOPIC)})
        for topic in topics:
            runtime.subscribe(topic, self.take)
        return topics

    def take(self, event: Any) -> None:
        if self.on_signals is None and type(event) is bytes and event[:4] == messages.COLUMNS_MAGIC:
            # A signals batch as its own bytes: the components decode theirs in their own
            # processes (``ProcessRuntime``), so nothing would share a decoding here; only its
            # header is read (checked as a decoding checks it). In one process it comes
            # ``Shared``, decoded once for the aggregator, the detector and these taps.
            try:
                head = Signals.head_from_bytes(event)
            except MessageError:
                with self._lock:
                    self.refused += 1
                return
            with self._lock:
                self._signals(head.frames, head.samples, head.start, head.end)
            return
        try:
            message = messages.decode(event)
        except MessageError:
            with self._lock:
                self.refused += 1
            return
        items = message.items if isinstance(message, Batch) else (message,)
        with self._lock:
            for item in items:
                if isinstance(item, Aggregates):  # a publish period's windows, kept in columns
                    payload = item.payload
                    self.payloads.append(payload)
                    self.uplink.append((item.event_time, len(item.to_bytes())))
                    if len(payload.table):
                        self._advance(float(payload.table.window.max() * payload.width + payload.width))  # its last end
                elif isinstance(item, Alert):
                    self.alerts.append(item)
                    self.uplink.append((item.event_time, len(item.to_bytes())))
                    self._advance(item.t)
                elif isinstance(item, Signals):
                    self._signals(item.frames, len(item.batch), item.start, item.end)
                elif isinstance(item, EndOfStream):
                    self.ended = True
        if self.on_signals is not None and isinstance(message, Signals):
            self.on_signals(message)
        if self.on_alert is not None:
            for item in items:
                if isinstance(item, Alert):
                    self.on_alert(item)

    def _signals(self, frames: Mapping[str, int], samples: int, start: float, end: float) -> None:
        self.frames_read += int(frames.get("read", 0))
        if samples or frames:
            self._advance(end)
            self.first = start if self.first is None else min(self.first, start)

    def _advance(self, t: float) -> None:
        if self.latest is None or t > self.latest:
            self.latest = t


class MeteredCloud:
    """A cloud transport that notes each publish (size, topic, the replay's event time) and
    hands it on unchanged."""

    def __init__(self, inner: CloudTransport, now: Callable[[], float | None]) -> None:
        self.inner = inner
        self.now = now
        self.publishes: list[CloudPublish] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes) -> None:
        self.inner.publish(topic, payload)
        with self._lock:
            self.publishes.append(CloudPublish(self.now(), topic, len(payload)))

    def close(self) -> None:
        self.inner.close()

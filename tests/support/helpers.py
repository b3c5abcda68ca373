"""Small builders for tests."""

from __future__ import annotations

import json
from pathlib import Path

import can
import numpy as np

from telemetry.edge import messages
from telemetry.edge.messages import FlatBatch, SignalColumns


def frame(t: float, can_id: int, data: bytes = b"", **kw) -> can.Message:
    kw.setdefault("is_extended_id", can_id > 0x7FF)
    return can.Message(timestamp=t, arbitration_id=can_id, data=data, **kw)


def columns(**signals: tuple[list[float], list[float]]) -> FlatBatch:
    """columns(**{"A.x": ([t...], [v...])})"""
    return FlatBatch.from_columns({name: SignalColumns(np.asarray(t, float), np.asarray(v, float))
                                   for name, (t, v) in signals.items()})


def signals_event(batch: FlatBatch, seq: int = 1) -> dict:
    """The JSON object a handler receives for this batch."""
    start, end = (float(batch.t.min()), float(batch.t.max())) if len(batch) else (0.0, 0.0)
    return messages.Signals("test", seq, start, end, {"read": 1}, batch).encode()


class OnTheWire:
    """A core under test (aggregator, detector) whose messages are read as they go on the wire:
    their JSON objects, through the one encoder of their kind."""

    def __init__(self, core):
        self.core = core

    def add(self, *args, **kwargs) -> list[dict]:
        return [m.encode() for m in self.core.add(*args, **kwargs)]

    def flush(self) -> list[dict]:
        return [m.encode() for m in self.core.flush()]

    def __getattr__(self, name):
        return getattr(self.core, name)


def write_lines(path: Path, lines: list[str], newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def set_queue_sizes(project: Path, size: int) -> None:
    """Every recipe of the project copy with a local queue of ``size`` messages."""
    for path in (project / "recipes").glob("*.json"):
        data = json.loads(path.read_text())
        data["lambdaFunction"]["componentLambdaParameters"]["maxQueueSize"] = size
        path.write_text(json.dumps(data))

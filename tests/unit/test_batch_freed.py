"""A component frees each batch it has handled by reference counting alone.

A batch that some cycle still reaches (a memo of the batch holding the batch) is freed only when
the cyclic collector runs, which counts objects, not bytes: a replay's batches of numpy columns
then pile up, several at a time, and the detector's peak memory on the sample drive x9 was 67 MB
(the recipes are sized for 64) before this was found. Handled as the nucleus hands them over:
the wire bytes of the sample drive's batches, to the components' own ``handle``."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from unittest import mock

import pytest

from telemetry.edge import messages
from telemetry.edge.clock import SystemClock
from telemetry.edge.components import AggregatorComponent, AnomalyDetectorComponent, CanReaderComponent, Services
from telemetry.edge.config import load_config
from telemetry.edge.transport import InMemoryCloudTransport

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


class Wires:
    """A local transport that keeps what is published as its wire bytes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, message: messages.Message) -> None:
        self.sent.append((topic, bytes(message.to_bytes())))

    def subscribe(self, topic, handler) -> None:
        pass

    def close(self) -> None:
        pass


def services(local: Wires, topic: str) -> Services:
    cfg = load_config(SAMPLE / "vehicle.toml")
    env = {"TELEMETRY_LOG": str(SAMPLE / "drive.log"), "TELEMETRY_OUTPUT_TOPIC": topic}
    return Services(local, InMemoryCloudTransport(), cfg, SystemClock(), env)


@pytest.fixture(scope="module")
def batches() -> list[bytes]:
    local = Wires()
    CanReaderComponent(services(local, "signals")).run(threading.Event())
    wires = [w for topic, w in local.sent if topic == "signals"]
    assert sum(isinstance(messages.decode(w), messages.Signals) for w in wires) > 5
    return wires


@pytest.mark.parametrize("component", [AggregatorComponent, AnomalyDetectorComponent])
def test_each_batch_is_freed_once_handled(component, batches):
    target = component(services(Wires(), "out"))
    decode = messages.decode
    alive: list[weakref.ref] = []

    def watched(data, *kinds):  # the handler's own decode, watched
        message = decode(data, *kinds)
        if isinstance(message, messages.Signals):
            alive.extend(weakref.ref(column) for column in (message.batch.t, message.batch.v, message.batch.ids))
        return message

    gc.collect()
    gc.disable()
    try:
        with mock.patch.object(messages, "decode", watched):
            for i, wire in enumerate(batches):
                target.handle(wire)
                held = sum(ref() is not None for ref in alive)
                assert held == 0, f"batch {i}: {held} of its columns outlive the handler (a reference cycle?)"
    finally:
        gc.enable()
    assert len(alive) == 3 * sum(isinstance(decode(w), messages.Signals) for w in batches)

"""Faults in the processes of a core (the zips unpacked and run as in ``test_rehearsal``): a
loop that dies of something it does not retry ends its process with status 1 by itself (the
nucleus restarts it); a failing IPC publish is retried and loses nothing; SIGTERM makes the
aggregator publish its open windows before it exits 0."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from gg import Core, events_file, iot_payload

from telemetry.edge import messages
from telemetry.edge.components import AggregatorComponent, Services
from telemetry.edge.config import load_config
from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport
from telemetry.tools.recipes import load_recipes

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
RECIPES = {r.name: r for r in load_recipes(ROOT / "recipes")}


def reader_on(core: Core, zips, **spec):
    reader = core.install(RECIPES["telemetry.CanReader"], zips["telemetry.CanReader"])
    reader.env["TELEMETRY_LOG"] = str(SAMPLE / "drive.log")
    reader.start(**spec)
    return reader


@pytest.fixture(scope="module")
def flaky_reader(x86_64_zips, tmp_path_factory):
    """The reader replaying the sample drive while its first three IPC publishes fail."""
    core = Core(tmp_path_factory.mktemp("core"))
    reader = reader_on(core, x86_64_zips, fail_local=3)
    try:
        reader.wait_for("idle")
        assert reader.terminate() == 0
    finally:
        reader.kill()
    return reader


@pytest.fixture(scope="module")
def sample_signals(flaky_reader) -> list[dict]:
    """What the reader publishes for the sample drive, as a core's nucleus would relay it."""
    return [e for e in flaky_reader.published("local") if e["topic"] == "telemetry/signals"]


def test_a_reader_whose_loop_dies_ends_its_process_with_status_1(x86_64_zips, core):
    reader = reader_on(core, x86_64_zips, inject={"target": "telemetry.edge.reader.ReaderCore.batch_message",
                                                  "after": 2, "message": "injected fault"})
    assert reader.wait_exit() == 1  # by itself: no SIGTERM was sent
    assert "RuntimeError: injected fault" in reader.stderr and "exiting with status 1" in reader.stderr
    status = [json.loads(iot_payload(e)) for e in reader.published("iotcore")]
    assert status[-1]["kind"] == "status" and status[-1]["state"] == "failed"
    assert status[-1]["component"] and status[-1]["counters"]["batches"] == 2


def test_a_failing_ipc_publish_is_retried_and_loses_nothing(flaky_reader, sample_signals):
    assert flaky_reader.stderr.count("retrying in") == 3
    assert sample_signals[-1]["json"]["kind"] == "end_of_stream"
    assert sample_signals[-1]["json"]["seq"] == len(sample_signals) == 7  # numbered 1..n: none skipped (240 s in 40 s batches, the end)
    assert sample_signals[-1]["json"]["totals"]["read"] == 34253  # every frame of the drive


def test_sigterm_makes_the_aggregator_publish_its_open_windows(x86_64_zips, core, sample_signals):
    # Everything but the end of stream: windows stay open until the nucleus stops the function.
    events = [e for e in sample_signals if "binary" in e]
    assert len(events) == len(sample_signals) - 1
    aggregator = core.install(RECIPES["telemetry.Aggregator"], x86_64_zips["telemetry.Aggregator"])
    aggregator.start(events_file(aggregator.work.parent / "events", events))
    aggregator.wait_for("idle")
    before = count_windows(aggregator.published("local"))
    assert aggregator.terminate() == 0
    after = count_windows(aggregator.published("local"))
    # The same signals with their end of stream, in this process: every window, closed normally.
    services = Services(InMemoryLocalTransport(), InMemoryCloudTransport(), load_config(SAMPLE / "vehicle.toml"),
                        env={"TELEMETRY_OUTPUT_TOPIC": "out"})
    reference = AggregatorComponent(services)
    for e in sample_signals:
        reference.handle(base64.b64decode(e["binary"]) if "binary" in e else e["json"])
    assert before < after == reference.counters()["windows"]
    assert "aggregates payload(s) flushed" in aggregator.stderr


def count_windows(published: list[dict]) -> int:
    """Windows in what the aggregator published: aggregates payloads, alone or in a batch."""
    total = 0
    for e in published:
        message = messages.decode(iot_payload({"payload": e["binary"]}))
        for m in message.items if isinstance(message, messages.Batch) else (message,):
            assert isinstance(m, messages.Aggregates)
            total += len(m.payload.windows())
    return total

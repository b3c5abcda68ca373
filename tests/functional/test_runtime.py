"""The local Greengrass runtime: order, back-pressure without loss, isolation of bad messages
and failing handlers. Runs the real recipes and handlers on short simulated drives."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest

from support.helpers import columns, set_queue_sizes
from support.reference import messages_of
from telemetry.edge.components import AggregatorComponent
from telemetry.edge.config import load_config
from telemetry.edge.errors import DbcError
from telemetry.edge.messages import Signals
from telemetry.edge.transport import InMemoryCloudTransport
from telemetry.tools.replay import replay
from telemetry.tools.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def cloud_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cloud.jsonl").read_text().splitlines()]


def test_components_start_in_dependency_order_and_stop_in_reverse(short_drive):
    cfg = load_config(SAMPLE / "vehicle.toml")
    runtime = LocalRuntime(ROOT / "recipes", cfg, InMemoryCloudTransport(), env={"TELEMETRY_LOG": str(short_drive)})
    with runtime:
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
    assert runtime.started == ["telemetry.Uploader", "telemetry.Aggregator", "telemetry.AnomalyDetector", "telemetry.CanReader"]
    assert runtime.stopped == list(reversed(runtime.started))
    assert runtime.errors == []


def test_a_full_queue_slows_the_reader_down_and_loses_nothing(project, short_drive, tmp_path):
    # GIVEN the same drive through the normal recipes and through queues of one message, cut into
    # 2 s batches (windows and alerts do not depend on it), and an aggregator that takes its
    # first batch only once the reader has found its queue full (deterministic: not a race
    # between the reader and a busy aggregator)
    normal = replay(short_drive, out_dir=tmp_path / "normal", config=SAMPLE / "vehicle.toml")
    set_queue_sizes(project, 1)
    cfg = load_config(SAMPLE / "vehicle.toml")
    cfg = dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, replay_batch_seconds=2.0))
    cloud = InMemoryCloudTransport()
    runtime = LocalRuntime(project / "recipes", cfg, cloud, env={"TELEMETRY_LOG": str(short_drive)})
    take_first = AggregatorComponent.on_message
    held = threading.Event()

    def after_a_full_queue(component: AggregatorComponent, message: object) -> None:
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while not runtime.runner("telemetry.Aggregator").stats["publisher_waits"] and time.monotonic() < deadline:
                time.sleep(0.005)
        take_first(component, message)

    with mock.patch.object(AggregatorComponent, "on_message", after_a_full_queue), runtime:
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
        waits = sum(runtime.runner(n).stats["publisher_waits"] for n in runtime.started)
        reader = runtime.component("telemetry.CanReader")
        assert reader.counters()["frames_read"] == normal["frames_read"]
        assert reader.counters()["batches"] > 3
    # THEN publishers had to wait for full queues, and the cloud got exactly the same messages
    # (bundled differently: how many go in one publish depends on timing)
    assert held.is_set() and waits > 0
    expected = messages_of(cloud_lines(tmp_path / "normal"))
    got = cloud.delivered()
    key = lambda m: json.dumps(m, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert len(got) == normal["windows"] + normal["alerts"]


def test_malformed_local_messages_are_counted_and_the_stream_goes_on(short_drive):
    cfg = load_config(SAMPLE / "vehicle.toml")
    cloud = InMemoryCloudTransport()
    with LocalRuntime(ROOT / "recipes", cfg, cloud, env={"TELEMETRY_LOG": str(short_drive)}) as runtime:
        runtime.deliver("telemetry/signals", b'{"v": 1, "kind": "signals", "signals": "oops"}')
        runtime.deliver("telemetry/aggregates", b'{"hello": "world"}')
        runtime.wait_for_sources(timeout=60)
        runtime.drain()
        assert runtime.component("telemetry.Aggregator").stats["malformed"] == 1
        assert runtime.component("telemetry.AnomalyDetector").stats["malformed"] == 1
        assert runtime.component("telemetry.Uploader").stats["malformed"] == 1
    windows = [m for p in cloud.payloads() for m in p.window_messages()]
    assert len(windows) == 26  # the short drive (20 s): 5 s windows (4), 10 s for temperatures (2), 1 s for the drive group (20)
    assert runtime.errors == []


def test_a_handler_that_raises_is_reported_and_the_others_go_on(project, short_drive, tmp_path):
    handler = project / "lambdas" / "uploader" / "handler.py"
    handler.write_text(handler.read_text() + "\n\ndef function_handler(event, context):\n    raise RuntimeError('boom')\n")
    summary = replay(short_drive, out_dir=tmp_path / "out", config=SAMPLE / "vehicle.toml", recipes_dir=project / "recipes")
    assert summary["windows"] == 26  # the aggregator kept going
    assert summary["uploaded_messages"] == 0
    # every invocation failed: one per local message (several windows travel as one batch)
    assert len(summary["handler_errors"]) == sum(summary["local_messages"].get(t, 0) for t in ("telemetry/aggregates", "telemetry/alerts")) > 0
    assert "telemetry.Uploader: handler raised RuntimeError: boom" in summary["handler_errors"][0]


def test_a_broken_dbc_stops_the_start_with_the_file_named(tmp_path, short_drive):
    bad = tmp_path / "bad.dbc"
    bad.write_text("BO_ 1 X: 8 Y\n SG_ A : 0|8@1+ (1,0) [0|1] \"\" Y\n SG_ B : oops\n")
    with pytest.raises(DbcError, match=f"{bad}: not a valid DBC file"):
        replay(short_drive, out_dir=tmp_path / "out", dbc=[bad])


def test_a_message_is_decoded_once_for_all_its_subscribers(monkeypatch):
    cfg = load_config(SAMPLE / "vehicle.toml")
    runtime = LocalRuntime(ROOT / "recipes", cfg, InMemoryCloudTransport())
    got: list = []
    runtime.subscribe("telemetry/signals", got.append)
    runtime.subscribe("telemetry/signals", got.append)
    decoded = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **kw: decoded.append(1) or real_loads(*a, **kw))
    runtime.deliver("telemetry/signals", b'{"v": 1, "kind": "end_of_stream", "seq": 1, "end": null}')
    assert len(decoded) == 1 and len(got) == 2 and got[0] is got[1]


def test_a_binary_payload_is_decoded_once_for_all_its_subscribers_in_a_replay(monkeypatch, short_drive, tmp_path):
    """The reader's batches go to the aggregator, the detector and the replay's taps; the
    aggregator's payloads to the uploader and the taps: each is decoded once, and each subscriber
    gets the same message."""
    from telemetry.edge import messages
    from telemetry.tools.replay import replay

    decoded: Counter[str] = Counter()
    for cls in (messages.Signals, messages.Batch, messages.Aggregates):
        real = cls.from_bytes.__func__

        def counting(klass, data, _real=real, _name=cls.__name__):
            decoded[_name] += 1
            return _real(klass, data)

        monkeypatch.setattr(cls, "from_bytes", classmethod(counting))
    published: Counter[str] = Counter()
    real_deliver = LocalRuntime.deliver

    def deliver(self, topic, wire):
        if messages.is_binary(wire):
            published[messages._BINARY[bytes(wire[:4])].__name__] += 1
        return real_deliver(self, topic, wire)

    monkeypatch.setattr(LocalRuntime, "deliver", deliver)
    replay(short_drive, out_dir=tmp_path, config=SAMPLE / "vehicle.toml")
    assert published["Signals"] >= 1 and published["Aggregates"] + published["Batch"] >= 1
    # three subscribers (aggregator, detector, the taps), one decode; a batch of payloads (two
    # subscribers: uploader, taps) decodes its items inside it, once
    assert decoded["Signals"] == published["Signals"]
    assert decoded["Batch"] == published["Batch"]
    if not published["Batch"]:
        assert decoded["Aggregates"] == published["Aggregates"]


def test_functions_get_their_events_as_their_recipe_says(monkeypatch):
    """A function whose recipe takes binary gets the payload's bytes (JSON ones too); one that
    takes JSON gets the decoded object, and a binary payload routed to it is counted."""
    cfg = load_config(SAMPLE / "vehicle.toml")
    runtime = LocalRuntime(ROOT / "recipes", cfg, InMemoryCloudTransport())
    seen: dict[str, list] = {}
    uploader_recipe = next(r for r in runtime.recipes if r.name == "telemetry.Uploader")
    params = {**uploader_recipe.params, "inputPayloadEncodingType": "json"}
    json_uploader = dataclasses.replace(uploader_recipe, lambda_function={
        **uploader_recipe.lambda_function, "componentName": "json-uploader", "componentLambdaParameters": params})
    for recipe in [*runtime.recipes, json_uploader]:
        runner = mock.Mock()
        runner.recipe = recipe
        runner.stats = Counter()
        runner.queue.full.return_value = False
        runner.queue.put.side_effect = seen.setdefault(recipe.name, []).append
        for topic in recipe.topics:
            runtime._routes.setdefault(topic, []).append(runner)
    batch = Signals("x", 1, 1.0, 2.0, {}, columns(**{"A.x": ([1.0, 2.0], [3.0, 4.0])})).to_bytes()
    runtime.deliver("telemetry/signals", batch)
    assert seen["telemetry.Aggregator"] == [batch] == seen["telemetry.AnomalyDetector"]
    runtime.deliver("telemetry/alerts", b'{"v": 1, "kind": "alert"}')
    assert seen["telemetry.Uploader"] == [b'{"v": 1, "kind": "alert"}']
    assert seen["json-uploader"] == [{"v": 1, "kind": "alert"}]
    runtime.deliver("telemetry/alerts", batch)
    binary, as_json = runtime._routes["telemetry/alerts"]
    assert binary.stats["binary_to_json_function"] == 0 and as_json.stats["binary_to_json_function"] == 1


def test_what_the_aggregator_flushes_as_it_stops_is_stored_by_the_uploader_stopped_after_it(tmp_path):
    """Stopping a live car: the aggregator publishes its open windows as it stops; the uploader,
    stopped after it, handles them before it closes its spool (not into a closed one)."""
    import threading

    import can

    cfg = load_config(SAMPLE / "vehicle.toml")
    spool = tmp_path / "spool.db"
    env = {"TELEMETRY_CAN_INTERFACE": "virtual", "TELEMETRY_CAN_CHANNEL": "runtime-stop", "TELEMETRY_SPOOL": str(spool)}
    frames = [m for _, m in zip(range(300), can.LogReader(str(SAMPLE / "drive.log")))]
    with can.Bus(interface="virtual", channel="runtime-stop") as car:
        cloud = InMemoryCloudTransport()
        runtime = LocalRuntime(ROOT / "recipes", cfg, cloud, env=env)
        with runtime:
            waiter = threading.Event()
            reader = runtime.component("telemetry.CanReader")
            for _ in range(500):  # the bus is opened in the reader's thread: frames sent before are not read
                if reader.bus_state == "up":
                    break
                waiter.wait(0.01)
            for frame in frames:
                car.send(frame)  # stamped with the wall clock as it goes on the bus
            waiter.wait(1.5)  # read and batched; the windows are still open
            aggregator = runtime.component("telemetry.Aggregator")
        assert runtime.errors == []
    flushed = aggregator.counters()["aggregates"]
    assert flushed >= 1  # the open windows went out as the aggregator stopped
    import sqlite3

    with sqlite3.connect(spool) as db:
        left = db.execute("SELECT COUNT(*) FROM spool WHERE kind = 'aggregates'").fetchone()[0]
    # every one stored (sent to the cloud, or in the spool for the next start): none handed to a closed spool
    assert len(cloud.payloads()) + left == flushed

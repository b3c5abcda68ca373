"""The Lambda adapter: hosted by the local runtime, on Greengrass (IPC client with its network
side replaced), and a pinned loop that starts without blocking the module import."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from unittest import mock

import can
import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from support.helpers import columns, frame, signals_event
from telemetry.edge.components import LambdaAdapter, Services, UploaderComponent, on_greengrass
from telemetry.edge.messages import unpack
from telemetry.edge.transport import IpcCloudTransport, IpcLocalTransport

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str, services: Services | None = None):
    """Import a handler module and, as the local runtime does, host it and start its loop."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if services is not None:
        module.adapter.host(services)
        module.adapter.start_pinned()
    return module


def alert(alert_id: str, t: float) -> dict:
    return {"v": 1, "kind": "alert", "vehicle": "car-01", "id": alert_id, "state": "raised", "rule": "r",
            "rule_kind": "limit", "signal": "A.x", "severity": "warning", "t": t, "value": 1.0, "detail": {}}


def test_on_greengrass_reads_the_nucleus_environment():
    assert on_greengrass({"SVCUID": "abc"})
    assert on_greengrass({"AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/x"})
    assert not on_greengrass({})


def test_services_on_greengrass_use_one_ipc_client_and_the_configured_vehicle(tmp_path):
    client = mock.create_autospec(GreengrassCoreIPCClientV2, instance=True)
    env = {"TELEMETRY_CONFIG": str(ROOT / "vehicles/sample/vehicle.toml"), "SVCUID": "x",
           "TELEMETRY_SPOOL": str(tmp_path / "spool.db")}
    with mock.patch("awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2", return_value=client) as cls:
        services = Services.greengrass(env)
    cls.assert_called_once_with()
    assert isinstance(services.local, IpcLocalTransport) and isinstance(services.cloud, IpcCloudTransport)
    assert services.config.vehicle == "sunrace-01"
    # an uploader built on these services spools, then publishes through the SDK's real signature
    uploader = UploaderComponent(services)
    uploader.handle(alert("a", 1.0))
    assert (tmp_path / "spool.db").is_file() and uploader.pending() == 1
    assert uploader.core.sender.step() == 0.0
    client.publish_to_iot_core.assert_called_once()
    kwargs = client.publish_to_iot_core.call_args.kwargs
    assert kwargs["topic_name"] == "dt/sunrace-01/alerts"
    assert [item["message"]["id"] for item in unpack(kwargs["payload"])] == ["a"]
    assert uploader.pending() == 0
    uploader.close()


def test_a_handler_module_builds_its_component_once_on_first_invocation(make_services):
    services = make_services(aggregator={"window_seconds": 1.0, "publish_seconds": 1.0})
    module = load(ROOT / "lambdas/aggregator/handler.py", "aggregator_handler_test", services)
    module.function_handler(signals_event(columns(**{"A.x": ([0.5], [1.0])})), None)
    first = module.adapter.component
    module.function_handler(signals_event(columns(**{"A.x": ([1.5], [2.0])})), None)
    assert first is module.adapter.component
    assert [w for m in services.local.messages("telemetry/out") for w in m["windows"]] == ["0.0"]


def test_the_uploader_handler_spools_and_its_pinned_sender_delivers(make_services):
    services = make_services(env={"TELEMETRY_SPOOL": ":memory:"}, uploader={"poll_seconds": 0.01})
    from telemetry.edge.clock import SystemClock

    services.clock = SystemClock()
    module = load(ROOT / "lambdas/uploader/handler.py", "uploader_handler_test", services)
    try:
        assert module.adapter.thread.is_alive()
        module.function_handler(alert("a", 1.0), None)
        module.function_handler(alert("b", 2.0), None)
        waiter = threading.Event()
        for _ in range(500):
            if module.adapter.component.pending() == 0:
                break
            waiter.wait(0.01)
    finally:
        module.adapter.stop(timeout=5)
    sent = [item["message"]["id"] for topic, payload in services.cloud.sent if topic.endswith("/alerts") for item in unpack(payload)]
    assert sent == ["a", "b"]


def test_stopping_an_idle_uploader_wakes_its_sender_at_once(make_services):
    """An idle sender sleeps until a message arrives (up to poll_seconds, here an hour): stopping
    wakes it, so the loop has ended when stop returns, not an hour later (the join would time out
    and leave it running)."""
    services = make_services(env={"TELEMETRY_SPOOL": ":memory:"}, uploader={"poll_seconds": 3600.0})
    from telemetry.edge.clock import SystemClock

    services.clock = SystemClock()
    module = load(ROOT / "lambdas/uploader/handler.py", "uploader_handler_idle_test", services)
    sender = module.adapter.component.core.sender
    try:
        for _ in range(500):  # until it has looked once and gone to sleep
            if sender.idle:
                break
            threading.Event().wait(0.01)
        assert sender.idle
    finally:
        module.adapter.stop(timeout=30)
    assert not module.adapter.thread.is_alive()


def test_pinned_reader_starts_its_loop_without_blocking_the_import(tmp_path, make_services):
    # GIVEN a log of 100 s replayed at the recorded pace
    log = tmp_path / "slow.log"
    with can.Logger(str(log)) as w:
        for i in range(101):
            w.on_message_received(frame(float(i), 0x7E0, b"\x01"))
    services = make_services(env={"TELEMETRY_LOG": str(log), "TELEMETRY_REPLAY_SPEED": "1"})
    from telemetry.edge.clock import SystemClock

    services.clock = SystemClock()
    # WHEN the reader's handler module is imported as Greengrass would (hosted here)
    module = load(ROOT / "lambdas/can_reader/handler.py", "reader_handler_test", services)
    # THEN the import has returned while the loop runs on in its thread, and it stops when told
    try:
        assert module.adapter.thread.is_alive()
        assert module.adapter.component.finished.is_set() is False
    finally:
        module.adapter.stop(timeout=5)
    assert not module.adapter.thread.is_alive()
    assert module.adapter.error is None


def test_a_pinned_loop_that_fails_reports_its_error(make_services):
    class Failing:
        def __init__(self, services):
            pass

        def run(self, stop: threading.Event) -> None:
            raise RuntimeError("bus gone")

        def close(self) -> None:
            pass

    adapter = LambdaAdapter(Failing)
    adapter.host(make_services())
    assert adapter.start_pinned()
    adapter.thread.join(5)
    assert isinstance(adapter.error, RuntimeError)
    adapter.stop()


def test_a_bad_configuration_fails_the_start_not_later(make_services, tmp_path):
    bad = tmp_path / "x.dbc"
    bad.write_text("nonsense")
    services = make_services(dbc=[str(bad)])
    from telemetry.edge.errors import DbcError

    with pytest.raises(DbcError):
        load(ROOT / "lambdas/can_reader/handler.py", "reader_handler_bad", services)


def test_the_windows_one_batch_closes_travel_together_and_are_stored_in_one_commit(make_services, tmp_path):
    """Aggregator -> uploader: several windows closed by one signals batch are one local message
    (a ``batch``): one invocation of the uploader, one spool commit; a malformed item in it is
    counted and the others are stored."""
    from telemetry.edge import messages
    from telemetry.edge.components import AggregatorComponent

    services = make_services(aggregator={"window_seconds": 1.0, "publish_seconds": 1.0})
    aggregator = AggregatorComponent(services)
    aggregator.handle(messages.Signals("x", 1, 0.5, 4.5, {}, columns(**{"A.x": ([0.5, 1.5, 2.5, 3.5, 4.5], [1, 2, 3, 4, 5])})).to_bytes())
    out = services.local.messages("telemetry/out")
    assert [m["kind"] for m in out] == ["batch"] and out[0]["of"] == "aggregates"
    assert [m["period"]["start"] for m in out[0]["messages"]] == [0.0, 1.0, 2.0, 3.0]
    aggregator.handle(messages.Signals("x", 2, 5.5, 5.5, {}, columns(**{"A.x": ([5.5], [6])})).to_bytes())
    assert services.local.messages("telemetry/out")[-1]["kind"] == "aggregates"  # one window: on its own
    assert aggregator.counters()["aggregates"] == 5

    up = UploaderComponent(make_services(env={"TELEMETRY_SPOOL": str(tmp_path / "spool.db")}))
    statements: list[str] = []
    up.core.spool._db.set_trace_callback(statements.append)
    good = [messages.Aggregates.of_window(messages.Window("car", i, "default", float(i), i + 1.0, {"A.x": {"count": 1}}))
            for i in range(4)]
    wires = [m.to_bytes() for m in good] + [b'{"v":1,"kind":"aggregates","vehicle":"car"}']
    head = json.dumps({"v": 1, "kind": "batch", "of": "aggregates", "sizes": [len(w) for w in wires]}).encode()
    up.handle(b"TLMB" + len(head).to_bytes(4, "little") + head + b"".join(wires))
    assert statements.count("COMMIT") == 1 and up.pending() == 4
    assert up.counters()["malformed"] == 1
    assert list(up.counters()["malformed_reasons"]) == ["in a batch: aggregates travel binary (TLMA); this is a JSON object"]
    up.close()


def test_the_alerts_one_batch_decides_travel_together_and_leave_in_one_bundle(make_services, tmp_path):
    """Detector -> uploader: the alerts one signals batch decides are one local ``batch``,
    published at once (numbered as before); the uploader stores them in one commit, so they
    leave in one bundle whenever its sender wakes, each with its id."""
    from telemetry.edge import messages
    from telemetry.edge.components import AnomalyDetectorComponent

    services = make_services(rules=[{"name": "hot", "kind": "limit", "signals": "A.*", "max": 10.0}])
    heard: list[bytes] = []
    services.local.subscribe("telemetry/out", heard.append)
    detector = AnomalyDetectorComponent(services)
    detector.handle(messages.Signals("x", 1, 0.0, 2.0, {}, columns(**{"A.x": ([1.0], [50.0]), "A.y": ([1.5], [60.0])})).to_bytes())
    out = services.local.messages("telemetry/out")
    assert [m["kind"] for m in out] == ["batch"] and out[0]["of"] == "alert"
    assert [(a["signal"], a["state"], a["seq"]) for a in out[0]["messages"]] == [("A.x", "raised", 1), ("A.y", "raised", 2)]
    detector.handle(messages.Signals("x", 2, 3.0, 3.0, {}, columns(**{"A.x": ([3.0], [5.0])})).to_bytes())
    last = services.local.messages("telemetry/out")[-1]
    assert (last["kind"], last["state"], last["seq"]) == ("alert", "cleared", 3)  # one alert: on its own

    up = UploaderComponent(make_services(env={"TELEMETRY_SPOOL": str(tmp_path / "spool.db")}))
    statements: list[str] = []
    up.core.spool._db.set_trace_callback(statements.append)
    up.handle(heard[0])
    assert statements.count("COMMIT") == 1 and up.pending() == 2
    up.core.sender.step()
    (topic, payload), = up.services.cloud.sent
    envelope = json.loads(payload)
    assert topic == "dt/car-01/alerts" and (envelope["count"], envelope["encoding"]) == (2, "zd1")
    alerts = [messages.Alert.decode(a) for a in out[0]["messages"]]
    assert unpack(payload) == [{"id": f"car-01:alert:{a.key}", "message": a.encode()} for a in alerts]
    up.close()

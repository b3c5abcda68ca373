"""Faults injected one at a time into the components as a core runs them: a CAN bus that is not
up at start or fails while reading (retried with back-off, reported on the health topic), a
local publish that fails (retried), anything else (the loop ends and the process with it, status
1, so the nucleus restarts the component), SIGTERM (open batches, windows and the spool flushed,
status 0), and messages lost between processes (gaps in ``seq`` counted and reported)."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import threading
from pathlib import Path
from unittest import mock

import can
import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from support.helpers import columns, frame, signals_event
from telemetry.edge import messages
from telemetry.edge.clock import ManualClock, SystemClock
from telemetry.edge.components import (
    AggregatorComponent,
    AnomalyDetectorComponent,
    CanReaderComponent,
    LambdaAdapter,
    UploaderComponent,
)
from telemetry.edge.errors import TransportError
from telemetry.edge.spool import SqliteSpool
from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport

ROOT = Path(__file__).resolve().parents[2]
HEALTH = "dt/car-01/health"


class ScriptedBus:
    """A bus that delivers ``frames``, then raises ``error`` (if any), then stays quiet."""

    def __init__(self, frames: list[can.Message], error: BaseException | None = None) -> None:
        self.name = "scripted"
        self.bad_records: list = []
        self._frames, self._error = frames, error
        self.closed = False

    def frames(self, stop: threading.Event):
        yield from self._frames
        if self._error is not None:
            raise self._error
        while not stop.is_set():
            stop.wait(0.005)
            yield None

    def close(self) -> None:
        self.closed = True


class Opener:
    """What opening the bus gives, call after call: an exception raised or a bus returned."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class FlakyLocal(InMemoryLocalTransport):
    """Local pub/sub whose first ``failures`` publishes fail as a lost IPC connection does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def publish(self, topic, message) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TransportError("publish to local topic failed: ConnectionError: IPC connection lost")
        super().publish(topic, message)


def alert_event(alert_id: str, t: float) -> dict:
    return {"v": 1, "kind": "alert", "vehicle": "car-01", "id": alert_id, "state": "raised", "rule": "r",
            "rule_kind": "limit", "signal": "A.x", "severity": "warning", "t": t, "value": 1.0, "detail": {}}


def wait_until(predicate, what: str) -> None:
    waiter = threading.Event()
    for _ in range(2000):
        if predicate():
            return
        waiter.wait(0.005)
    raise AssertionError(f"never happened: {what}")


def statuses(services) -> list[dict]:
    return [json.loads(p) for t, p in services.cloud.sent if t == HEALTH]


def frames(n: int, t0: float = 0.0) -> list[can.Message]:
    return [frame(t0 + i * 0.01, 0x7E0, b"\x01") for i in range(n)]


def run_reader(reader: CanReaderComponent, until) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,))
    thread.start()
    try:
        wait_until(until, "the reader got its frames")
    finally:
        stop.set()
        thread.join(5)
        reader.close()
    assert not thread.is_alive()


def seen(reader: CanReaderComponent) -> int:
    """Frames the reader has taken off the bus: decoded, or waiting in its open batch."""
    return reader.core.totals["read"] + len(reader.batcher.frames)


def windows(services) -> list[dict]:
    """The windows the aggregator published, each as {"window": {"start": ...}}, from its
    aggregates payloads (alone or in a batch)."""
    out = services.local.messages("telemetry/out")
    payloads = [p for m in out for p in (m["messages"] if m["kind"] == "batch" else [m]) if p["kind"] == "aggregates"]
    return [{"window": {"start": float(start)}} for p in payloads for start in p["windows"]]


def read_frames(services) -> int:
    return sum(m["frames"]["read"] for m in services.local.messages("telemetry/out") if m["kind"] == "signals")


# -- 4: the bus is opened in the reading thread, retried while down, reported ----------------------

def test_a_bus_that_is_not_up_yet_is_retried_with_backoff_and_reported(make_services):
    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 100.0})
    services.clock = ManualClock(1000.0)
    down = OSError(19, "No such device")
    opener = Opener(down, down, down, ScriptedBus(frames(3)))
    reader = CanReaderComponent(services, open_bus=opener)  # nothing is opened here
    assert opener.calls == 0
    run_reader(reader, lambda: seen(reader) == 3)
    assert opener.calls == 4 and reader.faults["bus_open_failures"] == 3
    assert services.clock.slept == pytest.approx(0.5 + 1.0 + 2.0)  # back-off doubles
    reported = statuses(services)
    assert [s["state"] for s in reported] == ["bus_down", "running"]  # once per change, not per retry
    assert "No such device" in reported[0]["detail"] and reported[0]["counters"]["bus_open_failures"] == 1
    assert reported[1]["counters"]["bus_open_failures"] == 3
    assert read_frames(services) == 3  # flushed at the stop, with the end of stream after it
    assert services.local.messages("telemetry/out")[-1]["kind"] == "end_of_stream"


def test_the_reader_imports_on_a_core_whose_can0_is_not_up(monkeypatch, caplog):
    """The handler module as the Lambda runtime imports it on a core (the nucleus's environment,
    the IPC client's network side replaced), with a SocketCAN channel that does not exist: the
    import returns, the loop keeps trying and says so on the health topic."""
    env = {"SVCUID": "x", "TELEMETRY_CONFIG": str(ROOT / "vehicles/sample/vehicle.toml"),
           "TELEMETRY_OUTPUT_TOPIC": "telemetry/signals", "TELEMETRY_CAN_INTERFACE": "socketcan",
           "TELEMETRY_CAN_CHANNEL": "can-gone", "TELEMETRY_LOG_LEVEL": "DEBUG"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = mock.create_autospec(GreengrassCoreIPCClientV2, instance=True)
    previous = signal.getsignal(signal.SIGTERM)
    level = logging.getLogger("telemetry").level
    spec = importlib.util.spec_from_file_location("reader_on_core", ROOT / "lambdas/can_reader/handler.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch("awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2", return_value=client):
        spec.loader.exec_module(module)  # does not raise
    try:
        assert module.adapter.thread.is_alive()
        assert signal.getsignal(signal.SIGTERM) == module.adapter._on_sigterm
        assert logging.getLogger("telemetry").level == logging.DEBUG  # TELEMETRY_LOG_LEVEL is read
        wait_until(lambda: client.publish_to_iot_core.called, "a status on the health topic")
        kwargs = client.publish_to_iot_core.call_args.kwargs
        status = json.loads(kwargs["payload"])
        assert kwargs["topic_name"] == "dt/sunrace-01/health"
        assert status["kind"] == "status" and status["state"] == "bus_down" and "can-gone" in status["detail"]
        assert module.adapter.error is None and module.adapter.component.faults["bus_open_failures"] >= 1
        assert any("CAN bus cannot be opened" in r.getMessage() for r in caplog.records)
    finally:
        module.adapter.stop(timeout=5)
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger("telemetry").setLevel(level)
    assert not module.adapter.thread.is_alive()


# -- 5: reading errors are retried; anything else ends the process ---------------------------------

def test_a_bus_that_goes_down_or_bus_off_while_reading_is_reopened(make_services):
    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 100.0})
    services.clock = ManualClock(1000.0)
    first = ScriptedBus(frames(2), OSError(100, "Network is down"))
    second = ScriptedBus(frames(2, 1.0), can.CanOperationError("bus-off"))
    third = ScriptedBus(frames(1, 2.0))
    reader = CanReaderComponent(services, open_bus=Opener(first, second, third))
    run_reader(reader, lambda: seen(reader) == 5)
    assert reader.faults["bus_read_errors"] == 2 and first.closed and second.closed
    assert read_frames(services) == 5  # what was read before each failure went out too
    assert [s["state"] for s in statuses(services)] == ["running", "bus_down", "running", "bus_down", "running"]


def test_a_failing_local_publish_is_retried_not_lost(make_services):
    services = make_services(reader={"batch_max_frames": 2, "batch_max_seconds": 100.0})
    services.clock = ManualClock(1000.0)
    services.local = FlakyLocal(failures=3)
    reader = CanReaderComponent(services, open_bus=Opener(ScriptedBus(frames(6))))
    run_reader(reader, lambda: read_frames(services) == 6)
    assert reader.faults["publish_retries"] == 3 and reader.faults["publish_lost"] == 0
    assert [m["seq"] for m in services.local.messages("telemetry/out")] == [1, 2, 3, 4]  # nothing skipped


def test_a_loop_that_dies_of_anything_else_ends_the_process_with_status_1(make_services):
    services = make_services()
    codes: list[int] = []
    adapter = LambdaAdapter(lambda s: CanReaderComponent(s, open_bus=Opener(ScriptedBus(frames(1), ValueError("a bug")))),
                            exit=codes.append)
    adapter.host(services, exit_on_failure=True)  # as on a core
    assert adapter.start_pinned()
    adapter.thread.join(5)
    assert codes == [1] and isinstance(adapter.error, ValueError)
    assert statuses(services)[-1]["state"] == "failed" and "ValueError: a bug" in statuses(services)[-1]["detail"]
    adapter.stop()


def test_the_uploaders_sender_dying_ends_the_process_but_transport_errors_do_not(make_services, tmp_path):
    def cloud(topic, payload):
        if topic.endswith("/alerts"):
            raise state["error"]

    state = {"error": TransportError("offline")}
    services = make_services(env={"TELEMETRY_SPOOL": str(tmp_path / "spool.db")},
                             uploader={"retry_min_seconds": 0.01, "retry_max_seconds": 0.01, "poll_seconds": 0.01,
                                       "health_seconds": 1e9})
    services.clock = SystemClock()
    services.cloud = InMemoryCloudTransport(cloud)
    codes: list[int] = []
    adapter = LambdaAdapter(UploaderComponent, exit=codes.append)
    adapter.host(services, exit_on_failure=True)
    adapter.start_pinned()
    adapter.handle(alert_event("a", 1.0))
    wait_until(lambda: adapter.component.totals()["retries"] >= 3, "the sender retried")
    assert adapter.thread.is_alive() and codes == []  # IoT Core unreachable: retried, alive
    state["error"] = RuntimeError("not a transport error")
    adapter.handle(alert_event("b", 2.0))
    adapter.thread.join(5)
    assert codes == [1] and isinstance(adapter.error, RuntimeError)
    adapter.stop()


# -- 6: SIGTERM flushes ------------------------------------------------------------------------------

def test_sigterm_flushes_the_readers_open_batch_and_exits_0(make_services):
    services = make_services(reader={"batch_max_frames": 1000, "batch_max_seconds": 100.0})
    codes: list[int] = []
    bus = ScriptedBus(frames(3))
    adapter = LambdaAdapter(lambda s: CanReaderComponent(s, open_bus=Opener(bus)), exit=codes.append)
    adapter.host(services, exit_on_failure=True)
    adapter.start_pinned()
    wait_until(lambda: seen(adapter.component) == 3, "three frames in the open batch")
    assert services.local.messages("telemetry/out") == []  # still open
    adapter._on_sigterm(signal.SIGTERM, None)
    assert codes == [0] and not adapter.thread.is_alive() and bus.closed
    out = services.local.messages("telemetry/out")
    assert [m["kind"] for m in out] == ["signals", "end_of_stream"] and out[0]["frames"]["read"] == 3


def test_sigterm_publishes_the_aggregators_open_windows(make_services):
    services = make_services(aggregator={"window_seconds": 1.0, "publish_seconds": 1.0})
    codes: list[int] = []
    adapter = LambdaAdapter(AggregatorComponent, exit=codes.append)
    adapter.host(services, exit_on_failure=True)
    adapter.handle(signals_event(columns(**{"A.x": ([0.5, 1.5, 2.5], [1.0, 2.0, 3.0])}), seq=1))
    closed = windows(services)
    adapter._on_sigterm(signal.SIGTERM, None)
    assert codes == [0] and [w["window"]["start"] for w in closed] == [0.0, 1.0]
    assert [w["window"]["start"] for w in windows(services)] == [0.0, 1.0, 2.0]  # the open one went out


def test_sigterm_leaves_what_the_uploader_acknowledged_in_its_spool(make_services, tmp_path):
    def offline(topic, payload):
        raise TransportError("offline")

    path = tmp_path / "spool.db"
    services = make_services(env={"TELEMETRY_SPOOL": str(path)}, uploader={"health_seconds": 1e9})
    services.cloud = InMemoryCloudTransport(offline)
    codes: list[int] = []
    adapter = LambdaAdapter(UploaderComponent, exit=codes.append)
    adapter.host(services, exit_on_failure=True)
    adapter.start_pinned()
    adapter.handle(alert_event("a", 1.0))
    adapter.handle(alert_event("b", 2.0))
    adapter._on_sigterm(signal.SIGTERM, None)
    assert codes == [0] and not adapter.thread.is_alive()
    spool = SqliteSpool(str(path))
    try:
        assert spool.depth()[0] == 2  # acknowledged means stored: both are there for the next start
    finally:
        spool.close()


# -- 7: messages lost between processes are counted and reported ------------------------------------

def test_the_aggregator_and_detector_count_gaps_in_the_readers_seq(make_services):
    for component in (AggregatorComponent, AnomalyDetectorComponent):
        services = make_services(aggregator={"window_seconds": 1.0})
        c = component(services)
        for seq in (1, 2, 5, 6, 6, 1, 3):  # 3 and 4 lost; 6 again is no loss; the reader restarted, its 2 lost
            c.handle(signals_event(columns(**{"A.x": ([float(seq)], [1.0])}), seq=seq))
        assert (c.seq.missed, c.seq.restarts) == (3, 1), component
        reported = statuses(services)
        assert reported[0]["counters"]["missed"] == 2 and reported[0]["component"] == "test"
        c.close()  # the last word: every gap is in the last status
        assert statuses(services)[-1]["counters"]["missed"] == 3 and statuses(services)[-1]["counters"]["producer_restarts"] == 1


def test_the_uploader_counts_gaps_in_the_aggregators_seq(make_services, tmp_path):
    services = make_services(env={"TELEMETRY_SPOOL": ":memory:"})
    uploader = UploaderComponent(services)
    windows = [messages.Aggregates.of_window(messages.Window("car-01", seq, "default", float(seq), seq + 1.0,
                                                             {"A.x": {"count": 1, "mean": 1.0}})) for seq in (1, 2, 4, 5, 8)]
    uploader.handle(messages.Batch(messages.AGGREGATES, tuple(windows[:2])).to_bytes())
    for w in windows[2:]:
        uploader.handle(w.to_bytes())
    assert uploader.seq.missed == 3 and uploader.pending() == 5
    uploader.close()
    assert statuses(services)[-1]["counters"]["missed"] == 3


def test_the_first_message_after_a_start_is_not_counted_as_lost(make_services):
    services = make_services()
    c = AggregatorComponent(services)
    c.handle(signals_event(columns(**{"A.x": ([1.0], [1.0])}), seq=40))  # we restarted, not the reader
    c.handle(signals_event(columns(**{"A.x": ([2.0], [1.0])}), seq=41))
    assert (c.seq.missed, c.seq.unseen_at_start) == (0, 39) and statuses(services) == []


# -- 9: TELEMETRY_LOG_LEVEL ---------------------------------------------------------------------------

def test_the_log_level_comes_from_the_recipes_environment(caplog):
    from telemetry.edge.components import log_level

    assert log_level({"TELEMETRY_LOG_LEVEL": "debug"}) == logging.DEBUG
    assert log_level({}) == logging.INFO
    assert log_level({"TELEMETRY_LOG_LEVEL": "LOUD"}) == logging.INFO  # a typo must not stop the car's telemetry
    assert "TELEMETRY_LOG_LEVEL='LOUD' is not one of" in caplog.text


def test_the_uploader_counts_alerts_the_detector_numbered_that_never_arrived(make_services):
    services = make_services(env={"TELEMETRY_SPOOL": ":memory:"})
    uploader = UploaderComponent(services)
    for seq in (1, 2, 5):  # 3 and 4 lost between the processes
        uploader.handle(messages.Alert("car-01", f"a{seq}", "raised", "r", "limit", "A.x", "warning", float(seq), 1.0,
                                       seq=seq).to_bytes())
    assert uploader.seq.missed == 2 and uploader.pending() == 3
    uploader.close()


def test_the_detector_numbers_its_alerts_as_it_publishes_them(make_services):
    services = make_services(rules=[{"name": "hot", "kind": "limit", "signals": "A.x", "max": 1.0}])
    detector = AnomalyDetectorComponent(services)
    detector.handle(signals_event(columns(**{"A.x": ([1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 5.0, 0.0])}), seq=1))
    out = services.local.messages("telemetry/out")
    assert [m["kind"] for m in out] == ["batch"]  # the alerts of one signals batch, published together
    alerts = [m for m in out[0]["messages"] if m["kind"] == "alert"]
    assert [a["state"] for a in alerts] == ["raised", "cleared", "raised", "cleared"]
    assert [a["seq"] for a in alerts] == [1, 2, 3, 4]

"""Transports. The IPC adapters are tested against the real SDK class with only its network side
replaced: ``create_autospec`` of ``GreengrassCoreIPCClientV2`` keeps the real signatures, so a
wrong argument name fails here as it would on a core device."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    JsonMessage,
    PayloadFormat,
    PublishMessage,
    SubscriptionResponseMessage,
    UnauthorizedError,
)

from support.helpers import columns
from telemetry.edge.errors import MessageError, TransportError
from telemetry.edge.messages import Alert, EndOfStream, Signals, decode
from telemetry.edge.transport import (
    CloudTransport,
    InMemoryCloudTransport,
    InMemoryLocalTransport,
    IpcCloudTransport,
    IpcLocalTransport,
    LocalTransport,
    OutboxFile,
)


@pytest.fixture
def client():
    return mock.create_autospec(GreengrassCoreIPCClientV2, instance=True)


def test_every_implementation_satisfies_its_protocol(client, tmp_path):
    assert isinstance(IpcLocalTransport(client), LocalTransport)
    assert isinstance(InMemoryLocalTransport(), LocalTransport)
    for cloud in (IpcCloudTransport(client), InMemoryCloudTransport(), OutboxFile(tmp_path / "c.jsonl")):
        assert isinstance(cloud, CloudTransport)
        cloud.close()


END = EndOfStream("drive.log", 3, 12.5, {"read": 7})


def alert(value: float) -> Alert:
    return Alert("car", "car/r/A.x/1.0", "raised", "r", "limit", "A.x", "warning", 1.0, value, {})


def test_ipc_local_publish_sends_a_json_message(client):
    IpcLocalTransport(client).publish("telemetry/signals", END)
    client.publish_to_topic.assert_called_once()
    kwargs = client.publish_to_topic.call_args.kwargs
    assert kwargs["topic"] == "telemetry/signals"
    message = kwargs["publish_message"]
    assert isinstance(message, PublishMessage)
    assert isinstance(message.json_message, JsonMessage)
    assert message.json_message.message == END.encode()
    assert message.json_message.message == {"v": 1, "kind": "end_of_stream", "source": "drive.log", "seq": 3,
                                            "end": 12.5, "totals": {"read": 7}}


def test_ipc_local_publish_refuses_nan_before_the_sdk(client):
    with pytest.raises(MessageError):
        IpcLocalTransport(client).publish("t", alert(float("inf")))
    client.publish_to_topic.assert_not_called()


def test_ipc_local_publish_sends_a_signals_batch_as_binary(client):
    batch = Signals("drive.log", 4, 1.0, 2.0, {"read": 2}, columns(**{"A.x": ([1.0, 2.0], [3.0, 4.0])}))
    IpcLocalTransport(client).publish("telemetry/signals", batch)
    message = client.publish_to_topic.call_args.kwargs["publish_message"]
    assert message.json_message is None and isinstance(message.binary_message, BinaryMessage)
    assert message.binary_message.message == batch.to_bytes()
    assert decode(message.binary_message.message).encode() == batch.encode()


def test_ipc_local_subscribe_passes_json_objects_and_binary_bytes(client):
    got = []
    IpcLocalTransport(client).subscribe("telemetry/alerts", got.append)
    kwargs = client.subscribe_to_topic.call_args.kwargs
    assert kwargs["topic"] == "telemetry/alerts"
    on_event = kwargs["on_stream_event"]
    on_event(SubscriptionResponseMessage(json_message=JsonMessage(message={"a": 1})))
    on_event(SubscriptionResponseMessage(binary_message=BinaryMessage(message=b'{"b": 2}')))
    assert got == [{"a": 1}, b'{"b": 2}']  # bytes, for the handler's decoder (JSON or binary columns)
    assert decode(END.to_bytes()).encode() == END.encode()


def test_ipc_cloud_publish_is_qos1_with_bytes(client):
    IpcCloudTransport(client).publish("dt/car-01/alerts", b'{"v":1}')
    client.publish_to_iot_core.assert_called_once_with(topic_name="dt/car-01/alerts", qos=QOS.AT_LEAST_ONCE, payload=b'{"v":1}',
                                                       payload_format=PayloadFormat.UTF8, content_type="application/json")


def test_sdk_errors_become_transport_errors(client):
    client.publish_to_iot_core.side_effect = UnauthorizedError(message="not allowed")
    with pytest.raises(TransportError, match="publish to IoT Core topic dt/x failed: UnauthorizedError") as err:
        IpcCloudTransport(client).publish("dt/x", b"{}")
    assert isinstance(err.value.__cause__, UnauthorizedError)


def test_in_memory_local_transport_delivers_copies_through_json():
    bus = InMemoryLocalTransport()
    got = []
    bus.subscribe("a", got.append)
    original = alert(2.0)
    bus.publish("a", original)
    bus.publish("b", END)
    got[0]["detail"]["x"] = 3
    assert original.detail == {}
    assert got == [{**alert(2.0).encode(), "detail": {"x": 3}}]
    assert bus.messages("a") == [alert(2.0).encode()]
    assert bus.messages("b") == [END.encode()]


def test_outbox_writes_one_line_per_publish(tmp_path):
    outbox = OutboxFile(tmp_path / "out" / "cloud.jsonl")
    outbox.publish("dt/car/aggregates", b'{"v":1,"kind":"aggregates"}')
    outbox.publish("dt/car/alerts", b'{"v":1,"kind":"alert"}')
    outbox.close()
    lines = [json.loads(line) for line in (tmp_path / "out" / "cloud.jsonl").read_text().splitlines()]
    assert lines == [
        {"topic": "dt/car/aggregates", "payload": {"v": 1, "kind": "aggregates"}},
        {"topic": "dt/car/alerts", "payload": {"v": 1, "kind": "alert"}},
    ]
    assert outbox.messages == 2 and outbox.bytes == len('{"v":1,"kind":"aggregates"}') + len('{"v":1,"kind":"alert"}')

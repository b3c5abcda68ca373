"""Transports: how a component hands messages to other components and to the cloud.

Two small Protocols, each with an in-memory implementation used by tests and the local runtime,
and a real one that is handed its SDK client:

* ``LocalTransport`` -- Greengrass local pub/sub: a typed message in (``messages``), its wire
  form (compact JSON, or the binary layout of a ``signals`` or ``batch`` message) on the wire;
  subscribers get the JSON object, or the bytes of a binary payload (as a Lambda's ``event``).
  Real: ``IpcLocalTransport`` over ``GreengrassCoreIPCClientV2.publish_to_topic``.
* ``CloudTransport`` -- AWS IoT Core, payload bytes. Real: ``IpcCloudTransport`` over
  ``GreengrassCoreIPCClientV2.publish_to_iot_core`` at QoS 1; ``OutboxFile`` writes what would be
  sent to a JSON-lines file, for replays on a laptop. The one fake, ``InMemoryCloudTransport``,
  records what it accepts and may wrap a function that decides each publish (as httpx's
  ``MockTransport``): ``InMemoryCloudTransport(lambda topic, payload: ...)``.

Errors of the SDK are mapped to ``TransportError`` in exactly one place (``_sdk_errors``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .. import wire
from .errors import TransportError
from .messages import Message, decode, delivered, dumps, is_binary


def content_type(payload: bytes) -> tuple[bool, str]:
    """(is UTF-8 text, MQTT 5 content type) of a cloud payload: an aggregates payload is binary
    (``telemetry.wire``), everything else JSON. Set on each publish so a consumer (an IoT rule, a
    subscriber) knows which decoder to use without looking inside."""
    if wire.is_payload(payload):
        return False, wire.CONTENT_TYPE
    return True, "application/json"

# What a subscriber receives: a JSON object, or the bytes of a binary payload (a signals batch).
Handler = Callable[[Any], None]
CloudHandler = Callable[[str, bytes], None]


@runtime_checkable
class LocalTransport(Protocol):
    def publish(self, topic: str, message: Message) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class CloudTransport(Protocol):
    def publish(self, topic: str, payload: bytes) -> None: ...

    def close(self) -> None: ...


class InMemoryLocalTransport:
    """Synchronous local pub/sub in one process; keeps every message for inspection.

    Messages go through their wire form on the way, as over IPC (JSON, or the binary columns of
    a signals batch, handed to subscribers as bytes as Greengrass hands them to a function whose
    ``inputPayloadEncodingType`` is binary), so a message that would not survive the real
    transport fails here too, and subscribers never share objects with the publisher.
    ``published`` keeps each message's JSON form, for inspection.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, message: Message) -> None:
        wire = message.to_bytes()
        binary = is_binary(wire)
        with self._lock:
            self.published.append((topic, decode(wire).encode() if binary else json.loads(wire)))
            handlers = list(self._handlers.get(topic, ()))
        for handler in handlers:
            handler(wire if binary else json.loads(wire))

    def subscribe(self, topic: str, handler: Handler) -> None:
        with self._lock:
            self._handlers.setdefault(topic, []).append(handler)

    def messages(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [message for t, message in self.published if t == topic]

    def close(self) -> None:
        pass


class InMemoryCloudTransport:
    """Keeps what would have gone to IoT Core: (topic, payload bytes) pairs. With a ``handler``,
    each publish is first handed to it, and what it raises (``TransportError``,
    ``RejectedError``, ``DroppedError``) is what the publish raises: a broker in one function."""

    def __init__(self, handler: CloudHandler | None = None) -> None:
        self.handler = handler
        self.sent: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes) -> None:
        if self.handler is not None:
            self.handler(topic, payload)
        with self._lock:
            self.sent.append((topic, bytes(payload)))

    def messages(self, topic: str | None = None) -> list[dict[str, Any]]:
        """The JSON publishes (alerts, gaps, health bundles), parsed; aggregates payloads are binary:
        see ``payloads``."""
        with self._lock:
            return [json.loads(p) for t, p in self.sent if (topic is None or t == topic) and not wire.is_payload(p)]

    def delivered(self) -> list[dict[str, Any]]:
        """Every message the publishes delivered, in order (``messages.delivered``)."""
        with self._lock:
            return [m for _, p in self.sent for m in delivered(p)]

    def payloads(self, topic: str | None = None) -> list[wire.Payload]:
        """The aggregates payloads, decoded."""
        with self._lock:
            return [wire.decode(p) for t, p in self.sent if (topic is None or t == topic) and wire.is_payload(p)]

    def close(self) -> None:
        pass


class OutboxFile:
    """The cloud of a replay: one line per publish, ``{"topic": ..., "payload": <message>}`` for
    JSON, ``{"topic": ..., "content_type": ..., "payload_base64": "..."}`` for a binary
    aggregates payload (``./build.sh decode-cloud`` reads both)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self.messages = 0
        self.bytes = 0
        self.bytes_by_topic: dict[str, int] = {}

    def publish(self, topic: str, payload: bytes) -> None:
        text, ctype = content_type(payload)
        if text:
            line = f'{{"topic":{json.dumps(topic)},"payload":{payload.decode()}}}\n'
        else:
            line = (f'{{"topic":{json.dumps(topic)},"content_type":"{ctype}",'
                    f'"payload_base64":"{base64.b64encode(payload).decode()}"}}\n')
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.messages += 1
            self.bytes += len(payload)
            self.bytes_by_topic[topic] = self.bytes_by_topic.get(topic, 0) + len(payload)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


@contextlib.contextmanager
def _sdk_errors(action: str) -> Iterator[None]:
    try:
        yield
    except TransportError:
        raise
    except Exception as exc:  # the SDK raises its own tree and plain OSErrors
        raise TransportError(f"{action} failed: {type(exc).__name__}: {exc}") from exc


class IpcLocalTransport:
    """Local pub/sub over Greengrass IPC (``GreengrassCoreIPCClientV2``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def publish(self, topic: str, message: Message) -> None:
        from awsiot.greengrasscoreipc.model import BinaryMessage, JsonMessage, PublishMessage

        if message.binary:
            publish = PublishMessage(binary_message=BinaryMessage(message=message.to_bytes()))
        else:
            body = message.encode()
            dumps(body)  # NaN and infinities are refused here, not sent as invalid JSON by the SDK
            publish = PublishMessage(json_message=JsonMessage(message=body))
        with _sdk_errors(f"publish to local topic {topic}"):
            self._client.publish_to_topic(topic=topic, publish_message=publish)

    def subscribe(self, topic: str, handler: Handler) -> None:
        def on_event(event: Any) -> None:
            if event.json_message is not None:
                handler(event.json_message.message)
            elif event.binary_message is not None:
                handler(bytes(event.binary_message.message))  # the handler's decoder reads either form

        with _sdk_errors(f"subscribe to local topic {topic}"):
            self._client.subscribe_to_topic(topic=topic, on_stream_event=on_event)

    def close(self) -> None:
        pass  # the IPC client is shared; whoever created it closes it


class IpcCloudTransport:
    """AWS IoT Core through the nucleus's MQTT connection (``publish_to_iot_core``, QoS 1)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def publish(self, topic: str, payload: bytes) -> None:
        from awsiot.greengrasscoreipc.model import QOS, PayloadFormat

        with _sdk_errors(f"publish to IoT Core topic {topic}"):
            text, ctype = content_type(payload)
            self._client.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=payload,
                                             payload_format=PayloadFormat.UTF8 if text else PayloadFormat.BYTES, content_type=ctype)

    def close(self) -> None:
        pass  # the IPC client is shared; whoever created it closes it


class LegacyCloudTransport:
    """The V1 way: ``greengrasssdk.client("iot-data").publish``, routed to AWS IoT Core by the
    LegacySubscriptionRouter component (its subscriptions come with the deployment). For teams
    moving V1 Lambda functions over; IPC is the default. ``queueFullPolicy`` is AllOrException:
    a full queue is an error the uploader retries, not a silent drop."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def publish(self, topic: str, payload: bytes) -> None:
        with _sdk_errors(f"publish to {topic} (legacy)"):
            self._client.publish(topic=topic, queueFullPolicy="AllOrException", payload=payload)

    def close(self) -> None:
        pass

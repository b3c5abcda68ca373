"""A direct MQTT 5 connection to AWS IoT Core (or any broker) with mutual TLS, through the AWS
IoT Device SDK's ``mqtt5_client_builder`` and awscrt: the cloud transport for running outside
Greengrass, and the one the broker tests use against a real mosquitto.

Unlike ``publish_to_iot_core`` over Greengrass IPC, which returns once the nucleus has queued the
message in its own (in-memory) spooler, a publish here returns only when the broker's PUBACK has
arrived, so the uploader deletes a message from its spool only once the broker has it.

The client does not queue publishes while disconnected (``FAIL_ALL_ON_DISCONNECT``): the
uploader's spool is the one queue, and a publish while offline fails at once and is retried
from there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import DroppedError, RejectedError, TransportError

LOG = logging.getLogger(__name__)


class Mqtt5CloudTransport:
    def __init__(
        self,
        *,
        endpoint: str,
        port: int = 8883,
        cert: str,
        key: str,
        ca: str | None = None,
        client_id: str,
        timeout: float = 10.0,
        connect_wait: float = 2.0,
    ) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self._mqtt5 = mqtt5
        self.timeout = timeout
        self.connect_wait = connect_wait
        self.connected = threading.Event()
        self._stopped = threading.Event()
        self.max_packet = 268_435_455  # MQTT's own limit, until the broker says less
        self.disconnects = 0
        kwargs: dict[str, Any] = {
            "endpoint": endpoint,
            "port": port,
            "cert_filepath": cert,
            "pri_key_filepath": key,
            "client_id": client_id,
            "offline_queue_behavior": mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            # Brokers hang up on a client whose publish they refuse (mosquitto does, and IoT Core
            # may): reconnect fast, and count a connection that lasted a second as a good one.
            "min_reconnect_delay_ms": 200,
            "max_reconnect_delay_ms": 5000,
            "min_connected_time_to_reset_reconnect_delay_ms": 1000,
            "connack_timeout_ms": int(timeout * 1000),
            "ack_timeout_sec": max(1, int(timeout)),
            "on_lifecycle_connection_success": self._connected,
            "on_lifecycle_disconnection": self._disconnected,
            "on_lifecycle_stopped": lambda data: self._stopped.set(),
        }
        if ca:
            kwargs["ca_filepath"] = ca
        try:
            self.client = mqtt5_client_builder.mtls_from_path(**kwargs)
            self.client.start()
        except Exception as exc:
            raise TransportError(f"cannot start MQTT client for {endpoint}:{port}: {exc}") from exc

    def _connected(self, data: Any) -> None:
        settings = getattr(data, "negotiated_settings", None)
        self.max_packet = getattr(settings, "maximum_packet_size_to_server", None) or self.max_packet
        self.connected.set()

    def _disconnected(self, data: Any) -> None:
        self.connected.clear()
        self.disconnects += 1
        LOG.info("MQTT disconnected: %s", getattr(data, "exception", data))

    def publish(self, topic: str, payload: bytes) -> None:
        mqtt5 = self._mqtt5
        if not self.connected.wait(self.connect_wait):
            raise TransportError("not connected to the broker")
        if len(payload) + len(topic) + 16 > self.max_packet:
            raise RejectedError(f"publish to {topic}: {len(payload)} bytes is over the broker's maximum packet size {self.max_packet}")
        from .transport import content_type

        text, ctype = content_type(payload)
        pfi = mqtt5.PayloadFormatIndicator.AWS_MQTT5_PFI_UTF8 if text else mqtt5.PayloadFormatIndicator.AWS_MQTT5_PFI_BYTES
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE,
                                     payload_format_indicator=pfi, content_type=ctype)
        try:
            result = self.client.publish(packet).result(self.timeout)
        except Exception as exc:  # disconnected mid-flight, timed out, client stopping
            error = DroppedError if not self.connected.is_set() else TransportError
            raise error(f"publish to {topic} failed: {type(exc).__name__}: {exc}") from exc
        code = result.puback.reason_code if result.puback is not None else mqtt5.PubackReasonCode.SUCCESS
        if code in (mqtt5.PubackReasonCode.SUCCESS, mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS):
            return
        reason = f"broker refused publish to {topic}: {code.name} ({int(code)})"
        if code in (
            mqtt5.PubackReasonCode.NOT_AUTHORIZED,
            mqtt5.PubackReasonCode.TOPIC_NAME_INVALID,
            mqtt5.PubackReasonCode.PAYLOAD_FORMAT_INVALID,
        ):
            raise RejectedError(reason)
        raise TransportError(reason)  # quota exceeded, unspecified: worth another try later

    def close(self) -> None:
        self.client.stop()
        self._stopped.wait(self.timeout)

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
import socket
import ssl
import threading
import time
from typing import Any

from .errors import DroppedError, RejectedError, TransportError
from .transport import content_type

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
        self.endpoint, self.port, self._files = endpoint, port, (cert, key, ca)
        self.failure: str | None = None  # why the last connection attempt failed (None: connected)
        self._reported: set[str] = set()  # failures said once already (since the last connection)
        self._diagnosing = threading.Lock()
        self._closing = threading.Event()
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
            "on_lifecycle_connection_failure": self._failed,
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
        self._watcher = threading.Thread(target=self._watch, name="mqtt-connect-watch", daemon=True)
        self._watcher.start()

    def _connected(self, data: Any) -> None:
        settings = getattr(data, "negotiated_settings", None)
        self.max_packet = getattr(settings, "maximum_packet_size_to_server", None) or self.max_packet
        self.failure = None
        self.connected.set()

    def _failed(self, data: Any) -> None:
        """A connection attempt failed (the client tries again by itself): say why (``diagnose``)."""
        exc = getattr(data, "exception", None)
        code = getattr(exc, "name", None) or type(exc).__name__
        self.failure = self.failure or code
        self._diagnose_soon(code)

    def _watch(self) -> None:
        """Not connected within ``connect_wait``: say why at once. (The client's own failure
        comes late: its TLS library delays a failed handshake by 10 to 30 s, by design.)"""
        deadline = time.monotonic() + self.connect_wait
        while not self.connected.is_set() and not self._closing.is_set() and time.monotonic() < deadline:
            self.connected.wait(0.05)
        if not self.connected.is_set() and not self._closing.is_set():
            self.diagnose(None)

    def _diagnose_soon(self, code: str | None) -> None:
        threading.Thread(target=self.diagnose, args=(code,), name="mqtt-diagnosis", daemon=True).start()

    def diagnose(self, code: str | None) -> str | None:
        """Why the connection fails, said once per reason on the log (stderr for the uploader
        command): a TLS handshake of our own with the same files names the cause (an untrusted
        CA, a certificate not valid for the host name, a client certificate the broker refuses),
        which the client's own error (``AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE``) does not."""
        if not self._diagnosing.acquire(blocking=False):
            return None
        try:
            cause = tls_diagnosis(self.endpoint, self.port, *self._files, timeout=min(5.0, self.timeout))
            if cause is None and code is None:
                return None  # the TLS layer is fine: the client will say what else is wrong
            reason = cause or code or "unknown"
            if reason not in self._reported:
                self._reported.add(reason)
                LOG.error("cannot connect to %s:%d: %s", self.endpoint, self.port, reason)
            if not self.connected.is_set():
                self.failure = reason
            return reason
        finally:
            self._diagnosing.release()

    def _disconnected(self, data: Any) -> None:
        self.connected.clear()
        self.disconnects += 1
        LOG.info("MQTT disconnected: %s", getattr(data, "exception", data))

    def publish(self, topic: str, payload: bytes) -> None:
        mqtt5 = self._mqtt5
        if not self.connected.wait(self.connect_wait):
            raise TransportError("not connected to the broker" + (f": {self.failure}" if self.failure else ""))
        if len(payload) + len(topic) + 16 > self.max_packet:
            raise RejectedError(f"publish to {topic}: {len(payload)} bytes is over the broker's maximum packet size {self.max_packet}")
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
        self._closing.set()
        self._watcher.join(self.timeout)
        if self._diagnosing.acquire(timeout=self.timeout):  # a diagnosis under way says its piece first
            self._diagnosing.release()
        if not self.connected.is_set() and not self._reported:  # closed before the watch said why
            self.diagnose(None)
        self.client.stop()
        # Connected, it may have publishes to finish; never connected (a TLS handshake that
        # fails, which its TLS library drags out for 10 to 30 s), nothing is lost by not waiting.
        self._stopped.wait(self.timeout if self.connected.is_set() else 1.0)


def tls_diagnosis(endpoint: str, port: int, cert: str, key: str, ca: str | None, *, timeout: float = 5.0) -> str | None:
    """Why a mutual-TLS connection to ``endpoint:port`` with these files fails, in words (None:
    it does not fail at the TLS layer). Python's ssl names what the MQTT client's error does not:
    the server's certificate not trusted, not valid for the host name, our certificate refused."""
    try:
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use the certificate files: {exc}"
    try:
        with socket.create_connection((endpoint, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=endpoint) as tls:
                # With TLS 1.3 a server refuses a client certificate after the handshake: read.
                tls.settimeout(min(timeout, 1.0))
                try:
                    tls.recv(1)
                except TimeoutError:
                    return None
                return None
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or str(exc)
        if exc.verify_code in (18, 19, 20, 21, 2):  # self-signed, unknown issuer: not the CA we trust
            return f"the broker's certificate is not trusted (CA {ca or 'of the system'}): {why}"
        return f"the broker's certificate is refused: {why}"
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper():
            return f"the broker refused this device's certificate ({cert}): {reason}"
        return f"TLS failed: {reason}"
    except OSError as exc:
        return f"cannot reach {endpoint}:{port}: {exc.strerror or exc}"

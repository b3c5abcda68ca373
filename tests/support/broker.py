"""A real MQTT broker for the tests: Debian's mosquitto, on a free port of 127.0.0.1, with TLS
and client certificates made here by openssl, standing in for AWS IoT Core. And an observer: an
MQTT 5 client (awscrt, as the uploader uses) with a persistent session, which collects what
reaches the broker even across a broker restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from telemetry import wire

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)



def require_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.fail(
            "mosquitto is not installed: the uploader's tests need a real MQTT broker. "
            "./build.sh test installs it when run as root; otherwise: sudo apt-get install mosquitto",
            pytrace=False,
        )
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (needed to make the test certificates): apt-get install openssl",
                    pytrace=False)
    return MOSQUITTO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and client certificates, all made here."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("uploader", []), ("observer", []), ("stranger", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", *ext, cwd=folder)
    for path in folder.iterdir():
        path.chmod(0o644)  # mosquitto drops privileges: it must be able to read its key
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


class Broker:
    """mosquitto with TLS, client certificates required, the certificate's CN as user name, an
    ACL, and persistence (so a restart keeps the observer's session and queued messages)."""

    def __init__(self, folder: Path, *, max_packet: int = 0) -> None:
        self.binary = require_mosquitto()
        self.folder = folder
        self.certs = make_certificates(folder / "certs")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        (folder / "data").mkdir(exist_ok=True)
        (folder / "acl").write_text(
            "user uploader\ntopic write dt/#\ntopic deny dt/locked/alerts\n"
            "user observer\ntopic read dt/#\n"
        )
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.certs['ca_crt']}",
            f"certfile {self.certs['server_crt']}",
            f"keyfile {self.certs['server_key']}",
            "require_certificate true",
            "use_identity_as_username true",
            f"acl_file {folder / 'acl'}",
            "persistence true",
            f"persistence_location {folder / 'data'}/",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"log_dest file {folder / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if max_packet:
            lines.append(f"max_packet_size {max_packet}")
        if os.geteuid() == 0:
            lines.append("user root")
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.folder / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()} "
                                   f"{(self.folder / 'mosquitto.log').read_text() if (self.folder / 'mosquitto.log').exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # mosquitto saves its persistence on SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def client_files(self, name: str) -> dict[str, str]:
        return {"cert": str(self.certs[f"{name}_crt"]), "key": str(self.certs[f"{name}_key"]), "ca": str(self.certs["ca_crt"])}


class Observer:
    """Collects every publish under dt/# with a persistent session (clean start off)."""

    def __init__(self, broker: Broker) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        files = broker.client_files("observer")
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint="127.0.0.1", port=broker.port, cert_filepath=files["cert"], pri_key_filepath=files["key"],
            ca_filepath=files["ca"], client_id="observer",
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            connect_options=mqtt5.ConnectPacket(client_id="observer", session_expiry_interval_sec=3600),
            min_reconnect_delay_ms=100, max_reconnect_delay_ms=500,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=lambda data: self._connected.set(),
            on_lifecycle_disconnection=lambda data: self._connected.clear(),
            on_lifecycle_stopped=lambda data: self._stopped.set(),
        )
        self.client.start()
        if not self._connected.wait(10):
            raise RuntimeError("observer could not connect to mosquitto")
        self.client.subscribe(mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter="dt/#", qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(10)

    def _on_publish(self, data) -> None:
        with self._lock:
            self.received.append((data.publish_packet.topic, bytes(data.publish_packet.payload)))

    def payloads(self, suffix: str | None = None) -> list[dict]:
        """The JSON payloads received (bundles, health); see ``aggregates`` for the binary ones."""
        with self._lock:
            return [json.loads(p) for t, p in self.received if (suffix is None or t.endswith(suffix)) and not wire.is_payload(p)]

    def aggregates(self) -> list[wire.Payload]:
        """The binary aggregates payloads received, decoded."""
        with self._lock:
            return [wire.decode(p) for _, p in self.received if wire.is_payload(p)]

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self.client.stop()
        self._stopped.wait(10)

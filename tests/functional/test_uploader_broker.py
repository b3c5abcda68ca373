"""The uploader against a real MQTT broker (mosquitto on 127.0.0.1, TLS, client certificates):
nothing lost through a broker outage, through twenty SIGKILLs of the uploader process, and a
spool too small for the outage evicts exactly the oldest aggregates and says so."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.broker import Broker, Observer
from telemetry.edge.clock import SystemClock
from telemetry.edge.components import Services, UploaderComponent
from telemetry.edge.config import parse_config
from telemetry.edge.messages import decode, unpack
from telemetry.edge.mqtt import Mqtt5CloudTransport
from telemetry.edge.transport import InMemoryLocalTransport
from telemetry.tools.replay import messages_from_outbox, replay

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
FAST = {"retry_min_seconds": 0.1, "retry_max_seconds": 0.5, "poll_seconds": 0.05, "health_seconds": 3600.0}


@pytest.fixture(scope="module")
def produced(tmp_path_factory) -> list[dict]:
    """What the aggregator and detector produce on the sample drive, in order."""
    out = tmp_path_factory.mktemp("produced")
    replay(SAMPLE / "drive.log", out_dir=out, config=SAMPLE / "vehicle.toml")
    return messages_from_outbox(out / "cloud.jsonl")


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def observer(broker):
    o = Observer(broker)
    yield o
    o.close()


def config(tmp_path: Path, **uploader):
    raw = parse_config({"vehicle": "sunrace-01", "uploader": {**FAST, **uploader}})
    return raw


def message_key(message: dict) -> str:
    return decode(message).key


def identity(message: dict) -> str:
    return json.dumps(message, sort_keys=True)


def received_items(observer: Observer) -> list[dict]:
    """(id, message) items of every bundle the broker delivered, and each window of every
    aggregates payload (as a ``window`` message, with its payload's id)."""
    items = [item for payload in observer.payloads() if payload.get("kind") == "bundle" for item in unpack(payload)]
    return items + [{"id": f"{p.vehicle}:aggregates:{p.key}", "message": m}
                    for p in observer.aggregates() for m in p.window_messages()]


class InProcessUploader:
    def __init__(self, broker: Broker, cfg, spool_path: Path) -> None:
        self.cloud = Mqtt5CloudTransport(endpoint="127.0.0.1", port=broker.port, client_id="uploader",
                                         connect_wait=2.0, timeout=5.0, **broker.client_files("uploader"))
        services = Services(InMemoryLocalTransport(), self.cloud, cfg, SystemClock(), {"TELEMETRY_SPOOL": str(spool_path)})
        self.component = UploaderComponent(services)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.component.run, args=(self.stop,))
        self.thread.start()

    def wait_drained(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.component.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.component.pending() == 0

    def close(self) -> None:
        self.stop.set()
        self.component.core.sender.wake.set()
        self.thread.join(20)
        self.component.close()
        self.cloud.close()


def test_broker_stopped_mid_replay_and_restarted_loses_nothing(tmp_path, broker, observer, produced):
    up = InProcessUploader(broker, config(tmp_path), tmp_path / "spool.db")
    try:
        third = len(produced) // 3
        for message in produced[:third]:
            up.component.handle(message)
        assert observer.wait_for(lambda: len(received_items(observer)) >= third // 2, 30)
        broker.stop()  # the car drives into a tunnel
        for message in produced[third: 2 * third]:
            up.component.handle(message)
        # Longer than the transport waits for a reconnect (connect_wait, 2 s): a shorter outage is
        # absorbed by that wait and never becomes a retry, which made this test flaky.
        time.sleep(3.0)
        assert up.component.pending() > 0  # held in the spool while the broker is away
        broker.start()
        for message in produced[2 * third:]:
            up.component.handle(message)
        assert up.wait_drained(), "the spool did not empty after the broker came back"
        assert observer.wait_for(lambda: {identity(i["message"]) for i in received_items(observer)}
                                 >= {identity(m) for m in produced}, 30)
        stats = up.component.totals()
    finally:
        up.close()
    items = received_items(observer)
    assert {identity(i["message"]) for i in items} == {identity(m) for m in produced}
    assert stats["retries"] > 0, "the outage was not noticed"
    assert stats["set_aside"] == 0 and stats["evicted_messages"] == 0


def test_twenty_sigkills_of_the_uploader_lose_nothing(tmp_path, broker, observer, produced):
    """The uploader runs as its own process, fed one message at a time; a message counts as
    handed over once its "ok" line is read (the handler has returned). The process is killed with
    SIGKILL at twenty random moments and restarted; what was not acknowledged is sent again."""
    cfg_path = tmp_path / "vehicle.toml"
    cfg_path.write_text('vehicle = "sunrace-01"\n[uploader]\n' + "".join(f"{k} = {v}\n" for k, v in FAST.items()))
    files = broker.client_files("uploader")
    cmd = [sys.executable, "-m", "telemetry", "uploader", "--config", str(cfg_path), "--spool", str(tmp_path / "spool.db"),
           "--endpoint", "127.0.0.1", "--port", str(broker.port), "--cert", files["cert"], "--key", files["key"],
           "--ca", files["ca"], "--client-id", "uploader", "--drain", "60"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    rng = random.Random(20261126)
    kill_at = sorted(rng.sample(range(1, len(produced)), 20))
    proc = start()
    kills = 0
    try:
        i = 0
        while i < len(produced):
            if kills < len(kill_at) and i >= kill_at[kills]:
                # sometimes right after handing a message over, before its "ok": it may or may not be in
                if rng.random() < 0.5:
                    proc.stdin.write(json.dumps(produced[i]) + "\n")
                    proc.stdin.flush()
                time.sleep(rng.uniform(0.0, 0.3))  # and at a random moment of the sender's work
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = start()
                continue  # message i was not acknowledged: send it (again)
            proc.stdin.write(json.dumps(produced[i]) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line.startswith("ok"), f"uploader said {line!r}"
            i += 1
        proc.stdin.close()
        report = json.loads(proc.stdout.readlines()[-1])
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert kills == 20
    assert report["left_in_spool"] == 0
    assert observer.wait_for(lambda: {identity(i["message"]) for i in received_items(observer)}
                             >= {identity(m) for m in produced}, 30)
    items = received_items(observer)
    # every aggregate and alert arrived at least once...
    assert {identity(i["message"]) for i in items} == {identity(m) for m in produced}
    # ...duplicates carry the same id, and there are exactly as many ids as messages produced
    ids_of: dict[str, set[str]] = {}
    for item in items:
        ids_of.setdefault(identity(item["message"]), set()).add(item["id"])
    assert all(len(ids) == 1 for ids in ids_of.values())
    assert len({item["id"] for item in items}) == len(produced)
    print(f"{len(items)} delivered for {len(produced)} produced ({len(items) - len(produced)} duplicates)")


def test_spool_cap_smaller_than_the_outage_evicts_the_oldest_aggregates_and_says_so(tmp_path, broker, observer, produced):
    aggregates = [m for m in produced if m["kind"] == "window"]
    alerts = [m for m in produced if m["kind"] == "alert"]
    cap = 60_000  # the drive's windows, each its own aggregates payload here, need about 350 kB
    broker.stop()  # offline from the start
    up = InProcessUploader(broker, config(tmp_path, spool_max_bytes=cap), tmp_path / "spool.db")
    try:
        for message in produced:
            up.component.handle(message)
        _, size = up.component.core.spool.depth()
        assert size <= cap + 5_000  # the cap holds (plus the small gap records)
        ledger = up.component.core.spool.ledger()
        assert ledger, "nothing was evicted"
        broker.start()
        assert up.wait_drained(), "the spool did not empty"
        stats = up.component.totals()
    finally:
        up.close()
    assert observer.wait_for(lambda: {identity(a) for a in alerts} <= {identity(i["message"]) for i in received_items(observer)}, 30)
    items = received_items(observer)
    got = [i["message"] for i in items if i["message"]["kind"] == "window"]
    gaps = [i["message"] for i in items if i["message"]["kind"] == "gap"]
    # every alert arrived
    assert {identity(a) for a in alerts} <= {identity(i["message"]) for i in items}
    # the aggregates that arrived are the newest ones: exactly the oldest were evicted
    kept = {message_key(m) for m in got}
    lost = [m for m in aggregates if message_key(m) not in kept]
    assert lost and lost == aggregates[: len(lost)], "evicted aggregates are not the oldest ones"
    # the ledger, uploaded as gap messages, says exactly that
    assert sum(g["evicted"]["count"] for g in gaps) == len(lost) == stats["evicted_aggregates"]
    assert all(g["evicted"]["kind"] == "aggregates" for g in gaps)
    assert min(g["evicted"]["t_first"] for g in gaps) == min(m["window"]["start"] for m in lost)
    assert max(g["evicted"]["t_last"] for g in gaps) == max(m["window"]["start"] for m in lost)
    assert len(gaps) == len(ledger)


def test_a_message_the_broker_rejects_for_good_is_set_aside_and_the_rest_go_on(tmp_path, broker, observer, produced):
    # the broker's ACL lets this device publish under dt/ but not to dt/locked/alerts
    cfg = parse_config({"vehicle": "sunrace-01", "uploader": {**FAST, "topic_prefix": "dt/locked"}})
    subset = [m for m in produced if m["kind"] == "window"][:20] + [m for m in produced if m["kind"] == "alert"][:5]
    up = InProcessUploader(broker, cfg, tmp_path / "spool.db")
    try:
        for message in subset:
            up.component.handle(message)
        assert up.wait_drained()
        stats = up.component.totals()
        aside = up.component.core.spool.set_aside_count()
    finally:
        up.close()
    assert stats["set_aside"] == aside == 5  # each alert tried, refused (NOT_AUTHORIZED), set aside once
    assert observer.wait_for(lambda: len(received_items(observer)) >= 20, 20)
    assert sorted(message_key(i["message"]) for i in received_items(observer)) == sorted(
        message_key(m) for m in subset if m["kind"] == "window")

"""Issue 11, store and forward: acknowledged means stored. Each test is a fault reproduced on the
spool and the uploader as a user would meet it (a full disk, a spool file of an earlier version,
a damaged file, a long outage under a small cap, a message too large for any publish), with the
real SQLite file and its real limits (``PRAGMA max_page_count`` makes SQLite answer
``database or disk is full`` exactly as a full file system does)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from telemetry.edge import messages
from telemetry.edge.clock import ManualClock, SystemClock
from telemetry.edge.config import parse_config
from telemetry.edge.errors import RejectedError, TransportError
from telemetry.edge.messages import decode
from telemetry.edge.spool import SpoolError, SqliteSpool
from telemetry.edge.transport import InMemoryCloudTransport
from telemetry.edge.uploader import Uploader
from telemetry.tools.replay import messages_from_outbox, replay

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
VEHICLE = "sunrace-01"
IOT_CORE_MAX_PAYLOAD = 131_072  # AWS IoT Core: 128 KB per MQTT payload
FAST = {"retry_min_seconds": 0.02, "retry_max_seconds": 0.1, "poll_seconds": 0.02, "health_seconds": 3600.0,
        "budget_bytes_per_hour": 0, "max_bytes_per_second": 10**9, "max_publishes_per_second": 10_000}


@pytest.fixture(scope="module")
def produced(tmp_path_factory) -> list[dict]:
    """What the aggregator and detector make of the sample drive (the demo's messages), in order."""
    out = tmp_path_factory.mktemp("produced")
    replay(SAMPLE / "drive.log", out_dir=out, config=SAMPLE / "vehicle.toml")
    return messages_from_outbox(out / "cloud.jsonl")


class Link:
    """A broker in one function: down (every publish fails) or up, refusing what ``refuse`` says."""

    def __init__(self) -> None:
        self.up = False
        self.refuse = lambda topic, payload: False

    def __call__(self, topic: str, payload: bytes) -> None:
        if not self.up:
            raise TransportError("not connected to the broker")
        if self.refuse(topic, payload):
            raise RejectedError(f"broker refused publish to {topic}: NOT_AUTHORIZED (135)")


def make_uploader(spool, cloud, clock, **uploader) -> Uploader:
    cfg = parse_config({"vehicle": VEHICLE, "uploader": {**FAST, **uploader}})
    return Uploader(spool, cloud, cfg.uploader, vehicle=VEHICLE, prefix=f"dt/{VEHICLE}", clock=clock)


def delivered(cloud: InMemoryCloudTransport) -> list[dict]:
    """Every message that reached the cloud: the items of the JSON bundles, and the windows of
    the aggregates payloads (binary), as ``window`` messages."""
    return cloud.delivered()


def drain(up: Uploader, clock: ManualClock, steps: int = 5000) -> None:
    for _ in range(steps):
        if not up.pending():
            return
        wait = up.sender.step()
        if wait > 0:
            clock.advance(wait)
    raise AssertionError(f"{up.pending()} messages still in the spool")


def keys_in(spool: SqliteSpool, kind: str) -> list[str]:
    return [e.key for e in spool.take(max_bytes=10**12, max_count=10**6, kinds=(kind,)) if e.key]


# -- 1. a full disk ----------------------------------------------------------------------------------------------

def test_a_full_disk_never_acknowledges_what_it_did_not_store_and_keeps_every_alert(tmp_path, produced):
    """Before: all 305 answered ok, 230 lost, 8 of them alerts (``lost_spool_full``)."""
    clock = ManualClock(1_782_900_000.0)
    spool = SqliteSpool(tmp_path / "spool.db", clock=clock)
    spool._db.execute("PRAGMA max_page_count = 30")  # 120 kB: about half of the drive's 225 kB of payloads
    link = Link()
    cloud = InMemoryCloudTransport(link)
    up = make_uploader(spool, cloud, clock)
    accepted: list[dict] = []
    refused = 0
    for m in produced:
        try:
            up.accept(decode(m))
        except SpoolError as exc:  # the handler fails: the caller knows it was not stored
            assert exc.full
            refused += 1
        else:
            accepted.append(m)
    alerts = [m for m in produced if m["kind"] == "alert"]
    assert refused == 0  # there was always an older aggregate to make room with
    # every alert is kept; aggregates made room, and gap messages say which
    assert sorted(keys_in(spool, "alert")) == sorted(decode(m).key for m in alerts)
    gaps = spool.ledger()
    assert gaps and all(g.reason == "disk full" and g.of == "aggregates" for g in gaps)
    kept = keys_in(spool, "aggregates")
    assert len(kept) + sum(g.count for g in gaps) == len(accepted) - len(alerts)
    # the newest aggregates are the ones kept
    newest = [decode(m).key for m in produced if m["kind"] == "window"][-len(kept):]
    assert kept == newest
    # the link comes back: everything that was acknowledged and not evicted arrives, and the gaps
    link.up = True
    drain(up, clock)
    got = delivered(cloud)
    assert sorted(decode(m).key for m in got if m["kind"] == "alert") == sorted(decode(m).key for m in alerts)
    assert [decode(m).key for m in got if m["kind"] == "window"] == newest
    assert [decode(m) for m in got if m["kind"] == "gap"] == gaps
    spool.close()


def test_a_message_larger_than_the_whole_disk_fails_the_handler_and_is_counted(tmp_path, produced):
    spool = SqliteSpool(tmp_path / "spool.db")
    spool._db.execute("PRAGMA max_page_count = 30")
    up = make_uploader(spool, InMemoryCloudTransport(Link()), ManualClock(0.0))
    alert = decode(next(m for m in produced if m["kind"] == "alert"))
    huge = replace(alert, id="huge", detail={"pad": "x" * 200_000})
    with pytest.raises(SpoolError, match="database or disk is full"):
        up.accept(huge)
    assert up.totals()["not_stored"] == 1 and up.totals()["not_stored_alert"] == 1 and up.pending() == 0
    up.accept(alert)  # the spool still works
    assert up.pending() == 1
    spool.close()


def wait_until(predicate, seconds: float = 20.0) -> bool:
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        done.wait(0.01)
    return predicate()


def test_the_sender_survives_a_full_disk_and_resumes_when_space_returns(tmp_path, produced):
    """Before: the sender thread died on the spool's error and never sent again."""
    spool = SqliteSpool(tmp_path / "spool.db")
    link = Link()
    cloud = InMemoryCloudTransport(link)
    up = make_uploader(spool, cloud, SystemClock())
    for i in range(20):  # payloads of about 10 kB: setting one aside needs pages of its own
        up.accept(decode(incompressible_aggregate(400, 100 + i)))
    # The file full to its last page (filled outside the queue, so sending frees nothing)...
    spool._db.execute(f"PRAGMA max_page_count = {spool._db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        for i in range(100_000):
            spool._db.execute("INSERT INTO meta VALUES (?, ?)", (f"filler-{i}", "x" * 500))
    # ...and the broker refuses aggregates for good: setting one aside needs pages the disk has not.
    link.up = True
    link.refuse = lambda topic, payload: topic.endswith("/aggregates")
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            up.run(stop)
        except BaseException as exc:  # the thread dying is the defect
            errors.append(exc)

    sender = threading.Thread(target=run, name="sender")
    sender.start()
    try:
        assert wait_until(lambda: up.sender.stats["spool_errors"] >= 3 or bool(errors))
        assert sender.is_alive() and not errors, errors
        assert up.pending() == 20  # nothing lost meanwhile
        spool._db.execute("PRAGMA max_page_count = 1000000")  # space returns
        assert wait_until(lambda: up.sender.stats["set_aside"] >= 1 or bool(errors))
        link.refuse = lambda topic, payload: False
        assert wait_until(lambda: up.pending() == 0 or bool(errors))
        assert sender.is_alive() and not errors, errors
    finally:
        stop.set()
        up.sender.wake.set()
        sender.join(10)
    assert not errors, errors
    assert len(delivered(cloud)) + spool.set_aside_count() == 20
    spool.close()


# -- 2. a spool file of an earlier version ---------------------------------------------------------------------

# The three layouts of schema 0 (no PRAGMA user_version), from the history of spool.py:
# 770fdad (no message keys, a ledger of counts), 3474b57 (keys), d3ee7b5 (the ledger keeps the gap).
SPOOL_770 = """CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, priority INTEGER NOT NULL,
    t REAL NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL)"""
SPOOL_3474 = SPOOL_770.replace("payload BLOB NOT NULL)", "key TEXT UNIQUE, payload BLOB NOT NULL)")
COMMON = ["CREATE INDEX spool_order ON spool (priority, id)",
          "CREATE TABLE aside (id INTEGER PRIMARY KEY, kind TEXT, t REAL, reason TEXT, at REAL, payload BLOB)",
          "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)"]
LEDGER_OLD = ("CREATE TABLE ledger (at REAL, kind TEXT, count INTEGER, bytes INTEGER, t_first REAL, t_last REAL,"
              " first_id INTEGER, last_id INTEGER)")
LEDGER_NEW = LEDGER_OLD[:-1] + ", vehicle TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT 'spool full')"
LAYOUTS = {
    "770fdad": [SPOOL_770, *COMMON, LEDGER_OLD],
    "3474b57": [SPOOL_3474, *COMMON, LEDGER_OLD],
    "d3ee7b5": [SPOOL_3474, *COMMON, LEDGER_NEW],
}


def old_spool(path: Path, layout: str, rows: list[dict]) -> None:
    db = sqlite3.connect(path)
    for statement in LAYOUTS[layout]:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('instance', 'cafe0001')")
    keyed = layout != "770fdad"
    for m in rows:
        kind = "aggregates" if m["kind"] == "window" else m["kind"]  # what earlier versions called a window
        payload = json.dumps({**m, "kind": kind}).encode()
        values = [kind, messages.KINDS[kind].priority, decode(m).event_time, 1.0, len(payload)]
        if keyed:
            db.execute("INSERT INTO spool (kind, priority, t, created, size, key, payload) VALUES (?,?,?,?,?,?,?)",
                       (*values, decode(m).key, payload))
        else:
            db.execute("INSERT INTO spool (kind, priority, t, created, size, payload) VALUES (?,?,?,?,?,?)",
                       (*values, payload))
    db.execute("INSERT INTO ledger (at, kind, count, bytes, t_first, t_last, first_id, last_id)"
               " VALUES (5.0, 'aggregates', 2, 200, 1.0, 2.0, 1, 2)")
    db.commit()
    db.close()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_spool_of_each_earlier_version_is_migrated_and_nothing_in_it_is_lost(tmp_path, produced, layout):
    """Before (770fdad's layout): every put failed (``no column named key``), was answered ok and
    counted lost, and the sender died on ``no such column: key``."""
    path = tmp_path / "spool.db"
    waiting = produced[:3]
    old_spool(path, layout, waiting)
    clock = ManualClock(1_782_900_000.0)
    spool = SqliteSpool(path, clock=clock)
    assert spool.instance == "cafe0001" and spool.depth()[0] == 3
    cloud = InMemoryCloudTransport(Link())
    cloud.handler.up = True
    up = make_uploader(spool, cloud, clock)
    for m in produced[3:10]:
        up.accept(decode(m))
    up.accept(decode(produced[5]))  # a redelivery: stored once (the key's UNIQUE index)
    assert up.pending() == 10
    drain(up, clock)
    assert sorted(json.dumps(m, sort_keys=True) for m in delivered(cloud)) == \
        sorted(json.dumps(m, sort_keys=True) for m in produced[:10])
    assert spool.ledger()[0] == messages.Gap("", 5.0, "aggregates", 2, 200, 1.0, 2.0, 1, 2)
    assert spool._db.execute("PRAGMA user_version").fetchone()[0] == SqliteSpool.SCHEMA_VERSION  # the version the file now has
    spool.close()
    again = SqliteSpool(path)  # and opens again as it is
    assert again.depth() == (0, 0)
    again.close()


def test_a_spool_written_by_a_newer_version_is_kept_aside_not_misread(tmp_path):
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, something_else BLOB)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    original = path.read_bytes()
    spool = SqliteSpool(path)
    [damage] = spool.damaged
    assert "schema 99 is newer" in damage.reason and Path(damage.kept).read_bytes() == original
    spool.put("alert", 1.0, b"{}", "x")
    spool.close()


# -- 3. a damaged spool file ------------------------------------------------------------------------------------

def not_a_database(path: Path) -> None:
    path.write_bytes(b"this is no SQLite file, whatever wrote it" * 100)


def malformed(path: Path) -> None:
    """A real spool with messages, a few of its pages overwritten in the middle."""
    spool = SqliteSpool(path)
    for i in range(200):
        spool.put("aggregates", float(i), json.dumps({"i": i, "pad": "y" * 900}).encode(), f"a{i}")
    spool.close()
    data = bytearray(path.read_bytes())
    rng = random.Random(11)
    for page in (3, 7, 20):
        for _ in range(200):
            data[page * 4096 + rng.randrange(4096)] = rng.randrange(256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [not_a_database, malformed])
def test_a_damaged_spool_is_kept_aside_a_fresh_one_starts_and_the_loss_is_reported(tmp_path, damage):
    """Before: ``file is not a database`` / ``database disk image is malformed``, exit 2, for good."""
    path = tmp_path / "spool.db"
    damage(path)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    original = path.read_bytes()
    clock = ManualClock(1_782_900_000.0)
    cloud = InMemoryCloudTransport(Link())
    spool = SqliteSpool(path, clock=clock)
    up = make_uploader(spool, cloud, clock)
    [found] = spool.damaged
    assert Path(found.kept).read_bytes() == original  # kept, byte for byte, never deleted
    assert found.kept.startswith(f"{path}.damaged-")
    # a gap message says what may have been lost, at once
    [gap] = spool.ledger()
    assert gap.of == "*" and "spool damaged" in gap.reason and found.kept in gap.reason
    assert gap.bytes > 0
    # and the health message reports it
    health = up.sender.health().encode()
    assert health["spool"]["damaged"] == [{"at": found.at, "kept": found.kept, "reason": found.reason}]
    # the fresh spool works: the gap and new messages go out
    cloud.handler.up = True
    up.accept(messages.Alert(vehicle=VEHICLE, id="a", state="raised", rule="r", rule_kind="limit", signal="s",
                             severity="warning", t=1.0, value=1.0))
    drain(up, clock)
    kinds = [m["kind"] for m in delivered(cloud)]
    assert sorted(kinds) == ["alert", "gap"]
    spool.close()
    # opened again: nothing more to report
    again = SqliteSpool(path)
    assert again.damaged == [] and again.depth() == (0, 0)
    again.close()


def test_damage_found_while_running_moves_the_file_aside_too(tmp_path):
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path)
    spool.put("alert", 1.0, b"{}", "x")
    # the file is destroyed under the running spool (a failing SD card)
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        f.write(b"garbage" * 600)
    spool._db.execute("PRAGMA cache_size = 0")
    with pytest.raises(SpoolError, match="moved aside"):
        spool.take(max_bytes=10**6, max_count=10)
    assert len(spool.damaged) == 1 and Path(spool.damaged[0].kept).exists()
    assert spool.put("alert", 2.0, b"{}", "y") is not None  # a fresh spool took its place
    [gap] = spool.evict(10**9, VEHICLE)
    assert "spool damaged" in gap.reason
    spool.close()


# -- 4. gap records and the cap ---------------------------------------------------------------------------------

def test_a_long_outage_under_a_small_cap_keeps_one_gap_and_the_newest_aggregates(tmp_path, produced):
    """Before (spool_max_bytes = 40000): 23 alerts and 272 gap rows, 71 kB (1.8x the cap), and 0
    of 288 aggregates delivered, the newest included."""
    clock = ManualClock(1_782_900_000.0)
    spool = SqliteSpool(tmp_path / "spool.db", clock=clock)
    link = Link()
    cloud = InMemoryCloudTransport(link)
    cap = 40_000
    up = make_uploader(spool, cloud, clock, spool_max_bytes=cap, compress=False)
    for i, m in enumerate(produced):
        up.accept(decode(m))
        if i % 25 == 0:
            up.sender.step()  # the broker is down: every attempt fails
        assert spool.depth()[1] <= cap
    by_kind = spool.depth_by_kind()
    assert by_kind["gap"] == 1  # one run of evictions, one gap message
    assert spool.depth()[1] <= cap
    [gap] = spool.ledger()
    aggregates = [decode(m).key for m in produced if m["kind"] == "window"]
    kept = keys_in(spool, "aggregates")
    assert kept and kept == aggregates[-len(kept):]  # the newest survive
    assert gap.count == len(aggregates) - len(kept) and gap.first_id == 1
    link.up = True
    drain(up, clock)
    got = delivered(cloud)
    assert [decode(m).key for m in got if m["kind"] == "window"] == kept
    assert [decode(m) for m in got if m["kind"] == "gap"] == [gap]
    spool.close()


def test_evictions_with_a_delivery_in_between_are_two_gaps(tmp_path):
    clock = ManualClock(100.0)
    spool = SqliteSpool(tmp_path / "spool.db", clock=clock)
    for i in range(20):
        spool.put("aggregates", float(i), b"y" * 1000, f"a{i}")
    spool.evict(15_000, VEHICLE)
    spool.evict(12_000, VEHICLE)  # the same run: the gap grows
    assert spool.depth_by_kind()["gap"] == 1 and len(spool.ledger()) == 1
    sent = spool.take(max_bytes=2000, max_count=2, kinds=("aggregates",))
    spool.ack([e.id for e in sent])  # two delivered: the next eviction is another hole
    spool.evict(6_000, VEHICLE)
    first, second = spool.ledger()
    assert first.last_id < sent[0].id and second.first_id > sent[-1].id
    assert spool.depth()[1] <= 6_000
    spool.close()


# -- 5. every publish under IoT Core's limit -------------------------------------------------------------------

def incompressible_aggregate(n_signals: int, seed: int) -> dict:
    rng = random.Random(seed)
    return {"v": 1, "kind": "window", "vehicle": VEHICLE, "seq": 9000 + seed, "group": "default",
            "window": {"start": 1_782_800_000.0 + seed, "end": 1_782_800_001.0 + seed},
            "signals": {f"Huge_{rng.getrandbits(64):x}.S{i}": {"count": 1, "min": rng.random(), "max": rng.random(),
                                                                 "mean": rng.random(), "last": rng.random()}
                        for i in range(n_signals)}}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("limit", [100_000, IOT_CORE_MAX_PAYLOAD])
def test_no_publish_is_over_the_limit_and_a_message_too_large_is_set_aside(tmp_path, produced, compress, limit):
    """Before: a 391 kB publish went out to a broker advertising no limit, and publishes of
    101,247 B against max_payload_bytes = 100000 with compression off."""
    clock = ManualClock(1_782_900_000.0)
    spool = SqliteSpool(tmp_path / "spool.db", clock=clock)
    link = Link()
    link.up = True
    cloud = InMemoryCloudTransport(link)  # advertises no limit
    up = make_uploader(spool, cloud, clock, compress=compress, max_payload_bytes=limit)
    huge = incompressible_aggregate(12000, 1)  # an aggregates payload of about 250 kB
    for m in [*produced[:60], huge, *produced[60:120]]:
        up.accept(decode(m))
    drain(up, clock)
    sizes = [len(payload) for _, payload in cloud.sent]
    assert max(sizes) <= limit <= IOT_CORE_MAX_PAYLOAD
    assert len(delivered(cloud)) == 120  # every other message went
    assert spool.set_aside_count() == 1
    [(reason,)] = spool._db.execute("SELECT reason FROM aside").fetchall()
    assert reason.startswith("too large to publish") and str(limit) in reason
    spool.close()

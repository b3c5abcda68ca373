"""The uploader's durable spool: what has been accepted but not yet confirmed by the cloud.

A message is written (and committed) before the uploader's handler returns, and deleted only
after the cloud transport has confirmed it. Past ``max_bytes`` the oldest messages of the most
expendable kind are evicted (aggregates; alerts only when allowed), and every eviction becomes a
``gap`` message in the spool itself, so the cloud learns exactly which hole is a hole.

``SqliteSpool`` is the device's: SQLite in WAL mode with ``synchronous=FULL``. The car's core
device loses power when the driver switches off; with NORMAL, WAL survives a process crash but
the last transactions before a power cut can be lost, and an accepted alert is a promise. FULL
costs one fsync per commit, and commits are one per message at a few messages a second.
``MemorySpool`` has the same behaviour without the disk, for tests and quick replays.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import TelemetryError

LOG = logging.getLogger(__name__)

# Lower sends first. Gaps tell the cloud about lost data: they go with the alerts.
PRIORITY = {"alert": 0, "gap": 0, "aggregates": 2}
EXPENDABLE = ("aggregates",)  # evicted first; alerts only with evict_alerts


class SpoolError(TelemetryError):
    """The spool cannot store a message (a full disk, a broken file)."""


@dataclass(frozen=True)
class Entry:
    id: int  # the spool's sequence number: unique on this device, kept across restarts
    kind: str
    priority: int
    t: float  # event time of the message (window start, alert time)
    payload: bytes
    attempts: int = 0
    key: str | None = None  # the message's own identity (see uploader.message_key)


@dataclass(frozen=True)
class Gap:
    kind: str
    count: int
    bytes: int
    t_first: float
    t_last: float
    first_id: int
    last_id: int

    def message(self, vehicle: str, at: float) -> dict:
        return {"v": 1, "kind": "gap", "vehicle": vehicle, "evicted_at": at, "reason": "spool full",
                "evicted": {"kind": self.kind, "count": self.count, "bytes": self.bytes,
                            "t_first": self.t_first, "t_last": self.t_last,
                            "first_id": self.first_id, "last_id": self.last_id}}


class Spool(Protocol):
    def put(self, kind: str, t: float, payload: bytes, key: str | None = None) -> int | None: ...

    def take(self, *, max_bytes: int, max_count: int, kinds: Iterable[str] | None = None) -> list[Entry]: ...

    def ack(self, ids: Iterable[int]) -> None: ...

    def retry(self, ids: Iterable[int]) -> None: ...

    def set_aside(self, ids: Iterable[int], reason: str) -> None: ...

    def depth(self) -> tuple[int, int]: ...

    def oldest(self) -> float | None: ...

    def evict(self, max_bytes: int, vehicle: str, evict_alerts: bool = False) -> list[Gap]: ...

    def close(self) -> None: ...


class SqliteSpool:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        t REAL NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        key TEXT UNIQUE,
        payload BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS spool_order ON spool (priority, id);
    CREATE TABLE IF NOT EXISTS aside (
        id INTEGER PRIMARY KEY, kind TEXT, t REAL, reason TEXT, at REAL, payload BLOB
    );
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE IF NOT EXISTS ledger (
        at REAL, kind TEXT, count INTEGER, bytes INTEGER, t_first REAL, t_last REAL, first_id INTEGER, last_id INTEGER
    );
    """

    def __init__(self, path: str | Path, *, clock: object | None = None) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._time = getattr(clock, "time", time.time)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(self.SCHEMA)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
            # A random name for this spool, so ids stay unique if the file is ever recreated.
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', lower(hex(randomblob(4))))")
            self.instance = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot open spool: {exc}") from exc
        self._count, self._bytes = int(row[0]), int(row[1])

    def put(self, kind: str, t: float, payload: bytes, key: str | None = None) -> int | None:
        """Store a message (committed when this returns). With a ``key``, storing the same
        message again while it waits is a no-op (None): a redelivery is not a second message."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO spool (kind, priority, t, created, size, key, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (kind, PRIORITY.get(kind, 1), t, self._time(), len(payload), key, payload),
                )
            except sqlite3.Error as exc:  # "database or disk is full", I/O errors
                raise SpoolError(f"{self.path}: cannot store a {kind} message: {exc}") from exc
            if cur.rowcount == 0:
                return None
            self._count += 1
            self._bytes += len(payload)
            return int(cur.lastrowid)

    def take(self, *, max_bytes: int, max_count: int, kinds: Iterable[str] | None = None) -> list[Entry]:
        """The next messages to send: highest priority first, oldest first, all of one kind,
        up to ``max_bytes`` in all (at least one message)."""
        with self._lock:
            first = self._db.execute(
                "SELECT kind FROM spool" + self._kind_filter(kinds) + " ORDER BY priority, id LIMIT 1"
            ).fetchone()
            if first is None:
                return []
            rows = self._db.execute(
                "SELECT id, kind, priority, t, payload, attempts, key FROM spool WHERE kind = ? ORDER BY id LIMIT ?",
                (first[0], max_count),
            )
            out: list[Entry] = []
            total = 0
            for row in rows:
                size = len(row[4])
                if out and total + size > max_bytes:
                    break
                out.append(Entry(int(row[0]), row[1], int(row[2]), float(row[3]), bytes(row[4]), int(row[5]), row[6]))
                total += size
            return out

    @staticmethod
    def _kind_filter(kinds: Iterable[str] | None) -> str:
        if kinds is None:
            return ""
        names = ",".join(f"'{k}'" for k in kinds if k.isidentifier())
        return f" WHERE kind IN ({names})"

    def ack(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            marks = ",".join("?" * len(ids))
            row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE id IN ({marks})", ids).fetchone()
            self._db.execute(f"DELETE FROM spool WHERE id IN ({marks})", ids)
            self._count -= int(row[0])
            self._bytes -= int(row[1])

    def retry(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self._lock:
            self._db.execute(f"UPDATE spool SET attempts = attempts + 1 WHERE id IN ({','.join('?' * len(ids))})", ids)

    def set_aside(self, ids: Iterable[int], reason: str) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            marks = ",".join("?" * len(ids))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    f"INSERT OR REPLACE INTO aside SELECT id, kind, t, ?, ?, payload FROM spool WHERE id IN ({marks})",
                    [reason, self._time(), *ids],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        self.ack(ids)

    def set_aside_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM aside").fetchone()[0])

    def depth(self) -> tuple[int, int]:
        with self._lock:
            return self._count, self._bytes

    def depth_by_kind(self) -> dict[str, int]:
        with self._lock:
            return {k: int(n) for k, n in self._db.execute("SELECT kind, COUNT(*) FROM spool GROUP BY kind")}

    def oldest(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(created) FROM spool").fetchone()
            return None if row[0] is None else float(row[0])

    def evict(self, max_bytes: int, vehicle: str, evict_alerts: bool = False) -> list[Gap]:
        """Delete the oldest expendable messages until the spool is under ``max_bytes``; record
        each run of evicted messages as a gap message (in the spool) and in the ledger."""
        gaps: list[Gap] = []
        with self._lock:
            if self._bytes <= max_bytes:
                return gaps
            for kind in (*EXPENDABLE, *(("alert",) if evict_alerts else ())):
                if self._bytes <= max_bytes:
                    break
                excess = self._bytes - max_bytes
                rows = self._db.execute("SELECT id, t, size FROM spool WHERE kind = ? ORDER BY id", (kind,))
                chosen, freed = [], 0
                for row in rows:
                    if freed >= excess:
                        break
                    chosen.append(row)
                    freed += int(row[2])
                if not chosen:
                    continue
                ids = [int(r[0]) for r in chosen]
                gap = Gap(kind, len(ids), freed, min(float(r[1]) for r in chosen), max(float(r[1]) for r in chosen),
                          ids[0], ids[-1])
                now = self._time()
                payload = json.dumps(gap.message(vehicle, now), separators=(",", ":")).encode()
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    marks = ",".join("?" * len(ids))
                    self._db.execute(f"DELETE FROM spool WHERE id IN ({marks})", ids)
                    self._db.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     (now, kind, gap.count, gap.bytes, gap.t_first, gap.t_last, gap.first_id, gap.last_id))
                    self._db.execute(
                        "INSERT INTO spool (kind, priority, t, created, size, key, payload) VALUES ('gap', ?, ?, ?, ?, ?, ?)",
                        (PRIORITY["gap"], gap.t_first, now, len(payload), f"{self.instance}/{gap.first_id}-{gap.last_id}", payload),
                    )
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise SpoolError(f"{self.path}: eviction failed: {exc}") from exc
                self._count += 1 - len(ids)
                self._bytes += len(payload) - freed
                gaps.append(gap)
                LOG.warning("spool over %d bytes: evicted %d %s messages (%s)", max_bytes, gap.count, kind, gap)
        return gaps

    def ledger(self) -> list[Gap]:
        with self._lock:
            rows = self._db.execute("SELECT kind, count, bytes, t_first, t_last, first_id, last_id FROM ledger ORDER BY rowid")
            return [Gap(r[0], int(r[1]), int(r[2]), float(r[3]), float(r[4]), int(r[5]), int(r[6])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemorySpool(SqliteSpool):
    """The same spool in memory: nothing survives the process (tests, quick replays)."""

    def __init__(self, *, clock: object | None = None) -> None:
        super().__init__(":memory:", clock=clock)

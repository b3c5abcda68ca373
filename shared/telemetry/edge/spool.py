"""The uploader's durable spool: what has been accepted but not yet confirmed by the cloud.

A message is written (and committed) before the uploader's handler returns, and deleted only
after the cloud transport has confirmed it. Past ``max_bytes`` the oldest messages of the most
expendable kind are evicted (aggregates; alerts only when allowed), and every eviction becomes a
``gap`` message in the spool itself, so the cloud learns exactly which hole is a hole.

``Spool`` owns all of that logic (priority, de-duplication, size accounting, eviction into gaps)
over a few small storage primitives, as Powertools' ``BasePersistenceLayer`` does; a backend
only stores, selects and deletes rows. ``SqliteSpool`` is the device's: SQLite in WAL mode with
``synchronous=FULL``. The car's core device loses power when the driver switches off; with
NORMAL, WAL survives a process crash but the last transactions before a power cut can be lost,
and an accepted alert is a promise. FULL costs one fsync per commit, and commits are one per
handler call (one message, or a batch with ``put_many``) at a few a second. The sender's delete
of what the cloud has confirmed (``ack``) alone commits with NORMAL: the next put's fsync carries
it to the disk, and a power cut before that only sends those messages again, under the ids the
cloud de-duplicates by (as a cut between the publish and the delete does anyway). ``MemorySpool`` keeps the rows in dicts, for tests, the
local runtime and quick replays: nothing survives the process.

Acknowledged means stored: ``put`` returns only once its rows are committed, and raises a
``SpoolError`` otherwise (``full`` when the disk or the file's limit is reached, so the caller can
make room with ``make_room`` and try again). Evictions in a row of one kind (nothing of the spool
sent in between) make one gap message, rewritten as the run grows, and its bytes count toward the
cap. The file carries its schema version (``PRAGMA user_version``) and is migrated from every
earlier layout; a file SQLite finds damaged (not a database, malformed) is moved aside, kept, and a
fresh spool started, and the next ``evict`` reports what it may have held as a gap.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from . import messages
from .clock import Clock
from .errors import TelemetryError

LOG = logging.getLogger(__name__)

EXPENDABLE = (messages.AGGREGATES,)  # evicted first; alerts only with evict_alerts


class SpoolError(TelemetryError):
    """The spool cannot store a message (a full disk, a broken file). ``full``: the disk (or the
    file's size limit) is full, and deleting something would make room."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


@dataclass(frozen=True)
class Damage:
    """A spool file found damaged and moved aside (kept at ``kept``), and what it may have held
    (counted from the damaged file where SQLite could still read it; 0 where it could not)."""

    at: float
    path: str
    kept: str
    reason: str
    count: int = 0
    bytes: int = 0
    t_first: float | None = None
    t_last: float | None = None
    first_id: int = 0
    last_id: int = 0


@dataclass(frozen=True)
class Entry:
    id: int  # the spool's sequence number: unique on this device, kept across restarts
    kind: str
    priority: int
    t: float  # event time of the message (window start, alert time)
    payload: bytes
    attempts: int = 0
    key: str | None = None  # the message's own identity (its kind's ``key``: Aggregates.key, Alert.key)


def priority(kind: str) -> int:
    """Spool order of a kind, from its message class: lower is sent first."""
    cls = messages.KINDS.get(kind)
    if cls is None or cls.priority is None:
        raise ValueError(f"{kind!r} messages are not spooled")
    return cls.priority


class Spool(ABC):
    """The spool's behaviour, over the storage primitives a backend implements.

    Every public method holds one lock, so the handler and the sender loop may share a spool.
    Writes happen inside ``_transaction``: all of them or none, and the backend's own errors
    come out of it as ``SpoolError``. Counts and bytes are kept here, updated only once a write
    has committed, so ``depth()`` (asked on every ``put``) costs no query.
    """

    instance: str  # a random name for this spool: gap keys stay unique if its store is recreated

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._lock = threading.RLock()
        self._time = clock.time if clock is not None else time.time
        self.instance = self._instance(secrets.token_hex(4))
        self._count, self._bytes = self._counts()
        self.stats: Counter[str] = Counter()  # evicted_messages, evicted_<kind>, gaps, damaged
        self.damaged: list[Damage] = []  # every damaged file this spool moved aside
        self._unreported: list[Damage] = []  # ... not yet reported by a gap message
        # The gap message of the eviction run going on, per kind: (its row id, its ledger row,
        # the gap). The next eviction of the kind extends it, until anything is sent.
        self._runs: dict[str, tuple[int, int, messages.Gap]] = {}

    # -- the behaviour ---------------------------------------------------------------------------
    def put(self, kind: str, t: float, payload: bytes, key: str | None = None) -> int | None:
        """Store a message (committed when this returns). With a ``key``, storing the same
        message again while it waits is a no-op (None): a redelivery is not a second message."""
        return self.put_many([(kind, t, payload, key)])[0]

    def put_many(self, items: Iterable[tuple[str, float, bytes, str | None]]) -> list[int | None]:
        """Store several messages, (kind, t, payload, key) each, in one transaction: all of
        them are committed when this returns, or (a ``SpoolError``) none is. One commit, so one
        fsync, for all of them. Per message, its id, or None for a duplicate key (of a message
        already waiting, or of one earlier in ``items``)."""
        rows = [(kind, priority(kind), float(t), payload, key) for kind, t, payload, key in items]
        if not rows:
            return []
        with self._lock:
            created = self._time()
            with self._transaction(f"cannot store a {rows[0][0]} message" if len(rows) == 1
                                   else f"cannot store {len(rows)} messages"):
                ids = [self._insert(kind, order, t, created, payload, key) for kind, order, t, payload, key in rows]
            for id_, row in zip(ids, rows):
                if id_ is not None:
                    self._count += 1
                    self._bytes += len(row[3])
            return ids

    def take(self, *, max_bytes: int, max_count: int, kinds: Iterable[str] | None = None,
             alone: Iterable[str] = ()) -> list[Entry]:
        """The next messages to send: highest priority first, oldest first, all of one kind,
        up to ``max_bytes`` in all (at least one message), of ``kinds`` only if given; one only
        if that kind is one of ``alone`` (sent one per publish: no more is read)."""
        wanted = None if kinds is None else tuple(kinds)
        with self._lock, self._reading("cannot read the spool"):
            kind = self._first_kind(wanted)
            if kind is None or max_count <= 0:
                return []
            if kind in alone:
                max_count = 1
            out: list[Entry] = []
            total = 0
            for entry in self._select(kind, max_count):
                if out and total + len(entry.payload) > max_bytes:
                    break
                out.append(entry)
                total += len(entry.payload)
            return out

    def ack(self, ids: Iterable[int]) -> None:
        """The cloud has these messages: forget them."""
        ids = list(dict.fromkeys(ids))
        if ids:
            with self._lock:
                # Not flushed to the disk on its own (``_transaction``'s ``durable``): lost only
                # to a power cut before the next put's flush, and then those messages go again,
                # under the ids the cloud de-duplicates by, as after a cut before this delete.
                with self._transaction("cannot delete sent messages", durable=False):
                    removed = self._delete(ids)
                self._forget(removed)
                self._runs.clear()  # something went: the next eviction is a new hole

    def retry(self, ids: Iterable[int]) -> None:
        """These messages failed to go: count one more attempt and keep them where they are."""
        ids = list(dict.fromkeys(ids))
        if ids:
            with self._lock, self._transaction("cannot count an attempt"):
                self._bump_attempts(ids)

    def set_aside(self, ids: Iterable[int], reason: str) -> None:
        """The broker refuses these messages for good: keep them, with why, out of the queue."""
        ids = list(dict.fromkeys(ids))
        if ids:
            with self._lock:
                with self._transaction("cannot set messages aside"):
                    self._copy_aside(ids, reason, self._time())
                    removed = self._delete(ids)
                self._forget(removed)
                self._runs.clear()

    def set_aside_count(self) -> int:
        with self._lock, self._reading("cannot read the spool"):
            return self._aside_count()

    def depth(self) -> tuple[int, int]:
        """Messages waiting, and their bytes."""
        with self._lock:
            return self._count, self._bytes

    def depth_by_kind(self) -> dict[str, int]:
        with self._lock, self._reading("cannot read the spool"):
            return self._kind_counts()

    def oldest(self) -> float | None:
        """When the longest-waiting message was stored (None: the spool is empty)."""
        with self._lock, self._reading("cannot read the spool"):
            return self._oldest_created()

    def evict(self, max_bytes: int, vehicle: str, evict_alerts: bool = False) -> list[messages.Gap]:
        """Delete the oldest expendable messages until the spool, gap messages included, is
        under ``max_bytes``; record each run of evicted messages as one gap message (in the
        spool) and in the ledger. Also reports a damaged file moved aside (``Damage``) as a gap.
        Returns the gap messages made or extended, as they now stand."""
        gaps: list[messages.Gap] = self._report_damage(vehicle) if self._unreported else []
        if self._bytes <= max_bytes:
            # Nothing to do, and nothing to wait for: most calls (one per accepted message) end
            # here without the lock, which a commit of the sender may hold. Reading the count
            # unlocked is safe: only a put adds bytes, and it calls this after it has added them.
            return gaps
        made: dict[str, messages.Gap] = {}
        with self._lock:
            for kind in (*EXPENDABLE, *((messages.ALERT,) if evict_alerts else ())):
                while self._bytes > max_bytes:
                    gap = self._evict_oldest(kind, self._bytes - max_bytes, vehicle, "spool full")
                    if gap is None:
                        break
                    made[kind] = gap
                    LOG.warning("spool over %d bytes: evicted %s messages (%s)", max_bytes, kind, gap)
        return gaps + list(made.values())

    def make_room(self, nbytes: int, vehicle: str, evict_alerts: bool = False) -> messages.Gap | None:
        """The disk is full: evict the oldest expendable messages (aggregates; alerts only with
        ``evict_alerts``) of at least ``nbytes``, recorded as a gap (reason ``disk full``). None
        if there is nothing left to evict."""
        with self._lock:
            for kind in (*EXPENDABLE, *((messages.ALERT,) if evict_alerts else ())):
                gap = self._evict_oldest(kind, nbytes + self.GAP_ROOM, vehicle, "disk full")
                if gap is not None:
                    LOG.warning("disk full: evicted %s messages to make room (%s)", kind, gap)
                    return gap
        return None

    GAP_ROOM = 16384  # a gap message's bytes and whole pages more: small rows free space scattered over pages

    def _evict_oldest(self, kind: str, excess: int, vehicle: str, reason: str) -> messages.Gap | None:
        """Evict the oldest messages of ``kind`` of at least ``excess`` bytes in one transaction
        with the gap message: a new one, or the run's gap extended (rewritten under a new id and
        key: the first is then never sent). Its bytes count: ``evict`` goes on while over."""
        run = self._runs.get(kind)
        if run is not None and run[2].reason != reason:
            run = None
        need = excess
        chosen: list[Entry] = []
        freed = 0
        with self._reading("cannot read the spool"):
            for entry in self._select(kind, None):
                if freed >= need:
                    break
                chosen.append(entry)
                freed += len(entry.payload)
        if not chosen:
            return None
        now = self._time()
        gap = messages.Gap(vehicle=vehicle, evicted_at=now, of=kind, count=len(chosen), bytes=freed,
                           t_first=min(e.t for e in chosen), t_last=max(e.t for e in chosen),
                           first_id=chosen[0].id, last_id=chosen[-1].id, reason=reason)
        if run is not None:
            old = run[2]
            gap = replace(gap, count=old.count + gap.count, bytes=old.bytes + gap.bytes,
                          t_first=min(old.t_first, gap.t_first), t_last=max(old.t_last, gap.t_last),
                          first_id=old.first_id)
        payload = gap.to_bytes()
        # One transaction: the messages go, and the gap that says so comes, or neither.
        with self._transaction("eviction failed"):
            removed = self._delete([e.id for e in chosen] + ([run[0]] if run is not None else []))
            if run is None:
                ledger_row = self._ledger_add(gap)
            else:
                ledger_row = run[1]
                self._ledger_set(ledger_row, gap)
            gap_id = self._insert(gap.kind, priority(gap.kind), gap.t_first, now, payload,
                                  f"{self.instance}/{gap.first_id}-{gap.last_id}")
        self._forget(removed)
        self._count += 1
        self._bytes += len(payload)
        self._runs[kind] = (int(gap_id or 0), ledger_row, gap)
        self.stats["evicted_messages"] += len(chosen)
        self.stats[f"evicted_{kind}"] += len(chosen)
        self.stats["gaps"] += run is None
        return gap

    def _report_damage(self, vehicle: str) -> list[messages.Gap]:
        """A gap message for each damaged file moved aside and not reported yet."""
        gaps = []
        with self._lock:
            while self._unreported:
                d = self._unreported[0]
                t_first = d.t_first if d.t_first is not None else d.at
                gap = messages.Gap(vehicle=vehicle, evicted_at=d.at, of="*", count=d.count, bytes=d.bytes,
                                   t_first=t_first, t_last=d.t_last if d.t_last is not None else t_first,
                                   first_id=d.first_id, last_id=d.last_id,
                                   reason=f"spool damaged ({d.reason}); the file is kept at {d.kept}")
                payload = gap.to_bytes()
                with self._transaction("cannot record a damaged spool"):
                    self._ledger_add(gap)
                    self._insert(gap.kind, priority(gap.kind), gap.t_first, d.at, payload,
                                 f"{self.instance}/damaged-{int(d.at * 1000)}")
                self._count += 1
                self._bytes += len(payload)
                self._unreported.pop(0)
                gaps.append(gap)
        return gaps

    def ledger(self) -> list[messages.Gap]:
        """Every eviction this spool has made, oldest first."""
        with self._lock, self._reading("cannot read the ledger"):
            return self._ledger_rows()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _forget(self, removed: tuple[int, int]) -> None:
        self._count -= removed[0]
        self._bytes -= removed[1]

    # -- the primitives a backend implements -----------------------------------------------------
    @abstractmethod
    def _instance(self, new: str) -> str:
        """The spool's kept name, or ``new`` (kept from now on) if it has none."""

    @abstractmethod
    def _counts(self) -> tuple[int, int]:
        """Messages stored and their bytes (once, at open)."""

    @abstractmethod
    def _transaction(self, what: str, durable: bool = True) -> AbstractContextManager[None]:
        """The writes inside happen all or none; a failure is a ``SpoolError`` saying ``what``.
        ``durable``: on the disk when this returns; without it, once the next durable one is
        (a crash of the process loses neither; a power cut may lose the writes in between)."""

    def _reading(self, what: str) -> AbstractContextManager[None]:
        """Reads inside: the backend's errors come out as a ``SpoolError`` saying ``what``."""
        return nullcontext()

    @abstractmethod
    def _insert(self, kind: str, priority: int, t: float, created: float, payload: bytes, key: str | None) -> int | None:
        """Store a row; its id is greater than every id this spool has given before. None (and
        nothing stored) if a row with this key is stored already."""

    @abstractmethod
    def _first_kind(self, kinds: tuple[str, ...] | None) -> str | None:
        """The kind of the first row by (priority, id), among ``kinds`` if given."""

    @abstractmethod
    def _select(self, kind: str, limit: int | None) -> Iterator[Entry]:
        """Rows of one kind by id, lazily (the caller stops when it has enough)."""

    @abstractmethod
    def _delete(self, ids: list[int]) -> tuple[int, int]:
        """Delete rows (unknown ids are ignored); how many went and their bytes."""

    @abstractmethod
    def _bump_attempts(self, ids: list[int]) -> None: ...

    @abstractmethod
    def _copy_aside(self, ids: list[int], reason: str, at: float) -> None: ...

    @abstractmethod
    def _aside_count(self) -> int: ...

    @abstractmethod
    def _kind_counts(self) -> dict[str, int]: ...

    @abstractmethod
    def _oldest_created(self) -> float | None: ...

    @abstractmethod
    def _ledger_add(self, gap: messages.Gap) -> int:
        """Add a gap to the ledger; a handle for ``_ledger_set``."""

    @abstractmethod
    def _ledger_set(self, row: int, gap: messages.Gap) -> None:
        """Replace a ledger row (a gap extended), in its place."""

    @abstractmethod
    def _ledger_rows(self) -> list[messages.Gap]: ...

    @abstractmethod
    def _close(self) -> None: ...


class _Damaged(Exception):
    """The spool file cannot be used as it is: moved aside and started afresh."""


def _damaged(exc: sqlite3.Error) -> bool:
    """SQLite says the file is not a database, or a damaged one."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _full(exc: sqlite3.Error) -> bool:
    """SQLite says the disk (or the file's ``max_page_count``) is full."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


class SqliteSpool(Spool):
    """The device's spool: one SQLite file, committed with an fsync before ``put`` returns."""

    # PRAGMA user_version; 0: a file of before there was one (three layouts); 1: aggregates
    # stored as JSON, one message per window; 2: aggregates stored as binary payloads (TLMA)
    SCHEMA_VERSION = 2
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
        at REAL, kind TEXT, count INTEGER, bytes INTEGER, t_first REAL, t_last REAL, first_id INTEGER, last_id INTEGER,
        vehicle TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT 'spool full'
    )
    """
    # Columns the earlier layouts of schema 0 lack: a spool of before messages had keys (its
    # UNIQUE comes as an index: ALTER TABLE cannot add it), a ledger of before it kept the whole
    # gap message.
    ADDED = (("spool", "key", "TEXT"), ("ledger", "vehicle", "TEXT NOT NULL DEFAULT ''"),
             ("ledger", "reason", "TEXT NOT NULL DEFAULT 'spool full'"))
    LEDGER = "vehicle, at, kind, count, bytes, t_first, t_last, first_id, last_id, reason"  # messages.Gap's order

    def __init__(self, path: str | Path, *, clock: Clock | None = None) -> None:
        self.path = str(path)
        found: Damage | None = None
        now = clock.time if clock is not None else time.time
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._open()
            except _Damaged as exc:
                found = self._move_aside(str(exc), now())
                self._open()
            super().__init__(clock=clock)
        except (sqlite3.Error, _Damaged, OSError) as exc:
            raise SpoolError(f"{self.path}: cannot open spool: {exc}") from exc
        if found is not None:
            self._found(found)

    def _open(self) -> None:
        """Connect, check the file and bring its schema to ``SCHEMA_VERSION``; ``_Damaged`` if
        it cannot be used as it is."""
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # Checked before anything is written, so a file moved aside is kept as it was found.
            check = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise _Damaged(f"database disk image is malformed: {'; '.join(check[:3])}")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > self.SCHEMA_VERSION:
                raise _Damaged(f"spool schema {version} is newer than this version's {self.SCHEMA_VERSION}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._relaxed = False  # synchronous is NORMAL (only while an ack commits)
            if version < self.SCHEMA_VERSION:
                self._migrate(version)
        except sqlite3.Error as exc:
            self._db.close()
            if _damaged(exc):
                raise _Damaged(str(exc)) from exc
            raise
        except _Damaged:
            self._db.close()
            raise

    def _migrate(self, version: int) -> None:
        """From schema ``version`` to ``SCHEMA_VERSION``, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:  # one of three layouts, or a new file: what it lacks is added
                for statement in self.SCHEMA.split(";"):
                    db.execute(statement)
                for table, column, decl in self.ADDED:
                    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                db.execute("CREATE UNIQUE INDEX IF NOT EXISTS spool_key ON spool (key)")
            if version < 2:
                self._aggregates_to_payloads(db)
            db.execute(f"PRAGMA user_version = {self.SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _aggregates_to_payloads(db: sqlite3.Connection) -> None:
        """Schema 2: each waiting aggregates row of before (one window as JSON) becomes the
        aggregates payload of that window, with the same key; one that does not convert is set
        aside with the reason, never dropped."""
        rows = db.execute("SELECT id, kind, t, payload FROM spool WHERE kind = ?", (messages.AGGREGATES,)).fetchall()
        for id_, kind, t, payload in rows:
            if bytes(payload[:4]) == b"TLMA":
                continue
            try:
                event = json.loads(payload)
                event["kind"] = messages.WINDOW
                window = messages.Window.decode(event)
                data = messages.Aggregates.of_window(window).to_bytes()
            except (ValueError, TypeError, messages.MessageError) as exc:
                db.execute("INSERT INTO aside (id, kind, t, reason, at, payload) VALUES (?,?,?,?,?,?)",
                           (id_, kind, t, f"could not be converted to an aggregates payload: {exc}", time.time(), payload))
                db.execute("DELETE FROM spool WHERE id = ?", (id_,))
                continue
            db.execute("UPDATE spool SET payload = ?, size = ? WHERE id = ?", (data, len(data), id_))

    def _move_aside(self, reason: str, at: float) -> Damage:
        """Rename the damaged file (and its WAL) out of the way, never deleting it, and count
        what it may have held where SQLite can still read that."""
        if self.path == ":memory:":
            raise _Damaged(reason)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
        kept = f"{self.path}.damaged-{stamp}"
        n = 1
        while Path(kept).exists():
            n += 1
            kept = f"{self.path}.damaged-{stamp}-{n}"
        found = Path(self.path).stat() if Path(self.path).exists() else None
        size = found.st_size if found is not None else 0
        mtime = found.st_mtime if found is not None else at
        for suffix in ("-wal", "-shm", ""):  # the database last: a crash in between leaves it found again
            if Path(self.path + suffix).exists():
                Path(self.path + suffix).replace(kept + suffix)
        damage = Damage(at=at, path=self.path, kept=kept, reason=reason, bytes=size, t_first=None, t_last=mtime)
        try:
            ro = sqlite3.connect(f"file:{kept}?mode=ro", uri=True)
            try:
                count, total, t_first, t_last, first_id, last_id = ro.execute(
                    "SELECT COUNT(*), SUM(size), MIN(t), MAX(t), MIN(id), MAX(id) FROM spool").fetchone()
            finally:
                ro.close()
            if count:
                damage = replace(damage, count=int(count), bytes=int(total), t_first=float(t_first),
                                 t_last=float(t_last), first_id=int(first_id), last_id=int(last_id))
        except sqlite3.Error:
            pass  # unreadable: what it held is unknown (count 0, bytes: the file's size)
        LOG.error("%s: spool damaged (%s): moved aside to %s, a fresh spool started", self.path, reason, kept)
        return damage

    def _found(self, damage: Damage) -> None:
        self.damaged.append(damage)
        self._unreported.append(damage)
        self.stats["damaged"] += 1

    def _recover(self, exc: sqlite3.Error) -> None:
        """Damage found while running: the file goes aside and a fresh spool takes its place.
        What was waiting in the damaged file is reported as a gap (by the next ``evict``)."""
        try:
            self._db.close()
        except sqlite3.Error:
            pass
        damage = self._move_aside(str(exc), self._time())
        self._open()
        self.instance = self._instance(secrets.token_hex(4))
        self._count, self._bytes = self._counts()
        self._runs.clear()
        self._found(damage)

    def _instance(self, new: str) -> str:
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (new,))
        return str(self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0])

    def _counts(self) -> tuple[int, int]:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        return int(count), int(size)

    @contextmanager
    def _transaction(self, what: str, durable: bool = True) -> Iterator[None]:
        with self._reading(what):
            # WAL with NORMAL: the commit is written, its fsync left to the next FULL one. The
            # connection is FULL again before any durable transaction begins: restored after,
            # and if that failed, before the next.
            if durable and self._relaxed:
                self._db.execute("PRAGMA synchronous=FULL")
                self._relaxed = False
            elif not durable:
                self._relaxed = True
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        try:
                            self._db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass  # SQLite has rolled back already (after an I/O error, a full disk)
                    raise
            finally:
                if not durable:
                    try:
                        self._db.execute("PRAGMA synchronous=FULL")
                        self._relaxed = False
                    except sqlite3.Error:
                        pass  # the next durable transaction sets it (or fails)

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:  # "database or disk is full", I/O errors, a damaged file
            if _damaged(exc):
                try:
                    self._recover(exc)
                except (sqlite3.Error, OSError, _Damaged) as again:
                    raise SpoolError(f"{self.path}: {what}: {exc}; and cannot start afresh: {again}") from exc
                raise SpoolError(f"{self.path}: {what}: {exc} (moved aside, a fresh spool started)") from exc
            raise SpoolError(f"{self.path}: {what}: {exc}", full=_full(exc)) from exc

    def _insert(self, kind: str, priority: int, t: float, created: float, payload: bytes, key: str | None) -> int | None:
        # One statement: the key's UNIQUE index finds a duplicate as the row goes in (NULL never
        # matches). Not ON CONFLICT DO NOTHING or INSERT OR IGNORE: with AUTOINCREMENT, both
        # use up an id on a duplicate.
        cur = self._db.execute(
            "INSERT INTO spool (kind, priority, t, created, size, key, payload)"
            " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE NOT EXISTS (SELECT 1 FROM spool WHERE key = ?6)",
            (kind, priority, t, created, len(payload), key, payload),
        )
        return int(cur.lastrowid or 0) if cur.rowcount == 1 else None

    def _first_kind(self, kinds: tuple[str, ...] | None) -> str | None:
        where = "" if kinds is None else f" WHERE kind IN ({','.join('?' * len(kinds))})"
        row = self._db.execute(f"SELECT kind FROM spool{where} ORDER BY priority, id LIMIT 1", kinds or ()).fetchone()
        return None if row is None else str(row[0])

    def _select(self, kind: str, limit: int | None) -> Iterator[Entry]:
        rows = self._db.execute(
            "SELECT id, kind, priority, t, payload, attempts, key FROM spool WHERE kind = ? ORDER BY id LIMIT ?",
            (kind, -1 if limit is None else limit),  # -1: no limit
        )
        return (Entry(int(r[0]), r[1], int(r[2]), float(r[3]), bytes(r[4]), int(r[5]), r[6]) for r in rows)

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        marks = ",".join("?" * len(ids))
        query = f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE id IN ({marks})"
        count, size = self._db.execute(query, ids).fetchone()
        self._db.execute(f"DELETE FROM spool WHERE id IN ({marks})", ids)
        return int(count), int(size)

    def _bump_attempts(self, ids: list[int]) -> None:
        self._db.execute(f"UPDATE spool SET attempts = attempts + 1 WHERE id IN ({','.join('?' * len(ids))})", ids)

    def _copy_aside(self, ids: list[int], reason: str, at: float) -> None:
        marks = ",".join("?" * len(ids))
        self._db.execute(f"INSERT OR REPLACE INTO aside SELECT id, kind, t, ?, ?, payload FROM spool WHERE id IN ({marks})",
                         [reason, at, *ids])

    def _aside_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM aside").fetchone()[0])

    def _kind_counts(self) -> dict[str, int]:
        return {k: int(n) for k, n in self._db.execute("SELECT kind, COUNT(*) FROM spool GROUP BY kind")}

    def _oldest_created(self) -> float | None:
        row = self._db.execute("SELECT MIN(created) FROM spool").fetchone()
        return None if row[0] is None else float(row[0])

    def _ledger_add(self, gap: messages.Gap) -> int:
        cur = self._db.execute(f"INSERT INTO ledger ({self.LEDGER}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (gap.vehicle, gap.evicted_at, gap.of, gap.count, gap.bytes, gap.t_first, gap.t_last,
                                gap.first_id, gap.last_id, gap.reason))
        return int(cur.lastrowid or 0)

    def _ledger_set(self, row: int, gap: messages.Gap) -> None:
        columns = ", ".join(f"{c.strip()} = ?" for c in self.LEDGER.split(","))
        self._db.execute(f"UPDATE ledger SET {columns} WHERE rowid = ?",
                         (gap.vehicle, gap.evicted_at, gap.of, gap.count, gap.bytes, gap.t_first, gap.t_last,
                          gap.first_id, gap.last_id, gap.reason, row))

    def _ledger_rows(self) -> list[messages.Gap]:
        rows = self._db.execute(f"SELECT {self.LEDGER} FROM ledger ORDER BY rowid")
        return [messages.Gap(r[0], float(r[1]), r[2], int(r[3]), int(r[4]), float(r[5]), float(r[6]), int(r[7]),
                             int(r[8]), r[9]) for r in rows]

    def _close(self) -> None:
        self._db.close()


class MemorySpool(Spool):
    """The spool in dicts: nothing survives the process (tests, the local runtime, replays).
    Nothing here can fail half-way, so a transaction has nothing to undo."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._queues: dict[str, dict[int, Entry]] = {}  # kind -> id -> entry, oldest first
        self._rows: dict[int, tuple[str, float]] = {}  # id -> (kind, created)
        self._keys: set[str] = set()
        self._ids = itertools.count(1)
        self._aside: dict[int, tuple[Entry, str, float]] = {}
        self._ledger: list[messages.Gap] = []
        super().__init__(clock=clock)

    def _instance(self, new: str) -> str:
        return new

    def _counts(self) -> tuple[int, int]:
        return len(self._rows), sum(len(e.payload) for q in self._queues.values() for e in q.values())

    def _transaction(self, what: str, durable: bool = True) -> AbstractContextManager[None]:
        return nullcontext()

    def _insert(self, kind: str, priority: int, t: float, created: float, payload: bytes, key: str | None) -> int | None:
        if key is not None and key in self._keys:
            return None
        id_ = next(self._ids)
        self._queues.setdefault(kind, {})[id_] = Entry(id_, kind, priority, t, payload, 0, key)
        self._rows[id_] = (kind, created)
        if key is not None:
            self._keys.add(key)
        return id_

    def _first_kind(self, kinds: tuple[str, ...] | None) -> str | None:
        heads = [(e.priority, e.id, k) for k, q in self._queues.items() if q and (kinds is None or k in kinds)
                 for e in itertools.islice(q.values(), 1)]
        return min(heads)[2] if heads else None

    def _select(self, kind: str, limit: int | None) -> Iterator[Entry]:
        return itertools.islice(self._queues.get(kind, {}).values(), limit)

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        count = size = 0
        for id_ in ids:
            if id_ in self._rows:
                entry = self._queues[self._rows.pop(id_)[0]].pop(id_)
                if entry.key is not None:
                    self._keys.discard(entry.key)
                count, size = count + 1, size + len(entry.payload)
        return count, size

    def _bump_attempts(self, ids: list[int]) -> None:
        for id_ in ids:
            if id_ in self._rows:
                queue = self._queues[self._rows[id_][0]]
                queue[id_] = replace(queue[id_], attempts=queue[id_].attempts + 1)

    def _copy_aside(self, ids: list[int], reason: str, at: float) -> None:
        for id_ in ids:
            if id_ in self._rows:
                self._aside[id_] = (self._queues[self._rows[id_][0]][id_], reason, at)

    def _aside_count(self) -> int:
        return len(self._aside)

    def _kind_counts(self) -> dict[str, int]:
        return {k: len(q) for k, q in self._queues.items() if q}

    def _oldest_created(self) -> float | None:
        return min((created for _, created in self._rows.values()), default=None)

    def _ledger_add(self, gap: messages.Gap) -> int:
        self._ledger.append(gap)
        return len(self._ledger) - 1

    def _ledger_set(self, row: int, gap: messages.Gap) -> None:
        self._ledger[row] = gap

    def _ledger_rows(self) -> list[messages.Gap]:
        return list(self._ledger)

    def _close(self) -> None:
        pass

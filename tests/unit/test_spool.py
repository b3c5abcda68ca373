"""The spool: one contract, run against both implementations; durability of the SQLite one."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.edge import messages
from telemetry.edge.clock import ManualClock
from telemetry.edge.spool import Entry, MemorySpool, Spool, SpoolError, SqliteSpool

SPOOLED = (messages.AGGREGATES, messages.ALERT, messages.GAP)
ALL = 10**9  # max_bytes / max_count that fit everything


@pytest.fixture(params=["sqlite", "memory"])
def make_spool(request, tmp_path):
    """Factory: a spool of the implementation under test, on a manual clock; closed after."""
    made: list[Spool] = []

    def make(clock: ManualClock | None = None) -> Spool:
        clock = clock or ManualClock(1000.0)
        if request.param == "sqlite":
            s: Spool = SqliteSpool(tmp_path / f"spool{len(made)}.db", clock=clock)
        else:
            s = MemorySpool(clock=clock)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def spool(make_spool):
    return make_spool()


def agg(i: int) -> bytes:
    return json.dumps({"kind": "aggregates", "i": i, "pad": "x" * 100}).encode()


def everything(spool: Spool, kind: str) -> list[Entry]:
    return spool.take(max_bytes=ALL, max_count=ALL, kinds=(kind,))


def assert_depth_is_a_recount(spool: Spool) -> None:
    """depth() and depth_by_kind() say what a recount of the messages themselves says."""
    by_kind = {k: everything(spool, k) for k in SPOOLED}
    entries = [e for es in by_kind.values() for e in es]
    assert spool.depth() == (len(entries), sum(len(e.payload) for e in entries))
    assert spool.depth_by_kind() == {k: len(es) for k, es in by_kind.items() if es}


# -- the contract: every implementation --------------------------------------------------------------


def test_an_empty_spool(spool):
    assert spool.depth() == (0, 0) and spool.depth_by_kind() == {}
    assert spool.take(max_bytes=ALL, max_count=ALL) == []
    assert spool.oldest() is None and spool.ledger() == [] and spool.set_aside_count() == 0
    assert spool.evict(0, "car") == []
    assert len(spool.instance) == 8 and int(spool.instance, 16) >= 0


def test_each_spool_has_its_own_instance(make_spool):
    assert make_spool().instance != make_spool().instance


def test_take_gives_alerts_first_then_the_oldest_of_one_kind(spool):
    for i in range(5):
        spool.put("aggregates", float(i), agg(i), f"a{i}")
    spool.put("alert", 10.0, b'{"kind":"alert"}', "x1")
    spool.put("alert", 11.0, b'{"kind":"alert","n":2}', "x2")
    first = spool.take(max_bytes=10_000, max_count=100)
    assert [e.kind for e in first] == ["alert", "alert"] and [e.key for e in first] == ["x1", "x2"]
    assert [e.priority for e in first] == [messages.Alert.priority] * 2
    spool.ack(e.id for e in first)
    assert_depth_is_a_recount(spool)
    nxt = spool.take(max_bytes=300, max_count=100)
    assert [e.key for e in nxt] == ["a0", "a1"]  # by size: 2 of about 130 bytes fit in 300
    assert nxt[0].priority == messages.Aggregates.priority
    assert spool.take(max_bytes=1, max_count=100)[0].key == "a0"  # always at least one
    assert spool.depth() == (5, 5 * len(agg(0)))


def test_take_is_all_of_one_kind_within_max_count_and_leaves_them_in_the_spool(spool):
    ids = [spool.put("aggregates", float(i), agg(i), f"a{i}") for i in range(4)]
    spool.put("alert", 9.0, b"{}", "x")
    assert [e.kind for e in spool.take(max_bytes=ALL, max_count=ALL)] == ["alert"]  # newer, but first
    assert [e.id for e in spool.take(max_bytes=ALL, max_count=2, kinds=("aggregates",))] == ids[:2]
    assert spool.take(max_bytes=ALL, max_count=0) == []
    entry = spool.take(max_bytes=ALL, max_count=1, kinds=("aggregates",))[0]
    assert entry == Entry(ids[0], "aggregates", 2, 0.0, agg(0), 0, "a0")
    assert spool.depth()[0] == 5  # taking is not removing


def test_kinds_filter(spool):
    spool.put("aggregates", 1.0, agg(1), "a")
    spool.put("alert", 2.0, b"{}", "x")
    assert [e.kind for e in spool.take(max_bytes=ALL, max_count=ALL, kinds=("aggregates",))] == ["aggregates"]
    assert [e.kind for e in spool.take(max_bytes=ALL, max_count=ALL, kinds=iter(["gap", "alert"]))] == ["alert"]
    assert spool.take(max_bytes=ALL, max_count=ALL, kinds=("gap",)) == []
    assert spool.take(max_bytes=ALL, max_count=ALL, kinds=()) == []
    assert spool.take(max_bytes=ALL, max_count=ALL, kinds=("no'kind",)) == []


def test_alerts_and_gaps_share_the_first_priority_in_the_order_they_came(spool):
    for i in range(6):
        spool.put("aggregates", float(i), agg(i), f"a{i}")
    [gap] = spool.evict(len(agg(0)) * 2 + 400, "car")  # two aggregates and the gap (its bytes count) fit
    spool.put("alert", 6.0, b"{}", "x")
    order = []
    while batch := spool.take(max_bytes=ALL, max_count=ALL):
        order.append([e.kind for e in batch])
        spool.ack(e.id for e in batch)
    assert order[:2] == [["gap"], ["alert"]] and order[2:] == [["aggregates"] * (6 - gap.count)] and gap.count < 6
    assert gap.priority == messages.Alert.priority < messages.Aggregates.priority


def test_put_is_idempotent_by_key_and_ack_removes(spool):
    assert spool.put("aggregates", 1.0, agg(1), "k") is not None
    assert spool.put("aggregates", 1.0, agg(1), "k") is None
    assert spool.put("alert", 1.0, b"{}", "k") is None  # the key is the identity, whatever the kind
    assert spool.depth()[0] == 1
    entries = spool.take(max_bytes=10_000, max_count=10)
    spool.retry([entries[0].id])
    assert spool.take(max_bytes=10_000, max_count=10)[0].attempts == 1
    spool.ack([entries[0].id])
    assert spool.depth() == (0, 0) and spool.take(max_bytes=10_000, max_count=10) == []


def test_a_key_is_free_again_once_its_message_is_gone_and_no_key_is_never_a_duplicate(spool):
    first = spool.put("aggregates", 1.0, agg(1), "k")
    spool.ack([first])
    second = spool.put("aggregates", 1.0, agg(1), "k")
    assert second is not None and second > first
    assert spool.put("alert", 1.0, b"{}") is not None and spool.put("alert", 1.0, b"{}") is not None
    assert spool.depth() == (3, len(agg(1)) + 4)
    assert_depth_is_a_recount(spool)


@pytest.mark.parametrize("kind", ["signals", "health", "bundle", "nonsense"])
def test_a_kind_that_is_never_spooled_is_refused(spool, kind):
    with pytest.raises(ValueError, match=f"'{kind}' messages are not spooled"):
        spool.put(kind, 1.0, b"{}", "k")
    assert spool.depth() == (0, 0)


def test_ids_only_grow(spool):
    ids = [spool.put("alert", 1.0, b"{}", f"x{i}") for i in range(3)]
    spool.ack(ids)
    assert spool.put("alert", 1.0, b"{}", "x0") > ids[-1]


def test_retry_counts_one_attempt_per_call_for_the_ids_given(spool):
    a = spool.put("alert", 1.0, b"{}", "x1")
    b = spool.put("alert", 2.0, b"{}", "x2")
    spool.retry([a, a, 999])  # a duplicate is one attempt; an unknown id is ignored
    spool.retry(iter([a]))
    spool.retry([])
    assert [(e.id, e.attempts) for e in spool.take(max_bytes=ALL, max_count=ALL)] == [(a, 2), (b, 0)]
    assert_depth_is_a_recount(spool)


def test_ack_of_unknown_or_repeated_ids_changes_nothing_else(spool):
    a = spool.put("alert", 1.0, b"{}", "x1")
    spool.put("alert", 2.0, b"{...}", "x2")
    spool.ack([a, a, 999])
    spool.ack([a])
    spool.ack([])
    assert spool.depth() == (1, 5)
    assert_depth_is_a_recount(spool)


def test_set_aside_moves_a_message_out_of_the_way(spool):
    spool.put("alert", 1.0, b"{}", "x")
    entry = spool.take(max_bytes=100, max_count=1)[0]
    spool.set_aside([entry.id], "NOT_AUTHORIZED")
    assert spool.depth() == (0, 0) and spool.set_aside_count() == 1
    assert spool.put("alert", 1.0, b"{}", "x") is not None  # no longer waiting: a new message


def test_set_aside_takes_only_what_is_waiting(spool):
    keep = spool.put("aggregates", 1.0, agg(1), "a")
    gone = spool.put("alert", 1.0, b"{}", "x")
    spool.set_aside([gone, gone, 999], "too large")
    spool.set_aside([], "nothing")
    assert spool.set_aside_count() == 1
    assert [e.id for e in spool.take(max_bytes=ALL, max_count=ALL)] == [keep]
    assert_depth_is_a_recount(spool)


def test_oldest_is_when_the_longest_waiting_message_was_stored(make_spool):
    clock = ManualClock(500.0)
    spool = make_spool(clock)
    first = spool.put("aggregates", 9.0, agg(1), "a")  # event time is not storage time
    clock.advance(10)
    spool.put("alert", 1.0, b"{}", "x")
    assert spool.oldest() == 500.0
    spool.ack([first])
    assert spool.oldest() == 510.0


def test_eviction_takes_the_oldest_aggregates_records_a_gap_and_spares_alerts(make_spool):
    clock = ManualClock(2000.0)
    spool = make_spool(clock)
    for i in range(10):
        spool.put("aggregates", 100.0 + i, agg(i), f"a{i}")
        if i == 5:
            spool.put("alert", 105.5, b'{"kind":"alert"}' + b" " * 500, "x")
    size = len(agg(0))
    count, total = spool.depth()
    clock.advance(5)
    cap = 4 * size + 600
    gaps = spool.evict(max_bytes=cap, vehicle="car")
    # exactly as many of the oldest as the excess needs, the gap message's own bytes included
    evicted_n = gaps[0].count
    gap_bytes = len(everything(spool, "gap")[0].payload)
    assert total - evicted_n * size + gap_bytes <= cap < total - (evicted_n - 1) * size + gap_bytes
    assert evicted_n > math.ceil((total - cap) / size)  # more than without counting the gap
    last_id = evicted_n + (evicted_n > 6)  # the alert took id 7
    assert gaps == [messages.Gap(vehicle="car", evicted_at=2005.0, of="aggregates", count=evicted_n,
                                 bytes=evicted_n * size, t_first=100.0, t_last=100.0 + evicted_n - 1,
                                 first_id=1, last_id=last_id)]
    left = [e.key for e in everything(spool, "aggregates")]
    assert left == [f"a{i}" for i in range(evicted_n, 10)]
    assert [e.key for e in everything(spool, "alert")] == ["x"]
    # the gap message is in the spool, with the alerts, and says the same as the ledger
    [entry] = everything(spool, "gap")
    assert entry.key == f"{spool.instance}/1-{last_id}" and entry.t == 100.0 and entry.priority == 0
    assert messages.decode(json.loads(entry.payload), "gap") == gaps[0]
    assert json.loads(entry.payload)["v"] == messages.VERSION
    assert spool.depth() == (count - evicted_n + 1, total - evicted_n * size + len(entry.payload))
    assert spool.depth_by_kind() == {"aggregates": 10 - evicted_n, "alert": 1, "gap": 1}
    assert spool.ledger() == gaps
    assert_depth_is_a_recount(spool)


def test_eviction_under_the_cap_does_nothing_and_never_evicts_gaps(spool):
    for i in range(3):
        spool.put("aggregates", float(i), agg(i), f"a{i}")
    before = spool.depth()
    assert spool.evict(before[1], "car") == [] and spool.depth() == before
    [gap] = spool.evict(0, "car", evict_alerts=True)  # every aggregate goes; the gap stays
    assert gap.count == 3 and spool.depth_by_kind() == {"gap": 1}
    assert spool.evict(0, "car", evict_alerts=True) == []
    assert len(spool.ledger()) == 1


def test_alerts_are_evicted_only_when_allowed(spool):
    for i in range(10):
        spool.put("alert", float(i), b"x" * 100, f"x{i}")
    assert spool.evict(max_bytes=100, vehicle="car") == []
    assert spool.depth()[0] == 10
    gaps = spool.evict(max_bytes=700, vehicle="car", evict_alerts=True)
    # 300 over, and the gap message's bytes: more than three go, in one gap
    [gap] = gaps
    assert gap.of == "alert" and gap.count > 3 and gap.bytes == 100 * gap.count
    assert spool.depth()[1] <= 700 < spool.depth()[1] + 100


def test_aggregates_go_before_alerts_one_gap_each_in_the_ledger(spool):
    for i in range(2):
        spool.put("alert", float(i), b"x" * 1000, f"x{i}")
        spool.put("aggregates", float(i), b"y" * 1000, f"a{i}")
    # over by 2500: both aggregates go, and with the gap that says so, one alert
    gaps = spool.evict(max_bytes=1500, vehicle="car", evict_alerts=True)
    assert [(g.of, g.count, g.bytes) for g in gaps] == [("aggregates", 2, 2000), ("alert", 1, 1000)]
    assert [(g.first_id, g.last_id) for g in gaps] == [(2, 4), (1, 1)]
    assert spool.ledger() == gaps
    assert {e.key for e in everything(spool, "gap")} == {f"{spool.instance}/2-4", f"{spool.instance}/1-1"}
    assert_depth_is_a_recount(spool)


def test_depth_is_a_recount_after_every_operation(spool):
    steps = [
        lambda: spool.put("aggregates", 1.0, agg(1), "a1"),
        lambda: spool.put("aggregates", 1.0, agg(1), "a1"),
        lambda: spool.put("alert", 2.0, b'{"a":1}', "x1"),
        lambda: spool.put("aggregates", 3.0, agg(3)),
        lambda: spool.take(max_bytes=1, max_count=5),
        lambda: spool.retry([1, 2]),
        lambda: spool.ack([2]),
        lambda: spool.set_aside([3], "refused"),
        lambda: spool.put("aggregates", 4.0, agg(4), "a4"),
        lambda: spool.evict(len(agg(0)), "car"),
        lambda: spool.ack([e.id for e in spool.take(max_bytes=ALL, max_count=ALL)]),
        lambda: spool.evict(0, "car", evict_alerts=True),
    ]
    for step in steps:
        step()
        assert_depth_is_a_recount(spool)


def test_put_many_stores_a_batch_in_order_and_a_duplicate_key_once(spool):
    waiting = spool.put("alert", 1.0, b"{}", "x")
    ids = spool.put_many([("aggregates", 1.0, agg(1), "a1"), ("aggregates", 2.0, agg(2), "a1"),
                          ("alert", 3.0, b'{"n":1}', "x"), ("alert", 4.0, b'{"n":2}', None),
                          ("aggregates", 5.0, agg(5), "a5")])
    assert ids[1] is None and ids[2] is None  # twice in the batch; already waiting
    assert waiting < ids[0] < ids[3] < ids[4]
    assert [(e.key, e.payload) for e in everything(spool, "aggregates")] == [("a1", agg(1)), ("a5", agg(5))]
    assert [e.key for e in everything(spool, "alert")] == ["x", None]
    assert spool.put_many([]) == [] and spool.put_many(iter([])) == []
    assert_depth_is_a_recount(spool)


def test_put_many_refuses_a_kind_never_spooled_before_it_stores_any(spool):
    with pytest.raises(ValueError, match="'health' messages are not spooled"):
        spool.put_many([("alert", 1.0, b"{}", "x"), ("health", 1.0, b"{}", "h")])
    assert spool.depth() == (0, 0) and spool.put("alert", 1.0, b"{}", "x") is not None


def test_eviction_under_the_cap_does_not_wait_for_a_commit_in_progress(spool):
    """The handler evicts after every put; under the cap that must not queue behind the
    sender, which holds the spool while it commits an acknowledgement."""
    spool.put("aggregates", 1.0, agg(1), "a1")
    held, release = threading.Event(), threading.Event()

    def sender() -> None:
        with spool._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=sender)
    holder.start()
    held.wait(10)
    try:
        result: list = []
        evicting = threading.Thread(target=lambda: result.append(spool.evict(10**9, "car")))
        evicting.start()
        evicting.join(5)
        assert result == [[]]
    finally:
        release.set()
        holder.join()
    assert spool.evict(0, "car")[0].count == 1  # over the cap it does its work, lock and all


# -- the SQLite spool: durability ------------------------------------------------------------------


def test_what_was_committed_survives_a_killed_process(tmp_path):
    path = tmp_path / "spool.db"
    code = (
        "import os, sys\n"
        "from telemetry.edge.spool import SqliteSpool\n"
        f"s = SqliteSpool({str(path)!r})\n"
        "for i in range(50):\n"
        "    s.put('aggregates', float(i), b'x' * 200, f'a{i}')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -9
    reopened = SqliteSpool(path)
    try:
        assert reopened.depth() == (50, 50 * 200)
        assert [e.key for e in reopened.take(max_bytes=10**6, max_count=100)][:3] == ["a0", "a1", "a2"]
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        reopened.close()


def test_wal_and_an_fsync_per_commit(tmp_path):
    s = SqliteSpool(tmp_path / "spool.db")
    try:
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        s.close()


def test_an_ack_survives_a_killed_process_though_its_commit_waits_for_the_next_fsync(tmp_path):
    """A delete of sent messages commits with synchronous NORMAL (no fsync of its own: the next
    put's flushes it with the WAL); a killed process loses neither, the put after it is FULL again."""
    path = tmp_path / "spool.db"
    code = (
        "import os\n"
        "from telemetry.edge.spool import SqliteSpool\n"
        f"s = SqliteSpool({str(path)!r})\n"
        "ids = [s.put('aggregates', float(i), b'x' * 200, f'a{i}') for i in range(50)]\n"
        "s.ack(ids[:30])\n"
        "s.put('aggregates', 99.0, b'y' * 100, 'late')\n"
        "s.ack(ids[30:40])\n"  # the last: nothing flushed after it, the OS still has it
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -9, result.stderr
    reopened = SqliteSpool(path)
    try:
        assert reopened.depth() == (11, 10 * 200 + 100)
        assert [e.key for e in reopened.take(max_bytes=10**6, max_count=100)] == [f"a{i}" for i in range(40, 50)] + ["late"]
    finally:
        reopened.close()


def test_only_the_delete_of_sent_messages_skips_its_fsync(tmp_path):
    s = SqliteSpool(tmp_path / "spool.db")
    statements: list[str] = []
    try:
        s._db.set_trace_callback(statements.append)
        ids = s.put_many([("aggregates", float(i), agg(i), f"a{i}") for i in range(3)])
        s.retry(ids[:1])
        s.set_aside(ids[1:2], "refused")
        assert not [q for q in statements if "synchronous" in q]  # puts, attempts, set-asides: FULL
        s.ack(ids[2:])
        assert [q for q in statements if "synchronous" in q] == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for what follows
        s._db.execute("DROP TABLE spool")  # an ack that fails still leaves the connection FULL
        with pytest.raises(SpoolError):
            s.ack([1])
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        s._db.execute("PRAGMA synchronous=NORMAL")  # as if setting it back had failed:
        s._relaxed = True
        statements.clear()
        with pytest.raises(SpoolError):
            s.put("aggregates", 5.0, agg(5), "a5")
        assert statements[:2] == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"]  # FULL before a put begins
    finally:
        s.close()


def test_a_put_is_one_statement_and_a_batch_one_commit(tmp_path):
    """The key's UNIQUE index finds a redelivery as the row goes in (no SELECT first), and a
    batch costs one commit, so one fsync."""
    s = SqliteSpool(tmp_path / "spool.db")
    statements: list[str] = []
    try:
        s._db.set_trace_callback(statements.append)
        s.put("aggregates", 1.0, agg(1), "a1")
        assert [q.split()[0] for q in statements] == ["BEGIN", "INSERT", "COMMIT"]
        statements.clear()
        ids = s.put_many([("aggregates", float(i), agg(i), f"a{i}") for i in range(10)])
        assert ids[1] is None and None not in ids[2:]
        assert statements.count("COMMIT") == 1 and not [q for q in statements if q.startswith("SELECT")]
    finally:
        s.close()


def test_a_batch_that_fails_half_way_stores_none_of_it(tmp_path, monkeypatch):
    s = SqliteSpool(tmp_path / "spool.db")
    try:
        s.put_many([("aggregates", float(i), agg(i), f"a{i}") for i in range(3)])
        before = s.depth()
        insert, calls = s._insert, []

        def failing(*args):
            calls.append(args)
            if len(calls) == 3:
                raise sqlite3.OperationalError("disk I/O error")
            return insert(*args)

        monkeypatch.setattr(s, "_insert", failing)
        with pytest.raises(SpoolError, match=r"spool\.db: cannot store 4 messages: disk I/O error"):
            s.put_many([("aggregates", float(i), agg(i), f"a{i}") for i in range(3, 7)])
        monkeypatch.undo()
        assert s.depth() == before and [e.key for e in everything(s, "aggregates")] == ["a0", "a1", "a2"]
        assert_depth_is_a_recount(s)
        assert None not in s.put_many([("aggregates", 3.0, agg(3), "a3"), ("aggregates", 4.0, agg(4), "a4")])
    finally:
        s.close()


def test_instance_ids_ledger_and_set_aside_survive_a_reopen(tmp_path):
    path = tmp_path / "spool.db"
    s = SqliteSpool(path, clock=ManualClock(10.0))
    for i in range(3):
        s.put("aggregates", float(i), b"y" * 1000, f"a{i}")
    s.put("alert", 1.0, b"{}", "x")
    s.set_aside([4], "refused")
    gaps = s.evict(2500, "car")
    instance, depth, last = s.instance, s.depth(), s.put("alert", 2.0, b"{}", "x2")
    s.ack([last])
    s.close()
    s = SqliteSpool(path)
    try:
        assert s.instance == instance and s.depth() == depth and s.ledger() == gaps and s.set_aside_count() == 1
        assert s.oldest() == 10.0
        assert s.put("alert", 3.0, b"{}", "x3") > last  # an id is never given twice
        assert s.put("aggregates", 2.0, b"y" * 100, "a2") is None  # still waiting: still a duplicate
    finally:
        s.close()


def test_a_ledger_written_before_it_kept_the_whole_gap_is_carried_on(tmp_path):
    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE ledger (at REAL, kind TEXT, count INTEGER, bytes INTEGER, t_first REAL, t_last REAL,"
                " first_id INTEGER, last_id INTEGER)")
    old.execute("INSERT INTO ledger VALUES (5.0, 'aggregates', 2, 200, 1.0, 2.0, 1, 2)")
    old.commit()
    old.close()
    s = SqliteSpool(path, clock=ManualClock(10.0))
    try:
        s.put("aggregates", 3.0, b"y" * 100, "a3")
        [gap] = s.evict(0, "car")
        assert s.ledger() == [messages.Gap("", 5.0, "aggregates", 2, 200, 1.0, 2.0, 1, 2), gap]
    finally:
        s.close()


def test_a_full_disk_is_a_clear_spool_error(tmp_path):
    s = SqliteSpool(tmp_path / "spool.db")
    try:
        s._db.execute("PRAGMA max_page_count = 20")  # as good as a full disk
        with pytest.raises(SpoolError, match="cannot store a aggregates message: database or disk is full"):
            for i in range(1000):
                s.put("aggregates", float(i), b"x" * 4000, f"a{i}")
        assert s.depth()[0] > 0  # what fitted is still there
        assert_depth_is_a_recount(s)  # and what did not is not counted
        assert s.put("aggregates", 0.0, b"x", "a0") is None  # the spool still works
    finally:
        s.close()


def test_an_eviction_that_fails_half_way_changes_nothing(tmp_path, monkeypatch):
    s = SqliteSpool(tmp_path / "spool.db")
    try:
        for i in range(3):
            s.put("aggregates", float(i), agg(i), f"a{i}")
        before = s.depth()

        def broken(gap):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(s, "_ledger_add", broken)
        with pytest.raises(SpoolError, match=r"spool\.db: eviction failed: disk I/O error"):
            s.evict(0, "car")
        monkeypatch.undo()
        assert s.depth() == before and s.ledger() == [] and len(everything(s, "aggregates")) == 3
        assert_depth_is_a_recount(s)
    finally:
        s.close()


def test_a_spool_that_cannot_be_opened_names_the_file(tmp_path):
    with pytest.raises(SpoolError, match=re.escape(f"{tmp_path}: cannot open spool")):
        SqliteSpool(tmp_path)  # a directory


# -- both implementations, the same observable state ---------------------------------------------------

ids = st.lists(st.integers(1, 12), max_size=4)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["aggregates", "alert"]), st.integers(0, 50),
                  st.integers(1, 300), st.one_of(st.none(), st.sampled_from([f"k{i}" for i in range(6)]))),
        st.tuples(st.just("put_many"), st.lists(st.tuples(
            st.sampled_from(["aggregates", "alert"]), st.integers(0, 50), st.integers(1, 300),
            st.one_of(st.none(), st.sampled_from([f"k{i}" for i in range(6)]))), max_size=5)),
        st.tuples(st.just("take"), st.integers(1, 1500), st.integers(0, 8),
                  st.one_of(st.none(), st.lists(st.sampled_from(SPOOLED), max_size=2, unique=True).map(tuple))),
        st.tuples(st.just("ack"), ids),
        st.tuples(st.just("send"), st.integers(1, 1500)),
        st.tuples(st.just("retry"), ids),
        st.tuples(st.just("set_aside"), ids, st.sampled_from(["refused", "too large"])),
        st.tuples(st.just("evict"), st.integers(0, 3000), st.booleans()),
        st.tuples(st.just("tick"), st.integers(1, 30)),
    ),
    max_size=40,
)


def observe(spool: Spool) -> tuple:
    def portable(e: Entry) -> Entry:  # a gap's key names its spool's instance
        return e if e.key is None else Entry(e.id, e.kind, e.priority, e.t, e.payload, e.attempts,
                                             e.key.replace(spool.instance, "<instance>"))

    return (spool.depth(), spool.depth_by_kind(), spool.set_aside_count(), spool.oldest(), spool.ledger(),
            [portable(e) for k in SPOOLED for e in everything(spool, k)])


def apply(spool: Spool, clock: ManualClock, op: tuple) -> object:
    name, *args = op
    if name == "put":
        kind, t, size, key = args
        return spool.put(kind, float(t), bytes([65 + t % 26]) * size, key)
    if name == "put_many":
        return spool.put_many([(kind, float(t), bytes([65 + t % 26]) * size, key) for kind, t, size, key in args[0]])
    if name == "take":
        max_bytes, max_count, kinds = args
        return [e.id for e in spool.take(max_bytes=max_bytes, max_count=max_count, kinds=kinds)]
    if name == "send":  # what the sender does: take, then ack what it took
        taken = [e.id for e in spool.take(max_bytes=args[0], max_count=ALL)]
        spool.ack(taken)
        return taken
    if name == "evict":
        return spool.evict(args[0], "car", evict_alerts=args[1])
    if name == "tick":
        clock.advance(args[0])
        return None
    return getattr(spool, name)(*args)


@given(operations)
def test_both_implementations_end_in_the_same_observable_state(ops):
    clocks = ManualClock(100.0), ManualClock(100.0)
    spools = SqliteSpool(":memory:", clock=clocks[0]), MemorySpool(clock=clocks[1])
    try:
        for op in ops:
            results = [apply(s, c, op) for s, c in zip(spools, clocks)]
            assert results[0] == results[1], op
            assert observe(spools[0]) == observe(spools[1]), op
        for s in spools:
            assert_depth_is_a_recount(s)
    finally:
        for s in spools:
            s.close()

"""The spool: one contract, run against both implementations; durability of the SQLite one."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from telemetry.edge.spool import MemorySpool, SpoolError, SqliteSpool


@pytest.fixture(params=["sqlite", "memory"])
def spool(request, tmp_path):
    s = SqliteSpool(tmp_path / "spool.db") if request.param == "sqlite" else MemorySpool()
    yield s
    s.close()


def agg(i: int) -> bytes:
    return json.dumps({"kind": "aggregates", "i": i, "pad": "x" * 100}).encode()


def test_take_gives_alerts_first_then_the_oldest_of_one_kind(spool):
    for i in range(5):
        spool.put("aggregates", float(i), agg(i), f"a{i}")
    spool.put("alert", 10.0, b'{"kind":"alert"}', "x1")
    spool.put("alert", 11.0, b'{"kind":"alert","n":2}', "x2")
    first = spool.take(max_bytes=10_000, max_count=100)
    assert [e.kind for e in first] == ["alert", "alert"] and [e.key for e in first] == ["x1", "x2"]
    spool.ack(e.id for e in first)
    nxt = spool.take(max_bytes=300, max_count=100)
    assert [e.key for e in nxt] == ["a0", "a1"]  # by size: 2 of about 130 bytes fit in 300
    assert spool.take(max_bytes=1, max_count=100)[0].key == "a0"  # always at least one
    assert spool.depth() == (5, 5 * len(agg(0)))


def test_put_is_idempotent_by_key_and_ack_removes(spool):
    assert spool.put("aggregates", 1.0, agg(1), "k") is not None
    assert spool.put("aggregates", 1.0, agg(1), "k") is None
    assert spool.depth()[0] == 1
    entries = spool.take(max_bytes=10_000, max_count=10)
    spool.retry([entries[0].id])
    assert spool.take(max_bytes=10_000, max_count=10)[0].attempts == 1
    spool.ack([entries[0].id])
    assert spool.depth() == (0, 0) and spool.take(max_bytes=10_000, max_count=10) == []


def test_eviction_takes_the_oldest_aggregates_records_a_gap_and_spares_alerts(spool):
    for i in range(10):
        spool.put("aggregates", 100.0 + i, agg(i), f"a{i}")
        if i == 5:
            spool.put("alert", 105.5, b'{"kind":"alert"}' + b" " * 500, "x")
    size = len(agg(0))
    gaps = spool.evict(max_bytes=4 * size + 600, vehicle="car")
    assert len(gaps) == 1 and gaps[0].kind == "aggregates"
    left = [e.key for e in spool.take(max_bytes=10**6, max_count=100, kinds=("aggregates",))]
    evicted = [f"a{i}" for i in range(10) if f"a{i}" not in left]
    assert evicted == [f"a{i}" for i in range(len(evicted))]  # the oldest
    assert gaps[0].count == len(evicted) and gaps[0].t_first == 100.0 and gaps[0].t_last == 100.0 + len(evicted) - 1
    kinds = [e.kind for e in spool.take(max_bytes=10**6, max_count=100)]
    assert kinds[0] in ("alert", "gap")  # the alert is still there, and the gap report goes with it
    everything = [(e.kind, json.loads(e.payload)) for k in ("alert", "gap") for e in spool.take(max_bytes=10**6, max_count=100, kinds=(k,))]
    gap_msg = next(m for kind, m in everything if kind == "gap")
    assert gap_msg["evicted"] == {"kind": "aggregates", "count": gaps[0].count, "bytes": gaps[0].bytes,
                                  "t_first": 100.0, "t_last": gaps[0].t_last, "first_id": gaps[0].first_id,
                                  "last_id": gaps[0].last_id}
    assert spool.ledger() == gaps


def test_alerts_are_evicted_only_when_allowed(spool):
    for i in range(5):
        spool.put("alert", float(i), b"x" * 100, f"x{i}")
    assert spool.evict(max_bytes=100, vehicle="car") == []
    assert spool.depth()[0] == 5
    gaps = spool.evict(max_bytes=250, vehicle="car", evict_alerts=True)
    assert gaps and gaps[0].kind == "alert"


def test_set_aside_moves_a_message_out_of_the_way(spool):
    spool.put("alert", 1.0, b"{}", "x")
    entry = spool.take(max_bytes=100, max_count=1)[0]
    spool.set_aside([entry.id], "NOT_AUTHORIZED")
    assert spool.depth() == (0, 0) and spool.set_aside_count() == 1


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


def test_a_full_disk_is_a_clear_spool_error(tmp_path, monkeypatch):
    s = SqliteSpool(tmp_path / "spool.db")
    try:
        s._db.execute("PRAGMA max_page_count = 20")  # as good as a full disk
        with pytest.raises(SpoolError, match="cannot store a aggregates message: database or disk is full"):
            for i in range(1000):
                s.put("aggregates", float(i), b"x" * 4000, f"a{i}")
        assert s.depth()[0] > 0  # what fitted is still there
    finally:
        s.close()

"""Issue 11, point 6: the uploader command (``python -m telemetry uploader``) reads every line of
its input and says what it did with each; a connection that fails says why, on stderr, once.
Against a real mosquitto with TLS and client certificates made by openssl (tests/support)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.broker import Broker, Observer, _openssl

ROOT = Path(__file__).resolve().parents[2]
FAST = 'vehicle = "sunrace-01"\n[uploader]\npoll_seconds = 0.05\nretry_min_seconds = 0.1\nretry_max_seconds = 0.5\n' \
       'health_seconds = 3600.0\n'


def aggregate(i: int) -> dict:
    return {"v": 1, "kind": "window", "vehicle": "sunrace-01", "seq": i, "group": "default",
            "window": {"start": 1_782_900_000.0 + i, "end": 1_782_900_001.0 + i},
            "signals": {"Pack.Voltage": {"count": 2, "min": 400.0, "max": 401.0, "mean": 400.5, "last": 401.0}}}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> dict[str, Path]:
    """A CA the broker does not know, and a client certificate it signed."""
    folder = tmp_path_factory.mktemp("stranger")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=uploader", "-keyout", "u.key", "-out", "u.csr",
             cwd=folder)
    _openssl("x509", "-req", "-in", "u.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-out", "u.crt", cwd=folder)
    return {"ca": folder / "ca.crt", "cert": folder / "u.crt", "key": folder / "u.key"}


def uploader_command(tmp_path: Path, broker: Broker, *, endpoint: object = "127.0.0.1", drain: float = 20.0,
                     **files: object) -> list[str]:
    config = tmp_path / "vehicle.toml"
    config.write_text(FAST)
    f = {**broker.client_files("uploader"), **{k: str(v) for k, v in files.items()}}
    return [sys.executable, "-m", "telemetry", "uploader", "--config", str(config), "--spool", str(tmp_path / "spool.db"),
            "--endpoint", str(endpoint), "--port", str(broker.port), "--cert", f["cert"], "--key", f["key"],
            "--ca", f["ca"], "--client-id", f"uploader-{tmp_path.name}"[:60], "--drain", str(drain)]


def run_uploader(tmp_path: Path, broker: Broker, stdin: bytes, **options: object) -> subprocess.CompletedProcess:
    return subprocess.run(uploader_command(tmp_path, broker, **options), input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120)


def test_every_line_is_read_and_a_bad_one_is_counted_and_named(tmp_path, broker):
    """Before: bad lines were answered ``ok`` like stored ones, most named without their line
    number (``{"v":1,"kind":"aggregates"}`` once ended the command with a KeyError traceback)."""
    observer = Observer(broker)
    try:
        lines = [
            json.dumps(aggregate(1)).encode(),
            b'{"v":1,"kind":"aggregates"}',
            b"not json",
            b"\xff\xfe\x00 not UTF-8",
            b"[1, 2]",
            b'{"v": 1, "kind": "alert", "value": NaN}',
            json.dumps({"v": 1, "kind": "signals", "vehicle": "x"}).encode(),
            json.dumps(aggregate(2)).encode(),
            b"",
            json.dumps(aggregate(3)).encode(),
        ]
        proc = run_uploader(tmp_path, broker, b"\n".join(lines) + b"\n")
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert "Traceback" not in err and "Traceback" not in out
        answers = out.splitlines()[:-1]
        summary = json.loads(out.splitlines()[-1])
        assert [a.split(":")[0] for a in answers] == [
            "ok 1", "bad 2", "bad 3", "bad 4", "bad 5", "bad 6", "bad 7", "ok 8", "ok 9", "ok 10"]
        assert summary["bad_lines"] == 6 and summary["left_in_spool"] == 0 and summary["spooled"] == 3
        named = [line for line in err.splitlines() if line.startswith("bad line")]
        assert [line.split(":")[0] for line in named] == [f"bad line {n}" for n in range(2, 8)]
        assert "aggregates travel binary (TLMA)" in named[0] and "not JSON" in named[1]
        assert "not UTF-8" in named[2]
        assert proc.returncode == 0
        def seqs() -> set[int]:  # each window sent as an aggregates payload of its own
            return {p.seq for p in observer.aggregates()}

        assert observer.wait_for(lambda: len(seqs()) == 3, 10), seqs()
        assert seqs() == {1, 2, 3}
    finally:
        observer.close()


def test_a_connection_that_fails_says_why_on_stderr_once(tmp_path, broker, stranger):
    """Before: nothing at all on stderr; the messages just stayed in the spool. The three cases
    run side by side (each command waits for its connection a few seconds)."""
    cases = {  # the options of the command, and what it must say
        "untrusted CA": ({"ca": stranger["ca"]}, "the broker's certificate is not trusted"),
        # the broker's certificate is for IP 127.0.0.1, not for a name
        "wrong host name": ({"endpoint": "localhost"}, "Hostname mismatch, certificate is not valid for 'localhost'"),
        "refused certificate": ({"cert": stranger["cert"], "key": stranger["key"]},
                                "the broker refused this device's certificate"),
    }
    lines = b"".join(json.dumps(aggregate(i)).encode() + b"\n" for i in range(3))
    procs = {}
    for n, (case, (options, _)) in enumerate(cases.items()):
        folder = tmp_path / f"case{n}"
        folder.mkdir()
        procs[case] = subprocess.Popen(uploader_command(folder, broker, drain=0.5, **options), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    results = {case: (proc.communicate(lines, timeout=120), proc.returncode) for case, proc in procs.items()}
    for case, ((out, err_bytes), code) in results.items():
        err = err_bytes.decode()
        expected = cases[case][1]
        assert "Traceback" not in err, (case, err)
        said = [line for line in err.splitlines() if "cannot connect" in line]
        assert len(said) == 1 and expected in said[0], (case, err)
        summary = json.loads(out.decode().splitlines()[-1])
        assert summary["left_in_spool"] == 3 and expected in summary["connection_failure"], (case, summary)
        assert code == 1  # not delivered: kept in the spool for the next run


def test_a_damaged_spool_file_does_not_stop_the_command(tmp_path, broker):
    """Before: ``error: ...: cannot open spool: file is not a database``, exit 2, for good."""
    (tmp_path / "spool.db").write_bytes(b"garbage, not SQLite" * 200)
    proc = run_uploader(tmp_path, broker, json.dumps(aggregate(1)).encode() + b"\n")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "spool damaged" in err and "moved aside" in err
    summary = json.loads(proc.stdout.decode().splitlines()[-1])
    assert summary["damaged"] == 1 and summary["messages_sent"] == 2  # the aggregate, and the gap that reports the loss
    assert list(tmp_path.glob("spool.db.damaged-*"))

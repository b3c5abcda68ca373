"""The cloud side of a replay: the aggregates payloads on the wire are binary (MQTT 5 content
type), small against the log, and ``decode-cloud`` turns them back into the windows the
aggregator computed, as CSV, JSON lines and Parquet."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from telemetry.tools.paths import SAMPLE
from telemetry.tools.replay import messages_from_outbox, replay

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def replayed(short_drive, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cloud")
    return out, replay(short_drive, out_dir=out, config=SAMPLE / "vehicle.toml")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "telemetry", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_aggregates_go_binary_and_the_summary_weighs_them_against_the_log(replayed, short_drive):
    out, summary = replayed
    lines = [json.loads(line) for line in (out / "cloud.jsonl").read_text().splitlines()]
    binary = [line for line in lines if "payload_base64" in line]
    assert binary and all(line["topic"].endswith("/aggregates") and line["content_type"] == "application/vnd.telemetry.windows"
                          for line in binary)
    assert all("payload" in line for line in lines if not line["topic"].endswith("/aggregates"))  # alerts, health: JSON
    assert summary["log_bytes"] == short_drive.stat().st_size
    assert summary["cloud_to_log_ratio"] == round(summary["cloud_bytes"] / summary["log_bytes"], 5) < 1 / 20
    assert sum(summary["cloud_bytes_by_topic"].values()) == summary["cloud_bytes"]


@pytest.mark.parametrize("to", ["csv", "jsonl", "parquet"])
def test_decode_cloud_gives_back_every_window_of_the_replay(replayed, tmp_path, to):
    out, summary = replayed
    target = tmp_path / f"rows.{to}"
    result = cli("decode-cloud", str(out / "cloud.jsonl"), "--to", to, "--out", str(target))
    assert result.returncode == 0, result.stderr
    assert f"Decoded {summary['aggregates']} aggregates payloads" in result.stdout
    if to == "csv":
        with target.open() as f:
            rows = [{**r, "window_start": float(r["window_start"]), "value": float(r["value"])} for r in csv.DictReader(f)]
    elif to == "jsonl":
        rows = [json.loads(line) for line in target.read_text().splitlines()]
    else:
        rows = pq.read_table(target).to_pylist()
    got = {(r["group"], r["window_start"], r["signal"], r["statistic"]): r["value"] for r in rows}
    want = {(w["group"], w["window"]["start"], name, stat): value
            for w in messages_from_outbox(out / "cloud.jsonl", "aggregates")
            for name, stats in w["signals"].items() for stat, value in stats.items()}
    assert len(rows) == len(got) == len(want) and got == want
    assert {w for (_, w, _, _) in got} and summary["windows"] == len({(g, w) for (g, w, _, _) in got})


def test_decode_cloud_without_the_vehicles_dbc_says_what_it_needs(replayed, tmp_path):
    out, _ = replayed
    other = tmp_path / "other.dbc"
    other.write_text('VERSION ""\n\nBU_: X\n\nBO_ 100 Other: 8 X\n SG_ Thing : 0|8@1+ (1,0) [0|255] "" X\n')
    result = cli("decode-cloud", str(out / "cloud.jsonl"), "--dbc", str(other), "--out", str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "names its signals by schema" in result.stderr and "give it the vehicle's DBC files" in result.stderr

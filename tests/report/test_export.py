"""``--export csv|parquet DIR``: every decoded sample (time, signal, value, unit) and every window's
statistics, long format, as the replay's components produced them."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from telemetry.edge.errors import TelemetryError
from telemetry.tools.cli import main
from telemetry.tools.replay import replay

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def test_csv_holds_every_sample_and_every_window(sample_replay):
    export = sample_replay.out / "export"
    with (export / "signals.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "signal", "value", "unit"]
    assert len(rows) - 1 == sample_replay.summary["signal_samples"] == sample_replay.summary["exports"]["signal_rows"]
    speed = [r for r in rows[1:] if r[1] == "MC_Velocity.VehicleSpeed"]
    assert len(speed) == 4800 and {r[3] for r in speed} == {"km/h"}
    assert float(speed[0][0]) == pytest.approx(1782900000, abs=1)  # the log's own (absolute) times
    with (export / "aggregates.csv").open() as f:
        windows = list(csv.DictReader(f))
    assert len(windows) == sum(len(w.signals) for w in sample_replay.taps.windows)
    speed_windows = [w for w in windows if w["signal"] == "MC_Velocity.VehicleSpeed"]
    assert sum(int(float(w["count"])) for w in speed_windows) == 4800
    assert max(float(w["max"]) for w in speed_windows) == max(float(r[2]) for r in speed)
    assert {w["group"] for w in windows} == {w.group for w in sample_replay.taps.windows}


def test_parquet_reads_back_with_types(tmp_path):
    log = tmp_path / "short.log"
    log.write_text("".join((SAMPLE / "drive.log").read_text().splitlines(keepends=True)[:3000]))
    summary = replay(log, out_dir=tmp_path / "out", config=SAMPLE / "vehicle.toml", export=("parquet", tmp_path / "pq"))
    signals = pq.read_table(tmp_path / "pq" / "signals.parquet")
    assert signals.schema.names == ["time", "signal", "value", "unit"]
    assert str(signals.schema.field("value").type) == "double"
    assert signals.num_rows == summary["signal_samples"] > 0
    aggregates = pq.read_table(tmp_path / "pq" / "aggregates.parquet")
    assert aggregates.num_rows == summary["exports"]["aggregate_rows"] > 0
    assert {"start", "end", "group", "signal", "unit", "count", "min", "max", "mean"} <= set(aggregates.schema.names)


def test_an_unknown_format_is_refused_before_the_replay(tmp_path, capsys):
    with pytest.raises(TelemetryError, match="unknown export format 'xlsx'"):
        replay(SAMPLE / "drive.log", out_dir=tmp_path / "out", config=SAMPLE / "vehicle.toml", export=("xlsx", tmp_path))
    assert main(["replay", str(SAMPLE / "drive.log"), "--config", str(SAMPLE / "vehicle.toml"), "--out", str(tmp_path / "o"),
                 "--export", "xlsx", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "o" / "summary.json").exists()

"""``telemetry signals``: the catalogue of a DBC, a log's statistics per signal, and per rule the
signals it matches and the alerts it would raise (the same as a replay raises)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from telemetry.edge.config import load_config
from telemetry.tools.cli import main
from telemetry.tools.signals import LogScan, SignalStats, catalogue, format_catalogue, outside, scan_log

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
DBC = SAMPLE / "solar_car.dbc"


def test_the_catalogue_lists_every_signal_with_unit_scale_and_range():
    infos = {s.name: s for s in catalogue([DBC])}
    assert len(infos) == 103
    speed = infos["MC_Velocity.VehicleSpeed"]
    assert (speed.message, speed.frame_id, speed.unit, speed.scale, speed.minimum, speed.maximum) == (
        "MC_Velocity", 0x301, "km/h", 0.01, 0.0, 200.0)
    assert (speed.raw_minimum, speed.raw_maximum) == (0.0, 655.35)  # 16 unsigned bits, scaled
    temp = infos["MPPT1_Status.Temperature"]
    assert (temp.offset, temp.raw_minimum, temp.raw_maximum) == (-40.0, -40.0, 215.0)
    assert infos["BMS_CellTemps.Module"].multiplexed


def test_a_log_gives_count_rate_min_max_and_percentiles(sample_replay):
    scan = scan_log(SAMPLE / "drive.log", [DBC])
    speed = scan.stats["MC_Velocity.VehicleSpeed"]
    assert speed.count == 4800 and speed.rate == pytest.approx(20.0, rel=0.01)
    # the windows of the replay saw the same extremes
    windows = [w.signals["MC_Velocity.VehicleSpeed"] for w in sample_replay.taps.windows
               if "MC_Velocity.VehicleSpeed" in w.signals]
    assert speed.minimum == min(s["min"] for s in windows) and speed.maximum == max(s["max"] for s in windows)
    assert speed.minimum <= speed.percentiles[0] <= speed.percentiles[1] <= speed.percentiles[2] <= speed.maximum
    assert sum(s.count for s in scan.stats.values()) == sample_replay.summary["signal_samples"] - sample_replay.summary["non_finite_values"]


def test_with_a_config_the_alerts_it_would_raise_are_those_of_the_replay(sample_replay):
    scan = scan_log(SAMPLE / "drive.log", [DBC], load_config(SAMPLE / "vehicle.toml"))
    key = lambda a: (a.rule, a.signal, a.state, round(a.t, 6))  # noqa: E731
    assert sorted(map(key, scan.alerts)) == sorted(map(key, sample_replay.taps.alerts))


def test_the_command_prints_the_catalogue_the_statistics_and_the_rules(capsys):
    assert main(["signals", "--dbc", str(DBC), "--log", str(SAMPLE / "drive.log"), "--config", str(SAMPLE / "vehicle.toml")]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0].split()
    assert head[:6] == ["signal", "unit", "scale", "offset", "DBC", "range"] and head[-3:] == ["p1", "p50", "p99"]
    row = next(line for line in out.splitlines() if line.startswith("MC_Velocity.VehicleSpeed "))
    assert row.split()[1:6] == ["km/h", "0.01", "0", "0..200", "0..655.35"] and row.split()[6:8] == ["4800", "20.0"]
    assert "103 signals in 10 messages; the log: 34253 frames over 240.0 s, 103 signals seen, 0 never" in out
    assert "  cell-overtemp (limit, BMS_CellTemps.Temp*): 36 signals: " in out
    assert "    would raise 1 alert on this log (first at t=131.1 s, worst 61) on BMS_CellTemps.Temp14" in out
    assert "  bus-errors (bus): frame counters (error)" in out


def test_without_a_log_there_are_no_statistics(capsys):
    assert main(["signals", "--dbc", str(DBC)]) == 0
    out = capsys.readouterr().out
    assert "p50" not in out and out.rstrip().endswith("103 signals in 10 messages")


def test_a_rule_typo_is_shown_in_the_rule_list_and_fails_the_command(tmp_path, capsys):
    text = (SAMPLE / "vehicle.toml").read_text().replace('signals = "BMS_PackStatus.PackCurrent"', 'signals = "BMS_PackStatus.PackCurent"')
    (tmp_path / "vehicle.toml").write_text(text)
    (tmp_path / "solar_car.dbc").write_bytes(DBC.read_bytes())
    assert main(["signals", "--config", str(tmp_path / "vehicle.toml")]) == 1
    captured = capsys.readouterr()
    assert "  pack-overcurrent (limit, BMS_PackStatus.PackCurent): MATCHES NO SIGNAL" in captured.out
    assert captured.err == "error: 1 rules match no signal (pack-overcurrent): replay refuses this configuration\n"


def test_a_dbc_is_required(capsys):
    assert main(["signals"]) == 2
    assert capsys.readouterr().err.startswith("error: give --dbc DBC")


def test_values_outside_the_declared_range_are_marked_and_an_inverted_range_declares_nothing():
    infos = {s.name: s for s in catalogue([DBC])}
    temp = infos["MC_Drive.MotorTemp"]  # declared -40..200
    inside, above = SignalStats(3, 1.0, 20.0, 200.0, (20.0, 50.0, 200.0)), SignalStats(3, 1.0, 20.0, 210.0, (20.0, 50.0, 210.0))
    assert not outside(temp, inside) and outside(temp, above)
    inverted = dataclasses.replace(temp, minimum=4294967295.0, maximum=127.0)  # a DBC's -1 read as unsigned
    assert not outside(inverted, above)
    scan = LogScan({"MC_Drive.MotorTemp": above}, frames=3, span=3.0, start=0.0, alerts=[])
    text = format_catalogue([temp, inverted], scan)
    assert text.splitlines()[1].endswith("!") and text.splitlines()[2].split()[4:6] == ["4.29497e+09..127", "(inverted)"]
    assert text.endswith("1 signals went outside the range their DBC declares (marked !): MC_Drive.MotorTemp")

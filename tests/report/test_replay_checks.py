"""A replay says when its results make no sense: under half the data frames decoded is a warning
(first lines of the summary, summary.json 'warnings', the top unknown ids) and ``--strict`` makes
it exit status 3; a rule whose patterns match no signal is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telemetry.edge.config import load_config
from telemetry.edge.errors import ConfigError
from telemetry.tools.cli import main
from telemetry.tools.replay import replay
from telemetry.tools.signals import check_rules_match

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"

# A DBC of another car: one message, an id the sample drive never sends.
OTHER_DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 1234 Other: 8 ECU
 SG_ Speed : 0|16@1+ (0.1,0) [0|300] "km/h" ECU
"""

# 40 frames of the sample car (0x300, MC_Drive), 60 of ids it does not know, 5 error frames.
MIXED_LOG = "".join(
    [f"({1000 + i * 0.01:.6f}) can0 300#0000000000000000\n" for i in range(40)]
    + [f"({1001 + i * 0.01:.6f}) can0 {0x700 + i % 3:03X}#00\n" for i in range(60)]
    + [f"({1002 + i * 0.01:.6f}) can0 20000080#0000000000000000\n" for i in range(5)]
)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.log"
    path.write_text(MIXED_LOG)
    return path


def test_under_half_decoded_is_a_warning_with_the_top_unknown_ids(tmp_path, log):
    summary = replay(log, out_dir=tmp_path / "out", dbc=[SAMPLE / "solar_car.dbc"])
    assert summary["frames_decoded"] == 40 and summary["error_frames"] == 5
    (warning,) = summary["warnings"]
    assert warning.startswith("only 40 of 100 data frames decoded (40 %)")
    assert "0x700 (20 frames), 0x701 (20 frames), 0x702 (20 frames)" in warning
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["warnings"] == [warning]
    assert "WARNING: only 40 of 100" in (tmp_path / "out" / "report.html").read_text()


def test_strict_turns_warnings_into_exit_status_3(tmp_path, log, capsys):
    args = ["replay", str(log), "--dbc", str(SAMPLE / "solar_car.dbc"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("WARNING: only 40 of 100 data frames decoded")
    assert main([*args, "--strict"]) == 3
    assert "--strict: 1 warnings, exit status 3" in capsys.readouterr().err


def test_a_log_that_decodes_is_not_warned_about_even_when_strict(tmp_path, capsys):
    log = tmp_path / "good.log"
    log.write_text("".join(f"({1000 + i * 0.01:.6f}) can0 300#0000000000000000\n" for i in range(20)))
    assert main(["replay", str(log), "--dbc", str(SAMPLE / "solar_car.dbc"), "--out", str(tmp_path / "o"), "--strict"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_another_cars_dbc_decodes_nothing_and_says_so(tmp_path, log):
    dbc = tmp_path / "other.dbc"
    dbc.write_text(OTHER_DBC)
    summary = replay(log, out_dir=tmp_path / "out", dbc=[dbc])
    assert summary["frames_decoded"] == 0
    assert summary["warnings"][0].startswith("only 0 of 100 data frames decoded (0 %)")


def _config(tmp_path: Path, signals: str) -> Path:
    text = (SAMPLE / "vehicle.toml").read_text().replace('signals = "MC_Drive.MotorTemp"\nmax = 110.0',
                                                        f'signals = "{signals}"\nmax = 110.0', 1)
    assert signals in text
    path = tmp_path / "vehicle.toml"
    path.write_text(text)
    (tmp_path / "solar_car.dbc").write_bytes((SAMPLE / "solar_car.dbc").read_bytes())
    return path


def test_a_rule_that_matches_no_signal_is_refused_before_the_replay(tmp_path, log):
    config = _config(tmp_path, "MC_Drive.MotorTmp")
    with pytest.raises(ConfigError) as refused:
        replay(log, out_dir=tmp_path / "out", config=config)
    message = str(refused.value)
    assert "rule 'motor-overtemp'" in message and "'MC_Drive.MotorTmp' match no signal of solar_car.dbc" in message
    assert "(did you mean MC_Drive.MotorTemp, " in message  # the closest first
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_sample_configuration_passes_the_check_and_bus_rules_are_not_checked(tmp_path):
    cfg = load_config(SAMPLE / "vehicle.toml")
    assert any(r.kind == "bus" for r in cfg.rules)
    check_rules_match(cfg)  # no error
    check_rules_match(load_config(_config(tmp_path, "MC_*.Motor*")))


def test_the_cli_reports_a_rule_typo_as_one_line(tmp_path, log, capsys):
    config = _config(tmp_path, "MC_Driv.MotorTemp")
    assert main(["replay", str(log), "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: rule 'motor-overtemp': its signals 'MC_Driv.MotorTemp' match no signal")


def test_decode_errors_are_counted_per_id_with_the_reason_in_the_report(tmp_path):
    log = tmp_path / "short.log"
    log.write_text("(1000.000000) can0 300#00\n(1000.010000) can0 300#0000000000000000\n(1000.020000) can0 300#0011\n")
    summary = replay(log, out_dir=tmp_path / "out", dbc=[SAMPLE / "solar_car.dbc"])
    assert summary["decode_error_ids"] == {"0x300": 2}
    page = (tmp_path / "out" / "report.html").read_text()
    blob = json.loads(page.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0])
    assert blob["decode_errors"] == [{"id": "0x300", "frames": 2, "reason": "Wrong data size: 1 instead of 8 bytes"}]
    assert summary["time_base"] == "relative: the log's timestamps start near 0 (it carries no date)"


def test_a_log_in_milliseconds_read_as_seconds_is_quarantined_and_said_first(tmp_path, capsys):
    # GIVEN a candump whose logger wrote milliseconds where seconds belong (year 58,000) and two
    # garbage times, every frame of the sample car
    lines = [f"({1.7829e12 + i * 10:.3f}) can0 300#0000000000000000\n" for i in range(40)]
    lines += ["(1e100) can0 300#0000000000000000\n", "(-1e100) can0 300#0000000000000000\n"]
    log = tmp_path / "ms.log"
    log.write_text("".join(lines))
    args = ["replay", str(log), "--dbc", str(SAMPLE / "solar_car.dbc"), "--out", str(tmp_path / "out")]
    # THEN the replay runs, decodes none, and says why in its first line and in the counts
    assert main(args) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("WARNING: 42 frames quarantined for their timestamps (never decoded)")
    assert "past 2255" in first and "milliseconds or microseconds" in first
    assert "quarantined                42   frames" in out
    assert "no data frames" not in out  # the log has them: they were set aside
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_quarantined"] == 42 and summary["frames_decoded"] == 0 and summary["aggregates"] == 0
    assert summary["malformed_messages"] == {} and summary["handler_errors"] == []
    # AND --strict fails it
    assert main([*args, "--strict"]) == 3

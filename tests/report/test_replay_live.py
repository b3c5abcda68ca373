"""At a recorded pace (``--speed`` above 0) each alert is printed as it is heard, before the
summary; as fast as possible, only the summary lists them."""

from __future__ import annotations

from pathlib import Path

from telemetry.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def slice_of_the_drive(tmp_path: Path) -> Path:
    """Three seconds of the sample drive around the cell over-temperature (raised at 131.055 s)."""
    lines = [line for line in (SAMPLE / "drive.log").read_text().splitlines(keepends=True)
             if 1782900130 <= float(line[1:line.index(")")]) < 1782900133]
    path = tmp_path / "slice.log"
    path.write_text("".join(lines))
    return path


def test_alerts_print_as_they_happen_at_a_recorded_pace(tmp_path, capsys):
    log = slice_of_the_drive(tmp_path)
    args = ["replay", str(log), "--config", str(SAMPLE / "vehicle.toml"), "--out", str(tmp_path / "out")]
    assert main([*args, "--speed", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["t=", "1.056", "raised", "critical", "cell-overtemp", "BMS_CellTemps.Temp14", "value=56"]
    assert lines[1].startswith("Replayed ")
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("Replayed ")

"""The benchmark's whole-pipeline stage: every stage timed in each round, in turn, and reported
as its best with each round's ratio to that round's naive loop (no speed is asserted: figures)."""

from __future__ import annotations

from pathlib import Path

from telemetry.tools.bench import pipeline_stage
from telemetry.tools.replay import resolve_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def test_each_stage_is_timed_in_every_round_against_that_round_s_naive_loop(tmp_path, capsys):
    log = tmp_path / "start.log"  # the drive's first 5,000 frames, repeated to 12,000
    log.write_text("".join((SAMPLE / "drive.log").read_text().splitlines(keepends=True)[:5000]))
    config = str(SAMPLE / "vehicle.toml")
    pipeline_stage(log, resolve_config(config), config, [], 12_000, tmp_path, rounds=2)
    out = capsys.readouterr().out
    assert "15,000 frames (" in out and "best of 2 rounds" in out
    rows = [line.split() for line in out.splitlines() if line.endswith("x") and line.split()[-2].endswith("x")]
    assert len(rows) == 7, out
    assert "their threads on any CPU" in out
    for row in rows:
        *_, frames_per_s, best, first, second = row
        assert int(frames_per_s.replace(",", "")) > 0, row
        assert all(r.endswith("x") and float(r[:-1]) > 0 for r in (best, first, second)), row
    assert rows[0][-3:] == ["1.00x", "1.00x", "1.00x"]  # the naive loop against itself

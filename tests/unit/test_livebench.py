"""The live benchmark's accounting, on a tiny run: no timing thresholds, only consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from telemetry.edge.config import load_config
from telemetry.edge.decode import load_dbc
from telemetry.tools import livebench
from telemetry.tools.paths import SAMPLE


def test_violations_carry_distinct_values_beyond_the_limit() -> None:
    cfg = load_config(SAMPLE / "vehicle.toml")
    frames = livebench.drive_frames(SAMPLE / "drive.log")
    bad = livebench.violations(cfg, frames, "pack-overcurrent", 5)
    db = load_dbc(cfg.dbc[0])
    values = []
    for frame, value in bad:
        decoded = db.decode_message(frame.arbitration_id, bytes(frame.data), decode_choices=False)
        assert decoded["PackCurrent"] == pytest.approx(value)
        assert value > 120.0  # the rule's max
        values.append(value)
    assert len(set(values)) == 5


def test_a_rule_with_debounce_is_refused() -> None:
    cfg = load_config(SAMPLE / "vehicle.toml")
    with pytest.raises(SystemExit, match="without debounce"):
        livebench.violations(cfg, livebench.drive_frames(SAMPLE / "drive.log"), "cell-imbalance", 1)


def test_percentile_is_numpys_linear() -> None:
    values = [0.3, 0.1, 0.9, 0.4, 0.2, 0.25, 0.8]
    for q in (0, 50, 90, 99, 100):
        assert livebench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(livebench.percentile([], 50))


def test_a_tiny_live_run_in_its_own_process_accounts_for_every_frame() -> None:
    r = livebench.run_child(rate=400.0, seconds=0.3, warmup=0.2, alerts=3, spool="memory", grace=5.0)
    assert r.sent > 0 and r.read > 0
    assert r.sent == r.read + r.dropped and r.dropped >= 0
    assert r.sent_measured <= r.sent
    assert r.injected == 3
    # every violation raised its own alert, found in what the cloud transport was handed
    assert len(r.latencies) == 3 and r.unmatched == 0
    assert all(math.isfinite(x) and x > 0 for x in r.latencies)
    # the process's CPU includes the feeder thread's, measured over the same interval
    assert 0 <= r.feeder_cpu_seconds <= r.cpu_seconds
    assert math.isfinite(r.cpu_percent) and r.cpu_percent >= 0
    assert r.handler_errors == []

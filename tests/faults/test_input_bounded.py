"""Issue 11, point 14: bounded work per message.

A component processes a batch in memory linear in the batch, with a small constant: the detector's
table rules (spread: samples x signals; zscore: samples x baseline) build their tables in blocks.
The reader's batch limits keep every batch within what the recipes allow (docs/CONFIG.md).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from telemetry.edge.config import MAX_BATCH_FRAMES, load_config, parse_config
from telemetry.edge.detector import Detector
from telemetry.edge.errors import ConfigError
from telemetry.edge.messages import FlatBatch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "vehicles" / "sample" / "vehicle.toml")
BYTES_PER_SAMPLE = 400  # the batch itself is 24 bytes a sample; sorting and selecting copy it a few times


def big_batch(n: int) -> FlatBatch:
    """n samples over 100 s: 16 cell voltages (a spread rule over all, limits on each), the motor
    temperature and one MPPT input voltage (a zscore rule with a 150-sample baseline)."""
    names = tuple([f"BMS_CellVoltages.Cell{i}" for i in range(1, 17)] + ["MC_Drive.MotorTemp", "MPPT1_Status.InputVoltage"])
    rng = np.random.default_rng(5)
    share = np.array([0.5 / 16] * 16 + [0.1, 0.4])  # a busy MPPT: 40 % of the samples
    ids = np.sort(rng.choice(len(names), n, p=share))
    t = np.empty(n)
    for k in range(len(names)):
        mask = ids == k
        t[mask] = np.linspace(0.0, 100.0, int(mask.sum()))
    v = np.where(ids < 16, rng.normal(3.7, 0.01, n), rng.normal(60.0, 1.0, n))
    return FlatBatch(names, ids, t, v)


@pytest.mark.parametrize("n", [100_000])
def test_the_detector_works_on_a_big_batch_in_memory_linear_in_it(n):
    batch = big_batch(n)
    detector = Detector(CONFIG.rules, CONFIG.vehicle, CONFIG.detector)
    tracemalloc.start()
    try:
        detector.add(batch, {"read": n // 8}, 100.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BYTES_PER_SAMPLE * n, f"{peak / n:.0f} bytes a sample"


def test_the_reader_batch_limits_are_bounded():
    for key in ("batch_max_frames", "replay_batch_frames"):
        parse_config({"vehicle": "c", "reader": {key: MAX_BATCH_FRAMES}})
        with pytest.raises(ConfigError, match=f"{key}: at most {MAX_BATCH_FRAMES}"):
            parse_config({"vehicle": "c", "reader": {key: MAX_BATCH_FRAMES + 1}})

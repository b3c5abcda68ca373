"""Issue 11, point 7: one non-finite or overflowing value never destroys a window.

Values that are not finite, or so large that a window's sum or squares would overflow (a 64-bit
float signal carrying 1.7e308), are left out per sample where signals are decoded, and counted
per signal; every message stays serialisable (no NaN, no Infinity on the wire).
"""

from __future__ import annotations

import json
import struct

import can
import numpy as np

from telemetry.edge.aggregator import Aggregation
from telemetry.edge.config import AggregatorConfig
from telemetry.edge.decode import DbcDecoder
from telemetry.edge.frames import Frames
from telemetry.edge.messages import FlatBatch, SignalColumns
from telemetry.edge.reader import ReaderCore

DBC = '''VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 256 Sensor: 8 ECU
 SG_ Reading : 0|64@1- (1,0) [0|0] "" ECU

BO_ 257 Other: 8 ECU
 SG_ Value : 0|8@1+ (1,0) [0|255] "" ECU

SIG_VALTYPE_ 256 Reading : 2;
'''


def test_huge_and_non_finite_float_values_are_dropped_per_sample_and_counted_per_signal(tmp_path):
    # GIVEN a 64-bit float signal that carries 1.7e308, inf and NaN among sound readings, for 10 s
    dbc = tmp_path / "float.dbc"
    dbc.write_text(DBC)
    core = ReaderCore(DbcDecoder([dbc]), "test")
    values = [1.5, 1.7e308, 2.5, float("inf"), float("nan"), 3.5] * 20
    frames = []
    for i, value in enumerate(values):
        frames.append(can.Message(timestamp=i / 12, arbitration_id=0x100, data=struct.pack("<d", value), is_extended_id=False))
        frames.append(can.Message(timestamp=i / 12, arbitration_id=0x101, data=bytes([i % 200]) + bytes(7), is_extended_id=False))
    aggregation = Aggregation(AggregatorConfig(window_seconds=1.0), "car")
    out = []
    for start in range(0, len(frames), 24):  # one batch a second
        message = core.batch_message(Frames.from_messages(frames[start:start + 24]))
        out += aggregation.process(message)
    out += aggregation.process(core.end_message())
    # THEN every window is published, every one serialisable, with both signals
    assert len(out) == 10
    for message in out:
        wire = json.dumps(message.encode(), allow_nan=False)
        assert "Sensor.Reading" in wire and "Other.Value" in wire
        reading = message.signals["Sensor.Reading"]
        assert reading["max"] <= 3.5 and reading["count"] == 6
    # AND what was left out is counted, per signal
    assert core.faults()["dropped_values"] == {"Sensor.Reading": 60}


def test_an_aggregator_fed_an_overflowing_value_keeps_every_window():
    # GIVEN a batch (from any publisher) of ten windows in which one signal carries 1.7e308
    t = np.arange(0, 10, 0.1)
    batch = FlatBatch.from_columns({"A.big": SignalColumns(t, np.full(len(t), 1.7e308)),
                                    "A.ok": SignalColumns(t, np.ones(len(t)))})
    aggregation = Aggregation(AggregatorConfig(), "car")
    out = aggregation.add(batch, 10.0) + aggregation.flush()
    # THEN all ten windows close and serialise, the sound signal in each
    assert len(out) == 10
    for message in out:
        assert json.loads(json.dumps(message.encode(), allow_nan=False))
        assert message.signals["A.ok"]["count"] == 10
    assert aggregation.totals()["dropped_samples"] == len(t)

"""Limit rules: raise once on crossing, clear once on return, across batch boundaries."""

from __future__ import annotations

from helpers import columns, signals_event

from telemetry.config import LimitRule
from telemetry.rules import AnomalyDetectorComponent, LimitDetector, alert_id

HOT = LimitRule(name="cell-overtemp", signals="BMS.Temp*", max=55.0, severity="critical")
LOW = LimitRule(name="cell-low", signals="BMS.Cell*", min=3.0, max=4.25)


def test_no_alert_on_clean_data():
    det = LimitDetector((HOT, LOW), "car")
    out = det.add(columns(**{"BMS.Temp01": ([1, 2, 3], [30.0, 55.0, 54.9]), "BMS.Cell01": ([1, 2], [3.0, 4.25])}))
    assert out == []  # the limits themselves are inside


def test_raise_once_and_clear_once_across_batches():
    det = LimitDetector((HOT,), "car")
    a = det.add(columns(**{"BMS.Temp01": ([1, 2, 3], [50.0, 56.0, 58.0])}))
    b = det.add(columns(**{"BMS.Temp01": ([4, 5], [61.0, 57.0])}))
    c = det.add(columns(**{"BMS.Temp01": ([6, 7, 8], [54.0, 53.0, 52.0])}))
    assert [(m["state"], m["t"], m["value"]) for m in a] == [("raised", 2.0, 56.0)]
    assert b == []
    assert [(m["state"], m["t"], m["value"]) for m in c] == [("cleared", 6.0, 54.0)]
    # the clear carries the worst value of the whole episode, and the raise's id
    assert c[0]["detail"]["worst"] == 61.0
    assert c[0]["id"] == a[0]["id"] == alert_id("car", "cell-overtemp", "BMS.Temp01", 2.0)
    assert a[0]["severity"] == "critical" and a[0]["rule"] == "cell-overtemp" and a[0]["signal"] == "BMS.Temp01"


def test_several_episodes_in_one_batch_and_min_limits():
    det = LimitDetector((LOW,), "car")
    out = det.add(columns(**{"BMS.Cell07": ([1, 2, 3, 4, 5, 6], [3.5, 2.9, 2.8, 3.4, 4.3, 4.1])}))
    assert [(m["state"], m["t"]) for m in out] == [("raised", 2.0), ("cleared", 4.0), ("raised", 5.0), ("cleared", 6.0)]
    assert out[1]["detail"]["worst"] == 2.8 and out[3]["detail"]["worst"] == 4.3
    assert len({m["id"] for m in out}) == 2


def test_each_signal_has_its_own_state():
    det = LimitDetector((HOT,), "car")
    out = det.add(columns(**{"BMS.Temp01": ([1], [60.0]), "BMS.Temp02": ([1], [40.0]), "Other.Temp": ([1], [99.0])}))
    assert [m["signal"] for m in out] == ["BMS.Temp01"]
    assert set(det.active) == {("cell-overtemp", "BMS.Temp01")}


def test_out_of_order_samples_are_evaluated_in_time_order():
    det = LimitDetector((HOT,), "car")
    out = det.add(columns(**{"BMS.Temp01": ([3, 1, 2], [40.0, 60.0, 50.0])}))
    assert [(m["state"], m["t"]) for m in out] == [("raised", 1.0), ("cleared", 2.0)]


def test_component_publishes_alerts_and_survives_bad_messages(make_services):
    services = make_services(rules=[{"name": "hot", "signals": "BMS.Temp*", "max": 55.0}])
    comp = AnomalyDetectorComponent(services)
    comp.handle(signals_event(columns(**{"BMS.Temp01": ([1, 2], [50.0, 60.0])})))
    comp.handle({"v": 1, "kind": "signals", "span": {"start": 0, "end": 1}, "signals": {"BMS.Temp01": {"t": [1], "v": ["x"]}}})
    comp.handle(None)
    comp.handle(signals_event(columns(**{"BMS.Temp01": ([3], [40.0])})))
    assert [m["state"] for m in services.local.messages("telemetry/out")] == ["raised", "cleared"]
    assert comp.stats["malformed"] == 2

"""Every rule kind: raise, debounce, hysteresis, clear, and nothing on clean data; then what all
alerts share: one raise, throttled updates with the worst value, one clear, deterministic ids,
no flood from a flapping signal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.helpers import OnTheWire, columns, signals_event
from telemetry.edge.components import AnomalyDetectorComponent
from telemetry.edge.config import DetectorConfig, parse_config
from telemetry.edge.detector import Detector, alert_id
from telemetry.edge.errors import ConfigError
from telemetry.edge.messages import FlatBatch
from telemetry.edge.rules import RULES, LimitRule, RateRule, Rule


def rule(**kw) -> Rule:
    """A rule as the configuration loader builds (and checks) it."""
    kw.setdefault("name", "r")
    return parse_config({"vehicle": "car", "rules": [kw]}).rules[0]


def run(detector: OnTheWire, *batches) -> list[dict]:
    """batches: (columns, frames or None, now or None)"""
    out = []
    for cols, frames, now in batches:
        out += detector.add(cols, frames, now)
    return out


def series(name: str, t, v):
    return columns(**{name: (list(map(float, t)), list(map(float, v)))})


def states(out):
    return [(m["state"], m["t"]) for m in out]


def one_signal(r, t, v, *, cfg=None, chunks=1):
    det = OnTheWire(Detector((r,), "car", cfg or DetectorConfig(update_seconds=1e9)))
    t, v = np.asarray(t, float), np.asarray(v, float)
    out = []
    for idx in np.array_split(np.arange(len(t)), chunks):
        if len(idx):
            out += det.add(series("A.x", t[idx], v[idx]), None, float(t[idx][-1]))
    return out


# -- limit ---------------------------------------------------------------------------------------

LIMIT = dict(kind="limit", signals="A.*", min=0.0, max=10.0)


@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_limit_raises_and_clears_however_the_batches_fall(chunks):
    out = one_signal(rule(**LIMIT), range(10), [5, 11, 12, 9, 5, -1, -2, 3, 4, 5], chunks=chunks)
    assert states(out) == [("raised", 1), ("cleared", 3), ("raised", 5), ("cleared", 7)]
    assert out[1]["detail"]["worst"] == 12 and out[3]["detail"]["worst"] == -2


def test_limit_clean_data_including_the_limits_themselves():
    assert one_signal(rule(**LIMIT), range(5), [0, 10, 5, 0, 10]) == []


def test_limit_debounce_ignores_a_spike_shorter_than_min_duration():
    r = rule(**LIMIT, min_duration=1.0)
    assert one_signal(r, [0, 0.5, 0.9, 1.0, 2.0], [5, 11, 11, 5, 5]) == []  # 0.4 s over
    out = one_signal(r, [0, 0.5, 1.0, 1.5, 2.0], [5, 11, 11, 11, 5])
    assert states(out) == [("raised", 1.5), ("cleared", 2.0)]  # raised once over for 1 s


def test_limit_hysteresis_clears_only_well_inside():
    r = rule(**LIMIT, hysteresis=1.0)
    out = one_signal(r, range(6), [11, 9.5, 10.5, 9.2, 8.9, 5])
    assert states(out) == [("raised", 0), ("cleared", 4)]  # 9.5 and 9.2 are within the band


def test_clear_duration_waits_for_a_steady_return():
    r = rule(**LIMIT, clear_duration=2.0)
    out = one_signal(r, range(8), [11, 5, 11, 5, 5, 5, 5, 5])
    assert states(out) == [("raised", 0), ("cleared", 5)]


# -- rate ----------------------------------------------------------------------------------------

RATE = dict(kind="rate", signals="A.*", max_rate=10.0)


def test_rate_raises_on_a_jump_and_clears_when_steady():
    out = one_signal(rule(**RATE), [0, 0.1, 0.2, 0.3, 0.4], [0, 0.5, 5, 5.2, 5.3], chunks=2)
    assert states(out) == [("raised", 0.2), ("cleared", 0.3)]
    assert out[0]["value"] == pytest.approx(45.0)


def test_rate_clean_ramp_and_debounce_and_hysteresis():
    assert one_signal(rule(**RATE), np.arange(20) * 0.1, np.arange(20) * 0.9) == []  # 9 per second
    debounced = rule(**RATE, min_duration=0.25)
    assert one_signal(debounced, [0, 0.1, 0.2, 0.3], [0, 5, 5, 5]) == []
    out = one_signal(debounced, [0, 0.1, 0.2, 0.3, 0.4, 0.5], [0, 5, 10, 15, 20, 20])
    assert states(out) == [("raised", 0.4), ("cleared", 0.5)]
    hyst = rule(**RATE, hysteresis=5.0)
    out = one_signal(hyst, [0, 0.1, 0.2, 0.3], [0, 5, 5.8, 5.8])  # 8 per second is within the band
    assert states(out) == [("raised", 0.1), ("cleared", 0.3)]


# -- stale ---------------------------------------------------------------------------------------

STALE = dict(kind="stale", signals="MPPT2.*", timeout=2.0)


def stale_run(r, batches):
    det = OnTheWire(Detector((r,), "car", DetectorConfig(update_seconds=1e9)))
    out = []
    for now, seen in batches:
        cols = columns(**{"MPPT2.Vin": (seen, [1.0] * len(seen)), "MPPT2.Iin": (seen, [2.0] * len(seen))}) if seen else FlatBatch.empty()
        out += det.add(cols, None, now)
    return out


def test_stale_message_raises_once_per_message_and_clears_on_return():
    out = stale_run(rule(**STALE), [(1.0, [0.5, 1.0]), (2.0, []), (3.5, []), (4.0, [])] + [(5.0, [4.8, 5.0])])
    # silent from 1.0 s: stale from 3.0 s (known once event time passed it), back at 4.8 s
    assert states(out) == [("raised", 3.0), ("cleared", 4.8)]
    assert out[0]["signal"] == "MPPT2" and out[0]["value"] == 2.0 and out[0]["detail"]["silent_for"] is None
    assert out[1]["value"] == 0.0 and out[1]["detail"]["silent_for"] == pytest.approx(3.8)


def test_stale_gap_inside_one_batch_and_clean_and_debounce():
    out = stale_run(rule(**STALE), [(10.0, [0.0, 0.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])])
    assert states(out) == [("raised", 2.5), ("cleared", 4.0)]
    assert stale_run(rule(**STALE), [(float(i), [float(i)]) for i in range(10)]) == []
    debounced = rule(**STALE, min_duration=1.0)
    assert stale_run(debounced, [(0.0, [0.0]), (2.5, []), (2.9, [2.9])]) == []
    out = stale_run(debounced, [(0.0, [0.0]), (2.5, []), (3.5, []), (3.9, [3.9])])
    assert states(out) == [("raised", 3.0), ("cleared", 3.9)]  # stale from 2.0 s, for 1.0 s more


def test_stale_clear_duration_waits_until_the_node_is_back_for_good():
    r = rule(**STALE, clear_duration=1.0)
    out = stale_run(r, [(0.0, [0.0]), (3.0, []), (3.2, [3.2]), (5.5, []), (6.0, [6.0]), (6.5, [6.5]), (7.5, [7.5])])
    # back at 3.2 s but silent again until 6.0 s: one alert, cleared once steady for 1 s
    assert states(out) == [("raised", 2.0), ("cleared", 7.5)]


def test_stale_per_signal_scope_and_hysteresis_is_harmless():
    r = rule(**STALE, scope="signal", hysteresis=0.5)
    det = OnTheWire(Detector((r,), "car"))
    det.add(columns(**{"MPPT2.Vin": ([0.0], [1.0]), "MPPT2.Iin": ([0.0], [1.0])}), None, 0.0)
    out = det.add(columns(**{"MPPT2.Vin": ([3.0], [1.0])}), None, 3.0)
    # Vin was silent from 0 s to 3 s: raised at 2 s, cleared when it came back; Iin is still silent
    assert sorted((m["t"], m["signal"], m["state"]) for m in out) == [
        (2.0, "MPPT2.Iin", "raised"), (2.0, "MPPT2.Vin", "raised"), (3.0, "MPPT2.Vin", "cleared")]


# -- spread --------------------------------------------------------------------------------------

SPREAD = dict(kind="spread", signals="Cells.V*", max_spread=0.1)


def cells(t, values):
    return {f"Cells.V{i}": ([t], [v]) for i, v in enumerate(values)}


def spread_run(r, snapshots):
    det = OnTheWire(Detector((r,), "car", DetectorConfig(update_seconds=1e9)))
    out = []
    for t, values in snapshots:
        out += det.add(columns(**cells(t, values)), None, t)
    return out


def test_spread_raises_on_imbalance_and_names_the_cells():
    out = spread_run(rule(**SPREAD), [(0, [3.9, 3.92, 3.91]), (1, [3.9, 4.05, 3.91]), (2, [3.9, 3.95, 3.91])])
    assert states(out) == [("raised", 1), ("cleared", 2)]
    assert out[0]["signal"] == "r" and out[0]["value"] == pytest.approx(0.15)
    assert out[0]["detail"]["highest"] == "Cells.V1" and out[0]["detail"]["lowest"] == "Cells.V0"


def test_spread_uses_the_latest_value_of_cells_not_in_this_batch():
    det = OnTheWire(Detector((rule(**SPREAD),), "car"))
    det.add(columns(**cells(0, [3.9, 3.9, 3.9])), None, 0)
    out = det.add(columns(**{"Cells.V2": ([1.0], [3.75])}), None, 1)  # only one cell reports
    assert states(out) == [("raised", 1.0)]


def test_spread_clean_debounce_and_hysteresis():
    assert spread_run(rule(**SPREAD), [(i, [3.9, 3.95, 3.99]) for i in range(5)]) == []
    assert spread_run(rule(**SPREAD, min_duration=1.5), [(0, [3.9, 4.1]), (1, [3.9, 4.1]), (2, [3.9, 3.9])]) == []
    out = spread_run(rule(**SPREAD, hysteresis=0.05), [(0, [3.9, 4.1]), (1, [3.9, 3.97]), (2, [3.9, 3.94])])
    assert states(out) == [("raised", 0), ("cleared", 2)]


def spread_reference(batches):
    """The spread rule's metric, sample by sample: each signal's latest value; after the last
    sample of each instant (equal times, across batches in order) with at least two signals
    known, max minus min, how many, and the highest and lowest (first by name among equals)."""
    latest, out = {}, []
    for batch in batches:
        samples = sorted(((float(t), name, float(v)) for name, (ts, vs) in batch.items() for t, v in zip(ts, vs)),
                         key=lambda s: s[0])  # stable: a signal's samples of one instant keep their order
        for i, (t, name, v) in enumerate(samples):
            latest[name] = v
            if (i + 1 < len(samples) and samples[i + 1][0] == t) or len(latest) < 2:
                continue
            names = sorted(latest)
            high = max(names, key=lambda n: latest[n])  # max/min keep the first of equals
            low = min(names, key=lambda n: latest[n])
            out.append((t, latest[high] - latest[low], len(latest), high, low))
    return out


@st.composite
def cell_batches(draw):
    """Batches of cell samples: several per instant (a frame carries several cells), the same cell
    twice in an instant now and then, ties in value, cells that report late or never again."""
    n_batches = draw(st.integers(1, 4))
    t, out = 0.0, []
    for _ in range(n_batches):
        batch: dict[str, tuple[list[float], list[float]]] = {}
        for _ in range(draw(st.integers(0, 12))):
            t += draw(st.sampled_from([0.0, 0.0, 0.1, 0.25]))
            for cell in draw(st.lists(st.sampled_from(["Cells.V0", "Cells.V1", "Cells.V2", "Cells.V3"]),
                                      min_size=1, max_size=4)):
                ts, vs = batch.setdefault(cell, ([], []))
                ts.append(t)
                vs.append(draw(st.sampled_from([3.90, 3.95, 4.00, 4.05, 4.2])))
        out.append(batch)
    return out


@given(cell_batches())
@settings(max_examples=200, deadline=None)
def test_the_spread_metric_is_the_sample_by_sample_one(batches):
    evaluator = rule(**SPREAD).evaluator()
    got = []
    for batch in batches:
        m = evaluator.metrics(columns(**batch), {}, 0.0, True)
        if m is not None:
            names = m.labels["highest"]
            got += [(t, x, int(k), names[h], names[lo]) for t, x, k, h, lo in
                    zip(m.t.tolist(), m.value.tolist(), m.extra["signals"], m.extra["highest"], m.extra["lowest"])]
    want = spread_reference(batches)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2:] for g in got] == [w[2:] for w in want]
    assert np.allclose([g[1] for g in got], [w[1] for w in want])


# -- statistical (robust z-score) ----------------------------------------------------------------

ZSCORE = dict(kind="zscore", signals="A.*", threshold=6.0, baseline=50, warmup=20)


def noisy(n, seed=1):
    return 100.0 + np.random.default_rng(seed).normal(0, 1.0, n)


def test_zscore_raises_on_an_outlier_after_warmup_and_clears():
    v = noisy(80)
    v[60:63] = 120.0
    out = one_signal(rule(**ZSCORE), np.arange(80) * 0.1, v, chunks=5)
    assert states(out) == [("raised", pytest.approx(6.0)), ("cleared", pytest.approx(6.3))]
    assert out[0]["detail"]["z"] > 6


def test_zscore_is_silent_during_warmup_and_on_clean_noise():
    v = noisy(300, seed=7)
    v[5] = 500.0  # before warm-up: no baseline to judge it against
    assert one_signal(rule(**ZSCORE), np.arange(300) * 0.1, v, chunks=9) == []


def test_zscore_debounce_and_hysteresis():
    v = noisy(80)
    v[60] = 120.0
    assert one_signal(rule(**ZSCORE, min_duration=0.15), np.arange(80) * 0.1, v) == []
    v = noisy(80)
    v[60:62] = 120.0
    v[62] = 104.5  # |z| about 4.5: inside the threshold, but not by the hysteresis margin of 3
    out = one_signal(rule(**ZSCORE, hysteresis=3.0), np.arange(80) * 0.1, v)
    assert states(out) == [("raised", pytest.approx(6.0)), ("cleared", pytest.approx(6.3))]


def test_zscore_min_scale_keeps_a_quantised_signal_quiet():
    v = np.r_[np.full(40, 50.0), [51.0], np.full(10, 50.0)]
    assert states(one_signal(rule(**ZSCORE), np.arange(51), v))[0][0] == "raised"  # MAD 0: any step is infinite
    assert one_signal(rule(**ZSCORE, min_scale=1.0), np.arange(51), v) == []


# -- bus health ----------------------------------------------------------------------------------

BUS = dict(kind="bus", counter="error", max_per_second=2.0, window_seconds=2.0)


def bus_run(r, counts):
    det = OnTheWire(Detector((r,), "car", DetectorConfig(update_seconds=1e9)))
    out = []
    for i, n in enumerate(counts):
        out += det.add(FlatBatch.empty(), {"read": 100, "error": n}, 0.5 * (i + 1))
    return out


def test_bus_error_rate_raises_and_clears():
    out = bus_run(rule(**BUS), [0, 0, 3, 3, 0, 0, 0, 0])
    assert states(out) == [("raised", 2.0), ("cleared", 3.5)]
    assert out[0]["signal"] == "bus.error" and out[0]["value"] == pytest.approx(3.0)


def test_bus_clean_debounce_and_hysteresis():
    assert bus_run(rule(**BUS), [1, 0, 1, 0, 1, 0]) == []
    # one burst keeps the windowed rate up for the window's 2 s: a longer debounce ignores it...
    assert bus_run(rule(**BUS, min_duration=2.5), [0, 5, 0, 0, 0, 0, 0]) == []
    # ...and still catches errors that go on
    assert states(bus_run(rule(**BUS, min_duration=2.5), [5] * 8)) == [("raised", 3.0)]
    out = bus_run(rule(**BUS, hysteresis=1.0), [6, 0, 0, 1, 0, 0, 0])  # 2.5 then 0.5 per second
    assert states(out)[0] == ("raised", 0.5) and states(out)[1][0] == "cleared"


def test_bus_rule_reads_the_counters_of_a_signals_message(make_services):
    services = make_services(rules=[{"name": "errors", **BUS}])
    comp = AnomalyDetectorComponent(services)
    event = signals_event(columns(**{"A.x": ([1.0], [1.0])}))
    event["frames"]["error"] = 10
    comp.handle(event)
    assert [m["signal"] for m in services.local.messages("telemetry/out")] == ["bus.error"]


# -- rules built by hand, through the kind classes ------------------------------------------------


def test_a_rule_built_through_its_class_is_the_one_the_loader_builds():
    by_hand = LimitRule(name="r", signals=("A.*",), min=0.0, max=10.0)
    by_hand.check("here")
    assert by_hand == rule(**LIMIT)
    out = one_signal(by_hand, range(4), [5, 11, 9, 5])
    assert states(out) == [("raised", 1), ("cleared", 2)] and out[0]["rule_kind"] == "limit"


@pytest.mark.parametrize("kind", list(RULES))
def test_check_refuses_a_hand_built_rule_without_its_required_keys(kind):
    with pytest.raises(ConfigError, match=f"^here: a {kind} rule needs|^here: 'counter' must be one of"):
        RULES[kind](name="r", signals=("A.*",)).check("here")


def test_each_detector_gets_its_own_evaluator_from_the_same_rule():
    jump = RateRule(name="jump", signals=("A.*",), max_rate=10.0)
    first, second = OnTheWire(Detector((jump,), "car")), OnTheWire(Detector((jump,), "car"))
    assert first.add(series("A.x", [0.0], [0.0]), None, 0.0) == []
    # the second detector has not seen the sample at 0 s: no previous value, no rate, no alert
    assert second.add(series("A.x", [0.1], [5.0]), None, 0.1) == []
    assert states(first.add(series("A.x", [0.1], [5.0]), None, 0.1)) == [("raised", 0.1)]


# -- what all alerts share -----------------------------------------------------------------------


def test_updates_carry_the_worst_value_at_most_every_update_seconds():
    det = OnTheWire(Detector((rule(**LIMIT),), "car", DetectorConfig(update_seconds=5.0)))
    out = []
    for second in range(20):
        out += det.add(series("A.x", [second], [11 + second]), None, float(second))
    kinds = [(m["state"], m["t"]) for m in out]
    assert kinds == [("raised", 0), ("update", 5), ("update", 10), ("update", 15)]
    assert [m["detail"]["worst"] for m in out] == [11, 16, 21, 26]
    assert len({m["id"] for m in out}) == 1


def test_ids_are_deterministic_and_shared_by_raise_and_clear():
    out = one_signal(rule(**LIMIT), [1.5, 2.5], [11, 5])
    assert out[0]["id"] == out[1]["id"] == alert_id("car", "r", "A.x", 1.5)
    again = one_signal(rule(**LIMIT), [1.5, 2.5], [11, 5])
    assert [m["id"] for m in again] == [m["id"] for m in out]


def test_a_flapping_signal_does_not_flood_the_link():
    cfg = DetectorConfig(update_seconds=1e9, flap_raises=3, flap_window_seconds=60, flap_hold_seconds=30)
    t = np.arange(0, 120, 1.0)
    v = np.where(t < 60, np.where(t % 2 == 0, 11.0, 5.0), 5.0)  # over, under, over ... for a minute
    out = one_signal(rule(**LIMIT), t, v, cfg=cfg, chunks=12)
    # three raises and clears, then the alert holds until it has been clean for 30 s
    assert [m["state"] for m in out] == ["raised", "cleared", "raised", "cleared", "raised", "cleared"]
    assert out[-1]["t"] == 59 + 30 and out[-1]["detail"]["flapping"] is True


def test_alerts_for_several_rules_come_out_in_time_order():
    det = OnTheWire(Detector((rule(**LIMIT), rule(**RATE, name="jump")), "car"))
    out = det.add(series("A.x", [0, 0.1, 0.2], [5, 12, 12]), None, 0.2)
    assert [(m["rule"], m["state"], m["t"]) for m in out] == [("r", "raised", 0.1), ("jump", "raised", 0.1), ("jump", "cleared", 0.2)]


# -- every kind together: the alerts do not depend on the batches ------------------------------------

ALL_KINDS = [
    dict(name="lim", kind="limit", signals="A.x", min=-5.0, max=5.0, hysteresis=0.5),
    dict(name="lim-slow", kind="limit", signals="B.*", max=3.0, min_duration=0.3, clear_duration=0.2),
    dict(name="jump", kind="rate", signals="A.*", max_rate=40.0),
    dict(name="quiet", kind="stale", signals="B.*", timeout=0.5),
    dict(name="quiet-sig", kind="stale", signals="A.*", timeout=0.4, scope="signal", min_duration=0.2,
         clear_duration=0.3),
    dict(name="spread", kind="spread", signals="A.*", max_spread=6.0),
    dict(name="z", kind="zscore", signals="A.y", threshold=3.0, baseline=10, warmup=5),
    dict(name="errors", kind="bus", counter="error", max_per_second=4.0, window_seconds=1.0),
]


@st.composite
def streams(draw):
    """Samples of three signals with gaps and bursts, error frames, and cut points."""
    n = draw(st.integers(5, 120))
    steps = draw(st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 0.7]), min_size=n, max_size=n))
    t = np.cumsum(steps) + 100.0
    names = draw(st.lists(st.sampled_from(["A.x", "A.y", "B.z"]), min_size=n, max_size=n))
    v = draw(st.lists(st.floats(-9, 9, allow_nan=False).map(lambda x: round(x, 2)), min_size=n, max_size=n))
    errors = sorted(draw(st.lists(st.floats(100.0, float(t[-1])), max_size=30)))
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=8)))) if n > 1 else []
    cuts = [c for c in cuts if t[c] != t[c - 1]]  # the reader never cuts inside an instant (batch_ends)
    return t, np.array(names), np.array(v, float), np.array(errors, float), cuts


def _batches(t, names, v, errors, cuts):
    """The stream cut where told, each batch as the reader makes it: its samples, its error frames
    (counted and timed) and its event time, the latest frame's."""
    bounds = [0, *cuts, len(t)]
    out = []
    for a, b in itertools.pairwise(bounds):
        lo = -np.inf if a == 0 else t[a]
        hi = np.inf if b == len(t) else t[b]
        errs = errors[(errors >= lo) & (errors < hi)]
        cols = {n: (t[a:b][names[a:b] == n].tolist(), v[a:b][names[a:b] == n].tolist()) for n in ("A.x", "A.y", "B.z")}
        batch = columns(**{n: c for n, c in cols.items() if c[0]})
        now = float(max(t[b - 1], errs.max() if len(errs) else -np.inf))
        out.append((batch, {"error": len(errs)}, now, {"error": errs}))
    return out


@given(streams())
@settings(max_examples=150, deadline=None)
def test_every_kind_decides_the_same_however_the_batches_fall(stream):
    t, names, v, errors, cuts = stream
    rules = tuple(rule(**r) for r in ALL_KINDS)

    def alerts(cut_at):
        det = Detector(rules, "car", DetectorConfig(update_seconds=0.5, flap_raises=3, flap_window_seconds=2.0,
                                                    flap_hold_seconds=0.5))
        out = []
        for batch, frames, now, events in _batches(t, names, v, errors, cut_at):
            out += [a.encode() for a in det.add(batch, frames, now, events)]
        return sorted(out, key=lambda a: (a["t"], a["id"], a["state"]))

    assert alerts(cuts) == alerts([])

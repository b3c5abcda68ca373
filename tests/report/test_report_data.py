"""What the report computes before drawing: series cut to buckets without losing extremes,
alerts as intervals, where their marks go, the condensed console list and the progress line."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from telemetry.edge.messages import Alert, Window
from telemetry.tools.progress import Progress, estimate_frames
from telemetry.tools.replay import format_alerts
from telemetry.tools.report import _drawn_on, alert_intervals, bucketed, write_report
from telemetry.tools.taps import ReplayTaps


def signal_series(windows: list[Window], max_points: int = 400) -> dict[str, dict[str, list]]:
    """The series of windows taken one by one, as the report drew them before it read the
    payloads' columns: the reference ``payload_series`` must equal, and what the buckets' tests cut."""
    rows: dict[str, list[tuple[float, ...]]] = {}
    for w in windows:
        for name, stats in w.signals.items():
            mean = stats.get("mean", stats.get("last", math.nan))
            lo, hi = stats.get("min", mean), stats.get("max", mean)
            rows.setdefault(name, []).append((w.start, w.end, float(lo), float(hi), float(mean), float(stats.get("count", 1))))
    return {name: bucketed(np.array(sorted(rows[name]), dtype=np.float64), max_points) for name in sorted(rows)}


def window(start: float, stats: dict) -> Window:
    return Window("car", int(start), "default", start, start + 1.0, stats)


def alert(state: str, t: float, *, id_: str = "a1", worst: float | None = None, signal: str = "M.S",
          rule: str = "hot") -> Alert:
    return Alert("car", id_, state, rule, "limit", signal, "critical", t, 1.0, {"worst": worst})


def test_series_are_cut_to_buckets_keeping_min_max_and_the_weighted_mean():
    windows = [window(float(i), {"M.S": {"count": 1 + i % 2, "min": -i, "max": i, "mean": float(i)}}) for i in range(1000)]
    s = signal_series(windows, max_points=100)["M.S"]
    assert len(s["t0"]) == 100
    assert min(s["min"]) == -999 and max(s["max"]) == 999
    assert s["t0"][0] == 0.0 and s["t1"][-1] == 1000.0
    assert sum(s["n"]) == sum(1 + i % 2 for i in range(1000))
    # the first bucket: windows 0..9, counts 1,2,1,2...: mean weighted by count
    assert s["mean"][0] == pytest.approx(sum(i * (1 + i % 2) for i in range(10)) / 15)


def test_short_series_are_kept_window_by_window_and_absolute_times_keep_their_digits():
    windows = [window(1782900000.0 + i, {"M.S": {"count": 2, "min": 1.0, "max": 2.0, "mean": 1.5}}) for i in range(3)]
    s = signal_series(windows)["M.S"]
    assert s["t0"] == [1782900000.0, 1782900001.0, 1782900002.0]


def test_an_alert_is_one_interval_from_raised_to_cleared_with_its_updates_and_worst():
    alerts = [alert("raised", 10.0, worst=None), alert("update", 20.0, worst=7.0), alert("cleared", 25.0, worst=9.0),
              alert("raised", 30.0, id_="a2")]
    first, second = alert_intervals(alerts, t_end=40.0)
    assert (first["raised"], first["cleared"], first["updates"], first["worst"], first["duration"]) == (10.0, 25.0, 1, 9.0, 15.0)
    assert (second["cleared"], second["end"], second["duration"]) == (None, 40.0, 10.0)


def test_marks_go_on_the_signal_the_message_or_the_rules_patterns():
    plotted = ["A.x", "A.y", "B.x"]
    assert _drawn_on("A.x", ["*"], plotted) == ["A.x"]
    assert _drawn_on("A", ["A.*"], plotted) == ["A.x", "A.y"]  # a stale message
    assert _drawn_on("spread-rule", ["*.x"], plotted) == ["A.x", "B.x"]
    assert _drawn_on("bus.error", ["bus.*"], plotted) == []


def test_the_console_list_is_condensed_per_rule_and_verbose_lists_every_message():
    alerts = [alert("raised", 10.0), *(alert("update", 10.0 + i, worst=5.0 + i) for i in range(1, 6)),
              alert("cleared", 20.0, worst=11.0), alert("raised", 30.0, id_="a2", signal="M.T")]
    lines = format_alerts(alerts, t0=0.0, t_end=35.0)
    assert lines[1:] == [
        "  hot (critical): 2 alerts, 5 updates",
        "    t=    10.0  M.S                              cleared t=20.0 (10.0 s), worst 11",
        "    t=    30.0  M.T                              still active at the end (5.0 s), worst 1",
    ]
    verbose = format_alerts(alerts, t0=0.0, t_end=35.0, verbose=True)
    assert len(verbose) == 1 + len(alerts) and sum("update" in line for line in verbose) == 5


def test_write_report_embeds_the_data_so_that_nothing_ends_the_script_early(tmp_path):
    data = {"title": "t", "series": {"M.</script>": {}}, "text": "</script><!--"}
    page = write_report(tmp_path / "r.html", data).read_text()
    assert page.count("</script>") == 2  # the data's and the code's own closing tags
    blob = page.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob) == data
    with pytest.raises(ValueError):
        write_report(tmp_path / "nan.html", {"x": math.nan})  # never invalid JSON in the page


def test_progress_estimates_the_share_of_a_text_log_and_shows_frames_and_alerts(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("(1.000000) can0 300#0000000000000000\n" * 1000)
    assert estimate_frames(log) == 1000
    assert estimate_frames(tmp_path / "x.blf") is None
    taps = ReplayTaps()
    taps.frames_read = 250
    taps.alerts.append(alert("raised", 1.0))
    line = Progress(taps, log, io.StringIO()).line(elapsed=0.5)
    assert line.startswith("[#####...............] ~ 25 %")
    assert "250 frames" in line and "500 frames/s" in line and line.endswith("1 alert messages")


def test_progress_writes_nothing_for_a_short_replay():
    stream = io.StringIO()
    progress = Progress(ReplayTaps(), __file__, stream, delay=60.0).start()
    progress.stop()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("max_points", [400, 7])
def test_series_from_the_payloads_columns_equal_the_series_of_their_windows(max_points):
    """The report draws from the aggregates payloads' columns (no object per window and signal):
    the same series as from the windows read back from them, with buckets or without."""
    import threading
    from pathlib import Path

    from telemetry.edge.aggregator import Aggregation, dbc_resolutions
    from telemetry.edge.config import load_config
    from telemetry.edge.decode import DbcDecoder
    from telemetry.edge.messages import EndOfStream
    from telemetry.edge.reader import ReaderCore
    from telemetry.edge.sources import LogSource
    from telemetry.tools.report import payload_series

    sample = Path(__file__).resolve().parents[2] / "vehicles" / "sample"
    cfg = load_config(sample / "vehicle.toml")
    core = ReaderCore(DbcDecoder(cfg.dbc), "can")
    aggregation = Aggregation(cfg.aggregator, cfg.vehicle, res=dbc_resolutions(cfg.dbc), max_bytes=cfg.uploader.max_payload_bytes)
    payloads = []
    for chunk in LogSource(sample / "drive.log").frame_batches(threading.Event(), 4096):
        payloads += [a.payload for a in aggregation.publish(core.batch_message(chunk))]
    payloads += [a.payload for a in aggregation.publish(EndOfStream("can", 0, None, {}))]
    assert len(payloads) > 10 and len({p.group for p in payloads}) >= 3
    windows = [Window.decode(w) for p in payloads for w in p.window_messages()]
    want = signal_series(windows, max_points=max_points)
    got = payload_series(payloads[::-1], max_points=max_points)  # in whatever order they were heard
    assert list(got) == list(want) and len(got) > 50
    assert got == want

"""report.html of the sample drive, opened in a real headless chromium: every aggregated signal has
its plot, alert intervals are drawn on the plots of their signals (and only there), the timeline
has a lane per rule, the search box filters, and the page loads nothing and logs no error."""

from __future__ import annotations

import json

import pytest

from support.browser import open_report


@pytest.fixture(scope="module")
def page(sample_replay, browser):
    opened = open_report(browser, sample_replay.out / "report.html")
    yield opened
    opened.page.close()


def test_the_page_renders_without_errors_and_without_a_network(page, sample_replay):
    assert page.errors == []
    assert page.requests == [(sample_replay.out / "report.html").resolve().as_uri()]
    assert page.page.title() == "Replay of drive.log"


def test_every_aggregated_signal_has_a_plot_with_a_band_and_a_mean_line(page, sample_replay):
    aggregated = {name for w in sample_replay.taps.windows for name in w.signals}
    assert len(aggregated) > 90
    shown = set(page.page.eval_on_selector_all(".plot", "ps => ps.map(p => p.dataset.signal)"))
    assert shown == aggregated
    # every plot drew a non-empty band and mean line
    empty = page.page.eval_on_selector_all(
        ".plot", "ps => ps.filter(p => !p.querySelector('path.band').getAttribute('d') || "
        "!p.querySelector('path.mean').getAttribute('d')).map(p => p.dataset.signal)")
    assert empty == []
    # grouped by message
    groups = page.page.eval_on_selector_all("details.group", "ds => ds.map(d => d.dataset.group)")
    assert set(groups) == {name.split(".")[0] for name in aggregated}


def _marks(page, signal):
    return page.page.eval_on_selector_all(
        f'.plot[data-signal="{signal}"] .alert-mark', "ms => ms.map(m => m.dataset.rule)")


def test_alert_intervals_are_drawn_on_the_plots_of_their_signals(page, sample_replay):
    raised = {(a.rule, a.signal) for a in sample_replay.taps.alerts if a.state == "raised"}
    assert ("cell-overtemp", "BMS_CellTemps.Temp14") in raised
    assert _marks(page, "BMS_CellTemps.Temp14") == ["cell-overtemp"]
    assert _marks(page, "BMS_CellVoltages.Cell27").count("cell-undervoltage") == 1
    assert "motor-temp-jump" in _marks(page, "MC_Drive.MotorTemp")
    # a spread rule's alert (keyed by the rule) is drawn on every signal its patterns match
    assert _marks(page, "BMS_CellVoltages.Cell01").count("cell-imbalance") == 2
    # a stale message: on its signals
    assert "mppt-offline" in _marks(page, "MPPT2_Status.InputVoltage")
    # and nowhere else
    assert _marks(page, "MC_Velocity.VehicleSpeed") == []
    assert _marks(page, "BMS_CellTemps.Temp01") == []
    assert "mppt-offline" not in _marks(page, "MPPT1_Status.InputVoltage")


def test_the_overtemp_mark_spans_raised_to_cleared(page, sample_replay):
    alerts = [a for a in sample_replay.taps.alerts if a.rule == "cell-overtemp"]
    raised = next(a.t for a in alerts if a.state == "raised")
    cleared = next(a.t for a in alerts if a.state == "cleared")
    box = page.page.eval_on_selector(
        '.plot[data-signal="BMS_CellTemps.Temp14"] .alert-mark',
        "m => [+m.getAttribute('x'), +m.getAttribute('width')]")
    t0, t1 = sample_replay.summary["event_start"], sample_replay.summary["event_end"]
    left, width = 62, 640 - 62 - 6  # the plot's margins (report_template.html)
    assert box[0] == pytest.approx(left + width * (raised - t0) / (t1 - t0), abs=0.2)
    assert box[1] == pytest.approx(width * (cleared - raised) / (t1 - t0), abs=0.3)


def test_the_timeline_has_a_lane_per_rule_and_a_row_per_alert(page, sample_replay):
    alerts = sample_replay.taps.alerts
    rules = page.page.eval_on_selector_all(".alert-interval", "rs => rs.map(r => r.dataset.rule)")
    assert sorted(rules) == sorted(a.rule for a in alerts if a.state == "raised")
    rows = page.page.eval_on_selector_all("#alert-table tr.alert-row", "rs => rs.map(r => r.cells[0].textContent)")
    assert len(rows) == sample_replay.summary["alerts_raised"]
    still_active = page.page.eval_on_selector_all(
        "#alert-table tr.alert-row", "rs => rs.filter(r => r.cells[4].textContent === 'still active').length")
    assert still_active == sample_replay.summary["alerts_active_at_end"]


def test_the_search_box_filters_by_name_or_pattern(page):
    p = page.page
    p.fill("#search", "temp14")
    assert p.eval_on_selector_all(".plot", "ps => ps.filter(p => p.offsetParent).map(p => p.dataset.signal)") == [
        "BMS_CellTemps.Temp14"]
    p.fill("#search", "MPPT*_Status.Temp*")
    visible = p.eval_on_selector_all(".plot", "ps => ps.filter(p => p.offsetParent).map(p => p.dataset.signal)")
    assert visible == [f"MPPT{i}_Status.Temperature" for i in (1, 2, 3)]
    assert p.text_content("#shown").startswith("3 of ")
    p.fill("#search", "*Cell2[!0-5]")
    visible = p.eval_on_selector_all(".plot", "ps => ps.filter(p => p.offsetParent).map(p => p.dataset.signal)")
    assert visible == [f"BMS_CellVoltages.Cell2{i}" for i in (6, 7, 8, 9)]
    p.fill("#search", "Cell[")
    assert page.errors == [] and p.text_content("#shown").startswith("0 of ")
    p.fill("#search", "")
    assert p.eval_on_selector_all(".plot", "ps => ps.filter(p => p.offsetParent).length") > 90


def test_frames_unknown_ids_and_cloud_bytes_are_shown(page, sample_replay):
    p = page.page
    unknown = p.eval_on_selector_all("#unknown-table tr", "rs => rs.slice(1).map(r => [r.cells[0].textContent, +r.cells[1].textContent])")
    assert unknown == [list(kv) for kv in sample_replay.summary["unknown_ids"].items()]
    first = p.eval_on_selector_all("#frames-table tr", "rs => [...rs[1].cells].map(c => c.textContent)")
    assert first == ["0x300", "MC_Drive", "4800"] or first == ["0x301", "MC_Velocity", "4800"]
    assert p.locator("#frames-table tr").count() == 1 + 10  # the sample car's ten messages
    d = p.get_attribute(".cloud-line.given", "d")
    # a step per message handed to the uploader: each aggregates payload (a publish period) and alert
    assert d and d.count("V") == sample_replay.summary["aggregates"] + sample_replay.summary["alerts"] > 20
    assert str(sample_replay.summary["cloud_bytes"]) in p.text_content("#cloud")


def test_a_hostile_signal_name_cannot_break_out_of_the_page(tmp_path, browser):
    from telemetry.tools.report import write_report

    data = json.loads(json.dumps({
        "title": "x</script><script>alert(1)</script>", "summary": {}, "summary_text": "</script>", "warnings": ["<b>w</b>"],
        "t0": 0.0, "t_end": 2.0, "time_base": "", "units": {"M.</script>": "<i>"},
        "series": {"M.</script>": {"t0": [0.0, 1.0], "t1": [1.0, 2.0], "min": [0, 1], "max": [1, 2], "mean": [0.5, 1.5], "n": [1, 1]}},
        "alerts": [], "cloud": {"t": [], "bytes": [], "sent_t": [], "sent_bytes": []}, "frames_by_message": {},
        "unknown_ids": {}, "decode_errors": [], "bad_records": []}))
    opened = open_report(browser, write_report(tmp_path / "report.html", data))
    try:
        assert opened.errors == []
        assert opened.page.eval_on_selector_all(".plot", "ps => ps.map(p => p.dataset.signal)") == ["M.</script>"]
        assert opened.page.text_content(".warning") == "<b>w</b>"
    finally:
        opened.page.close()

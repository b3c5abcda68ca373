"""The report's cheaper paths against the code they replaced (``tests/support/report_before.py``):
the page's JSON (the series' numbers formatted once per distinct value), whole-number columns
taken as they are, and the alerts' plots found once per key and rule. Equal means the same text,
the same doubles (``repr``), the same records; where the old code refused a value (NaN or inf in
the page's data) the new one refuses it too."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import report_before
from telemetry.edge.messages import Alert
from telemetry.tools import report

ADVERSE = [0.0, -0.0, 1.0, -1.0, 1e-300, -5e-324, 5e-324, 1.7976931348623157e308, -1e22, 1e16, 123456.5,
           999999.0, 1e6, 0.1, 1e-5, 12.0]
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(ADVERSE), st.none())
names = st.text(alphabet="AB.x</é\"\\\u2028", min_size=0, max_size=6)
column = st.lists(numbers, max_size=8)
series = st.dictionaries(names, st.dictionaries(st.sampled_from(report._COLUMNS), column, max_size=6), max_size=5)


def page_data(s: Any, **more: Any) -> dict[str, Any]:
    return {"title": "Replay of x</script>", "summary": {"n": 1}, "series": s, "alerts": [], **more}


def same_or_same_error(data: Any) -> None:
    try:
        want = report_before.dumps(data)
    except (ValueError, TypeError) as e:
        with pytest.raises(type(e)):
            report.dumps(data)
        return
    assert report.dumps(data) == want


@given(series)
def test_the_page_json_is_json_dumps_text(s):
    same_or_same_error(page_data(s))


@given(st.lists(numbers, min_size=1, max_size=30), st.integers(0, 3))
def test_repeated_values_zeros_of_both_signs_and_nulls_keep_their_own_text(values, repeat):
    s = {"M.a": {"t0": values * (repeat + 1), "min": [-0.0, 0.0, *values, 0.0, -0.0]},
         "M.b": {"t0": list(reversed(values)), "n": []}}
    same_or_same_error(page_data(s))


@given(st.lists(st.one_of(numbers, st.integers(-3, 3), st.booleans(), st.sampled_from([math.nan, math.inf, -math.inf])),
                max_size=8))
def test_what_the_fast_path_does_not_take_is_left_to_json_dumps(values):
    # ints and bools equal to floats with another text; NaN and inf, which json.dumps refuses
    same_or_same_error(page_data({"M.S": {"t0": [1.0, 0.0, *values], "n": values}}))


@pytest.mark.parametrize("s", [
    {}, {"M.S": {}}, {"M.S": {"t0": []}}, {"M.S": {"t0": [1.5]}},  # empty, one window
    {"M.S": {"t0": (1.0, 2.0)}}, {"M.S": [1.0]}, {1: {"t0": [1.0]}}, {"M.S": {2: [1.0]}},  # not the plain form
    {"M.S": {"t0": [1.0, "1.0"]}}, {"M.S": {"t0": [np.float64(1.0)]}},
])
def test_odd_series_give_the_same_text_or_the_same_error(s):
    same_or_same_error(page_data(s))


def test_a_series_placeholder_in_the_rest_of_the_data_changes_nothing():
    data = page_data({"M.S": {"t0": [1.0]}}, summary_text=report._PLACE, warnings=[json.dumps(report._PLACE)])
    assert report.dumps(data) == report_before.dumps(data)


def test_the_page_is_the_old_page(tmp_path):
    data = page_data({"A</b": {"t0": [0.0, 1.25], "mean": [None, -0.0]}}, unknown_ids={"</x": 1})
    report.write_report(tmp_path / "r.html", data)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert report_before.dumps(data).replace("</", "<\\/") in page
    assert "</b" not in page.split("<script", 1)[1].split("</script>", 1)[0]


whole = st.one_of(st.integers(-999_999, 999_999).map(float), st.sampled_from([-0.0, 0.0, 1e6, -1e6, 999999.0, 1e15, 2.0**53]))


@given(st.lists(whole, max_size=50))
def test_whole_number_columns_are_rounded_as_before(values):
    x = np.array(values, dtype=np.float64)
    assert list(map(repr, report._r_list(x))) == list(map(repr, report_before._r_list(x)))


@given(st.lists(st.one_of(whole, st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -2.5e-7])), max_size=50))
def test_columns_with_any_other_value_are_rounded_as_before(values):
    x = np.array(values, dtype=np.float64)
    assert list(map(repr, report._r_list(x))) == list(map(repr, report_before._r_list(x)))


def test_an_empty_column_and_one_value():
    for values in ([], [3.0], [math.nan], [-0.0]):
        x = np.array(values, dtype=np.float64)
        assert list(map(repr, report._r_list(x))) == list(map(repr, report_before._r_list(x)))


PLOTTED = ["A.x", "A.y", "B.x", "B.z", "bus.load"]
alerts = st.builds(
    lambda id_, state, rule, signal, t, worst, flap: Alert("car", id_, state, rule, "limit", signal, "warning", t, 1.0,
                                                           {"worst": worst, "flapping": flap}),
    st.sampled_from(["a1", "a2", "a3", "a4"]), st.sampled_from(["raised", "update", "cleared"]),
    st.sampled_from(["hot", "spread", "stale"]), st.sampled_from(["A.x", "A", "B", "spread-key", "bus.error", "C.q"]),
    st.floats(0, 100), st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-5, 5)), st.booleans())
RULES = {"hot": ["A.*"], "spread": ["*.x", "B.?"], "stale": []}


@settings(max_examples=100)
@given(st.lists(alerts, max_size=12), st.one_of(st.none(), st.floats(0, 200)), st.booleans())
def test_alert_intervals_are_as_before(alert_list, t_end, with_rules):
    rules = RULES if with_rules else None
    new = report.alert_intervals(alert_list, t_end, PLOTTED, rules)
    old = report_before.alert_intervals(alert_list, t_end, PLOTTED, rules)
    assert json.dumps(new) == json.dumps(old)  # NaN worst values compare as text
    ons = [rec["on"] for rec in new]
    assert len({id(on) for on in ons}) == len(ons)  # each record its own list, as before


times = st.one_of(st.integers(0, 6).map(float), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300]))


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 3), times, st.sampled_from([1.0, 2.0]), st.floats(-2, 2)), max_size=25),
       st.booleans(), st.sampled_from([0, 2**15 - 1, 2**15, 70000]))
def test_rows_are_ordered_as_before(rows, by_time, base):
    if by_time:  # the usual case: each signal's rows come by time
        rows = sorted(rows, key=lambda r: (r[1] if not math.isnan(r[1]) else 0.0))
    ids = np.array([base + r[0] for r in rows], dtype=np.int64)
    t0 = np.array([r[1] for r in rows], dtype=np.float64)
    width = np.array([r[2] for r in rows], dtype=np.float64)
    v = np.array([r[3] for r in rows], dtype=np.float64)
    args = (ids, t0, width, v, v + 1, v * 2, np.ones(len(rows)))
    assert report._order(*args).tolist() == report_before._order(*args).tolist()


def test_rows_already_by_time_and_one_row_and_none():
    for ids, t0 in (([0, 1, 0, 1], [1.0, 1.0, 2.0, 2.0]), ([5], [3.0]), ([], [])):
        a = np.array(ids, dtype=np.int64)
        t = np.array(t0, dtype=np.float64)
        args = (a, t, t, t, t, t, t)
        assert report._order(*args).tolist() == report_before._order(*args).tolist()

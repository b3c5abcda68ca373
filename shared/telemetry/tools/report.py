"""The report of a replay: ``DIR/report.html``, one self-contained file to open in a browser.

It shows the summary (warnings first), frames per CAN id (decoded messages, unknown ids, decode
errors with their reason), the log's bad lines, a time plot of every aggregated signal (the
windows' min/max band and mean line, grouped by message, with a search box) with the intervals
of the alerts drawn on the plots of their signals, an alert timeline per rule, and the bytes sent
to the cloud over event time.

The plots are drawn by a few dozen lines of JavaScript into inline SVG, from the data embedded in
the page as JSON: no library, no network, and hundreds of signals render in well under a second
because each series is cut to at most ``MAX_POINTS`` buckets here (min of the mins, max of the
maxes, count-weighted mean). A laptop tool: nothing here goes into the Lambda zips.
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from telemetry import wire
from telemetry.edge.decode import load_dbc
from telemetry.edge.errors import DbcError
from telemetry.edge.messages import Alert
from telemetry.tools.taps import CloudPublish

MAX_POINTS = 400  # buckets per plotted signal: a plot is a few hundred pixels wide


def signal_units(dbc_paths: Iterable[str | Path]) -> dict[str, str]:
    """``<Message>.<Signal>`` -> unit, from the DBC files (a later file wins, as in decoding)."""
    return dbc_tables(dbc_paths)[0]


def dbc_tables(dbc_paths: Iterable[str | Path]) -> tuple[dict[str, str], dict[str, str]]:
    """From one read of the DBC files: ``<Message>.<Signal>`` -> unit, and message name -> its
    CAN id (``0x1A2``; extended ids with an ``x`` after). A later file wins, as in decoding."""
    units: dict[str, str] = {}
    ids: dict[str, str] = {}
    for path in dbc_paths:
        try:
            db = load_dbc(path)
        except DbcError:
            continue  # the replay itself has said so
        for m in db.messages:
            ids[m.name] = f"0x{m.frame_id:X}" + ("x" if m.is_extended_frame else "")
            for signal in m.signals:
                units[f"{m.name}.{signal.name}"] = signal.unit or ""
    return units, ids


def _r(x: float) -> float | None:
    """A number for the page: 6 significant digits keep the JSON small; NaN becomes null."""
    return None if not math.isfinite(x) else float(f"{x:.6g}")


def _t(x: float) -> float:
    """A time for the page: milliseconds are enough (absolute times need all their digits)."""
    return round(x, 3)


_POW10 = 10.0 ** np.arange(23)  # the powers of ten a double holds exactly


def _exact(value: np.ndarray, p: np.ndarray, ok: np.ndarray, x: np.ndarray, slow: Any) -> list[Any]:
    """``value`` as a list, with ``slow(x)`` wherever not ``ok``: the fast path's result is kept
    only where the scaled value ``p`` is clearly off a tie (its rounding error, under an ulp of
    ``p``, cannot cross half an integer), so rounding it is rounding the exact product."""
    with np.errstate(all="ignore"):  # p is NaN or inf where ``ok`` is False already
        ok &= np.abs(p - np.floor(p) - 0.5) > 4 * np.spacing(np.abs(p))
    out = value.tolist()
    if not ok.all():
        xs = x.tolist()
        for i in np.flatnonzero(~ok).tolist():
            out[i] = slow(xs[i])
    return out


def _r_list(x: np.ndarray) -> list[float | None]:
    """``[_r(v) for v in x]`` with no string per value. Six significant digits of |x| are
    ``m = round(|x| * 10**k)`` with ``k = 5 - floor(log10 |x|)`` (so ``10**5 <= |x| * 10**k <=
    10**6``); ``m / 10**k`` (or ``m * 10**-k``), with ``m`` and the power of ten exact, is one
    correctly rounded operation: the double nearest the decimal, which is what ``float`` reads
    from the formatted digits. Zero stays as it is. Values off that path (ties, |k| > 22, a
    misjudged exponent, NaN and inf) go through ``_r`` itself. A column of whole numbers under
    10**6 (counts, most of all) has at most six digits each: it is itself."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        if ((np.abs(x) < 1e6) & (np.rint(x) == x)).all():  # NaN and inf are not
            return x.tolist()
    ax = np.abs(x)
    with np.errstate(all="ignore"):
        k = 5 - np.floor(np.log10(ax))
        ok = np.isfinite(k) & (np.abs(k) <= 22)  # not zero, NaN, inf, nor beyond the exact powers
        k = np.where(ok, k, 0).astype(np.int64)
        up = k >= 0
        scale = _POW10[np.abs(k)]
        p = np.where(up, ax * scale, ax / scale)
        m = np.rint(p)
        value = np.copysign(np.where(up, m / scale, m * scale), x)
    ok &= (p >= 1e5) & (p <= 1e6)
    zero = x == 0.0
    value[zero] = x[zero]  # as it is (-0.0 keeps its sign, as "-0" does)
    p[zero] = 0.0
    return _exact(value, p, ok | zero, x, _r)


def _t_list(x: np.ndarray) -> list[float]:
    """``[_t(v) for v in x]``: ``round(v, 3)`` is the double nearest ``round(v * 1000) / 1000``
    taken exactly, which ``m / 1000.0`` is (one correctly rounded division) while ``m`` is an
    exact integer; ties and values past 2**52 go through ``_t``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        p = x * 1000.0
        value = np.rint(p) / 1000.0
        ok = np.abs(p) < 2.0**52
    return _exact(value, p, ok, x, _t)


_COLUMNS = ("t0", "t1", "min", "max", "mean", "n")


def bucketed(a: np.ndarray, max_points: int = MAX_POINTS) -> dict[str, list[Any]]:
    """One signal's windows, rows of (t0, t1, min, max, mean, n) in time order, merged into at
    most ``max_points`` buckets."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    columns, _ = _buckets([a[:, i] for i in range(6)], np.array([0, len(a)]), max_points)
    return dict(zip(_COLUMNS, columns))


def _buckets(cols: Sequence[np.ndarray], bounds: np.ndarray, max_points: int,
             order: np.ndarray | None = None) -> tuple[list[list[Any]], list[int]]:
    """``bucketed`` of many signals at once: ``cols`` are the columns (t0, t1, min, max, mean, n)
    of every signal's rows, in time order, signal ``i`` in rows ``bounds[i]:bounds[i + 1]`` (of
    ``cols[k][order]`` if an ``order`` is given: t0 and t1 are then read only where needed). A
    signal of more than ``max_points`` rows is cut into ``max_points`` buckets of consecutive
    rows (min of the mins, max of the maxes, count-weighted mean); a shorter one keeps its rows.
    Returns the six columns of the buckets, ready for the page, and where each signal's buckets
    begin in them (one more: the end). One numpy pass over all signals: the same numbers as
    taking the signals one by one (each bucket is reduced over its own rows only)."""
    t0, t1, *rest = cols
    lo, hi, mean, n = rest if order is None else [c[order] for c in rest]
    firsts: list[np.ndarray] = []
    merged: list[bool] = []
    offsets = [0]
    for b0, b1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        count = b1 - b0
        long = count > max_points
        firsts.append(np.linspace(0, count, max_points, endpoint=False).astype(np.int64) + b0 if long
                      else np.arange(b0, b1, dtype=np.int64))
        merged.append(long)
        offsets.append(offsets[-1] + (max_points if long else count))
    starts = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    if not len(starts):
        return [[] for _ in _COLUMNS], offsets
    ends = np.append(starts[1:], len(n)) - 1
    with np.errstate(all="ignore"):  # NaN and inf as they come: their buckets say so
        count = np.add.reduceat(n, starts)
        weighted = np.add.reduceat(mean * n, starts)
        pooled = np.where(count > 0, weighted / np.maximum(count, 1), mean[starts])
    means = np.where(np.repeat(np.array(merged), np.diff(offsets)), pooled, mean[starts])
    first, last = (starts, ends) if order is None else (order[starts], order[ends])
    out = [t0[first], t1[last], np.minimum.reduceat(lo, starts), np.maximum.reduceat(hi, starts), means, count]
    return [(_t_list if key[0] == "t" else _r_list)(col) for key, col in zip(_COLUMNS, out)], offsets


def payload_series(payloads: Sequence[wire.Payload], max_points: int = MAX_POINTS) -> dict[str, dict[str, list[Any]]]:
    """Per signal, its windows in time order (``t0``, ``t1``, ``min``, ``max``, ``mean``, ``n``),
    merged into at most ``max_points`` buckets of consecutive windows (``bucketed``): from the
    aggregates payloads' columns, with no Python object per window and signal (a day of a
    200-signal car is a million cells). The same as the series of the payloads' windows taken one
    by one (tested)."""
    index: dict[str, int] = {}
    parts: list[list[np.ndarray]] = []
    for payload in payloads:
        t = payload.table
        if not len(t):
            continue
        ids = np.array([index.setdefault(name, len(index)) for name in t.names], dtype=np.int64)[t.sid]
        stats = t.stats
        nan = np.full(len(t), math.nan)
        mean = stats.get("mean", stats.get("last", nan)).astype(np.float64, copy=False)
        start = t.window * payload.width
        parts.append([ids, start, np.full(len(t), payload.width),
                      stats.get("min", mean).astype(np.float64, copy=False), stats.get("max", mean).astype(np.float64, copy=False),
                      mean, stats["count"].astype(np.float64) if "count" in stats else np.ones(len(t))])
    if not parts:
        return {}
    names = sorted(index)
    rank = np.empty(len(names), np.int64)
    rank[[index[name] for name in names]] = np.arange(len(names))
    ids, t0, width, *stats_columns = [np.concatenate(column) for column in zip(*parts)]
    ids = rank[ids]  # each signal's place in name order
    order = _order(ids, t0, width, *stats_columns)
    t1 = t0 + width  # each row's, as ``start + payload.width`` was (the buckets read it at their ends)
    columns, offsets = _buckets([t0, t1, *stats_columns], np.searchsorted(ids[order], np.arange(len(names) + 1)),
                                max_points, order)
    return {name: {key: column[offsets[j]:offsets[j + 1]] for key, column in zip(_COLUMNS, columns)}
            for j, name in enumerate(names)}


def _order(ids: np.ndarray, t0: np.ndarray, width: np.ndarray, lo: np.ndarray, hi: np.ndarray, mean: np.ndarray,
           n: np.ndarray) -> np.ndarray:
    """The rows by signal, then by (t0, t1, min, max, mean, n): by signal and t0 alone while
    those are unique (the other columns then cannot reorder anything), else (a window heard
    twice) by every column. Rows usually come by time within each signal already: a stable sort
    of the signals alone (a radix sort on 16 bits) is then that order, as ``lexsort`` gives it
    (the order of (signal, t0) without ties is one)."""
    if len(ids) and 0 <= ids.min() and ids.max() < 2**15:
        order = np.argsort(ids.astype(np.int16), kind="stable")
        i_s, t_s = ids[order], t0[order]
        if np.isfinite(t_s).all() and ((i_s[1:] != i_s[:-1]) | (t_s[1:] > t_s[:-1])).all():
            return order
    order = np.lexsort((t0, ids))
    i_s, t_s = ids[order], t0[order]
    if np.isfinite(t_s).all() and ((i_s[1:] != i_s[:-1]) | (t_s[1:] != t_s[:-1])).all():
        return order
    return np.lexsort((n, mean, hi, lo, t0 + width, t0, ids))


def alert_intervals(alerts: Sequence[Alert], t_end: float | None, plotted: Sequence[str] = (),
                    rules: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One record per alert (its id): raised, updates, cleared (None: still active at the end),
    worst value and when, severity, and ``on``: the plotted signals its interval is drawn on
    (its signal; for a key that is a message, as stale rules have, the message's signals; for a
    key that is no signal, as a spread rule's, the signals its rule's patterns match).
    Sorted by rule, then time raised."""
    by_id: dict[str, dict[str, Any]] = {}
    for a in sorted(alerts, key=lambda a: a.t):
        worst = a.detail.get("worst")
        rec = by_id.get(a.id)
        if rec is None:
            rec = by_id[a.id] = {"id": a.id, "rule": a.rule, "rule_kind": a.rule_kind, "signal": a.signal,
                                 "severity": a.severity, "raised": a.t, "cleared": None, "updates": 0,
                                 "worst": a.value, "worst_t": a.t, "flapping": False}
        if a.state == "update":
            rec["updates"] += 1
        elif a.state == "cleared":
            rec["cleared"] = a.t
        if isinstance(worst, (int, float)) and math.isfinite(worst):
            rec["worst"] = worst
            rec["worst_t"] = a.detail.get("worst_t", rec["worst_t"])
        rec["flapping"] = rec["flapping"] or bool(a.detail.get("flapping"))
        if a.state == "raised":
            rec["raised"] = a.t
    out = list(by_id.values())
    drawn: dict[tuple[str, str], list[str]] = {}  # many alerts share a key and a rule
    for rec in out:
        end = rec["cleared"] if rec["cleared"] is not None else t_end
        rec["end"] = end if end is not None else rec["raised"]
        rec["duration"] = rec["end"] - rec["raised"]
        on = drawn.get((rec["signal"], rec["rule"]))
        if on is None:
            on = drawn[rec["signal"], rec["rule"]] = _drawn_on(rec["signal"], (rules or {}).get(rec["rule"], ()), plotted)
        rec["on"] = list(on)
    return sorted(out, key=lambda r: (r["rule"], r["raised"]))


def _drawn_on(key: str, patterns: Sequence[str], plotted: Sequence[str]) -> list[str]:
    if key in plotted:
        return [key]
    of_message = [name for name in plotted if name.startswith(key + ".")]
    if of_message:
        return of_message
    if key.startswith("bus."):
        return []
    return [name for name in plotted if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def cloud_series(publishes: Sequence[CloudPublish], uplink: Sequence[tuple[float, int]], t0: float) -> dict[str, Any]:
    """Cumulative bytes against event time: of the windows and alerts handed to the uploader
    (``uplink``: their event time and size as published locally), and of the cloud publishes
    (packed; at the event time the replay had reached when each was sent: a replay as fast as
    possible sends much of it at the end)."""
    out: dict[str, Any] = {"t": [], "bytes": [], "sent_t": [], "sent_bytes": []}
    total = 0
    for t, n in sorted(uplink):
        total += n
        out["t"].append(_t(t))
        out["bytes"].append(total)
    at, total = t0, 0
    for p in publishes:
        at = max(at, p.t) if p.t is not None else at
        total += p.bytes
        out["sent_t"].append(_t(at))
        out["sent_bytes"].append(total)
    return out


def frames_by_message(series: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, int]:
    """Decoded frames per message, as its most frequent signal's sample count (exact unless the
    message is multiplexed, where it is the frames of its most frequent multiplexer value)."""
    out: dict[str, int] = {}
    for name, s in series.items():
        message = name.split(".", 1)[0]
        out[message] = max(out.get(message, 0), int(sum(filter(None, s["n"]))))  # None: no count
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def report_data(summary: Mapping[str, Any], payloads: Sequence[wire.Payload], alerts: Sequence[Alert],
                publishes: Sequence[CloudPublish], uplink: Sequence[tuple[float, int]], dbc: Sequence[str | Path],
                decode_error_reasons: Mapping[str, str] | None = None, summary_text: str = "",
                rules: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready; the plots drawn from the aggregates payloads' columns."""
    series = payload_series(payloads)
    units, ids = dbc_tables(dbc)
    t0 = summary.get("event_start")
    t_end = summary.get("event_end")
    if t0 is None:
        starts = [float((p.table.window * p.width).min()) for p in payloads if len(p.table)] + [a.t for a in alerts]
        t0 = min(starts) if starts else 0.0
    reasons = decode_error_reasons or {}
    return {
        "title": f"Replay of {Path(str(summary.get('log', ''))).name}",
        "summary": dict(summary),
        "summary_text": summary_text,
        "warnings": list(summary.get("warnings", [])),
        "t0": t0,
        "t_end": t_end,
        "time_base": summary.get("time_base", ""),
        "units": {name: units.get(name, "") for name in series},
        "series": series,
        "alerts": alert_intervals(alerts, t_end, list(series), rules),
        "cloud": cloud_series(publishes, uplink, t0),
        "frames_by_message": frames_by_message(series),
        "message_ids": ids,
        "unknown_ids": dict(summary.get("unknown_ids", {})),
        "decode_errors": [{"id": k, "frames": n, "reason": reasons.get(k, "")}
                          for k, n in dict(summary.get("decode_error_ids", {})).items()],
        "bad_records": list(summary.get("bad_records", [])),
    }


def write_report(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write the page: the template with the data embedded (``</`` escaped so that no value can
    end the script element)."""
    blob = dumps(data).replace("</", "<\\/")
    template = Path(__file__).with_name("report_template.html").read_text(encoding="utf-8")
    head, tail = template.split("__DATA__")
    page = head.replace("__TITLE__", html.escape(str(data.get("title", "Replay report"))), 1) + blob + tail
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


_PLACE = "\x00series\x00"  # stands for the series while the rest is encoded (if found once only)
_NONE_TYPE = type(None)


def dumps(data: Mapping[str, Any]) -> str:
    """``json.dumps(data, separators=(",", ":"), allow_nan=False)``, the same text, with the
    plots' numbers (``data["series"]``, most of the page) encoded by ``_series_json``: a float's
    JSON text is its ``repr``, and a series repeats few distinct values (a message's signals
    share their times; counts and flat signals repeat), so each distinct double is formatted
    once. Anything that path does not take as it is (not a dict of dicts of lists of floats and
    None, a non-finite float, a key that is not a str) goes through ``json.dumps`` whole."""
    series = data.get("series") if isinstance(data, dict) else None
    text = _series_json(series) if type(series) is dict and series else None
    if text is None:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    blob = json.dumps({**data, "series": _PLACE}, separators=(",", ":"), allow_nan=False)
    place = json.dumps(_PLACE)
    if blob.count(place) != 1:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    return blob.replace(place, text, 1)


class _NotPlain(Exception):
    """A value ``_series_json`` leaves to ``json.dumps``."""


class _Texts(dict[Any, str]):
    """float -> its JSON text (``repr``), made on first sight. A zero is not kept: 0.0 and -0.0
    are equal keys with two texts. NaN and inf are not JSON (``json.dumps`` says so itself)."""

    def __missing__(self, value: float) -> str:
        if not math.isfinite(value):
            raise _NotPlain
        text = repr(value)
        if value != 0.0:
            self[value] = text
        return text


def _series_json(series: dict[Any, Any]) -> str | None:
    """The JSON text of ``{name: {key: [float or None, ...]}}`` as ``json.dumps`` writes it, or
    None where it is not of that form or holds NaN or inf. Each column is checked to hold only
    floats and None first: an int or a bool would be an equal key with another text."""
    columns: list[list[Any]] = []
    for name, s in series.items():
        if type(name) is not str or type(s) is not dict:
            return None
        for key, column in s.items():
            if type(key) is not str or type(column) is not list:
                return None
            columns.append(column)
    if not set(map(type, chain.from_iterable(columns))) <= {float, _NONE_TYPE}:
        return None
    texts = _Texts({None: "null"})
    text = texts.__getitem__
    out: list[str] = []
    try:
        for name, s in series.items():
            keys = [f"{json.dumps(key)}:[{','.join(map(text, column))}]" for key, column in s.items()]
            out.append(f"{json.dumps(name)}:{{{','.join(keys)}}}")
    except _NotPlain:
        return None
    return "{" + ",".join(out) + "}"

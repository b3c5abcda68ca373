"""telemetry.tools.report's parts as they were before the report took fewer instructions (main
at 979a29b): the reference the tests compare the faster code with. Its docstrings are as they were.

``dumps`` is what ``write_report`` embedded: ``json.dumps`` of the whole data."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from telemetry.edge.messages import Alert
from telemetry.tools.report import _exact, _r


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


_POW10 = 10.0 ** np.arange(23)  # the powers of ten a double holds exactly


def _r_list(x: np.ndarray) -> list[float | None]:
    """``[_r(v) for v in x]`` with no string per value. Six significant digits of |x| are
    ``m = round(|x| * 10**k)`` with ``k = 5 - floor(log10 |x|)`` (so ``10**5 <= |x| * 10**k <=
    10**6``); ``m / 10**k`` (or ``m * 10**-k``), with ``m`` and the power of ten exact, is one
    correctly rounded operation: the double nearest the decimal, which is what ``float`` reads
    from the formatted digits. Zero stays as it is. Values off that path (ties, |k| > 22, a
    misjudged exponent, NaN and inf) go through ``_r`` itself."""
    x = np.asarray(x, dtype=np.float64)
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
    for rec in out:
        end = rec["cleared"] if rec["cleared"] is not None else t_end
        rec["end"] = end if end is not None else rec["raised"]
        rec["duration"] = rec["end"] - rec["raised"]
        rec["on"] = _drawn_on(rec["signal"], (rules or {}).get(rec["rule"], ()), plotted)
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


def _order(ids: np.ndarray, t0: np.ndarray, width: np.ndarray, lo: np.ndarray, hi: np.ndarray, mean: np.ndarray,
           n: np.ndarray) -> np.ndarray:
    """The rows by signal, then by (t0, t1, min, max, mean, n): by signal and t0 alone while
    those are unique (the other columns then cannot reorder anything), else (a window heard
    twice) by every column."""
    order = np.lexsort((t0, ids))
    i_s, t_s = ids[order], t0[order]
    if np.isfinite(t_s).all() and ((i_s[1:] != i_s[:-1]) | (t_s[1:] != t_s[:-1])).all():
        return order
    return np.lexsort((n, mean, hi, lo, t0 + width, t0, ids))

"""Where the wire format's integers ran out (``telemetry.wire._quantize``): the cells of a
payload whose decoded mean or std is not the sent one to within half a DBC step. The encoder
before that fix wrapped a mean's sum of raw values past int64 (or sent a NaN mean as 0), so its
bytes may differ from today's exactly where this finds something in the old payload."""

from __future__ import annotations

import math
from typing import Any


def off(sent: Any, got: Any) -> list[tuple[float, str, str, float, float]]:
    """(window start, signal, statistic, sent, decoded) of each ``mean`` or ``std`` that came back
    further than the layout states (docs/MESSAGES.md, "Exactness": half a DBC step, a float
    signal's to its grid of ``2**-8`` or finer; a collapsed cell's std is 0), beyond the float64
    rounding of the cell's values. ``sent`` and ``got``: payloads of either module."""
    out = []
    back = got.windows()
    for start, signals in sent.windows().items():
        for name, want in signals.items():
            have = back[start][name]
            res = sent.res.get(name)
            collapsed = want["count"] == 1 or ("min" in want and "max" in want and want["min"] == want["max"])
            size = max([abs(want[s]) for s in ("min", "max", "mean") if s in want and math.isfinite(want[s])] or [0.0])
            for stat in ("mean", "std"):
                if stat not in want:
                    continue
                a, b = (0.0 if stat == "std" and collapsed else want[stat]), have[stat]
                step = abs(res[0]) if res else (2.0**-8 if stat == "mean" else 0.0)
                if a == b or (math.isnan(a) and math.isnan(b)):
                    continue
                if not abs(a - b) <= 0.5 * step + 2.0**-48 * max(abs(a) if math.isfinite(a) else 0.0, size):
                    out.append((start, name, stat, a, b))
    return out

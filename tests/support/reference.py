"""An independent reference for a replay's output, built from cantools' own decoding.

It shares no code with the package: frames come from ``can.LogReader``, each is decoded with
``cantools`` directly, and windows are formed by the definition (window ``floor(t / W)``). Used by
the tests on the sample recording and by ``.ci/run`` on the real logs in ``../shared/data``::

    python tests/support/reference.py LOG --dbc DBC [--dbc DBC] --out DIR [--window 1.0] [--require-all-decoded]

compares ``DIR/cloud.jsonl`` and ``DIR/summary.json`` (written by ``./build.sh replay``) with the
reference and exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import can
import cantools

from telemetry import wire
from telemetry.edge.messages import ZD1_DICTIONARY


def reference(log: str | Path, dbcs: list[str | Path], window: float) -> dict[str, Any]:
    index: dict[tuple[int, bool], Any] = {}
    steps: dict[str, float] = {}  # each signal's DBC step (0: an IEEE float, sent as float64)
    for path in dbcs:
        for message in cantools.database.load_file(str(path), strict=False).messages:
            index[(message.frame_id, bool(message.is_extended_frame))] = message
            for s in message.signals:
                steps[f"{message.name}.{s.name}"] = 0.0 if s.is_float else abs(float(s.scale))
    counts = defaultdict(int)
    samples: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    # an ASC log's frames carry its header's date, as the package's replay gives them
    absolute = {"relative_timestamp": False} if Path(log).suffix.lower() == ".asc" else {}
    for frame in can.LogReader(str(log), **absolute):
        counts["read"] += 1
        if frame.is_error_frame:
            counts["error"] += 1
            continue
        if frame.is_remote_frame:
            counts["remote"] += 1
            continue
        message = index.get((frame.arbitration_id, frame.is_extended_id))
        if message is None:
            counts["unknown_id"] += 1
            continue
        try:
            decoded = message.decode(frame.data, decode_choices=False)
        except Exception:
            counts["decode_error"] += 1
            continue
        counts["decoded"] += 1
        k = math.floor(frame.timestamp / window)
        for name, value in decoded.items():
            samples[(k, f"{message.name}.{name}")].append((frame.timestamp, float(value)))
    windows: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    for (k, name), points in samples.items():
        values = [v for _, v in points]
        last = max(range(len(points)), key=lambda i: (points[i][0], i))
        windows[k][name] = {
            "count": len(values),
            "min": min(values),
            "max": max(values),
            "mean": math.fsum(values) / len(values),
            "last": points[last][1],
        }
    return {"counts": dict(counts), "windows": dict(windows), "steps": steps}


def compare(ref: dict[str, Any], cloud_lines: list[dict[str, Any]], window: float) -> list[str]:
    """Differences between the reference and the aggregates a replay sent to the cloud."""
    problems = []
    got: dict[int, dict[str, Any]] = {}
    for payload in messages_of(cloud_lines):
        if payload.get("kind") != "window":
            continue
        k = round(payload["window"]["start"] / window)
        if not math.isclose(payload["window"]["end"] - payload["window"]["start"], window, rel_tol=1e-9):
            problems.append(f"window {payload['window']} is not {window} s long")
        if k in got:
            problems.append(f"window {k} sent twice")
        got[k] = payload["signals"]
    want = ref["windows"]
    if set(got) != set(want):
        problems.append(f"windows differ: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
    for k in sorted(set(got) & set(want)):
        if set(got[k]) != set(want[k]):
            problems.append(f"window {k}: signals differ: {sorted(set(got[k]) ^ set(want[k]))[:5]}")
            continue
        for name, stats in want[k].items():
            for key, value in stats.items():
                if key not in got[k][name]:  # a statistic the configuration does not send
                    continue
                other = got[k][name][key]
                # the wire format: count, min, max, last exact; the mean within half a DBC step,
                # an IEEE float signal's within half the step of the power-of-two grid it may
                # travel on (at most 2**-9; no coarser than its min's and max's own grid)
                tolerance = 0.0
                if key == "mean":
                    step = ref["steps"].get(name, 0.0)
                    tolerance = step / 2 if step else min(2.0**-9, grid_step(stats["min"], stats["max"]) / 2)
                if (key == "count" and other != value) or not math.isclose(other, value, rel_tol=1e-9, abs_tol=1e-9 + tolerance):
                    problems.append(f"window {k} {name} {key}: got {other}, reference {value}")
    return problems


def grid_step(*values: float) -> float:
    """The coarsest power-of-two step every value is a whole multiple of (1.0 for zeros)."""
    s = 0
    for v in values:
        mantissa, exponent = math.frexp(abs(v))
        if mantissa:
            m = int(mantissa * 2**53)
            trailing = (m & -m).bit_length() - 1
            s = max(s, 53 - exponent - trailing)
    return 2.0**-s


def register_dbc(dbcs: list[str | Path]) -> None:
    """Know the schema of these DBC files, as a cloud decoder given them does (aggregates payloads
    name their signals by it)."""
    from telemetry.edge.aggregator import dbc_resolutions

    wire.register(wire.Schema.of(dbc_resolutions([str(p) for p in dbcs])))


def whole_alert(message: dict[str, Any]) -> dict[str, Any]:
    """An alert as docs/MESSAGES.md says to read its compact form (no ``id``): the id is
    ``<vehicle>/<rule>/<signal>/<raised_t, 6 decimals>``, and a detail left out is its default."""
    if message.get("kind") != "alert" or "id" in message:
        return message
    detail = dict(message.get("detail", {}))
    detail.setdefault("raised_t", message["t"])
    if "worst" not in detail and "worst_t" not in detail:
        detail.update(worst=message["value"], worst_t=message["t"])
    detail.setdefault("flapping", False)
    if message["rule_kind"] == "stale":
        detail.setdefault("silent_for", None)
    ident = f"{message['vehicle']}/{message['rule']}/{message['signal']}/{detail['raised_t']:.6f}"
    return {**message, "id": ident, "detail": detail}


def messages_of(cloud_lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages inside the uploader's bundles (zd1, zlib+base64 or plain), read by the
    format's documentation, not by the package's code (but for the dictionary's bytes)."""
    out = []
    for line in cloud_lines:
        aggregates = wire.from_outbox_line(line)  # binary: its own documented decoder
        if aggregates is not None:
            out += aggregates.window_messages()
            continue
        payload = line["payload"]
        if payload.get("kind") != "bundle":
            continue
        if payload["encoding"] == "zd1":  # raw deflate with the documented preset dictionary
            z = zlib.decompressobj(-15, ZD1_DICTIONARY)
            items = json.loads(z.decompress(base64.b64decode(payload["data"])))
            assert z.eof and not z.unused_data
            # an item is the message itself (an alert) or {"id", "message"}; without the
            # envelope's v, kind and vehicle
            items = [item if "message" in item else {"message": item} for item in items]
            for item in items:
                item["message"] = {"v": 1, "kind": payload["of"], "vehicle": payload["vehicle"], **item["message"]}
        elif payload["encoding"] == "zlib+base64":
            items = json.loads(zlib.decompress(base64.b64decode(payload["data"])))
        else:
            items = payload["messages"]
        assert len(items) == payload["count"]
        out += [whole_alert(item["message"]) for item in items]
    return out


def compare_counts(ref: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    pairs = {
        "frames_read": "read",
        "error_frames": "error",
        "remote_frames": "remote",
        "frames_decoded": "decoded",
        "frames_unknown_id": "unknown_id",
        "decode_errors": "decode_error",
    }
    return [
        f"{ours}: got {summary[ours]}, reference {ref['counts'].get(theirs, 0)}"
        for ours, theirs in pairs.items()
        if summary[ours] != ref["counts"].get(theirs, 0)
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--dbc", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--window", type=float, default=1.0)
    p.add_argument("--require-all-decoded", action="store_true", help="fail if any data frame is left undecoded")
    args = p.parse_args()
    out = Path(args.out)
    ref = reference(args.log, args.dbc, args.window)
    register_dbc(args.dbc)
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "cloud.jsonl").read_text().splitlines()]
    problems = compare_counts(ref, summary) + compare(ref, lines, args.window)
    if args.require_all_decoded:
        data_frames = summary["frames_read"] - summary["error_frames"] - summary["remote_frames"]
        if summary["frames_decoded"] != data_frames:
            problems.append(f"{data_frames - summary['frames_decoded']} data frames left undecoded")
    windows = len(ref["windows"])
    if problems:
        print(f"FAIL {args.log}: {len(problems)} differences from the cantools reference", file=sys.stderr)
        for problem in problems[:20]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"OK {args.log}: {summary['frames_read']} frames ({summary['error_frames']} error, "
        f"{summary['frames_unknown_id']} unknown id), {windows} windows equal the cantools reference"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

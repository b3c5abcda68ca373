"""A replay's alerts and windows must not depend on how its frames were batched: replay LOG
with several replay batch sizes and compare every alert (all fields) and every window (exact
statistics equal; mean and std, sums folded batch by batch, to 1e-12 relative). Used by
``.ci/run`` on the real logs in ``../shared/data``::

    python tests/support/batching.py LOG --dbc DBC [--config FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from telemetry.tools.replay import messages_from_outbox, replay, resolve_config

SIZES = ((7, 0.05), (64, 0.5), (8192, 10.0), (10**7, 10.0**7))  # frames, seconds


def run(log: str, cfg: Any, frames: int, seconds: float, out: Path) -> tuple[int, list[dict], list[dict]]:
    reader = dataclasses.replace(cfg.reader, replay_batch_frames=frames, replay_batch_seconds=seconds)
    summary = replay(log, out_dir=out, config=dataclasses.replace(cfg, reader=reader))
    inside = messages_from_outbox(out / "cloud.jsonl")
    alerts = sorted((m for m in inside if m["kind"] == "alert"), key=lambda m: (m["t"], m["id"], m["state"]))
    windows = sorted((m for m in inside if m["kind"] == "window"), key=lambda m: (m["group"], m["window"]["start"]))
    for m in windows + alerts:
        m.pop("seq", None)  # numbered as published
    return summary["batches"], alerts, windows


def differences(a: list[dict], b: list[dict]) -> list[str]:
    out = []
    if len(a) != len(b):
        return [f"{len(a)} windows against {len(b)}"]
    for x, y in zip(a, b):
        if (x["group"], x["window"], x["late"], list(x["signals"])) != (y["group"], y["window"], y["late"], list(y["signals"])):
            out.append(f"window {x['group']}/{x['window']['start']}: not the same signals")
            continue
        for name, stats in x["signals"].items():
            for stat, value in stats.items():
                other = y["signals"][name][stat]
                same = math.isclose(value, other, rel_tol=1e-12, abs_tol=1e-12) if stat in ("mean", "std") else value == other
                if not same:
                    out.append(f"window {x['group']}/{x['window']['start']} {name} {stat}: {value!r} against {other!r}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--dbc", action="append", default=[])
    p.add_argument("--config")
    args = p.parse_args()
    cfg = resolve_config(args.config, args.dbc)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {f: run(args.log, cfg, f, s, Path(tmp) / str(f)) for f, s in SIZES}
    _, base_alerts, base_windows = runs[SIZES[0][0]]
    problems = []
    for frames, (_, alerts, windows) in runs.items():
        if alerts != base_alerts:
            problems.append(f"batches of {frames} frames: alerts differ ({len(alerts)} against {len(base_alerts)})")
        problems += [f"batches of {frames} frames: {d}" for d in differences(windows, base_windows)[:5]]
    name = Path(args.log).name
    if problems:
        print(f"FAIL batching {name}:\n  " + "\n  ".join(problems))
        return 1
    print(f"OK batching {name}: {len(base_alerts)} alerts and {len(base_windows)} windows the same in "
          f"{', '.join(str(r[0]) for r in runs.values())} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())

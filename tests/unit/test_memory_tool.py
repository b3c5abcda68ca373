"""``./build.sh memory`` measures each component as the nucleus feeds it: the wire bytes of each
message for a recipe whose ``inputPayloadEncodingType`` is binary (the signals batches' columns),
not their JSON form, which costs a component several times the memory of the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from telemetry.edge import messages
from telemetry.tools import memory
from telemetry.tools.paths import RECIPES, REPO
from telemetry.tools.recipes import load_recipes


def records(path: Path) -> list[bytes]:
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        out.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return out


def test_the_components_inputs_are_the_wire_bytes_of_the_sample_drive(tmp_path):
    paths = memory.inputs(tmp_path)
    signals = [messages.decode(w) for w in records(paths["signals"])]
    assert sum(isinstance(m, messages.Signals) for m in signals) > 5
    assert isinstance(signals[-1], messages.EndOfStream)
    assert all(messages.is_binary(w) for w in records(paths["signals"])[:-1])
    out = [messages.decode(w) for w in records(paths["out"])]
    items = [item for m in out for item in (m.items if isinstance(m, messages.Batch) else (m,))]
    assert any(isinstance(m, messages.Alert) for m in items) and any(isinstance(m, messages.Aggregates) for m in items)


def test_a_binary_recipe_s_component_is_handed_bytes(tmp_path):
    recipes = {r.path.stem: r for r in load_recipes(RECIPES, REPO)}
    assert recipes["anomaly_detector"].binary_input  # else this test measures nothing new
    paths = memory.inputs(tmp_path)
    out = subprocess.run([sys.executable, "-c", memory.CHILD, "detector", str(REPO), str(paths["signals"]), "binary"],
                         capture_output=True, text=True, check=True)
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    assert 20 < peak < 64

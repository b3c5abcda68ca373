"""The device rehearsal, the test of record for "runs on a core": each zip built by
``./build.sh package --arch x86_64`` is unpacked into a core's layout (code in one folder, the
process started in its work folder, the nucleus's environment), its handler is imported by name
from the handler string and called as ``function_handler(event, context)`` by an interpreter
without this machine's site-packages, with only the IPC client's network side replaced
(``core.py``). The sample drive goes reader -> aggregator and detector -> uploader -> AWS IoT
Core, and the cloud gets exactly what the local runtime's replay gives it. Each function is then
stopped with SIGTERM, as the nucleus stops it, and must end with status 0."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from gg import events_file, iot_payload

from telemetry import wire
from telemetry.edge.messages import unpack
from telemetry.tools.recipes import load_recipes
from telemetry.tools.replay import messages_from_outbox, replay

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def local_on(functions, topic: str) -> list[dict]:
    return [e for f in functions for e in f.published("local") if e["topic"] == topic]


def key(message: dict) -> tuple:
    if message["kind"] == "window":
        return ("window", message["group"], message["window"]["start"])
    return (message["kind"], message.get("id"), message.get("state"), message.get("t"))


def test_the_four_zips_run_a_replay_on_a_core_and_stop_cleanly(x86_64_zips, core, tmp_path):
    recipes = {r.name: r for r in load_recipes(ROOT / "recipes")}
    fn = {name: core.install(recipes[name], x86_64_zips[name]) for name in recipes}
    reader, aggregator, detector, uploader = (fn["telemetry.CanReader"], fn["telemetry.Aggregator"],
                                              fn["telemetry.AnomalyDetector"], fn["telemetry.Uploader"])
    log = SAMPLE / "drive.log"
    reader.env["TELEMETRY_LOG"] = str(log)  # a replay instead of can0; the configuration stays relative

    # All four start together, as the nucleus starts them; the reader's loop reads the log in a thread.
    inbox = {f.recipe.name: f.work.parent / f"{f.recipe.name}.events" for f in (aggregator, detector, uploader)}
    reader.start()
    for f in (aggregator, detector, uploader):
        f.start(inbox[f.recipe.name])
    reader.wait_for("idle")
    signals = local_on([reader], "telemetry/signals")
    # The aggregator and the detector get what the reader published on their event source.
    for function in (aggregator, detector):
        events_file(inbox[function.recipe.name], signals)
    for function in (aggregator, detector):
        function.wait_for("idle")
    # The uploader gets both outputs; its pinned sender publishes to IoT Core.
    upstream = local_on([aggregator], "telemetry/aggregates") + local_on([detector], "telemetry/alerts")
    events_file(inbox[uploader.recipe.name], upstream)
    uploader.wait_for("idle")

    statuses = {name: f.terminate() for name, f in fn.items()}
    for f in fn.values():
        assert f.lines[0].startswith("imported handler from " + str(f.code)), f.lines
        assert f.code != f.work and not (f.work / "vehicle.toml").exists()
    assert statuses == dict.fromkeys(fn, 0), {n: fn[n].stderr[-2000:] for n in fn if statuses[n]}
    assert (uploader.work / "spool.db").is_file()

    cloud = uploader.published("iotcore")
    assert cloud and {e["qos"] for e in cloud} == {"1"}  # QOS.AT_LEAST_ONCE
    # alerts in JSON bundles; aggregates as binary payloads, read back as their windows
    sent = [item["message"] for e in cloud if not wire.is_payload(iot_payload(e))
            and json.loads(iot_payload(e)).get("kind") == "bundle" for item in unpack(iot_payload(e))]
    sent += [w for e in cloud if wire.is_payload(iot_payload(e)) for w in wire.decode(iot_payload(e)).window_messages()]
    # What the local runtime's replay of the same log sends to the cloud, in this process.
    expected = replay(log, out_dir=tmp_path / "replay", config=SAMPLE / "vehicle.toml")
    local = messages_from_outbox(tmp_path / "replay" / "cloud.jsonl")
    assert sorted(map(key, sent)) == sorted(map(key, local))
    kinds = Counter(m["kind"] for m in sent)
    assert kinds["window"] == expected["windows"] > 0 and kinds["alert"] == expected["alerts"] > 0
    end = [e for e in signals if "json" in e and e["json"].get("kind") == "end_of_stream"]
    assert len(end) == 1 and end[0]["json"]["totals"]["read"] == expected["frames_read"]
    print(f"\nrehearsal: {len(signals)} signals messages from the reader; "
          f"{len(local_on([aggregator], 'telemetry/aggregates'))} aggregates publishes, "
          f"{len(local_on([detector], 'telemetry/alerts'))} alerts published locally; "
          f"{len(cloud)} IoT Core publishes carrying {dict(kinds)}; exit statuses after SIGTERM {statuses}")

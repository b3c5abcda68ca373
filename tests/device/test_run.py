"""``./build.sh run``: the four components live against a python-can interface (here its
``virtual`` bus, the stand-in for a chase car's USB adapter), on the local runtime, to the
outbox file; Ctrl-C (a real SIGINT) flushes the open batch and windows and exits 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import can
import cantools
from can.interfaces import virtual

from telemetry.tools.cli import main
from telemetry.tools.replay import messages_from_outbox

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"


def test_a_live_run_on_a_virtual_bus_sends_what_it_read_and_ctrl_c_flushes(tmp_path, capsys):
    channel = f"chase-car-{os.getpid()}"
    db = cantools.database.load_file(str(SAMPLE / "solar_car.dbc"))
    pack = db.get_message_by_name("BMS_PackStatus")
    sent = []
    problems: list[BaseException] = []

    def car() -> None:
        try:
            with can.Bus(interface="virtual", channel=channel) as bus:
                for _ in range(2000):  # until the reader has opened its end of the bus
                    if len(virtual.channels.get(channel, ())) >= 2:
                        break
                    time.sleep(0.01)
                else:
                    raise AssertionError("the reader never opened the bus")
                for i in range(40):
                    voltage = 140.0 + i * 0.5
                    bus.send(can.Message(arbitration_id=pack.frame_id, is_extended_id=False, data=pack.encode(
                        {"PackVoltage": voltage, "PackCurrent": 10.0, "SOC": 80, "BmsState": 1})))
                    sent.append(voltage)
                    time.sleep(0.005)
        except BaseException as exc:
            problems.append(exc)
        finally:
            time.sleep(0.2)  # the reader takes the last frames off the bus
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    feeder = threading.Thread(target=car)
    feeder.start()
    previous = signal.getsignal(signal.SIGINT)
    status = main(["run", "--interface", "virtual", "--channel", channel, "--config", str(SAMPLE / "vehicle.toml"),
                   "--out", str(tmp_path)])
    feeder.join(10)
    assert not problems, problems
    assert status == 0 and signal.getsignal(signal.SIGINT) is previous  # Ctrl-C handled, handler given back
    out = capsys.readouterr().out
    assert f"reading virtual {channel}" in out and "stopped: 40 frames read" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_read"] == summary["frames_decoded"] == 40 and summary["drain"] == "drained"
    # the components' threads shared one CPU (affinity.py), and this thread has its own mask still
    several = len(os.sched_getaffinity(0)) > 1
    assert (summary["pinned_cpu"] in os.sched_getaffinity(0)) if several else summary["pinned_cpu"] is None
    # every frame is in a window that reached the cloud: the open ones were closed by the stop
    windows = messages_from_outbox(tmp_path / "cloud.jsonl", "aggregates")
    voltage = [w["signals"]["BMS_PackStatus.PackVoltage"] for w in windows if "BMS_PackStatus.PackVoltage" in w["signals"]]
    assert sum(v["count"] for v in voltage) == 40
    assert min(v["min"] for v in voltage) == min(sent) and max(v["max"] for v in voltage) == max(sent)

"""Peak memory of each component, measured alone in its own process on the sample drive, the
way it runs on a core device (one Python process per Lambda function). The recipes' memory
settings are these figures with 50 % headroom, rounded up to 16 MB.

    ./build.sh memory

Each child imports what its handler imports on the device (the IPC client included), processes
the whole drive, and reports its peak resident set size (``VmHWM`` of /proc/self/status;
``ru_maxrss`` would count the parent that forked it). A component receives each message as the
nucleus hands it over: the wire bytes where its recipe's ``inputPayloadEncodingType`` is binary
(the signals batches' columns), the decoded JSON object where it is json.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from telemetry.tools.paths import RECIPES
from telemetry.tools.paths import REPO as ROOT
from telemetry.tools.recipes import load_recipes

RECIPE_OF = {"reader": "can_reader", "aggregator": "aggregator", "detector": "anomaly_detector", "uploader": "uploader"}

CHILD = r'''
import json, sys, tempfile, threading
from pathlib import Path
sys.modules["asammdf"] = None  # not in the deployment zip (requirements-lambda.txt): as on the device
import awsiot.greengrasscoreipc.clientv2  # imported by every function on the device
from telemetry.edge.clock import SystemClock
from telemetry.edge.components import Services
from telemetry.edge.config import load_config
from telemetry.edge.transport import InMemoryCloudTransport
which, root, inputs, binary = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "binary"
cfg = load_config(root / "vehicles/sample/vehicle.toml")

class Sink:
    """What a component publishes leaves its process: keep nothing."""
    def publish(self, topic, message): pass
    def subscribe(self, topic, handler): pass
    def close(self): pass

env = {"TELEMETRY_OUTPUT_TOPIC": "t", "TELEMETRY_LOG": str(root / "vehicles/sample/drive.log"),
       "TELEMETRY_SPOOL": tempfile.mktemp(suffix=".db")}
services = Services(Sink(), InMemoryCloudTransport(), cfg, SystemClock(), env)
if which == "reader":
    from telemetry.edge.components import CanReaderComponent
    CanReaderComponent(services).run(threading.Event())
else:
    if which == "aggregator":
        from telemetry.edge.components import AggregatorComponent as C
    elif which == "detector":
        from telemetry.edge.components import AnomalyDetectorComponent as C
    else:
        from telemetry.edge.components import UploaderComponent as C
        services.cloud = type("Drop", (), {"publish": lambda self, t, p: None, "close": lambda self: None})()
    component = C(services)
    with open(inputs, "rb") as f:  # one invocation per message, as the nucleus delivers them
        while head := f.read(4):
            data = f.read(int.from_bytes(head, "big"))
            component.handle(data if binary else json.loads(data))
            del data
    if which == "uploader":
        while component.pending():
            component.core.sender.step()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the parent that forked us
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"component": which, "peak_mb": peak_kb / 1024}))
'''


def inputs(folder: Path) -> dict[str, Path]:
    """What each component receives on the sample drive, as the wire bytes of each message (a
    4-byte length before each): the reader's batches, and the aggregates and alerts made of them."""
    import threading

    from telemetry.edge.clock import SystemClock
    from telemetry.edge.components import AggregatorComponent, AnomalyDetectorComponent, CanReaderComponent, Services
    from telemetry.edge.config import load_config
    from telemetry.edge.messages import Message
    from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport

    class Recording(InMemoryLocalTransport):
        def __init__(self) -> None:
            super().__init__()
            self.wires: dict[str, list[bytes]] = {}

        def publish(self, topic: str, message: Message) -> None:
            self.wires.setdefault(topic, []).append(bytes(message.to_bytes()))
            super().publish(topic, message)

    cfg = load_config(ROOT / "vehicles/sample/vehicle.toml")
    bus = Recording()
    env = {"TELEMETRY_LOG": str(ROOT / "vehicles/sample/drive.log")}
    s = lambda topic: Services(bus, InMemoryCloudTransport(), cfg, SystemClock(), {**env, "TELEMETRY_OUTPUT_TOPIC": topic})  # noqa: E731
    aggregator, detector = AggregatorComponent(s("out")), AnomalyDetectorComponent(s("out"))
    bus.subscribe("signals", aggregator.handle)
    bus.subscribe("signals", detector.handle)
    CanReaderComponent(s("signals")).run(threading.Event())
    paths = {"signals": folder / "signals.bin", "out": folder / "out.bin"}
    for topic, path in paths.items():
        path.write_bytes(b"".join(len(w).to_bytes(4, "big") + w for w in bus.wires.get(topic, [])))
    return paths


def main() -> int:
    print("peak resident memory, each component alone in its own process, on the sample drive:")
    import tempfile

    results = {}
    recipes = {r.path.stem: r for r in load_recipes(RECIPES, ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = inputs(Path(tmp))
        feeds = {"reader": "", "aggregator": paths["signals"], "detector": paths["signals"], "uploader": paths["out"]}
        for which, feed in feeds.items():
            encoding = "binary" if recipes[RECIPE_OF[which]].binary_input else "json"
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(ROOT), str(feed), encoding],
                                 capture_output=True, text=True, check=True)
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    print(f"{'component':<12}{'peak MB':>10}{'+50 %, in 16 MB steps':>24}{'recipe memorySizeInKB':>24}")
    ok = True
    for which, peak in results.items():
        want = int(math.ceil(peak * 1.5 / 16) * 16)
        kb = recipes[RECIPE_OF[which]].params["linuxProcessParams"]["containerParams"]["memorySizeInKB"]
        flag = "" if kb >= want * 1024 else "   <- update the recipe"
        ok &= not flag
        print(f"{which:<12}{peak:>10.1f}{want:>24}{kb:>24}{flag}")
    print("(Lambda's own MemorySize stays at its minimum, 128: Greengrass applies memorySizeInKB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""One Lambda function as a Greengrass core runs it, for the device rehearsal (``test_rehearsal``).

Run as ``python -I -S core.py SPEC.json``: no site-packages, so only the standard library and
what the unpacked zip holds can be imported, as on a core device. The spec says where the code
was unpacked (put first on ``sys.path``, as the Lambda runtime does), the handler string, the
events to deliver and where to record what the function publishes. The process starts in the
component's work directory with the nucleus's environment (the test sets both).

What is replaced is the IPC client's network side only: ``GreengrassCoreIPCClientV2`` is an
autospec of the real class from the zip (so a call with a wrong signature fails as it would),
whose ``publish_to_topic`` / ``publish_to_iot_core`` append to a JSON-lines file instead of
writing to the nucleus's domain socket.

The driver then imports the handler module by name (``handler`` of ``handler.function_handler``),
waits for its events file (written by the test once the functions upstream are done), calls
``function_handler(event, context)`` once per event (bytes for a binary-input recipe, the
JSON object otherwise), prints ``idle`` when the function has nothing left to do and waits for
the SIGTERM with which the nucleus stops a component: the function's own handler must flush
and end the process with status 0.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import sys
import threading
import time
import types
from unittest import mock


def record(path: str, lock: threading.Lock, entry: dict) -> None:
    with lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def fake_ipc(out: str, fail_local: int = 0) -> object:
    from awsiot.greengrasscoreipc import clientv2

    lock = threading.Lock()
    failures = {"left": fail_local}

    def publish_to_topic(*, topic, publish_message, **_):
        if failures["left"] > 0:  # the nucleus's socket refusing a few publishes
            failures["left"] -= 1
            raise ConnectionError("IPC connection lost (injected)")
        if publish_message.binary_message is not None:
            entry = {"topic": topic, "binary": base64.b64encode(bytes(publish_message.binary_message.message)).decode()}
        else:
            entry = {"topic": topic, "json": publish_message.json_message.message}
        record(out, lock, {"to": "local", **entry})

    def publish_to_iot_core(*, topic_name, qos, payload, **_):
        record(out, lock, {"to": "iotcore", "topic": topic_name, "qos": str(qos), "payload": base64.b64encode(bytes(payload)).decode()})

    client = mock.create_autospec(clientv2.GreengrassCoreIPCClientV2, instance=True)
    client.publish_to_topic.side_effect = publish_to_topic
    client.publish_to_iot_core.side_effect = publish_to_iot_core
    clientv2.GreengrassCoreIPCClientV2 = mock.Mock(return_value=client)
    return client


def inject(target: str, after: int, message: str) -> None:
    """A fault: ``module.Class.method`` raises RuntimeError(message) from its call ``after + 1`` on."""
    module_name, class_name, attribute = target.rsplit(".", 2)
    cls = getattr(importlib.import_module(module_name), class_name)
    original = getattr(cls, attribute)
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError(message)
        return original(*args, **kwargs)

    setattr(cls, attribute, failing)


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    sys.path.insert(0, spec["code"])
    fake_ipc(spec["out"], spec.get("fail_local", 0))
    if spec.get("inject"):
        inject(**spec["inject"])
    module_name, _, function = spec["handler"].rpartition(".")
    module = importlib.import_module(module_name)  # what the Lambda runtime does with the handler string
    handler = getattr(module, function)
    print(f"imported {module_name} from {module.__file__}", flush=True)
    context = types.SimpleNamespace(function_name=spec["function"], function_version="1")
    events = spec.get("events")
    if events:  # written (atomically) once the functions upstream have published everything
        while not os.path.exists(events):
            time.sleep(0.02)
    for line in open(events, encoding="utf-8") if events else ():
        event = json.loads(line)
        if "binary" in event:
            payload = base64.b64decode(event["binary"])
            handler(payload if spec["binary_input"] else json.loads(payload), context)
        else:
            handler(json.dumps(event["json"]).encode() if spec["binary_input"] else event["json"], context)
    # Nothing left to do: a replay read to its end, a spool sent empty (the test's view, not the runtime's).
    component = module.adapter.component
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = getattr(component, "finished", None)
        if (finished is None or finished.is_set()) and (not hasattr(component, "pending") or component.pending() == 0):
            break
        time.sleep(0.05)
    print("idle", flush=True)
    while True:  # the nucleus stops us with SIGTERM
        time.sleep(1)


if __name__ == "__main__":
    main()

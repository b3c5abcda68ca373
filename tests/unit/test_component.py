"""The Lambda adapter: hosted by the local runtime, on Greengrass (IPC client with its network
side replaced), and a pinned loop that starts without blocking the module import."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from unittest import mock

import can
import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from helpers import frame

from telemetry.component import LambdaAdapter, Services, hosting, on_greengrass
from telemetry.transport import IpcCloudTransport, IpcLocalTransport
from telemetry.uploader import UploaderComponent

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_on_greengrass_reads_the_nucleus_environment():
    assert on_greengrass({"SVCUID": "abc"})
    assert on_greengrass({"AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/x"})
    assert not on_greengrass({})


def test_services_on_greengrass_use_one_ipc_client_and_the_configured_vehicle():
    client = mock.create_autospec(GreengrassCoreIPCClientV2, instance=True)
    with mock.patch("awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2", return_value=client) as cls:
        services = Services.greengrass({"TELEMETRY_CONFIG": str(ROOT / "vehicles/sample/vehicle.toml"), "SVCUID": "x"})
    cls.assert_called_once_with()
    assert isinstance(services.local, IpcLocalTransport) and isinstance(services.cloud, IpcCloudTransport)
    assert services.config.vehicle == "sunrace-01"
    # a handler built on these services publishes through the SDK with the real signatures
    UploaderComponent(services).handle({"v": 1, "kind": "alert", "id": "a"})
    client.publish_to_iot_core.assert_called_once()
    assert client.publish_to_iot_core.call_args.kwargs["topic_name"] == "dt/sunrace-01/alerts"


def test_a_handler_module_builds_its_component_once_on_first_invocation(make_services):
    services = make_services()
    with hosting(services):
        module = load(ROOT / "lambdas/uploader/handler.py", "uploader_handler_test")
    module.function_handler({"v": 1, "kind": "alert", "id": "a"}, None)
    module.function_handler({"v": 1, "kind": "alert", "id": "b"}, None)
    first = module.adapter.component
    assert first is module.adapter.component
    assert [m["id"] for m in services.cloud.messages()] == ["a", "b"]


def test_pinned_reader_starts_its_loop_without_blocking_the_import(tmp_path, make_services):
    # GIVEN a log of 100 s replayed at the recorded pace
    log = tmp_path / "slow.log"
    with can.Logger(str(log)) as w:
        for i in range(101):
            w.on_message_received(frame(float(i), 0x7E0, b"\x01"))
    services = make_services(env={"TELEMETRY_LOG": str(log), "TELEMETRY_REPLAY_SPEED": "1"})
    from telemetry.clock import SystemClock

    services.clock = SystemClock()
    # WHEN the reader's handler module is imported as Greengrass would (hosted here)
    with hosting(services):
        module = load(ROOT / "lambdas/can_reader/handler.py", "reader_handler_test")
    # THEN the import has returned while the loop runs on in its thread, and it stops when told
    try:
        assert module.adapter.thread.is_alive()
        assert module.adapter.component.finished.is_set() is False
    finally:
        module.adapter.stop(timeout=5)
    assert not module.adapter.thread.is_alive()
    assert module.adapter.error is None


def test_a_pinned_loop_that_fails_reports_its_error(make_services):
    class Failing:
        def __init__(self, services):
            pass

        def run(self, stop: threading.Event) -> None:
            raise RuntimeError("bus gone")

        def close(self) -> None:
            pass

    with hosting(make_services()):
        adapter = LambdaAdapter(Failing)
    assert adapter.start_pinned()
    adapter.thread.join(5)
    assert isinstance(adapter.error, RuntimeError)
    adapter.stop()


def test_a_bad_configuration_fails_the_start_not_later(make_services, tmp_path):
    bad = tmp_path / "x.dbc"
    bad.write_text("nonsense")
    services = make_services(dbc=[str(bad)])
    from telemetry.errors import DbcError

    with hosting(services), pytest.raises(DbcError):
        load(ROOT / "lambdas/can_reader/handler.py", "reader_handler_bad")
